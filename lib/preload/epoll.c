/* epoll: epoll_create, epoll_create1, epoll_ctl, epoll_wait, epoll_pwait,
 * epoll_pwait2.
 *
 * Every registration in an epoll instance of the program carries a token of
 * tether's (fdtable.c), so an event can be traced to its registration.  A
 * session's events are then held to poll's rules (wait.c): a placeholder's
 * readiness is checked again, an error or hang-up of the transport is never
 * passed on (it makes the session look at its socket, and suspend if the
 * connection is gone), and an event that turns out to be nothing is
 * dropped, a one-shot registration re-armed as if it had not fired.  Every
 * other event passes as the kernel reported it, with the program's data. */
#include <errno.h>
#include <fcntl.h>
#include <time.h>

#include "engine.h"
#include "preload.h"

/* At most this many events per call (epoll_wait may always return fewer). */
#define EP_BATCH 256

static int track(int ep, bool cloexec) {
  if (ep < 0 || tp_inside || tp_disabled)
    return ep;
  struct psock *ps = tp_track_new(ep, PS_EPOLL, 0, false, cloexec);
  if (ps) {
    pthread_mutex_lock(&ps->lock);
    if (ep_track(ps, ep) < 0) /* untracked: its registrations do not follow swaps */
      ps->kind = PS_OTHER;
    pthread_mutex_unlock(&ps->lock);
  }
  return ep;
}

EXPORT int epoll_create(int size) {
  READY();
  return track(real.epoll_create(size), false);
}

EXPORT int epoll_create1(int flags) {
  READY();
  return track(real.epoll_create1(flags), (flags & EPOLL_CLOEXEC) != 0);
}

static struct psock *tracked_epoll(int epfd) {
  if (tp_inside)
    return NULL;
  struct psock *ep = fdt_get(epfd);
  return ep && ep->kind == PS_EPOLL && ep->tab ? ep : NULL;
}

EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  READY();
  struct psock *ep = tracked_epoll(epfd);
  if (!ep)
    return real.epoll_ctl(epfd, op, fd, ev);
  struct psock *ps = fdt_get(fd);
  bool fresh = false;
  if (ps && ps_orphan_session(ps) && op != EPOLL_CTL_DEL)
    (void)fork_claim(ps); /* registers the relay, not the parent's socket */
  if (!ps) {
    /* Not ours: a number the program may close without telling epoll, so
     * it gets a psock whose close we see.  Invalid calls fail in libc. */
    int fl;
    if (op != EPOLL_CTL_ADD || fd == epfd || (fl = real.fcntl(fd, F_GETFD)) < 0 ||
        !(ps = tp_track_new(fd, PS_OTHER, 0, false, (fl & FD_CLOEXEC) != 0)))
      return real.epoll_ctl(epfd, op, fd, ev);
    fresh = true;
  }
  pthread_mutex_lock(&ps->lock);
  int rc = ep_ctl(ep, ps, epfd, op, fd, ev);
  int left = 1;
  if (rc < 0 && fresh && !ps->regs)
    left = ps_remove_alias(ps, fd);
  pthread_mutex_unlock(&ps->lock);
  if (!left)
    ps_free(ps);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

/* ---- waiting ---- */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct wait_arg {
  int kind; /* 0 epoll_wait, 1 epoll_pwait, 2 epoll_pwait2 */
  const sigset_t *mask;
};

/* One call of the libc function the program called; timeout_ns < 0: none. */
static int call(int epfd, struct epoll_event *evs, int max, int64_t timeout_ns,
                const struct wait_arg *a) {
  if (a->kind == 2) {
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000),
                          .tv_nsec = (long)(timeout_ns % 1000000000)};
    return real.epoll_pwait2(epfd, evs, max, timeout_ns < 0 ? NULL : &ts, a->mask);
  }
  int64_t ms64 = timeout_ns < 0 ? -1 : (timeout_ns + 999999) / 1000000;
  int ms = ms64 > 0x7fffffff ? 0x7fffffff : (int)ms64;
  if (a->kind == 1)
    return real.epoll_pwait(epfd, evs, max, ms, a->mask);
  return real.epoll_wait(epfd, evs, max, ms);
}

/* Holds a session's events to poll's rules; returns how many events remain. */
static int settle_sessions(struct psock *ep, struct epoll_event *evs, struct ep_hit *hits, int n) {
  int out = 0;
  for (int i = 0; i < n; i++) {
    struct psock *ps = fdt_get(hits[i].fd);
    struct tether_session *s = ps && ps->kind == PS_SESSION ? ps->s : NULL;
    if (s) {
      uint32_t e = evs[i].events;
      /* A blocking socket must not be sent into a read that waits for a
       * resume: a FIN looks like data until the session has seen it. */
      bool suspect = !ps->nonblock && (e & EPOLLIN);
      if (suspect || (e & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) || !live_session(s)) {
        short want = (short)(hits[i].events & (EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDNORM |
                                                EPOLLWRNORM | EPOLLRDHUP));
        short r = tp_session_revents(hits[i].fd, s, (short)(e & 0xffff), want, suspect);
        if (!r) {
          ep_unfire(ep, &hits[i]);
          continue;
        }
        evs[i].events = (uint16_t)r;
      }
    }
    if (out != i) {
      evs[out] = evs[i];
      hits[out] = hits[i];
    }
    out++;
  }
  return out;
}

/* The blocking reader's spin (tether(7), Application bytes) for an epoll
 * instance: after a wait that began at `start` and ended with a session
 * readable within its context's spin, the next wait spins that long first;
 * after any other, it does not. */
static void note_wait(struct psock *ep, const struct epoll_event *evs, const struct ep_hit *hits,
                      int n, uint64_t start) {
  uint64_t spin = 0, waited = mono_ns() - start;
  for (int i = 0; i < n && !spin; i++) {
    struct psock *ps = (evs[i].events & EPOLLIN) ? fdt_get(hits[i].fd) : NULL;
    if (ps && ps->kind == PS_SESSION && waited < ps->s->ctx->read_spin_ns)
      spin = ps->s->ctx->read_spin_ns;
  }
  __atomic_store_n(&ep->ep_spin_ns, spin, __ATOMIC_RELAXED);
}

static int wait_common(int epfd, struct epoll_event *evs, int max, int64_t timeout_ns,
                       const struct wait_arg *a) {
  struct psock *ep = tracked_epoll(epfd);
  if (!ep || max <= 0 || !evs)
    return call(epfd, evs, max, timeout_ns, a);
  if (max > EP_BATCH)
    max = EP_BATCH;
  struct ep_hit hits[EP_BATCH];
  uint64_t start = mono_ns();
  uint64_t deadline = timeout_ns > 0 ? start + (uint64_t)timeout_ns : 0;
  uint64_t spin = timeout_ns != 0 ? __atomic_load_n(&ep->ep_spin_ns, __ATOMIC_RELAXED) : 0;
  struct spin_hold h;
  bool held = spin != 0;
  if (held)
    spin_hold(&h); /* a signal must still interrupt the wait: spin.c */
  int n;
  for (;;) {
    bool spinning = held && mono_ns() - start < spin;
    if (held && !spinning) {
      held = false;
      if (spin_release(&h) < 0) {
        errno = EINTR;
        n = -1;
        break;
      }
    }
    /* A registration a shutdown made ready is ready now: no sleep. */
    bool shut = ep_shut_pending(ep);
    int k = call(epfd, evs, max, spinning || shut ? 0 : timeout_ns, a);
    n = k;
    if (n < 0)
      break;
    if (n > 0) {
      n = ep_translate(ep, evs, n, hits);
      n = settle_sessions(ep, evs, hits, n);
    }
    if (shut || ep_shut_pending(ep)) /* (or one came while it slept) */
      n = ep_add_shut(ep, evs, hits, n, max);
    if (n > 0 || timeout_ns == 0 || (k == 0 && !spinning && !shut))
      break; /* events, a poll, or the kernel's wait timed out */
    if (spinning || shut)
      continue;
    /* Everything was stale or not ready after all: wait on. */
    if (timeout_ns > 0) {
      uint64_t now = mono_ns();
      if (now >= deadline) {
        n = 0;
        break;
      }
      timeout_ns = (int64_t)(deadline - now);
    }
  }
  int err = errno;
  if (held)
    (void)spin_release(&h); /* the spin got its answer: a signal now is too late for it */
  if (n >= 0 && timeout_ns != 0)
    note_wait(ep, evs, hits, n, start); /* none ready (n == 0): a long wait */
  errno = err;
  return n;
}

EXPORT int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout) {
  READY();
  struct wait_arg a = {0, NULL};
  return wait_common(epfd, evs, max, timeout < 0 ? -1 : (int64_t)timeout * 1000000, &a);
}

EXPORT int epoll_pwait(int epfd, struct epoll_event *evs, int max, int timeout,
                       const sigset_t *mask) {
  READY();
  struct wait_arg a = {1, mask};
  return wait_common(epfd, evs, max, timeout < 0 ? -1 : (int64_t)timeout * 1000000, &a);
}

EXPORT int epoll_pwait2(int epfd, struct epoll_event *evs, int max, const struct timespec *ts,
                        const sigset_t *mask) {
  READY();
  if (!real.epoll_pwait2) {
    errno = ENOSYS;
    return -1;
  }
  if (ts && (ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000))
    return real.epoll_pwait2(epfd, evs, max, ts, mask); /* EINVAL, from the kernel */
  int64_t ns = -1;
  if (ts)
    ns = ts->tv_sec > INT64_MAX / 1000000000 - 1 ? INT64_MAX / 2
                                                 : (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
  struct wait_arg a = {2, mask};
  return wait_common(epfd, evs, max, ns, &a);
}
