/* End of stream without the FIN: a reader asleep in tether_read (a blocking
 * session sleeps in recv() on the socket itself) returns the peer's close as
 * soon as an authenticated datagram announces it and every byte before it
 * is delivered -- not when the FIN comes, and not when the session suspends
 * for want of heartbeats.  The peer is a client driven by hand through the
 * library's wire layer (hand.c): it sends its bytes and a Control datagram
 * saying "write closed at N", and never sends a FIN or a heartbeat (its TCP
 * connection stays open, silent).  suspend_ms is 30 s, so only the datagram
 * can end the read within the test's bound.  Also: bytes sent before the
 * close are all delivered first, and a datagram with a wrong MAC ends
 * nothing. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#include "core/session.h"
#include "hand.h"
#include "wire/control.h"

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

/* Far beyond the bound below: a read that ends only when the session
 * suspends (no heartbeat from the hand client) fails the test. */
#define SUSPEND_MS 30000
#define EOF_BOUND_MS 2000

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  int port;
};

static int setup(void **state) {
  struct server *sv = calloc(1, sizeof(*sv));
  tether_config *cfg = tether_config_new();
  assert_non_null(sv);
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, SUSPEND_MS), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, 0), 0);
  assert_int_equal(tether_ctx_new(cfg, &sv->ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sv->ctx, "127.0.0.1", "0", &sv->l), 0);
  sv->port = tether_listener_port(sv->l);
  *state = sv;
  return 0;
}

static int teardown(void **state) {
  struct server *sv = *state;
  tether_listener_close(sv->l);
  tether_ctx_free(sv->ctx);
  free(sv);
  return 0;
}

/* The reader: reads until end of stream (or an error), keeping what came. */
struct reader {
  tether_session *s;
  char got[64];
  size_t n;
  ssize_t last; /* 0: end of stream; < 0: error */
  int done;
  uint64_t done_ms;
};

static void *read_all(void *arg) {
  struct reader *r = arg;
  ssize_t k;
  while ((k = tether_read(r->s, r->got + r->n, sizeof(r->got) - r->n)) > 0)
    r->n += (size_t)k;
  r->last = k;
  r->done_ms = hand_now_ms();
  STORE(r->done, 1);
  return NULL;
}

/* Waits up to EOF_BOUND_MS for the reader to finish, and joins it.  If it
 * has not, the hand client's reset ends its read: then it fails with why. */
static void join_within_bound(struct reader *r, struct hand *c, pthread_t t, const char *why) {
  uint64_t end = hand_now_ms() + EOF_BOUND_MS;
  while (!LOAD(r->done) && hand_now_ms() < end) {
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  bool done = LOAD(r->done);
  if (!done)
    hand_free(c);
  pthread_join(t, NULL);
  if (!done)
    fail_msg("%s", why);
}

/* A Control datagram from the hand client, sealed with its key (or a wrong
 * one), to the server's side channel. */
static void send_close(struct hand *c, uint64_t sent, uint64_t seq, bool spoil) {
  struct core_ctl ctl = {.seq = seq, .sent = sent, .write_closed = true, .read_closed = true};
  uint8_t key[KEY_LEN], dg[CTL_MAX];
  memcpy(key, c->keys.ctl_c2s, KEY_LEN);
  if (spoil)
    key[0] ^= 1;
  ssize_t n = ctl_seal(c->t.session_id, &ctl, key, dg, sizeof(dg));
  assert_true(n > 0);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->t.server_udp)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(sendto(fd, dg, (size_t)n, 0, (struct sockaddr *)&to, sizeof(to)), n);
  close(fd);
}

/* The hand client's setup, its ClientFinish and `data`; the session the
 * server accepted for it, with a reader thread already started on it. */
static tether_session *start(struct server *sv, struct hand *c, const char *data,
                             struct reader *r, pthread_t *t) {
  uint8_t frame[128];
  hand_hello_from(c, sv->port, NULL);
  hand_server_hello(c, NULL);
  assert_true(c->t.server_udp > 0);
  tether_session *s = NULL;
  assert_int_equal(tether_accept(sv->l, &s), 0);
  size_t n = hand_finish_frame(c, false, frame, sizeof(frame));
  hand_send_all(c->fd, frame, n);
  if (*data)
    hand_send_all(c->fd, data, strlen(data));
  memset(r, 0, sizeof(*r));
  r->s = s;
  assert_int_equal(pthread_create(t, NULL, read_all, r), 0);
  return s;
}

/* Lets the reader take what came and fall asleep waiting for more. */
static void let_reader_sleep(void) {
  struct timespec ts = {0, 300 * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_close_announced_without_fin(void **state) {
  struct server *sv = *state;
  struct hand c;
  struct reader r;
  pthread_t t;
  tether_session *s = start(sv, &c, "hello", &r, &t);
  let_reader_sleep();
  assert_false(LOAD(r.done));
  uint64_t sent_ms = hand_now_ms();
  send_close(&c, 5, 1, false);
  join_within_bound(&r, &c, t, "no end of stream after the close datagram (TCP still open)");
  assert_int_equal(r.last, 0);
  assert_int_equal(r.n, 5);
  assert_memory_equal(r.got, "hello", 5);
  printf("end of stream %llu ms after the datagram\n",
         (unsigned long long)(r.done_ms - sent_ms));
  tether_close(s);
  hand_free(&c);
}

/* A close at 8 while only 5 bytes came: the reader waits for the other 3,
 * and returns end of stream only after them. */
static void test_close_waits_for_its_bytes(void **state) {
  struct server *sv = *state;
  struct hand c;
  struct reader r;
  pthread_t t;
  tether_session *s = start(sv, &c, "hello", &r, &t);
  let_reader_sleep();
  send_close(&c, 8, 1, false);
  let_reader_sleep();
  assert_false(LOAD(r.done));
  hand_send_all(c.fd, "abc", 3);
  join_within_bound(&r, &c, t, "no end of stream after the last 3 bytes");
  assert_int_equal(r.last, 0);
  assert_int_equal(r.n, 8);
  assert_memory_equal(r.got, "helloabc", 8);
  tether_close(s);
  hand_free(&c);
}

/* A forged close (wrong MAC) ends nothing: the reader sleeps on, and the
 * real one then ends the stream. */
static void test_forged_close_ignored(void **state) {
  struct server *sv = *state;
  struct hand c;
  struct reader r;
  pthread_t t;
  tether_session *s = start(sv, &c, "", &r, &t);
  let_reader_sleep();
  send_close(&c, 0, 1, true);
  let_reader_sleep();
  assert_false(LOAD(r.done));
  send_close(&c, 0, 2, false);
  join_within_bound(&r, &c, t, "no end of stream after the authentic close");
  assert_int_equal(r.last, 0);
  assert_int_equal(r.n, 0);
  tether_close(s);
  hand_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_close_announced_without_fin, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_waits_for_its_bytes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_forged_close_ignored, setup, teardown),
  };
  return cmocka_run_group_tests_name("eof", tests, NULL, NULL);
}
