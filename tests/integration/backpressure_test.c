/* A reader that stops reading is back-pressure, not a failure (tether(7),
 * "Failure detection"), over real loopback sockets in one process.
 *
 * The server does not read for five times suspend_ms while the client
 * writes far more than every buffer between them holds: the client's
 * writes block, its TCP connection sits at a zero window, and the session
 * must stay connected throughout -- no suspension, no resume, no resend --
 * and then deliver every byte in order.  (With TCP_USER_TIMEOUT set to
 * suspend_ms, as tether once did, the kernel ended such a connection after
 * suspend_ms of zero window, and a reader stalled under load made its
 * writer resume and resend over and over.) */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <tether/tether.h>

#define SUSPEND_MS 1000 /* heartbeats every 250 ms: a loaded machine misses none by 1 s */
#define STALL_MS (5 * SUSPEND_MS)
#define TOTAL ((size_t)48 << 20) /* well over the socket buffers and retention */
#define CHUNK 65536

struct pair {
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  tether_session *srv, *cli;
};

static void pair_open(struct pair *p) {
  tether_config *cfg = tether_config_new();
  char port[16];
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, SUSPEND_MS), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, SUSPEND_MS / 4), 0);
  assert_int_equal(tether_ctx_new(cfg, &p->sctx), 0);
  assert_int_equal(tether_ctx_new(cfg, &p->cctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(p->sctx, "127.0.0.1", "0", &p->l), 0);
  snprintf(port, sizeof(port), "%d", tether_listener_port(p->l));
  assert_int_equal(tether_connect(p->cctx, "127.0.0.1", port, &p->cli), 0);
  assert_int_equal(tether_accept(p->l, &p->srv), 0);
}

static void pair_close(struct pair *p) {
  tether_close(p->cli);
  tether_close(p->srv);
  tether_listener_close(p->l);
  tether_ctx_free(p->cctx);
  tether_ctx_free(p->sctx);
}

/* Byte i of the stream: not periodic in any buffer size that matters. */
static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 131 + (i >> 11) * 7 + (i >> 19)); }

static void *writer(void *arg) {
  tether_session *s = arg;
  static uint8_t buf[CHUNK];
  uint64_t off = 0;
  while (off < TOTAL) {
    size_t n = TOTAL - off < CHUNK ? TOTAL - off : CHUNK;
    for (size_t i = 0; i < n; i++)
      buf[i] = pattern(off + i);
    ssize_t w = tether_write(s, buf, n);
    if (w <= 0)
      return (void *)(intptr_t)-1;
    off += (uint64_t)w;
  }
  return tether_shutdown(s) == 0 ? NULL : (void *)(intptr_t)-1;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static void test_stalled_reader_is_not_a_failure(void **state) {
  (void)state;
  struct pair p;
  pthread_t t;
  tether_stats cs, ss;
  static uint8_t buf[CHUNK];
  pair_open(&p);
  assert_int_equal(pthread_create(&t, NULL, writer, p.cli), 0);

  /* The stall, watched in steps: the writer fills every buffer and then
   * waits; both sides stay connected. */
  uint64_t sent_mid = 0;
  for (int ms = 0; ms < STALL_MS; ms += SUSPEND_MS / 4) {
    msleep(SUSPEND_MS / 4);
    assert_int_equal(tether_session_state(p.cli), TETHER_STATE_CONNECTED);
    assert_int_equal(tether_session_state(p.srv), TETHER_STATE_CONNECTED);
    if (ms == STALL_MS / 2) {
      assert_int_equal(tether_session_stats(p.cli, &cs), 0);
      sent_mid = cs.bytes_sent;
    }
  }
  assert_int_equal(tether_session_stats(p.cli, &cs), 0);
  fprintf(stderr, "# the writer had written %llu bytes halfway through the stall, %llu at its end\n",
          (unsigned long long)sent_mid, (unsigned long long)cs.bytes_sent);
  assert_true(cs.bytes_sent < TOTAL); /* it was held back: the test stalled it */

  uint64_t got = 0;
  ssize_t n;
  while ((n = tether_read(p.srv, buf, sizeof(buf))) > 0) {
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] != pattern(got + (uint64_t)i))
        fail_msg("byte %llu differs", (unsigned long long)(got + (uint64_t)i));
    got += (uint64_t)n;
  }
  assert_int_equal(n, 0);
  assert_int_equal(got, TOTAL);
  void *rc;
  assert_int_equal(pthread_join(t, &rc), 0);
  assert_null(rc);

  assert_int_equal(tether_session_stats(p.cli, &cs), 0);
  assert_int_equal(tether_session_stats(p.srv, &ss), 0);
  fprintf(stderr, "# client: %llu resumes, %llu bytes resent; server: %llu resumes\n",
          (unsigned long long)cs.reconnects, (unsigned long long)cs.bytes_resent,
          (unsigned long long)ss.reconnects);
  assert_int_equal(cs.reconnects, 0);
  assert_int_equal(ss.reconnects, 0);
  assert_int_equal(cs.bytes_resent, 0);
  pair_close(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stalled_reader_is_not_a_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
