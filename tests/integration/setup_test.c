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
 * give_up_s; a thread writing meanwhile learns the failure too (the read
 * that fails the session takes the writers' lock: run under TSan).  And one
 * host holds at most 128 handshakes at a time. */
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#include "wire/crypto.h"
#include "wire/handshake.h"

#define CONNECT_TIMEOUT_MS 300

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  int port;
};

/* A client that speaks the handshake by hand. */
struct hand {
  int fd;
  struct x25519_key *key;
  struct hs_transcript t;
  struct session_keys keys;
  uint8_t th[32];
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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

static void send_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    assert_true(w > 0);
    b += w;
    n -= (size_t)w;
  }
}

static void send_frame(int fd, const hs_msg *m, bool preface) {
  uint8_t out[HS_PREFACE_LEN + 4 + HS_FRAME_MAX];
  ssize_t n = hs_encode(m, preface, out, sizeof(out));
  assert_true(n > 0);
  send_all(fd, out, (size_t)n);
}

/* A TCP connection to 127.0.0.1:port from `src` (an address of the
 * loopback network; NULL: any). */
static int dial(int port, const char *src) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (src) {
    struct sockaddr_in from = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, src, &from.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&from, sizeof(from)), 0);
  }
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  return fd;
}

/* Connects (from src, NULL: any) and sends a ClientHello (no side channel:
 * udp_port 0). */
static void hand_hello_from(struct hand *c, int port, const char *src) {
  memset(c, 0, sizeof(*c));
  c->fd = dial(port, src);
  assert_non_null(c->key = x25519_new());
  memcpy(c->t.client_pub, x25519_pub(c->key), KEY_LEN);
  assert_int_equal(crypto_random(c->t.client_nonce, NONCE_LEN), 0);
  c->t.client_rcvbuf = 65536;

  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  ch.x25519_pub = (ProtobufCBinaryData){KEY_LEN, c->t.client_pub};
  ch.nonce = (ProtobufCBinaryData){NONCE_LEN, c->t.client_nonce};
  ch.rcvbuf_max = c->t.client_rcvbuf;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  send_frame(c->fd, &m, true);
}

static void hand_hello(struct hand *c, int port) { hand_hello_from(c, port, NULL); }

/* Reads the ServerHello and derives the session keys, as a client does. */
static void hand_server_hello(struct hand *c) {
  struct hs_reader rd;
  const char *why = NULL;
  int rc;
  hs_reader_init(&rd, true);
  while ((rc = hs_reader_step(&rd, c->fd, &why)) == 0) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);
  }
  assert_int_equal(rc, 1);
  hs_msg *m = hs_decode(rd.buf, rd.have, &why);
  assert_non_null(m);
  assert_int_equal(m->msg_case, TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO);
  const Tether__Wire__ServerHello *sh = m->server_hello;
  assert_int_equal(sh->confirm.len, 0); /* no pre-shared key */
  memcpy(c->t.server_pub, sh->x25519_pub.data, KEY_LEN);
  memcpy(c->t.server_nonce, sh->nonce.data, NONCE_LEN);
  memcpy(c->t.session_id, sh->session_id.data, SESSION_ID_LEN);
  c->t.server_rcvbuf = sh->rcvbuf_max;
  c->t.server_udp = sh->udp_port;
  c->t.server_flags = sh->flags;
  hs_free(m);
  uint8_t shared[KEY_LEN];
  assert_int_equal(x25519_shared(c->key, c->t.server_pub, shared), 0);
  assert_int_equal(hs_transcript_hash(&c->t, c->th), 0);
  assert_int_equal(keys_derive(shared, NULL, 0, c->th, &c->keys), 0);
}

/* The ClientFinish frame, with its MAC spoiled if asked. */
static size_t hand_finish_frame(struct hand *c, bool spoil, uint8_t *out, size_t cap) {
  uint8_t mac[MAC_LEN];
  struct buf_part p = {c->th, sizeof(c->th)};
  assert_int_equal(hmac_parts(c->keys.confirm_c, &p, 1, mac), 0);
  if (spoil)
    mac[0] ^= 1;
  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  cf.confirm = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m.client_finish = &cf;
  ssize_t n = hs_encode(&m, false, out, cap);
  assert_true(n > 0);
  return (size_t)n;
}

static void hand_free(struct hand *c) {
  if (c->fd >= 0)
    close(c->fd);
  x25519_free(c->key);
}

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
  hand_server_hello(c);
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
  uint64_t t0 = now_ms();
  close(c.fd);
  c.fd = -1;
  assert_int_equal(tether_read(s, buf, sizeof(buf)), TETHER_EGIVEUP);
  uint64_t took = now_ms() - t0;
  assert_true(took >= CONNECT_TIMEOUT_MS / 2);
  assert_true(took < 10 * CONNECT_TIMEOUT_MS);
  tether_close(s);
  hand_free(&c);
}

/* Whether the server closed fd within ms (EOF or reset). */
static bool closed_within(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char b;
  return poll(&p, 1, ms) == 1 && recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

/* 136 connections from one host that stall in their preface: 128 hold
 * handshake slots, the rest are refused at once; another host still
 * completes a setup meanwhile. */
static void test_handshakes_per_host(void **state) {
  (void)state;
  enum { SLOTS = 128, EXTRA = 8 };
  int fds[SLOTS + EXTRA];
  tether_ctx *ctx;
  tether_listener *l;
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_CONNECT_TIMEOUT_MS, 30000), 0);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(ctx, "127.0.0.1", "0", &l), 0);
  int port = tether_listener_port(l);
  for (int i = 0; i < SLOTS + EXTRA; i++) {
    fds[i] = dial(port, "127.0.0.1");
    send_all(fds[i], "T", 1); /* a preface's first byte, and no more */
  }
  int refused = 0;
  for (int i = 0; i < SLOTS + EXTRA; i++)
    refused += closed_within(fds[i], i < SLOTS ? 50 : 2000);
  assert_int_equal(refused, EXTRA);

  struct hand c;
  hand_hello_from(&c, port, "127.0.0.2");
  hand_server_hello(&c);
  tether_session *s = accept_one(&(struct server){.ctx = ctx, .l = l, .port = port});
  hand_free(&c);
  tether_close(s);
  for (int i = 0; i < SLOTS + EXTRA; i++)
    close(fds[i]);
  tether_listener_close(l);
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
      cmocka_unit_test(test_handshakes_per_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
