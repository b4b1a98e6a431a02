/* Verified replay after a rollback.
 *
 * A peer restored from a snapshot has forgotten the bytes it wrote after
 * that snapshot; its application writes them again.  The receiving side has
 * already delivered them, so it must not deliver them twice -- and must make
 * sure they are the same bytes, or the stream would silently change.
 *
 * So while its peer may roll back (it negotiated durable acknowledgements),
 * the receiver keeps a 64-bit hash of every REPLAY_CHUNK-byte chunk it
 * delivered since the peer's last durable point (chunks aligned to absolute
 * stream offsets), plus the running hash of the chunk in progress.  A peer
 * that rolled back to offset `sent` resends from the chunk boundary below it
 * (it keeps those few bytes, see core_trim_floor()), and the receiver hashes
 * what arrives, chunk by chunk, up to what it delivered: any difference
 * fails the session with TETHER_EDIVERGED instead of delivering anything.
 *
 * The hash detects accidents (a non-deterministic replay), not attacks: the
 * bytes come from the authenticated peer itself. */
#ifndef TETHER_CORE_REPLAY_H
#define TETHER_CORE_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REPLAY_CHUNK ((uint64_t)1024)

static inline uint64_t replay_align(uint64_t off) { return off - off % REPLAY_CHUNK; }

/* Incremental hash of one chunk (or a prefix of it). */
struct chunk_hash {
  uint64_t h;
  uint64_t tail;     /* up to 7 bytes not yet mixed in, little-endian */
  uint32_t len;      /* bytes hashed so far */
};

void chunk_hash_init(struct chunk_hash *st);
void chunk_hash_update(struct chunk_hash *st, const uint8_t *p, size_t n);
/* The hash of what was added so far (st is unchanged). */
uint64_t chunk_hash_value(const struct chunk_hash *st);

/* Hashes of the delivered stream from `from` (a chunk boundary) on. */
struct replay_log {
  uint64_t from;       /* stream offset of hash[0]'s chunk */
  uint64_t *hash;      /* complete chunks, oldest first */
  size_t n, cap;
  size_t max;          /* most chunks kept; the oldest go first */
  struct chunk_hash cur; /* the chunk at from + n * REPLAY_CHUNK, partial */
  bool skip_first;     /* cur began mid-chunk: it cannot be logged */
};

/* An empty log whose next byte is at stream offset `at`. */
void replay_log_init(struct replay_log *l, uint64_t at, size_t max_chunks);
void replay_log_clear(struct replay_log *l);
/* The stream offset just past the last byte logged. */
static inline uint64_t replay_log_end(const struct replay_log *l) {
  return l->from + l->n * REPLAY_CHUNK + l->cur.len;
}
/* The oldest offset from which a replay can be checked. */
static inline uint64_t replay_log_start(const struct replay_log *l) {
  return l->from + (l->skip_first ? REPLAY_CHUNK : 0);
}
/* Logs delivered bytes.  0, or -ENOMEM (the log then restarts after them:
 * a later replay from before that point cannot be verified). */
int replay_log_append(struct replay_log *l, const uint8_t *p, size_t n);
/* Forgets every chunk entirely below `upto` (the peer's durable point). */
void replay_log_trim(struct replay_log *l, uint64_t upto);

/* Checking a replay of [start, end) against the log (start is a chunk
 * boundary at or after l->from, end = replay_log_end(l)). */
struct replay_check {
  uint64_t pos;          /* offset of the next replayed byte */
  uint64_t end;
  struct chunk_hash cur; /* the chunk being replayed, so far */
};

void replay_check_init(struct replay_check *rc, uint64_t start, uint64_t end);
/* Checks n <= end - pos replayed bytes.  0, or -1 on a difference. */
int replay_check_feed(struct replay_check *rc, const struct replay_log *l, const uint8_t *p,
                      size_t n);

#endif
