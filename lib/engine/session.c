/* A session's life on the engine side: creation, the ClientFinish check,
 * transports taken into and out of service, the engine's timer, kick and
 * socket events around the sans-IO core, resumes, and destruction.
 *
 * The rest of a session lives beside it: the data path in io.c, the
 * application's descriptor in appfd.c, control datagrams in session_ctl.c,
 * restores from snapshots in restore.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"

void session_lock(struct tether_session *s) {
  pthread_mutex_lock(&s->rx_lock);
  __atomic_add_fetch(&s->tx_wanted, 1, __ATOMIC_ACQ_REL);
  pthread_mutex_lock(&s->tx_lock);
  __atomic_sub_fetch(&s->tx_wanted, 1, __ATOMIC_ACQ_REL);
}

void session_tx_lock_writer(struct tether_session *s) {
  /* A writer that loops retakes tx_lock the moment it lets go, and a mutex
   * is not fair: the engine, waiting in session_lock(), could wait through
   * thousands of writes (heartbeats and acknowledgements late, the whole
   * engine stalled).  The writer gives way instead: session_lock() holds
   * nothing the writer needs while it waits for tx_lock. */
  while (__atomic_load_n(&s->tx_wanted, __ATOMIC_ACQUIRE))
    sched_yield();
  pthread_mutex_lock(&s->tx_lock);
}

void session_unlock(struct tether_session *s) {
  pthread_mutex_unlock(&s->tx_lock);
  pthread_mutex_unlock(&s->rx_lock);
}

struct core_config session_core_config(const struct tether_config *cfg) {
  struct core_config c = {
      .heartbeat_ns = (uint64_t)cfg->heartbeat_ms * 1000000,
      .suspend_ns = (uint64_t)cfg->suspend_ms * 1000000,
      .reconnect_max_ns = (uint64_t)cfg->reconnect_max_ms * 1000000,
      .give_up_ns = (uint64_t)cfg->give_up_s * 1000000000,
      .durable = cfg->durable,
      .retain_max = cfg->retain_max,
      .peer_rcvbuf_cap = cfg->peer_rcvbuf_max ? cfg->peer_rcvbuf_max : sock_host_rcvbuf_max(),
  };
  return c;
}

/* Where heartbeats go: the peer's IP with its side-channel port. */
static void set_udp_peer(struct tether_session *s, const struct sockaddr_storage *ip,
                         socklen_t len, uint32_t port) {
  memcpy(&s->udp_peer, ip, len);
  s->udp_peer_len = port ? len : 0;
  if (ip->ss_family == AF_INET)
    ((struct sockaddr_in *)&s->udp_peer)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)&s->udp_peer)->sin6_port = htons((uint16_t)port);
}

struct tether_session *session_new(struct tether_ctx *ctx, const struct hs_conn *h,
                                   bool is_client, bool async) {
  if (h->peer_len > sizeof(union sock_addr))
    return NULL; /* not IPv4 nor IPv6: sessions run over neither else */
  struct tether_session *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->ctx = ctx;
  pthread_mutex_init(&s->rx_lock, NULL);
  pthread_mutex_init(&s->tx_lock, NULL);
  pthread_mutex_init(&s->waiters_lock, NULL);
  memcpy(s->id, h->t.session_id, SESSION_ID_LEN);
  s->keys = h->keys;
  path_tag_init(s);
  s->is_client = is_client;
  s->sock = h->fd;
  s->hold_w = -1;
  s->hup_sock = -1;
  s->app_kind = APP_FD_SOCK;
  /* A session of the application's loop polls nothing of ours: its only
   * descriptor is the socket. */
  s->app_fd = async ? -1 : fcntl(s->sock, F_DUPFD_CLOEXEC, 0);
  if (!async && s->app_fd < 0) {
    wipe(&s->keys, sizeof(s->keys));
    free(s);
    return NULL;
  }
  sock_setup_session(s->sock);
  struct core_config cc = session_core_config(&ctx->cfg);
  core_init(&s->core, &cc, is_client ? CORE_CLIENT : CORE_SERVER, now_ns(),
            sock_sndbuf_max(s->sock), h->peer_rcvbuf);
  if (h->peer_durable)
    core_set_peer_durable(&s->core);
  set_udp_peer(s, &h->peer, h->peer_len, h->peer_udp_port);
  memcpy(&s->tcp_peer, &h->peer, h->peer_len);
  s->tcp_peer_len = h->peer_len;
  s->tcp_local_len = sizeof(s->tcp_local);
  if (getsockname(s->sock, (struct sockaddr *)&s->tcp_local, &s->tcp_local_len) < 0)
    s->tcp_local_len = 0;
  if (is_client) {
    memcpy(&s->dial_addr, &h->peer, h->peer_len);
    s->dial_len = h->peer_len;
    s->udp = h->peer.ss_family == AF_INET6 ? ctx->udp6 : ctx->udp4;
  } else {
    s->udp = h->listener ? h->listener->udp : NULL;
  }
  s->reported = TETHER_STATE_CONNECTED;
  return s;
}

int session_expect_finish(struct tether_session *s, const struct hs_conn *h) {
  s->finish = FINISH_DUE;
  memcpy(s->finish_mac, h->finish_mac, MAC_LEN);
  core_set_unconfirmed(&s->core, (uint64_t)s->ctx->cfg.connect_timeout_ms * 1000000);
  return 0;
}

static void drop_finish(struct tether_session *s) {
  free(s->finish_rd);
  s->finish_rd = NULL;
  s->finish = FINISH_NONE;
  wipe(s->finish_mac, MAC_LEN);
}

/* A ClientFinish frame (4-byte length, then the message: about 40 bytes)
 * read whole if it is all there: 1 with its body in buf (*len), 0 if it is
 * not (nothing read), or recv()'s 0 (EOF, -ECONNRESET) or error. */
#define FINISH_WHOLE_MAX 256
static int finish_whole(int sock, uint8_t buf[4 + FINISH_WHOLE_MAX], size_t *len) {
  ssize_t n = recv(sock, buf, 4 + FINISH_WHOLE_MAX, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0)
    return -ECONNRESET;
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
  if (n < 4)
    return 0;
  uint32_t flen = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
  if (flen == 0 || flen > FINISH_WHOLE_MAX || (size_t)n < 4 + flen)
    return 0;
  if (recv(sock, buf, 4 + flen, MSG_DONTWAIT) != (ssize_t)(4 + flen))
    return -EIO; /* the bytes just peeked: only another reader could take them */
  memmove(buf, buf + 4, flen);
  *len = flen;
  return 1;
}

/* session_take_finish_locked, also for the engine, which holds tx_lock too
 * (tx_locked). */
static int take_finish(struct tether_session *s, bool tx_locked) {
  const char *why = NULL;
  char tag[17];
  uint8_t whole[4 + FINISH_WHOLE_MAX];
  const uint8_t *body = whole;
  size_t len = 0;
  if (s->finish == FINISH_NONE || s->sock < 0)
    return 1;
  int rc = 0;
  if (s->finish == FINISH_DUE && (rc = finish_whole(s->sock, whole, &len)) == 0) {
    /* In pieces (or not there yet, or too long for finish_whole): the
     * reader takes what there is, and keeps it. */
    uint8_t probe;
    ssize_t any = recv(s->sock, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (any < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      errno = EAGAIN;
      return -1;
    }
    if (!(s->finish_rd = malloc(sizeof(*s->finish_rd)))) {
      errno = ENOMEM;
      return -1;
    }
    hs_reader_init(s->finish_rd, false);
    s->finish = FINISH_READING;
  }
  if (s->finish == FINISH_READING) {
    rc = hs_reader_step(s->finish_rd, s->sock, &why);
    body = s->finish_rd->buf;
    len = s->finish_rd->have;
  }
  if (rc == 0) {
    errno = EAGAIN;
    return -1;
  }
  if (rc == -ECONNRESET)
    return 0; /* EOF */
  int err = 0;
  if (rc > 0) {
    hs_msg *m = hs_decode(body, len, &why);
    if (!m || m->msg_case != TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH) {
      err = TETHER_EPROTO;
      why = why ? why : "not a ClientFinish";
    } else if (!mac_equal(m->client_finish->confirm.data, s->finish_mac)) {
      err = TETHER_EAUTH;
      why = "client failed key confirmation";
    }
    hs_free(m);
  } else if (rc == -EPROTO || rc == -EMSGSIZE || rc == TETHER_EVERSION) {
    err = TETHER_EPROTO;
  } else {
    errno = -rc;
    return -1;
  }
  drop_finish(s);
  /* Confirmed, or failed: a state change, under both locks (engine.h), as
   * writers look at the state under tx_lock alone. */
  if (!tx_locked)
    pthread_mutex_lock(&s->tx_lock);
  if (err == 0) {
    core_confirm(&s->core);
  } else {
    LOG_WARN(s->ctx, "session %s: %s: failed", session_tag(s->id, tag), why);
    core_fail(&s->core, err);
    session_kick(s);
  }
  if (!tx_locked)
    pthread_mutex_unlock(&s->tx_lock);
  return 1;
}

int session_take_finish_locked(struct tether_session *s) { return take_finish(s, false); }

void session_kick(struct tether_session *s) { event_active(s->kick, EV_READ, 0); }

void session_fail(struct tether_session *s, int err) {
  session_lock(s);
  core_fail(&s->core, err);
  session_unlock(s);
  session_kick(s);
}

void session_retire_locked(struct tether_session *s) {
  if (s->sock < 0)
    return;
  drop_finish(s); /* it came on this connection, or never will */
  /* shutdown() stops all I/O on the socket at once, even for a poll() that
   * still references it (waking it); the descriptor itself is closed by the
   * engine, which may have an event registered on it. */
  shutdown(s->sock, SHUT_RDWR);
  s->transport_gen++;
  if (s->n_retired < (int)(sizeof(s->retired) / sizeof(s->retired[0])))
    s->retired[s->n_retired++] = s->sock;
  else
    close(s->sock); /* the engine drains this list on every kick, unless a
                       reader sleeps in recv() on the oldest: not this one */
  s->sock = -1;
}

/* Engine thread: watches the end of the live connection while the session
 * is connected and the end would be news: not after the peer's close (its
 * FIN then is that close), nor once the application closed (draining reads
 * see it).  A socket leaves the set before it is closed (its file lives on
 * in app_fd). */
static void update_hup_watch(struct tether_session *s) {
  int want = s->sock >= 0 && s->core.state == CORE_CONNECTED && !s->app_closed &&
                     !core_half_closed(s->core.peer_wr)
                 ? s->sock
                 : -1;
  if (want == s->hup_sock)
    return;
  if (s->hup_sock >= 0)
    (void)epoll_ctl(s->ctx->hup_ep, EPOLL_CTL_DEL, s->hup_sock, NULL);
  s->hup_sock = -1;
  struct epoll_event e = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = s};
  if (want >= 0 && epoll_ctl(s->ctx->hup_ep, EPOLL_CTL_ADD, want, &e) == 0)
    s->hup_sock = want;
}

/* Engine thread: closes retired sockets. */
static void close_retired(struct tether_session *s) {
  if (s->reader_in_recv)
    return; /* it kicks us when it is back (recv_transport) */
  for (int i = 0; i < s->n_retired; i++) {
    if (s->hup_sock == s->retired[i]) {
      (void)epoll_ctl(s->ctx->hup_ep, EPOLL_CTL_DEL, s->hup_sock, NULL);
      s->hup_sock = -1;
    }
    if (s->sock_ev && s->sock_ev_fd == s->retired[i] && s->sock_ev_flags) {
      event_del(s->sock_ev);
      s->sock_ev_flags = 0;
    }
    if (s->async)
      async_forget_sock(s, s->retired[i]);
    close(s->retired[i]);
  }
  s->n_retired = 0;
}

void session_suspend_locked(struct tether_session *s, uint64_t now, const char *why) {
  char tag[17];
  if (s->core.state != CORE_CONNECTED)
    return;
  core_on_transport_lost(&s->core, now);
  if (s->core.state == CORE_SUSPENDED)
    LOG_INFO(s->ctx, "session %s: suspended (%s)", session_tag(s->id, tag), why);
  else
    LOG_INFO(s->ctx, "session %s: transport ended after close", session_tag(s->id, tag));
  app_fd_ready(s);
  session_retire_locked(s); /* its shutdown wakes pollers of the socket */
  session_kick(s);
}

/* A final state: the app fd reads as "ready" forever so waiters return. */
static void enter_final_locked(struct tether_session *s) {
  char tag[17];
  if (s->core.state == CORE_FAILED)
    LOG_INFO(s->ctx, "session %s: failed: %s", session_tag(s->id, tag),
             tether_strerror(s->core.error));
  session_retire_locked(s);
  app_fd_ready(s);
}

/* ---- engine side ---------------------------------------------------------- */

/* Engine thread: the session timer at d (UINT64_MAX: none). */
static void set_timer(struct tether_session *s, uint64_t d) {
  __atomic_store_n(&s->timer_due_ns, d, __ATOMIC_RELAXED); /* atomic: session_start */
  if (d == UINT64_MAX) {
    event_del(s->timer);
    return;
  }
  uint64_t now = now_ns();
  uint64_t wait = d > now ? d - now : 0;
  struct timeval tv = {.tv_sec = (time_t)(wait / 1000000000),
                       .tv_usec = (suseconds_t)(wait % 1000000000 / 1000)};
  event_add(s->timer, &tv);
}

static void arm_timer(struct tether_session *s) { set_timer(s, core_next_deadline(&s->core)); }

void session_timer_at(struct tether_session *s, uint64_t at) { set_timer(s, at); }

void session_timer_soon(struct tether_session *s, uint64_t delay_ns) {
  if (__atomic_load_n(&s->timer_due_ns, __ATOMIC_RELAXED) <= now_ns() + delay_ns)
    return; /* due by then anyway */
  struct timeval tv = {.tv_sec = (time_t)(delay_ns / 1000000000),
                       .tv_usec = (suseconds_t)(delay_ns % 1000000000 / 1000)};
  event_add(s->timer, &tv); /* on_timer sets it back to timer_due_ns */
}

void session_flush_locked(struct tether_session *s) {
  const uint8_t *p;
  size_t n;
  while (s->sock >= 0 && (n = core_pending(&s->core, &p)) > 0) {
    ssize_t w = send(s->sock, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      core_on_flushed(&s->core, (size_t)w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    session_suspend_locked(s, now_ns(), w < 0 ? strerror(errno) : "send failed");
    return;
  }
}

static void on_sock(evutil_socket_t fd, short what, void *arg);

/* The engine watches the socket only when it has work there: a resend to
 * push (EV_WRITE), or bytes to discard after the application closed
 * (EV_READ).  The data path never wakes the engine. */
static void update_sock_ev(struct tether_session *s) {
  short want = 0;
  if (s->sock >= 0 && s->core.state != CORE_FAILED) {
    if (s->core.tx_pos < s->core.sent)
      want |= EV_WRITE;
    /* A replay is checked whatever the application does: one that read to
     * the end may never read again, and the session cannot finish before
     * the check does. */
    if ((s->app_closed && !core_at_eof(&s->core)) || core_replay_pending(&s->core))
      want |= EV_READ;
    /* A writer is held back: arriving bytes must still make the app fd
     * (a placeholder then) readable.  Edge-triggered: once per arrival,
     * not for as long as the application leaves them unread. */
    else if (s->app_kind == APP_FD_HELD)
      want |= EV_READ | EV_ET;
  }
  if (want == s->sock_ev_flags && (!want || s->sock_ev_fd == s->sock))
    return;
  if (s->sock_ev) {
    event_del(s->sock_ev);
    if (want) {
      event_assign(s->sock_ev, s->ctx->base, s->sock, want | EV_PERSIST, on_sock, s);
      engine_event_prio(s->ctx, s->sock_ev, ENGINE_PRIO_BULK);
    }
  } else if (want) {
    s->sock_ev =
        engine_event_new(s->ctx, ENGINE_PRIO_BULK, s->sock, want | EV_PERSIST, on_sock, s);
  }
  if (want && s->sock_ev)
    event_add(s->sock_ev, NULL);
  s->sock_ev_flags = s->sock_ev ? want : 0;
  s->sock_ev_fd = s->sock;
}

/* rx_lock held (tx_lock too if tx_locked).  Reads bytes the application already has (the peer's
 * replay after it rolled back) and checks them instead of delivering them.
 * Returns recv's result; on a difference the session has failed, and the
 * peer is told at once so that it fails with the same error. */
ssize_t session_take_replay_locked(struct tether_session *s, bool tx_locked) {
  uint8_t scratch[16384];
  uint64_t want = core_replay_pending(&s->core);
  ssize_t n = recv(s->sock, scratch, want < sizeof(scratch) ? (size_t)want : sizeof(scratch),
                   MSG_DONTWAIT);
  if (n <= 0)
    return n;
  /* A difference fails the session: a state change, under both locks. */
  if (!tx_locked)
    pthread_mutex_lock(&s->tx_lock);
  if (core_on_replayed(&s->core, scratch, (size_t)n) < 0) {
    char tag[17];
    LOG_WARN(s->ctx, "session %s: the peer's replay differs from what was delivered: failed",
             session_tag(s->id, tag));
    udp_send_ctl(s, now_ns());
    session_kick(s);
  }
  if (!tx_locked)
    pthread_mutex_unlock(&s->tx_lock);
  return n;
}

/* Engine thread, session_lock() held.  Checks the peer's replay whatever
 * the application does; after the application closed, also reads and drops
 * what still arrives, so the peer's writes drain and its EOF is seen. */
static void drain_locked(struct tether_session *s) {
  uint8_t buf[16384];
  for (int i = 0; i < 64 && s->sock >= 0 && s->core.state != CORE_FAILED; i++) {
    if (session_finish_due(s)) {
      ssize_t n = take_finish(s, true);
      if (n > 0)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
      session_suspend_locked(s, now_ns(), n == 0 ? "EOF before the ClientFinish" : strerror(errno));
      return;
    }
    if (core_replay_pending(&s->core)) {
      ssize_t n = session_take_replay_locked(s, true); /* drain: session_lock() held */
      if (n > 0)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
      session_suspend_locked(s, now_ns(), n == 0 ? "EOF during a replay" : strerror(errno));
      return;
    }
    if (!s->app_closed)
      return; /* new bytes are the application's to read */
    ssize_t n = recv(s->sock, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      core_on_delivered(&s->core, buf, (size_t)n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    if (n == 0 && core_eof_confirmed(&s->core))
      return; /* the peer's real EOF: nothing more will come */
    session_suspend_locked(s, now_ns(), n == 0 ? "unconfirmed EOF" : strerror(errno));
    return;
  }
}

/* What the application's state callback is told: read under both locks
 * (state_report_locked), told with none held, since the callback may call
 * tether_* (report_state).  A change made in between kicks the engine,
 * which settles and reports again. */
struct state_report {
  tether_state state;
  int err;
  bool tell;
};

static struct state_report state_report_locked(const struct tether_session *s) {
  struct state_report r = {.state = (tether_state)s->core.state};
  r.err = r.state == TETHER_STATE_FAILED ? s->core.error : 0;
  r.tell = s->ctx->cfg.state_cb && !s->app_closed;
  return r;
}

static void report_state(struct tether_session *s, struct state_report r) {
  char tag[17];
  if (r.state == s->reported)
    return;
  s->reported = r.state;
  if (r.state == TETHER_STATE_CLOSED)
    LOG_INFO(s->ctx, "session %s: closed", session_tag(s->id, tag));
  if (r.tell)
    s->ctx->cfg.state_cb(s, r.state, r.err, s->ctx->cfg.state_cb_arg);
}

/* Engine thread: everything the data path or a timer may have changed. */
static void settle(struct tether_session *s, bool *destroy) {
  app_fd_release(s); /* a writer held back may have room now */
  if (s->app_closed && s->hold_w >= 0) {
    close(s->hold_w); /* the WAIT pipe's: its read end, app_fd, is closed */
    s->hold_w = -1;
  }
  if ((s->core.state == CORE_FAILED || s->core.state == CORE_CLOSED) &&
      s->app_kind != APP_FD_READY && (s->sock < 0 || s->core.state == CORE_FAILED))
    enter_final_locked(s);
  session_flush_locked(s);
  close_retired(s);
  update_sock_ev(s);
  update_hup_watch(s);
  if (s->async)
    async_settle_locked(s);
  path_update(s);
  /* Covered and quiet: no heartbeat of its own will give its ring back. */
  if (core_path_covered(&s->core) && core_quiet(&s->core))
    retention_shrink(&s->core.ret);
  *destroy = s->app_closed && (s->core.state == CORE_FAILED || s->done);
  if (!*destroy)
    arm_timer(s);
}

bool session_settle_unlock(struct tether_session *s) {
  bool destroy;
  settle(s, &destroy);
  struct state_report r = state_report_locked(s);
  session_unlock(s);
  suspended_note(s);
  report_state(s, r);
  if (destroy)
    session_destroy(s);
  return destroy;
}

static void on_sock(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  session_lock(s);
  if (what & EV_READ)
    app_fd_held_sync(s);
  if (what & EV_READ)
    drain_locked(s);
  session_settle_unlock(s);
}

void session_on_hangup(struct tether_session *s) {
  session_lock(s);
  /* The peer's host ended the connection and no close of the peer's
   * explains it (its FIN follows its acknowledged close notice): a crash,
   * a restart, a reset.  Suspend now, not at the application's next call,
   * so that an idle session resumes by itself.  Unread bytes die with the
   * socket; the resume resends them. */
  if (s->hup_sock >= 0 && s->hup_sock == s->sock && s->core.state == CORE_CONNECTED &&
      !core_half_closed(s->core.peer_wr))
    session_suspend_locked(s, now_ns(), "connection ended by the peer's host");
  session_settle_unlock(s);
}

static void on_kick(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  session_lock(s);
  session_apply_deferred_locked(s);
  session_settle_unlock(s);
}

/* Engine thread: both locks for the timer, unless another thread holds one
 * (a writer in send(), a reader in recv()): blocking there would stall every
 * session of the engine behind one busy data path, and a lock that a looping
 * writer keeps retaking makes a waiter pay a futex wake-up per write.  The
 * timer then comes back in a millisecond (a datagram the engine left for the
 * writer is applied by the writer itself), up to TIMER_YIELD_MAX times in a
 * row; then it waits for the locks. */
#define TIMER_YIELD_MAX 20

static bool timer_lock(struct tether_session *s) {
  if (s->timer_yields < TIMER_YIELD_MAX) {
    if (pthread_mutex_trylock(&s->rx_lock) == 0) {
      if (pthread_mutex_trylock(&s->tx_lock) == 0) {
        s->timer_yields = 0;
        return true;
      }
      pthread_mutex_unlock(&s->rx_lock);
    }
    s->timer_yields++;
    struct timeval soon = {0, 1000}; /* the deadline is due: not session_timer_soon */
    evtimer_add(s->timer, &soon);
    return false;
  }
  s->timer_yields = 0;
  session_lock(s);
  return true;
}

/* Both locks held: the keepalive the side channel's state calls for. */
static void set_keepalive(struct tether_session *s) {
  enum keepalive want = s->core.udp_seen ? KEEPALIVE_LONG : KEEPALIVE_SHORT;
  if (s->sock < 0 || s->keepalive == want)
    return;
  sock_keepalive(s->sock, &s->ctx->cfg, want == KEEPALIVE_LONG);
  s->keepalive = want;
}

bool session_heartbeat_locked(struct tether_session *s, uint64_t now,
                              const struct ctl_path *path) {
  /* Heartbeats prove the peer alive, not the TCP path (a firewall may drop
   * one and pass the other); without a side channel this is the detector. */
  if (s->core.state == CORE_CONNECTED && s->sock >= 0 &&
      sock_path_silent(s->sock, (uint32_t)(s->core.cfg.suspend_ns / 1000000))) {
    session_suspend_locked(s, now, "no TCP acknowledgement within suspend_ms");
    return false;
  }
  set_keepalive(s);
  if (s->sock >= 0)
    core_trim_inflight(&s->core, sock_outq(s->sock));
  retention_shrink(&s->core.ret); /* an idle ring gives its memory back */
  udp_send_ctl_path(s, now, path);
  return true;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  /* Brought forward for a datagram that a writer has applied since (see
   * session_on_ctl): back to sleep until the core's own deadline. */
  uint64_t due = __atomic_load_n(&s->timer_due_ns, __ATOMIC_RELAXED);
  if (!__atomic_load_n(&s->ctl_deferred, __ATOMIC_ACQUIRE) && due > now_ns()) {
    set_timer(s, due);
    return;
  }
  if (!timer_lock(s))
    return;
  session_apply_deferred_locked(s); /* before the timers: it may be a heartbeat */
  path_stamp(s);
  uint64_t now = now_ns();
  unsigned act = core_on_timer(&s->core, now, random_u32());
  if (act & CORE_ACT_SUSPEND)
    session_suspend_locked(s, now, "no heartbeat within suspend_ms");
  if (act & CORE_ACT_HEARTBEAT)
    (void)session_heartbeat_locked(s, now, NULL);
  if ((act & CORE_ACT_FIN) && s->sock >= 0) {
    char tag[17];
    LOG_DEBUG(s->ctx, "session %s: FIN after %llu bytes", session_tag(s->id, tag),
              (unsigned long long)s->core.sent);
    shutdown(s->sock, SHUT_WR);
  }
  if (act & CORE_ACT_DONE)
    s->done = true; /* TIME_WAIT over for a session the application closed */
  if (session_settle_unlock(s))
    return;
  if (act & CORE_ACT_REDIAL)
    client_redial(s);
}

int session_start(struct tether_session *s) {
  struct tether_ctx *ctx = s->ctx;
  s->timer = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_timer, s);
  s->kick = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_kick, s);
  if (!s->timer || !s->kick)
    return -ENOMEM;
  registry_add(ctx, s);
  session_lock(s);
  arm_timer(s);
  session_unlock(s);
  return 0;
}

void session_attach(struct tether_session *s, struct hs_conn *h) {
  char tag[17];
  uint64_t now = now_ns();
  session_lock(s);
  uint64_t outage = now - s->core.suspended_at_ns;
  int rc = 0;
  if (s->core.state == CORE_FAILED)
    LOG_DEBUG(s->ctx, "session %s: failed meanwhile; resume not needed", session_tag(s->id, tag));
  else /* a CLOSED session only exchanges its final state */
    rc = core_on_resumed(&s->core, now, &h->peer_state);
  if (rc < 0 || s->core.state != CORE_CONNECTED) {
    if (rc < 0)
      LOG_WARN(s->ctx, "session %s: cannot resume: %s", session_tag(s->id, tag),
               tether_strerror(rc));
  } else {
    s->restored_unresumed = false;
    s->sock = h->fd;
    h->fd = -1;
    sock_setup_session(s->sock);
    s->keepalive = KEEPALIVE_NONE; /* a new connection */
    set_keepalive(s);
    app_fd_ready(s); /* wakes pollers of the WAIT pipe; the next call installs the socket */
    if (!s->is_client) /* the client may have moved: heartbeats follow it */
      set_udp_peer(s, &h->peer, h->peer_len,
                   ntohs(s->udp_peer.sa.sa_family == AF_INET ? s->udp_peer.in4.sin_port
                                                             : s->udp_peer.in6.sin6_port));
    LOG_INFO(s->ctx, "session %s: resumed after %.3f s; resending %llu bytes",
             session_tag(s->id, tag), (double)outage / 1e9,
             (unsigned long long)(s->core.sent - s->core.tx_pos));
  }
  session_settle_unlock(s);
}

void session_destroy(struct tether_session *s) {
  if (!s)
    return;
  suspended_forget(s);
  path_leave(s);
  registry_remove(s->ctx, s);
  for (int i = 0; i < 2; i++)
    if (s->redials[i])
      hs_conn_abort(s->redials[i]);
  if (s->timer)
    event_free(s->timer);
  if (s->kick)
    event_free(s->kick);
  if (s->confirm_ev)
    event_free(s->confirm_ev);
  close_retired(s);
  async_free(s);
  if (s->hup_sock >= 0)
    (void)epoll_ctl(s->ctx->hup_ep, EPOLL_CTL_DEL, s->hup_sock, NULL);
  if (s->sock_ev)
    event_free(s->sock_ev);
  if (s->sock >= 0) {
    /* Finished normally: a graceful close, not a reset. */
    struct linger lg = {0, 0};
    if (s->core.state == CORE_CLOSED)
      setsockopt(s->sock, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(s->sock);
  }
  if (s->app_fd >= 0)
    close(s->app_fd);
  if (s->hold_w >= 0)
    close(s->hold_w);
  core_clear(&s->core);
  free(s->finish_rd);
  pthread_mutex_destroy(&s->rx_lock);
  pthread_mutex_destroy(&s->tx_lock);
  pthread_mutex_destroy(&s->waiters_lock);
  wipe(s, sizeof(*s));
  free(s);
}
