/* All cryptography, through OpenSSL: X25519 key agreement, HKDF-SHA256 key
 * schedule, HMAC-SHA256, randomness.  Key material is wiped when dropped. */
#ifndef TETHER_WIRE_CRYPTO_H
#define TETHER_WIRE_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEY_LEN 32
#define MAC_LEN 32
#define NONCE_LEN 16
#define SESSION_ID_LEN 16
#define PSK_MAX 64

/* Per-session keys, one per direction and purpose. */
struct session_keys {
  uint8_t ctl_c2s[KEY_LEN];    /* control datagrams client -> server */
  uint8_t ctl_s2c[KEY_LEN];
  uint8_t resume_c[KEY_LEN];   /* client's resume proofs */
  uint8_t resume_s[KEY_LEN];
  uint8_t confirm_c[KEY_LEN];  /* handshake key confirmation */
  uint8_t confirm_s[KEY_LEN];
};

/* A byte string to feed a MAC or hash, part by part. */
struct buf_part {
  const void *p;
  size_t n;
};

/* An ephemeral X25519 key pair, kept as OpenSSL's own object: rebuilding it
 * from raw bytes would recompute the public key (a second scalar
 * multiplication) on every handshake.  Reference-counted, so that several
 * handshakes may share one key (see ctx_take_key). */
struct x25519_key;

int crypto_random(void *out, size_t n) __attribute__((warn_unused_result));
/* NULL on failure.  Holds one reference. */
struct x25519_key *x25519_new(void);
/* Takes another reference; returns k. */
struct x25519_key *x25519_ref(struct x25519_key *k);
/* Drops a reference; the last one frees the key (OpenSSL wipes it). */
void x25519_free(struct x25519_key *k);
const uint8_t *x25519_pub(const struct x25519_key *k);
/* Fails (-EPROTO) on a low-order peer key (all-zero shared secret).
 * Remembers its last few results (a peer may reuse its key too). */
int x25519_shared(struct x25519_key *k, const uint8_t peer_pub[KEY_LEN],
                  uint8_t shared[KEY_LEN]) __attribute__((warn_unused_result));
int sha256_parts(const struct buf_part *parts, size_t n, uint8_t out[32])
    __attribute__((warn_unused_result));
int hmac_parts(const uint8_t key[KEY_LEN], const struct buf_part *parts, size_t n,
               uint8_t out[MAC_LEN]) __attribute__((warn_unused_result));
/* Constant-time comparison of two MACs. */
bool mac_equal(const uint8_t a[MAC_LEN], const uint8_t b[MAC_LEN]);
/* keys = HKDF-SHA256(ikm = shared, salt = "tether/1" || psk, info = th). */
int keys_derive(const uint8_t shared[KEY_LEN], const uint8_t *psk, size_t psk_len,
                const uint8_t th[32], struct session_keys *out)
    __attribute__((warn_unused_result));
void wipe(void *p, size_t n);

#endif
