/* A tether client driven by hand through the library's wire layer
 * (internal objects): real loopback sockets, real X25519/HKDF/HMAC, and
 * every step under the test's control -- stop after the ClientHello, never
 * send the ClientFinish, send it late or spoiled, open thousands at once
 * from chosen source addresses.  Failures are cmocka assertions. */
#ifndef TETHER_TESTS_HAND_H
#define TETHER_TESTS_HAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/crypto.h"
#include "wire/handshake.h"

struct hand {
  int fd;
  struct x25519_key *key;
  struct hs_transcript t;
  struct session_keys keys;
  uint8_t th[32];
  struct hs_reader rd; /* the ServerHello, read as it comes (hand_poll_server_hello) */
};

/* A TCP connection to 127.0.0.1:port from src (a loopback address; NULL:
 * any), blocking; TCP_NODELAY. */
int hand_dial(int port, const char *src);
void hand_send_all(int fd, const void *p, size_t n);
/* Connects from src and sends a ClientHello (no side channel). */
void hand_hello_from(struct hand *c, int port, const char *src);
/* The same, declaring rcvbuf_max as this side's receive buffer. */
void hand_hello_rcvbuf(struct hand *c, int port, const char *src, uint64_t rcvbuf_max);
/* Reads the ServerHello (blocking, 5 s at most) and derives the keys; with
 * psk, checks the server's confirm. */
void hand_server_hello(struct hand *c, const char *psk);
/* Non-blocking: 1 once the ServerHello is in and the keys are derived, 0
 * while it is still on its way, -1 if the server closed the connection
 * first (or sent anything else). */
int hand_poll_server_hello(struct hand *c, const char *psk);
/* The ClientFinish frame, its MAC spoiled if asked. */
size_t hand_finish_frame(struct hand *c, bool spoil, uint8_t *out, size_t cap);
void hand_free(struct hand *c);
/* Whether the server closed fd within ms (EOF or reset); reads (and drops)
 * whatever comes before. */
bool hand_closed_within(int fd, int ms);
uint64_t hand_now_ms(void);

#endif
