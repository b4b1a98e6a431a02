/* Paths: liveness for many sessions at the price of one (tether(7), "Path
 * heartbeats").
 *
 * The sessions between one of our side-channel sockets and one peer
 * address belong to the same two contexts.  Once per heartbeat interval
 * each side sends one path heartbeat: a control datagram of one member (the
 * anchor, which authenticates it and protects it from replay) carrying, per
 * bucket of members, the XOR of their path tags -- secrets both ends derive
 * from each session's keys.  The receiver compares the digests with its own
 * view of the path: the members of every bucket that matches are covered,
 * meaning that while they have nothing to say (core_quiet) they send no
 * heartbeats of their own and the path's count as their peer's; a bucket
 * that does not match (a session that one side holds and the other does
 * not, a setup or a close in flight) leaves its members to their own
 * heartbeats, as without paths.
 *
 * Per session, an idle covered session then costs nothing per interval: no
 * timer, and no walk of the members while the buckets keep matching (the
 * path keeps its digests and counts as members join, leave and are
 * (un)covered).  What watches for it:
 *   - the path's timer: when the peer's path heartbeats stop for suspend_ms
 *     every covered member is uncovered and its own timer suspends it;
 *   - the end of its own connection (ctx->hup_ep), as before;
 *   - its data: a covered session with bytes in flight or to acknowledge is
 *     not quiet and sends its own heartbeats (with their TCP check); the
 *     application's first read or write after it went quiet kicks the
 *     engine (path_talks), which arms its timer again.
 *
 * Engine thread only: paths and their member lists change in settle, with
 * the session's locks held; the core's path fields are atomic. */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "engine.h"

static const char PATH_TAG_LABEL[] = "tether path tag v1";

void path_tag_init(struct tether_session *s) {
  uint8_t mac[MAC_LEN];
  struct buf_part part = {PATH_TAG_LABEL, sizeof(PATH_TAG_LABEL) - 1};
  s->path_tag = 0;
  if (hmac_parts(s->keys.ctl_c2s, &part, 1, mac) == 0)
    memcpy(&s->path_tag, mac, sizeof(s->path_tag));
  wipe(mac, sizeof(mac));
}

static unsigned path_hash(const struct udp_chan *u, const struct sockaddr *a, socklen_t len) {
  uint8_t ip[16];
  uint16_t port;
  uint64_t h = (uint64_t)(uintptr_t)u * 0x9e3779b97f4a7c15ull;
  if (sock_addr_key(a, len, ip, &port))
    for (int i = 0; i < 16; i++)
      h = (h ^ ip[i]) * 0x100000001b3ull;
  else
    port = 0;
  h = (h ^ port) * 0x100000001b3ull;
  return (unsigned)(h >> 32) % PATH_BUCKETS;
}

/* Buckets for n members: about eight members each, a power of two. */
static uint32_t buckets_for(unsigned n) {
  uint32_t b = 1;
  while (b < CTL_PATH_BUCKETS_MAX && b * 8 < n)
    b *= 2;
  return b;
}

/* A bucket's members are uncovered once its digests differed in this many
 * beats in a row.  One difference is mostly a session set up (or closed)
 * between the two sides' views -- while thousands are set up, nearly every
 * bucket has one in flight at any beat, and uncovering them all would make
 * every session heartbeat on its own for as long as the setups last; a
 * session one side really lost differs in every beat. */
#define PATH_STRIKES 2

static uint32_t bucket_of(uint64_t tag, uint32_t buckets) {
  return (uint32_t)(tag >> 32) & (buckets - 1);
}

/* From the finest digests: a member's bucket among `buckets` (a power of
 * two) is its fine bucket's low bits.  No walk of the members: with
 * thousands, each beat sent and received would touch them all. */
static void digests(const struct tether_path *p, uint32_t buckets, uint32_t *out) {
  memset(out, 0, buckets * sizeof(*out));
  for (uint32_t f = 0; f < CTL_PATH_BUCKETS_MAX; f++)
    out[f & (buckets - 1)] ^= p->fine[f];
}

static uint32_t fine_of(const struct tether_session *m) {
  return bucket_of(m->path_tag, CTL_PATH_BUCKETS_MAX);
}

/* Members woken together (their bucket stopped matching, the
 * application touched them all) heartbeat within a quarter interval, not
 * all at once: thousands of datagrams in one burst would overflow the
 * peer's socket buffer, and those lost would look like silence. */
static uint64_t soon(const struct tether_path *p, uint64_t now) {
  uint64_t spread = (uint64_t)p->ctx->cfg.heartbeat_ms * 1000000 / 4;
  return now + (spread ? random_u32() % spread : 0);
}

/* The path's heartbeats vouch for m from now (heard then). */
static void cover(struct tether_session *m, uint64_t heard) {
  if (core_path_covered(&m->core))
    return;
  core_path_cover(&m->core, true, heard);
  m->path->uncovered[fine_of(m)]--;
}

/* m lives on its own datagrams again: its own heartbeats and liveness
 * check, from `at`, counting the path's last heartbeat as heard for it. */
static void uncover(struct tether_session *m, uint64_t at) {
  if (!core_path_covered(&m->core))
    return;
  core_path_heard(&m->core, m->path->heard_ns);
  core_path_cover(&m->core, false, 0);
  m->path->uncovered[fine_of(m)]++;
  session_timer_at(m, at);
}

/* Each member of the path, f the fine bucket it is in. */
#define FOR_MEMBERS(p, f, m)                                                                    \
  for (uint32_t f = 0; f < CTL_PATH_BUCKETS_MAX; f++)                                           \
    for (struct tether_session *m = (p)->lists[f]; m; m = m->path_next)

/* ---- the path's timer: its heartbeat, the peer's, its members' news ---- */

static void arm(struct tether_path *p, uint64_t now);

/* One member's heartbeat, carrying the path's: the first member whose
 * locks are free (a busy one is in the data path), else the first, waiting
 * for it.  It is that member's heartbeat in full (its TCP check too: its
 * own next one moves an interval later).  A member that its TCP check
 * suspends instead is settled by the engine later (session_suspend_locked
 * kicks it); the next one carries the path's heartbeat. */
static void send_beat(struct tether_path *p, uint64_t now) {
  struct ctl_path beat;
  beat.buckets = buckets_for(p->n);
  digests(p, beat.buckets, beat.digest);
  int tries = 0;
  struct tether_session *first = NULL;
  FOR_MEMBERS(p, f, m) {
    if (!first)
      first = m;
    if (tries++ == 8)
      goto wait;
    if (pthread_mutex_trylock(&m->rx_lock) != 0)
      continue;
    if (pthread_mutex_trylock(&m->tx_lock) != 0) {
      pthread_mutex_unlock(&m->rx_lock);
      continue;
    }
    bool sent = session_heartbeat_locked(m, now, &beat);
    session_unlock(m);
    if (sent)
      return;
  }
wait:
  if (!first)
    return;
  session_lock(first);
  if (first->core.state == CORE_CONNECTED && first->sock >= 0)
    (void)session_heartbeat_locked(first, now, &beat);
  session_unlock(first);
}

void path_talks(struct tether_session *s) {
  if (core_path_covered(&s->core) &&
      __atomic_load_n(&s->timer_due_ns, __ATOMIC_RELAXED) == UINT64_MAX)
    session_kick(s); /* its settle arms its timer: it is not quiet any more */
}

void path_stamp(struct tether_session *s) {
  if (s->path && core_path_covered(&s->core))
    core_path_heard(&s->core, s->path->heard_ns);
}

static void on_path_timer(evutil_socket_t fd, short what, void *arg) {
  struct tether_path *p = arg;
  uint64_t now = now_ns();
  uint64_t suspend_ns = (uint64_t)p->ctx->cfg.suspend_ms * 1000000;
  if (p->heard_ns && now >= p->heard_ns + suspend_ns) {
    /* The peer's path heartbeats stopped: each member on its own again
     * (its timer suspends it, unless its own datagrams kept coming). */
    FOR_MEMBERS(p, f, m)
      uncover(m, now);
    p->heard_ns = 0;
  }
  send_beat(p, now);
  arm(p, now);
}

/* Next: our heartbeat, an interval from now give or take an eighth (paths
 * set up together do not beat together), or the moment the peer's path
 * heartbeats are overdue. */
static void arm(struct tether_path *p, uint64_t now) {
  uint64_t hb = (uint64_t)p->ctx->cfg.heartbeat_ms * 1000000;
  uint64_t wait = hb - hb / 8 + (hb / 4 ? random_u32() % (hb / 4) : 0);
  if (p->heard_ns) {
    uint64_t overdue = p->heard_ns + (uint64_t)p->ctx->cfg.suspend_ms * 1000000;
    if (overdue < now + wait)
      wait = overdue > now ? overdue - now : 0;
  }
  struct timeval tv = {.tv_sec = (time_t)(wait / 1000000000),
                       .tv_usec = (suseconds_t)(wait % 1000000000 / 1000)};
  event_add(p->timer, &tv);
}

/* ---- membership ---------------------------------------------------------- */

static struct tether_path *path_find(struct tether_ctx *ctx, struct udp_chan *u,
                                     const struct sockaddr *a, socklen_t len, bool create) {
  unsigned h = path_hash(u, a, len);
  for (struct tether_path *p = ctx->paths[h]; p; p = p->hash_next)
    if (p->udp == u && sock_addr_same((struct sockaddr *)&p->peer, p->peer_len, a, len, true))
      return p;
  if (!create || len > sizeof(struct sockaddr_storage))
    return NULL;
  struct tether_path *p = calloc(1, sizeof(*p));
  if (!p)
    return NULL;
  p->ctx = ctx;
  p->udp = u;
  memcpy(&p->peer, a, len);
  p->peer_len = len;
  p->timer = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_path_timer, p);
  if (!p->timer) {
    free(p);
    return NULL;
  }
  p->hash_next = ctx->paths[h];
  ctx->paths[h] = p;
  arm(p, now_ns());
  return p;
}

static void path_free(struct tether_path *p) {
  struct tether_path **pp = &p->ctx->paths[path_hash(p->udp, (struct sockaddr *)&p->peer,
                                                     p->peer_len)];
  while (*pp != p)
    pp = &(*pp)->hash_next;
  *pp = p->hash_next;
  event_free(p->timer);
  free(p);
}

void path_leave(struct tether_session *s) {
  struct tether_path *p = s->path;
  if (!p)
    return;
  uint32_t f = fine_of(s);
  if (!core_path_covered(&s->core))
    p->uncovered[f]--;
  core_path_cover(&s->core, false, 0);
  p->size[f]--;
  p->fine[f] ^= (uint32_t)s->path_tag;
  if (s->path_prev)
    s->path_prev->path_next = s->path_next;
  else
    p->lists[f] = s->path_next;
  if (s->path_next)
    s->path_next->path_prev = s->path_prev;
  s->path = NULL;
  s->path_prev = s->path_next = NULL;
  if (--p->n == 0)
    path_free(p);
}

void path_update(struct tether_session *s) {
  bool want = s->core.state == CORE_CONNECTED && s->sock >= 0 && s->udp && s->udp_peer_len;
  if (s->path && want && s->path->udp == s->udp &&
      sock_addr_same((struct sockaddr *)&s->path->peer, s->path->peer_len,
                     (struct sockaddr *)&s->udp_peer, s->udp_peer_len, true))
    return;
  path_leave(s);
  if (!want)
    return;
  struct tether_path *p =
      path_find(s->ctx, s->udp, (struct sockaddr *)&s->udp_peer, s->udp_peer_len, true);
  if (!p)
    return; /* out of memory: the session keeps its own heartbeats */
  uint32_t f = fine_of(s);
  s->path = p;
  s->path_prev = NULL;
  s->path_next = p->lists[f];
  if (p->lists[f])
    p->lists[f]->path_prev = s;
  p->lists[f] = s;
  p->n++;
  p->size[f]++;
  p->uncovered[f]++; /* not covered yet (path_leave uncovered it) */
  p->fine[f] ^= (uint32_t)s->path_tag;
}

/* ---- the peer's heartbeat ------------------------------------------------ */

void path_on_beat(struct tether_session *anchor, const struct ctl_path *beat,
                  const struct sockaddr *from, socklen_t fromlen) {
  struct tether_path *p = anchor->path;
  /* The anchor vouches only for the path it is on, as we know it: it came
   * from that path's peer, on that path's socket. */
  if (!p || !sock_addr_same((struct sockaddr *)&p->peer, p->peer_len, from, fromlen, true))
    return;
  uint64_t now = now_ns();
  /* An honest peer beats once an interval (less an eighth): more often
   * would only make us walk the path for nothing -- or, with digests that
   * never match, uncover it over and over. */
  uint64_t hb = (uint64_t)p->ctx->cfg.heartbeat_ms * 1000000;
  if (p->beat_rx_ns && now - p->beat_rx_ns < hb / 2)
    return;
  p->beat_rx_ns = now;
  uint32_t mine[CTL_PATH_BUCKETS_MAX];
  digests(p, beat->buckets, mine);
  if (p->strike_buckets != beat->buckets) {
    memset(p->strikes, 0, sizeof(p->strikes));
    p->strike_buckets = beat->buckets;
  }
  for (uint32_t b = 0; b < beat->buckets; b++)
    if (mine[b] == beat->digest[b])
      p->strikes[b] = 0;
    else if (p->strikes[b] < PATH_STRIKES)
      p->strikes[b]++;
  bool first = !p->heard_ns;
  p->heard_ns = now;
  /* Only the buckets where something changes are walked: those the two
   * sides disagree about (their covered members are uncovered), and those
   * that match and hold members not covered yet (covered once their
   * transport is fully set up). */
  for (uint32_t f = 0; f < CTL_PATH_BUCKETS_MAX; f++) {
    uint8_t strikes = p->strikes[f & (beat->buckets - 1)];
    if (strikes >= PATH_STRIKES && p->uncovered[f] < p->size[f]) {
      for (struct tether_session *m = p->lists[f]; m; m = m->path_next)
        uncover(m, soon(p, now));
    } else if (strikes == 0 && p->uncovered[f] > 0) {
      for (struct tether_session *m = p->lists[f]; m; m = m->path_next)
        if (m->keepalive == KEEPALIVE_LONG)
          cover(m, now);
    }
  }
  if (first) { /* the overdue check moves from never to then */
    event_del(p->timer);
    arm(p, now);
  }
}
