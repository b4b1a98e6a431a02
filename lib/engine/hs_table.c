/* The server's table of handshakes in progress (tether(7), "Handshake
 * slots").  Every connection the engine accepts holds a slot while it
 * handshakes; the table bounds their number, and decides who gets a slot
 * when they run out:
 *
 *   - HS_TABLE_SLOTS general slots hold every handshake until its first
 *     message shows it resumes a known session; such a resume moves to a
 *     budget of its own (HS_RESUME_SLOTS) that new handshakes never touch,
 *     so a flood of setups cannot keep established sessions from resuming.
 *   - A handshake gives its slot back as soon as it completes: sessions
 *     waiting for tether_accept, and parked handshakes' sessions to be, are
 *     bounded by the accept queue (listener.c), not here.
 *   - A full table evicts the handshake that has waited longest for its
 *     peer's next complete message, once that wait exceeds hs_stall_ns(): a
 *     slowloris (a byte a second) or a flood of ClientHellos that never
 *     finish lose their slots to newcomers, while honest handshakes, which
 *     answer within a round trip, keep theirs.  Among the stalled, hosts
 *     holding more than HS_HOST_SHARE slots (an IPv4 address, or an IPv6
 *     /64) go first, then handshakes waiting on their peer before those
 *     waiting for room in an accept queue.
 *   - A full table with nothing stalled refuses nobody: the listener stops
 *     accepting until a slot frees or the oldest stalls (accept_gate.c);
 *     connections wait in the kernel's backlog meanwhile.
 *
 * No host is capped while slots are free: a NAT, a proxy or a load
 * generator may run any number of handshakes at once. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "engine.h"

/* A client host: an IPv4 address or an IPv6 /64 (IPv4-mapped addresses
 * count as IPv4). */
struct hs_host {
  struct hs_host *next; /* hash chain */
  uint8_t key[9];       /* family tag, then 4 or 8 address bytes */
  unsigned n;           /* its handshakes in general slots */
  struct hs_list conns; /* those handshakes, least recent progress first */
};

/* How far the victim search looks among the longest stalled. */
#define VICTIM_SCAN 64

/* ---- intrusive lists: off is the offset of the hs_link in hs_conn ---- */

#define LINK(h, off) ((struct hs_link *)((char *)(h) + (off)))
#define BY_AGE offsetof(struct hs_conn, slot.by_age)
#define BY_HOST offsetof(struct hs_conn, slot.by_host)
#define PARKED offsetof(struct hs_conn, slot.parked_link)

static void list_unlink(struct hs_list *l, struct hs_conn *h, size_t off) {
  struct hs_link *k = LINK(h, off);
  if (k->prev)
    LINK(k->prev, off)->next = k->next;
  else
    l->head = k->next;
  if (k->next)
    LINK(k->next, off)->prev = k->prev;
  else
    l->tail = k->prev;
  k->prev = k->next = NULL;
}

static void list_append(struct hs_list *l, struct hs_conn *h, size_t off) {
  struct hs_link *k = LINK(h, off);
  k->prev = l->tail;
  k->next = NULL;
  if (l->tail)
    LINK(l->tail, off)->next = h;
  else
    l->head = h;
  l->tail = h;
}

/* ---- hosts ---- */

static void host_key(const struct sockaddr_storage *ss, uint8_t key[9]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  memset(key, 0, 9);
  if (ss->ss_family == AF_INET) {
    key[0] = 4;
    memcpy(key + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    const uint8_t *a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
    if (memcmp(a, mapped, sizeof(mapped)) == 0) {
      key[0] = 4;
      memcpy(key + 1, a + 12, 4);
    } else {
      key[0] = 6;
      memcpy(key + 1, a, 8);
    }
  }
}

static unsigned host_bucket(const uint8_t key[9]) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 9; i++)
    h = (h ^ key[i]) * 16777619u;
  return h % HS_HOST_BUCKETS;
}

/* h's host, created if need be (NULL: out of memory). */
static struct hs_host *host_get(struct hs_table *t, const struct sockaddr_storage *peer) {
  uint8_t key[9];
  host_key(peer, key);
  struct hs_host **b = &t->hosts[host_bucket(key)];
  for (struct hs_host *o = *b; o; o = o->next)
    if (memcmp(o->key, key, sizeof(key)) == 0)
      return o;
  struct hs_host *o = calloc(1, sizeof(*o));
  if (!o)
    return NULL;
  memcpy(o->key, key, sizeof(key));
  o->next = *b;
  *b = o;
  return o;
}

static void big_remove(struct hs_table *t, struct hs_host *o) {
  for (unsigned i = 0; i < t->n_big; i++)
    if (t->big[i] == o) {
      t->big[i] = t->big[--t->n_big];
      return;
    }
}

/* ---- general slots ---- */

static void general_add(struct hs_table *t, struct hs_conn *h) {
  struct hs_host *o = h->slot.host;
  list_append(&t->general, h, BY_AGE);
  list_append(&o->conns, h, BY_HOST);
  t->n_general++;
  if (++o->n == HS_HOST_SHARE + 1 && t->n_big < sizeof(t->big) / sizeof(t->big[0]))
    t->big[t->n_big++] = o;
}

static void general_remove(struct hs_table *t, struct hs_conn *h) {
  struct hs_host *o = h->slot.host;
  list_unlink(&t->general, h, BY_AGE);
  list_unlink(&o->conns, h, BY_HOST);
  t->n_general--;
  if (o->n-- == HS_HOST_SHARE + 1)
    big_remove(t, o);
  if (o->n > 0)
    return;
  for (struct hs_host **pp = &t->hosts[host_bucket(o->key)]; *pp; pp = &(*pp)->next)
    if (*pp == o) {
      *pp = o->next;
      free(o);
      return;
    }
}

/* The peer's last progress is now: to the young end of both lists. */
static void general_touch(struct hs_table *t, struct hs_conn *h, uint64_t now) {
  h->slot.progress_ns = now;
  list_unlink(&t->general, h, BY_AGE);
  list_append(&t->general, h, BY_AGE);
  list_unlink(&h->slot.host->conns, h, BY_HOST);
  list_append(&h->slot.host->conns, h, BY_HOST);
}

static void park_unlink(struct hs_table *t, struct hs_conn *h) {
  if (!h->slot.parked)
    return;
  list_unlink(&t->parked, h, PARKED);
  h->slot.parked = false;
  t->n_parked--;
}

/* A slot freed: listeners that wait for one watch again. */
static void slot_freed_locked(struct tether_ctx *ctx) {
  if (!ctx->hst.room_wanted)
    return;
  ctx->hst.room_wanted = false;
  for (struct tether_listener *l = ctx->listeners; l; l = l->next)
    accept_gate_room(&l->gate);
}

/* ---- the unparking of handshakes once accept queues have room ---- */

static void on_room(evutil_socket_t fd, short what, void *arg) {
  struct tether_ctx *ctx = arg;
  struct hs_table *t = &ctx->hst;
  struct tether_listener *full[8];
  unsigned n_full = 0;
  /* Oldest first.  Only the engine thread changes the list, so it may be
   * walked unlocked; unparking h frees no other handshake (one that parks
   * again goes to the end, and is skipped there: its listener is full). */
  for (struct hs_conn *h = t->parked.head, *next; h; h = next) {
    next = h->slot.parked_link.next;
    bool skip = false;
    for (unsigned i = 0; i < n_full && !skip; i++)
      skip = full[i] == h->listener;
    if (skip)
      continue;
    pthread_mutex_lock(&ctx->lock);
    bool room = !h->listener || listener_has_room_locked(h->listener);
    if (room) {
      park_unlink(t, h);
      /* It waited on us; from its ServerHello on it waits on its peer. */
      if (h->slot.kind == HS_SLOT_GENERAL)
        general_touch(t, h, now_ns());
    }
    pthread_mutex_unlock(&ctx->lock);
    if (!room) {
      if (n_full < sizeof(full) / sizeof(full[0]))
        full[n_full++] = h->listener;
      continue;
    }
    hs_conn_unpark(h); /* h may be gone after this */
  }
}

int hs_table_init(struct tether_ctx *ctx) {
  ctx->hst.room_ev = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_room, ctx);
  return ctx->hst.room_ev ? 0 : -ENOMEM;
}

void hs_table_clear(struct tether_ctx *ctx) {
  struct hs_table *t = &ctx->hst;
  for (int i = 0; i < HS_HOST_BUCKETS; i++)
    while (t->hosts[i]) {
      struct hs_host *o = t->hosts[i];
      t->hosts[i] = o->next;
      free(o);
    }
  if (t->room_ev)
    event_free(t->room_ev);
  t->room_ev = NULL;
}

uint64_t hs_stall_ns(const struct tether_ctx *ctx) {
  uint64_t quarter = (uint64_t)ctx->cfg.connect_timeout_ms * 1000000 / 4;
  uint64_t cap = (uint64_t)HS_STALL_MS * 1000000;
  return quarter < cap ? quarter : cap;
}

static bool stalled(const struct hs_conn *h, uint64_t now, uint64_t stall) {
  return now - h->slot.progress_ns >= stall;
}

/* ctx->lock held: the handshake a full table gives up for a newcomer, or
 * NULL when none has stalled.  First the longest stalled of a host over
 * its share; else, among the longest stalled, one that waits on its peer
 * rather than for room in an accept queue. */
static struct hs_conn *victim_locked(struct tether_ctx *ctx, uint64_t now) {
  struct hs_table *t = &ctx->hst;
  uint64_t stall = hs_stall_ns(ctx);
  struct hs_conn *best = NULL;
  for (unsigned i = 0; i < t->n_big; i++) {
    struct hs_conn *h = t->big[i]->conns.head;
    if (h && stalled(h, now, stall) && (!best || h->slot.progress_ns < best->slot.progress_ns))
      best = h;
  }
  if (best)
    return best;
  int seen = 0;
  for (struct hs_conn *h = t->general.head; h && seen < VICTIM_SCAN && stalled(h, now, stall);
       h = h->slot.by_age.next, seen++) {
    if (!best)
      best = h;
    if (!h->slot.parked)
      return h;
  }
  return best;
}

bool hs_table_room(struct tether_ctx *ctx, uint64_t *wait_ns) {
  struct hs_table *t = &ctx->hst;
  uint64_t now = now_ns(), stall = hs_stall_ns(ctx);
  bool room = true;
  pthread_mutex_lock(&ctx->lock);
  struct hs_conn *oldest = t->general.head;
  if (t->n_general >= HS_TABLE_SLOTS && oldest && !stalled(oldest, now, stall)) {
    room = false;
    *wait_ns = oldest->slot.progress_ns + stall - now;
    t->room_wanted = true;
  }
  pthread_mutex_unlock(&ctx->lock);
  return room;
}

int hs_table_admit_locked(struct hs_conn *h, struct hs_conn **victim) {
  struct hs_table *t = &h->ctx->hst;
  uint64_t now = now_ns();
  *victim = NULL;
  if (t->n_general >= HS_TABLE_SLOTS && !(*victim = victim_locked(h->ctx, now)))
    return -EAGAIN;
  if (!(h->slot.host = host_get(t, &h->peer)))
    return -ENOMEM;
  h->slot.kind = HS_SLOT_GENERAL;
  h->slot.progress_ns = now;
  general_add(t, h);
  return 0;
}

void hs_table_leave_locked(struct hs_conn *h) {
  struct hs_table *t = &h->ctx->hst;
  park_unlink(t, h);
  if (h->slot.kind == HS_SLOT_GENERAL) {
    general_remove(t, h);
    slot_freed_locked(h->ctx);
  } else if (h->slot.kind == HS_SLOT_RESUME) {
    t->n_resume--;
  }
  h->slot.host = NULL;
  h->slot.kind = HS_SLOT_NONE;
}

void hs_table_progress(struct hs_conn *h) {
  pthread_mutex_lock(&h->ctx->lock);
  if (h->slot.kind == HS_SLOT_GENERAL)
    general_touch(&h->ctx->hst, h, now_ns());
  pthread_mutex_unlock(&h->ctx->lock);
}

void hs_table_resume(struct hs_conn *h) {
  struct hs_table *t = &h->ctx->hst;
  pthread_mutex_lock(&h->ctx->lock);
  if (h->slot.kind == HS_SLOT_GENERAL && t->n_resume < HS_RESUME_SLOTS) {
    hs_table_leave_locked(h);
    h->slot.kind = HS_SLOT_RESUME;
    t->n_resume++;
  }
  pthread_mutex_unlock(&h->ctx->lock);
}

void hs_table_park(struct hs_conn *h) {
  struct hs_table *t = &h->ctx->hst;
  pthread_mutex_lock(&h->ctx->lock);
  if (!h->slot.parked) {
    h->slot.parked = true;
    list_append(&t->parked, h, PARKED);
    t->n_parked++;
  }
  pthread_mutex_unlock(&h->ctx->lock);
}

void hs_table_room_freed_locked(struct tether_ctx *ctx) {
  if (ctx->hst.n_parked > 0 && ctx->hst.room_ev)
    event_active(ctx->hst.room_ev, EV_READ, 0);
}
