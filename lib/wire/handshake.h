/* The TCP handshake: preface ("TTHR" + version), length-prefixed protobuf
 * frames, their validation, and the MACs/transcript that bind them.  Every
 * decoder bounds its input: a frame body is at most HS_FRAME_MAX bytes and
 * every field is checked before use. */
#ifndef TETHER_WIRE_HANDSHAKE_H
#define TETHER_WIRE_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/session.h"
#include "crypto.h"
#include "tether.pb-c.h"

#define HS_MAGIC "TTHR"
#define HS_VERSION 1
#define HS_PREFACE_LEN 5
#define HS_FRAME_MAX 4096

typedef Tether__Wire__Handshake hs_msg;

/* Hello flags. */
#define HELLO_DURABLE 1u /* this side may restart from snapshots */
#define HELLO_KNOWN HELLO_DURABLE

/* Writes [preface] + 4-byte length + packed message into out.  Returns the
 * length, or -EMSGSIZE. */
ssize_t hs_encode(const hs_msg *m, bool preface, uint8_t *out, size_t cap);
/* Decodes and validates one frame body.  NULL if malformed; *why says how. */
hs_msg *hs_decode(const uint8_t *body, size_t len, const char **why);
void hs_free(hs_msg *m);

/* Checks a received preface: 0, -EPROTO (not tether) or TETHER_EVERSION. */
int hs_check_preface(const uint8_t p[HS_PREFACE_LEN]);

/* Reads one frame (optionally preceded by the preface) from a non-blocking
 * socket without ever consuming a byte past its end: application bytes may
 * follow the last frame directly. */
struct hs_reader {
  uint8_t buf[HS_FRAME_MAX];
  size_t have;
  size_t need;
  int phase; /* 0 preface, 1 length, 2 body */
};
void hs_reader_init(struct hs_reader *r, bool expect_preface);
/* 1: a frame is complete (body = buf, length = have); 0: would block;
 * negative: -ECONNRESET on EOF, -EPROTO/TETHER_EVERSION/-EMSGSIZE on bad
 * input (*why set), or -errno. */
int hs_reader_step(struct hs_reader *r, int fd, const char **why);

/* What both sides sign for a new session. */
struct hs_transcript {
  uint8_t client_pub[KEY_LEN], client_nonce[NONCE_LEN];
  uint8_t server_pub[KEY_LEN], server_nonce[NONCE_LEN];
  uint8_t session_id[SESSION_ID_LEN];
  uint64_t client_rcvbuf, server_rcvbuf;
  uint32_t client_udp, server_udp;
  uint32_t client_flags, server_flags; /* HELLO_* */
};
int hs_transcript_hash(const struct hs_transcript *t, uint8_t th[32])
    __attribute__((warn_unused_result));

/* MAC of a resume step: label || id || nonce_c || nonce_s [|| state]. */
int hs_resume_mac(const uint8_t key[KEY_LEN], const char *label,
                  const uint8_t id[SESSION_ID_LEN], const uint8_t nonce_c[NONCE_LEN],
                  const uint8_t nonce_s[NONCE_LEN], const struct core_resume_state *st,
                  uint8_t out[MAC_LEN]) __attribute__((warn_unused_result));

/* MAC of a server's Reject of a resume: "reject" || code || id || nonce_c ||
 * nonce_s, under k_resume_s or the pre-shared key's reject key. */
int hs_reject_mac(const uint8_t key[KEY_LEN], uint32_t code, const uint8_t id[SESSION_ID_LEN],
                  const uint8_t nonce_c[NONCE_LEN], const uint8_t nonce_s[NONCE_LEN],
                  uint8_t out[MAC_LEN]) __attribute__((warn_unused_result));
/* The key under which a server that does not know a session (it has no
 * session key) MACs its Reject: SHA-256("tether/1 reject" || psk). */
int hs_psk_reject_key(const uint8_t *psk, size_t psk_len, uint8_t out[KEY_LEN])
    __attribute__((warn_unused_result));

void hs_state_to_pb(const struct core_resume_state *st, Tether__Wire__ResumeState *pb);
void hs_state_from_pb(const Tether__Wire__ResumeState *pb, struct core_resume_state *st);

#endif
