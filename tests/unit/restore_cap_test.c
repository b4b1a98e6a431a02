/* A snapshot is input too: the receive buffer size it recorded for a
 * session's peer, and the send buffer size it recorded for our side, are
 * capped by the restoring context's policy (TETHER_OPT_PEER_RCVBUF_MAX_BYTES,
 * this host's buffer limits) like a peer's declaration, so that a forged or
 * foreign snapshot cannot size a restored session's retention.  Through the
 * public tether_restore(), looking at the restored session's core. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/engine.h"
#include "wire/snapshot.h"

#define MIB ((uint64_t)1 << 20)

static ProtobufCBinaryData bin(uint8_t *p, size_t n) {
  ProtobufCBinaryData b = {n, p};
  return b;
}

/* A suspended server session whose snapshot claims huge buffers. */
static void make_blob(uint8_t **blob, size_t *len) {
  static uint8_t id[16] = {1, 2, 3}, key[32] = {4, 5, 6};
  Tether__Snap__Session s = TETHER__SNAP__SESSION__INIT;
  s.id = bin(id, sizeof(id));
  s.k_ctl_c2s = s.k_ctl_s2c = s.k_resume_c = s.k_resume_s = bin(key, sizeof(key));
  s.listener = -1;
  s.heartbeat_ms = 1000;
  s.suspend_ms = 3000;
  s.reconnect_max_ms = 1000;
  s.give_up_s = 3600;
  s.retain_max = 64 * MIB;
  s.local_sndbuf_max = (uint64_t)1 << 60;
  s.peer_rcvbuf_max = (uint64_t)1 << 60;
  Tether__Snap__Session *ss[] = {&s};
  snap_msg m = TETHER__SNAP__SNAPSHOT__INIT;
  m.n_sessions = 1;
  m.sessions = ss;
  assert_int_equal(snap_seal(&m, 1, blob, len), 0);
}

/* Restores the blob with the given cap (0: the default) and checks its
 * session's buffer sizes. */
static void check_restore(int64_t cap, uint64_t want_rcvbuf) {
  uint8_t *blob;
  size_t len;
  make_blob(&blob, &len);
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, cap), 0);
  tether_ctx *ctx;
  assert_int_equal(tether_restore(cfg, blob, len, &ctx), 0);
  tether_session *s;
  assert_int_equal(tether_ctx_sessions(ctx, &s, 1), 1);
  session_lock(s);
  assert_int_equal(s->core.peer_rcvbuf_max, want_rcvbuf);
  assert_true(s->core.local_sndbuf_max <= sock_host_sndbuf_max());
  assert_int_equal(s->core.ret.max, s->core.local_sndbuf_max + want_rcvbuf);
  session_unlock(s);
  tether_ctx_free(ctx);
  tether_config_free(cfg);
  free(blob);
}

static void test_restore_capped(void **state) {
  (void)state;
  check_restore(1 * MIB, 1 * MIB);
  check_restore(0, sock_host_rcvbuf_max());
}

static void test_option(void **state) {
  (void)state;
  tether_config *cfg = tether_config_new();
  int64_t v = -1;
  assert_int_equal(tether_config_get(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, &v), 0);
  assert_int_equal(v, 0); /* the default: this host's maximum */
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, 1000), -EINVAL);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, -1), -EINVAL);
  assert_int_equal(
      tether_config_set(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, ((int64_t)1 << 40) + 1), -EINVAL);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, 64 * 1024), 0);
  assert_int_equal(setenv("TETHER_PEER_RCVBUF_MAX_BYTES", "8388608", 1), 0);
  assert_int_equal(tether_config_load_env(cfg), 0);
  assert_int_equal(unsetenv("TETHER_PEER_RCVBUF_MAX_BYTES"), 0);
  assert_int_equal(tether_config_get(cfg, TETHER_OPT_PEER_RCVBUF_MAX_BYTES, &v), 0);
  assert_int_equal(v, 8 * MIB);
  tether_config_free(cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_restore_capped),
      cmocka_unit_test(test_option),
  };
  return cmocka_run_group_tests_name("restore_cap", tests, NULL, NULL);
}
