/* Path heartbeats (tether(7), "Path heartbeats"): many sessions between two
 * contexts share one heartbeat per interval, and every failure is still
 * noticed for each session.  One process holds both ends (a client context
 * and a server context, npairs sessions between them), in a network
 * namespace of its own (root only, else skipped) so that the UDP counters
 * of /proc/net/snmp and the firewall rules are the test's alone.
 *
 * idle        the idle sessions send fewer datagrams in 5 s than there are
 *             sessions (one per session per heartbeat without paths: 2000),
 *             and none is suspended meanwhile; again after traffic on all.
 * one_reset   one session's TCP connection is killed (ss -K) while its
 *             neighbours live: it suspends and resumes, no other session
 *             changes state, and every session echoes byte-exact.
 * path_dies   every datagram is dropped (iptables): each of the 2 x npairs
 *             sessions suspends within suspend_ms + a heartbeat (+ slack);
 *             healed, all resume and echo byte-exact.
 * storm       every connection is killed at once (ss -K): every session
 *             resumes, and echoes byte-exact; prints the time to the last.
 * Prints its figures.  TETHER_PATH_PAIRS (up to MAX_PAIRS) changes the
 * number of pairs for a bigger measurement by hand. */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

/* Both ends live here: four descriptors per pair, 20,000 files at most. */
#define MAX_PAIRS 4800
static int npairs = 200; /* TETHER_PATH_PAIRS */
#define HEARTBEAT_MS 1000 /* the defaults */
#define SUSPEND_MS 3000
#define WAIT_MS 20000 /* bounds on what must happen: a loaded 2-core machine */

struct pair {
  tether_session *c, *s;
};

static tether_ctx *cctx, *sctx;
static tether_listener *listener;
static struct pair pairs[MAX_PAIRS];

/* Per session (client ones first): transitions seen by the state callback,
 * and when it last entered SUSPENDED or CONNECTED. */
static struct {
  unsigned suspended, resumed;
  uint64_t suspended_at_ms, resumed_at_ms;
} seen[2 * MAX_PAIRS];

/* Sessions by address, for the state callback (open addressing; filled
 * before any transition is expected, read by the engine threads). */
#define INDEX_SLOTS (4 * 2 * MAX_PAIRS)
static struct {
  tether_session *s;
  int i;
} index_of[INDEX_SLOTS];

static unsigned slot_of(const tether_session *s) {
  return (unsigned)(((uintptr_t)s >> 4) * 0x9e3779b1u) % INDEX_SLOTS;
}

static void index_add(tether_session *s, int i) {
  unsigned k = slot_of(s);
  while (index_of[k].s)
    k = (k + 1) % INDEX_SLOTS;
  index_of[k].i = i;
  __atomic_store_n(&index_of[k].s, s, __ATOMIC_RELEASE);
}

static int index_find(const tether_session *s) {
  for (unsigned k = slot_of(s);; k = (k + 1) % INDEX_SLOTS) {
    tether_session *t = __atomic_load_n(&index_of[k].s, __ATOMIC_ACQUIRE);
    if (!t)
      return -1;
    if (t == s)
      return index_of[k].i;
  }
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void nap_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

static void sh(const char *cmd) { assert_int_equal(system(cmd), 0); }

/* Engine threads: sessions not yet indexed are being set up (no
 * transition then). */
static void on_state(tether_session *s, tether_state st, int err, void *arg) {
  (void)err;
  (void)arg;
  int i = index_find(s);
  if (i < 0)
    return;
  if (st == TETHER_STATE_SUSPENDED) {
    __atomic_store_n(&seen[i].suspended_at_ms, now_ms(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&seen[i].suspended, 1, __ATOMIC_RELEASE);
  } else if (st == TETHER_STATE_CONNECTED) {
    __atomic_store_n(&seen[i].resumed_at_ms, now_ms(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&seen[i].resumed, 1, __ATOMIC_RELEASE);
  }
}

static tether_ctx *ctx_new(void) {
  tether_config *cfg = tether_config_new();
  tether_ctx *ctx;
  assert_non_null(cfg);
  tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, HEARTBEAT_MS);
  tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, SUSPEND_MS);
  tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 500);
  tether_config_set(cfg, TETHER_OPT_MAX_SUSPENDED, 2 * MAX_PAIRS); /* all at once, by hand */
  tether_config_set_state_cb(cfg, on_state, NULL);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  return ctx;
}

/* UDP datagrams sent in this namespace so far (/proc/net/snmp). */
static long udp_out(void) {
  FILE *f = fopen("/proc/net/snmp", "re");
  char head[512], vals[512];
  long out = -1;
  assert_non_null(f);
  while (fgets(head, sizeof(head), f) && fgets(vals, sizeof(vals), f)) {
    if (strncmp(head, "Udp:", 4) != 0)
      continue;
    /* "Udp: InDatagrams NoPorts InErrors OutDatagrams ..." */
    long in, noports, errs;
    if (sscanf(vals, "Udp: %ld %ld %ld %ld", &in, &noports, &errs, &out) != 4)
      out = -1;
    break;
  }
  fclose(f);
  assert_true(out >= 0);
  return out;
}

static unsigned transitions(void) {
  unsigned n = 0;
  for (int i = 0; i < 2 * npairs; i++)
    n += __atomic_load_n(&seen[i].suspended, __ATOMIC_ACQUIRE) +
         __atomic_load_n(&seen[i].resumed, __ATOMIC_ACQUIRE);
  return n;
}

static void read_exact(tether_session *s, void *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = tether_read(s, (char *)buf + got, len - got);
    if (n == -EINTR)
      continue;
    assert_true(n > 0);
    got += (size_t)n;
  }
}

static void write_exact(tether_session *s, const void *buf, size_t len) {
  assert_int_equal(tether_write(s, buf, len), (ssize_t)len);
}

/* Every pair echoes a message both ways, byte-exact; `round` makes each
 * round's bytes differ. */
static void echo_all(unsigned round) {
  for (int i = 0; i < npairs; i++) {
    char out[24], in[24];
    int len = snprintf(out, sizeof(out), "r%u p%d", round, i);
    write_exact(pairs[i].c, out, (size_t)len);
    read_exact(pairs[i].s, in, (size_t)len);
    assert_memory_equal(in, out, (size_t)len);
    write_exact(pairs[i].s, in, (size_t)len);
    read_exact(pairs[i].c, in, (size_t)len);
    assert_memory_equal(in, out, (size_t)len);
  }
}

/* The datagrams all sessions send while idle for `ms`, after `settle_ms`
 * for their paths to cover them. */
static long idle_datagrams(unsigned settle_ms, unsigned ms) {
  nap_ms(settle_ms);
  unsigned t0 = transitions();
  long d0 = udp_out();
  nap_ms(ms);
  long d = udp_out() - d0;
  assert_int_equal(transitions(), t0); /* nothing suspended meanwhile */
  return d;
}

static int setup_pairs(void **state) {
  (void)state;
  char port[16];
  memset(seen, 0, sizeof(seen));
  memset(index_of, 0, sizeof(index_of));
  sctx = ctx_new();
  cctx = ctx_new();
  assert_int_equal(tether_listen(sctx, "127.0.0.1", "0", &listener), 0);
  snprintf(port, sizeof(port), "%d", tether_listener_port(listener));
  for (int i = 0; i < npairs; i++) {
    tether_session *c, *s;
    assert_int_equal(tether_connect(cctx, "127.0.0.1", port, &c), 0);
    assert_int_equal(tether_accept(listener, &s), 0); /* the one just made */
    pairs[i].c = c;
    pairs[i].s = s;
    index_add(c, i);
    index_add(s, npairs + i);
  }
  echo_all(0); /* pairs[i] really are the two ends of one session */
  return 0;
}

static int teardown_pairs(void **state) {
  (void)state;
  (void)!system("iptables -w -F INPUT");
  for (int i = 0; i < npairs; i++) {
    tether_close(pairs[i].c); /* no state callback after its close */
    tether_close(pairs[i].s);
  }
  tether_listener_close(listener);
  tether_ctx_free(cctx);
  tether_ctx_free(sctx);
  return 0;
}

static void test_idle(void **state) {
  (void)state;
  long d = idle_datagrams(3 * HEARTBEAT_MS, 5000);
  printf("# %d idle sessions (%d pairs): %ld datagrams in 5 s (one per session per heartbeat "
         "would be %d)\n",
         2 * npairs, npairs, d, 2 * npairs * 5);
  assert_true(d < 2 * npairs);
  echo_all(1); /* traffic on every session: each acknowledges on its own... */
  d = idle_datagrams(3 * HEARTBEAT_MS, 5000); /* ... and then goes quiet again */
  printf("# after traffic on all: %ld datagrams in 5 s\n", d);
  assert_true(d < 2 * npairs);
}

static void test_one_reset(void **state) {
  (void)state;
  nap_ms(3 * HEARTBEAT_MS); /* covered by their path */
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  assert_int_equal(getsockname(tether_fd(pairs[0].c), (struct sockaddr *)&local, &len), 0);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ss -K -H -tn sport = :%d >/dev/null",
           ntohs(((struct sockaddr_in *)&local)->sin_port));
  unsigned t0 = transitions();
  uint64_t start = now_ms();
  sh(cmd);
  /* Both ends of pair 0 notice (the reset, the hang-up of their socket) and
   * resume. */
  while ((__atomic_load_n(&seen[0].resumed, __ATOMIC_ACQUIRE) == 0 ||
          __atomic_load_n(&seen[npairs].resumed, __ATOMIC_ACQUIRE) == 0) &&
         now_ms() - start < WAIT_MS)
    nap_ms(10);
  uint64_t took = now_ms() - start;
  printf("# one connection reset among %d sessions: both ends resumed after %llu ms\n",
         2 * npairs, (unsigned long long)took);
  assert_int_equal(seen[0].suspended, 1);
  assert_int_equal(seen[npairs].suspended, 1);
  assert_int_equal(seen[0].resumed, 1);
  assert_int_equal(seen[npairs].resumed, 1);
  assert_int_equal(transitions(), t0 + 4); /* no neighbour moved */
  echo_all(2);
}

static void test_path_dies(void **state) {
  (void)state;
  nap_ms(3 * HEARTBEAT_MS); /* covered by their path */
  uint64_t t0 = now_ms();
  sh("iptables -w -A INPUT -p udp -j DROP");
  uint64_t deadline = t0 + WAIT_MS;
  int missing;
  do {
    nap_ms(20);
    missing = 0;
    for (int i = 0; i < 2 * npairs; i++)
      missing += __atomic_load_n(&seen[i].suspended, __ATOMIC_ACQUIRE) == 0;
  } while (missing && now_ms() < deadline);
  uint64_t last = 0;
  for (int i = 0; i < 2 * npairs; i++)
    if (seen[i].suspended_at_ms > last)
      last = seen[i].suspended_at_ms;
  sh("iptables -w -F INPUT");
  printf("# side channel cut: %d of %d sessions suspended, the last %llu ms after the cut "
         "(suspend_ms %d, heartbeat %d ms)\n",
         2 * npairs - missing, 2 * npairs, (unsigned long long)(last - t0), SUSPEND_MS,
         HEARTBEAT_MS);
  assert_int_equal(missing, 0);
  /* Liveness as fast as per session: suspend_ms after the last heartbeat
   * heard (at most one interval, plus its jitter, before the cut), and a
   * loaded machine's slack. */
  assert_true(last - t0 <= SUSPEND_MS + HEARTBEAT_MS + HEARTBEAT_MS / 8 + 2000);
  echo_all(3); /* healed: every session resumes and echoes */
}

static void test_storm(void **state) {
  (void)state;
  nap_ms(3 * HEARTBEAT_MS); /* covered by their path */
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ss -K -H -tn sport = :%d >/dev/null",
           tether_listener_port(listener));
  uint64_t t0 = now_ms();
  sh(cmd);
  int missing;
  do {
    nap_ms(20);
    missing = 0;
    for (int i = 0; i < 2 * npairs; i++)
      missing += __atomic_load_n(&seen[i].resumed, __ATOMIC_ACQUIRE) == 0;
  } while (missing && now_ms() - t0 < 3 * WAIT_MS);
  uint64_t last = t0;
  for (int i = 0; i < 2 * npairs; i++)
    if (seen[i].resumed_at_ms > last)
      last = seen[i].resumed_at_ms;
  printf("# every connection killed at once: %d of %d sessions resumed, the last %llu ms "
         "after the kill\n",
         2 * npairs - missing, 2 * npairs, (unsigned long long)(last - t0));
  assert_int_equal(missing, 0);
  echo_all(4);
}

static bool own_netns(void) {
  if (unshare(CLONE_NEWNET) < 0)
    return false;
  return system("ip link set lo up") == 0;
}

int main(void) {
  const char *n = getenv("TETHER_PATH_PAIRS");
  if (n && atoi(n) > 0)
    npairs = atoi(n) < MAX_PAIRS ? atoi(n) : MAX_PAIRS;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max; /* 400 sessions, two descriptors each */
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (!own_netns()) {
    printf("# skipped: needs root for a network namespace of its own\n");
    return 77;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_idle, setup_pairs, teardown_pairs),
      cmocka_unit_test_setup_teardown(test_one_reset, setup_pairs, teardown_pairs),
      cmocka_unit_test_setup_teardown(test_path_dies, setup_pairs, teardown_pairs),
      cmocka_unit_test_setup_teardown(test_storm, setup_pairs, teardown_pairs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
