/* A thread blocked in tether_read is woken by a transition, but looks at
 * the session's descriptor only after another thread's call has put the
 * new, still silent, socket behind it.  A reader asleep in poll() is
 * attached to the old files only, and one asleep in recv() (a blocking
 * session, lib/engine/io.c) to the old socket, so unless the library wakes
 * its waits some other way (lib/engine/waiters.c) and a reader woken from an
 * old socket goes on to the new one, the reader sleeps through every byte
 * that comes later.
 *
 * The late look is forced, not hoped for: the reader runs on CPU 0, where a
 * real-time thread (SCHED_FIFO: root) holds the CPU while the connection is
 * reset (ss -K), the session resumes and the main thread, on CPU 1, writes
 * (its call installs the new socket).  Then the server sends a byte, which
 * the reader must get. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof(set), &set), 0);
}

/* The reader: on CPU 0, counts the bytes it reads until 'q'. */
struct reader {
  tether_session *s;
  int tid;
  int got;
  int err;
};

static void *read_all(void *arg) {
  struct reader *r = arg;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  /* ss's exit (SIGCHLD) would restart the reader's poll, which then
   * attaches to the new files afresh: the case under test would not
   * happen. */
  pthread_sigmask(SIG_BLOCK, &chld, NULL);
  pin(0);
  STORE(r->tid, (int)syscall(SYS_gettid));
  for (;;) {
    char c;
    ssize_t n = tether_read(r->s, &c, 1);
    if (n == -EINTR)
      continue;
    if (n != 1) {
      STORE(r->err, n < 0 ? (int)n : -EPIPE);
      return NULL;
    }
    if (c == 'q')
      return NULL;
    __atomic_fetch_add(&r->got, 1, __ATOMIC_RELEASE);
  }
}

/* Holds CPU 0 at real-time priority while `hold` is set. */
struct spinner {
  int hold, running;
};

static void *spin(void *arg) {
  struct spinner *sp = arg;
  pin(0);
  STORE(sp->running, 1);
  while (LOAD(sp->hold)) {
  }
  return NULL;
}

/* Whether thread tid sleeps attached to the files: in poll, or in a
 * blocking recv() on the socket (wchan wait_woken, from sk_wait_data). */
static bool sleeps_in_wait(int tid) {
  char path[64], wchan[64] = "", stat[256] = "";
  snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", tid);
  FILE *f = fopen(path, "re");
  if (f) {
    (void)!fgets(wchan, sizeof(wchan), f);
    fclose(f);
  }
  snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
  f = fopen(path, "re");
  if (f) {
    (void)!fgets(stat, sizeof(stat), f);
    fclose(f);
  }
  const char *st = strrchr(stat, ')');
  return st && st[1] == ' ' && st[2] == 'S' &&
         (strstr(wchan, "poll") != NULL || strstr(wchan, "wait_woken") != NULL ||
          strstr(wchan, "sk_wait_data") != NULL);
}

/* How many times thread tid went to sleep. */
static long sleeps(int tid) {
  char path[64], line[128];
  long v = -1;
  snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
  FILE *f = fopen(path, "re");
  while (f && fgets(line, sizeof(line), f))
    if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1)
      break;
  if (f)
    fclose(f);
  return v;
}

static void wait_until(int *counter, int want, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (LOAD(*counter) < want && now_ms() < end)
    msleep(5);
}

static void test_late_look_after_resume(void **state) {
  (void)state;
  pin(1); /* the engines' threads start from here: CPU 1 too */
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  /* The reader sleeps at once (no read spin); the client redials at once. */
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, 0), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 50), 0);
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  tether_session *srv, *cli;
  assert_int_equal(tether_ctx_new(cfg, &sctx), 0);
  assert_int_equal(tether_ctx_new(cfg, &cctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sctx, "127.0.0.1", "0", &l), 0);
  char port[16];
  snprintf(port, sizeof(port), "%d", tether_listener_port(l));
  assert_int_equal(tether_connect(cctx, "127.0.0.1", port, &cli), 0);
  assert_int_equal(tether_accept(l, &srv), 0);

  struct reader r = {.s = cli};
  pthread_t rt;
  assert_int_equal(pthread_create(&rt, NULL, read_all, &r), 0);
  assert_int_equal(tether_write(srv, "a", 1), 1);
  wait_until(&r.got, 1, 5000);
  assert_int_equal(LOAD(r.got), 1);
  /* The reader waits for the next byte, on the live socket. */
  uint64_t end = now_ms() + 5000;
  while (!sleeps_in_wait(LOAD(r.tid)) && now_ms() < end)
    msleep(5);
  assert_true(sleeps_in_wait(LOAD(r.tid)));

  /* CPU 0 is taken: the reader, once woken, cannot look yet. */
  long slept = sleeps(LOAD(r.tid));
  struct spinner sp = {.hold = 1};
  pthread_t st;
  pthread_attr_t attr;
  struct sched_param prio = {.sched_priority = 1};
  assert_int_equal(pthread_attr_init(&attr), 0);
  assert_int_equal(pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED), 0);
  assert_int_equal(pthread_attr_setschedpolicy(&attr, SCHED_FIFO), 0);
  assert_int_equal(pthread_attr_setschedparam(&attr, &prio), 0);
  assert_int_equal(pthread_create(&st, &attr, spin, &sp), 0);
  pthread_attr_destroy(&attr);
  wait_until(&sp.running, 1, 5000);
  assert_int_equal(LOAD(sp.running), 1);

  /* The connection is reset; the session resumes; this thread's write
   * installs the new socket, before the reader has looked. */
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ss -K -H -tn dst 127.0.0.1 dport = :%s >/dev/null", port);
  int rc = system(cmd);
  tether_stats stats = {0};
  end = now_ms() + 5000;
  while (now_ms() < end &&
         (tether_session_stats(cli, &stats) != 0 || stats.reconnects < 1 ||
          tether_session_state(cli) != TETHER_STATE_CONNECTED))
    msleep(5);
  ssize_t w = tether_write(cli, "x", 1);
  STORE(sp.hold, 0);
  pthread_join(st, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(stats.reconnects, 1);
  assert_int_equal(w, 1);
  char c = 0;
  assert_int_equal(tether_read(srv, &c, 1), 1);
  assert_int_equal(c, 'x');

  /* The reader has looked, and slept again (before the fix: on the old
   * files only).  A byte now must reach it. */
  end = now_ms() + 5000;
  while (sleeps(LOAD(r.tid)) <= slept && now_ms() < end)
    msleep(5);
  assert_true(sleeps(LOAD(r.tid)) > slept);
  assert_int_equal(tether_write(srv, "b", 1), 1);
  wait_until(&r.got, 2, 5000);
  assert_int_equal(LOAD(r.err), 0);
  assert_int_equal(LOAD(r.got), 2);

  assert_int_equal(tether_write(srv, "q", 1), 1);
  pthread_join(rt, NULL);
  tether_close(cli);
  tether_close(srv);
  tether_listener_close(l);
  tether_ctx_free(cctx);
  tether_ctx_free(sctx);
}

int main(void) {
  if (geteuid() != 0 || sysconf(_SC_NPROCESSORS_ONLN) < 2 ||
      system("command -v ss >/dev/null") != 0) {
    fprintf(stderr, "skipped: needs root (SCHED_FIFO, ss -K) and two CPUs\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_late_look_after_resume),
  };
  return cmocka_run_group_tests_name("wake", tests, NULL, NULL);
}
