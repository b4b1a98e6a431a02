/* Readiness: poll, ppoll, select, pselect (and their fortified variants);
 * epoll_wait's session rules (epoll.c) come from here too.
 *
 * A session's fd is the live socket, a WAIT placeholder (never ready) while
 * suspended, or a READY placeholder (always ready) during a transition, so
 * that a sleeping poller wakes and looks again (engine.h, APP_FD_*).  A
 * blocking program that polls before it reads must never be told "ready"
 * for nothing: its read would then block.  So before a poll the session
 * installs the file its state calls for, and after one, a session reported
 * ready through anything but its live socket is checked again (and dropped
 * from the result if it is not ready).  Transport errors (POLLERR, POLLHUP)
 * of the live socket are only a reason to call read or write: they are
 * reported as the readiness the program asked for. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/select.h>
#include <time.h>

#include "engine.h"
#include "preload.h"

static struct tether_session *session_of(int fd) {
  struct psock *ps = fdt_get(fd);
  return ps && ps->kind == PS_SESSION ? ps->s : NULL;
}

/* A session inherited through fork is claimed from the parent before its
 * readiness means anything (fork.c); if it cannot be, its number polls as
 * the parent's socket, and the data calls say EBADF. */
static void claim_orphan(int fd) {
  struct psock *ps = fdt_get(fd);
  if (ps && ps_orphan_session(ps))
    (void)fork_claim(ps);
}

/* Installs the file the session's state calls for. */
static void sync_session(struct tether_session *s) {
  TP_ENTER();
  (void)tether_read(s, NULL, 0);
  TP_LEAVE();
}

/* Whether the fd's revents may be taken as they are. */
bool live_session(const struct tether_session *s) {
  return __atomic_load_n(&s->app_kind, __ATOMIC_ACQUIRE) == APP_FD_SOCK &&
         __atomic_load_n(&s->core.state, __ATOMIC_RELAXED) == CORE_CONNECTED;
}

/* The live socket reported an error, a hang-up or a FIN: let the session
 * look at it now (and suspend if the transport is gone), so that a blocking
 * program is not sent into a read or write that would wait for a resume. */
static void poke(struct tether_session *s) {
  uint8_t b;
  TP_ENTER();
  pthread_mutex_lock(&s->rx_lock);
  if (s->sock >= 0 && s->core.state == CORE_CONNECTED) {
    ssize_t n = recv(s->sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    int err = n < 0 ? errno : 0;
    if ((n == 0 && !core_eof_confirmed(&s->core)) ||
        (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) {
      pthread_mutex_lock(&s->tx_lock);
      session_suspend_locked(s, now_ns(), n == 0 ? "EOF without a close" : strerror(err));
      pthread_mutex_unlock(&s->tx_lock);
    }
  }
  pthread_mutex_unlock(&s->rx_lock);
  TP_LEAVE();
}

/* The readiness of one session fd now. */
static short recheck(int fd, struct tether_session *s, short events) {
  sync_session(s);
  struct pollfd p = {.fd = fd, .events = events};
  if (real.poll(&p, 1, 0) <= 0)
    return 0;
  return p.revents;
}

/* Never an error or a hang-up for a session: at most the readiness the
 * program asked for (a poll with no events must stay silent, or a program
 * such as nc would drop the fd).  POLLRDHUP stays only where the program
 * asked for it and the peer really closed its side. */
static short sanitize(short revents, short events, bool eof) {
  short bad = POLLERR | POLLHUP | POLLRDHUP;
  short want = events & (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM);
  short rdhup = eof && (events & POLLRDHUP) ? (revents & POLLRDHUP) : 0;
  if (revents & (POLLERR | POLLHUP))
    revents = (short)((revents & ~bad) | want);
  else
    revents &= (short)~POLLRDHUP;
  return (short)(revents | rdhup);
}

short tp_session_revents(int fd, struct tether_session *s, short revents, short events,
                         bool suspect) {
  if (!live_session(s) || suspect || (revents & (POLLERR | POLLHUP | POLLRDHUP))) {
    if (live_session(s))
      poke(s);
    revents = recheck(fd, s, events);
  }
  return sanitize(revents, events, core_at_eof(&s->core));
}

/* Marks POLLRDHUP added by us (events is a short: a bit poll ignores). */
#define POLL_ADDED_RDHUP ((short)0x4000)

static void restore_events(struct pollfd *fds, nfds_t n) {
  for (nfds_t i = 0; i < n; i++)
    if (fds[i].events & POLL_ADDED_RDHUP) {
      fds[i].events &= (short)~(POLLRDHUP | POLL_ADDED_RDHUP);
      fds[i].revents &= (short)~POLLRDHUP;
    }
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* After a wait that began at `start`: a session became readable within the
 * spin (spin next time) or not (sleep at once next time). */
static void note_read_waits(const struct pollfd *fds, nfds_t n, uint64_t start, uint64_t spins) {
  bool short_wait = now_ns() - start < spins;
  for (nfds_t i = 0; i < n; i++) {
    struct tether_session *s = session_of(fds[i].fd);
    if (s && (fds[i].events & POLLIN))
      __atomic_store_n(&s->read_spin, short_wait && (fds[i].revents & POLLIN), __ATOMIC_RELAXED);
  }
}

/* A wait's hold on the sessions it polls: each is kept (ps_hold) and
 * registered with (waiters.c), and the wait polls the thread's eventfd
 * besides the program's descriptors, so that a change of the file behind a
 * session's number sends it back to look.  poll() alone would sleep on the
 * old file when another thread's call installs the new one after a wake-up
 * and before this wait looked again. */
struct watch {
  struct psock *ps;
  struct app_waiter w;
};

struct watches {
  struct watch stack[8], *v;
  size_t n;
  struct pollfd stack_fds[32], *all; /* the program's, then the eventfd */
  int efd;                           /* -1: none (out of descriptors or memory) */
};

static void watches_add(struct watches *k, const struct pollfd *fds, nfds_t n) {
  size_t want = 0;
  k->v = k->stack;
  k->n = 0;
  k->all = NULL;
  k->efd = -1;
  for (nfds_t i = 0; i < n; i++)
    want += session_of(fds[i].fd) != NULL;
  if (want > sizeof(k->stack) / sizeof(k->stack[0]) && !(k->v = calloc(want, sizeof(*k->v))))
    return;
  k->all = n + 1 <= sizeof(k->stack_fds) / sizeof(k->stack_fds[0]) ? k->stack_fds
                                                                   : malloc((n + 1) * sizeof(*k->all));
  if (!k->all)
    return;
  for (nfds_t i = 0; i < n && k->n < want; i++) {
    struct psock *ps = fdt_get(fds[i].fd);
    if (!ps || ps->kind != PS_SESSION || !ps_hold(ps, fds[i].fd))
      continue;
    struct watch *wt = &k->v[k->n++];
    wt->ps = ps;
    app_waiter_add(ps->s, &wt->w);
    if (wt->w.efd >= 0)
      k->efd = wt->w.efd;
  }
}

/* After a call: whether any session's file changed meanwhile. */
static bool watches_woken(struct watches *k, short efd_revents) {
  bool any = false;
  k->efd = -1;
  for (size_t i = 0; i < k->n; i++) {
    any |= app_waiter_rearm(k->v[i].ps->s, &k->v[i].w, efd_revents);
    if (k->v[i].w.efd >= 0) /* not taken from us */
      k->efd = k->v[i].w.efd;
  }
  return any;
}

static void watches_release(struct watches *k) {
  for (size_t i = 0; i < k->n; i++) {
    app_waiter_remove(k->v[i].ps->s, &k->v[i].w);
    ps_release(k->v[i].ps);
  }
  if (k->v != k->stack)
    free(k->v);
  if (k->all != k->stack_fds)
    free(k->all);
}

/* What a shutdown() of the program's made ready on fd, a session's number:
 * as on TCP, SHUT_RD makes it readable (a read returns 0), SHUT_WR
 * writable (a write fails with EPIPE). */
static short shut_revents(int fd, short events) {
  struct psock *ps = fdt_get(fd);
  if (!ps || ps->kind != PS_SESSION)
    return 0;
  short r = 0;
  if ((events & POLLIN) && __atomic_load_n(&ps->rd_shut, __ATOMIC_ACQUIRE))
    r |= POLLIN;
  if ((events & POLLOUT) && __atomic_load_n(&ps->wr_shut, __ATOMIC_ACQUIRE))
    r |= POLLOUT;
  return r;
}

/* Adds what shutdowns made ready to fds' revents; the count of fds ready
 * now (rc, the call's count, plus those only a shutdown made ready). */
static int add_shut_revents(struct pollfd *fds, nfds_t n, int rc) {
  for (nfds_t i = 0; i < n; i++) {
    short r = shut_revents(fds[i].fd, fds[i].events);
    if (r && !fds[i].revents)
      rc++;
    fds[i].revents |= r;
  }
  return rc;
}

/* One call of the wait, with the eventfd (if any) after the program's
 * descriptors.  Sets *woken; returns the call's count of the program's. */
static int watched_call(struct watches *k, struct pollfd *fds, nfds_t n, int64_t timeout_ms,
                        int (*call)(struct pollfd *, nfds_t, int64_t, void *), void *arg,
                        bool *woken) {
  *woken = false;
  if (k->efd < 0 || !k->all)
    return call(fds, n, timeout_ms, arg);
  memcpy(k->all, fds, n * sizeof(*fds));
  k->all[n] = (struct pollfd){.fd = k->efd, .events = POLLIN};
  int rc = call(k->all, n + 1, timeout_ms, arg);
  int err = errno;
  for (nfds_t i = 0; i < n; i++)
    fds[i].revents = k->all[i].revents;
  short efd_revents = rc > 0 ? k->all[n].revents : 0;
  if (efd_revents)
    rc--;
  *woken = watches_woken(k, efd_revents);
  errno = err;
  return rc;
}

/* Runs `call` (a poll or ppoll with the given timeout in ms, -1 = none)
 * until it has a truthful answer or times out. */
static int poll_loop(struct pollfd *fds, nfds_t n, int64_t timeout_ms,
                     int (*call)(struct pollfd *, nfds_t, int64_t, void *), void *arg) {
  bool any = false;
  /* The read spin (tether(7), Application bytes): spins is the contexts'
   * spin if the program waits to read from a session, and spin how long
   * this wait spins: as long, if one such session's last wait was short. */
  uint64_t spins = 0, spin = 0;
  for (nfds_t i = 0; i < n; i++) {
    claim_orphan(fds[i].fd);
    struct tether_session *s = session_of(fds[i].fd);
    if (s) {
      any = true;
      if ((fds[i].events & POLLIN) && timeout_ms != 0 && s->ctx->read_spin_ns) {
        spins = s->ctx->read_spin_ns;
        if (__atomic_load_n(&s->read_spin, __ATOMIC_RELAXED))
          spin = spins;
      }
      if (!live_session(s))
        sync_session(s);
      /* A FIN must be looked at (see poke), unless the peer said it closed
       * (then it stays, and would wake every poll for nothing). */
      if (!(fds[i].events & POLLRDHUP) &&
          !core_half_closed(__atomic_load_n(&s->core.peer_wr, __ATOMIC_RELAXED)))
        fds[i].events |= POLLRDHUP | POLL_ADDED_RDHUP;
    }
  }
  if (!any)
    return call(fds, n, timeout_ms, arg);
  struct watches k;
  watches_add(&k, fds, n);
  uint64_t deadline = timeout_ms > 0 ? mono_ms() + (uint64_t)timeout_ms : 0;
  uint64_t start = spins ? now_ns() : 0;
  struct spin_hold h;
  bool held = spin != 0;
  if (held)
    spin_hold(&h); /* a signal must still interrupt the wait: spin.c */
  int rc;
  for (;;) {
    bool spinning = held && now_ns() - start < spin;
    if (held && !spinning) {
      held = false;
      if (spin_release(&h) < 0) {
        errno = EINTR;
        rc = -1;
        break;
      }
    }
    bool woken;
    /* A shutdown before the wait: ready at once, as on TCP. */
    bool shut = false;
    for (nfds_t i = 0; i < n && !shut; i++)
      shut = shut_revents(fds[i].fd, fds[i].events) != 0;
    rc = watched_call(&k, fds, n, spinning || shut ? 0 : timeout_ms, call, arg, &woken);
    if (rc < 0 || (rc == 0 && !spinning && !woken && !shut))
      break;
    for (nfds_t i = 0; i < n; i++) {
      if (!fds[i].revents)
        continue;
      struct tether_session *s = session_of(fds[i].fd);
      if (!s)
        continue;
      short ev = fds[i].events & ~POLL_ADDED_RDHUP;
      if (fds[i].events & POLL_ADDED_RDHUP)
        ev &= (short)~POLLRDHUP;
      fds[i].revents = tp_session_revents(fds[i].fd, s, fds[i].revents, ev, false);
      if (!fds[i].revents)
        rc--;
    }
    rc = add_shut_revents(fds, n, rc);
    if (rc > 0 || timeout_ms == 0)
      break;
    if (spinning)
      continue;
    if (timeout_ms > 0) {
      uint64_t now = mono_ms();
      if (now >= deadline) {
        rc = 0;
        break;
      }
      timeout_ms = (int64_t)(deadline - now);
    }
  }
  int err = errno;
  watches_release(&k);
  if (held)
    (void)spin_release(&h); /* the spin got its answer: a signal now is too late for it */
  if (spins && rc >= 0)
    note_read_waits(fds, n, start, spins);
  restore_events(fds, n);
  errno = err;
  return rc;
}

static int call_poll(struct pollfd *fds, nfds_t n, int64_t timeout_ms, void *arg) {
  return real.poll(fds, n, timeout_ms > 0x7fffffff ? 0x7fffffff : (int)timeout_ms);
}

struct ppoll_arg {
  const sigset_t *mask;
};

static int call_ppoll(struct pollfd *fds, nfds_t n, int64_t timeout_ms, void *arg) {
  struct ppoll_arg *a = arg;
  struct timespec ts = {.tv_sec = (time_t)(timeout_ms / 1000), .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
  return real.ppoll(fds, n, timeout_ms < 0 ? NULL : &ts, a->mask);
}

EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout) {
  READY();
  if (tp_inside)
    return real.poll(fds, n, timeout);
  return poll_loop(fds, n, timeout < 0 ? -1 : timeout, call_poll, NULL);
}

static int64_t ts_ms(const struct timespec *ts) {
  if (!ts)
    return -1;
  int64_t ms = (int64_t)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
  if (ms == 0 && ts->tv_nsec > 0)
    ms = 1;
  return ms;
}

EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask) {
  READY();
  if (tp_inside)
    return real.ppoll(fds, n, ts, mask);
  struct ppoll_arg a = {mask};
  return poll_loop(fds, n, ts_ms(ts), call_ppoll, &a);
}

/* select and pselect go through ppoll: the same rules, one code path.  The
 * timeout is left as it was (Linux's select would lower it; portable
 * programs do not rely on either).
 *
 * The sets are the program's, and may be larger than FD_SETSIZE (a program
 * that allocates them for more descriptors): their bits are read and
 * written here by hand (glibc's fortified FD_ISSET stops at FD_SETSIZE),
 * over the width the kernel itself would use: nfds, at most the size of
 * the process's descriptor table (the kernel's clamp, on which programs
 * calling select(getdtablesize(), ...) with ordinary sets rely). */
#define WORD_BITS (8 * (int)sizeof(unsigned long))

static bool bit_get(const fd_set *set, int fd) {
  const unsigned long *w = (const unsigned long *)(const void *)set;
  return (w[fd / WORD_BITS] >> (fd % WORD_BITS)) & 1;
}

static void bit_put(fd_set *set, int fd) {
  unsigned long *w = (unsigned long *)(void *)set;
  w[fd / WORD_BITS] |= 1UL << (fd % WORD_BITS);
}

/* The kernel's descriptor table size (FDSize in /proc/self/status), or
 * -1.  Asked only for nfds > FD_SETSIZE. */
static int fd_table_size(void) {
  char buf[4096];
  TP_ENTER();
  int f = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  ssize_t n = f >= 0 ? read(f, buf, sizeof(buf) - 1) : -1;
  if (f >= 0)
    close(f);
  TP_LEAVE();
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  const char *p = strstr(buf, "\nFDSize:");
  if (!p)
    return -1;
  long v = strtol(p + 8, NULL, 10);
  return v > 0 && v <= 0x7fffffff ? (int)v : -1;
}

/* How many of the sets' bits select looks at. */
static int select_width(int nfds) {
  if (nfds <= FD_SETSIZE)
    return nfds;
  int t = fd_table_size();
  return t > 0 && t < nfds ? t : nfds;
}

static int select_common(int nfds, fd_set *r, fd_set *w, fd_set *e, int64_t timeout_ms,
                         const sigset_t *mask, bool is_pselect) {
  struct pollfd stack_fds[256], *fds = stack_fds;
  nfds_t n = 0, cap = sizeof(stack_fds) / sizeof(stack_fds[0]);
  for (int fd = 0; fd < nfds; fd++) {
    short ev = 0;
    if (r && bit_get(r, fd))
      ev |= POLLIN;
    if (w && bit_get(w, fd))
      ev |= POLLOUT;
    if (e && bit_get(e, fd))
      ev |= POLLPRI;
    if (!ev)
      continue;
    if (n == cap) {
      nfds_t ncap = cap * 2;
      struct pollfd *grown = fds == stack_fds ? malloc(ncap * sizeof(*fds))
                                              : realloc(fds, ncap * sizeof(*fds));
      if (!grown) {
        if (fds != stack_fds)
          free(fds);
        errno = ENOMEM;
        return -1;
      }
      if (fds == stack_fds)
        memcpy(grown, stack_fds, sizeof(stack_fds));
      fds = grown;
      cap = ncap;
    }
    fds[n].fd = fd;
    fds[n].events = ev;
    fds[n].revents = 0;
    n++;
  }
  struct ppoll_arg a = {mask};
  int rc = poll_loop(fds, n, timeout_ms, is_pselect ? call_ppoll : call_poll, &a);
  if (rc < 0)
    goto out;
  for (nfds_t i = 0; i < n; i++)
    if (fds[i].revents & POLLNVAL) {
      errno = EBADF; /* the sets are left as they were, as the kernel does */
      rc = -1;
      goto out;
    }
  size_t bytes = ((size_t)nfds + (size_t)WORD_BITS - 1) / (size_t)WORD_BITS * sizeof(unsigned long);
  if (r)
    memset(r, 0, bytes);
  if (w)
    memset(w, 0, bytes);
  if (e)
    memset(e, 0, bytes);
  int count = 0;
  for (nfds_t i = 0; i < n; i++) {
    short re = fds[i].revents;
    /* select counts a readable fd for errors and hang-ups too. */
    if (r && (fds[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) {
      bit_put(r, fds[i].fd);
      count++;
    }
    if (w && (fds[i].events & POLLOUT) && (re & (POLLOUT | POLLERR))) {
      bit_put(w, fds[i].fd);
      count++;
    }
    if (e && (fds[i].events & POLLPRI) && (re & POLLPRI)) {
      bit_put(e, fds[i].fd);
      count++;
    }
  }
  rc = count;
out:
  if (fds != stack_fds) {
    int err = errno;
    free(fds);
    errno = err;
  }
  return rc;
}

static bool any_session(int nfds, fd_set *r, fd_set *w) {
  for (int fd = 0; fd < nfds; fd++)
    if ((r && bit_get(r, fd)) || (w && bit_get(w, fd))) {
      struct psock *ps = fdt_get(fd);
      if (ps && (ps->kind == PS_SESSION || ps_orphan_session(ps)))
        return true;
    }
  return false;
}

EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv) {
  READY();
  if (tp_inside || nfds < 0)
    return real.select(nfds, r, w, e, tv);
  int width = select_width(nfds);
  if (!any_session(width, r, w))
    return real.select(nfds, r, w, e, tv);
  int64_t ms = -1;
  if (tv) {
    ms = (int64_t)tv->tv_sec * 1000 + tv->tv_usec / 1000;
    if (ms == 0 && tv->tv_usec > 0)
      ms = 1;
  }
  return select_common(width, r, w, e, ms, NULL, false);
}

EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
                   const sigset_t *mask) {
  READY();
  if (tp_inside || nfds < 0)
    return real.pselect(nfds, r, w, e, ts, mask);
  int width = select_width(nfds);
  if (!any_session(width, r, w))
    return real.pselect(nfds, r, w, e, ts, mask);
  return select_common(width, r, w, e, ts_ms(ts), mask, true);
}

extern void __chk_fail(void) __attribute__((noreturn));
int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask,
                size_t fdslen);

EXPORT int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen) {
  if (fdslen / sizeof(*fds) < n)
    __chk_fail();
  return poll(fds, n, timeout);
}

EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
                       const sigset_t *mask, size_t fdslen) {
  if (fdslen / sizeof(*fds) < n)
    __chk_fail();
  return ppoll(fds, n, ts, mask);
}

/* glibc's old public names for the same functions. */
int __poll(struct pollfd *fds, nfds_t n, int timeout);
int __select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv);
EXPORT int __poll(struct pollfd *fds, nfds_t n, int timeout) { return poll(fds, n, timeout); }
EXPORT int __select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv) {
  return select(nfds, r, w, e, tv);
}
