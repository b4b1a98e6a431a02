/* The accepting side of session setup without a pre-shared key, against a
 * hand-driven client built from the library's own wire layer (real loopback
 * sockets, real X25519/HKDF/HMAC): the server queues a session for accept
 * as soon as it has sent its ServerHello, and checks the client's
 * ClientFinish when the session first reads.  Checked here: the session is
 * accepted before the ClientFinish is sent; a correct one, even split
 * across segments, lets the bytes behind it through untouched; a wrong MAC
 * fails the session with TETHER_EAUTH and a malformed one with
 * TETHER_EPROTO, without delivering a byte; a client that vanishes before
 * its ClientFinish ends the session within connect_timeout_ms, not
 * give_up_s; one that keeps its connection open without ever sending its
 * ClientFinish is dropped after connect_timeout_ms too, accepted or not; a
 * thread writing meanwhile learns the failure too (the read that fails the
 * session takes the writers' lock: run under TSan).  And one host's burst
 * of setups is not capped while slots are free; tether_listener_close wakes
 * the threads blocked in tether_accept. */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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

#include "hand.h"

#define CONNECT_TIMEOUT_MS 300

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
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_CONNECT_TIMEOUT_MS, CONNECT_TIMEOUT_MS), 0);
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

static void send_all(int fd, const void *p, size_t n) { hand_send_all(fd, p, n); }

static void hand_hello(struct hand *c, int port) { hand_hello_from(c, port, NULL); }

/* The session the server queued for this client (blocking accept). */
static tether_session *accept_one(struct server *sv) {
  tether_session *s = NULL;
  assert_int_equal(tether_accept(sv->l, &s), 0);
  assert_non_null(s);
  return s;
}

/* A hand client's setup up to the ServerHello, and the session the server
 * queued for it. */
static tether_session *hand_setup(struct server *sv, struct hand *c) {
  hand_hello(c, sv->port);
  hand_server_hello(c, NULL);
  return accept_one(sv);
}

static void read_exactly(tether_session *s, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = tether_read(s, buf + got, n - got);
    assert_true(r > 0);
    got += (size_t)r;
  }
}

/* Accepted before the ClientFinish exists; then the bytes behind a correct
 * one arrive untouched, and the answer reaches the client. */
static void test_accepted_before_finish(void **state) {
  struct server *sv = *state;
  struct hand c;
  uint8_t frame[128];
  char buf[16];
  tether_session *s = hand_setup(sv, &c); /* nothing sent since the ClientHello */
  size_t n = hand_finish_frame(&c, false, frame, sizeof(frame));
  send_all(c.fd, frame, n);
  send_all(c.fd, "hello", 5);
  read_exactly(s, buf, 5);
  assert_memory_equal(buf, "hello", 5);
  assert_int_equal(tether_write(s, "world", 5), 5);
  size_t got = 0;
  while (got < 5) {
    ssize_t r = recv(c.fd, buf + got, 5 - got, 0);
    assert_true(r > 0);
    got += (size_t)r;
  }
  assert_memory_equal(buf, "world", 5);
  assert_int_equal(tether_session_error(s), 0);
  tether_close(s);
  hand_free(&c);
}

/* A ClientFinish split across segments, with a pause: the first read waits
 * (non-blocking: EAGAIN) instead of taking half of it as data. */
static void test_split_finish(void **state) {
  struct server *sv = *state;
  struct hand c;
  uint8_t frame[128];
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  size_t n = hand_finish_frame(&c, false, frame, sizeof(frame));
  send_all(c.fd, frame, 3);
  usleep(50 * 1000);
  assert_int_equal(tether_set_nonblocking(s, 1), 0);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), -EAGAIN);
  assert_int_equal(tether_set_nonblocking(s, 0), 0);
  send_all(c.fd, frame + 3, n - 3);
  send_all(c.fd, "ok", 2);
  read_exactly(s, buf, 2);
  assert_memory_equal(buf, "ok", 2);
  tether_close(s);
  hand_free(&c);
}

/* A wrong MAC: the session fails with TETHER_EAUTH; nothing is delivered. */
static void test_wrong_finish(void **state) {
  struct server *sv = *state;
  struct hand c;
  uint8_t frame[128];
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  size_t n = hand_finish_frame(&c, true, frame, sizeof(frame));
  send_all(c.fd, frame, n);
  send_all(c.fd, "secret", 6);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EAUTH);
  assert_int_equal(tether_session_state(s), TETHER_STATE_FAILED);
  assert_int_equal(tether_session_error(s), TETHER_EAUTH);
  tether_close(s);
  hand_free(&c);
}

/* Writes bytes until a write fails (the client reads none: it may block
 * once the buffers are full); returns the error. */
static void *write_until_failed(void *arg) {
  tether_session *s = arg;
  ssize_t w;
  while ((w = tether_write(s, "w", 1)) == 1)
    ;
  return (void *)(intptr_t)w;
}

/* A wrong MAC while another thread writes: the read that checks the
 * ClientFinish fails the session under both locks, and the writer gets
 * TETHER_EAUTH too. */
static void test_wrong_finish_while_writing(void **state) {
  struct server *sv = *state;
  struct hand c;
  uint8_t frame[128];
  char buf[16];
  pthread_t t;
  void *w;
  tether_session *s = hand_setup(sv, &c);
  assert_int_equal(pthread_create(&t, NULL, write_until_failed, s), 0);
  assert_int_equal(recv(c.fd, buf, 1, 0), 1); /* it writes */
  size_t n = hand_finish_frame(&c, true, frame, sizeof(frame));
  send_all(c.fd, frame, n);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EAUTH);
  assert_int_equal(pthread_join(t, &w), 0);
  assert_int_equal((intptr_t)w, TETHER_EAUTH);
  tether_close(s);
  hand_free(&c);
}

/* Application bytes where the ClientFinish belongs: TETHER_EPROTO. */
static void test_malformed_finish(void **state) {
  struct server *sv = *state;
  struct hand c;
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  send_all(c.fd, "GET / HTTP/1.0\r\n\r\n", 18);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EPROTO);
  tether_close(s);
  hand_free(&c);
}

/* A client gone before its ClientFinish: the session ends after about
 * connect_timeout_ms (it cannot resume: it never proved its keys). */
static void test_vanished_client(void **state) {
  struct server *sv = *state;
  struct hand c;
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  uint64_t t0 = hand_now_ms();
  close(c.fd);
  c.fd = -1;
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EGIVEUP);
  uint64_t took = hand_now_ms() - t0;
  assert_true(took >= CONNECT_TIMEOUT_MS / 2);
  assert_true(took < 10 * CONNECT_TIMEOUT_MS);
  tether_close(s);
  hand_free(&c);
}

/* A client that sends its ClientHello and then nothing, holding the
 * connection open, and is never accepted: connect_timeout_ms later the
 * engine drops the queued session -- its connection closes and
 * tether_accept never returns it.  (No application read is needed for the
 * engine to notice.) */
static void test_never_confirms_queued(void **state) {
  struct server *sv = *state;
  struct hand c;
  tether_session *s = NULL;
  hand_hello(&c, sv->port);
  hand_server_hello(&c, NULL);
  uint64_t t0 = hand_now_ms();
  assert_true(hand_closed_within(c.fd, 10 * CONNECT_TIMEOUT_MS));
  uint64_t took = hand_now_ms() - t0;
  assert_true(took >= CONNECT_TIMEOUT_MS / 2);
  assert_int_equal(tether_listener_set_nonblocking(sv->l, 1), 0);
  assert_int_equal(tether_accept(sv->l, &s), -EAGAIN);
  assert_int_equal(tether_listener_set_nonblocking(sv->l, 0), 0);
  hand_free(&c);
}

/* The same client, accepted, with the application waiting to read: the
 * session fails with TETHER_EAUTH after about connect_timeout_ms. */
static void test_never_confirms_accepted(void **state) {
  struct server *sv = *state;
  struct hand c;
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  uint64_t t0 = hand_now_ms();
  assert_int_equal(tether_set_nonblocking(s, 1), 0);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), -EAGAIN);
  struct pollfd p = {.fd = tether_fd(s), .events = POLLIN};
  assert_int_equal(poll(&p, 1, 10 * CONNECT_TIMEOUT_MS), 1);
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EAUTH);
  uint64_t took = hand_now_ms() - t0;
  assert_true(took >= CONNECT_TIMEOUT_MS / 2);
  assert_int_equal(tether_session_state(s), TETHER_STATE_FAILED);
  assert_true(hand_closed_within(c.fd, 10 * CONNECT_TIMEOUT_MS));
  tether_close(s);
  hand_free(&c);
}

/* A client that did send its ClientFinish, and bytes behind it, to an
 * application that reads only much later: the engine takes the
 * ClientFinish at the deadline and the session lives on. */
static void test_confirmed_unread(void **state) {
  struct server *sv = *state;
  struct hand c;
  uint8_t frame[128];
  char buf[16];
  tether_session *s = hand_setup(sv, &c);
  size_t n = hand_finish_frame(&c, false, frame, sizeof(frame));
  send_all(c.fd, frame, n);
  send_all(c.fd, "late", 4);
  usleep(3 * CONNECT_TIMEOUT_MS * 1000);
  assert_int_equal(tether_session_state(s), TETHER_STATE_CONNECTED);
  read_exactly(s, buf, 4);
  assert_memory_equal(buf, "late", 4);
  assert_false(hand_closed_within(c.fd, 0));
  tether_close(s);
  hand_free(&c);
}

/* One host's burst is not capped while the table has room: 136
 * connections from one address that stall in their preface all keep their
 * slots (a NAT, a proxy or a load generator may run that many setups at
 * once), and another host still completes a setup meanwhile. */
static void test_one_host_not_capped(void **state) {
  (void)state;
  enum { CONNS = 136 };
  int fds[CONNS];
  tether_ctx *ctx;
  tether_listener *l;
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_CONNECT_TIMEOUT_MS, 30000), 0);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(ctx, "127.0.0.1", "0", &l), 0);
  int port = tether_listener_port(l);
  for (int i = 0; i < CONNS; i++) {
    fds[i] = hand_dial(port, "127.0.0.1");
    send_all(fds[i], "T", 1); /* a preface's first byte, and no more */
  }
  struct hand c;
  hand_hello_from(&c, port, "127.0.0.2");
  hand_server_hello(&c, NULL);
  tether_session *s = accept_one(&(struct server){.ctx = ctx, .l = l, .port = port});
  int refused = 0;
  for (int i = 0; i < CONNS; i++)
    refused += hand_closed_within(fds[i], i == 0 ? 1000 : 0);
  assert_int_equal(refused, 0);
  hand_free(&c);
  tether_close(s);
  for (int i = 0; i < CONNS; i++)
    close(fds[i]);
  tether_listener_close(l);
  tether_ctx_free(ctx);
}

/* tether_listener_close from another thread wakes every thread blocked in
 * tether_accept: each returns TETHER_ECLOSED (and, with nothing queued,
 * never a session). */
static void *accept_until_closed(void *arg) {
  tether_session *s = NULL;
  return (void *)(intptr_t)tether_accept(arg, &s);
}

static void test_close_wakes_acceptors(void **state) {
  (void)state;
  enum { WAITERS = 3 };
  tether_ctx *ctx;
  tether_listener *l;
  pthread_t t[WAITERS];
  assert_int_equal(tether_ctx_new(NULL, &ctx), 0);
  assert_int_equal(tether_listen(ctx, "127.0.0.1", "0", &l), 0);
  for (int i = 0; i < WAITERS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, accept_until_closed, l), 0);
  /* Whether or not they are in poll yet: a close before they block must
   * end their wait just the same. */
  struct timespec ts = {0, 100 * 1000000};
  nanosleep(&ts, NULL);
  tether_listener_close(l);
  for (int i = 0; i < WAITERS; i++) {
    void *rc;
    assert_int_equal(pthread_join(t[i], &rc), 0); /* a hang is ctest's timeout */
    assert_int_equal((int)(intptr_t)rc, TETHER_ECLOSED);
  }
  tether_ctx_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_accepted_before_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_split_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_finish_while_writing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_vanished_client, setup, teardown),
      cmocka_unit_test_setup_teardown(test_never_confirms_queued, setup, teardown),
      cmocka_unit_test_setup_teardown(test_never_confirms_accepted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_confirmed_unread, setup, teardown),
      cmocka_unit_test(test_one_host_not_capped),
      cmocka_unit_test(test_close_wakes_acceptors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
