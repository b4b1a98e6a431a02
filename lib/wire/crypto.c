#include "crypto.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

int crypto_random(void *out, size_t n) {
  return RAND_bytes(out, (int)n) == 1 ? 0 : -EIO;
}

void wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

/* A shared key, and so its agreement with a given peer key, is reused for
 * up to KEY_REUSE_MAX handshakes (see ctx_take_key); a peer that reuses
 * its own key too (another tether context, reconnecting or opening several
 * sessions) would make us repeat the same scalar multiplication.  The last
 * few results are kept with the key: they live exactly as long as the
 * private key that can recompute them, and die (wiped) with it. */
#define X25519_MEMO 4

struct x25519_memo {
  uint8_t peer[KEY_LEN];
  uint8_t shared[KEY_LEN];
  bool used;
};

struct x25519_key {
  EVP_PKEY *pkey;
  uint8_t pub[KEY_LEN];
  unsigned refs;
  pthread_mutex_t lock; /* guards memo: handshakes run in several threads */
  struct x25519_memo memo[X25519_MEMO];
  unsigned memo_next;
};

struct x25519_key *x25519_new(void) {
  struct x25519_key *k = calloc(1, sizeof(*k));
  size_t len = KEY_LEN;
  if (!k)
    return NULL;
  k->refs = 1;
  pthread_mutex_init(&k->lock, NULL);
  k->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
  if (!k->pkey || EVP_PKEY_get_raw_public_key(k->pkey, k->pub, &len) != 1 || len != KEY_LEN) {
    x25519_free(k);
    return NULL;
  }
  return k;
}

struct x25519_key *x25519_ref(struct x25519_key *k) {
  __atomic_add_fetch(&k->refs, 1, __ATOMIC_RELAXED);
  return k;
}

void x25519_free(struct x25519_key *k) {
  if (!k || __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) > 0)
    return;
  EVP_PKEY_free(k->pkey); /* OpenSSL clears private key material */
  pthread_mutex_destroy(&k->lock);
  wipe(k->memo, sizeof(k->memo));
  free(k);
}

const uint8_t *x25519_pub(const struct x25519_key *k) { return k->pub; }

static bool memo_find(struct x25519_key *k, const uint8_t peer_pub[KEY_LEN],
                      uint8_t shared[KEY_LEN]) {
  bool found = false;
  pthread_mutex_lock(&k->lock);
  for (unsigned i = 0; i < X25519_MEMO && !found; i++)
    if (k->memo[i].used && CRYPTO_memcmp(k->memo[i].peer, peer_pub, KEY_LEN) == 0) {
      memcpy(shared, k->memo[i].shared, KEY_LEN);
      found = true;
    }
  pthread_mutex_unlock(&k->lock);
  return found;
}

static void memo_add(struct x25519_key *k, const uint8_t peer_pub[KEY_LEN],
                     const uint8_t shared[KEY_LEN]) {
  pthread_mutex_lock(&k->lock);
  struct x25519_memo *m = &k->memo[k->memo_next++ % X25519_MEMO];
  memcpy(m->peer, peer_pub, KEY_LEN);
  memcpy(m->shared, shared, KEY_LEN);
  m->used = true;
  pthread_mutex_unlock(&k->lock);
}

int x25519_shared(struct x25519_key *k, const uint8_t peer_pub[KEY_LEN],
                  uint8_t shared[KEY_LEN]) {
  if (memo_find(k, peer_pub, shared))
    return 0; /* only a result that passed the checks below is kept */
  int rc = -EIO;
  EVP_PKEY_CTX *dctx = NULL;
  EVP_PKEY *theirs = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, KEY_LEN);
  size_t len = KEY_LEN;
  static const uint8_t zero[KEY_LEN];
  if (!theirs)
    goto out;
  dctx = EVP_PKEY_CTX_new(k->pkey, NULL);
  if (!dctx || EVP_PKEY_derive_init(dctx) != 1 || EVP_PKEY_derive_set_peer(dctx, theirs) != 1)
    goto out;
  if (EVP_PKEY_derive(dctx, shared, &len) != 1 || len != KEY_LEN) {
    rc = -EPROTO;
    goto out;
  }
  rc = CRYPTO_memcmp(shared, zero, KEY_LEN) == 0 ? -EPROTO : 0;
  if (rc == 0)
    memo_add(k, peer_pub, shared);
out:
  EVP_PKEY_CTX_free(dctx);
  EVP_PKEY_free(theirs);
  return rc;
}

int sha256_parts(const struct buf_part *parts, size_t n, uint8_t out[32]) {
  int rc = -EIO;
  unsigned int len = 0;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
    goto out;
  for (size_t i = 0; i < n; i++)
    if (EVP_DigestUpdate(md, parts[i].p, parts[i].n) != 1)
      goto out;
  if (EVP_DigestFinal_ex(md, out, &len) == 1 && len == 32)
    rc = 0;
out:
  EVP_MD_CTX_free(md);
  return rc;
}

/* Fetching an algorithm is costly (a provider lookup, several µs); the
 * fetched objects are immutable and shared by all threads for the life of
 * the process.  A lost race frees the duplicate. */
#define FETCH_ONCE(type, fetch, release, name)                                                 \
  static type *alg;                                                                            \
  type *a = __atomic_load_n(&alg, __ATOMIC_ACQUIRE);                                           \
  if (a)                                                                                       \
    return a;                                                                                  \
  if (!(a = fetch(NULL, name, NULL)))                                                          \
    return NULL;                                                                               \
  type *expected = NULL;                                                                       \
  if (!__atomic_compare_exchange_n(&alg, &expected, a, false, __ATOMIC_ACQ_REL,                \
                                   __ATOMIC_ACQUIRE)) {                                        \
    release(a);                                                                                \
    a = expected;                                                                              \
  }                                                                                            \
  return a

static EVP_MAC *hmac_alg(void) { FETCH_ONCE(EVP_MAC, EVP_MAC_fetch, EVP_MAC_free, "HMAC"); }
static EVP_KDF *hkdf_alg(void) { FETCH_ONCE(EVP_KDF, EVP_KDF_fetch, EVP_KDF_free, "HKDF"); }

int hmac_parts(const uint8_t key[KEY_LEN], const struct buf_part *parts, size_t n,
               uint8_t out[MAC_LEN]) {
  int rc = -EIO;
  size_t len = 0;
  EVP_MAC *alg = hmac_alg();
  EVP_MAC_CTX *ctx = alg ? EVP_MAC_CTX_new(alg) : NULL;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
      OSSL_PARAM_construct_end(),
  };
  if (!ctx || EVP_MAC_init(ctx, key, KEY_LEN, params) != 1)
    goto out;
  for (size_t i = 0; i < n; i++)
    if (EVP_MAC_update(ctx, parts[i].p, parts[i].n) != 1)
      goto out;
  if (EVP_MAC_final(ctx, out, &len, MAC_LEN) == 1 && len == MAC_LEN)
    rc = 0;
out:
  EVP_MAC_CTX_free(ctx);
  return rc;
}

bool mac_equal(const uint8_t a[MAC_LEN], const uint8_t b[MAC_LEN]) {
  return CRYPTO_memcmp(a, b, MAC_LEN) == 0;
}

int keys_derive(const uint8_t shared[KEY_LEN], const uint8_t *psk, size_t psk_len,
                const uint8_t th[32], struct session_keys *out) {
  int rc = -EIO;
  uint8_t salt[8 + PSK_MAX];
  static const char label[8] = "tether/1";
  EVP_KDF *kdf = hkdf_alg();
  EVP_KDF_CTX *kctx = NULL;
  if (psk_len > PSK_MAX)
    return -EINVAL;
  memcpy(salt, label, sizeof(label));
  if (psk_len)
    memcpy(salt + sizeof(label), psk, psk_len);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)shared, KEY_LEN),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, sizeof(label) + psk_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)th, 32),
      OSSL_PARAM_construct_end(),
  };
  kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  if (kctx && EVP_KDF_derive(kctx, (unsigned char *)out, sizeof(*out), params) == 1)
    rc = 0;
  EVP_KDF_CTX_free(kctx);
  wipe(salt, sizeof(salt));
  return rc;
}
