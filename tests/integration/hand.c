/* See hand.h. */
#include "hand.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

uint64_t hand_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void hand_send_all(int fd, const void *p, size_t n) {
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
  hand_send_all(fd, out, (size_t)n);
}

int hand_dial(int port, const char *src) {
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

void hand_hello_from(struct hand *c, int port, const char *src) {
  hand_hello_rcvbuf(c, port, src, 65536);
}

void hand_hello_rcvbuf(struct hand *c, int port, const char *src, uint64_t rcvbuf_max) {
  memset(c, 0, sizeof(*c));
  c->fd = hand_dial(port, src);
  assert_non_null(c->key = x25519_new());
  memcpy(c->t.client_pub, x25519_pub(c->key), KEY_LEN);
  assert_int_equal(crypto_random(c->t.client_nonce, NONCE_LEN), 0);
  c->t.client_rcvbuf = rcvbuf_max;
  hs_reader_init(&c->rd, true);

  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  ch.x25519_pub = (ProtobufCBinaryData){KEY_LEN, c->t.client_pub};
  ch.nonce = (ProtobufCBinaryData){NONCE_LEN, c->t.client_nonce};
  ch.rcvbuf_max = c->t.client_rcvbuf;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  send_frame(c->fd, &m, true);
}

/* The ServerHello in c->rd: keys derived, the server's confirm checked. */
static int take_server_hello(struct hand *c, const char *psk) {
  const char *why = NULL;
  hs_msg *m = hs_decode(c->rd.buf, c->rd.have, &why);
  if (!m || m->msg_case != TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO) {
    hs_free(m);
    return -1;
  }
  const Tether__Wire__ServerHello *sh = m->server_hello;
  assert_int_equal(sh->confirm.len, psk ? MAC_LEN : 0);
  memcpy(c->t.server_pub, sh->x25519_pub.data, KEY_LEN);
  memcpy(c->t.server_nonce, sh->nonce.data, NONCE_LEN);
  memcpy(c->t.session_id, sh->session_id.data, SESSION_ID_LEN);
  c->t.server_rcvbuf = sh->rcvbuf_max;
  c->t.server_udp = sh->udp_port;
  c->t.server_flags = sh->flags;
  uint8_t shared[KEY_LEN];
  assert_int_equal(x25519_shared(c->key, c->t.server_pub, shared), 0);
  assert_int_equal(hs_transcript_hash(&c->t, c->th), 0);
  assert_int_equal(keys_derive(shared, (const uint8_t *)psk, psk ? strlen(psk) : 0, c->th,
                               &c->keys),
                   0);
  if (psk) {
    uint8_t mac[MAC_LEN];
    struct buf_part p = {c->th, sizeof(c->th)};
    assert_int_equal(hmac_parts(c->keys.confirm_s, &p, 1, mac), 0);
    assert_memory_equal(mac, sh->confirm.data, MAC_LEN);
  }
  hs_free(m);
  return 1;
}

int hand_poll_server_hello(struct hand *c, const char *psk) {
  const char *why = NULL;
  int rc = hs_reader_step(&c->rd, c->fd, &why);
  if (rc == 0)
    return 0;
  if (rc < 0)
    return -1;
  return take_server_hello(c, psk);
}

void hand_server_hello(struct hand *c, const char *psk) {
  int rc;
  while ((rc = hand_poll_server_hello(c, psk)) == 0) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);
  }
  assert_int_equal(rc, 1);
}

size_t hand_finish_frame(struct hand *c, bool spoil, uint8_t *out, size_t cap) {
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

void hand_free(struct hand *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  x25519_free(c->key);
  c->key = NULL;
}

bool hand_closed_within(int fd, int ms) {
  uint64_t end = hand_now_ms() + (uint64_t)ms;
  for (;;) {
    uint64_t now = hand_now_ms();
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, now >= end ? 0 : (int)(end - now)) != 1)
      return false;
    char b[512]; /* a Reject, say: read past it */
    ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      return true;
  }
}
