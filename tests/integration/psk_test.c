/* Session setup with and without a pre-shared key, over real loopback
 * sockets in one process: matching keys (or none on either side) connect
 * and carry bytes both ways; any mismatch -- different keys, or a key on
 * one side only -- fails tether_connect with TETHER_EAUTH. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <tether/tether.h>

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  char port[16];
  pthread_t thread;
};

/* Echoes one byte on every session it accepts, until the listener closes. */
static void *serve(void *arg) {
  struct server *sv = arg;
  tether_session *s;
  while (tether_accept(sv->l, &s) == 0) {
    char c;
    if (tether_read(s, &c, 1) == 1)
      (void)tether_write(s, &c, 1);
    tether_close(s);
  }
  return NULL;
}

static tether_config *config_with_psk(const char *psk) {
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  if (psk)
    assert_int_equal(tether_config_set_psk(cfg, psk, strlen(psk)), 0);
  return cfg;
}

static void server_start(struct server *sv, const char *psk) {
  tether_config *cfg = config_with_psk(psk);
  assert_int_equal(tether_ctx_new(cfg, &sv->ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sv->ctx, "127.0.0.1", "0", &sv->l), 0);
  snprintf(sv->port, sizeof(sv->port), "%d", tether_listener_port(sv->l));
  assert_int_equal(pthread_create(&sv->thread, NULL, serve, sv), 0);
}

static void server_stop(struct server *sv) {
  tether_listener_close(sv->l);
  pthread_join(sv->thread, NULL);
  tether_ctx_free(sv->ctx);
}

/* Connects with the client's key; returns tether_connect's result and, on
 * success, checks a byte's round trip. */
static int try_connect(const char *server_psk, const char *client_psk) {
  struct server sv;
  tether_ctx *ctx;
  tether_session *s = NULL;
  server_start(&sv, server_psk);
  tether_config *cfg = config_with_psk(client_psk);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  int rc = tether_connect(ctx, "127.0.0.1", sv.port, &s);
  if (rc == 0) {
    char c = 'x';
    assert_int_equal(tether_write(s, &c, 1), 1);
    c = 0;
    assert_int_equal(tether_read(s, &c, 1), 1);
    assert_int_equal(c, 'x');
    assert_int_equal(tether_close(s), 0);
  } else {
    assert_null(s);
  }
  tether_ctx_free(ctx);
  server_stop(&sv);
  return rc;
}

static void test_no_psk(void **state) {
  (void)state;
  assert_int_equal(try_connect(NULL, NULL), 0);
}

static void test_same_psk(void **state) {
  (void)state;
  assert_int_equal(try_connect("correct horse", "correct horse"), 0);
}

static void test_different_psk(void **state) {
  (void)state;
  assert_int_equal(try_connect("correct horse", "battery staple"), TETHER_EAUTH);
}

static void test_psk_on_server_only(void **state) {
  (void)state;
  assert_int_equal(try_connect("correct horse", NULL), TETHER_EAUTH);
}

static void test_psk_on_client_only(void **state) {
  (void)state;
  assert_int_equal(try_connect(NULL, "correct horse"), TETHER_EAUTH);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_psk),
      cmocka_unit_test(test_same_psk),
      cmocka_unit_test(test_different_psk),
      cmocka_unit_test(test_psk_on_server_only),
      cmocka_unit_test(test_psk_on_client_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
