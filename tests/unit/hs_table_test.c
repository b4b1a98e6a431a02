/* The server's handshake table (lib/engine/hs_table.c) on its own, on a
 * fake clock: who gets a slot, who is evicted, and when the listener must
 * wait.  The engine functions it calls are stubs here. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "engine.h"

#define MS 1000000ull

/* ---- stubs ---- */

static uint64_t fake_now;
static unsigned gates_opened;

uint64_t now_ns(void) { return fake_now; }
bool listener_has_room_locked(const struct tether_listener *l) { return l == NULL; }
void hs_conn_unpark(struct hs_conn *h) { (void)h; }
struct event *engine_event_new(struct tether_ctx *ctx, enum engine_prio prio, int fd, short what,
                               void (*cb)(int, short, void *), void *arg) {
  (void)prio;
  return event_new(ctx->base, fd, what, cb, arg);
}
void accept_gate_room(struct accept_gate *g) {
  (void)g;
  gates_opened++;
}

/* ---- helpers ---- */

struct fixture {
  struct tether_ctx ctx;
  struct tether_listener l; /* only its gate is woken */
  struct hs_conn *conns;
  size_t n;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->ctx.cfg.connect_timeout_ms = 10000; /* stall period: 1 s */
  pthread_mutex_init(&f->ctx.lock, NULL);
  assert_non_null(f->ctx.base = event_base_new());
  assert_int_equal(hs_table_init(&f->ctx), 0);
  f->ctx.listeners = &f->l;
  f->n = HS_TABLE_SLOTS + 64;
  assert_non_null(f->conns = calloc(f->n, sizeof(*f->conns)));
  fake_now = 1000 * MS;
  gates_opened = 0;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  hs_table_clear(&f->ctx);
  event_base_free(f->ctx.base);
  pthread_mutex_destroy(&f->ctx.lock);
  free(f->conns);
  free(f);
  return 0;
}

/* The i-th handshake, from addr (IPv4 or IPv6 text) and port. */
static struct hs_conn *conn(struct fixture *f, size_t i, const char *addr, int port) {
  struct hs_conn *h = &f->conns[i];
  assert_true(i < f->n);
  memset(h, 0, sizeof(*h));
  h->ctx = &f->ctx;
  h->kind = HS_SERVER;
  if (strchr(addr, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&h->peer;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET6, addr, &a->sin6_addr), 1);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&h->peer;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET, addr, &a->sin_addr), 1);
  }
  return h;
}

static int admit(struct hs_conn *h, struct hs_conn **victim) {
  struct hs_conn *v = NULL;
  pthread_mutex_lock(&h->ctx->lock);
  int rc = hs_table_admit_locked(h, &v);
  pthread_mutex_unlock(&h->ctx->lock);
  if (victim)
    *victim = v;
  else
    assert_null(v);
  return rc;
}

static void leave(struct hs_conn *h) {
  pthread_mutex_lock(&h->ctx->lock);
  hs_table_leave_locked(h);
  pthread_mutex_unlock(&h->ctx->lock);
}

/* Handshakes first..first+n-1 from distinct IPv4 hosts 10.x.y.z. */
static void fill_distinct(struct fixture *f, size_t first, size_t n) {
  for (size_t i = first; i < first + n; i++) {
    char addr[32];
    snprintf(addr, sizeof(addr), "10.%zu.%zu.%zu", i >> 16, (i >> 8) & 255, i & 255);
    assert_int_equal(admit(conn(f, i, addr, 1000), NULL), 0);
  }
}

static bool room(struct fixture *f, uint64_t *wait) {
  uint64_t w = 0;
  bool r = hs_table_room(&f->ctx, &w);
  if (wait)
    *wait = w;
  return r;
}

/* ---- tests ---- */

/* Hosts are IPv4 addresses and IPv6 /64 prefixes; an IPv4-mapped IPv6
 * address is its IPv4 host.  Hosts go when their last handshake does. */
static void test_hosts(void **state) {
  struct fixture *f = *state;
  struct hs_conn *a = conn(f, 0, "2001:db8:1:2::1", 1);
  struct hs_conn *b = conn(f, 1, "2001:db8:1:2:ffff:ffff:ffff:fffe", 2);
  struct hs_conn *c = conn(f, 2, "2001:db8:1:3::1", 3);
  struct hs_conn *d = conn(f, 3, "192.0.2.7", 4);
  struct hs_conn *e = conn(f, 4, "::ffff:192.0.2.7", 5);
  struct hs_conn *g = conn(f, 5, "192.0.2.8", 6);
  for (int i = 0; i < 6; i++)
    assert_int_equal(admit(&f->conns[i], NULL), 0);
  assert_ptr_equal(a->slot.host, b->slot.host);
  assert_ptr_not_equal(a->slot.host, c->slot.host);
  assert_ptr_equal(d->slot.host, e->slot.host);
  assert_ptr_not_equal(d->slot.host, g->slot.host);
  assert_int_equal(f->ctx.hst.n_general, 6);
  for (int i = 0; i < 6; i++)
    leave(&f->conns[i]);
  assert_int_equal(f->ctx.hst.n_general, 0);
  for (int i = 0; i < HS_HOST_BUCKETS; i++)
    assert_null(f->ctx.hst.hosts[i]);
}

/* No host is capped while slots are free. */
static void test_one_host_fills_the_table(void **state) {
  struct fixture *f = *state;
  for (size_t i = 0; i < HS_TABLE_SLOTS; i++)
    assert_int_equal(admit(conn(f, i, "198.51.100.1", (int)i), NULL), 0);
  assert_int_equal(f->ctx.hst.n_general, HS_TABLE_SLOTS);
  assert_int_equal(f->ctx.hst.n_big, 1);
}

/* A full table with nothing stalled: no room, and the wait is until the
 * oldest stalls; then it is the one evicted. */
static void test_full_waits_for_a_stall(void **state) {
  struct fixture *f = *state;
  uint64_t wait, stall = hs_stall_ns(&f->ctx);
  struct hs_conn *victim;
  assert_int_equal(stall, 1000 * MS);
  fill_distinct(f, 0, 1);
  fake_now += 10 * MS;
  fill_distinct(f, 1, HS_TABLE_SLOTS - 1);
  assert_false(room(f, &wait));
  assert_int_equal(wait, stall - 10 * MS);
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), &victim), -EAGAIN);
  assert_null(victim);
  fake_now += stall - 10 * MS;
  assert_true(room(f, NULL));
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), &victim), 0);
  assert_ptr_equal(victim, &f->conns[0]);
}

/* Progress (a complete message from the peer) protects a handshake: the
 * victim is the one that has waited longest since its last. */
static void test_progress_protects(void **state) {
  struct fixture *f = *state;
  struct hs_conn *victim;
  fill_distinct(f, 0, HS_TABLE_SLOTS);
  fake_now += 500 * MS;
  hs_table_progress(&f->conns[0]);
  fake_now += 600 * MS; /* all stalled but conns[0] */
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), &victim), 0);
  assert_ptr_equal(victim, &f->conns[1]);
}

/* Among the stalled, a host over its share goes first, even if others
 * have waited longer; an IPv6 host is its /64. */
static void test_big_host_first(void **state) {
  struct fixture *f = *state;
  struct hs_conn *victim;
  size_t others = HS_TABLE_SLOTS - 2 * HS_HOST_SHARE;
  fill_distinct(f, 0, others);
  fake_now += 100 * MS;
  for (size_t i = others; i < HS_TABLE_SLOTS; i++) {
    char addr[64];
    snprintf(addr, sizeof(addr), "2001:db8:0:7:%zx::1", i); /* one /64 */
    assert_int_equal(admit(conn(f, i, addr, 1), NULL), 0);
  }
  assert_int_equal(f->ctx.hst.n_big, 1);
  fake_now += 2000 * MS;
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), &victim), 0);
  assert_ptr_equal(victim, &f->conns[others]);
}

/* Among the stalled, one waiting for room in an accept queue goes after
 * those waiting on their peers. */
static void test_parked_last(void **state) {
  struct fixture *f = *state;
  struct hs_conn *victim;
  fill_distinct(f, 0, HS_TABLE_SLOTS);
  for (size_t i = 0; i < 10; i++)
    hs_table_park(&f->conns[i]);
  fake_now += 2000 * MS;
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), &victim), 0);
  assert_ptr_equal(victim, &f->conns[10]);
  leave(victim);
  /* All stalled are parked: the oldest of them, then. */
  for (size_t i = 11; i < HS_TABLE_SLOTS; i++)
    hs_table_park(&f->conns[i]);
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS + 1, "203.0.113.2", 1), &victim), 0);
  assert_ptr_equal(victim, &f->conns[0]);
  assert_int_equal(f->ctx.hst.n_parked, HS_TABLE_SLOTS - 1);
}

/* A resume of a known session leaves the general slots for a budget of
 * its own: its slot is free at once, for the next connection. */
static void test_resume_budget(void **state) {
  struct fixture *f = *state;
  fill_distinct(f, 0, HS_TABLE_SLOTS);
  assert_false(room(f, NULL)); /* a listener waits */
  hs_table_resume(&f->conns[5]);
  assert_int_equal(gates_opened, 1);
  assert_int_equal(f->ctx.hst.n_general, HS_TABLE_SLOTS - 1);
  assert_int_equal(f->ctx.hst.n_resume, 1);
  assert_true(room(f, NULL));
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS, "203.0.113.1", 1), NULL), 0);
  /* Progress and stalls no longer concern it; leaving frees its budget. */
  fake_now += 5000 * MS;
  struct hs_conn *victim;
  assert_int_equal(admit(conn(f, HS_TABLE_SLOTS + 1, "203.0.113.2", 1), &victim), 0);
  assert_ptr_not_equal(victim, &f->conns[5]);
  leave(&f->conns[5]);
  assert_int_equal(f->ctx.hst.n_resume, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_hosts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_one_host_fills_the_table, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_waits_for_a_stall, setup, teardown),
      cmocka_unit_test_setup_teardown(test_progress_protects, setup, teardown),
      cmocka_unit_test_setup_teardown(test_big_host_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_parked_last, setup, teardown),
      cmocka_unit_test_setup_teardown(test_resume_budget, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
