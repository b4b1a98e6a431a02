/* What a peer sees when a process ends with sessions alive, over real
 * loopback sockets: the server is this process, each client another process
 * (this program run again) that makes its own context and then leaves
 * through exit() -- as a program returning from main does.
 *
 *   - Not durable, sessions open: exit closes them like the kernel closes
 *     sockets; the server reads every byte, then end of stream.
 *   - Durable: exit looks like a crash (the process may come back from its
 *     snapshot); the server's session suspends, no end of stream.
 *   - Write, close, free, exit before the reader reads: everything is
 *     delivered (tether_ctx_free lingers), then end of stream.
 *   - The same with a reader that stops: after the linger time the reader
 *     fails with TETHER_EABORTED at once, not after give_up_s.
 *   - exit() while the engine thread is busy redialling never crashes
 *     (it used to run into OpenSSL's exit-time cleanup). */
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#define WAIT_MS 30000
/* More than the kernel's buffers hold while the reader does not read. */
#define BULK (48 * 1024 * 1024)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  char port[16];
};

static tether_ctx *ctx_with(int durable, int linger_s) {
  tether_config *cfg = tether_config_new();
  tether_ctx *ctx;
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, 200), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 1000), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 50), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_DURABLE, durable), 0);
  if (linger_s >= 0)
    assert_int_equal(tether_config_set(cfg, TETHER_OPT_LINGER_S, linger_s), 0);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  return ctx;
}

static void server_start(struct server *sv) {
  sv->ctx = ctx_with(0, -1);
  assert_int_equal(tether_listen(sv->ctx, "127.0.0.1", "0", &sv->l), 0);
  snprintf(sv->port, sizeof(sv->port), "%d", tether_listener_port(sv->l));
}

/* ---- the children ----------------------------------------------------------
 * Each is this program run again ("exit_test child ROLE PORT ARG"): a fresh
 * process, as a client program would be.  (A plain fork() would inherit
 * the parent's engine thread's locks, OpenSSL's among them, in whatever
 * state they were.)  No cmocka there: a failure is a non-zero exit. */

static char self[4096];

static int child_connect(const char *port, int durable, int linger_s, tether_ctx **ctx,
                         tether_session **s) {
  tether_config *cfg = tether_config_new();
  if (!cfg || tether_config_set(cfg, TETHER_OPT_DURABLE, durable) < 0 ||
      (linger_s >= 0 && tether_config_set(cfg, TETHER_OPT_LINGER_S, linger_s) < 0) ||
      tether_ctx_new(cfg, ctx) < 0)
    return -1;
  tether_config_free(cfg);
  return tether_connect(*ctx, "127.0.0.1", port, s) < 0 ? -1 : 0;
}

static int write_all(tether_session *s, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = tether_write(s, p, n);
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static uint8_t pattern(size_t i) { return (uint8_t)(i * 7 + i / 4099); }

/* "open PORT DURABLE": writes "bye now", then leaves through exit() with
 * the session open. */
static int child_open(const char *port, int durable) {
  tether_ctx *ctx;
  tether_session *s;
  if (child_connect(port, durable, -1, &ctx, &s) < 0 ||
      write_all(s, (const uint8_t *)"bye now", 7) < 0)
    return 2;
  exit(0);
}

/* "write PORT LINGER_S REPORT_FD": writes as many of BULK bytes as the
 * kernel's buffers take without waiting (the reader reads nothing yet),
 * tells how many on REPORT_FD, closes, frees its context and exits. */
static int child_write(const char *port, int linger_s, int report) {
  tether_ctx *ctx;
  tether_session *s;
  uint8_t *b = malloc(BULK);
  size_t off = 0;
  if (!b || child_connect(port, 0, linger_s, &ctx, &s) < 0)
    return 2;
  for (size_t i = 0; i < BULK; i++)
    b[i] = pattern(i);
  tether_set_nonblocking(s, 1);
  while (off < BULK) {
    ssize_t w = tether_write(s, b + off, BULK - off);
    if (w == -EAGAIN)
      break;
    if (w <= 0)
      return 3;
    off += (size_t)w;
  }
  free(b);
  if (write(report, &off, sizeof(off)) != (ssize_t)sizeof(off))
    return 4;
  tether_close(s);
  tether_ctx_free(ctx);
  exit(0);
}

/* "busy - ROUND": a server of its own and 64 sessions to it; the server
 * goes, the sessions redial (each attempt draws random numbers from
 * OpenSSL), and the process exits meanwhile. */
static int child_busy(int round) {
  tether_config *cfg = tether_config_new();
  tether_ctx *cctx, *sctx;
  tether_listener *l;
  tether_session *s[64];
  char port[16];
  if (!cfg || tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 1) < 0 ||
      tether_config_set(cfg, TETHER_OPT_LINGER_S, 0) < 0 || tether_ctx_new(cfg, &cctx) < 0 ||
      tether_ctx_new(NULL, &sctx) < 0 || tether_listen(sctx, "127.0.0.1", "0", &l) < 0)
    return 2;
  tether_config_free(cfg);
  snprintf(port, sizeof(port), "%d", tether_listener_port(l));
  for (int i = 0; i < 64; i++)
    if (tether_connect(cctx, "127.0.0.1", port, &s[i]) < 0)
      return 3;
  tether_ctx_free(sctx); /* the server is gone: 64 sessions redial */
  msleep(round % 4 * 5);
  exit(0);
}

static int child_main(char **argv) {
  const char *role = argv[2], *port = argv[3];
  int arg = atoi(argv[4]), arg2 = argv[5] ? atoi(argv[5]) : 0;
  if (!strcmp(role, "open"))
    return child_open(port, arg);
  if (!strcmp(role, "write"))
    return child_write(port, arg, arg2);
  if (!strcmp(role, "busy"))
    return child_busy(arg);
  return 100;
}

/* Runs "child ROLE PORT A [B]" in a new process. */
static pid_t spawn(const char *role, const char *port, int a, int b) {
  char sa[16], sb[16];
  snprintf(sa, sizeof(sa), "%d", a);
  snprintf(sb, sizeof(sb), "%d", b);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execl(self, self, "child", role, port, sa, sb, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int wait_child(pid_t pid) {
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return st;
}

/* ---- the server's side ---- */

static tether_session *accept_one(struct server *sv) {
  tether_session *s;
  assert_int_equal(tether_accept(sv->l, &s), 0);
  tether_set_nonblocking(s, 1);
  return s;
}

/* Reads up to `cap` bytes (into buf if not NULL) until end of stream, an
 * error, or `ms` without news.  Returns 0 at end of stream, the error, or
 * -ETIMEDOUT; *got counts the bytes. */
static int read_until_end(tether_session *s, uint8_t *buf, size_t cap, int ms, size_t *got) {
  static uint8_t scratch[65536];
  *got = 0;
  for (;;) {
    ssize_t n = tether_read(s, scratch, sizeof(scratch));
    if (n > 0) {
      if (buf && *got + (size_t)n <= cap)
        memcpy(buf + *got, scratch, (size_t)n);
      *got += (size_t)n;
      continue;
    }
    if (n == 0)
      return 0;
    if (n != -EAGAIN)
      return (int)n;
    struct pollfd p = {.fd = tether_fd(s), .events = POLLIN};
    if (poll(&p, 1, ms) == 0)
      return -ETIMEDOUT;
  }
}

static void test_exit_closes_open_sessions(void **state) {
  (void)state;
  struct server sv;
  server_start(&sv);
  pid_t pid = spawn("open", sv.port, 0, 0);
  tether_session *s = accept_one(&sv);
  uint8_t buf[64];
  size_t got;
  assert_int_equal(read_until_end(s, buf, sizeof(buf), 5000, &got), 0);
  assert_int_equal(got, 7);
  assert_memory_equal(buf, "bye now", 7);
  assert_int_equal(wait_child(pid), 0);
  tether_close(s);
  tether_ctx_free(sv.ctx);
}

static void test_exit_of_durable_process_is_a_crash(void **state) {
  (void)state;
  struct server sv;
  server_start(&sv);
  pid_t pid = spawn("open", sv.port, 1, 0);
  tether_session *s = accept_one(&sv);
  uint8_t buf[64];
  size_t got;
  assert_int_equal(wait_child(pid), 0);
  /* No end of stream: it may come back from a snapshot.  (Its bytes, if
   * they were read before its reset arrived: unread, they die with the
   * connection, for the resume to resend them.) */
  assert_int_equal(read_until_end(s, buf, sizeof(buf), 1500, &got), -ETIMEDOUT);
  assert_true(got == 0 || got == 7);
  uint64_t end = now_ms() + WAIT_MS;
  while (tether_session_state(s) != TETHER_STATE_SUSPENDED && now_ms() < end)
    msleep(10);
  assert_int_equal(tether_session_state(s), TETHER_STATE_SUSPENDED);
  tether_close(s);
  tether_ctx_free(sv.ctx);
}

/* The bytes a writer reported it wrote. */
static size_t reported(int fd) {
  size_t n = 0;
  assert_int_equal(read(fd, &n, sizeof(n)), sizeof(n));
  return n;
}

static void test_write_close_exit_delivers_everything(void **state) {
  (void)state;
  struct server sv;
  int p[2];
  assert_int_equal(pipe(p), 0);
  server_start(&sv);
  pid_t pid = spawn("write", sv.port, -1, p[1]);
  tether_session *s = accept_one(&sv);
  size_t wrote = reported(p[0]);
  /* Part of it is still in the writer's send queue when it closes: its
   * process waits in tether_ctx_free until all is delivered (an earlier
   * one gave up after 2 s and reset the connection, and that part was
   * lost), and the reader starts 3 s later. */
  msleep(3000);
  uint8_t *buf = malloc(BULK);
  size_t got;
  assert_non_null(buf);
  assert_int_equal(read_until_end(s, buf, BULK, WAIT_MS, &got), 0);
  assert_int_equal(got, wrote);
  for (size_t i = 0; i < got; i++)
    if (buf[i] != pattern(i))
      fail_msg("byte %zu differs", i);
  assert_int_equal(wait_child(pid), 0);
  free(buf);
  close(p[0]);
  close(p[1]);
  tether_close(s);
  tether_ctx_free(sv.ctx);
}

static void test_linger_over_aborts_the_reader(void **state) {
  (void)state;
  struct server sv;
  int p[2];
  assert_int_equal(pipe(p), 0);
  server_start(&sv);
  pid_t pid = spawn("write", sv.port, 1, p[1]);
  tether_session *s = accept_one(&sv);
  size_t wrote = reported(p[0]);
  uint64_t closed = now_ms();
  /* The reader reads nothing: the writer's linger time (1 s) passes. */
  assert_int_equal(wait_child(pid), 0);
  uint64_t exited = now_ms();
  assert_true(exited - closed < 10000);
  size_t got;
  int rc = read_until_end(s, NULL, 0, 5000, &got);
  assert_int_equal(rc, TETHER_EABORTED);
  assert_true(got < wrote);
  assert_true(now_ms() - exited < 10000);
  close(p[0]);
  close(p[1]);
  tether_close(s);
  tether_ctx_free(sv.ctx);
}

/* exit() while the engine thread redials many sessions: rounds of it. */
static void test_exit_while_engine_busy(void **state) {
  (void)state;
  for (int round = 0; round < 40; round++) {
    int st = wait_child(spawn("busy", "-", round, 0));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      fail_msg("round %d: the child ended with status %#x (signal %d)", round, st,
               WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  }
}

int main(int argc, char **argv) {
  if (argc >= 5 && !strcmp(argv[1], "child"))
    return child_main(argv);
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exit_closes_open_sessions),
      cmocka_unit_test(test_exit_of_durable_process_is_a_crash),
      cmocka_unit_test(test_write_close_exit_delivers_everything),
      cmocka_unit_test(test_linger_over_aborts_the_reader),
      cmocka_unit_test(test_exit_while_engine_busy),
  };
  return cmocka_run_group_tests_name("exit", tests, NULL, NULL);
}
