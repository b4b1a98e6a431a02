#include "retention.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MIN_CAP ((size_t)64 * 1024)

void retention_init(struct retention *r, size_t max, uint64_t base) {
  memset(r, 0, sizeof(*r));
  r->max = max;
  r->base = base;
}

void retention_clear(struct retention *r) {
  free(r->buf);
  r->buf = NULL;
  r->cap = r->head = r->len = 0;
}

static size_t round_pow2(size_t n) {
  size_t c = MIN_CAP;
  while (c < n)
    c <<= 1;
  return c;
}

/* Reallocates to hold at least `need` bytes, unwrapping the ring. */
static int grow(struct retention *r, size_t need) {
  size_t cap = round_pow2(need);
  uint8_t *nb = malloc(cap);
  if (!nb)
    return -ENOMEM;
  if (r->len) {
    size_t first = r->cap - r->head < r->len ? r->cap - r->head : r->len;
    memcpy(nb, r->buf + r->head, first);
    memcpy(nb + first, r->buf, r->len - first);
  }
  free(r->buf);
  r->buf = nb;
  r->cap = cap;
  r->head = 0;
  return 0;
}

int retention_reserve(struct retention *r, size_t n) {
  return r->len + n > r->cap ? grow(r, r->len + n) : 0;
}

int retention_append(struct retention *r, const void *data, size_t n) {
  assert(n <= retention_room(r));
  if (n == 0)
    return 0;
  int rc = retention_reserve(r, n);
  if (rc < 0)
    return rc;
  size_t tail = (r->head + r->len) & (r->cap - 1);
  size_t first = r->cap - tail < n ? r->cap - tail : n;
  memcpy(r->buf + tail, data, first);
  memcpy(r->buf, (const uint8_t *)data + first, n - first);
  r->len += n;
  return 0;
}

void retention_trim(struct retention *r, uint64_t upto) {
  if (upto <= r->base)
    return;
  uint64_t drop = upto - r->base;
  if (drop >= r->len) {
    /* Everything consumed: keep offsets moving, restart the ring at 0. */
    r->base = upto > retention_end(r) ? retention_end(r) : upto;
    r->len = 0;
    r->head = 0;
    return;
  }
  r->base += drop;
  r->len -= (size_t)drop;
  r->head = (r->head + (size_t)drop) & (r->cap - 1);
}

size_t retention_peek(const struct retention *r, uint64_t from, const uint8_t **p) {
  assert(from >= r->base && from <= retention_end(r));
  size_t off = (size_t)(from - r->base);
  size_t avail = r->len - off;
  if (avail == 0) {
    *p = NULL;
    return 0;
  }
  size_t idx = (r->head + off) & (r->cap - 1);
  *p = r->buf + idx;
  return r->cap - idx < avail ? r->cap - idx : avail;
}

void retention_copy(const struct retention *r, uint64_t from, void *out, size_t len) {
  uint8_t *o = out;
  while (len) {
    const uint8_t *p;
    size_t n = retention_peek(r, from, &p);
    assert(n > 0);
    if (n > len)
      n = len;
    memcpy(o, p, n);
    o += n;
    from += n;
    len -= n;
  }
}

void retention_shrink(struct retention *r) {
  if (r->len == 0 && r->buf)
    retention_clear(r);
}

void retention_set_max(struct retention *r, size_t max) {
  r->max = max < r->len ? r->len : max;
}
