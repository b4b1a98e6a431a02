/* Retention: the bytes a session has written but cannot yet prove its peer's
 * application consumed, addressed by 64-bit stream offset.  A ring buffer
 * that grows on demand up to a fixed maximum and gives its memory back when
 * it empties, so an idle session holds nothing. */
#ifndef TETHER_CORE_RETENTION_H
#define TETHER_CORE_RETENTION_H

#include <stddef.h>
#include <stdint.h>

struct retention {
  uint8_t *buf;  /* ring storage, NULL while empty */
  size_t cap;    /* allocated size (0 while buf is NULL); grows
                    geometrically but not past max */
  size_t max;    /* most bytes it may hold */
  size_t head;   /* index in buf of the byte at offset `base` */
  size_t len;    /* bytes held */
  uint64_t base; /* stream offset of the oldest byte held */
  size_t peak;   /* most bytes held since the last shrink or fit */
  uint64_t shrunk_base, shrunk_end; /* base and end at the last shrink */
};

void retention_init(struct retention *r, size_t max, uint64_t base);
void retention_clear(struct retention *r);

static inline uint64_t retention_end(const struct retention *r) { return r->base + r->len; }
static inline size_t retention_room(const struct retention *r) { return r->max - r->len; }

/* Appends n <= retention_room() bytes.  0, or -ENOMEM (nothing appended). */
int retention_append(struct retention *r, const void *data, size_t n)
    __attribute__((warn_unused_result));
/* Makes sure n more bytes can be appended without allocating.  0 or -ENOMEM. */
int retention_reserve(struct retention *r, size_t n) __attribute__((warn_unused_result));
/* Drops every byte below offset `upto` (clamped to what is held). */
void retention_trim(struct retention *r, uint64_t upto);
/* The contiguous run of bytes starting at offset `from` (base <= from <= end);
 * returns its length (0 at the end) and points *p at it. */
size_t retention_peek(const struct retention *r, uint64_t from, const uint8_t **p);
/* Copies len bytes starting at offset `from` into out. from..from+len must be held. */
void retention_copy(const struct retention *r, uint64_t from, void *out, size_t len);
/* Gives memory back, with hysteresis: frees the storage if nothing is held;
 * shrinks it to what is held if nothing was appended or trimmed since the
 * last call (idle); else to the most bytes held since the last call if that
 * stayed at or below a quarter of its size.  Call now and then (the engine:
 * at each heartbeat), not per write: an idle ring is down to its content
 * after two calls, while a busy one keeps its size. */
void retention_shrink(struct retention *r);
/* Shrinks the storage to exactly what is held (none when empty): for a ring
 * that will not grow for a while (a suspended or finished session). */
void retention_fit(struct retention *r);
/* Raises or lowers the maximum (never below what is held). */
void retention_set_max(struct retention *r, size_t max);

#endif
