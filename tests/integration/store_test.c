/* Checkpoints through stores (tether_checkpoint, tether_restore_store), in
 * one process over loopback: an application-defined store in memory whose
 * save or commit can be made to fail or to defer, and the built-in file
 * store.  What a failed or pending checkpoint did not commit is checked on
 * the peer: a restore from an older snapshot than the last committed one
 * fails with TETHER_EWINDOW, and a durable side's partner keeps retaining
 * until the commit. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#include "snap_pair.h"

/* ---- an application's store: two slots in memory --------------------- */

struct mem_store {
  uint8_t *saved, *current; /* saved, not committed; committed */
  size_t saved_len, current_len;
  int save_err, commit_err; /* returned instead of doing the work */
  bool defer;               /* commit says TETHER_STORE_PENDING */
  int saves, commits;       /* successful calls */
};

static int mem_save(void *arg, const void *blob, size_t len) {
  struct mem_store *m = arg;
  if (m->save_err)
    return m->save_err;
  uint8_t *copy = malloc(len);
  if (!copy)
    return -ENOMEM;
  memcpy(copy, blob, len);
  free(m->saved);
  m->saved = copy;
  m->saved_len = len;
  m->saves++;
  return 0;
}

static int mem_commit(void *arg) {
  struct mem_store *m = arg;
  if (m->commit_err)
    return m->commit_err;
  if (!m->saved)
    return -EINVAL;
  free(m->current);
  m->current = m->saved;
  m->current_len = m->saved_len;
  m->saved = NULL;
  m->commits++;
  return m->defer ? TETHER_STORE_PENDING : 0;
}

static int mem_load(void *arg, void **blob, size_t *len) {
  struct mem_store *m = arg;
  if (!m->current)
    return -ENOENT;
  if (!(*blob = malloc(m->current_len)))
    return -ENOMEM;
  memcpy(*blob, m->current, m->current_len);
  *len = m->current_len;
  return 0;
}

static const tether_store_ops mem_ops = {.save = mem_save, .commit = mem_commit,
                                         .load = mem_load};

static tether_store *mem_store_new(struct mem_store *m) {
  tether_store *st;
  memset(m, 0, sizeof(*m));
  assert_int_equal(tether_store_new(&mem_ops, m, &st), 0);
  return st;
}

static void mem_store_clear(struct mem_store *m, tether_store *st) {
  tether_store_free(st);
  free(m->saved);
  free(m->current);
}

/* What the server sends after a snapshot: more than the 1024-byte chunk
 * a durable side always keeps. */
#define BIG (64 * 1024)
static char big[BIG + 1];

/* Reads n bytes, all 'z'. */
static void read_all_z(tether_session *s, size_t n) {
  static char buf[16384];
  while (n > 0) {
    ssize_t r = tether_read(s, buf, n < sizeof(buf) ? n : sizeof(buf));
    if (r == -EAGAIN) {
      assert_true(io_wait(s, POLLIN) > 0);
      continue;
    }
    assert_true(r > 0);
    for (ssize_t i = 0; i < r; i++)
      assert_int_equal(buf[i], 'z');
    n -= (size_t)r;
  }
}

/* The client "crashes" and comes back from the store; its application
 * writes again what it wrote since the store's snapshot ("after-1"), then
 * something new, which the server must get next; the client receives
 * again the resent bytes ('z') the server sent since the snapshot.  Only works if the
 * store's snapshot is the last one committed. */
static void crash_restore_replay(struct pair *p, tether_store *st, size_t resent) {
  tether_ctx_free(p->cctx);
  assert_int_equal(tether_restore_store(NULL, st, &p->cctx), 0);
  p->cli = only_session(p->cctx);
  send_str(p->cli, "after-1");
  send_str(p->cli, "new");
  assert_int_equal(expect_str(p->srv, "new"), 0);
  read_all_z(p->cli, resent); /* received again */
  send_str(p->srv, "more");
  assert_int_equal(expect_str(p->cli, "more"), 0);
  wait_connected(p->cli);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_new_refuses_incomplete_ops(void **state) {
  (void)state;
  tether_store *st = (tether_store *)&st; /* must be reset to NULL */
  tether_store_ops ops = mem_ops;
  ops.save = NULL;
  assert_int_equal(tether_store_new(&ops, NULL, &st), -EINVAL);
  assert_null(st);
  ops = mem_ops;
  ops.load = NULL;
  assert_int_equal(tether_store_new(&ops, NULL, &st), -EINVAL);
  assert_int_equal(tether_store_new(NULL, NULL, &st), -EINVAL);
  assert_int_equal(tether_store_file_new("", &st), -EINVAL);
  assert_int_equal(tether_checkpoint(NULL, NULL), -EINVAL);
  /* commit may be left out: save alone is durable. */
  ops = mem_ops;
  ops.commit = NULL;
  assert_int_equal(tether_store_new(&ops, NULL, &st), 0);
  tether_store_free(st);
}

/* Checkpoint, crash, restore through an application's store; the commit
 * reached the peer, so the rollback resumes. */
static void test_mem_store_rollback(void **state) {
  (void)state;
  struct pair p;
  struct mem_store m;
  tether_store *st = mem_store_new(&m);
  tether_ctx *none;
  assert_int_equal(tether_restore_store(NULL, st, &none), -ENOENT);
  assert_null(none);
  pair_open(&p);
  assert_int_equal(tether_checkpoint_blob(p.cctx, st, "not a snapshot", 14), TETHER_EPROTO);
  assert_int_equal(m.saves, 0);
  assert_int_equal(tether_checkpoint(p.cctx, st), 0);
  assert_int_equal(m.saves, 1);
  assert_int_equal(m.commits, 1);
  send_str(p.cli, "after-1");
  assert_int_equal(expect_str(p.srv, "after-1"), 0);
  crash_restore_replay(&p, st, 0);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
  mem_store_clear(&m, st);
}

static uint64_t retained(tether_session *s) {
  tether_stats st;
  assert_int_equal(tether_session_stats(s, &st), 0);
  return st.bytes_retained;
}

/* A checkpoint whose save (or commit) fails returns the store's error and
 * commits nothing: the store's previous snapshot is still the last one
 * committed, so a restore from it resumes (had the failed one been
 * committed to the peer, the peer would refuse it with TETHER_EWINDOW). */
static void failing_checkpoint(bool in_save) {
  struct pair p;
  struct mem_store m;
  tether_store *st = mem_store_new(&m);
  pair_open(&p);
  assert_int_equal(tether_checkpoint(p.cctx, st), 0);
  uint8_t *committed = m.current;
  send_str(p.cli, "after-1");
  assert_int_equal(expect_str(p.srv, "after-1"), 0);
  send_str(p.srv, big);
  read_all_z(p.cli, BIG);
  if (in_save)
    m.save_err = -EIO;
  else
    m.commit_err = -EIO;
  assert_int_equal(tether_checkpoint(p.cctx, st), -EIO);
  assert_int_equal(tether_checkpoint(p.cctx, st), -EIO);
  assert_ptr_equal(m.current, committed);
  assert_int_equal(m.commits, 1);
  /* The server keeps the bytes only the failed checkpoints cover: nothing
   * told it they were durable. */
  usleep(500 * 1000);
  assert_true(retained(p.srv) >= BIG);
  m.save_err = m.commit_err = 0;
  crash_restore_replay(&p, st, BIG);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
  mem_store_clear(&m, st);
}

static void test_save_fails(void **state) {
  (void)state;
  failing_checkpoint(true);
}

static void test_commit_fails(void **state) {
  (void)state;
  failing_checkpoint(false);
}

/* A store that makes its blob durable later: tether_checkpoint says
 * TETHER_STORE_PENDING and the peer keeps every byte the durable side
 * received until the application commits that blob itself. */
static void test_deferred_commit(void **state) {
  (void)state;
  struct pair p;
  struct mem_store m;
  tether_store *st = mem_store_new(&m);
  m.defer = true;
  pair_open(&p);
  send_str(p.srv, big);
  read_all_z(p.cli, BIG);
  assert_true(retained(p.srv) >= BIG);
  assert_int_equal(tether_checkpoint(p.cctx, st), TETHER_STORE_PENDING);
  assert_int_equal(m.commits, 1);
  /* Not committed: heartbeats (100 ms here) do not report it. */
  usleep(500 * 1000);
  assert_true(retained(p.srv) >= BIG);
  /* The application's own durable write is done: */
  assert_int_equal(tether_snapshot_commit(p.cctx, m.current, m.current_len), 0);
  for (int i = 0; i < WAIT_MS / 10 && retained(p.srv) >= BIG; i++)
    usleep(10000);
  assert_true(retained(p.srv) < BIG);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
  mem_store_clear(&m, st);
}

static size_t dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  size_t n = 0;
  assert_non_null(d);
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

/* The built-in file store: nothing before the first checkpoint, one file
 * of mode 0600 after each (no temporary file left), a rollback from it. */
static void test_file_store(void **state) {
  (void)state;
  struct pair p;
  struct stat sb;
  tether_store *st, *nodir;
  tether_ctx *none;
  char dir[] = "/tmp/tether-store-test-XXXXXX", path[64], missing[80];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/snap", dir);
  snprintf(missing, sizeof(missing), "%s/no/such/dir/snap", dir);
  assert_int_equal(tether_store_file_new(path, &st), 0);
  assert_int_equal(tether_store_file_new(missing, &nodir), 0);
  assert_int_equal(tether_restore_store(NULL, st, &none), -ENOENT);
  pair_open(&p);
  assert_int_equal(tether_checkpoint(p.cctx, nodir), -ENOENT);
  assert_int_equal(tether_checkpoint(p.cctx, st), 0);
  assert_int_equal(tether_checkpoint(p.cctx, st), 0); /* replaces it */
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  assert_int_equal(dir_entries(dir), 1);
  send_str(p.cli, "after-1");
  assert_int_equal(expect_str(p.srv, "after-1"), 0);
  crash_restore_replay(&p, st, 0);
  /* A file that is not a snapshot is refused. */
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("not a snapshot", f);
  fclose(f);
  assert_int_equal(tether_restore_store(NULL, st, &none), TETHER_EPROTO);
  tether_store_free(st);
  tether_store_free(nodir);
  unlink(path);
  rmdir(dir);
  tether_ctx_free(p.cctx);
  tether_ctx_free(p.sctx);
}

int main(void) {
  /* Heartbeats every 100 ms, so a commit not reported would have been. */
  setenv("TETHER_HEARTBEAT_MS", "100", 0);
  memset(big, 'z', BIG);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_refuses_incomplete_ops),
      cmocka_unit_test_setup_teardown(test_mem_store_rollback, durable_on, durable_off),
      cmocka_unit_test_setup_teardown(test_save_fails, durable_on, durable_off),
      cmocka_unit_test_setup_teardown(test_commit_fails, durable_on, durable_off),
      cmocka_unit_test_setup_teardown(test_deferred_commit, durable_on, durable_off),
      cmocka_unit_test_setup_teardown(test_file_store, durable_on, durable_off),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
