/* A session as the application and the engine share it: the data path
 * (tether_read/tether_write in the caller's thread, straight on the kernel
 * socket), the stable application fd, and the engine's timer, kick and
 * transport handling around the sans-IO core. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"
#include "wire/snapshot.h"

void session_lock(struct tether_session *s) {
  pthread_mutex_lock(&s->rx_lock);
  pthread_mutex_lock(&s->tx_lock);
}

void session_unlock(struct tether_session *s) {
  pthread_mutex_unlock(&s->tx_lock);
  pthread_mutex_unlock(&s->rx_lock);
}

static struct core_config core_cfg(const struct tether_config *cfg) {
  struct core_config c = {
      .heartbeat_ns = (uint64_t)cfg->heartbeat_ms * 1000000,
      .suspend_ns = (uint64_t)cfg->suspend_ms * 1000000,
      .reconnect_max_ns = (uint64_t)cfg->reconnect_max_ms * 1000000,
      .give_up_ns = (uint64_t)cfg->give_up_s * 1000000000,
      .durable = cfg->durable,
      .retain_max = cfg->retain_max,
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
                                   bool is_client) {
  struct tether_session *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->ctx = ctx;
  pthread_mutex_init(&s->rx_lock, NULL);
  pthread_mutex_init(&s->tx_lock, NULL);
  memcpy(s->id, h->t.session_id, SESSION_ID_LEN);
  s->keys = h->keys;
  s->is_client = is_client;
  s->sock = h->fd;
  s->hold_w = -1;
  s->hup_sock = -1;
  s->app_kind = APP_FD_SOCK;
  s->app_fd = fcntl(s->sock, F_DUPFD_CLOEXEC, 0);
  if (s->app_fd < 0) {
    wipe(&s->keys, sizeof(s->keys));
    free(s);
    return NULL;
  }
  sock_setup_session(s->sock, &ctx->cfg);
  struct core_config cc = core_cfg(&ctx->cfg);
  core_init(&s->core, &cc, is_client ? CORE_CLIENT : CORE_SERVER, now_ns(),
            sock_sndbuf_max(s->sock), h->peer_rcvbuf);
  if (h->peer_durable)
    core_set_peer_durable(&s->core);
  set_udp_peer(s, &h->peer, h->peer_len, h->peer_udp_port);
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
  if (!(s->finish_rd = malloc(sizeof(*s->finish_rd))))
    return -ENOMEM;
  hs_reader_init(s->finish_rd, false);
  memcpy(s->finish_mac, h->finish_mac, MAC_LEN);
  core_set_unconfirmed(&s->core, (uint64_t)s->ctx->cfg.connect_timeout_ms * 1000000);
  return 0;
}

static void drop_finish(struct tether_session *s) {
  free(s->finish_rd);
  s->finish_rd = NULL;
  wipe(s->finish_mac, MAC_LEN);
}

/* session_take_finish_locked, also for the engine, which holds tx_lock too
 * (tx_locked). */
static int take_finish(struct tether_session *s, bool tx_locked) {
  const char *why = NULL;
  char tag[17];
  if (!s->finish_rd || s->sock < 0)
    return 1;
  int rc = hs_reader_step(s->finish_rd, s->sock, &why);
  if (rc == 0) {
    errno = EAGAIN;
    return -1;
  }
  if (rc == -ECONNRESET)
    return 0; /* EOF */
  int err = 0;
  if (rc > 0) {
    hs_msg *m = hs_decode(s->finish_rd->buf, s->finish_rd->have, &why);
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

/* A session from a snapshot, suspended: the client redials at its first
 * timer, the server waits for that.  Its epoch goes up by one, and its
 * control sequence numbers continue above every number the earlier epochs
 * could have used, so the peer's replay window accepts them and no number
 * is ever used twice.  NULL with *err on failure. */
struct tether_session *session_restore(struct tether_ctx *ctx, const Tether__Snap__Session *m,
                                       struct tether_listener *l, int *err) {
  struct tether_session *s = calloc(1, sizeof(*s));
  int p[2] = {-1, -1};
  *err = -ENOMEM;
  if (!s || pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
    if (s)
      *err = -errno;
    free(s);
    return NULL;
  }
  s->ctx = ctx;
  pthread_mutex_init(&s->rx_lock, NULL);
  pthread_mutex_init(&s->tx_lock, NULL);
  memcpy(s->id, m->id.data, SESSION_ID_LEN);
  memcpy(s->keys.ctl_c2s, m->k_ctl_c2s.data, KEY_LEN);
  memcpy(s->keys.ctl_s2c, m->k_ctl_s2c.data, KEY_LEN);
  memcpy(s->keys.resume_c, m->k_resume_c.data, KEY_LEN);
  memcpy(s->keys.resume_s, m->k_resume_s.data, KEY_LEN);
  s->is_client = m->is_client;
  s->sock = -1;
  s->hup_sock = -1;
  s->app_fd = p[0]; /* suspended: never ready until resumed */
  s->app_kind = APP_FD_WAIT;
  s->hold_w = p[1];
  s->app_closed = m->app_closed;
  if (s->app_closed) {
    close(p[0]);
    close(p[1]);
    s->app_fd = s->hold_w = -1;
  }

  uint64_t now = now_ns();
  struct tether_config opts = ctx->cfg;
  opts.heartbeat_ms = m->heartbeat_ms;
  opts.suspend_ms = m->suspend_ms;
  opts.reconnect_max_ms = m->reconnect_max_ms;
  opts.give_up_s = m->give_up_s;
  opts.durable = m->durable;
  opts.retain_max = m->retain_max;
  struct core_config cc = core_cfg(&opts);
  struct core_session *c = &s->core;
  core_init(c, &cc, s->is_client ? CORE_CLIENT : CORE_SERVER, now, m->local_sndbuf_max,
            m->peer_rcvbuf_max);
  retention_init(&c->ret, c->ret.max, m->retained_from);
  if (m->retained.len > c->ret.max)
    retention_set_max(&c->ret, m->retained.len);
  if (retention_append(&c->ret, m->retained.data, m->retained.len) < 0) {
    session_destroy(s);
    return NULL;
  }
  c->sent = c->tx_pos = m->sent;
  c->peer_acked = m->peer_acked;
  c->peer_delivered_max = m->peer_delivered_max;
  c->delivered = c->acked_delivered = m->delivered;
  c->wr_closed = m->wr_closed;
  c->rd_closed = m->rd_closed;
  c->peer_wr_closed = m->peer_wr_closed;
  c->peer_wr_end = m->peer_wr_end;
  c->peer_rd_closed = m->peer_rd_closed;
  if (c->wr_closed)
    c->closed_at_ns = now;
  if (c->rd_closed) /* closed by the application: its linger cap restarts */
    c->released_at_ns = now;
  c->epoch = m->epoch + 1;
  c->tx_seq = (uint64_t)c->epoch << SNAP_EPOCH_SHIFT;
  if (m->tx_seq > c->tx_seq) /* cannot happen within SNAP_EPOCH_SHIFT bits */
    c->tx_seq = m->tx_seq;
  c->rx_seq = m->rx_seq;
  c->resent = m->resent;
  c->reconnects = m->reconnects;
  c->rx_pos = c->delivered;
  if (m->finished) {
    /* It was CLOSED: both closes were acknowledged.  It closes again
     * (core_on_transport_lost), and a client tells its server once more. */
    c->peer_knows_wr = c->wr_closed;
    c->peer_knows_rd = c->rd_closed;
  }
  if (c->cfg.durable) { /* this very snapshot is durable */
    c->durable_sent = c->sent;
    c->durable_delivered = c->delivered;
    c->durable_finished = m->finished;
  }
  if (m->peer_durable) {
    const Tether__Snap__ReplayLog *pl = m->replay_log;
    core_set_peer_durable(c);
    c->peer_durable_sent = m->peer_durable_sent;
    c->peer_durable_delivered = m->peer_durable_delivered;
    c->peer_durable_finished = m->peer_durable_finished;
    struct replay_log *rl = &c->rlog;
    if (pl->n_hash && !(rl->hash = malloc(pl->n_hash * sizeof(*rl->hash)))) {
      session_destroy(s);
      return NULL;
    }
    if (pl->n_hash)
      memcpy(rl->hash, pl->hash, pl->n_hash * sizeof(*rl->hash));
    rl->n = rl->cap = pl->n_hash;
    rl->from = pl->from;
    rl->cur.h = pl->cur_h;
    rl->cur.tail = pl->cur_tail;
    rl->cur.len = pl->cur_len;
    rl->skip_first = pl->skip_first;
  }
  s->restored_unresumed = true;
  core_on_transport_lost(c, now); /* CONNECTED -> SUSPENDED, redial at once */

  if (s->is_client) {
    memcpy(&s->dial_addr, m->dial->sockaddr.data, m->dial->sockaddr.len);
    s->dial_len = (socklen_t)m->dial->sockaddr.len;
    s->udp = client_udp(ctx, s->dial_addr.ss_family);
  } else {
    s->udp = l ? l->udp : NULL;
  }
  if (m->udp_peer) {
    memcpy(&s->udp_peer, m->udp_peer->sockaddr.data, m->udp_peer->sockaddr.len);
    s->udp_peer_len = (socklen_t)m->udp_peer->sockaddr.len;
  }
  s->reported = TETHER_STATE_SUSPENDED;
  *err = 0;
  return s;
}

/* ---- the application's fd ---------------------------------------------- */

/* Both locks held.  Points app_fd at `fd` (consumed) of the given kind, and
 * wakes pollers of a WAIT pipe by closing its write end. */
static void app_fd_install(struct tether_session *s, int fd, int kind) {
  if (s->app_fd >= 0 && s->app_fd_hook)
    s->app_fd_hook(s, fd, kind);
  else if (s->app_fd >= 0 && dup3(fd, s->app_fd, O_CLOEXEC) < 0)
    LOG_ERR(s->ctx, "dup3 onto the session descriptor failed: %s", strerror(errno));
  if (fd != s->sock)
    close(fd);
  if (s->hold_w >= 0)
    close(s->hold_w);
  s->hold_w = -1;
  __atomic_store_n(&s->app_kind, kind, __ATOMIC_RELEASE);
}

/* Both locks held: any transition.  Pollers return; see APP_FD_READY. */
static void app_fd_ready(struct tether_session *s) {
  if (s->app_fd < 0 || s->app_kind == APP_FD_READY)
    return;
  int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    LOG_ERR(s->ctx, "cannot create a placeholder descriptor: %s", strerror(errno));
    return;
  }
  app_fd_install(s, fd, APP_FD_READY);
}

static int app_fd_wanted(const struct tether_session *s) {
  switch (s->core.state) {
  case CORE_CONNECTED: return s->sock >= 0 ? APP_FD_SOCK : APP_FD_READY;
  case CORE_SUSPENDED: return APP_FD_WAIT;
  default: return APP_FD_READY;
  }
}

/* Application thread, at the start of every data-path call: installs the
 * file the current state calls for.  Two loads in the common case. */
static void app_fd_fixup(struct tether_session *s) {
  if (__atomic_load_n(&s->app_kind, __ATOMIC_ACQUIRE) == APP_FD_SOCK &&
      __atomic_load_n(&s->core.state, __ATOMIC_RELAXED) == CORE_CONNECTED)
    return;
  session_lock(s);
  int want = app_fd_wanted(s);
  if (s->app_fd >= 0 && want != s->app_kind) {
    if (want == APP_FD_SOCK) {
      app_fd_install(s, s->sock, APP_FD_SOCK);
    } else if (want == APP_FD_WAIT) {
      int p[2];
      if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
        app_fd_install(s, p[0], APP_FD_WAIT);
        s->hold_w = p[1];
      } else {
        LOG_ERR(s->ctx, "cannot create a placeholder descriptor: %s", strerror(errno));
      }
    } else {
      app_fd_ready(s);
    }
  }
  session_unlock(s);
}

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
  if (s->n_retired < (int)(sizeof(s->retired) / sizeof(s->retired[0])))
    s->retired[s->n_retired++] = s->sock;
  else
    close(s->sock); /* cannot happen: the engine drains this list on every kick */
  s->sock = -1;
}

/* Engine thread: watches the end of the live connection while the session
 * is connected and the end would be news: not after the peer's close (its
 * FIN then is that close), nor once the application closed (draining reads
 * see it).  A socket leaves the set before it is closed (its file lives on
 * in app_fd). */
static void update_hup_watch(struct tether_session *s) {
  int want = s->sock >= 0 && s->core.state == CORE_CONNECTED && !s->app_closed &&
                     !s->core.peer_wr_closed
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
  for (int i = 0; i < s->n_retired; i++) {
    if (s->hup_sock == s->retired[i]) {
      (void)epoll_ctl(s->ctx->hup_ep, EPOLL_CTL_DEL, s->hup_sock, NULL);
      s->hup_sock = -1;
    }
    if (s->sock_ev && s->sock_ev_fd == s->retired[i] && s->sock_ev_flags) {
      event_del(s->sock_ev);
      s->sock_ev_flags = 0;
    }
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

static void arm_timer(struct tether_session *s) {
  uint64_t d = core_next_deadline(&s->core);
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

static void flush_pending_locked(struct tether_session *s) {
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
static void apply_deferred_locked(struct tether_session *s);

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
  }
  if (want == s->sock_ev_flags && (!want || s->sock_ev_fd == s->sock))
    return;
  if (s->sock_ev) {
    event_del(s->sock_ev);
    if (want)
      event_assign(s->sock_ev, s->ctx->base, s->sock, want | EV_PERSIST, on_sock, s);
  } else if (want) {
    s->sock_ev = event_new(s->ctx->base, s->sock, want | EV_PERSIST, on_sock, s);
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
static ssize_t take_replay_locked(struct tether_session *s, bool tx_locked) {
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
    if (s->finish_rd) {
      ssize_t n = take_finish(s, true);
      if (n > 0)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
      session_suspend_locked(s, now_ns(), n == 0 ? "EOF before the ClientFinish" : strerror(errno));
      return;
    }
    if (core_replay_pending(&s->core)) {
      ssize_t n = take_replay_locked(s, true); /* drain: session_lock() held */
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

/* Engine thread, no lock held (the callback may call tether_*): reads the
 * state under the locks that guard its changes. */
static void report_state(struct tether_session *s) {
  session_lock(s);
  tether_state st = (tether_state)s->core.state;
  int err = st == TETHER_STATE_FAILED ? s->core.error : 0;
  bool tell = s->ctx->cfg.state_cb && !s->app_closed;
  session_unlock(s);
  char tag[17];
  if (st == s->reported)
    return;
  s->reported = st;
  if (st == TETHER_STATE_CLOSED)
    LOG_INFO(s->ctx, "session %s: closed", session_tag(s->id, tag));
  if (tell)
    s->ctx->cfg.state_cb(s, st, err, s->ctx->cfg.state_cb_arg);
}

/* Engine thread: everything the data path or a timer may have changed. */
static void settle(struct tether_session *s, bool *destroy) {
  if ((s->core.state == CORE_FAILED || s->core.state == CORE_CLOSED) &&
      s->app_kind != APP_FD_READY && (s->sock < 0 || s->core.state == CORE_FAILED))
    enter_final_locked(s);
  flush_pending_locked(s);
  close_retired(s);
  update_sock_ev(s);
  update_hup_watch(s);
  *destroy = s->app_closed && (s->core.state == CORE_FAILED || s->done);
  if (!*destroy)
    arm_timer(s);
}

static void on_sock(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  bool destroy;
  session_lock(s);
  if (what & EV_READ)
    drain_locked(s);
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy)
    session_destroy(s);
}

void session_on_hangup(struct tether_session *s) {
  bool destroy;
  session_lock(s);
  /* The peer's host ended the connection and no close of the peer's
   * explains it (its FIN follows its acknowledged close notice): a crash,
   * a restart, a reset.  Suspend now, not at the application's next call,
   * so that an idle session resumes by itself.  Unread bytes die with the
   * socket; the resume resends them. */
  if (s->hup_sock >= 0 && s->hup_sock == s->sock && s->core.state == CORE_CONNECTED &&
      !s->core.peer_wr_closed)
    session_suspend_locked(s, now_ns(), "connection ended by the peer's host");
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy)
    session_destroy(s);
}

static void on_kick(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  bool destroy;
  session_lock(s);
  apply_deferred_locked(s);
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy)
    session_destroy(s);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  bool destroy;
  session_lock(s);
  apply_deferred_locked(s); /* before the timers: it may be a heartbeat */
  uint64_t now = now_ns();
  unsigned act = core_on_timer(&s->core, now, random_u32());
  if (act & CORE_ACT_SUSPEND)
    session_suspend_locked(s, now, "no heartbeat within suspend_ms");
  if (act & CORE_ACT_HEARTBEAT) {
    if (s->sock >= 0)
      core_trim_inflight(&s->core, sock_outq(s->sock));
    if (s->core.ret.len == 0)
      retention_shrink(&s->core.ret);
    udp_send_ctl(s, now);
  }
  if ((act & CORE_ACT_FIN) && s->sock >= 0) {
    char tag[17];
    LOG_DEBUG(s->ctx, "session %s: FIN after %llu bytes", session_tag(s->id, tag),
              (unsigned long long)s->core.sent);
    shutdown(s->sock, SHUT_WR);
  }
  if (act & CORE_ACT_DONE)
    s->done = true; /* TIME_WAIT over for a session the application closed */
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy) {
    session_destroy(s);
    return;
  }
  if (act & CORE_ACT_REDIAL)
    client_redial(s);
}

int session_start(struct tether_session *s) {
  struct tether_ctx *ctx = s->ctx;
  s->timer = evtimer_new(ctx->base, on_timer, s);
  s->kick = event_new(ctx->base, -1, 0, on_kick, s);
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
  bool destroy;
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
    sock_setup_session(s->sock, &s->ctx->cfg);
    app_fd_ready(s); /* wakes pollers of the WAIT pipe; the next call installs the socket */
    if (!s->is_client) /* the client may have moved: heartbeats follow it */
      set_udp_peer(s, &h->peer, h->peer_len, ntohs(s->udp_peer.ss_family == AF_INET
                                                       ? ((struct sockaddr_in *)&s->udp_peer)->sin_port
                                                       : ((struct sockaddr_in6 *)&s->udp_peer)->sin6_port));
    LOG_INFO(s->ctx, "session %s: resumed after %.3f s; resending %llu bytes",
             session_tag(s->id, tag), (double)outage / 1e9,
             (unsigned long long)(s->core.sent - s->core.tx_pos));
  }
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy)
    session_destroy(s);
}

/* Both locks held: what an authenticated datagram says. */
static void apply_ctl_locked(struct tether_session *s, const struct core_ctl *ctl,
                             const struct sockaddr *from, socklen_t fromlen, uint64_t now) {
  bool reply;
  if (core_on_ctl(&s->core, now, ctl, &reply) == 0) {
    /* The server answers wherever the client's authenticated datagrams come
     * from: NAT rebinding and address changes need no handshake. */
    if (!s->is_client && fromlen <= sizeof(s->udp_peer)) {
      memcpy(&s->udp_peer, from, fromlen);
      s->udp_peer_len = fromlen;
    }
    if (reply)
      udp_send_ctl(s, now);
  }
}

/* Both locks held: applies a datagram that waited for a writer. */
static void apply_deferred_locked(struct tether_session *s) {
  if (!s->ctl_deferred)
    return;
  __atomic_store_n(&s->ctl_deferred, false, __ATOMIC_RELAXED);
  apply_ctl_locked(s, &s->deferred.ctl, (struct sockaddr *)&s->deferred.from,
                   s->deferred.fromlen, now_ns());
}

/* Writer thread, tx_lock held, after a write: applies a datagram the
 * engine left for it, if the reading side is free (else the engine does,
 * kicked).  The engine is kicked when the datagram changed the state. */
static void writer_takes_deferred(struct tether_session *s) {
  if (pthread_mutex_trylock(&s->rx_lock) != 0) {
    session_kick(s);
    return;
  }
  enum core_state before = s->core.state;
  apply_deferred_locked(s);
  bool changed = s->core.state != before;
  pthread_mutex_unlock(&s->rx_lock);
  if (changed)
    session_kick(s);
}

void session_on_ctl(struct tether_session *s, const struct core_ctl *ctl,
                    const struct sockaddr *from, socklen_t fromlen) {
  bool destroy;
  char tag[17];
  LOG_DEBUG(s->ctx, "session %s: control #%llu: delivered %llu sent %llu%s%s%s%s",
            session_tag(s->id, tag), (unsigned long long)ctl->seq,
            (unsigned long long)ctl->delivered, (unsigned long long)ctl->sent,
            ctl->write_closed ? " write-closed" : "", ctl->read_closed ? " read-closed" : "",
            ctl->ack_write_closed ? " ack-write" : "", ctl->ack_read_closed ? " ack-read" : "");
  pthread_mutex_lock(&s->rx_lock);
  if (pthread_mutex_trylock(&s->tx_lock) != 0) {
    /* A writer is in send(): waiting would stall the engine, and have the
     * writer wake it after each of its writes while it holds on.  Control
     * messages are cumulative: keep the latest for the writer to apply. */
    if (!s->ctl_deferred || ctl->seq > s->deferred.ctl.seq) {
      s->deferred.ctl = *ctl;
      s->deferred.fromlen = fromlen <= sizeof(s->deferred.from) ? fromlen : 0;
      memcpy(&s->deferred.from, from, s->deferred.fromlen);
      __atomic_store_n(&s->ctl_deferred, true, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&s->rx_lock);
    /* ... or the engine itself, soon, should the writer be gone by then. */
    struct timeval soon = {0, 1000};
    evtimer_add(s->timer, &soon);
    return;
  }
  apply_deferred_locked(s); /* an older one first: it may still count */
  apply_ctl_locked(s, ctl, from, fromlen, now_ns());
  settle(s, &destroy);
  session_unlock(s);
  report_state(s);
  if (destroy)
    session_destroy(s);
}

void session_destroy(struct tether_session *s) {
  if (!s)
    return;
  registry_remove(s->ctx, s);
  for (int i = 0; i < 2; i++)
    if (s->redials[i])
      hs_conn_abort(s->redials[i]);
  if (s->timer)
    event_free(s->timer);
  if (s->kick)
    event_free(s->kick);
  close_retired(s);
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
  wipe(s, sizeof(*s));
  free(s);
}

/* ---- the data path (application threads) ---------------------------------- */

/* Blocks until fd may be ready for `events`.  Returns 0 or -EINTR. */
static int wait_fd(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  if (poll(&p, 1, -1) < 0 && errno == EINTR)
    return -EINTR;
  return 0;
}

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
    rc = ready ? 0 : spin_wait(&h, s->app_fd, POLLIN);
    (void)spin_release(&h); /* a signal now came after the wait ended */
    if (ready)
      return 0;
  } else {
    rc = wait_fd(s->app_fd, POLLIN);
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

ssize_t tether_read(tether_session *s, void *buf, size_t len) {
  if (!s || (!buf && len))
    return -EINVAL;
  if (s->app_closed)
    return -EBADF;
  app_fd_fixup(s);
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
      if (s->finish_rd) {
        if ((n = session_take_finish_locked(s)) > 0)
          continue;
      } else if (core_replay_pending(c)) {
        if ((n = take_replay_locked(s, false)) > 0)
          continue;
      } else if ((n = recv(s->sock, buf, len, MSG_DONTWAIT)) > 0) {
        core_on_delivered(c, buf, (size_t)n);
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
    }
    pthread_mutex_unlock(&s->rx_lock);
    if (s->nonblocking)
      return -EAGAIN;
    if (wait_readable(s) < 0)
      return -EINTR;
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

ssize_t tether_write(tether_session *s, const void *buf, size_t len) {
  if (!s || (!buf && len))
    return -EINVAL;
  if (s->app_closed)
    return -EBADF;
  app_fd_fixup(s);
  pthread_mutex_lock(&s->tx_lock);
  for (;;) {
    struct core_session *c = &s->core;
    int rc = core_write_check(c);
    if (rc == -EAGAIN && c->state == CORE_CONNECTED && s->sock >= 0) {
      flush_pending_locked(s); /* a resend goes before new bytes */
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
    if (rc == 0) {
      size_t room = core_write_room(c);
      if (room < len) {
        core_trim_inflight(c, sock_outq(s->sock));
        room = core_write_room(c);
      }
      size_t n = len < room ? len : room;
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
          if (__atomic_load_n(&s->ctl_deferred, __ATOMIC_ACQUIRE))
            writer_takes_deferred(s);
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
    if (s->nonblocking)
      return -EAGAIN;
    if (wait_fd(s->app_fd, POLLOUT) < 0)
      return -EINTR;
    app_fd_fixup(s);
    pthread_mutex_lock(&s->tx_lock);
  }
}

int tether_shutdown(tether_session *s) {
  if (!s || s->app_closed)
    return -EBADF;
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
  session_lock(s);
  core_close(&s->core, now_ns());
  /* Our final state (delivered, closed) goes out now, not at the engine's
   * next turn: the process may be about to exit. */
  udp_send_ctl(s, now_ns());
  s->app_closed = true;
  if (s->app_fd >= 0)
    close(s->app_fd);
  s->app_fd = -1;
  /* Kick before unlocking: once unlocked, the engine may free s. */
  session_kick(s);
  session_unlock(s);
  return 0;
}

int tether_fd(const tether_session *s) { return s ? s->app_fd : -EINVAL; }

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
