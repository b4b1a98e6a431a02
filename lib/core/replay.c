#include "replay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A multiply-rotate hash over 64-bit little-endian words: a few cycles per
 * 8 bytes, so that logging a fast stream stays cheap. */
#define P1 0x9E3779B97F4A7C15ull
#define P2 0xC2B2AE3D27D4EB4Full

static inline uint64_t rotl(uint64_t x, unsigned r) { return x << r | x >> (64 - r); }
static inline uint64_t mix(uint64_t h, uint64_t w) { return rotl(h ^ (w * P1), 31) * P2; }

/* Written out, not as a loop: compilers turn this form into one load (a
 * loop stayed eight byte loads and shifts, the hash's main cost). */
static inline uint64_t load_le64(const uint8_t *p) {
  return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
         (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
         (uint64_t)p[7] << 56;
}

void chunk_hash_init(struct chunk_hash *st) { memset(st, 0, sizeof(*st)); }

void chunk_hash_update(struct chunk_hash *st, const uint8_t *p, size_t n) {
  unsigned t = st->len % 8;
  st->len += (uint32_t)n;
  while (t && n) { /* finish the pending word */
    st->tail |= (uint64_t)*p++ << (8 * t);
    n--;
    if (++t == 8) {
      st->h = mix(st->h, st->tail);
      st->tail = 0;
      t = 0;
    }
  }
  uint64_t h = st->h;
  for (; n >= 8; p += 8, n -= 8)
    h = mix(h, load_le64(p));
  st->h = h;
  for (unsigned i = 0; i < n; i++)
    st->tail |= (uint64_t)p[i] << (8 * i);
}

uint64_t chunk_hash_value(const struct chunk_hash *st) {
  uint64_t h = mix(st->h, st->tail);
  h = mix(h, st->len);
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  return h;
}

/* ---- the log ------------------------------------------------------------ */

void replay_log_init(struct replay_log *l, uint64_t at, size_t max_chunks) {
  free(l->hash);
  memset(l, 0, sizeof(*l));
  l->from = replay_align(at);
  l->max = max_chunks ? max_chunks : 1;
  /* A log that starts mid-chunk cannot check that chunk: it only counts
   * its bytes, to keep later chunks aligned. */
  l->cur.len = (uint32_t)(at - l->from);
  l->skip_first = l->cur.len != 0;
}

void replay_log_clear(struct replay_log *l) {
  free(l->hash);
  memset(l, 0, sizeof(*l));
}

static void drop_oldest(struct replay_log *l, size_t k) {
  if (k > l->n)
    k = l->n;
  memmove(l->hash, l->hash + k, (l->n - k) * sizeof(*l->hash));
  l->n -= k;
  l->from += k * REPLAY_CHUNK;
}

static int push_chunk(struct replay_log *l, uint64_t v) {
  if (l->n >= l->max)
    drop_oldest(l, l->max / 4 + 1); /* amortised: a quarter at a time */
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    if (cap > l->max)
      cap = l->max;
    uint64_t *h = realloc(l->hash, cap * sizeof(*h));
    if (!h) {
      drop_oldest(l, l->n); /* start over after this chunk */
      l->from += REPLAY_CHUNK;
      return -ENOMEM;
    }
    l->hash = h;
    l->cap = cap;
  }
  l->hash[l->n++] = v;
  return 0;
}

int replay_log_append(struct replay_log *l, const uint8_t *p, size_t n) {
  int rc = 0;
  while (n) {
    size_t room = (size_t)(REPLAY_CHUNK - l->cur.len);
    size_t k = n < room ? n : room;
    chunk_hash_update(&l->cur, p, k);
    p += k;
    n -= k;
    if (l->cur.len == REPLAY_CHUNK) {
      if (l->skip_first) {
        l->skip_first = false;
        l->from += REPLAY_CHUNK;
      } else if (push_chunk(l, chunk_hash_value(&l->cur)) < 0) {
        rc = -ENOMEM;
      }
      chunk_hash_init(&l->cur);
    }
  }
  return rc;
}

void replay_log_trim(struct replay_log *l, uint64_t upto) {
  uint64_t b = replay_align(upto);
  if (b > l->from)
    drop_oldest(l, (size_t)((b - l->from) / REPLAY_CHUNK));
}

/* ---- checking a replay -------------------------------------------------- */

void replay_check_init(struct replay_check *rc, uint64_t start, uint64_t end) {
  rc->pos = start;
  rc->end = end;
  chunk_hash_init(&rc->cur);
}

/* The logged hash of the chunk starting at `at`, compared with what the
 * replay produced for it so far (a prefix only at the log's end). */
static bool chunk_matches(const struct replay_log *l, uint64_t at, const struct chunk_hash *got) {
  if (at < l->from)
    return false;
  size_t i = (size_t)((at - l->from) / REPLAY_CHUNK);
  if (i < l->n)
    return got->len == REPLAY_CHUNK && l->hash[i] == chunk_hash_value(got);
  return i == l->n && !l->skip_first && got->len == l->cur.len &&
         chunk_hash_value(&l->cur) == chunk_hash_value(got);
}

int replay_check_feed(struct replay_check *rc, const struct replay_log *l, const uint8_t *p,
                      size_t n) {
  while (n) {
    size_t room = (size_t)(REPLAY_CHUNK - rc->cur.len);
    size_t k = n < room ? n : room;
    chunk_hash_update(&rc->cur, p, k);
    p += k;
    n -= k;
    rc->pos += k;
    if (rc->cur.len == REPLAY_CHUNK || rc->pos == rc->end) {
      if (!chunk_matches(l, rc->pos - rc->cur.len, &rc->cur))
        return -1;
      if (rc->cur.len == REPLAY_CHUNK)
        chunk_hash_init(&rc->cur);
    }
  }
  return 0;
}
