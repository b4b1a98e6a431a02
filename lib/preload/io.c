/* The data path: read/write and their socket, vector, message, sendfile
 * and fortified variants on a session's fd.  The session itself is always
 * non-blocking; the program's blocking semantics (waits, SO_RCVTIMEO and
 * SO_SNDTIMEO, EINTR with or without SA_RESTART, MSG_WAITALL) are made here,
 * waiting on the program's own number, which always polls the way the
 * session can progress. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

/* The psock behind fd when its data path is tether's (or must wait for a
 * connect to end), else NULL: the call goes to libc.  It is held for the
 * call (ps_hold): a HELD variable releases it when the call returns. */
static inline struct psock *data_ps(int fd) {
  if (tp_inside)
    return NULL;
  tp_handler_ran = false; /* this call's own (wait_for) */
  struct psock *ps = fdt_get(fd);
  if (!ps)
    return NULL;
  int k = ps->kind;
  if (k != PS_SESSION && k != PS_CONNECTING && k != PS_FAILED && k != PS_ORPHAN && k != PS_RELAY)
    return NULL;
  return ps_hold(ps, fd) ? ps : NULL; /* not fd's any more: closed meanwhile */
}

static inline void release_held(struct psock **ps) {
  if (*ps) {
    int saved = errno; /* the call's */
    ps_release(*ps);
    errno = saved;
  }
}
#define HELD __attribute__((cleanup(release_held)))

/* A relay's EOF is the session's only when the parent said so (fork.c). */
static ssize_t relay_rd(struct psock *ps, ssize_t n, size_t len) {
  if (n != 0 || len == 0 || ps->kind != PS_RELAY)
    return n;
  int rc = fork_relay_eof(ps);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

static size_t iov_total(const struct iovec *iov, int cnt) {
  size_t t = 0;
  for (int i = 0; i < cnt; i++)
    t += iov[i].iov_len;
  return t;
}

static int errno_of(ssize_t rc) {
  switch (rc) {
  case TETHER_EGIVEUP: return ETIMEDOUT;
  case TETHER_ECLOSED: return EBADF;
  case TETHER_ESESSIONGONE:
  case TETHER_EWINDOW:
  case TETHER_EDIVERGED:
  case TETHER_EAUTH:
  case TETHER_EPROTO:
  case TETHER_EVERSION:
  case TETHER_EABORTED:
  case TETHER_EEVICTED: return ECONNRESET;
  default: return rc < 0 && rc > -4096 ? (int)-rc : EIO;
  }
}

/* Before the data path: a connect in progress, a failed one, an orphan.
 * Returns 1 when the session path applies, 0 when the call must go to libc,
 * or -1 with errno set. */
static int settle(struct psock *ps, int fd, bool nonblock) {
  if (ps->kind == PS_CONNECTING) {
    int rc = pc_wait_connected(ps, fd, nonblock);
    if (rc < 0) {
      errno = -rc;
      return -1;
    }
  }
  switch (ps->kind) {
  case PS_SESSION: return 1;
  case PS_FAILED:
    if (ps->conn_err) {
      errno = ps->conn_err;
      return -1;
    }
    return 0;
  case PS_ORPHAN: {
    /* Inherited through fork: claimed from the parent, it becomes a relay
     * (fork_claim warns when it cannot be). */
    int rc = fork_claim(ps);
    if (rc < 0) {
      errno = -rc;
      return -1;
    }
    return 0;
  }
  default: return 0;
  }
}

/* Waits for the session to make progress.  0 to retry, or -1 with errno. */
static int wait_for(struct psock *ps, int fd, short events, int timeout_ms) {
  if (tp_handler_ran) {
    /* A handler deferred out of tether's code ran during this call: the
     * kernel's call would have been interrupted (signals.c). */
    tp_handler_ran = false;
    errno = EINTR;
    return -1;
  }
  int rc = tp_wait_shut(ps, fd, events, timeout_ms > 0 ? timeout_ms : -1);
  if (rc == -EAGAIN) {
    errno = EAGAIN;
    return -1;
  }
  if (rc == -EINTR && !tp_restart_after_eintr()) {
    errno = EINTR;
    return -1;
  }
  return 0;
}

/* MSG_PEEK: the bytes at the head of the stream, without delivering them
 * (with trunc, MSG_TRUNC: how many there are, up to len, buf untouched). */
static ssize_t session_peek(struct tether_session *s, void *buf, size_t len, int trunc) {
  ssize_t r;
  (void)tether_read(s, NULL, 0); /* installs the file the state calls for */
  pthread_mutex_lock(&s->rx_lock);
  struct core_session *c = &s->core;
  if (core_at_eof(c)) {
    r = 0;
  } else if (c->state == CORE_FAILED) {
    r = c->error;
  } else if (session_finish_due(s) && session_take_finish_locked(s) <= 0) {
    r = -EAGAIN; /* the client's ClientFinish is still arriving; a read sees errors */
  } else if (s->sock >= 0 && (c->state == CORE_CONNECTED || c->state == CORE_CLOSED)) {
    r = recv(s->sock, trunc ? NULL : buf, len, MSG_PEEK | MSG_DONTWAIT | trunc);
    if (r == 0) {
      pthread_mutex_lock(&s->tx_lock);
      if (!core_eof_confirmed(c))
        session_suspend_locked(s, now_ns(), "EOF without a close");
      pthread_mutex_unlock(&s->tx_lock);
      r = core_at_eof(c) ? 0 : -EAGAIN;
    } else if (r < 0) {
      r = -EAGAIN; /* an error: the next read finds it and suspends */
    }
  } else {
    r = -EAGAIN;
  }
  pthread_mutex_unlock(&s->rx_lock);
  return r;
}

/* MSG_TRUNC: up to len bytes taken and thrown away, as TCP does (the
 * program's buffer, which may be NULL, is not touched).  Takes what is
 * there without waiting once a chunk came back short. */
static ssize_t session_discard(struct tether_session *s, size_t len) {
  char scratch[16384];
  size_t done = 0;
  while (done < len) {
    size_t want = len - done < sizeof(scratch) ? len - done : sizeof(scratch);
    ssize_t n = tether_read(s, scratch, want);
    if (n <= 0)
      return done ? (ssize_t)done : n;
    done += (size_t)n;
    if ((size_t)n < want)
      break;
  }
  return (ssize_t)done;
}

static ssize_t ps_recv(struct psock *ps, int fd, void *buf, size_t len, int flags) {
  bool nonblock = ps->nonblock || (flags & MSG_DONTWAIT);
  int st = settle(ps, fd, nonblock);
  if (st <= 0)
    return st < 0 ? -1 : relay_rd(ps, real.recv(fd, buf, len, flags), len);
  if (__builtin_expect(flags & (MSG_OOB | MSG_ERRQUEUE), 0)) {
    /* No urgent data on a session.  Its error queue is always empty (TCP
     * answers EAGAIN then, blocking or not): transport errors are the
     * session's own, and no timestamps are queued (tether(7), PRELOAD). */
    errno = (flags & MSG_ERRQUEUE) ? EAGAIN : EINVAL;
    return -1;
  }
  if (ps->rd_shut)
    return 0;
  struct tether_session *s = ps->s;
  size_t got = 0;
  for (;;) {
    TP_ENTER();
    ssize_t n = (flags & MSG_PEEK)    ? session_peek(s, buf, len, flags & MSG_TRUNC)
                : (flags & MSG_TRUNC) ? session_discard(s, len - got)
                                      : tether_read(s, (char *)buf + got, len - got);
    TP_LEAVE();
    if (n > 0) {
      got += (size_t)n;
      if (!(flags & MSG_WAITALL) || got == len || (flags & MSG_PEEK))
        return (ssize_t)got;
      continue;
    }
    if (n == 0)
      return (ssize_t)got;
    if (n != -EAGAIN) {
      if (got)
        return (ssize_t)got;
      errno = errno_of(n);
      return -1;
    }
    if (nonblock) {
      if (got)
        return (ssize_t)got;
      errno = EAGAIN;
      return -1;
    }
    if (wait_for(ps, fd, POLLIN, ps->rcvtimeo_ms) < 0)
      return got ? (ssize_t)got : -1;
    if (ps->rd_shut) /* by another thread, during the wait */
      return (ssize_t)got;
  }
}

static ssize_t ps_send(struct psock *ps, int fd, const void *buf, size_t len, int flags) {
  bool nonblock = ps->nonblock || (flags & MSG_DONTWAIT);
  int st = settle(ps, fd, nonblock);
  if (st <= 0)
    return st < 0 ? -1 : real.send(fd, buf, len, flags);
  struct tether_session *s = ps->s;
  size_t done = 0;
  if (ps->wr_shut)
    goto epipe;
  for (;;) {
    TP_ENTER();
    ssize_t n = tether_write(s, (const char *)buf + done, len - done);
    TP_LEAVE();
    if (n > 0) {
      done += (size_t)n;
      if (done == len || nonblock)
        return (ssize_t)done;
      continue;
    }
    if (n == 0)
      return (ssize_t)done;
    if (n == -EPIPE) {
      if (done)
        return (ssize_t)done;
      goto epipe;
    }
    if (n != -EAGAIN) {
      if (done)
        return (ssize_t)done;
      errno = errno_of(n);
      return -1;
    }
    if (nonblock) {
      if (done)
        return (ssize_t)done;
      errno = EAGAIN;
      return -1;
    }
    if (wait_for(ps, fd, POLLOUT, ps->sndtimeo_ms) < 0)
      return done ? (ssize_t)done : -1;
    if (ps->wr_shut) { /* by another thread, during the wait */
      if (done)
        return (ssize_t)done;
      goto epipe;
    }
  }
epipe:
  LOG_DEBUG(s->ctx, "write on fd %d: EPIPE (%s; state %d wr_closed %d peer_rd_closed %d)", fd,
            ps->wr_shut ? "shut down" : "session", s->core.state, core_half_closed(s->core.wr),
            core_half_closed(s->core.peer_rd));
  if (!(flags & MSG_NOSIGNAL))
    raise(SIGPIPE); /* as the kernel would: to this thread */
  errno = EPIPE;
  return -1;
}

EXPORT ssize_t read(int fd, void *buf, size_t len) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.read(fd, buf, len);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock) == 0)
    return relay_rd(ps, real.read(fd, buf, len), len);
  return ps_recv(ps, fd, buf, len, 0);
}

EXPORT ssize_t write(int fd, const void *buf, size_t len) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.write(fd, buf, len);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock) == 0)
    return real.write(fd, buf, len);
  return ps_send(ps, fd, buf, len, 0);
}

EXPORT ssize_t recv(int fd, void *buf, size_t len, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.recv(fd, buf, len, flags);
  return ps_recv(ps, fd, buf, len, flags);
}

EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.send(fd, buf, len, flags);
  return ps_send(ps, fd, buf, len, flags);
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr,
                        socklen_t *alen) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.recvfrom(fd, buf, len, flags, addr, alen);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0)
    return relay_rd(ps, real.recvfrom(fd, buf, len, flags, addr, alen), len);
  ssize_t n = ps_recv(ps, fd, buf, len, flags);
  if (n >= 0 && addr && alen)
    *alen = 0; /* TCP reports no source address */
  return n;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
                      socklen_t alen) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps) {
    struct psock *t = tp_inside ? NULL : fdt_get(fd);
    if (t && t->kind == PS_TCP && (flags & MSG_FASTOPEN))
      t->kind = PS_PLAIN; /* TCP Fast Open connects by itself: left plain */
    return real.sendto(fd, buf, len, flags, addr, alen);
  }
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0)
    return real.sendto(fd, buf, len, flags, addr, alen);
  return ps_send(ps, fd, buf, len, flags);
}

/* Vectors: the first segment may wait, the rest only take what is ready. */
static ssize_t recv_iov(struct psock *ps, int fd, const struct iovec *iov, int cnt, int flags) {
  size_t total = 0;
  for (int i = 0; i < cnt; i++) {
    if (iov[i].iov_len == 0)
      continue;
    int saved = errno;
    ssize_t n = ps_recv(ps, fd, iov[i].iov_base, iov[i].iov_len,
                        total ? (flags | MSG_DONTWAIT) & ~MSG_WAITALL : flags);
    if (n < 0) {
      if (total) {
        errno = saved;
        return (ssize_t)total;
      }
      return -1;
    }
    total += (size_t)n;
    if ((size_t)n < iov[i].iov_len || (flags & MSG_PEEK))
      break;
  }
  return (ssize_t)total;
}

static ssize_t send_iov(struct psock *ps, int fd, const struct iovec *iov, int cnt, int flags) {
  size_t total = 0;
  for (int i = 0; i < cnt; i++)
    total += iov[i].iov_len;
  if (cnt > 1 && total <= 16384) { /* small: one write */
    char buf[16384];
    size_t off = 0;
    for (int i = 0; i < cnt; i++) {
      memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
      off += iov[i].iov_len;
    }
    return ps_send(ps, fd, buf, total, flags);
  }
  size_t done = 0;
  for (int i = 0; i < cnt; i++) {
    if (iov[i].iov_len == 0)
      continue;
    int saved = errno;
    ssize_t n = ps_send(ps, fd, iov[i].iov_base, iov[i].iov_len, done ? flags | MSG_NOSIGNAL : flags);
    if (n < 0) {
      if (done) {
        errno = saved;
        return (ssize_t)done;
      }
      return -1;
    }
    done += (size_t)n;
    if ((size_t)n < iov[i].iov_len)
      break;
  }
  return (ssize_t)done;
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.readv(fd, iov, cnt);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock) == 0)
    return relay_rd(ps, real.readv(fd, iov, cnt), iov_total(iov, cnt));
  return recv_iov(ps, fd, iov, cnt, 0);
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.writev(fd, iov, cnt);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock) == 0)
    return real.writev(fd, iov, cnt);
  return send_iov(ps, fd, iov, cnt, 0);
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.recvmsg(fd, msg, flags);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0)
    return relay_rd(ps, real.recvmsg(fd, msg, flags), iov_total(msg->msg_iov, (int)msg->msg_iovlen));
  if (__builtin_expect(flags & (MSG_OOB | MSG_ERRQUEUE), 0))
    return ps_recv(ps, fd, NULL, 0, flags); /* fails as it must, whatever the vector */
  ssize_t n = recv_iov(ps, fd, msg->msg_iov, (int)msg->msg_iovlen, flags);
  if (n >= 0) {
    msg->msg_namelen = 0;
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
  }
  return n;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps)
    return real.sendmsg(fd, msg, flags);
  if (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0)
    return real.sendmsg(fd, msg, flags);
  return send_iov(ps, fd, msg->msg_iov, (int)msg->msg_iovlen, flags);
}

/* sendfile to a session: through a buffer (the bytes must be retained). */
EXPORT ssize_t sendfile(int out, int in, off_t *offset, size_t count) {
  READY();
  HELD struct psock *ps = data_ps(out);
  if (!ps)
    return real.sendfile(out, in, offset, count);
  if (ps->kind != PS_SESSION && settle(ps, out, ps->nonblock) == 0)
    return real.sendfile(out, in, offset, count);
  size_t chunk = count < 65536 ? count : 65536;
  if (chunk == 0)
    return 0;
  char *buf = malloc(chunk);
  if (!buf) {
    errno = ENOMEM;
    return -1;
  }
  ssize_t n = offset ? pread(in, buf, chunk, *offset) : read(in, buf, chunk);
  ssize_t w = n;
  if (n > 0) {
    w = ps_send(ps, out, buf, (size_t)n, 0);
    int saved = errno;
    ssize_t keep = w < 0 ? 0 : w;
    if (!offset && keep < n)
      (void)lseek(in, keep - n, SEEK_CUR); /* what was not sent stays unread */
    if (offset)
      *offset += keep;
    errno = saved;
  }
  free(buf);
  return w;
}

EXPORT ssize_t sendfile64(int out, int in, off_t *offset, size_t count) {
  return sendfile(out, in, offset, count);
}

/* ---- _FORTIFY_SOURCE variants ---- */

extern void __chk_fail(void) __attribute__((noreturn));
ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                       struct sockaddr *addr, socklen_t *alen);
ssize_t sendfile64(int out, int in, off_t *offset, size_t count);

EXPORT ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen) {
  if (len > buflen)
    __chk_fail();
  return read(fd, buf, len);
}

EXPORT ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags) {
  if (len > buflen)
    __chk_fail();
  return recv(fd, buf, len, flags);
}

EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                              struct sockaddr *addr, socklen_t *alen) {
  if (len > buflen)
    __chk_fail();
  return recvfrom(fd, buf, len, flags, addr, alen);
}

/* ---- more ways to move a session's bytes ---- */


/* recvmmsg/sendmmsg: one message after another; only the first may wait
 * (as the kernel does for a stream socket).  The timeout, which the kernel
 * only checks between messages, is not needed here. */
EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
                    struct timespec *timeout) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps || (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0))
    return real.recvmmsg(fd, vec, vlen, flags, timeout);
  unsigned int i;
  for (i = 0; i < vlen; i++) {
    int f = i ? (flags | MSG_DONTWAIT) & ~MSG_WAITFORONE : flags & ~MSG_WAITFORONE;
    if (i && (flags & MSG_WAITFORONE))
      f |= MSG_DONTWAIT;
    int saved = errno;
    ssize_t n = recvmsg(fd, &vec[i].msg_hdr, f);
    if (n < 0) {
      if (i) {
        errno = saved;
        break;
      }
      return -1;
    }
    vec[i].msg_len = (unsigned int)n;
    if (n == 0)
      return (int)i + 1; /* EOF ends the batch */
  }
  return (int)i;
}

EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps || (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & MSG_DONTWAIT)) == 0))
    return real.sendmmsg(fd, vec, vlen, flags);
  unsigned int i;
  for (i = 0; i < vlen; i++) {
    int saved = errno;
    ssize_t n = sendmsg(fd, &vec[i].msg_hdr, i ? flags | MSG_NOSIGNAL : flags);
    if (n < 0) {
      if (i) {
        errno = saved;
        break;
      }
      return -1;
    }
    vec[i].msg_len = (unsigned int)n;
    size_t want = 0;
    for (size_t k = 0; k < vec[i].msg_hdr.msg_iovlen; k++)
      want += vec[i].msg_hdr.msg_iov[k].iov_len;
    if ((size_t)n < want) {
      i++;
      break;
    }
  }
  return (int)i;
}

/* splice would move bytes between the kernel's buffers and the live
 * socket behind the session's back: refused, as by a file that cannot
 * splice (programs fall back to read and write). */
EXPORT ssize_t splice(int in, loff_t *off_in, int out, loff_t *off_out, size_t len,
                      unsigned int flags) {
  READY();
  HELD struct psock *a = data_ps(in);
  HELD struct psock *b = data_ps(out);
  /* A relay is an ordinary socket (its EOF aside, which splice reports as
   * 0 like read: a child's splice cannot tell a dead parent from EOF). */
  if ((a && a->kind != PS_RELAY) || (b && b->kind != PS_RELAY)) {
    errno = EINVAL;
    return -1;
  }
  return real.splice(in, off_in, out, off_out, len, flags);
}

/* preadv2/pwritev2 with offset -1 are readv/writev (with flags). */
static int rwf_flags(int flags) { return (flags & RWF_NOWAIT) ? MSG_DONTWAIT : 0; }

EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps || off != -1 ||
      (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & RWF_NOWAIT)) == 0))
    return real.preadv2(fd, iov, cnt, off, flags);
  return recv_iov(ps, fd, iov, cnt, rwf_flags(flags));
}

EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  READY();
  HELD struct psock *ps = data_ps(fd);
  if (!ps || off != -1 ||
      (ps->kind != PS_SESSION && settle(ps, fd, ps->nonblock || (flags & RWF_NOWAIT)) == 0))
    return real.pwritev2(fd, iov, cnt, off, flags);
  return send_iov(ps, fd, iov, cnt, rwf_flags(flags));
}

ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags);
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags);
EXPORT ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  return preadv2(fd, iov, cnt, off, flags);
}
EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  return pwritev2(fd, iov, cnt, off, flags);
}

/* glibc's old public names for the same functions. */
ssize_t __read(int fd, void *buf, size_t len);
ssize_t __write(int fd, const void *buf, size_t len);
ssize_t __send(int fd, const void *buf, size_t len, int flags);
EXPORT ssize_t __read(int fd, void *buf, size_t len) { return read(fd, buf, len); }
EXPORT ssize_t __write(int fd, const void *buf, size_t len) { return write(fd, buf, len); }
EXPORT ssize_t __send(int fd, const void *buf, size_t len, int flags) {
  return send(fd, buf, len, flags);
}
