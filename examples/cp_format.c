#include "cp_format.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static const uint8_t header_magic[8] = {'T', 'T', 'H', 'R', 'C', 'P', '\r', '\n'};
static const uint8_t verdict_magic[4] = {'T', 'C', 'P', 'V'};
static const uint8_t state_magic[8] = {'T', 'C', 'P', 'S', 'T', 'A', 'T', 'E'};
#define STATE_VERSION 1u

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 3; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v = v << 8 | p[i];
  return v;
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

/* ---- the streams ---------------------------------------------------------- */

void cp_header_encode(uint64_t size, uint8_t out[CP_HEADER_LEN]) {
  memcpy(out, header_magic, 8);
  put32(out + 8, CP_VERSION);
  put32(out + 12, 0);
  put64(out + 16, size);
}

int cp_header_decode(const uint8_t in[CP_HEADER_LEN], uint64_t *size,
                     const char **why) {
  if (memcmp(in, header_magic, 8) != 0) {
    *why = "not a tether-cp stream (bad magic)";
    return -1;
  }
  if (get32(in + 8) != CP_VERSION || get32(in + 12) != 0) {
    *why = "unsupported tether-cp stream version";
    return -1;
  }
  if (get64(in + 16) > CP_SIZE_MAX) {
    *why = "file size out of range";
    return -1;
  }
  *size = get64(in + 16);
  return 0;
}

void cp_verdict_encode(uint32_t code, uint8_t out[CP_VERDICT_LEN]) {
  memcpy(out, verdict_magic, 4);
  put32(out + 4, code);
}

int cp_verdict_decode(const uint8_t in[CP_VERDICT_LEN], uint32_t *code) {
  if (memcmp(in, verdict_magic, 4) != 0 || get32(in + 4) > CP_VERDICT_FAILED)
    return -1;
  *code = get32(in + 4);
  return 0;
}

const char *cp_verdict_name(uint32_t code) {
  switch (code) {
  case CP_VERDICT_OK:
    return "SHA-256 verified";
  case CP_VERDICT_MISMATCH:
    return "SHA-256 mismatch";
  case CP_VERDICT_FAILED:
    return "the receiver failed";
  }
  return "unknown verdict";
}

uint64_t cp_stream_len(uint64_t size) {
  return CP_HEADER_LEN + size + CP_DIGEST_LEN;
}

uint64_t cp_file_offset(uint64_t size, uint64_t pos) {
  if (pos <= CP_HEADER_LEN)
    return 0;
  return pos - CP_HEADER_LEN < size ? pos - CP_HEADER_LEN : size;
}

/* ---- the state file ------------------------------------------------------- */

/* magic, version, role, phase, verdict, pos, size, mtime */
#define STATE_FIXED_LEN (8u + 4 * 4 + 3 * 8)

static int sha256(const uint8_t *p, size_t len, uint8_t out[CP_DIGEST_LEN]) {
  return EVP_Digest(p, len, out, NULL, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
}

int cp_state_encode(const struct cp_state *st, uint8_t **out, size_t *len) {
  size_t path_len = strlen(st->path) + 1, peer_len = strlen(st->peer) + 1;
  uint8_t *buf, *p;
  size_t n;

  if (path_len > CP_STATE_PATH_MAX || peer_len > CP_STATE_PEER_MAX)
    return -EINVAL;
  n = STATE_FIXED_LEN + 4 + path_len + 4 + peer_len + 8;
  if (st->blob_len > SIZE_MAX - n - CP_DIGEST_LEN)
    return -EINVAL;
  n += st->blob_len + CP_DIGEST_LEN;
  buf = malloc(n);
  if (buf == NULL)
    return -ENOMEM;

  p = buf;
  memcpy(p, state_magic, 8);
  put32(p + 8, STATE_VERSION);
  put32(p + 12, st->role);
  put32(p + 16, st->phase);
  put32(p + 20, st->verdict);
  put64(p + 24, st->pos);
  put64(p + 32, st->size);
  put64(p + 40, st->mtime_ns);
  p += STATE_FIXED_LEN;
  put32(p, (uint32_t)path_len);
  memcpy(p + 4, st->path, path_len);
  p += 4 + path_len;
  put32(p, (uint32_t)peer_len);
  memcpy(p + 4, st->peer, peer_len);
  p += 4 + peer_len;
  put64(p, st->blob_len);
  memcpy(p + 8, st->blob, st->blob_len);
  p += 8 + st->blob_len;
  if (sha256(buf, (size_t)(p - buf), p) < 0) {
    free(buf);
    return -ENOMEM;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* A cursor over the state file: every read is bounds-checked. */
struct cursor {
  const uint8_t *p;
  size_t left;
};

static const uint8_t *take(struct cursor *c, size_t n) {
  const uint8_t *p = c->p;

  if (n > c->left)
    return NULL;
  c->p += n;
  c->left -= n;
  return p;
}

/* A u32 length, then that many bytes ending in the string's only NUL. */
static const char *take_str(struct cursor *c, size_t max) {
  const uint8_t *lp = take(c, 4), *s;
  size_t n;

  if (lp == NULL)
    return NULL;
  n = get32(lp);
  if (n == 0 || n > max || (s = take(c, n)) == NULL)
    return NULL;
  if (s[n - 1] != '\0' || memchr(s, '\0', n - 1) != NULL)
    return NULL;
  return (const char *)s;
}

static int phase_ok(uint32_t role, uint32_t phase) {
  if (role == CP_ROLE_SEND)
    return phase == CP_PHASE_STREAM || phase == CP_PHASE_VERDICT;
  if (role == CP_ROLE_RECV)
    return phase == CP_PHASE_STREAM || phase == CP_PHASE_VERIFIED ||
           phase == CP_PHASE_ACKED;
  return 0;
}

/* The fields hold together: known role and phase, a position inside the
 * stream, a finished stream after it was verified. */
static int state_consistent(const struct cp_state *st) {
  if (!phase_ok(st->role, st->phase) || st->verdict > CP_VERDICT_FAILED ||
      st->size > CP_SIZE_MAX || st->pos > cp_stream_len(st->size) ||
      st->path[0] == '\0' || st->peer[0] == '\0' || st->blob_len == 0)
    return 0;
  /* The receiver reads the header in one piece: it is at 0 or past it. */
  if (st->role == CP_ROLE_RECV && st->pos != 0 && st->pos < CP_HEADER_LEN)
    return 0;
  if (st->phase != CP_PHASE_STREAM && st->pos != cp_stream_len(st->size))
    return 0;
  return 1;
}

int cp_state_decode(const uint8_t *buf, size_t len, struct cp_state *st,
                    const char **why) {
  struct cursor c = {.p = buf, .left = len};
  uint8_t digest[CP_DIGEST_LEN];
  const uint8_t *fixed, *blen;
  struct cp_state s;

  if (memcmp(buf, state_magic, len < 8 ? len : 8) != 0) {
    *why = "not a tether-cp state file";
    return -1;
  }
  if (len < STATE_FIXED_LEN + CP_DIGEST_LEN) {
    *why = "truncated";
    return -1;
  }
  if (get32(buf + 8) != STATE_VERSION) {
    *why = "unsupported state file version";
    return -1;
  }
  /* Check the whole file before believing any length in it. */
  if (sha256(buf, len - CP_DIGEST_LEN, digest) < 0) {
    *why = "out of memory";
    return -1;
  }
  if (CRYPTO_memcmp(digest, buf + len - CP_DIGEST_LEN, CP_DIGEST_LEN) != 0) {
    *why = "damaged or truncated (checksum mismatch)";
    return -1;
  }
  c.left -= CP_DIGEST_LEN;

  fixed = take(&c, STATE_FIXED_LEN);
  s.role = get32(fixed + 12);
  s.phase = get32(fixed + 16);
  s.verdict = get32(fixed + 20);
  s.pos = get64(fixed + 24);
  s.size = get64(fixed + 32);
  s.mtime_ns = get64(fixed + 40);
  s.path = take_str(&c, CP_STATE_PATH_MAX);
  s.peer = s.path ? take_str(&c, CP_STATE_PEER_MAX) : NULL;
  blen = s.peer ? take(&c, 8) : NULL;
  if (blen == NULL || get64(blen) != c.left) {
    *why = "malformed";
    return -1;
  }
  s.blob_len = (size_t)get64(blen);
  s.blob = take(&c, s.blob_len);
  if (!state_consistent(&s)) {
    *why = "inconsistent fields";
    return -1;
  }
  *st = s;
  return 0;
}
