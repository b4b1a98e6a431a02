/* Unit tests for lib/wire: handshake framing (hs_encode/hs_decode/hs_reader,
 * preface), side-channel datagrams (ctl_seal/ctl_open) and the crypto
 * helpers (X25519, HKDF key schedule, resume MACs). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "tether/tether.h"
#include "wire/control.h"
#include "wire/crypto.h"
#include "wire/handshake.h"

static void fill(uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(seed + i * 7);
}

static ProtobufCBinaryData bin(uint8_t *p, size_t n) { return (ProtobufCBinaryData){n, p}; }

static bool bin_eq(const ProtobufCBinaryData *b, const uint8_t *p, size_t n) {
  return b->len == n && b->data && memcmp(b->data, p, n) == 0;
}

/* Encodes m (without preface) and decodes the body again. */
static hs_msg *round_trip(const hs_msg *m) {
  uint8_t out[HS_FRAME_MAX + 16];
  ssize_t n = hs_encode(m, false, out, sizeof(out));
  assert_true(n > 4);
  uint32_t len = (uint32_t)out[0] << 24 | (uint32_t)out[1] << 16 | (uint32_t)out[2] << 8 | out[3];
  assert_int_equal(len, (size_t)n - 4);
  const char *why = NULL;
  hs_msg *d = hs_decode(out + 4, len, &why);
  if (!d)
    fail_msg("decode failed: %s", why ? why : "?");
  assert_int_equal(d->msg_case, m->msg_case);
  return d;
}

/* Expects encode to succeed and decode to refuse the result. */
static void expect_rejected(const hs_msg *m) {
  uint8_t out[HS_FRAME_MAX + 16];
  ssize_t n = hs_encode(m, false, out, sizeof(out));
  assert_true(n > 4);
  const char *why = NULL;
  hs_msg *d = hs_decode(out + 4, (size_t)n - 4, &why);
  if (d) {
    hs_free(d);
    fail_msg("a malformed message (case %d) was accepted", (int)m->msg_case);
  }
  assert_non_null(why);
}

/* ---- handshake messages --------------------------------------------------- */

static void test_hs_client_hello(void **state) {
  (void)state;
  uint8_t pub[KEY_LEN], nonce[NONCE_LEN];
  fill(pub, sizeof(pub), 1);
  fill(nonce, sizeof(nonce), 2);
  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  ch.x25519_pub = bin(pub, KEY_LEN);
  ch.nonce = bin(nonce, NONCE_LEN);
  ch.rcvbuf_max = 6291456;
  ch.udp_port = 65535;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  hs_msg *d = round_trip(&m);
  assert_true(bin_eq(&d->client_hello->x25519_pub, pub, KEY_LEN));
  assert_true(bin_eq(&d->client_hello->nonce, nonce, NONCE_LEN));
  assert_int_equal(d->client_hello->rcvbuf_max, 6291456);
  assert_int_equal(d->client_hello->udp_port, 65535);
  hs_free(d);
  /* Malformed variants. */
  ch.x25519_pub = bin(pub, KEY_LEN - 1);
  expect_rejected(&m);
  ch.x25519_pub = bin(pub, KEY_LEN);
  ch.nonce = bin(nonce, NONCE_LEN - 1);
  expect_rejected(&m);
  ch.nonce = bin(NULL, 0); /* missing */
  expect_rejected(&m);
  ch.nonce = bin(nonce, NONCE_LEN);
  ch.udp_port = 65536;
  expect_rejected(&m);
}

static void test_hs_server_hello(void **state) {
  (void)state;
  uint8_t pub[KEY_LEN], nonce[NONCE_LEN], id[SESSION_ID_LEN], mac[MAC_LEN];
  fill(pub, sizeof(pub), 3);
  fill(nonce, sizeof(nonce), 4);
  fill(id, sizeof(id), 5);
  fill(mac, sizeof(mac), 6);
  Tether__Wire__ServerHello sh = TETHER__WIRE__SERVER_HELLO__INIT;
  sh.x25519_pub = bin(pub, KEY_LEN);
  sh.nonce = bin(nonce, NONCE_LEN);
  sh.session_id = bin(id, SESSION_ID_LEN);
  sh.rcvbuf_max = 131072;
  sh.udp_port = 4433;
  sh.confirm = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO;
  m.server_hello = &sh;
  hs_msg *d = round_trip(&m);
  assert_true(bin_eq(&d->server_hello->x25519_pub, pub, KEY_LEN));
  assert_true(bin_eq(&d->server_hello->nonce, nonce, NONCE_LEN));
  assert_true(bin_eq(&d->server_hello->session_id, id, SESSION_ID_LEN));
  assert_true(bin_eq(&d->server_hello->confirm, mac, MAC_LEN));
  assert_int_equal(d->server_hello->rcvbuf_max, 131072);
  assert_int_equal(d->server_hello->udp_port, 4433);
  hs_free(d);
  sh.session_id = bin(id, SESSION_ID_LEN - 1);
  expect_rejected(&m);
  sh.session_id = bin(id, SESSION_ID_LEN);
  sh.confirm = bin(mac, MAC_LEN - 1);
  expect_rejected(&m);
  sh.confirm = bin(NULL, 0); /* no pre-shared key: the server proves nothing */
  d = round_trip(&m);
  assert_int_equal(d->server_hello->confirm.len, 0);
  hs_free(d);
  sh.confirm = bin(mac, MAC_LEN);
  sh.x25519_pub = bin(pub, 1);
  expect_rejected(&m);
  sh.x25519_pub = bin(pub, KEY_LEN);
  sh.udp_port = 70000;
  expect_rejected(&m);
}

static void test_hs_client_finish(void **state) {
  (void)state;
  uint8_t mac[MAC_LEN + 1];
  fill(mac, sizeof(mac), 7);
  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  cf.confirm = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m.client_finish = &cf;
  hs_msg *d = round_trip(&m);
  assert_true(bin_eq(&d->client_finish->confirm, mac, MAC_LEN));
  hs_free(d);
  cf.confirm = bin(mac, MAC_LEN + 1);
  expect_rejected(&m);
}

static void test_hs_resume_hello(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], nonce[NONCE_LEN];
  fill(id, sizeof(id), 8);
  fill(nonce, sizeof(nonce), 9);
  Tether__Wire__ResumeHello rh = TETHER__WIRE__RESUME_HELLO__INIT;
  rh.session_id = bin(id, SESSION_ID_LEN);
  rh.nonce = bin(nonce, NONCE_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO;
  m.resume_hello = &rh;
  hs_msg *d = round_trip(&m);
  assert_true(bin_eq(&d->resume_hello->session_id, id, SESSION_ID_LEN));
  assert_true(bin_eq(&d->resume_hello->nonce, nonce, NONCE_LEN));
  hs_free(d);
  rh.session_id = bin(id, 8);
  expect_rejected(&m);
  rh.session_id = bin(id, SESSION_ID_LEN);
  rh.nonce = bin(nonce, NONCE_LEN - 4);
  expect_rejected(&m);
}

static void test_hs_resume_challenge(void **state) {
  (void)state;
  uint8_t nonce[NONCE_LEN], mac[MAC_LEN];
  fill(nonce, sizeof(nonce), 10);
  fill(mac, sizeof(mac), 11);
  Tether__Wire__ResumeChallenge rc = TETHER__WIRE__RESUME_CHALLENGE__INIT;
  rc.nonce = bin(nonce, NONCE_LEN);
  rc.mac = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_CHALLENGE;
  m.resume_challenge = &rc;
  hs_msg *d = round_trip(&m);
  assert_true(bin_eq(&d->resume_challenge->nonce, nonce, NONCE_LEN));
  assert_true(bin_eq(&d->resume_challenge->mac, mac, MAC_LEN));
  hs_free(d);
  rc.mac = bin(mac, 16);
  expect_rejected(&m);
}

static void check_state(const Tether__Wire__ResumeState *pb, const struct core_resume_state *st) {
  struct core_resume_state back;
  assert_non_null(pb);
  hs_state_from_pb(pb, &back);
  assert_int_equal(back.delivered, st->delivered);
  assert_int_equal(back.sent, st->sent);
  assert_int_equal(back.retained_from, st->retained_from);
  assert_int_equal(back.write_closed, st->write_closed);
  assert_int_equal(back.read_closed, st->read_closed);
  assert_int_equal(back.rcvbuf_max, st->rcvbuf_max);
}

static void test_hs_resume_finish_accept(void **state) {
  (void)state;
  uint8_t mac[MAC_LEN];
  fill(mac, sizeof(mac), 12);
  /* 64-bit counters well beyond 2^32. */
  struct core_resume_state st = {.delivered = 5ull << 32 | 17,
                                 .sent = UINT64_MAX - 3,
                                 .retained_from = 1ull << 40,
                                 .write_closed = true,
                                 .read_closed = false,
                                 .rcvbuf_max = 6 << 20};
  Tether__Wire__ResumeState pb;
  hs_state_to_pb(&st, &pb);
  Tether__Wire__ResumeFinish rf = TETHER__WIRE__RESUME_FINISH__INIT;
  rf.state = &pb;
  rf.mac = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH;
  m.resume_finish = &rf;
  hs_msg *d = round_trip(&m);
  check_state(d->resume_finish->state, &st);
  assert_true(bin_eq(&d->resume_finish->mac, mac, MAC_LEN));
  hs_free(d);
  rf.mac = bin(mac, MAC_LEN - 1);
  expect_rejected(&m);
  rf.mac = bin(mac, MAC_LEN);
  rf.state = NULL;
  expect_rejected(&m);

  st.write_closed = false;
  st.read_closed = true;
  hs_state_to_pb(&st, &pb);
  Tether__Wire__ResumeAccept ra = TETHER__WIRE__RESUME_ACCEPT__INIT;
  ra.state = &pb;
  ra.mac = bin(mac, MAC_LEN);
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_ACCEPT;
  m.resume_accept = &ra;
  d = round_trip(&m);
  check_state(d->resume_accept->state, &st);
  assert_true(bin_eq(&d->resume_accept->mac, mac, MAC_LEN));
  hs_free(d);
  ra.state = NULL;
  expect_rejected(&m);
  ra.state = &pb;
  ra.mac = bin(NULL, 0);
  expect_rejected(&m);
}

static void test_hs_reject(void **state) {
  (void)state;
  Tether__Wire__Reject rj = TETHER__WIRE__REJECT__INIT;
  rj.code = TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION;
  rj.reason = (char *)"unknown session";
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_REJECT;
  m.reject = &rj;
  hs_msg *d = round_trip(&m);
  assert_int_equal(d->reject->code, TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION);
  assert_string_equal(d->reject->reason, "unknown session");
  assert_int_equal(d->reject->mac.len, 0);
  hs_free(d);
  /* With a MAC (a server's Reject of a resume). */
  uint8_t mac[MAC_LEN];
  fill(mac, sizeof(mac), 7);
  rj.mac = (ProtobufCBinaryData){MAC_LEN, mac};
  d = round_trip(&m);
  assert_int_equal(d->reject->mac.len, MAC_LEN);
  assert_memory_equal(d->reject->mac.data, mac, MAC_LEN);
  hs_free(d);
}

static void test_hs_encode_preface_and_limits(void **state) {
  (void)state;
  uint8_t mac[MAC_LEN];
  fill(mac, sizeof(mac), 13);
  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  cf.confirm = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m.client_finish = &cf;
  uint8_t out[128];
  ssize_t n = hs_encode(&m, true, out, sizeof(out));
  assert_true(n > HS_PREFACE_LEN + 4);
  assert_memory_equal(out, "TTHR\x01", HS_PREFACE_LEN);
  assert_int_equal(hs_check_preface(out), 0);
  /* Too small an output buffer. */
  assert_int_equal(hs_encode(&m, true, out, (size_t)n - 1), -EMSGSIZE);
  assert_int_equal(hs_encode(&m, true, out, (size_t)n), n);
  /* A message above HS_FRAME_MAX is refused by the encoder. */
  static char big[HS_FRAME_MAX + 1];
  memset(big, 'x', sizeof(big) - 1);
  Tether__Wire__Reject rj = TETHER__WIRE__REJECT__INIT;
  rj.reason = big;
  hs_msg mb = TETHER__WIRE__HANDSHAKE__INIT;
  mb.msg_case = TETHER__WIRE__HANDSHAKE__MSG_REJECT;
  mb.reject = &rj;
  static uint8_t huge[2 * HS_FRAME_MAX];
  assert_int_equal(hs_encode(&mb, false, huge, sizeof(huge)), -EMSGSIZE);
  /* An empty oneof packs to nothing: refused too. */
  hs_msg empty = TETHER__WIRE__HANDSHAKE__INIT;
  assert_int_equal(hs_encode(&empty, false, out, sizeof(out)), -EMSGSIZE);
}

static void test_hs_decode_rejects(void **state) {
  (void)state;
  const char *why = NULL;
  uint8_t body[HS_FRAME_MAX + 1];
  memset(body, 0, sizeof(body));
  /* Empty. */
  assert_null(hs_decode(body, 0, &why));
  assert_non_null(why);
  /* Oversized (checked before any parsing). */
  why = NULL;
  assert_null(hs_decode(body, HS_FRAME_MAX + 1, &why));
  assert_non_null(why);
  /* Unknown oneof member: field 15, length-delimited, empty. */
  uint8_t unk[] = {15 << 3 | 2, 0};
  why = NULL;
  assert_null(hs_decode(unk, sizeof(unk), &why));
  assert_non_null(why);
  /* Garbage. */
  uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  why = NULL;
  assert_null(hs_decode(junk, sizeof(junk), &why));
  assert_non_null(why);
  /* Truncated at every length. */
  uint8_t pub[KEY_LEN], nonce[NONCE_LEN];
  fill(pub, sizeof(pub), 1);
  fill(nonce, sizeof(nonce), 2);
  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  ch.x25519_pub = bin(pub, KEY_LEN);
  ch.nonce = bin(nonce, NONCE_LEN);
  ch.rcvbuf_max = 1000;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  uint8_t out[256];
  ssize_t n = hs_encode(&m, false, out, sizeof(out));
  assert_true(n > 4);
  for (size_t len = 1; len < (size_t)n - 4; len++) {
    hs_msg *d = hs_decode(out + 4, len, &why);
    if (d) {
      hs_free(d);
      fail_msg("truncated frame of %zu/%zu bytes accepted", len, (size_t)n - 4);
    }
  }
}

/* ---- hs_reader over a real socket ----------------------------------------- */

static size_t client_finish_frame(uint8_t *out, size_t cap, bool preface) {
  uint8_t mac[MAC_LEN];
  fill(mac, sizeof(mac), 14);
  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  cf.confirm = bin(mac, MAC_LEN);
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m.client_finish = &cf;
  ssize_t n = hs_encode(&m, preface, out, cap);
  assert_true(n > 0);
  return (size_t)n;
}

static void test_hs_reader_exact(void **state) {
  (void)state;
  for (int preface = 0; preface < 2; preface++) {
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uint8_t buf[256];
    size_t n = client_finish_frame(buf, sizeof(buf), preface);
    memcpy(buf + n, "APPDATA", 7);
    assert_int_equal(send(sv[0], buf, n + 7, 0), (ssize_t)(n + 7));
    struct hs_reader r;
    hs_reader_init(&r, preface);
    const char *why = NULL;
    assert_int_equal(hs_reader_step(&r, sv[1], &why), 1);
    assert_int_equal(r.have, n - 4 - (preface ? HS_PREFACE_LEN : 0));
    hs_msg *d = hs_decode(r.buf, r.have, &why);
    assert_non_null(d);
    assert_int_equal(d->msg_case, TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH);
    hs_free(d);
    /* The application bytes after the frame are still in the socket. */
    uint8_t rest[32];
    ssize_t got = recv(sv[1], rest, sizeof(rest), MSG_DONTWAIT);
    assert_int_equal(got, 7);
    assert_memory_equal(rest, "APPDATA", 7);
    close(sv[0]);
    close(sv[1]);
  }
}

static void test_hs_reader_byte_by_byte(void **state) {
  (void)state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  uint8_t buf[256];
  size_t n = client_finish_frame(buf, sizeof(buf), true);
  struct hs_reader r;
  hs_reader_init(&r, true);
  const char *why = NULL;
  assert_int_equal(hs_reader_step(&r, sv[1], &why), 0); /* nothing yet */
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(send(sv[0], buf + i, 1, 0), 1);
    int rc = hs_reader_step(&r, sv[1], &why);
    assert_int_equal(rc, i + 1 == n ? 1 : 0);
  }
  /* A second frame, with no preface, on the same reader after re-init. */
  size_t m = client_finish_frame(buf, sizeof(buf), false);
  assert_int_equal(send(sv[0], buf, m, 0), (ssize_t)m);
  hs_reader_init(&r, false);
  assert_int_equal(hs_reader_step(&r, sv[1], &why), 1);
  close(sv[0]);
  close(sv[1]);
}

static int reader_on(const uint8_t *bytes, size_t n, bool preface, bool close_after,
                     const char **why) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  if (n)
    assert_int_equal(send(sv[0], bytes, n, 0), (ssize_t)n);
  if (close_after)
    close(sv[0]);
  struct hs_reader r;
  hs_reader_init(&r, preface);
  *why = NULL;
  int rc = hs_reader_step(&r, sv[1], why);
  if (!close_after)
    close(sv[0]);
  close(sv[1]);
  return rc;
}

static void test_hs_reader_errors(void **state) {
  (void)state;
  const char *why;
  /* Bad magic, unknown version. */
  assert_int_equal(reader_on((const uint8_t *)"HTTP/", 5, true, false, &why), -EPROTO);
  assert_non_null(why);
  assert_int_equal(reader_on((const uint8_t *)"TTHR\x02", 5, true, false, &why), TETHER_EVERSION);
  assert_non_null(why);
  /* Frame lengths 0 and HS_FRAME_MAX + 1. */
  assert_int_equal(reader_on((const uint8_t *)"\0\0\0\0", 4, false, false, &why), -EMSGSIZE);
  uint8_t big[4] = {0, 0, (HS_FRAME_MAX + 1) >> 8, (HS_FRAME_MAX + 1) & 0xff};
  assert_int_equal(reader_on(big, 4, false, false, &why), -EMSGSIZE);
  uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(reader_on(huge, 4, false, false, &why), -EMSGSIZE);
  /* Largest legal frame length: waits for the body. */
  uint8_t max[4] = {0, 0, HS_FRAME_MAX >> 8, HS_FRAME_MAX & 0xff};
  assert_int_equal(reader_on(max, 4, false, false, &why), 0);
  /* EOF in the middle of a frame. */
  uint8_t part[] = {0, 0, 0, 10, 1, 2, 3};
  assert_int_equal(reader_on(part, sizeof(part), false, true, &why), -ECONNRESET);
  assert_int_equal(reader_on(NULL, 0, true, true, &why), -ECONNRESET);
}

static void test_preface(void **state) {
  (void)state;
  assert_int_equal(hs_check_preface((const uint8_t *)"TTHR\x01"), 0);
  assert_int_equal(hs_check_preface((const uint8_t *)"TTHX\x01"), -EPROTO);
  assert_int_equal(hs_check_preface((const uint8_t *)"tthr\x01"), -EPROTO);
  assert_int_equal(hs_check_preface((const uint8_t *)"TTHR\x02"), TETHER_EVERSION);
  assert_int_equal(hs_check_preface((const uint8_t *)"TTHR\x00"), TETHER_EVERSION);
  /* A wrong magic is "not tether" whatever the version byte says. */
  assert_int_equal(hs_check_preface((const uint8_t *)"XTHR\x02"), -EPROTO);
}

/* ---- side-channel datagrams ----------------------------------------------- */

static struct core_ctl sample_ctl(void) {
  struct core_ctl c = {
      .seq = 123456789012ull,
      .delivered = 5ull << 32,
      .sent = (5ull << 32) + 99,
      .write_closed = true,
      .read_closed = false,
      .ack_write_closed = true,
      .ack_read_closed = false,
      .want_reply = true,
      .rcvbuf_max = 6 << 20,
      .durable_sent = 7ull << 32,
      .durable_delivered = (7ull << 32) + 1,
      .durable_finished = true,
      .failed = 10004,
  };
  return c;
}

static void ctl_equal(const struct core_ctl *a, const struct core_ctl *b) {
  assert_int_equal(a->seq, b->seq);
  assert_int_equal(a->delivered, b->delivered);
  assert_int_equal(a->sent, b->sent);
  assert_int_equal(a->write_closed, b->write_closed);
  assert_int_equal(a->read_closed, b->read_closed);
  assert_int_equal(a->ack_write_closed, b->ack_write_closed);
  assert_int_equal(a->ack_read_closed, b->ack_read_closed);
  assert_int_equal(a->want_reply, b->want_reply);
  assert_int_equal(a->rcvbuf_max, b->rcvbuf_max);
  assert_int_equal(a->durable_sent, b->durable_sent);
  assert_int_equal(a->durable_delivered, b->durable_delivered);
  assert_int_equal(a->durable_finished, b->durable_finished);
  assert_int_equal(a->failed, b->failed);
  assert_int_equal(a->suspended, b->suspended);
  assert_int_equal(a->solo, b->solo);
}

static void test_ctl_round_trip(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], key[KEY_LEN], dg[CTL_MAX];
  fill(id, sizeof(id), 20);
  fill(key, sizeof(key), 21);
  struct core_ctl in = sample_ctl(), out;
  ssize_t n = ctl_seal(id, &in, key, dg, sizeof(dg));
  assert_true(n > CTL_HDR_LEN + MAC_LEN);
  assert_true(n <= CTL_MAX);
  assert_memory_equal(dg, CTL_MAGIC, 4);
  const uint8_t *pid;
  assert_int_equal(ctl_peek(dg, (size_t)n, &pid), 0);
  assert_memory_equal(pid, id, SESSION_ID_LEN);
  memset(&out, 0xAA, sizeof(out));
  assert_int_equal(ctl_open(dg, (size_t)n, key, &out), 0);
  ctl_equal(&in, &out);
  /* Every flag combination round-trips. */
  for (unsigned f = 0; f < 64; f++) {
    in.write_closed = f & 1;
    in.read_closed = f & 2;
    in.ack_write_closed = f & 4;
    in.ack_read_closed = f & 8;
    in.want_reply = f & 16;
    in.durable_finished = f & 32;
    in.solo = f & 1;
    in.seq = f + 1;
    n = ctl_seal(id, &in, key, dg, sizeof(dg));
    assert_true(n > 0);
    assert_int_equal(ctl_open(dg, (size_t)n, key, &out), 0);
    ctl_equal(&in, &out);
  }
  /* Output buffer too small. */
  assert_int_equal(ctl_seal(id, &in, key, dg, CTL_HDR_LEN + MAC_LEN), -EMSGSIZE);
}

static void test_ctl_wrong_key(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], key[KEY_LEN], other[KEY_LEN], dg[CTL_MAX];
  fill(id, sizeof(id), 20);
  fill(key, sizeof(key), 21);
  memcpy(other, key, KEY_LEN);
  other[KEY_LEN - 1] ^= 1;
  struct core_ctl in = sample_ctl(), out;
  ssize_t n = ctl_seal(id, &in, key, dg, sizeof(dg));
  assert_true(n > 0);
  assert_int_equal(ctl_open(dg, (size_t)n, other, &out), -EBADMSG);
}

static void test_ctl_tamper(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], key[KEY_LEN], dg[CTL_MAX];
  fill(id, sizeof(id), 20);
  fill(key, sizeof(key), 21);
  struct core_ctl in = sample_ctl(), out;
  ssize_t n = ctl_seal(id, &in, key, dg, sizeof(dg));
  assert_true(n > 0);
  /* Any single flipped bit, anywhere, is rejected. */
  for (size_t bit = 0; bit < (size_t)n * 8; bit++) {
    dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    int rc = ctl_open(dg, (size_t)n, key, &out);
    if (rc == 0)
      fail_msg("datagram with bit %zu flipped accepted", bit);
    assert_true(rc == -EBADMSG || rc == -EPROTO);
    dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  assert_int_equal(ctl_open(dg, (size_t)n, key, &out), 0);
  /* Truncated: below header + MAC it is not a datagram at all ... */
  for (size_t len = 0; len < CTL_HDR_LEN + MAC_LEN; len++)
    assert_int_equal(ctl_open(dg, len, key, &out), -EPROTO);
  /* ... and any other truncation fails authentication. */
  for (size_t len = CTL_HDR_LEN + MAC_LEN; len < (size_t)n; len++)
    assert_int_equal(ctl_open(dg, len, key, &out), -EBADMSG);
  /* Trailing bytes, too. */
  dg[n] = 0;
  assert_int_equal(ctl_open(dg, (size_t)n + 1, key, &out), -EBADMSG);
  /* Oversized. */
  static uint8_t big[CTL_MAX + 1];
  memcpy(big, dg, (size_t)n);
  assert_int_equal(ctl_open(big, sizeof(big), key, &out), -EPROTO);
}

static void test_ctl_seq_zero(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], key[KEY_LEN], dg[CTL_MAX];
  fill(id, sizeof(id), 20);
  fill(key, sizeof(key), 21);
  struct core_ctl in = sample_ctl(), out;
  in.seq = 0; /* never sent: refused even when authentic */
  ssize_t n = ctl_seal(id, &in, key, dg, sizeof(dg));
  assert_true(n > 0);
  assert_int_equal(ctl_open(dg, (size_t)n, key, &out), -EPROTO);
  /* An authentic but undecodable body. */
  uint8_t junk[] = {0xff, 0xff, 0xff};
  assert_int_equal(ctl_decode_body(junk, sizeof(junk), &out), -EPROTO);
}

/* Path heartbeats ride on a control datagram: every bucket count round-trips
 * with its digests; a plain datagram reads as none. */
static void test_ctl_path(void **state) {
  (void)state;
  uint8_t id[SESSION_ID_LEN], key[KEY_LEN], dg[CTL_MAX];
  fill(id, sizeof(id), 20);
  fill(key, sizeof(key), 21);
  struct core_ctl in = sample_ctl(), out;
  static struct ctl_path beat, back;
  for (uint32_t b = 1; b <= CTL_PATH_BUCKETS_MAX; b *= 2) {
    beat.buckets = b;
    for (uint32_t i = 0; i < b; i++)
      beat.digest[i] = 0x9e3779b9u * (i + 1) ^ b;
    ssize_t n = ctl_seal_path(id, &in, &beat, key, dg, sizeof(dg));
    assert_true(n > 0 && n <= CTL_MAX);
    memset(&back, 0xAA, sizeof(back));
    assert_int_equal(ctl_open_path(dg, (size_t)n, key, &out, &back), 0);
    ctl_equal(&in, &out);
    assert_int_equal(back.buckets, b);
    assert_memory_equal(back.digest, beat.digest, b * sizeof(beat.digest[0]));
    /* Readers that do not want the path still get the control part. */
    assert_int_equal(ctl_open(dg, (size_t)n, key, &out), 0);
    ctl_equal(&in, &out);
  }
  ssize_t n = ctl_seal(id, &in, key, dg, sizeof(dg));
  assert_int_equal(ctl_open_path(dg, (size_t)n, key, &out, &back), 0);
  assert_int_equal(back.buckets, 0);
  /* Bucket counts that are not a power of two up to the maximum. */
  beat.buckets = 3;
  assert_int_equal(ctl_seal_path(id, &in, &beat, key, dg, sizeof(dg)), -EINVAL);
  beat.buckets = CTL_PATH_BUCKETS_MAX * 2;
  assert_int_equal(ctl_seal_path(id, &in, &beat, key, dg, sizeof(dg)), -EINVAL);
}

/* A body whose path heartbeat is malformed is refused whole. */
static void test_ctl_path_malformed(void **state) {
  (void)state;
  struct core_ctl out;
  /* Control{seq 1, path (field 16) {buckets, digests of `len` bytes}}. */
  struct {
    uint8_t buckets, len;
  } bad[] = {{0, 0}, {3, 12}, {4, 12}, {4, 20}, {255, 4}};
  for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
    uint8_t body[64] = {0x08, 0x01, 0x82, 0x01, 0, 0x08, bad[k].buckets, 0x12, bad[k].len};
    size_t len = 9 + bad[k].len;
    body[4] = (uint8_t)(4 + bad[k].len);
    assert_int_equal(ctl_decode_body(body, len, &out), -EPROTO);
  }
  uint8_t good[64] = {0x08, 0x01, 0x82, 0x01, 8, 0x08, 1, 0x12, 4, 1, 2, 3, 4};
  assert_int_equal(ctl_decode_body(good, 13, &out), 0);
}

/* ---- crypto --------------------------------------------------------------- */

static void test_x25519(void **state) {
  (void)state;
  uint8_t s1[KEY_LEN], s2[KEY_LEN];
  struct x25519_key *a = x25519_new(), *b = x25519_new();
  assert_non_null(a);
  assert_non_null(b);
  assert_memory_not_equal(x25519_pub(a), x25519_pub(b), KEY_LEN);
  assert_int_equal(x25519_shared(a, x25519_pub(b), s1), 0);
  assert_int_equal(x25519_shared(b, x25519_pub(a), s2), 0);
  assert_memory_equal(s1, s2, KEY_LEN);
  /* Low-order points give an all-zero secret: refused. */
  uint8_t zero[KEY_LEN] = {0};
  assert_int_equal(x25519_shared(a, zero, s1), -EPROTO);
  uint8_t one[KEY_LEN] = {1};
  assert_int_equal(x25519_shared(a, one, s1), -EPROTO);
  /* A refused key is not remembered as agreed. */
  assert_int_equal(x25519_shared(a, zero, s1), -EPROTO);
  x25519_free(a);
  x25519_free(b);
}

/* Remembered agreements give the same secrets as fresh ones, also after
 * more peers than the memo holds pushed the first one out. */
static void test_x25519_memo(void **state) {
  (void)state;
  enum { PEERS = 7 };
  struct x25519_key *a = x25519_new(), *peer[PEERS];
  uint8_t first[PEERS][KEY_LEN], again[KEY_LEN], theirs[KEY_LEN];
  assert_non_null(a);
  for (int i = 0; i < PEERS; i++) {
    assert_non_null(peer[i] = x25519_new());
    assert_int_equal(x25519_shared(a, x25519_pub(peer[i]), first[i]), 0);
  }
  for (int round = 0; round < 2; round++)
    for (int i = PEERS - 1; i >= 0; i--) {
      assert_int_equal(x25519_shared(a, x25519_pub(peer[i]), again), 0);
      assert_memory_equal(again, first[i], KEY_LEN);
      assert_int_equal(x25519_shared(peer[i], x25519_pub(a), theirs), 0);
      assert_memory_equal(theirs, first[i], KEY_LEN);
    }
  for (int i = 0; i < PEERS; i++) {
    if (i > 0)
      assert_memory_not_equal(first[i], first[0], KEY_LEN);
    x25519_free(peer[i]);
  }
  x25519_free(a);
}

static void test_keys_derive(void **state) {
  (void)state;
  uint8_t shared[KEY_LEN], th[32], th2[32];
  fill(shared, sizeof(shared), 30);
  fill(th, sizeof(th), 31);
  memcpy(th2, th, sizeof(th));
  th2[0] ^= 1;
  struct session_keys k1, k2, k3, k4, k5;
  const uint8_t psk[] = "correct horse battery staple";
  const uint8_t psk2[] = "correct horse battery stapler";
  assert_int_equal(keys_derive(shared, psk, sizeof(psk) - 1, th, &k1), 0);
  assert_int_equal(keys_derive(shared, psk, sizeof(psk) - 1, th, &k2), 0);
  assert_memory_equal(&k1, &k2, sizeof(k1)); /* deterministic */
  assert_int_equal(keys_derive(shared, psk2, sizeof(psk2) - 1, th, &k3), 0);
  assert_memory_not_equal(k1.ctl_c2s, k3.ctl_c2s, KEY_LEN);
  assert_memory_not_equal(k1.resume_s, k3.resume_s, KEY_LEN);
  assert_int_equal(keys_derive(shared, NULL, 0, th, &k4), 0);
  assert_memory_not_equal(k1.confirm_c, k4.confirm_c, KEY_LEN);
  assert_int_equal(keys_derive(shared, psk, sizeof(psk) - 1, th2, &k5), 0);
  assert_memory_not_equal(k1.ctl_s2c, k5.ctl_s2c, KEY_LEN);
  /* The six keys differ from each other. */
  const uint8_t *ks[] = {k1.ctl_c2s, k1.ctl_s2c, k1.resume_c, k1.resume_s, k1.confirm_c, k1.confirm_s};
  for (int i = 0; i < 6; i++)
    for (int j = i + 1; j < 6; j++)
      assert_memory_not_equal(ks[i], ks[j], KEY_LEN);
  /* Overlong PSK. */
  uint8_t longpsk[PSK_MAX + 1] = {0};
  assert_int_equal(keys_derive(shared, longpsk, sizeof(longpsk), th, &k5), -EINVAL);
  assert_int_equal(keys_derive(shared, longpsk, PSK_MAX, th, &k5), 0);
}

static void test_resume_mac(void **state) {
  (void)state;
  uint8_t key[KEY_LEN], id[SESSION_ID_LEN], nc[NONCE_LEN], ns[NONCE_LEN];
  uint8_t m1[MAC_LEN], m2[MAC_LEN], m3[MAC_LEN];
  fill(key, sizeof(key), 40);
  fill(id, sizeof(id), 41);
  fill(nc, sizeof(nc), 42);
  fill(ns, sizeof(ns), 43);
  struct core_resume_state st = {.delivered = 10, .sent = 20, .retained_from = 5};
  assert_int_equal(hs_resume_mac(key, "finish", id, nc, ns, &st, m1), 0);
  assert_int_equal(hs_resume_mac(key, "finish", id, nc, ns, &st, m2), 0);
  assert_true(mac_equal(m1, m2));
  assert_int_equal(hs_resume_mac(key, "accept", id, nc, ns, &st, m3), 0);
  assert_false(mac_equal(m1, m3));
  /* Every state field is covered. */
  struct core_resume_state v[6];
  for (int i = 0; i < 6; i++)
    v[i] = st;
  v[0].delivered++;
  v[1].sent++;
  v[2].retained_from++;
  v[3].write_closed = true;
  v[4].read_closed = true;
  v[5].rcvbuf_max = 1;
  for (int i = 0; i < 6; i++) {
    assert_int_equal(hs_resume_mac(key, "finish", id, nc, ns, &v[i], m3), 0);
    if (mac_equal(m1, m3))
      fail_msg("resume state field %d not covered by the MAC", i);
  }
  /* The nonces too, and their order. */
  assert_int_equal(hs_resume_mac(key, "finish", id, ns, nc, &st, m3), 0);
  assert_false(mac_equal(m1, m3));
  /* The challenge MAC carries no state. */
  assert_int_equal(hs_resume_mac(key, "challenge", id, nc, ns, NULL, m3), 0);
}

static void test_reject_mac(void **state) {
  (void)state;
  uint8_t key[KEY_LEN], id[SESSION_ID_LEN], nc[NONCE_LEN], ns[NONCE_LEN];
  uint8_t m1[MAC_LEN], m2[MAC_LEN];
  fill(key, sizeof(key), 50);
  fill(id, sizeof(id), 51);
  fill(nc, sizeof(nc), 52);
  fill(ns, sizeof(ns), 53);
  assert_int_equal(hs_reject_mac(key, 3, id, nc, ns, m1), 0);
  assert_int_equal(hs_reject_mac(key, 3, id, nc, ns, m2), 0);
  assert_true(mac_equal(m1, m2));
  /* The code is covered: a MACed Reject{AUTH} is no Reject{UNKNOWN_SESSION}. */
  assert_int_equal(hs_reject_mac(key, 4, id, nc, ns, m2), 0);
  assert_false(mac_equal(m1, m2));
  /* So are the client's nonce (no replay to a later attempt) and the id. */
  nc[0] ^= 1;
  assert_int_equal(hs_reject_mac(key, 3, id, nc, ns, m2), 0);
  assert_false(mac_equal(m1, m2));
  nc[0] ^= 1;
  id[0] ^= 1;
  assert_int_equal(hs_reject_mac(key, 3, id, nc, ns, m2), 0);
  assert_false(mac_equal(m1, m2));
  id[0] ^= 1;
  /* A resume MAC under the same key never doubles as a Reject's. */
  assert_int_equal(hs_resume_mac(key, "reject", id, nc, ns, NULL, m2), 0);
  assert_false(mac_equal(m1, m2));
  /* The pre-shared key's reject key depends on every byte of the key. */
  uint8_t k1[KEY_LEN], k2[KEY_LEN];
  assert_int_equal(hs_psk_reject_key((const uint8_t *)"secret-a", 8, k1), 0);
  assert_int_equal(hs_psk_reject_key((const uint8_t *)"secret-b", 8, k2), 0);
  assert_memory_not_equal(k1, k2, KEY_LEN);
  assert_int_equal(hs_psk_reject_key((const uint8_t *)"secret-a", 8, k2), 0);
  assert_memory_equal(k1, k2, KEY_LEN);
}

static void test_transcript_hash(void **state) {
  (void)state;
  struct hs_transcript t;
  memset(&t, 0, sizeof(t));
  fill(t.client_pub, KEY_LEN, 50);
  fill(t.server_pub, KEY_LEN, 51);
  t.client_rcvbuf = 1000;
  t.server_rcvbuf = 2000;
  t.client_udp = 1;
  t.server_udp = 2;
  uint8_t h1[32], h2[32];
  assert_int_equal(hs_transcript_hash(&t, h1), 0);
  assert_int_equal(hs_transcript_hash(&t, h2), 0);
  assert_memory_equal(h1, h2, 32);
  /* Swapping the two UDP ports changes the hash. */
  t.client_udp = 2;
  t.server_udp = 1;
  assert_int_equal(hs_transcript_hash(&t, h2), 0);
  assert_memory_not_equal(h1, h2, 32);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hs_client_hello),
      cmocka_unit_test(test_hs_server_hello),
      cmocka_unit_test(test_hs_client_finish),
      cmocka_unit_test(test_hs_resume_hello),
      cmocka_unit_test(test_hs_resume_challenge),
      cmocka_unit_test(test_hs_resume_finish_accept),
      cmocka_unit_test(test_hs_reject),
      cmocka_unit_test(test_reject_mac),
      cmocka_unit_test(test_hs_encode_preface_and_limits),
      cmocka_unit_test(test_hs_decode_rejects),
      cmocka_unit_test(test_hs_reader_exact),
      cmocka_unit_test(test_hs_reader_byte_by_byte),
      cmocka_unit_test(test_hs_reader_errors),
      cmocka_unit_test(test_preface),
      cmocka_unit_test(test_ctl_round_trip),
      cmocka_unit_test(test_ctl_wrong_key),
      cmocka_unit_test(test_ctl_tamper),
      cmocka_unit_test(test_ctl_seq_zero),
      cmocka_unit_test(test_ctl_path),
      cmocka_unit_test(test_ctl_path_malformed),
      cmocka_unit_test(test_x25519),
      cmocka_unit_test(test_x25519_memo),
      cmocka_unit_test(test_keys_derive),
      cmocka_unit_test(test_resume_mac),
      cmocka_unit_test(test_transcript_hash),
  };
  return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
