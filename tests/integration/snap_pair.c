/* Helpers for the in-process snapshot tests; see snap_pair.h. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "snap_pair.h"

bool snap_durable;

int durable_on(void **state) {
  (void)state;
  snap_durable = true;
  return 0;
}

int durable_off(void **state) {
  (void)state;
  snap_durable = false;
  return 0;
}

tether_ctx *new_ctx(void) {
  tether_ctx *ctx;
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_load_env(cfg), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_DURABLE, snap_durable), 0);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  return ctx;
}

/* Waits (bounded) until s is readable/writable, then does one call. */
int io_wait(tether_session *s, short ev) {
  struct pollfd p = {.fd = tether_fd(s), .events = ev};
  return poll(&p, 1, WAIT_MS);
}

void send_str(tether_session *s, const char *str) {
  size_t n = strlen(str), off = 0;
  while (off < n) {
    ssize_t w = tether_write(s, str + off, n - off);
    if (w == -EAGAIN) {
      assert_true(io_wait(s, POLLOUT) > 0);
      continue;
    }
    assert_true(w > 0);
    off += (size_t)w;
  }
}

/* Reads exactly strlen(want) bytes and compares; returns 0 or the error. */
int expect_str(tether_session *s, const char *want) {
  char buf[256];
  size_t n = strlen(want), got = 0;
  while (got < n) {
    ssize_t r = tether_read(s, buf + got, n - got);
    if (r == -EAGAIN) {
      if (io_wait(s, POLLIN) <= 0)
        return -ETIMEDOUT;
      continue;
    }
    if (r <= 0)
      return r == 0 ? -EPIPE : (int)r;
    got += (size_t)r;
  }
  assert_memory_equal(buf, want, n);
  return 0;
}

void pair_open(struct pair *p) {
  p->sctx = new_ctx();
  p->cctx = new_ctx();
  assert_int_equal(tether_listen(p->sctx, "127.0.0.1", "0", &p->l), 0);
  snprintf(p->port, sizeof(p->port), "%d", tether_listener_port(p->l));
  assert_int_equal(tether_connect(p->cctx, "127.0.0.1", p->port, &p->cli), 0);
  assert_int_equal(tether_accept(p->l, &p->srv), 0);
  tether_set_nonblocking(p->cli, 1);
  tether_set_nonblocking(p->srv, 1);
  send_str(p->cli, "hello");
  assert_int_equal(expect_str(p->srv, "hello"), 0);
  send_str(p->srv, "world");
  assert_int_equal(expect_str(p->cli, "world"), 0);
}

/* The only session of a restored context.  It was restored suspended, but
 * its engine redials at once: on a loaded machine the resume (or its
 * refusal) may be through before we look. */
tether_session *only_session(tether_ctx *ctx) {
  tether_session *s[2];
  assert_int_equal(tether_ctx_sessions(ctx, s, 2), 1);
  tether_state st = tether_session_state(s[0]);
  if (st != TETHER_STATE_SUSPENDED && st != TETHER_STATE_CONNECTED && st != TETHER_STATE_FAILED)
    fail_msg("a restored session is %s", tether_state_name(st));
  tether_set_nonblocking(s[0], 1);
  return s[0];
}

/* Waits until s is connected again (a restored session resumes). */
void wait_connected(tether_session *s) {
  for (int i = 0; i < WAIT_MS / 10 && tether_session_state(s) != TETHER_STATE_CONNECTED; i++)
    usleep(10000);
  assert_int_equal(tether_session_state(s), TETHER_STATE_CONNECTED);
}
