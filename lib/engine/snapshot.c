/* Snapshots of a context and their commits (see tether(7), SNAPSHOTS);
 * restores are in restore.c.
 *
 * A snapshot is taken under ctx->lock and each session's locks in turn, so
 * every session is captured at one consistent point of its own stream (the
 * sessions need no common point: each resumes on its own). */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "wire/snapshot.h"

/* Everything a snapshot message points to, freed at once. */
struct capture {
  snap_msg msg;
  Tether__Snap__Listener **listeners, *listener_v;
  Tether__Snap__Session **sessions, *session_v;
  Tether__Snap__ReplayLog *log_v; /* one per session at most */
  Tether__Snap__Address *addr_v; /* one per listener, two per session at most */
  struct sockaddr_storage *addr_copy; /* what they point to */
  size_t n_addr;
};

static void capture_free(struct capture *c) {
  for (size_t i = 0; i < c->msg.n_sessions; i++) {
    Tether__Snap__Session *s = c->sessions[i];
    free(s->retained.data);
    if (s->replay_log)
      free(s->replay_log->hash);
    wipe(s->k_ctl_c2s.data, 4 * KEY_LEN); /* all four keys: one allocation */
    free(s->k_ctl_c2s.data);
  }
  free(c->listeners);
  free(c->listener_v);
  free(c->sessions);
  free(c->session_v);
  free(c->log_v);
  free(c->addr_v);
  free(c->addr_copy);
}

/* A copy: the session may change its address once its lock is released. */
static Tether__Snap__Address *addr_of(struct capture *c, const void *sa, size_t len) {
  struct sockaddr_storage *copy = &c->addr_copy[c->n_addr];
  Tether__Snap__Address *a = &c->addr_v[c->n_addr++];
  memcpy(copy, sa, len);
  tether__snap__address__init(a);
  a->sockaddr = (ProtobufCBinaryData){len, (uint8_t *)copy};
  return a;
}

static bool queued(const struct tether_ctx *ctx, const struct tether_session *s) {
  for (struct tether_listener *l = ctx->listeners; l; l = l->next)
    for (struct tether_session *q = l->queue_head; q; q = q->queue_next)
      if (q == s)
        return true;
  return false;
}

/* Sessions a snapshot keeps: every one not yet finished or failed, and a
 * finished one while durable acknowledgements are in play: a durable side's
 * snapshot of it CLOSED is what tells its peer that no restore will come
 * back behind the end (core_durable_finished); a partner's, what lets it
 * serve a durable peer that restores behind the end. */
static bool worth_keeping(const struct tether_session *s) {
  const struct core_session *k = &s->core;
  return !s->done && k->state != CORE_FAILED &&
         (k->state != CORE_CLOSED || k->cfg.durable || k->peer_durable);
}

/* The replay log as the snapshot keeps it (a copy: the session goes on). */
static int capture_log(struct capture *c, const struct replay_log *l, Tether__Snap__Session *m) {
  Tether__Snap__ReplayLog *pl = &c->log_v[c->msg.n_sessions];
  tether__snap__replay_log__init(pl);
  if (l->n && !(pl->hash = malloc(l->n * sizeof(*pl->hash))))
    return -ENOMEM;
  if (l->n)
    memcpy(pl->hash, l->hash, l->n * sizeof(*pl->hash));
  pl->n_hash = l->n;
  pl->from = l->from;
  pl->cur_h = l->cur.h;
  pl->cur_tail = l->cur.tail;
  pl->cur_len = l->cur.len;
  pl->skip_first = l->skip_first;
  m->replay_log = pl;
  return 0;
}

/* Remembers what capture `id` holds of s (sent as captured), for
 * tether_snapshot_commit. */
static void note_capture(struct tether_session *s, uint32_t id, uint64_t sent) {
  unsigned i = s->next_captured++ % (sizeof(s->captured) / sizeof(s->captured[0]));
  s->captured[i].capture = id;
  s->captured[i].sent = sent;
  s->captured[i].delivered = s->core.delivered;
  s->captured[i].finished = s->core.state == CORE_CLOSED;
}

/* Where a lean capture puts a session's stream (see tether_snapshot_lean):
 * the chunk boundary at or below the first byte it retains, which its peer
 * holds durably or which is on a chunk boundary of its replay hashes.
 * Only a durable side whose application still writes can go back. */
static uint64_t lean_sent(const struct core_session *k) {
  if (!k->cfg.durable || core_half_closed(k->wr))
    return k->sent;
  return replay_align(k->ret.base);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Session locks held.  m->sent is `sent`: the session's, or for a lean
 * capture lean_sent(), without the retained bytes above it. */
static int capture_session(struct capture *c, const struct tether_ctx *ctx,
                           struct tether_session *s, Tether__Snap__Session *m,
                           uint64_t sent) {
  const struct core_session *k = &s->core;
  tether__snap__session__init(m);
  /* The four session keys in one allocation, so capture_free wipes them. */
  uint8_t *keys = malloc(4 * KEY_LEN);
  size_t held = (size_t)(sent - min_u64(k->ret.base, sent));
  uint8_t *ret = held ? malloc(held) : NULL;
  if (!keys || (held && !ret)) {
    free(keys);
    free(ret);
    return -ENOMEM;
  }
  if (k->peer_durable && capture_log(c, &k->rlog, m) < 0) {
    free(keys);
    free(ret);
    return -ENOMEM;
  }
  memcpy(keys, s->keys.ctl_c2s, KEY_LEN);
  memcpy(keys + KEY_LEN, s->keys.ctl_s2c, KEY_LEN);
  memcpy(keys + 2 * KEY_LEN, s->keys.resume_c, KEY_LEN);
  memcpy(keys + 3 * KEY_LEN, s->keys.resume_s, KEY_LEN);
  m->k_ctl_c2s = (ProtobufCBinaryData){KEY_LEN, keys};
  m->k_ctl_s2c = (ProtobufCBinaryData){KEY_LEN, keys + KEY_LEN};
  m->k_resume_c = (ProtobufCBinaryData){KEY_LEN, keys + 2 * KEY_LEN};
  m->k_resume_s = (ProtobufCBinaryData){KEY_LEN, keys + 3 * KEY_LEN};
  if (held)
    retention_copy(&k->ret, k->ret.base, ret, held);
  m->retained = (ProtobufCBinaryData){held, ret};
  m->id = (ProtobufCBinaryData){SESSION_ID_LEN, (uint8_t *)s->id};
  m->is_client = s->is_client;
  m->epoch = k->epoch;
  m->listener = -1;
  if (s->is_client) {
    m->dial = addr_of(c, &s->dial_addr, s->dial_len);
  } else {
    int32_t i = 0;
    for (struct tether_listener *l = ctx->listeners; l; l = l->next, i++)
      if (l->udp && l->udp == s->udp)
        m->listener = i;
  }
  if (s->udp_peer_len)
    m->udp_peer = addr_of(c, &s->udp_peer, s->udp_peer_len);
  m->sent = sent;
  m->delivered = k->delivered;
  m->peer_acked = min_u64(k->peer_acked, sent);
  m->retained_from = sent - held;
  m->wr_closed = core_half_closed(k->wr);
  m->rd_closed = core_half_closed(k->rd);
  m->peer_wr_closed = core_half_closed(k->peer_wr);
  m->peer_wr_end = k->peer_wr_end;
  m->peer_rd_closed = core_half_closed(k->peer_rd);
  m->tx_seq = k->tx_seq;
  m->rx_seq = k->rx_seq;
  m->local_sndbuf_max = k->local_sndbuf_max;
  m->peer_rcvbuf_max = k->peer_rcvbuf_max;
  m->heartbeat_ms = (uint32_t)(k->cfg.heartbeat_ns / 1000000);
  m->suspend_ms = (uint32_t)(k->cfg.suspend_ns / 1000000);
  m->reconnect_max_ms = (uint32_t)(k->cfg.reconnect_max_ns / 1000000);
  m->give_up_s = (uint32_t)(k->cfg.give_up_ns / 1000000000);
  m->resent = k->resent;
  m->reconnects = k->reconnects;
  m->app_closed = s->app_closed;
  m->queued = !s->is_client && queued(ctx, s);
  m->durable = k->cfg.durable;
  m->peer_durable = k->peer_durable;
  m->peer_durable_sent = k->peer_durable_sent;
  m->peer_durable_delivered = min_u64(k->peer_durable_delivered, sent);
  m->retain_max = k->cfg.retain_max;
  m->finished = k->state == CORE_CLOSED;
  m->peer_durable_finished = k->peer_durable_finished;
  m->peer_delivered_max = k->peer_delivered_max;
  return 0;
}

static int snapshot(tether_ctx *ctx, bool lean, void **blob, size_t *len) {
  struct capture c;
  size_t n_l = 0, n_s = 0;
  int rc = -ENOMEM;
  if (!ctx || !blob || !len)
    return -EINVAL;
  memset(&c, 0, sizeof(c));
  tether__snap__snapshot__init(&c.msg);
  pthread_mutex_lock(&ctx->lock);
  for (struct tether_listener *l = ctx->listeners; l; l = l->next)
    n_l++;
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    for (struct tether_session *s = ctx->buckets[i]; s; s = s->hash_next)
      n_s++;
  struct sockaddr_storage *bound = calloc(n_l ? n_l : 1, sizeof(*bound));
  c.listeners = calloc(n_l ? n_l : 1, sizeof(*c.listeners));
  c.listener_v = calloc(n_l ? n_l : 1, sizeof(*c.listener_v));
  c.sessions = calloc(n_s ? n_s : 1, sizeof(*c.sessions));
  c.session_v = calloc(n_s ? n_s : 1, sizeof(*c.session_v));
  c.log_v = calloc(n_s ? n_s : 1, sizeof(*c.log_v));
  c.addr_v = calloc(n_l + 2 * n_s + 1, sizeof(*c.addr_v));
  c.addr_copy = calloc(n_l + 2 * n_s + 1, sizeof(*c.addr_copy));
  if (!bound || !c.listeners || !c.listener_v || !c.sessions || !c.session_v || !c.log_v ||
      !c.addr_v || !c.addr_copy)
    goto out;
  uint32_t id = ++ctx->captures ? ctx->captures : ++ctx->captures; /* never 0 */
  size_t i = 0;
  for (struct tether_listener *l = ctx->listeners; l; l = l->next, i++) {
    socklen_t blen = sizeof(bound[i]);
    if (getsockname(l->fd, (struct sockaddr *)&bound[i], &blen) < 0) {
      rc = -errno;
      goto out;
    }
    tether__snap__listener__init(&c.listener_v[i]);
    c.listener_v[i].addr = addr_of(&c, &bound[i], blen);
    c.listeners[i] = &c.listener_v[i];
  }
  c.msg.n_listeners = n_l;
  c.msg.listeners = c.listeners;
  for (unsigned b = 0; b < ctx->n_buckets; b++)
    for (struct tether_session *s = ctx->buckets[b]; s; s = s->hash_next) {
      session_lock(s);
      bool keep = worth_keeping(s);
      uint64_t sent = lean ? lean_sent(&s->core) : s->core.sent;
      /* Bytes in a loop session's buffers are in neither stream position. */
      int r = keep && async_buffered(s) ? -EBUSY
              : keep ? capture_session(&c, ctx, s, &c.session_v[c.msg.n_sessions], sent)
                     : 0;
      if (keep && r == 0)
        note_capture(s, id, sent);
      session_unlock(s);
      if (r < 0) {
        rc = r;
        goto out;
      }
      if (keep) {
        c.sessions[c.msg.n_sessions] = &c.session_v[c.msg.n_sessions];
        c.msg.n_sessions++;
      }
    }
  c.msg.sessions = c.sessions;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  c.msg.created_unix_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  /* Still under ctx->lock: the ids point into sessions, which the engine
   * frees only after taking it (registry_remove). */
  uint8_t *out;
  rc = snap_seal(&c.msg, id, &out, len);
  if (rc == 0)
    *blob = out;
out:
  pthread_mutex_unlock(&ctx->lock);
  capture_free(&c);
  free(bound);
  return rc;
}

int tether_snapshot(tether_ctx *ctx, void **blob, size_t *len) {
  return snapshot(ctx, false, blob, len);
}

int tether_snapshot_lean(tether_ctx *ctx, void **blob, size_t *len) {
  return snapshot(ctx, true, blob, len);
}

int tether_snapshot_commit(tether_ctx *ctx, const void *blob, size_t len) {
  uint32_t id;
  if (!ctx || !blob)
    return -EINVAL;
  int rc = snap_capture_id(blob, len, &id);
  if (rc < 0 || id == 0)
    return TETHER_EPROTO;
  uint64_t now = now_ns();
  pthread_mutex_lock(&ctx->lock);
  for (unsigned b = 0; b < ctx->n_buckets; b++)
    for (struct tether_session *s = ctx->buckets[b]; s; s = s->hash_next) {
      session_lock(s);
      for (size_t i = 0; i < sizeof(s->captured) / sizeof(s->captured[0]); i++)
        if (s->captured[i].capture == id) {
          core_durable_commit(&s->core, now, s->captured[i].sent, s->captured[i].delivered);
          if (s->captured[i].finished)
            core_durable_finished(&s->core, now);
          session_kick(s); /* the engine reports it */
        }
      session_unlock(s);
    }
  pthread_mutex_unlock(&ctx->lock);
  return 0;
}

size_t tether_ctx_sessions(tether_ctx *ctx, tether_session **out, size_t cap) {
  size_t n = 0;
  if (!ctx)
    return 0;
  pthread_mutex_lock(&ctx->lock);
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    for (struct tether_session *s = ctx->buckets[i]; s; s = s->hash_next)
      if (!s->app_closed && !queued(ctx, s)) {
        if (out && n < cap)
          out[n] = s;
        n++;
      }
  pthread_mutex_unlock(&ctx->lock);
  return n;
}

size_t tether_ctx_listeners(tether_ctx *ctx, tether_listener **out, size_t cap) {
  size_t n = 0;
  if (!ctx)
    return 0;
  pthread_mutex_lock(&ctx->lock);
  for (struct tether_listener *l = ctx->listeners; l; l = l->next)
    if (!listener_closed(l)) {
      if (out && n < cap)
        out[n] = l;
      n++;
    }
  pthread_mutex_unlock(&ctx->lock);
  return n;
}

int tether_session_id(const tether_session *s, uint8_t id[16]) {
  if (!s || !id)
    return -EINVAL;
  memcpy(id, s->id, SESSION_ID_LEN);
  return 0;
}
