/* Restores from snapshots (see tether(7), SNAPSHOTS): a new context whose
 * sessions start suspended, rebuilt from a snapshot that snap_open() has
 * checked; the ordinary resume protocol does the rest, and refuses
 * (TETHER_EWINDOW, on both sides) a resume whose two states cannot be
 * reconciled. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "wire/snapshot.h"

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
  pthread_mutex_init(&s->waiters_lock, NULL);
  memcpy(s->id, m->id.data, SESSION_ID_LEN);
  memcpy(s->keys.ctl_c2s, m->k_ctl_c2s.data, KEY_LEN);
  memcpy(s->keys.ctl_s2c, m->k_ctl_s2c.data, KEY_LEN);
  memcpy(s->keys.resume_c, m->k_resume_c.data, KEY_LEN);
  memcpy(s->keys.resume_s, m->k_resume_s.data, KEY_LEN);
  path_tag_init(s);
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
  /* A snapshot is input too: its cap is believed only up to ours (and
   * covers at least what it holds). */
  opts.retain_max = m->retain_max < ctx->cfg.retain_max ? m->retain_max : ctx->cfg.retain_max;
  if (opts.retain_max < m->retained.len)
    opts.retain_max = m->retained.len;
  struct core_config cc = session_core_config(&opts);
  struct core_session *c = &s->core;
  /* (core_init caps the snapshot's peer_rcvbuf_max like a declared one.) */
  core_init(c, &cc, s->is_client ? CORE_CLIENT : CORE_SERVER, now,
            m->local_sndbuf_max < sock_host_sndbuf_max() ? m->local_sndbuf_max
                                                         : sock_host_sndbuf_max(),
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
  /* It was CLOSED: both closes were acknowledged.  It closes again
   * (core_on_transport_lost), and a client tells its server once more. */
  enum core_half ours_closed = m->finished ? CORE_HALF_ACKED : CORE_HALF_CLOSED;
  c->wr = m->wr_closed ? ours_closed : CORE_HALF_OPEN;
  c->rd = m->rd_closed ? ours_closed : CORE_HALF_OPEN;
  c->peer_wr = m->peer_wr_closed ? CORE_HALF_CLOSED : CORE_HALF_OPEN;
  c->peer_wr_end = m->peer_wr_end;
  c->peer_rd = m->peer_rd_closed ? CORE_HALF_CLOSED : CORE_HALF_OPEN;
  if (m->wr_closed)
    c->closed_at_ns = now;
  if (m->rd_closed) /* closed by the application: its linger cap restarts */
    c->released_at_ns = now;
  c->epoch = m->epoch + 1;
  c->tx_seq = (uint64_t)c->epoch << SNAP_EPOCH_SHIFT;
  if (m->tx_seq > c->tx_seq) /* cannot happen within SNAP_EPOCH_SHIFT bits */
    c->tx_seq = m->tx_seq;
  c->rx_seq = m->rx_seq;
  c->resent = m->resent;
  c->reconnects = m->reconnects;
  c->rx_pos = c->delivered;
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
    s->udp = client_udp(ctx, s->dial_addr.sa.sa_family);
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

static int listen_again(tether_ctx *ctx, const Tether__Snap__Address *a, tether_listener **out) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo((const struct sockaddr *)a->sockaddr.data, (socklen_t)a->sockaddr.len, host,
                  sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return -EINVAL;
  return listener_open(ctx, host, port, false, out);
}

int tether_restore(const tether_config *cfg, const void *blob, size_t len, tether_ctx **out) {
  int rc;
  const char *why = NULL;
  tether_ctx *ctx = NULL;
  tether_listener **ls = NULL;
  if (!blob || !out)
    return -EINVAL;
  *out = NULL;
  snap_msg *m = snap_open(blob, len, &rc, &why);
  if (!m)
    return rc;
  if ((rc = tether_ctx_new(cfg, &ctx)) < 0)
    goto out;
  ls = calloc(m->n_listeners ? m->n_listeners : 1, sizeof(*ls));
  if (!ls) {
    rc = -ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < m->n_listeners; i++)
    if ((rc = listen_again(ctx, m->listeners[i]->addr, &ls[i])) < 0) {
      LOG_ERR(ctx, "restore: cannot listen again on a snapshot's address: %s", strerror(-rc));
      goto out;
    }
  for (size_t i = 0; i < m->n_sessions; i++) {
    const Tether__Snap__Session *sm = m->sessions[i];
    struct tether_listener *l = sm->listener >= 0 ? ls[sm->listener] : NULL;
    struct tether_session *s = session_restore(ctx, sm, l, &rc);
    if (!s)
      goto out;
    if ((rc = session_start(s)) < 0) {
      session_destroy(s);
      goto out;
    }
    session_kick(s); /* the engine counts it among the suspended (suspended.c) */
    char tag[17];
    LOG_INFO(ctx, "session %s: restored (epoch %u), suspended", session_tag(s->id, tag),
             s->core.epoch);
    if (sm->queued && l) /* back in the accept queue it was in */
      listener_enqueue(l, s, false);
  }
  /* Only now, with every session registered, may resumes come in: a
   * client that redials the moment the port opens must find its session,
   * not be told it is unknown (a final verdict). */
  for (size_t i = 0; i < m->n_listeners; i++)
    listener_start(ls[i]);
  *out = ctx;
  ctx = NULL;
  rc = 0;
out:
  if (ctx)
    tether_ctx_free(ctx);
  free(ls);
  snap_free(m);
  return rc;
}
