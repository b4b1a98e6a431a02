/* Unit tests for lib/core/retention.c: the ring of retained bytes addressed by
 * 64-bit stream offset.
 *
 * Byte content is a pure function of the stream offset (pattern()), so every
 * test can check any byte it reads back without keeping a copy.  The
 * randomized model test prints its seed on failure; replay one with
 * RETENTION_SEED=N ./retention_test. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/retention.h"

#define KiB ((size_t)1024)
#define GiB ((uint64_t)1024 * 1024 * 1024)
#define MIN_CAP (64 * KiB) /* retention.c's smallest allocation */

static uint8_t pattern(uint64_t off) {
  uint64_t x = off * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return (uint8_t)(x ^ (x >> 8) ^ (off >> 32));
}

static void fill(uint8_t *p, uint64_t off, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = pattern(off + i);
}

/* Appends the pattern bytes for [end, end + n). */
static void append_pat(struct retention *r, size_t n) {
  uint8_t *tmp = malloc(n ? n : 1);
  assert_non_null(tmp);
  fill(tmp, retention_end(r), n);
  assert_int_equal(retention_append(r, tmp, n), 0);
  free(tmp);
}

/* Checks every held byte through both peek (run by run) and copy. */
static void check_content(const struct retention *r) {
  uint64_t off = r->base;
  while (off < retention_end(r)) {
    const uint8_t *p;
    size_t n = retention_peek(r, off, &p);
    assert_true(n > 0);
    assert_true(off + n <= retention_end(r));
    for (size_t i = 0; i < n; i++)
      if (p[i] != pattern(off + i))
        fail_msg("byte at offset %llu differs", (unsigned long long)(off + i));
    off += n;
  }
  if (r->len) {
    uint8_t *out = malloc(r->len);
    assert_non_null(out);
    retention_copy(r, r->base, out, r->len);
    for (size_t i = 0; i < r->len; i++)
      if (out[i] != pattern(r->base + i))
        fail_msg("copied byte at offset %llu differs", (unsigned long long)(r->base + i));
    free(out);
  }
}

static void test_init_empty(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 1000, 42);
  assert_null(r.buf);
  assert_int_equal(r.len, 0);
  assert_int_equal(retention_end(&r), 42);
  assert_int_equal(retention_room(&r), 1000);
  const uint8_t *p = (const uint8_t *)&r;
  assert_int_equal(retention_peek(&r, 42, &p), 0);
  assert_null(p);
  /* Appending nothing allocates nothing. */
  assert_int_equal(retention_append(&r, "", 0), 0);
  assert_null(r.buf);
  retention_trim(&r, 10); /* below base: no-op */
  assert_int_equal(r.base, 42);
  retention_clear(&r);
}

static void test_append_peek_trim(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 4 * KiB, 0);
  append_pat(&r, 1000);
  assert_int_equal(retention_end(&r), 1000);
  assert_int_equal(retention_room(&r), 4 * KiB - 1000);
  check_content(&r);
  const uint8_t *p;
  assert_int_equal(retention_peek(&r, 400, &p), 600);
  assert_int_equal(p[0], pattern(400));
  retention_trim(&r, 300);
  assert_int_equal(r.base, 300);
  assert_int_equal(r.len, 700);
  check_content(&r);
  retention_trim(&r, 200); /* already gone: no-op */
  assert_int_equal(r.base, 300);
  assert_int_equal(retention_peek(&r, 1000, &p), 0);
  retention_clear(&r);
}

static void test_wraparound(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, MIN_CAP, 0);
  append_pat(&r, 40 * KiB);
  uint8_t *buf = r.buf;
  assert_int_equal(r.cap, MIN_CAP);
  retention_trim(&r, 30 * KiB);
  append_pat(&r, 40 * KiB); /* 24 KiB at the end of the ring, 16 KiB at its start */
  assert_ptr_equal(r.buf, buf); /* no reallocation */
  assert_int_equal(r.len, 50 * KiB);
  assert_int_equal(retention_room(&r), 14 * KiB);
  const uint8_t *p;
  /* The first run stops at the physical end of the ring. */
  assert_int_equal(retention_peek(&r, 30 * KiB, &p), 34 * KiB);
  assert_ptr_equal(p, r.buf + 30 * KiB);
  assert_int_equal(retention_peek(&r, 64 * KiB, &p), 16 * KiB);
  assert_ptr_equal(p, r.buf);
  assert_int_equal(retention_peek(&r, 63 * KiB + 1, &p), 1 * KiB - 1);
  check_content(&r);
  /* A copy across the seam. */
  uint8_t out[300];
  retention_copy(&r, 64 * KiB - 100, out, sizeof(out));
  for (size_t i = 0; i < sizeof(out); i++)
    assert_int_equal(out[i], pattern(64 * KiB - 100 + i));
  /* Trim past the seam: head wraps too. */
  retention_trim(&r, 70 * KiB);
  assert_int_equal(r.head, 6 * KiB);
  check_content(&r);
  /* Fill to exactly max. */
  append_pat(&r, retention_room(&r));
  assert_int_equal(r.len, MIN_CAP);
  assert_int_equal(retention_room(&r), 0);
  check_content(&r);
  retention_clear(&r);
}

static void test_growth_while_wrapped(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 1024 * KiB, 0);
  append_pat(&r, 60 * KiB);
  retention_trim(&r, 50 * KiB);
  append_pat(&r, 50 * KiB); /* wraps: head 50 KiB, len 60 KiB */
  assert_int_equal(r.cap, MIN_CAP);
  assert_true(r.head + r.len > r.cap);
  append_pat(&r, 100 * KiB); /* 160 KiB: more than double, unwrapped */
  assert_int_equal(r.cap, 160 * KiB);
  assert_int_equal(r.head, 0);
  assert_int_equal(r.len, 160 * KiB);
  check_content(&r);
  append_pat(&r, 10 * KiB); /* doubles */
  assert_int_equal(r.cap, 320 * KiB);
  append_pat(&r, 854 * KiB); /* to exactly max */
  assert_int_equal(r.len, 1024 * KiB);
  assert_int_equal(r.cap, 1024 * KiB);
  check_content(&r);
  retention_clear(&r);
}

/* The storage never exceeds the maximum: a ring allowed 36 MiB (a 4 MiB send
 * buffer plus a peer's 32 MiB receive buffer) is never 64 MiB. */
static void test_growth_capped_at_max(void **state) {
  (void)state;
  struct retention r;
  size_t max = 36 * 1024 * KiB;
  retention_init(&r, max, 0);
  uint8_t *chunk = malloc(1024 * KiB);
  assert_non_null(chunk);
  memset(chunk, 7, 1024 * KiB);
  while (retention_room(&r) > 0) {
    size_t n = retention_room(&r) < 1024 * KiB ? retention_room(&r) : 1024 * KiB;
    assert_int_equal(retention_append(&r, chunk, n), 0);
    assert_true(r.cap <= max);
  }
  assert_int_equal(r.len, max);
  assert_int_equal(r.cap, max);
  free(chunk);
  retention_clear(&r);
  /* Nor does a reservation, nor a maximum below the smallest allocation. */
  retention_init(&r, 3 * MIN_CAP, 0);
  assert_int_equal(retention_reserve(&r, 2 * MIN_CAP + 1), 0);
  assert_int_equal(r.cap, 2 * MIN_CAP + 1);
  assert_int_equal(retention_reserve(&r, 2 * MIN_CAP + 2), 0);
  assert_int_equal(r.cap, 3 * MIN_CAP);
  retention_clear(&r);
  retention_init(&r, 1500, 0);
  append_pat(&r, 10);
  assert_int_equal(r.cap, 1500);
  retention_clear(&r);
}

static void test_trim_beyond_end(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 100 * KiB, 1000);
  append_pat(&r, 5000);
  retention_trim(&r, 1000000); /* far past the end */
  assert_int_equal(r.len, 0);
  assert_int_equal(r.base, 6000); /* clamped to what was held */
  assert_int_equal(retention_end(&r), 6000);
  assert_int_equal(r.head, 0);
  assert_non_null(r.buf); /* memory kept until shrink */
  append_pat(&r, 10);
  assert_int_equal(r.base, 6000);
  check_content(&r);
  retention_trim(&r, 6010); /* exactly the end */
  assert_int_equal(r.len, 0);
  assert_int_equal(r.base, 6010);
  retention_clear(&r);
}

static void test_shrink(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 100 * KiB, 0);
  retention_shrink(&r); /* nothing allocated: no-op */
  assert_null(r.buf);
  append_pat(&r, 100);
  retention_shrink(&r); /* holds bytes: keeps them */
  assert_non_null(r.buf);
  check_content(&r);
  retention_trim(&r, 100);
  retention_shrink(&r);
  assert_null(r.buf);
  assert_int_equal(r.cap, 0);
  assert_int_equal(r.base, 100); /* offsets survive */
  append_pat(&r, 70 * KiB); /* reallocates */
  assert_int_equal(r.base, 100);
  check_content(&r);
  retention_clear(&r);
}

/* A burst of 4 MiB + 1 byte, then all but its last byte consumed (a durable
 * writer keeps the chunk holding its write position): the ring does not stay
 * at the burst's size.  A busy ring keeps its storage across one call. */
static void test_shrink_after_burst(void **state) {
  (void)state;
  struct retention r;
  size_t burst = 4 * 1024 * KiB + 1;
  retention_init(&r, 8 * 1024 * KiB, 0);
  uint8_t *tmp = malloc(burst);
  assert_non_null(tmp);
  fill(tmp, 0, burst);
  assert_int_equal(retention_append(&r, tmp, burst), 0);
  size_t peak_cap = r.cap;
  assert_true(peak_cap >= burst);
  retention_trim(&r, burst - 1);
  assert_int_equal(r.len, 1);
  retention_shrink(&r); /* the burst was this interval's peak: kept */
  assert_int_equal(r.cap, peak_cap);
  retention_shrink(&r); /* idle for an interval: down to its content */
  assert_int_equal(r.len, 1);
  assert_int_equal(r.cap, 1);
  check_content(&r);
  /* It grows again as needed, never below the smallest allocation. */
  append_pat(&r, 10);
  assert_int_equal(r.cap, MIN_CAP);
  check_content(&r);
  /* A ring whose content rises and falls between calls keeps its size. */
  retention_trim(&r, retention_end(&r));
  for (int i = 0; i < 4; i++) {
    fill(tmp, retention_end(&r), 300 * KiB);
    assert_int_equal(retention_append(&r, tmp, 300 * KiB), 0);
    size_t cap = r.cap;
    retention_trim(&r, retention_end(&r) - 10);
    retention_shrink(&r);
    assert_int_equal(r.cap, cap);
  }
  /* Fitting gives back all but the content at once. */
  retention_fit(&r);
  assert_int_equal(r.cap, 10);
  check_content(&r);
  retention_trim(&r, retention_end(&r));
  retention_fit(&r);
  assert_null(r.buf);
  assert_int_equal(r.cap, 0);
  free(tmp);
  retention_clear(&r);
}

/* An idle ring (nothing appended or trimmed between two calls) is fitted to
 * its content, however full: storage beyond what it holds is not needed
 * until it moves again.  One that moves keeps its storage. */
static void test_shrink_idle_fits(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 1024 * KiB, 0);
  append_pat(&r, 600 * KiB);
  append_pat(&r, 200 * KiB);
  assert_int_equal(r.cap, 1024 * KiB);
  retention_shrink(&r); /* it moved since the start */
  assert_int_equal(r.cap, 1024 * KiB);
  append_pat(&r, 1);
  retention_shrink(&r); /* it moved */
  assert_int_equal(r.cap, 1024 * KiB);
  retention_trim(&r, 1);
  retention_shrink(&r); /* it moved */
  assert_int_equal(r.cap, 1024 * KiB);
  retention_shrink(&r); /* idle */
  assert_int_equal(r.cap, 800 * KiB);
  assert_int_equal(r.len, 800 * KiB);
  check_content(&r);
  retention_shrink(&r); /* nothing more to give back */
  assert_int_equal(r.cap, 800 * KiB);
  retention_clear(&r);
}

/* Shrinking while wrapped keeps every byte, at the new head. */
static void test_shrink_wrapped(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 1024 * KiB, 0);
  append_pat(&r, 500 * KiB);
  assert_int_equal(r.cap, 500 * KiB);
  retention_trim(&r, 490 * KiB);
  append_pat(&r, 30 * KiB); /* wraps: all 30 KiB at the start */
  assert_true(r.head + r.len > r.cap);
  retention_shrink(&r); /* peak 500 KiB */
  assert_int_equal(r.cap, 500 * KiB);
  retention_shrink(&r); /* peak 40 KiB */
  assert_int_equal(r.cap, 40 * KiB);
  assert_int_equal(r.head, 0);
  assert_int_equal(r.len, 40 * KiB);
  check_content(&r);
  append_pat(&r, 50 * KiB);
  check_content(&r);
  retention_clear(&r);
}

static void test_set_max(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 10 * KiB, 0);
  append_pat(&r, 8 * KiB);
  retention_set_max(&r, 4 * KiB); /* never below what is held */
  assert_int_equal(r.max, 8 * KiB);
  assert_int_equal(retention_room(&r), 0);
  retention_set_max(&r, 20 * KiB);
  assert_int_equal(retention_room(&r), 12 * KiB);
  append_pat(&r, 12 * KiB);
  check_content(&r);
  retention_set_max(&r, 0);
  assert_int_equal(r.max, r.len);
  retention_clear(&r);
}

static void test_reserve(void **state) {
  (void)state;
  struct retention r;
  retention_init(&r, 1024 * KiB, 0);
  assert_int_equal(retention_reserve(&r, 0), 0);
  assert_int_equal(retention_reserve(&r, 100 * KiB), 0);
  assert_int_equal(r.cap, 100 * KiB);
  uint8_t *buf = r.buf;
  append_pat(&r, 100 * KiB);
  assert_ptr_equal(r.buf, buf); /* the append did not reallocate */
  /* Reserve while wrapped keeps content. */
  retention_trim(&r, 90 * KiB);
  append_pat(&r, 50 * KiB); /* wraps in 100 KiB */
  assert_true(r.head + r.len > r.cap);
  assert_int_equal(retention_reserve(&r, 200 * KiB), 0);
  assert_int_equal(r.cap, 260 * KiB);
  assert_int_equal(r.head, 0);
  check_content(&r);
  buf = r.buf;
  append_pat(&r, 200 * KiB);
  assert_ptr_equal(r.buf, buf);
  check_content(&r);
  retention_clear(&r);
}

/* Offsets near and beyond 2^32, and a base of 5 GiB: nothing may truncate. */
static void test_offsets_64bit(void **state) {
  (void)state;
  struct retention r;
  uint64_t base = (1ull << 32) - 3000;
  retention_init(&r, 128 * KiB, base);
  append_pat(&r, 10000); /* straddles 2^32 */
  assert_int_equal(retention_end(&r), base + 10000);
  check_content(&r);
  const uint8_t *p;
  assert_int_equal(retention_peek(&r, 1ull << 32, &p), 7000);
  assert_int_equal(p[0], pattern(1ull << 32));
  retention_trim(&r, (1ull << 32) + 1);
  assert_int_equal(r.base, (1ull << 32) + 1);
  assert_int_equal(r.len, 6999);
  check_content(&r);
  retention_clear(&r);

  base = 5 * GiB;
  retention_init(&r, 128 * KiB, base);
  append_pat(&r, 100 * KiB);
  retention_trim(&r, base + 60 * KiB);
  append_pat(&r, 80 * KiB); /* wraps */
  assert_int_equal(r.base, base + 60 * KiB);
  assert_int_equal(retention_end(&r), base + 180 * KiB);
  check_content(&r);
  /* A trim whose distance from base exceeds 2^32 empties the ring; it must
   * not be computed modulo 2^32. */
  retention_trim(&r, base + (1ull << 32) + 5);
  assert_int_equal(r.len, 0);
  assert_int_equal(r.base, base + 180 * KiB);
  /* ... and an append after it continues at the same offset. */
  append_pat(&r, 10);
  assert_int_equal(r.base, base + 180 * KiB);
  check_content(&r);
  retention_clear(&r);

  /* Very large offsets, close to 2^64. */
  base = UINT64_MAX - 100 * KiB;
  retention_init(&r, 64 * KiB, base);
  append_pat(&r, 64 * KiB);
  retention_trim(&r, base + 32 * KiB);
  append_pat(&r, 32 * KiB);
  check_content(&r);
  retention_clear(&r);
}

/* ---- randomized model test ------------------------------------------------ */

static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* The reference: the content is pattern(offset), so the model is just the
 * window [base, end) and the maximum. */
struct model {
  uint64_t base, end;
  size_t max;
};

#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    if (!(cond)) {                                                            \
      char m_[256];                                                           \
      snprintf(m_, sizeof(m_), __VA_ARGS__);                                  \
      fail_msg("seed %llu step %d: %s (%s); replay: RETENTION_SEED=%llu "     \
               "./retention_test",                                            \
               (unsigned long long)seed, step, m_, #cond,                     \
               (unsigned long long)seed);                                     \
    }                                                                         \
  } while (0)

static void run_model(uint64_t seed, int steps) {
  rng_state = seed;
  struct model m;
  /* Start anywhere, including above 2^32. */
  uint64_t starts[] = {0, (1ull << 32) - below(200000), 5 * GiB + below(1000), below(1ull << 40)};
  m.base = m.end = starts[below(4)];
  size_t maxes[] = {1, 100, MIN_CAP - 1, MIN_CAP, MIN_CAP + 1, 200 * KiB};
  m.max = maxes[below(6)];
  struct retention r;
  retention_init(&r, m.max, m.base);
  uint8_t *tmp = malloc(400 * KiB);
  assert_non_null(tmp);
  for (int step = 0; step < steps; step++) {
    unsigned op = (unsigned)below(100);
    if (op < 40) { /* append */
      size_t room = m.max - (size_t)(m.end - m.base);
      size_t n = below(4) == 0 ? room : (size_t)below(room + 1);
      if (below(3) == 0 && n > 16)
        n = (size_t)below(16);
      fill(tmp, m.end, n);
      size_t cap = r.cap;
      CHECK(retention_append(&r, tmp, n) == 0, "append %zu", n);
      CHECK(r.cap == cap || r.cap <= m.max, "grew to %zu past max %zu", r.cap, m.max);
      m.end += n;
    } else if (op < 65) { /* trim */
      uint64_t len = m.end - m.base;
      uint64_t upto;
      switch (below(4)) {
      case 0: upto = m.base - below(m.base < 100 ? m.base + 1 : 100); break;
      case 1: upto = m.end + below(1000); break;
      default: upto = m.base + below(len + 1); break;
      }
      retention_trim(&r, upto);
      if (upto > m.base)
        m.base = upto > m.end ? m.end : upto;
    } else if (op < 80) { /* peek a random run */
      uint64_t from = m.base + below(m.end - m.base + 1);
      const uint8_t *p;
      size_t n = retention_peek(&r, from, &p);
      CHECK(n <= m.end - from, "peek at %llu: %zu bytes", (unsigned long long)from, n);
      CHECK((n == 0) == (from == m.end), "peek at %llu returned %zu", (unsigned long long)from, n);
      for (size_t i = 0; i < n; i++)
        CHECK(p[i] == pattern(from + i), "peeked byte at %llu", (unsigned long long)(from + i));
    } else if (op < 90) { /* copy a random range */
      uint64_t from = m.base + below(m.end - m.base + 1);
      size_t n = (size_t)below(m.end - from + 1);
      retention_copy(&r, from, tmp, n);
      for (size_t i = 0; i < n; i++)
        CHECK(tmp[i] == pattern(from + i), "copied byte at %llu", (unsigned long long)(from + i));
    } else if (op < 94) { /* shrink or fit */
      size_t cap = r.cap;
      bool fit = below(2);
      if (fit)
        retention_fit(&r);
      else
        retention_shrink(&r);
      if (m.end == m.base)
        CHECK(r.buf == NULL, "shrink of an empty ring kept its memory");
      else
        CHECK(r.buf != NULL, "shrink freed a non-empty ring");
      CHECK(r.cap <= cap, "shrink grew the ring from %zu to %zu", cap, r.cap);
      CHECK(!fit || r.cap == r.len, "fit left cap %zu for len %zu", r.cap, r.len);
      CHECK(r.peak == r.len, "peak %zu after shrink, len %zu", r.peak, r.len);
    } else if (op < 97) { /* set_max */
      size_t nm = (size_t)below(300 * KiB);
      retention_set_max(&r, nm);
      size_t held = (size_t)(m.end - m.base);
      m.max = nm < held ? held : nm;
    } else { /* reserve */
      size_t room = m.max - (size_t)(m.end - m.base);
      size_t n = (size_t)below(room + 1);
      CHECK(retention_reserve(&r, n) == 0, "reserve %zu", n);
      CHECK(r.cap >= r.len + n, "reserve %zu: cap %zu len %zu", n, r.cap, r.len);
      uint8_t *before = r.buf;
      fill(tmp, m.end, n);
      CHECK(retention_append(&r, tmp, n) == 0, "append after reserve");
      CHECK(n == 0 || r.buf == before, "append reallocated after reserve");
      m.end += n;
    }
    /* Invariants after every step. */
    CHECK(r.base == m.base, "base %llu, model %llu", (unsigned long long)r.base,
          (unsigned long long)m.base);
    CHECK(retention_end(&r) == m.end, "end %llu, model %llu",
          (unsigned long long)retention_end(&r), (unsigned long long)m.end);
    CHECK(r.max == m.max, "max %zu, model %zu", r.max, m.max);
    CHECK(r.len <= r.max, "len %zu above max %zu", r.len, r.max);
    CHECK(r.len <= r.cap, "len %zu above cap %zu", r.len, r.cap);
    CHECK(r.peak >= r.len, "peak %zu below len %zu", r.peak, r.len);
    CHECK(r.cap == 0 || r.head < r.cap, "head %zu out of the ring", r.head);
    CHECK((r.buf == NULL) == (r.cap == 0), "buf/cap disagree");
  }
  /* Final full content check. */
  uint64_t off = m.base;
  while (off < m.end) {
    const uint8_t *p;
    size_t n = retention_peek(&r, off, &p);
    int step = steps;
    CHECK(n > 0, "final peek at %llu empty", (unsigned long long)off);
    for (size_t i = 0; i < n; i++)
      CHECK(p[i] == pattern(off + i), "final byte at %llu", (unsigned long long)(off + i));
    off += n;
  }
  free(tmp);
  retention_clear(&r);
}

static void test_random_model(void **state) {
  (void)state;
  const char *env = getenv("RETENTION_SEED");
  if (env) {
    run_model(strtoull(env, NULL, 10), 20000);
    return;
  }
  for (uint64_t seed = 1; seed <= 100; seed++)
    run_model(seed, 1000);
}

/* A ring past 2 MiB (huge-page storage) written in large, unaligned appends
 * that wrap, with trims in between: every byte reads back as written,
 * across growth and wrap-around. */
static void test_large_ring(void **state) {
  (void)state;
  rng_state = 7;
  size_t max = 6 * 1024 * KiB + 123;
  struct retention r;
  retention_init(&r, max, 3);
  size_t chunk = 700 * KiB;
  uint8_t *tmp = malloc(chunk + 64);
  assert_non_null(tmp);
  for (int step = 0; step < 200; step++) {
    size_t room = retention_room(&r);
    size_t n = (size_t)below((room < chunk ? room : chunk) + 1);
    size_t skew = (size_t)below(64); /* unaligned source */
    fill(tmp + skew, retention_end(&r), n);
    assert_int_equal(retention_append(&r, tmp + skew, n), 0);
    if (below(2))
      retention_trim(&r, r.base + below(r.len + 1));
    if (step % 50 == 49)
      check_content(&r);
  }
  assert_true(r.cap > 2 * 1024 * KiB);
  check_content(&r);
  free(tmp);
  retention_clear(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_empty),
      cmocka_unit_test(test_append_peek_trim),
      cmocka_unit_test(test_wraparound),
      cmocka_unit_test(test_growth_while_wrapped),
      cmocka_unit_test(test_trim_beyond_end),
      cmocka_unit_test(test_shrink),
      cmocka_unit_test(test_shrink_after_burst),
      cmocka_unit_test(test_shrink_wrapped),
      cmocka_unit_test(test_shrink_idle_fits),
      cmocka_unit_test(test_growth_capped_at_max),
      cmocka_unit_test(test_set_max),
      cmocka_unit_test(test_reserve),
      cmocka_unit_test(test_offsets_64bit),
      cmocka_unit_test(test_random_model),
      cmocka_unit_test(test_large_ring),
  };
  return cmocka_run_group_tests_name("retention", tests, NULL, NULL);
}
