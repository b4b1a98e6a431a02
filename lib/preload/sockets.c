/* The interposed libc entry points that create, move, close or inspect a
 * socket (the data path is in io.c).  Every wrapper starts with the same
 * test: inside tether, or an fd the table does not know, goes straight to
 * libc. */
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

static struct psock *tracked(int fd) {
  if (tp_inside)
    return NULL;
  struct psock *ps = fdt_get(fd);
  return ps && tp_vforked() ? NULL : ps;
}

/* In a vfork child (tp_vforked): whether fd is a number that must stay
 * close-on-exec (a session's), so that its copies are made so too: the
 * parent's live socket never reaches the new program (tether-run(1), FORK
 * AND EXEC). */
static bool hidden_in_vfork(int fd) {
  struct psock *ps = tp_inside ? NULL : fdt_get(fd);
  return ps && tp_vforked() && ps_exec_hidden(ps);
}

/* A number the kernel handed out again was closed behind our back (a raw
 * syscall, fclose() of an fdopen()ed socket): forget what it was. */
static void forget_number(int fd) {
  struct psock *ps = fdt_get(fd);
  if (!ps)
    return;
  pthread_mutex_lock(&ps->lock);
  int left = ps_remove_alias(ps, fd);
  pthread_mutex_unlock(&ps->lock);
  (void)left; /* a psock left without numbers is leaked, not reused */
}

struct psock *tp_track_new(int fd, int kind, int family, bool nonblock, bool cloexec) {
  forget_number(fd);
  struct psock *ps = ps_new(kind, family);
  if (!ps)
    return NULL;
  ps->nonblock = nonblock;
  pthread_mutex_lock(&ps->lock);
  int rc = ps_add_alias(ps, fd, cloexec);
  pthread_mutex_unlock(&ps->lock);
  if (rc < 0) {
    ps_free(ps);
    return NULL;
  }
  return ps;
}

EXPORT int socket(int domain, int type, int protocol) {
  READY();
  int fd = real.socket(domain, type, protocol);
  if (fd < 0 || tp_inside || tp_disabled)
    return fd;
  if ((domain == AF_INET || domain == AF_INET6) && (type & 0xff) == SOCK_STREAM &&
      (protocol == 0 || protocol == IPPROTO_TCP))
    (void)tp_track_new(fd, PS_TCP, domain, (type & SOCK_NONBLOCK) != 0, (type & SOCK_CLOEXEC) != 0);
  else
    forget_number(fd);
  return fd;
}

EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.bind(fd, sa, len);
  if (ps->kind == PS_LISTEN || ps->kind == PS_ORPHAN) {
    errno = EINVAL;
    return -1;
  }
  int rc = real.bind(fd, sa, len);
  if (rc < 0 && errno == EADDRINUSE && ps->kind == PS_TCP && sa && pl_release_port(sa))
    rc = real.bind(fd, sa, len);
  if (rc == 0 && ps->kind == PS_TCP)
    ps->bound = true;
  return rc;
}

EXPORT int listen(int fd, int backlog) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.listen(fd, backlog);
  if (ps->kind == PS_TCP)
    return pl_listen(ps, fd, backlog);
  if (ps->kind == PS_LISTEN)
    return pl_relisten(ps->pl, backlog);
  if (ps->kind == PS_ORPHAN && ps->pl)
    return real.listen(pl_socket(ps->pl), backlog);
  return real.listen(fd, backlog);
}

EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps || !sa)
    return real.connect(fd, sa, len);
  switch (ps->kind) {
  case PS_FAILED:
    ps->kind = PS_TCP; /* Linux lets a failed socket connect again */
    ps->conn_err = 0;
    /* fall through */
  case PS_TCP:
    return pc_connect(ps, fd, sa, len);
  case PS_CONNECTING: {
    int rc = pc_wait_connected(ps, fd, ps->nonblock);
    if (rc < 0) {
      errno = rc == -EAGAIN ? EALREADY : -rc;
      return -1;
    }
    if (ps->kind == PS_FAILED) {
      errno = ps->conn_err ? ps->conn_err : ECONNREFUSED;
      ps->conn_err = 0;
      return -1;
    }
    errno = EISCONN;
    return -1;
  }
  case PS_SESSION:
    errno = EISCONN;
    return -1;
  case PS_LISTEN:
    errno = EINVAL;
    return -1;
  default:
    return real.connect(fd, sa, len);
  }
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps || !(ps->kind == PS_LISTEN || (ps->kind == PS_ORPHAN && ps->pl))) {
    int c = real.accept4(fd, addr, alen, flags);
    if (c >= 0 && !tp_inside)
      forget_number(c);
    return c;
  }
  int c = pl_accept(ps, fd, addr, alen, flags);
  if (c >= 0 && fdt_get(c) && fdt_get(c)->kind != PS_SESSION && fdt_get(c)->kind != PS_RELAY)
    forget_number(c);
  return c;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *alen) { return accept4(fd, addr, alen, 0); }

/* ---- closing ---- */

static int close_tracked(struct psock *ps, int fd) {
  int rc, left;
  switch (ps->kind) {
  case PS_SESSION: {
    struct tether_session *s = ps->s;
    TP_ENTER();
    session_lock(s);
    pthread_mutex_lock(&ps->lock);
    ps_close_regs(ps, fd);
    if (ps_shared(ps) && ps->own_fd < 0 && fd != ps->own_fd && ps_program_aliases(ps) == 1 &&
        ps_has_alias(ps, fd)) {
      /* The program's last number of a session a child holds: tether keeps
       * a number of its own for the session (fork.c). */
      int own = real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (own >= 0 && ps_add_alias(ps, own, true) < 0) {
        real.close(own);
        own = -1;
      }
      if (own < 0) { /* no number to spare: this one stays open, as tether's */
        ps->own_fd = fd;
        ps_set_cloexec(ps, fd, true);
        if (!ps_has_alias(ps, s->app_fd))
          s->app_fd = fd;
        pthread_mutex_unlock(&ps->lock);
        session_unlock(s);
        TP_LEAVE();
        return 0;
      }
      ps->own_fd = own;
    }
    left = ps_remove_alias(ps, fd);
    if (fd == ps->own_fd) {
      ps->own_fd = -1;
    } else if (left && !ps_program_aliases(ps) && !ps_shared(ps)) {
      /* Only tether's own number is left, and no child holds the session:
       * it ends here, as a socket ends with its last reference. */
      int own = ps->own_fd;
      ps->own_fd = -1;
      left = ps_remove_alias(ps, own);
      (void)real.close(own);
    }
    if (!ps_has_alias(ps, s->app_fd))
      s->app_fd = left ? ps->aliases[0] : -1;
    if (!left) {
      s->app_fd_hook = NULL;
      ps->s = NULL;
    }
    rc = real.close(fd);
    pthread_mutex_unlock(&ps->lock);
    session_unlock(s);
    if (!left) {
      tether_close(s);
      ps_free(ps);
    }
    TP_LEAVE();
    return rc;
  }
  case PS_CONNECTING:
    pthread_mutex_lock(&ps->lock);
    ps_close_regs(ps, fd);
    left = ps_remove_alias(ps, fd);
    rc = real.close(fd);
    if (!left && ps->kind == PS_CONNECTING) {
      ps->closed = true; /* the connect's thread frees it, soon: */
      if (ps->abort_efd >= 0) {
        uint64_t one = 1;
        (void)!real.write(ps->abort_efd, &one, sizeof(one));
      }
      pthread_mutex_unlock(&ps->lock);
      return rc;
    }
    pthread_mutex_unlock(&ps->lock);
    if (!left)
      ps_free(ps);
    return rc;
  case PS_LISTEN: {
    pthread_mutex_lock(&ps->lock);
    ps_close_regs(ps, fd);
    left = ps_remove_alias(ps, fd);
    rc = real.close(fd);
    struct plisten *pl = ps->pl;
    bool held = ps->kids > 0; /* forked children accept from it (fork.c) */
    pthread_mutex_unlock(&ps->lock);
    if (!left && !held) {
      pl_close(pl);
      ps_free(ps);
    }
    return rc;
  }
  default:
    pthread_mutex_lock(&ps->lock);
    /* The last number of a relay: said before the parent sees it close. */
    if (ps->kind == PS_RELAY && ps->naliases == 1 && ps_has_alias(ps, fd))
      fork_closing(ps);
    ps_close_regs(ps, fd);
    left = ps_remove_alias(ps, fd);
    rc = real.close(fd);
    pthread_mutex_unlock(&ps->lock);
    if (!left && ps_orphan_session(ps))
      fork_release(ps); /* the parent need not keep it for us */
    if (!left)
      ps_free(ps); /* an epoll instance's registrations are forgotten there */
    return rc;
  }
}

int tp_close_tracked(struct psock *ps, int fd) { return close_tracked(ps, fd); }

void ps_listener_unref(struct psock *ps) {
  pthread_mutex_lock(&ps->lock);
  bool last = --ps->kids == 0 && ps->naliases == 0;
  struct plisten *pl = ps->pl;
  pthread_mutex_unlock(&ps->lock);
  if (last) { /* the program closed it before: it ends with its last holder */
    pl_close(pl);
    ps_free(ps);
  }
}

void ps_release(struct psock *ps) {
  pthread_mutex_lock(&ps->lock);
  ps->calls--;
  int own = ps->own_fd;
  /* The program closed its last number during the call: the session ends
   * now, as a socket does with its last reference.  Claimed (own_fd = -1)
   * under the lock, so that it ends once. */
  bool last = !ps_shared(ps) && !ps_program_aliases(ps) && own >= 0 && ps->kind == PS_SESSION;
  if (last)
    ps->own_fd = -1;
  bool free_now = ps->calls == 0 && ps->free_pending;
  pthread_mutex_unlock(&ps->lock);
  if (last)
    (void)tp_close_tracked(ps, own);
  else if (free_now)
    ps_free(ps);
}

EXPORT int close(int fd) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.close(fd);
  return close_tracked(ps, fd);
}

/* The tracked numbers in [first, last] are closed (or marked
 * close-on-exec) the way close() and fcntl() would. */
static void close_tracked_range(unsigned first, unsigned last, int flags) {
  unsigned hi = last < (unsigned)fdt_limit() ? last : (unsigned)fdt_limit();
  for (unsigned fd = first; fd <= hi && fd >= first; fd++) {
    struct psock *ps = fdt_get((int)fd);
    if (!ps)
      continue;
    if (flags & CLOSE_RANGE_CLOEXEC) {
      pthread_mutex_lock(&ps->lock);
      ps_set_cloexec(ps, (int)fd, true);
      pthread_mutex_unlock(&ps->lock);
    } else {
      close_tracked(ps, (int)fd);
    }
  }
}

/* tether's own descriptors are closed by the raw call if the range covers
 * them, as any library's would be: see tether-run(1), LIMITS. */
EXPORT int close_range(unsigned first, unsigned last, int flags) {
  READY();
  if (!real.close_range) {
    errno = ENOSYS;
    return -1;
  }
  if (first > last || (flags & ~(CLOSE_RANGE_CLOEXEC | CLOSE_RANGE_UNSHARE)))
    return real.close_range(first, last, flags); /* EINVAL, closing nothing */
  if (!tp_inside && !tp_vforked()) {
    close_tracked_range(first, last, flags);
    if (!(flags & CLOSE_RANGE_CLOEXEC))
      fork_chan_closing(first, last);
  }
  return real.close_range(first, last, flags);
}

EXPORT void closefrom(int lowfd) {
  READY();
  if (lowfd < 0)
    lowfd = 0;
  if (!tp_inside && !tp_vforked()) {
    close_tracked_range((unsigned)lowfd, ~0u, 0);
    fork_chan_closing((unsigned)lowfd, ~0u);
  }
  if (real.closefrom)
    real.closefrom(lowfd);
}

/* ---- duplicating ---- */

static int dup_tracked(struct psock *ps, int fd, int min, bool cloexec, int exact, int flags3) {
  pthread_mutex_lock(&ps->lock);
  int n;
  bool hide = ps_exec_hidden(ps);
  if (exact >= 0)
    n = real.dup3(fd, exact, hide ? flags3 | O_CLOEXEC : flags3);
  else
    n = real.fcntl(fd, cloexec || hide ? F_DUPFD_CLOEXEC : F_DUPFD, min);
  if (n >= 0) {
    struct psock *stale = fdt_get(n);
    if (stale && stale != ps)
      fdt_set(n, NULL);
    ps_add_alias(ps, n, cloexec);
  }
  pthread_mutex_unlock(&ps->lock);
  return n;
}

static bool aliasable(const struct psock *ps) {
  return ps->kind != PS_PLAIN && (ps->kind != PS_ORPHAN || ps_orphan_session(ps));
}

EXPORT int dup(int fd) {
  READY();
  if (hidden_in_vfork(fd))
    return real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  struct psock *ps = tracked(fd);
  if (!ps || !aliasable(ps)) {
    int n = real.dup(fd);
    if (n >= 0 && !tp_inside)
      forget_number(n);
    return n;
  }
  return dup_tracked(ps, fd, 0, false, -1, 0);
}

static int dup3_common(int oldfd, int newfd, int flags, bool is_dup2) {
  READY();
  if (tp_inside || oldfd == newfd)
    return is_dup2 ? real.dup2(oldfd, newfd) : real.dup3(oldfd, newfd, flags);
  if (hidden_in_vfork(oldfd))
    return real.dup3(oldfd, newfd, flags | O_CLOEXEC);
  if ((fdt_get(oldfd) || fdt_get(newfd)) && tp_vforked())
    return is_dup2 ? real.dup2(oldfd, newfd) : real.dup3(oldfd, newfd, flags);
  struct psock *old = fdt_get(oldfd);
  if (is_dup2 && real.fcntl(oldfd, F_GETFD) < 0)
    return -1; /* EBADF, and newfd stays open */
  struct psock *victim = fdt_get(newfd);
  if (victim)
    close_tracked(victim, newfd); /* dup2 closes newfd first */
  if (!old || !aliasable(old))
    return is_dup2 ? real.dup2(oldfd, newfd) : real.dup3(oldfd, newfd, flags);
  return dup_tracked(old, oldfd, 0, (flags & O_CLOEXEC) != 0, newfd, flags);
}

EXPORT int dup2(int oldfd, int newfd) { return dup3_common(oldfd, newfd, 0, true); }
EXPORT int dup3(int oldfd, int newfd, int flags) { return dup3_common(oldfd, newfd, flags, false); }

/* ---- fcntl and ioctl ---- */

static int do_fcntl(int (*fn)(int, int, ...), int fd, int cmd, void *arg) {
  READY();
  if ((cmd == F_DUPFD || cmd == F_SETFD) && hidden_in_vfork(fd))
    return cmd == F_DUPFD ? fn(fd, F_DUPFD_CLOEXEC, arg)
                          : fn(fd, F_SETFD, (void *)(intptr_t)((intptr_t)arg | FD_CLOEXEC));
  struct psock *ps = tracked(fd);
  if (!ps || !aliasable(ps))
    return fn(fd, cmd, arg);
  long v = (long)(intptr_t)arg;
  /* An orphan's file is the parent's: its flags are not the child's to change. */
  bool emulated = ps->kind == PS_SESSION || ps->kind == PS_CONNECTING || ps->kind == PS_LISTEN ||
                  ps_orphan_session(ps);
  switch (cmd) {
  case F_DUPFD:
  case F_DUPFD_CLOEXEC:
    return dup_tracked(ps, fd, (int)v, cmd == F_DUPFD_CLOEXEC, -1, 0);
  case F_GETFL: {
    int r = fn(fd, cmd, arg);
    if (r >= 0 && emulated)
      r = (r & ~O_NONBLOCK) | (ps->nonblock ? O_NONBLOCK : 0);
    if (r >= 0 && !emulated)
      ps->nonblock = (r & O_NONBLOCK) != 0;
    return r;
  }
  case F_SETFL:
    if (emulated && (v & O_ASYNC)) {
      /* No SIGIO for a session (its file changes under the number):
       * refused, nothing changed, as the kernel refuses a flag a file
       * cannot honour (tether(7), PRELOAD). */
      errno = EINVAL;
      return -1;
    }
    ps->nonblock = (v & O_NONBLOCK) != 0;
    if (emulated)
      return 0;
    return fn(fd, cmd, arg);
  case F_GETFD: {
    int r = fn(fd, cmd, arg);
    if (r >= 0 && ps_exec_hidden(ps)) {
      pthread_mutex_lock(&ps->lock);
      r = (r & ~FD_CLOEXEC) | (ps_get_cloexec(ps, fd) ? FD_CLOEXEC : 0);
      pthread_mutex_unlock(&ps->lock);
    }
    return r;
  }
  case F_SETFD: {
    int r = ps_exec_hidden(ps) ? fn(fd, cmd, (void *)(intptr_t)(v | FD_CLOEXEC)) : fn(fd, cmd, arg);
    if (r == 0) {
      pthread_mutex_lock(&ps->lock);
      ps_set_cloexec(ps, fd, (v & FD_CLOEXEC) != 0);
      pthread_mutex_unlock(&ps->lock);
    }
    return r;
  }
  default:
    return fn(fd, cmd, arg);
  }
}

EXPORT int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  READY();
  return do_fcntl(real.fcntl, fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  READY();
  return do_fcntl(real.fcntl64, fd, cmd, arg);
}

/* SIOCOUTQ (SIOCOUTQNSD) on a session: the bytes the program wrote that
 * have not reached the peer (not been sent).  Connected, the live socket's
 * figure plus what the session has not yet pushed into it (a resend after
 * a resume); during a transition, every byte the peer has not acknowledged
 * (the session keeps them, and sends them again as needed).  tether(7),
 * PRELOAD. */
static int session_outq(struct tether_session *s, unsigned long req) {
  uint64_t q = 0;
  TP_ENTER();
  session_lock(s);
  const struct core_session *c = &s->core;
  int k = 0;
  if (s->sock >= 0 && c->state == CORE_CONNECTED && real.ioctl(s->sock, req, &k) == 0) {
    q = (uint64_t)(k > 0 ? k : 0) + (c->sent - c->tx_pos);
  } else {
    uint64_t got = c->peer_delivered > c->peer_acked ? c->peer_delivered : c->peer_acked;
    if (s->restored_unresumed) /* the peer's position is unknown until it resumes */
      got = c->ret.base;
    q = c->sent > got ? c->sent - got : 0;
  }
  session_unlock(s);
  TP_LEAVE();
  return q > 0x7fffffff ? 0x7fffffff : (int)q;
}

EXPORT int ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  READY();
  struct psock *ps = tracked(fd);
  if (!ps || !aliasable(ps))
    return real.ioctl(fd, req, arg);
  bool emulated = ps->kind == PS_SESSION || ps->kind == PS_CONNECTING || ps->kind == PS_LISTEN ||
                  ps_orphan_session(ps);
  if (req == FIOCLEX || req == FIONCLEX) {
    int r = ps_exec_hidden(ps) ? real.ioctl(fd, FIOCLEX, arg) : real.ioctl(fd, req, arg);
    if (r == 0) {
      pthread_mutex_lock(&ps->lock);
      ps_set_cloexec(ps, fd, req == FIOCLEX);
      pthread_mutex_unlock(&ps->lock);
    }
    return r;
  }
  if (ps_orphan_session(ps) && (req == FIONREAD || req == SIOCOUTQ)) {
    int rc = fork_claim(ps); /* the parent's socket says nothing of ours */
    if (rc < 0) {
      errno = -rc;
      return -1;
    }
  }
  if (req == FIOASYNC && emulated && arg && *(int *)arg) {
    errno = EINVAL; /* as F_SETFL with O_ASYNC */
    return -1;
  }
  if (req == FIONBIO && arg) {
    ps->nonblock = *(int *)arg != 0;
    return emulated ? 0 : real.ioctl(fd, req, arg);
  }
  if (req == FIONREAD && arg && (ps->kind == PS_SESSION || ps->kind == PS_CONNECTING)) {
    int n = 0;
    struct tether_session *s = ps->s;
    if (ps->kind == PS_SESSION && s && !ps->rd_shut) {
      pthread_mutex_lock(&s->rx_lock);
      if (session_finish_due(s)) /* not the application's bytes */
        (void)session_take_finish_locked(s);
      if (!session_finish_due(s) && s->sock >= 0 &&
          (s->core.state == CORE_CONNECTED || s->core.state == CORE_CLOSED))
        (void)real.ioctl(s->sock, FIONREAD, &n);
      pthread_mutex_unlock(&s->rx_lock);
    }
    *(int *)arg = n;
    return 0;
  }
  if ((req == SIOCOUTQ || req == SIOCOUTQNSD) && arg &&
      (ps->kind == PS_SESSION || ps->kind == PS_CONNECTING)) {
    *(int *)arg = ps->kind == PS_SESSION && ps->s ? session_outq(ps->s, req) : 0;
    return 0; /* a connect in progress has nothing queued, as in TCP */
  }
  if (ps->kind == PS_LISTEN)
    return real.ioctl(pl_socket(ps->pl), req, arg);
  return real.ioctl(fd, req, arg);
}

/* ---- socket options and names ---- */

/* Options tether itself needs on a session's socket: recorded, reported
 * back, but not applied there. */
static bool protected_opt(int level, int name) {
  if (level == SOL_SOCKET)
    return name == SO_LINGER || name == SO_KEEPALIVE || name == SO_RCVTIMEO ||
           name == SO_SNDTIMEO;
  if (level == IPPROTO_TCP)
    return name == TCP_USER_TIMEOUT || name == TCP_KEEPIDLE || name == TCP_KEEPINTVL ||
           name == TCP_KEEPCNT;
  return false;
}

static void record_opt(struct psock *ps, int level, int name, const void *val, socklen_t len) {
  int i;
  if (len > sizeof(ps->opts[0].val))
    return;
  for (i = 0; i < ps->nopts; i++)
    if (ps->opts[i].level == level && ps->opts[i].name == name)
      break;
  if (i == ps->nopts) {
    if (ps->nopts == PS_MAX_OPTS)
      return;
    ps->nopts++;
  }
  ps->opts[i].level = level;
  ps->opts[i].name = name;
  ps->opts[i].len = len;
  memcpy(ps->opts[i].val, val, len);
}

static const struct sopt *find_opt(const struct psock *ps, int level, int name) {
  for (int i = 0; i < ps->nopts; i++)
    if (ps->opts[i].level == level && ps->opts[i].name == name)
      return &ps->opts[i];
  return NULL;
}

static int timeo_ms(const void *val, socklen_t len) {
  if (len < sizeof(struct timeval))
    return 0;
  const struct timeval *tv = val;
  long ms = (long)tv->tv_sec * 1000 + tv->tv_usec / 1000;
  if (ms == 0 && tv->tv_usec > 0)
    ms = 1;
  return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps || !aliasable(ps) || ps->kind == PS_EPOLL || ps->kind == PS_OTHER)
    return real.setsockopt(fd, level, name, val, len);
  if (ps->kind == PS_LISTEN)
    return real.setsockopt(pl_socket(ps->pl), level, name, val, len);
  if (level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO)) {
    int ms = timeo_ms(val, len);
    if (name == SO_RCVTIMEO)
      ps->rcvtimeo_ms = ms;
    else
      ps->sndtimeo_ms = ms;
  }
  if (ps_orphan_session(ps) || (ps->kind == PS_RELAY && level != SOL_SOCKET)) {
    /* An orphan's socket is the parent's, and a relay's is a stream socket
     * of another family: options are recorded (a claim applies the socket
     * level ones to the relay) and reported back. */
    if (!val && len) {
      errno = EFAULT;
      return -1;
    }
    pthread_mutex_lock(&ps->lock);
    record_opt(ps, level, name, val, len);
    pthread_mutex_unlock(&ps->lock);
    return 0;
  }
  if (ps->kind != PS_SESSION) {
    int rc = real.setsockopt(fd, level, name, val, len);
    if (rc == 0) {
      pthread_mutex_lock(&ps->lock);
      if (!protected_opt(level, name) || ps->kind == PS_TCP)
        record_opt(ps, level, name, val, len);
      pthread_mutex_unlock(&ps->lock);
    }
    return rc;
  }
  struct tether_session *s = ps->s;
  int rc = 0;
  TP_ENTER();
  session_lock(s);
  pthread_mutex_lock(&ps->lock);
  uint8_t v[32];
  if (len <= sizeof(v)) {
    memcpy(v, val, len);
    /* A receive buffer larger than the peer was told would let it drop
     * bytes still in ours (the in-flight bound): clamp. */
    if (level == SOL_SOCKET && (name == SO_RCVBUF || name == SO_RCVBUFFORCE) &&
        len >= sizeof(int) && s->sock >= 0) {
      int cap = (int)(sock_rcvbuf_max(s->sock) / 2);
      if (*(int *)v > cap)
        memcpy(v, &cap, sizeof(cap));
    }
    record_opt(ps, level, name, v, len);
    if (!protected_opt(level, name) && s->sock >= 0)
      rc = real.setsockopt(s->sock, level, name, v, len);
  } else if (!protected_opt(level, name) && s->sock >= 0) {
    rc = real.setsockopt(s->sock, level, name, val, len);
  }
  pthread_mutex_unlock(&ps->lock);
  session_unlock(s);
  TP_LEAVE();
  return rc;
}

/* An option's value on a fresh TCP socket of the family (made for the
 * call: a number kept would not survive a program's closefrom). */
static int fresh_tcp_getsockopt(int family, int level, int name, void *val, socklen_t *len) {
  int fd = real.socket(family == AF_INET6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int rc = real.getsockopt(fd, level, name, val, len);
  int err = errno;
  real.close(fd);
  errno = err;
  return rc;
}

EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps || !aliasable(ps) || ps->kind == PS_EPOLL || ps->kind == PS_TCP || !val || !len)
    return real.getsockopt(fd, level, name, val, len);
  if (level == SOL_SOCKET && name == SO_ERROR && *len >= sizeof(int)) {
    int e = 0;
    if (ps->kind == PS_FAILED) {
      e = ps->conn_err;
      ps->conn_err = 0;
    } else if (ps->kind != PS_SESSION && ps->kind != PS_CONNECTING) {
      return real.getsockopt(fd, level, name, val, len);
    }
    *(int *)val = e;
    *len = sizeof(int);
    return 0;
  }
  if (ps->kind == PS_LISTEN)
    return real.getsockopt(pl_socket(ps->pl), level, name, val, len);
  if (ps_orphan_session(ps) || ps->kind == PS_RELAY) {
    /* What the program set, and a TCP socket's identity. */
    int iv = 0;
    if (level == SOL_SOCKET && name == SO_DOMAIN)
      iv = ps->family;
    else if (level == SOL_SOCKET && name == SO_PROTOCOL)
      iv = IPPROTO_TCP;
    else if (level == SOL_SOCKET && ps->kind == PS_RELAY)
      return real.getsockopt(fd, level, name, val, len);
    pthread_mutex_lock(&ps->lock);
    const struct sopt *o = find_opt(ps, level, name);
    if (o) {
      socklen_t n = *len < o->len ? *len : o->len;
      memcpy(val, o->val, n);
      *len = n;
    }
    pthread_mutex_unlock(&ps->lock);
    if (o)
      return 0;
    if (level == SOL_SOCKET && ps->kind == PS_ORPHAN && name != SO_DOMAIN && name != SO_PROTOCOL)
      return real.getsockopt(fd, level, name, val, len); /* reading is harmless */
    if (level == SOL_SOCKET && (name == SO_DOMAIN || name == SO_PROTOCOL)) {
      memset(val, 0, *len);
      if (*len >= sizeof(int)) {
        memcpy(val, &iv, sizeof(iv));
        *len = sizeof(int);
      }
      return 0;
    }
    /* Never set by the program: what a TCP socket of its family says
     * (IP_OPTIONS: none, which sshd checks). */
    return fresh_tcp_getsockopt(ps->family, level, name, val, len);
  }
  if (ps->kind != PS_SESSION)
    return real.getsockopt(fd, level, name, val, len);
  const struct sopt *o = NULL;
  pthread_mutex_lock(&ps->lock);
  if (protected_opt(level, name) && (o = find_opt(ps, level, name))) {
    socklen_t n = *len < o->len ? *len : o->len;
    memcpy(val, o->val, n);
    *len = n;
  }
  pthread_mutex_unlock(&ps->lock);
  if (o)
    return 0;
  if (protected_opt(level, name)) { /* never set by the program: the defaults */
    memset(val, 0, *len);
    return 0;
  }
  struct tether_session *s = ps->s;
  int rc = -1;
  bool done = false;
  pthread_mutex_lock(&s->rx_lock);
  if (s->sock >= 0) {
    rc = real.getsockopt(s->sock, level, name, val, len);
    done = true;
  }
  pthread_mutex_unlock(&s->rx_lock);
  if (done)
    return rc;
  /* Suspended: no socket to ask. */
  int iv = 0;
  if (level == SOL_SOCKET && name == SO_TYPE)
    iv = SOCK_STREAM;
  else if (level == SOL_SOCKET && name == SO_DOMAIN)
    iv = ps->family;
  else if (level == SOL_SOCKET && name == SO_PROTOCOL)
    iv = IPPROTO_TCP;
  else if ((o = find_opt(ps, level, name)) != NULL) {
    socklen_t n = *len < o->len ? *len : o->len;
    memcpy(val, o->val, n);
    *len = n;
    return 0;
  }
  memset(val, 0, *len);
  if (*len >= sizeof(int)) {
    memcpy(val, &iv, sizeof(iv));
    *len = *len > sizeof(int) && level == IPPROTO_TCP && name == TCP_INFO ? *len : sizeof(int);
  }
  return 0;
}

static int copy_name(const struct sockaddr_storage *ss, socklen_t have, struct sockaddr *sa,
                     socklen_t *len) {
  if (!sa || !len) {
    errno = EFAULT;
    return -1;
  }
  socklen_t n = *len < have ? *len : have;
  memcpy(sa, ss, n);
  *len = have;
  return 0;
}

EXPORT int getpeername(int fd, struct sockaddr *sa, socklen_t *len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.getpeername(fd, sa, len);
  if ((ps->kind == PS_SESSION || ps->kind == PS_RELAY || ps_orphan_session(ps)) && ps->peer_len)
    return copy_name(&ps->peer, ps->peer_len, sa, len);
  if (ps->kind == PS_CONNECTING || ps->kind == PS_LISTEN) {
    errno = ENOTCONN;
    return -1;
  }
  return real.getpeername(fd, sa, len);
}

EXPORT int getsockname(int fd, struct sockaddr *sa, socklen_t *len) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.getsockname(fd, sa, len);
  if (ps->kind == PS_LISTEN || (ps->kind == PS_ORPHAN && ps->pl))
    return real.getsockname(pl_socket(ps->pl), sa, len);
  if ((ps->kind == PS_SESSION || ps->kind == PS_RELAY || ps_orphan_session(ps)) && ps->local_len)
    return copy_name(&ps->local, ps->local_len, sa, len);
  if (ps->kind == PS_CONNECTING) {
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = (sa_family_t)ps->family;
    return copy_name(&any, ps->family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                  : sizeof(struct sockaddr_in), sa, len);
  }
  return real.getsockname(fd, sa, len);
}

EXPORT int shutdown(int fd, int how) {
  READY();
  struct psock *ps = tracked(fd);
  if (!ps)
    return real.shutdown(fd, how);
  if (ps->kind == PS_CONNECTING) {
    errno = ENOTCONN;
    return -1;
  }
  if (ps->kind == PS_LISTEN)
    return real.shutdown(pl_socket(ps->pl), how);
  if (ps_orphan_session(ps)) { /* never the parent's live socket */
    int rc = fork_claim(ps);
    if (rc < 0) {
      errno = -rc;
      return -1;
    }
  }
  if (ps->kind != PS_SESSION)
    return real.shutdown(fd, how);
  if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) {
    errno = EINVAL;
    return -1;
  }
  pthread_mutex_lock(&ps->lock);
  bool shut_wr = how != SHUT_RD && !ps->wr_shut;
  if (how != SHUT_WR) /* atomic: poll looks without the lock (wait.c) */
    __atomic_store_n(&ps->rd_shut, true, __ATOMIC_RELEASE);
  if (shut_wr)
    __atomic_store_n(&ps->wr_shut, true, __ATOMIC_RELEASE);
  app_waiters_wake(ps->s); /* threads blocked in recv/send on it return now */
  ps_shut_notify(ps);      /* ... and in epoll_wait */
  pthread_mutex_unlock(&ps->lock);
  if (shut_wr) {
    TP_ENTER();
    int rc = tether_shutdown(ps->s);
    TP_LEAVE();
    (void)rc; /* a failed session reports its error on the next read */
  }
  return 0;
}

/* glibc's old public names for the same functions. */
int __close(int fd);
int __connect(int fd, const struct sockaddr *sa, socklen_t len);
int __dup2(int oldfd, int newfd);
int __fcntl(int fd, int cmd, ...);
EXPORT int __close(int fd) { return close(fd); }
EXPORT int __connect(int fd, const struct sockaddr *sa, socklen_t len) { return connect(fd, sa, len); }
EXPORT int __dup2(int oldfd, int newfd) { return dup2(oldfd, newfd); }
EXPORT int __fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  READY();
  return do_fcntl(real.fcntl, fd, cmd, arg);
}
