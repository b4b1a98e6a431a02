/* The data path: tether_read and tether_write in the application's
 * threads, straight on the kernel socket (one copy into retention on
 * write, none on read), and the calls that query or end a session. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine.h"

/* Blocks until the session's number may be readable.  A reader whose last
 * wait was short first polls for up to ctx->read_spin_ns without sleeping:
 * in a bulk transfer the next bytes are microseconds away, and a reader that
 * sleeps between them has the writer's kernel wake it for each (on a
 * virtual machine, an interrupt to an idle CPU every time), which slows the
 * writer more than the spin costs the reader.  A wait longer than the spin
 * turns spinning off until a wait is short again, so an idle session sleeps
 * at once.  Returns 0 or -EINTR (also for a signal during the spin). */
static int wait_readable(struct tether_session *s) {
  uint64_t spin = s->ctx->read_spin_ns, start = spin ? now_ns() : 0;
  int rc;
  if (spin && __atomic_load_n(&s->read_spin, __ATOMIC_RELAXED)) {
    struct pollfd p = {.fd = s->app_fd, .events = POLLIN};
    struct spin_hold h;
    bool ready = false;
    spin_hold(&h); /* a signal must still interrupt the wait: spin.c */
    do
      ready = poll(&p, 1, 0) > 0;
    while (!ready && now_ns() - start < spin);
    rc = ready ? 0 : spin_wait(&h, s, POLLIN);
    (void)spin_release(&h); /* a signal now came after the wait ended */
    if (ready)
      return 0;
  } else {
    rc = app_wait(s, s->app_fd, POLLIN, NULL);
  }
  if (spin)
    __atomic_store_n(&s->read_spin, now_ns() - start < spin, __ATOMIC_RELAXED);
  return rc;
}

static int transport_error(int err) {
  return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT || err == EHOSTUNREACH ||
         err == ENETUNREACH || err == ECONNABORTED || err == ENOTCONN || err == ENETDOWN ||
         err == EHOSTDOWN;
}

/* recv_transport's answer for bytes of a transport retired meanwhile. */
#define RECV_STALE (-2)

/* rx_lock held (dropped and retaken while recv() sleeps).  Reads from the
 * live socket like recv(): without waiting if the session is non-blocking,
 * the reader should spin first or has just waited (wait_readable); else
 * sleeping in recv() itself, as a plain TCP reader does -- one system call
 * per read, not a recv() that fails, a poll() and another recv().  While it
 * sleeps the engine may retire the socket (a suspend, a failure): its
 * shutdown() ends the recv(), and the retired socket stays open until the
 * reader is back (close_retired), so that its number cannot name another
 * socket meanwhile.  Bytes read from a socket retired meanwhile were not
 * counted as delivered when the engine retired it: the resume resends them,
 * so they are dropped here (RECV_STALE). */
static ssize_t recv_transport(struct tether_session *s, void *buf, size_t len, bool waited) {
  uint64_t spin = s->ctx->read_spin_ns;
  if (s->nonblocking || waited || (spin && __atomic_load_n(&s->read_spin, __ATOMIC_RELAXED)) ||
      __atomic_load_n(&s->app_kind, __ATOMIC_RELAXED) != APP_FD_SOCK)
    return recv(s->sock, buf, len, MSG_DONTWAIT);
  int sock = s->sock;
  uint32_t gen = s->transport_gen;
  if (s->blocking_gen != gen + 1) {
    /* Sockets are made non-blocking (connect, handshake); every other call
     * on them says MSG_DONTWAIT.  Once per transport, and only for a
     * blocking reader (the preload's sessions never are). */
    int fl = fcntl(sock, F_GETFL);
    if (fl < 0 || ((fl & O_NONBLOCK) && fcntl(sock, F_SETFL, fl & ~O_NONBLOCK) < 0))
      return recv(sock, buf, len, MSG_DONTWAIT);
    s->blocking_gen = gen + 1;
  }
  uint64_t start = spin ? now_ns() : 0;
  s->reader_in_recv = true;
  pthread_mutex_unlock(&s->rx_lock);
  ssize_t n = recv(sock, buf, len, 0);
  int err = errno;
  pthread_mutex_lock(&s->rx_lock);
  s->reader_in_recv = false;
  if (spin)
    __atomic_store_n(&s->read_spin, now_ns() - start < spin, __ATOMIC_RELAXED);
  if (s->n_retired > 0)
    session_kick(s); /* the engine held back closing them for us */
  if (s->transport_gen != gen)
    return RECV_STALE;
  errno = err;
  return n;
}

ssize_t tether_read(tether_session *s, void *buf, size_t len) {
  if (!s || (!buf && len))
    return -EINVAL;
  if (s->app_closed)
    return -EBADF;
  app_fd_fixup(s);
  bool waited = false;
  pthread_mutex_lock(&s->rx_lock);
  for (;;) {
    struct core_session *c = &s->core;
    if (core_at_eof(c)) {
      pthread_mutex_unlock(&s->rx_lock);
      return 0;
    }
    if (c->state == CORE_FAILED) {
      pthread_mutex_unlock(&s->rx_lock);
      return c->error;
    }
    if (len == 0) {
      pthread_mutex_unlock(&s->rx_lock);
      return 0;
    }
    if (s->sock >= 0 && (c->state == CORE_CONNECTED || c->state == CORE_CLOSED)) {
      ssize_t n;
      if (session_finish_due(s)) {
        if ((n = session_take_finish_locked(s)) > 0)
          continue;
      } else if (core_replay_pending(c)) {
        if ((n = session_take_replay_locked(s, false)) > 0)
          continue;
      } else if ((n = recv_transport(s, buf, len, waited)) > 0) {
        core_on_delivered(c, buf, (size_t)n);
        path_talks(s); /* it has something to acknowledge now */
        if (core_ack_due(c)) {
          /* Acknowledge progress now, from this thread: a datagram per
           * CORE_ACK_EVERY bytes keeps the sender's retention small. */
          pthread_mutex_lock(&s->tx_lock);
          udp_send_ctl(s, now_ns());
          pthread_mutex_unlock(&s->tx_lock);
        }
        pthread_mutex_unlock(&s->rx_lock);
        return n;
      }
      int err = n < 0 ? errno : 0;
      if (n == RECV_STALE)
        continue;
      if (n < 0 && err == EINTR && !s->nonblocking) { /* a signal in recv() */
        pthread_mutex_unlock(&s->rx_lock);
        return -EINTR;
      }
      if (n == 0 || transport_error(err)) {
        pthread_mutex_lock(&s->tx_lock);
        if (n == 0 && core_eof_confirmed(c)) {
          pthread_mutex_unlock(&s->tx_lock);
          continue; /* core_at_eof now holds */
        }
        session_suspend_locked(s, now_ns(), n == 0 ? "EOF without a close" : strerror(err));
        pthread_mutex_unlock(&s->tx_lock);
        continue;
      }
      if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        pthread_mutex_unlock(&s->rx_lock);
        return -err;
      }
      if (__atomic_load_n(&s->app_kind, __ATOMIC_RELAXED) == APP_FD_HELD) {
        pthread_mutex_lock(&s->tx_lock);
        app_fd_held_sync(s); /* nothing left to read: not readable */
        pthread_mutex_unlock(&s->tx_lock);
      }
    }
    pthread_mutex_unlock(&s->rx_lock);
    if (s->nonblocking)
      return -EAGAIN;
    if (wait_readable(s) < 0)
      return -EINTR;
    waited = true;
    app_fd_fixup(s);
    pthread_mutex_lock(&s->rx_lock);
  }
}

/* tx_lock held; may drop and retake locks to suspend.  Returns 0 when the
 * caller should retry its write, -EAGAIN when it must wait. */
static int write_failed(struct tether_session *s, int err) {
  pthread_mutex_unlock(&s->tx_lock);
  session_lock(s);
  session_suspend_locked(s, now_ns(), strerror(err));
  pthread_mutex_unlock(&s->rx_lock);
  return 0;
}

/* Whether the kernel would take more bytes on fd now. */
static bool sock_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* No locks held.  The socket may be writable while retention has no room
 * (a durable peer that does not commit): then app_fd must not say
 * "writable", or every poller would spin on EAGAIN (see app_fd_hold).
 *
 * Not while the socket itself is full: its own POLLOUT is truthful then.
 * Retried once it drains, the writer trims again (the in-flight rule), and
 * for a peer that is not durable finds room: after the trim retention holds
 * at most outq + peer_rcvbuf_max (+ 1 KiB when we are durable), so its room
 * is at least local_sndbuf_max - outq, more than nothing whenever the socket
 * is writable.  Such a session is never held. */
static void hold_writer(struct tether_session *s) {
  session_lock(s);
  if (s->core.state == CORE_CONNECTED && core_write_room(&s->core) == 0 && s->sock >= 0 &&
      sock_writable(s->sock))
    app_fd_hold(s);
  session_unlock(s);
}

ssize_t tether_write(tether_session *s, const void *buf, size_t len) {
  if (!s || (!buf && len))
    return -EINVAL;
  if (s->app_closed)
    return -EBADF;
  app_fd_fixup(s);
  session_tx_lock_writer(s);
  for (;;) {
    struct core_session *c = &s->core;
    int rc = core_write_check(c);
    if (rc == -EAGAIN && c->state == CORE_CONNECTED && s->sock >= 0) {
      session_flush_locked(s); /* a resend goes before new bytes */
      rc = core_write_check(c);
    }
    if (rc < 0 && rc != -EAGAIN) {
      pthread_mutex_unlock(&s->tx_lock);
      return rc;
    }
    if (rc == 0 && len == 0) {
      pthread_mutex_unlock(&s->tx_lock);
      return 0;
    }
    bool no_room = false;
    if (rc == 0) {
      size_t room = core_write_room(c);
      if (room < len) {
        core_trim_inflight(c, sock_outq(s->sock));
        room = core_write_room(c);
      }
      size_t n = len < room ? len : room;
      no_room = n == 0;
      if (n > 0) {
        /* Reserve retention memory first: once the kernel has the bytes we
         * must be able to keep them. */
        if ((rc = core_reserve(c, n)) < 0) {
          pthread_mutex_unlock(&s->tx_lock);
          return rc;
        }
        ssize_t w = send(s->sock, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
          core_on_written(c, buf, (size_t)w);
          path_talks(s); /* bytes in flight: not quiet */
          if (__atomic_load_n(&s->ctl_deferred, __ATOMIC_ACQUIRE))
            session_writer_takes_deferred(s);
          pthread_mutex_unlock(&s->tx_lock);
          return w;
        }
        int err = w < 0 ? errno : EPIPE;
        if (transport_error(err)) {
          write_failed(s, err);
          continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
          pthread_mutex_unlock(&s->tx_lock);
          return -err;
        }
      }
    }
    pthread_mutex_unlock(&s->tx_lock);
    if (no_room)
      hold_writer(s);
    if (s->nonblocking)
      return -EAGAIN;
    /* Held, app_fd never says "writable": the release wakes the wait. */
    if (app_wait(s, s->app_fd, POLLOUT, NULL) < 0)
      return -EINTR;
    app_fd_fixup(s);
    session_tx_lock_writer(s);
  }
}

int tether_shutdown(tether_session *s) {
  if (!s || s->app_closed)
    return -EBADF;
  return s->async ? async_shutdown(s) : session_shutdown(s);
}

int session_shutdown(struct tether_session *s) {
  session_lock(s);
  int rc = s->core.state == CORE_FAILED ? s->core.error : 0;
  if (rc == 0)
    core_shutdown(&s->core, now_ns());
  session_unlock(s);
  session_kick(s);
  return rc;
}

int tether_close(tether_session *s) {
  if (!s || s->app_closed)
    return -EBADF;
  return s->async ? async_close(s) : session_close(s);
}

int session_close(struct tether_session *s) {
  session_lock(s);
  core_close(&s->core, now_ns());
  /* Our final state (delivered, closed) goes out now, not at the engine's
   * next turn: the process may be about to exit. */
  udp_send_ctl(s, now_ns());
  __atomic_store_n(&s->app_closed, true, __ATOMIC_RELAXED); /* ctx_linger looks without its lock */
  if (s->app_fd >= 0)
    close(s->app_fd);
  s->app_fd = -1;
  /* The engine takes over at its next turn.  A connected session with a
   * side channel gets one soon: the peer answers that datagram (it asks for
   * a reply), and the session's timer is armed meanwhile (at most a
   * heartbeat away).  Other sessions are kicked now -- before unlocking:
   * once unlocked, the engine may free s. */
  if (s->core.state != CORE_CONNECTED || !s->udp || s->udp_peer_len == 0)
    session_kick(s);
  session_unlock(s);
  return 0;
}

/* None for a session of the application's loop (async.c): -EINVAL. */
int tether_fd(const tether_session *s) { return s && s->app_fd >= 0 ? s->app_fd : -EINVAL; }

int tether_set_nonblocking(tether_session *s, int on) {
  if (!s)
    return -EINVAL;
  s->nonblocking = on != 0;
  return 0;
}

tether_state tether_session_state(const tether_session *s) {
  return s ? (tether_state)__atomic_load_n(&s->core.state, __ATOMIC_RELAXED) : TETHER_STATE_FAILED;
}

int tether_session_error(const tether_session *s) {
  if (!s)
    return -EINVAL;
  struct tether_session *m = (struct tether_session *)s;
  session_lock(m); /* the engine may be failing it */
  int err = s->core.state == CORE_FAILED ? s->core.error : 0;
  session_unlock(m);
  return err;
}

const char *tether_state_name(tether_state st) {
  switch (st) {
  case TETHER_STATE_CONNECTED: return "connected";
  case TETHER_STATE_SUSPENDED: return "suspended";
  case TETHER_STATE_CLOSED: return "closed";
  case TETHER_STATE_FAILED: return "failed";
  }
  return "unknown";
}

int tether_session_stats(const tether_session *s, tether_stats *out) {
  if (!s || !out)
    return -EINVAL;
  struct tether_session *m = (struct tether_session *)s;
  memset(out, 0, sizeof(*out));
  session_lock(m);
  const struct core_session *c = &s->core;
  out->bytes_sent = c->sent;
  out->bytes_received = c->delivered;
  out->bytes_resent = c->resent;
  out->bytes_retained = c->ret.len;
  out->reconnects = c->reconnects;
  out->suspended_ns = c->suspended_total_ns;
  if (c->state == CORE_SUSPENDED)
    out->suspended_ns += now_ns() - c->suspended_at_ns;
  session_unlock(m);
  return 0;
}

int tether_session_peer_received(const tether_session *s, uint64_t *out) {
  if (!s || !out)
    return -EINVAL;
  struct tether_session *m = (struct tether_session *)s;
  int rc = 0;
  session_lock(m);
  if (m->restored_unresumed)
    rc = -EAGAIN; /* the peer's position is learnt when it resumes */
  else
    *out = s->core.peer_delivered > s->core.peer_acked ? s->core.peer_delivered
                                                       : s->core.peer_acked;
  session_unlock(m);
  return rc;
}
