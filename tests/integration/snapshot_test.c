/* Snapshots and restores over real loopback sockets, in one process: a
 * context is snapshotted, dropped the way a crash drops it (its peers see
 * resets, not EOF), and restored; its sessions resume and carry on, or --
 * when the snapshot is older than what the peer already received -- both
 * sides fail with TETHER_EWINDOW.  Damaged snapshots are refused. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#define WAIT_MS 10000

static tether_ctx *new_ctx(void) {
  tether_ctx *ctx;
  assert_int_equal(tether_ctx_new(NULL, &ctx), 0);
  return ctx;
}

/* Waits (bounded) until s is readable/writable, then does one call. */
static ssize_t io_wait(tether_session *s, short ev) {
  struct pollfd p = {.fd = tether_fd(s), .events = ev};
  return poll(&p, 1, WAIT_MS);
}

static void send_str(tether_session *s, const char *str) {
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
static int expect_str(tether_session *s, const char *want) {
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

struct pair {
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  tether_session *srv, *cli;
  char port[16];
};

static void pair_open(struct pair *p) {
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

static tether_ctx *restore(const void *blob, size_t len) {
  tether_ctx *ctx;
  assert_int_equal(tether_restore(NULL, blob, len, &ctx), 0);
  return ctx;
}

/* The only session of a restored context. */
static tether_session *only_session(tether_ctx *ctx) {
  tether_session *s[2];
  assert_int_equal(tether_ctx_sessions(ctx, s, 2), 1);
  assert_int_equal(tether_session_state(s[0]), TETHER_STATE_SUSPENDED);
  tether_set_nonblocking(s[0], 1);
  return s[0];
}

static void test_client_restore(void **state) {
  (void)state;
  struct pair p;
  void *blob;
  size_t len;
  uint8_t id1[16], id2[16];
  pair_open(&p);
  assert_int_equal(tether_snapshot(p.cctx, &blob, &len), 0);
  tether_session_id(p.cli, id1);
  tether_ctx_free(p.cctx); /* the client "crashes" */
  p.cctx = restore(blob, len);
  p.cli = only_session(p.cctx);
  tether_session_id(p.cli, id2);
  assert_memory_equal(id1, id2, 16);
  send_str(p.cli, "again");
  assert_int_equal(expect_str(p.srv, "again"), 0);
  send_str(p.srv, "back");
  assert_int_equal(expect_str(p.cli, "back"), 0);
  assert_int_equal(tether_session_state(p.cli), TETHER_STATE_CONNECTED);
  free(blob);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

static void test_server_restore(void **state) {
  (void)state;
  struct pair p;
  void *blob;
  size_t len;
  pair_open(&p);
  assert_int_equal(tether_snapshot(p.sctx, &blob, &len), 0);
  tether_ctx_free(p.sctx); /* the server "crashes" */
  p.sctx = restore(blob, len);
  tether_listener *ls[2];
  assert_int_equal(tether_ctx_listeners(p.sctx, ls, 2), 1);
  assert_int_equal(tether_listener_port(ls[0]), atoi(p.port));
  p.srv = only_session(p.sctx);
  send_str(p.cli, "again");
  assert_int_equal(expect_str(p.srv, "again"), 0);
  send_str(p.srv, "back");
  assert_int_equal(expect_str(p.cli, "back"), 0);
  /* New sessions are accepted by the restored listener too. */
  tether_session *c2, *s2;
  assert_int_equal(tether_connect(p.cctx, "127.0.0.1", p.port, &c2), 0);
  assert_int_equal(tether_accept(ls[0], &s2), 0);
  free(blob);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

/* A snapshot older than what the peer received cannot resume yet: both
 * sides fail with TETHER_EWINDOW instead of delivering bytes twice. */
static void test_stale_snapshot_refused(void **state) {
  (void)state;
  struct pair p;
  void *blob;
  size_t len;
  pair_open(&p);
  assert_int_equal(tether_snapshot(p.cctx, &blob, &len), 0);
  send_str(p.cli, "after");
  assert_int_equal(expect_str(p.srv, "after"), 0);
  tether_ctx_free(p.cctx);
  p.cctx = restore(blob, len);
  p.cli = only_session(p.cctx);
  assert_int_equal(expect_str(p.cli, "x"), TETHER_EWINDOW);
  assert_int_equal(expect_str(p.srv, "x"), TETHER_EWINDOW);
  assert_int_equal(tether_session_error(p.cli), TETHER_EWINDOW);
  free(blob);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

static void test_damaged_snapshots(void **state) {
  (void)state;
  struct pair p;
  void *blob;
  size_t len;
  tether_ctx *ctx;
  pair_open(&p);
  assert_int_equal(tether_snapshot(p.cctx, &blob, &len), 0);
  uint8_t *b = blob;
  for (size_t cut = 0; cut < len; cut += len / 7 + 1)
    assert_int_equal(tether_restore(NULL, b, cut, &ctx), TETHER_EPROTO);
  b[len / 2] ^= 1;
  assert_int_equal(tether_restore(NULL, b, len, &ctx), TETHER_EPROTO);
  b[len / 2] ^= 1;
  b[11] = 9; /* format version 9 */
  assert_int_equal(tether_restore(NULL, b, len, &ctx), TETHER_EVERSION);
  b[11] = 1;
  assert_int_equal(tether_restore(NULL, "hello, world, hello, world, ...", 31, &ctx),
                   TETHER_EPROTO);
  free(blob);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

static void test_file_store(void **state) {
  (void)state;
  struct pair p;
  struct stat st;
  char dir[] = "/tmp/tether-snapshot-test-XXXXXX", path[64];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/snap", dir);
  pair_open(&p);
  assert_int_equal(tether_snapshot_save(p.cctx, path), 0);
  assert_int_equal(tether_snapshot_save(p.cctx, path), 0); /* replaces it */
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  tether_ctx_free(p.cctx);
  assert_int_equal(tether_restore_file(NULL, path, &p.cctx), 0);
  p.cli = only_session(p.cctx);
  send_str(p.cli, "file");
  assert_int_equal(expect_str(p.srv, "file"), 0);
  tether_ctx *bad;
  assert_int_equal(tether_restore_file(NULL, dir, &bad), TETHER_EPROTO);
  unlink(path);
  rmdir(dir);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_restore),
      cmocka_unit_test(test_server_restore),
      cmocka_unit_test(test_stale_snapshot_refused),
      cmocka_unit_test(test_damaged_snapshots),
      cmocka_unit_test(test_file_store),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
