/* See honest.h. */
#include "honest.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "wire/crypto.h"

#define PAT_LEN HONEST_PAT_LEN
#define CHUNK ((size_t)256 << 10)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

struct honest H;

static void on_state(tether_session *s, tether_state st, int err, void *arg) {
  (void)s, (void)err, (void)arg;
  if (st == TETHER_STATE_SUSPENDED)
    __atomic_fetch_add(&H.suspends, 1, __ATOMIC_RELAXED);
}

/* Writes the pattern, paced at H.rate, until H.stop; then shuts down. */
static void *honest_write(void *arg) {
  (void)arg;
  uint64_t rate = 0, mark_ns = 0, mark_bytes = 0;
  while (!LOAD(H.stop)) {
    uint64_t r = LOAD(H.rate), sent = LOAD(H.sent), now = now_ns();
    if (r != rate) {
      rate = r;
      mark_ns = now;
      mark_bytes = sent;
    }
    if (rate) {
      uint64_t due = mark_ns + (sent - mark_bytes) * 1000000000u / rate;
      if (due > now) {
        sleep_ns(due - now < 10000000u ? due - now : 10000000u);
        continue;
      }
    }
    size_t off = sent % PAT_LEN;
    ssize_t w = tether_write(H.s, H.pat + off, min_sz(CHUNK / 4, PAT_LEN - off));
    if (w == -EINTR)
      continue;
    if (w < 0) {
      STORE(H.err, (int)w);
      return NULL;
    }
    __atomic_fetch_add(&H.sent, (uint64_t)w, __ATOMIC_RELEASE);
  }
  int rc = tether_shutdown(H.s);
  if (rc < 0)
    STORE(H.err, rc);
  return NULL;
}

/* Compares what came back with the pattern at stream position pos. */
static void honest_compare(const uint8_t *b, size_t n, uint64_t pos) {
  while (n > 0) {
    size_t off = pos % PAT_LEN, k = min_sz(n, PAT_LEN - off);
    if (LOAD(H.bad_at) < 0 && memcmp(b, H.pat + off, k) != 0)
      for (size_t i = 0; i < k; i++)
        if (b[i] != H.pat[off + i]) {
          STORE(H.bad_at, (int64_t)(pos + i));
          break;
        }
    b += k;
    n -= k;
    pos += k;
  }
}

/* Reads the echo to EOF, comparing every byte. */
static void *honest_read(void *arg) {
  (void)arg;
  uint8_t *buf = malloc(CHUNK);
  if (!buf) {
    STORE(H.err, -ENOMEM);
    return NULL;
  }
  for (;;) {
    ssize_t n = tether_read(H.s, buf, CHUNK);
    if (n == 0)
      break;
    if (n == -EINTR)
      continue;
    if (n < 0) {
      STORE(H.err, (int)n);
      break;
    }
    honest_compare(buf, (size_t)n, LOAD(H.received));
    __atomic_fetch_add(&H.received, (uint64_t)n, __ATOMIC_RELEASE);
  }
  free(buf);
  return NULL;
}

void honest_start(const char *port, uint64_t rate) {
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_load_env(cfg), 0);
  /* Its suspensions say why on stderr: it must have none. */
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_LOG_LEVEL, TETHER_LOG_INFO), 0);
  tether_config_set_state_cb(cfg, on_state, NULL);
  assert_int_equal(tether_ctx_new(cfg, &H.ctx), 0);
  tether_config_free(cfg);
  assert_non_null(H.pat = malloc(PAT_LEN));
  assert_int_equal(crypto_random(H.pat, PAT_LEN), 0);
  H.bad_at = -1;
  H.rate = rate;
  assert_int_equal(tether_connect(H.ctx, "127.0.0.1", port, &H.s), 0);
  assert_int_equal(tether_session_id(H.s, H.id), 0);
  assert_int_equal(pthread_create(&H.writer, NULL, honest_write, NULL), 0);
  assert_int_equal(pthread_create(&H.reader, NULL, honest_read, NULL), 0);
  /* Echoed bytes: the server has accepted the session and runs its thread
   * (the baselines include it). */
  for (int i = 0; i < 1000 && LOAD(H.received) == 0; i++)
    sleep_ns(10000000u);
  assert_true(LOAD(H.received) > 0);
}

int honest_finish(int timeout_s) {
  struct timespec until;
  STORE(H.stop, 1);
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_s;
  if (pthread_timedjoin_np(H.writer, NULL, &until) != 0)
    return -ETIMEDOUT;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_s;
  if (pthread_timedjoin_np(H.reader, NULL, &until) != 0)
    return -ETIMEDOUT;
  H.joined = true;
  return 0;
}
