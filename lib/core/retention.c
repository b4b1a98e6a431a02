#include "retention.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The invariant every function keeps: the bytes of offsets [base, base + len)
 * sit in buf from index head on, wrapping at cap; len <= cap; head < cap
 * whenever cap > 0; peak >= len.  The ring grows geometrically but never
 * past max (a write is held back at max, never dropped), and shrinks only in
 * retention_shrink() and retention_fit(): appending never gives memory back,
 * so a writer's copy into the ring reallocates only while the ring grows. */

#define MIN_CAP ((size_t)64 * 1024)

/* Storage.  A ring of HUGE_PAGE bytes or more is a whole number of
 * transparent huge pages: a bulk sender cycles through all of it, and with
 * 4 KiB pages it would take a page fault per 4 KiB the first time round and
 * a TLB miss per 4 KiB ever after. */
#define HUGE_PAGE ((size_t)2 * 1024 * 1024)

static uint8_t *storage_alloc(size_t cap) {
  if (cap < HUGE_PAGE)
    return malloc(cap);
  void *p = NULL;
  size_t size = (cap + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
  if (posix_memalign(&p, HUGE_PAGE, size) != 0)
    return NULL;
#ifdef MADV_HUGEPAGE
  (void)madvise(p, size, MADV_HUGEPAGE); /* advice: EINVAL without THP */
#endif
  return p;
}

void retention_init(struct retention *r, size_t max, uint64_t base) {
  memset(r, 0, sizeof(*r));
  r->max = max;
  r->base = base;
}

void retention_clear(struct retention *r) {
  free(r->buf);
  r->buf = NULL;
  r->cap = r->head = r->len = 0;
  r->peak = 0;
}

/* The index in buf of the byte `off` bytes past head (off <= cap). */
static size_t wrap(const struct retention *r, size_t off) {
  size_t i = r->head + off;
  return i >= r->cap ? i - r->cap : i;
}

/* Moves the content into new storage of exactly `cap` >= len bytes (none
 * for 0), unwrapping the ring.  0, or -ENOMEM with the ring unchanged. */
static int resize(struct retention *r, size_t cap) {
  assert(cap >= r->len);
  uint8_t *nb = NULL;
  if (cap && !(nb = storage_alloc(cap)))
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

/* Twice the current size (at least MIN_CAP), but no more than max unless
 * `need` itself is more (a restored ring may hold more than max). */
static int grow(struct retention *r, size_t need) {
  size_t cap = r->cap > r->max / 2 ? r->max : 2 * r->cap;
  if (cap < MIN_CAP)
    cap = MIN_CAP < r->max ? MIN_CAP : r->max;
  return resize(r, cap < need ? need : cap);
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
  size_t tail = wrap(r, r->len);
  size_t first = r->cap - tail < n ? r->cap - tail : n;
  memcpy(r->buf + tail, data, first);
  memcpy(r->buf, (const uint8_t *)data + first, n - first);
  r->len += n;
  if (r->len > r->peak)
    r->peak = r->len;
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
  r->head = wrap(r, (size_t)drop);
}

size_t retention_peek(const struct retention *r, uint64_t from, const uint8_t **p) {
  assert(from >= r->base && from <= retention_end(r));
  size_t off = (size_t)(from - r->base);
  size_t avail = r->len - off;
  if (avail == 0) {
    *p = NULL;
    return 0;
  }
  size_t idx = wrap(r, off);
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
  /* Empty: nothing to keep.  Untouched since the last call (idle): exactly
   * its content.  Else only when the ring stayed well below its size since
   * the last call (hysteresis: a flow whose retention rises and falls
   * between two calls keeps its ring), down to what it needed. */
  bool idle = r->base == r->shrunk_base && retention_end(r) == r->shrunk_end;
  if (r->len == 0 && r->buf)
    retention_clear(r);
  else if (idle && r->cap > r->len)
    retention_fit(r);
  else if (r->buf && r->peak <= r->cap / 4)
    (void)resize(r, r->peak); /* -ENOMEM: keeps the larger ring */
  r->peak = r->len;
  r->shrunk_base = r->base;
  r->shrunk_end = retention_end(r);
}

void retention_fit(struct retention *r) {
  if (r->cap > r->len)
    (void)resize(r, r->len); /* -ENOMEM: keeps the larger ring */
  r->peak = r->len;
}

void retention_set_max(struct retention *r, size_t max) {
  r->max = max < r->len ? r->len : max;
}
