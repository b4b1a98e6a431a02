/* What a context does with its suspended sessions: it keeps at most
 * cfg.max_suspended of them (TETHER_OPT_MAX_SUSPENDED) that have been
 * suspended for longer than a redial takes, letting the one suspended
 * longest fail with TETHER_EEVICTED beyond that, and it lets a
 * session go at once when its peer cannot come back (a non-durable peer
 * whose host says nothing listens on its side channel any more; see
 * core_on_unreachable and tether(7), SUSPENDED SESSIONS).
 *
 * The count is a list in suspension order under ctx->lock, changed only
 * when the engine sees a session enter or leave SUSPENDED (suspended_note,
 * called where the engine settles every change of a session): no scan, and
 * nothing on the data path. */
#include <string.h>

#include <event2/event.h>

#include "engine.h"

/* ctx->lock held. */
static void unlink_locked(struct tether_ctx *ctx, struct tether_session *s) {
  if (s->susp_prev)
    s->susp_prev->susp_next = s->susp_next;
  else
    ctx->suspended.head = s->susp_next;
  if (s->susp_next)
    s->susp_next->susp_prev = s->susp_prev;
  else
    ctx->suspended.tail = s->susp_prev;
  s->susp_prev = s->susp_next = NULL;
  s->susp_listed = false;
  ctx->suspended.n--;
}

/* ctx->lock held. */
static void append_locked(struct tether_ctx *ctx, struct tether_session *s) {
  s->susp_prev = ctx->suspended.tail;
  s->susp_next = NULL;
  if (ctx->suspended.tail)
    ctx->suspended.tail->susp_next = s;
  else
    ctx->suspended.head = s;
  ctx->suspended.tail = s;
  s->susp_listed = true;
  ctx->suspended.n++;
}

/* Engine thread, ctx->lock held (the order allows a session's locks after
 * it; holding it keeps v from being destroyed meanwhile): v, taken off the
 * list, fails if it is still suspended.  The engine settles it at its kick. */
static void evict_locked(struct tether_session *v) {
  struct tether_ctx *ctx = v->ctx;
  char tag[17];
  session_lock(v);
  if (v->core.state == CORE_SUSPENDED) {
    uint64_t now = now_ns();
    tlog_limited(ctx, &ctx->suspended.evict_log, TETHER_LOG_WARN,
                 "session %s: failed after %.1f s suspended: more than %u sessions suspended "
                 "(TETHER_OPT_MAX_SUSPENDED), it was suspended longest",
                 session_tag(v->id, tag), (double)(now - v->core.suspended_at_ns) / 1e9,
                 ctx->cfg.max_suspended);
    v->core.suspended_total_ns += now - v->core.suspended_at_ns;
    core_fail(&v->core, TETHER_EEVICTED);
  }
  session_unlock(v);
  session_kick(v);
}

/* A session suspended for less than this is not evicted: its peer may be
 * redialling.  When every connection of a server is lost at once, all its
 * sessions suspend together, and all of them must resume -- not the bound's
 * worth.  The bound holds again once they are past it: sessions whose
 * peers do not come back (or never meant to) still cannot pile up beyond
 * it for longer than this. */
static uint64_t grace_ns(const struct tether_ctx *ctx) {
  return ((uint64_t)ctx->cfg.connect_timeout_ms + ctx->cfg.reconnect_max_ms) * 1000000;
}

/* ctx->lock held: evicts, oldest first, while there are more than the
 * bound past their grace; the first still in it sets the next look. */
static void evict_over_locked(struct tether_ctx *ctx, const struct tether_session *keep) {
  uint64_t now = now_ns();
  while (ctx->suspended.n > ctx->cfg.max_suspended && ctx->suspended.head != keep) {
    struct tether_session *v = ctx->suspended.head;
    uint64_t until = v->core.suspended_at_ns + grace_ns(ctx);
    if (now < until) {
      uint64_t wait = until - now;
      struct timeval tv = {.tv_sec = (time_t)(wait / 1000000000),
                           .tv_usec = (suseconds_t)(wait % 1000000000 / 1000)};
      event_add(ctx->suspended.recheck, &tv);
      return;
    }
    unlink_locked(ctx, v);
    evict_locked(v);
  }
}

void suspended_recheck(evutil_socket_t fd, short what, void *arg) {
  struct tether_ctx *ctx = arg;
  pthread_mutex_lock(&ctx->lock);
  evict_over_locked(ctx, NULL);
  pthread_mutex_unlock(&ctx->lock);
}

void suspended_note(struct tether_session *s) {
  struct tether_ctx *ctx = s->ctx;
  /* Read without s's locks: a change after this read kicks the engine,
   * which settles s again and calls here once more. */
  bool suspended = __atomic_load_n(&s->core.state, __ATOMIC_RELAXED) == CORE_SUSPENDED;
  if (suspended == s->susp_listed)
    return;
  pthread_mutex_lock(&ctx->lock);
  if (!suspended) {
    unlink_locked(ctx, s);
  } else {
    append_locked(ctx, s);
    evict_over_locked(ctx, s);
  }
  pthread_mutex_unlock(&ctx->lock);
}

void suspended_forget(struct tether_session *s) {
  if (!s->susp_listed)
    return;
  pthread_mutex_lock(&s->ctx->lock);
  unlink_locked(s->ctx, s);
  pthread_mutex_unlock(&s->ctx->lock);
}

void session_on_unreachable(struct tether_session *s, uint64_t seq, const struct sockaddr *dst,
                            socklen_t dstlen) {
  char tag[17], addr[64];
  pthread_mutex_lock(&s->rx_lock);
  if (pthread_mutex_trylock(&s->tx_lock) != 0) {
    /* A writer is in send(): connected, where such reports count for
     * nothing.  The engine does not wait for it. */
    pthread_mutex_unlock(&s->rx_lock);
    return;
  }
  if (!sock_addr_same(dst, dstlen, (const struct sockaddr *)&s->udp_peer, s->udp_peer_len, true)) {
    session_unlock(s); /* sent to an address the peer has left since */
    return;
  }
  uint64_t now = now_ns();
  if (!core_on_unreachable(&s->core, now, seq)) {
    session_unlock(s);
    return;
  }
  LOG_INFO(s->ctx,
           "session %s: gone: its peer cannot restore from a snapshot, and its host "
           "reported %u times in %.3f s that nothing listens on its side channel %s any more",
           session_tag(s->id, tag), s->core.unreach.n,
           (double)(now - s->core.unreach.first_ns) / 1e9,
           sock_addr_str((const struct sockaddr *)&s->udp_peer, addr, sizeof(addr)));
  session_settle_unlock(s);
}
