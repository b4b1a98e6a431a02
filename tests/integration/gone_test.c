/* Suspended sessions on the accepting side must not outlive what they wait
 * for, nor grow without bound.  One process is the server; its clients are
 * this same program run again ("client PORT DURABLE"), real processes
 * killed with SIGKILL or frozen with SIGSTOP.
 *
 * killed_nondurable  a non-durable client killed with its session open: the
 *                    server's session fails with TETHER_ESESSIONGONE within
 *                    a few heartbeats (its host answers the server's probes
 *                    with ICMP port unreachable), and the server's
 *                    descriptors go back to their count before the session.
 * killed_durable     a durable client killed at the same moment as a
 *                    non-durable one: its session stays suspended (it may
 *                    restore from a snapshot later) well after the other
 *                    failed.
 * rejected_alive     the client's host rejects the server's datagrams (an
 *                    iptables REJECT: exactly what a closed port looks like)
 *                    while the client lives: the connected session is not
 *                    affected; cut, it stays suspended past the evidence's
 *                    span while the client cannot redial, then resumes.
 * evict_oldest       TETHER_OPT_MAX_SUSPENDED = 5 and 8 clients frozen one
 *                    after the other: the 3 suspended first fail with
 *                    TETHER_EEVICTED (once suspended for longer than a
 *                    redial takes), the others stay suspended and resume
 *                    when their clients thaw; an evicted session's client
 *                    learns TETHER_ESESSIONGONE when it redials.
 * server_killed      the other way round: a non-durable server killed with
 *                    the session open: the client's session fails with
 *                    TETHER_ESESSIONGONE within a few heartbeats (its
 *                    probes meet ICMP port unreachable), where it would
 *                    otherwise redial a closed port for give_up_s.
 * figures            descriptors and memory per suspended session (1000
 *                    sessions of a durable client killed), and the CPU they
 *                    cost while suspended.
 *
 * Everything runs in a network namespace of the test's own (root only:
 * skipped otherwise), so that its firewall rules and ICMP counters are its
 * own.  Prints its figures. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#define HEARTBEAT_MS 100
/* The figures' 1000 sessions: the defaults (at 100 ms, 20000 datagrams a
 * second would overflow the side channel's socket buffers on a loaded
 * machine; a session never heard there is neither suspended by silence nor
 * probed). */
#define FIG_HEARTBEAT_MS 1000
#define WAIT_MS 20000 /* bounds on what must happen: a loaded 2-core machine */

static char self[4096];
/* Client processes still running: a failed test's are killed. */
static pid_t kids[64];
static int n_kids;

/* ---- the client process ---------------------------------------------------- */

static tether_ctx *client_ctx(bool durable, int heartbeat_ms) {
  tether_config *cfg = tether_config_new();
  tether_ctx *ctx;
  if (!cfg)
    exit(2);
  tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, heartbeat_ms);
  tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 3 * heartbeat_ms);
  tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 100);
  tether_config_set(cfg, TETHER_OPT_GIVE_UP_S, 60);
  tether_config_set(cfg, TETHER_OPT_DURABLE, durable);
  int rc = tether_ctx_new(cfg, &ctx);
  tether_config_free(cfg);
  if (rc < 0)
    exit(2);
  return ctx;
}

/* client PORT DURABLE N HOST HEARTBEAT_MS: N sessions to HOST:PORT; reads one byte on
 * each, then says 'r' on stdout.  With N = 1, then reads on: 'q' ends it
 * (exit 0), a failure is printed ("E<code>") and ends it (exit 3).  With
 * more, it waits to be killed. */
static int client_main(const char *host, const char *port, bool durable, int n, int hb) {
  tether_ctx *ctx = client_ctx(durable, hb);
  tether_session *s = NULL;
  char c;
  for (int i = 0; i < n; i++) {
    if (tether_connect(ctx, host, port, &s) < 0 || tether_read(s, &c, 1) != 1)
      return 2;
  }
  if (write(STDOUT_FILENO, "r", 1) != 1)
    return 2;
  if (n > 1)
    for (;;)
      pause();
  ssize_t r = tether_read(s, &c, 1);
  tether_close(s);
  tether_ctx_free(ctx);
  if (r == 1 && c == 'q')
    return 0;
  char msg[32];
  int len = snprintf(msg, sizeof(msg), "E%zd", r);
  (void)!write(STDOUT_FILENO, msg, (size_t)len);
  return 3;
}

/* server HEARTBEAT_MS: a non-durable server in its own process; prints its
 * port and a newline, accepts one session, sends it 'h', reads one byte,
 * then waits to be killed. */
static int server_main(int hb) {
  tether_config *cfg = tether_config_new();
  tether_ctx *ctx;
  tether_listener *l;
  tether_session *s;
  if (!cfg)
    return 2;
  tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, hb);
  tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 3 * hb);
  if (tether_ctx_new(cfg, &ctx) < 0 || tether_listen(ctx, "127.0.0.1", "0", &l) < 0)
    return 2;
  tether_config_free(cfg);
  char port[16];
  int len = snprintf(port, sizeof(port), "%d\n", tether_listener_port(l));
  char c;
  if (write(STDOUT_FILENO, port, (size_t)len) != len || tether_accept(l, &s) < 0 ||
      tether_write(s, "h", 1) != 1 || tether_read(s, &c, 1) != 1)
    return 2;
  for (;;)
    pause();
}

/* ---- the server's side ----------------------------------------------------- */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void nap_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  char port[16];
  const char *listen, *dial; /* its address; where its clients connect */
  int heartbeat_ms;           /* its and its clients' (suspend_ms: 3 times) */
};

static void server_open(struct server *sv, int max_suspended, int log_level) {
  if (!sv->listen)
    sv->listen = sv->dial = "127.0.0.1";
  if (!sv->heartbeat_ms)
    sv->heartbeat_ms = HEARTBEAT_MS;
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, sv->heartbeat_ms), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 3 * sv->heartbeat_ms), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 100), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_LOG_LEVEL, log_level), 0);
  if (max_suspended)
    assert_int_equal(tether_config_set(cfg, TETHER_OPT_MAX_SUSPENDED, max_suspended), 0);
  assert_int_equal(tether_ctx_new(cfg, &sv->ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sv->ctx, sv->listen, "0", &sv->l), 0);
  assert_int_equal(tether_listener_set_nonblocking(sv->l, 1), 0);
  snprintf(sv->port, sizeof(sv->port), "%d", tether_listener_port(sv->l));
}

struct client {
  pid_t pid;
  int out; /* its stdout */
};

/* Starts a client, accepts its session, sends the byte it waits for and
 * waits until its acknowledgement came back over the side channel (so the
 * server has heard the client's side channel). */
static tether_session *client_start(struct server *sv, struct client *c, bool durable) {
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  c->pid = fork();
  assert_true(c->pid >= 0);
  if (c->pid == 0) {
    dup2(p[1], STDOUT_FILENO);
    char hb[16];
    snprintf(hb, sizeof(hb), "%d", sv->heartbeat_ms);
    execl(self, self, "client", sv->port, durable ? "1" : "0", "1", sv->dial, hb, (char *)NULL);
    _exit(2);
  }
  close(p[1]);
  c->out = p[0];
  if (n_kids < (int)(sizeof(kids) / sizeof(kids[0])))
    kids[n_kids++] = c->pid;
  struct pollfd pl = {tether_listener_fd(sv->l), POLLIN, 0};
  assert_int_equal(poll(&pl, 1, WAIT_MS), 1);
  tether_session *s;
  assert_int_equal(tether_accept(sv->l, &s), 0);
  assert_int_equal(tether_write(s, "h", 1), 1);
  struct pollfd pc = {c->out, POLLIN, 0};
  char r;
  assert_int_equal(poll(&pc, 1, WAIT_MS), 1);
  assert_int_equal(read(c->out, &r, 1), 1);
  assert_int_equal(r, 'r');
  uint64_t got = 0, t0 = now_ms();
  while (tether_session_peer_received(s, &got) == 0 && got < 1 && now_ms() - t0 < WAIT_MS)
    nap_ms(5);
  assert_int_equal(got, 1);
  return s;
}

/* The client's exit status, and what it printed. */
static int client_end(struct client *c, char *msg, size_t cap) {
  int st;
  assert_int_equal(waitpid(c->pid, &st, 0), c->pid);
  for (int i = 0; i < n_kids; i++)
    if (kids[i] == c->pid)
      kids[i] = kids[--n_kids];
  ssize_t n = read(c->out, msg, cap - 1);
  msg[n > 0 ? n : 0] = '\0';
  close(c->out);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void client_kill(struct client *c) {
  char msg[32];
  kill(c->pid, SIGKILL);
  assert_int_equal(client_end(c, msg, sizeof(msg)), 128 + SIGKILL);
}

/* Waits (bounded) until s is in state st; returns how long it took, in ms. */
static uint64_t wait_state(tether_session *s, tether_state st, uint64_t bound_ms) {
  uint64_t t0 = now_ms();
  while (tether_session_state(s) != st && now_ms() - t0 < bound_ms)
    nap_ms(2);
  if (tether_session_state(s) != st)
    fail_msg("state %s, not %s, after %llu ms", tether_state_name(tether_session_state(s)),
             tether_state_name(st), (unsigned long long)bound_ms);
  return now_ms() - t0;
}

static int fd_count(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  while (readdir(d))
    n++;
  closedir(d);
  return n - 3; /* ".", "..", and the directory's own */
}

/* The engine opens descriptors for moments (a /proc file, a placeholder
 * on its way in): a baseline is the least of a few counts. */
static int fd_base(void) {
  int n = fd_count();
  for (int i = 0; i < 5; i++) {
    nap_ms(10);
    int m = fd_count();
    n = m < n ? m : n;
  }
  return n;
}

/* Waits (bounded) until the process holds no more than n descriptors. */
static void wait_fds(int n) {
  uint64_t t0 = now_ms();
  while (fd_count() > n && now_ms() - t0 < WAIT_MS)
    nap_ms(5);
  assert_true(fd_count() <= n);
}

static long rss_kib(void) {
  char line[256];
  long kib = -1;
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
      break;
  fclose(f);
  return kib;
}

static uint64_t cpu_us(void) {
  struct rusage ru;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* ICMP destination unreachables received in this namespace. */
static long icmp_in_unreach(void) {
  char names[1024], vals[1024];
  long v = -1;
  FILE *f = fopen("/proc/net/snmp", "r");
  assert_non_null(f);
  while (fgets(names, sizeof(names), f) && fgets(vals, sizeof(vals), f)) {
    if (strncmp(names, "Icmp:", 5) != 0)
      continue;
    char *sn, *sv;
    char *n = strtok_r(names, " \n", &sn), *x = strtok_r(vals, " \n", &sv);
    while (n && x) {
      if (strcmp(n, "InDestUnreachs") == 0)
        v = atol(x);
      n = strtok_r(NULL, " \n", &sn);
      x = strtok_r(NULL, " \n", &sv);
    }
    break;
  }
  fclose(f);
  return v;
}

static void sh(const char *fmt, ...) {
  char cmd[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  if (rc != 0)
    fail_msg("'%s' failed (%d)", cmd, rc);
}

/* ---- tests ----------------------------------------------------------------- */

static double cpu_percent_over(unsigned ms);

static void killed_nondurable(const char *listen, const char *dial) {
  struct server sv = {.listen = listen, .dial = dial};
  struct client c;
  server_open(&sv, 0, TETHER_LOG_INFO);
  int base = fd_base();
  tether_session *s = client_start(&sv, &c, false);
  int live = fd_count();
  client_kill(&c);
  uint64_t t0 = now_ms();
  uint64_t took = wait_state(s, TETHER_STATE_FAILED, WAIT_MS);
  printf("# non-durable client killed (%s): its session failed after %llu ms (heartbeat %d ms): "
         "%s\n",
         sv.dial, (unsigned long long)took, HEARTBEAT_MS, tether_strerror(tether_session_error(s)));
  assert_int_equal(tether_session_error(s), TETHER_ESESSIONGONE);
  assert_true(now_ms() - t0 < 3000); /* about 2 heartbeats; generous */
  tether_close(s);
  wait_fds(base);
  printf("# server descriptors: %d before, %d with the session, %d after\n", base, live,
         fd_count());
  tether_ctx_free(sv.ctx);
}

static void test_killed_nondurable(void **state) {
  (void)state;
  killed_nondurable(NULL, NULL);
}

/* The same over IPv6 (ICMPv6), and to a dual-stack listener over IPv4
 * (IPv4-mapped addresses on an IPv6 socket). */
static void test_killed_nondurable_ipv6(void **state) {
  (void)state;
  killed_nondurable("::1", "::1");
  killed_nondurable("::", "127.0.0.1");
}

static void test_killed_durable(void **state) {
  (void)state;
  struct server sv = {0};
  struct client gone, dur;
  server_open(&sv, 0, TETHER_LOG_INFO);
  int base = fd_base();
  tether_session *sd = client_start(&sv, &dur, true);
  tether_session *sg = client_start(&sv, &gone, false);
  client_kill(&dur);
  client_kill(&gone);
  wait_state(sd, TETHER_STATE_SUSPENDED, WAIT_MS);
  wait_state(sg, TETHER_STATE_FAILED, WAIT_MS);
  assert_int_equal(tether_session_error(sg), TETHER_ESESSIONGONE);
  tether_close(sg);
  /* Nothing must happen to the durable one: wait five times the evidence's
   * span (2 heartbeats), with probes (if any were sent) long answered. */
  nap_ms(10 * HEARTBEAT_MS);
  assert_int_equal(tether_session_state(sd), TETHER_STATE_SUSPENDED);
  printf("# durable client killed: still suspended %llu ms after the other failed\n",
         (unsigned long long)(10 * HEARTBEAT_MS));
  tether_close(sd);
  wait_fds(base);
  tether_ctx_free(sv.ctx);
}

static void test_rejected_alive(void **state) {
  (void)state;
  struct server sv = {0};
  struct client c;
  char msg[32];
  tether_stats st;
  server_open(&sv, 0, TETHER_LOG_INFO);
  long icmp0 = icmp_in_unreach();
  /* Every datagram to the client's side channel is refused with a port
   * unreachable from its own host; the server's port stays open. */
  sh("iptables -w -A OUTPUT -o lo -p udp ! --dport %s -j REJECT --reject-with "
     "icmp-port-unreachable",
     sv.port);
  tether_session *s = client_start(&sv, &c, false);
  uint64_t t0 = now_ms();
  while (icmp_in_unreach() - icmp0 < 5 && now_ms() - t0 < WAIT_MS)
    nap_ms(10);
  assert_true(icmp_in_unreach() - icmp0 >= 5);
  /* Errors keep coming (one per heartbeat): read from the socket's error
   * queue, they do not make the engine spin. */
  double cpu = cpu_percent_over(1000);
  assert_true(cpu < 30.0);
  assert_int_equal(tether_session_state(s), TETHER_STATE_CONNECTED);
  /* Cut the connection while the client cannot redial for a while. */
  sh("iptables -w -A INPUT -p tcp --dport %s --syn -j REJECT --reject-with tcp-reset", sv.port);
  sh("ss -K dst 127.0.0.1 dport = %s >/dev/null 2>&1", sv.port);
  wait_state(s, TETHER_STATE_SUSPENDED, WAIT_MS);
  long icmp1 = icmp_in_unreach();
  nap_ms(10 * HEARTBEAT_MS); /* five times the evidence's span */
  printf("# client alive behind a REJECT: %ld unreachables while connected (CPU %.2f%%), %ld "
         "while suspended; session %s\n",
         icmp1 - icmp0, cpu, icmp_in_unreach() - icmp1,
         tether_state_name(tether_session_state(s)));
  assert_int_equal(tether_session_state(s), TETHER_STATE_SUSPENDED);
  sh("iptables -w -D INPUT -p tcp --dport %s --syn -j REJECT --reject-with tcp-reset", sv.port);
  wait_state(s, TETHER_STATE_CONNECTED, WAIT_MS);
  assert_int_equal(tether_session_stats(s, &st), 0);
  assert_int_equal(st.reconnects, 1);
  assert_int_equal(tether_write(s, "q", 1), 1);
  assert_int_equal(client_end(&c, msg, sizeof(msg)), 0);
  sh("iptables -w -D OUTPUT -o lo -p udp ! --dport %s -j REJECT --reject-with "
     "icmp-port-unreachable",
     sv.port);
  tether_close(s);
  tether_ctx_free(sv.ctx);
}

#define EVICT_MAX 5
#define EVICT_N (EVICT_MAX + 3)

static void test_evict_oldest(void **state) {
  (void)state;
  struct server sv = {0};
  struct client c[EVICT_N];
  tether_session *s[EVICT_N];
  char msg[32];
  server_open(&sv, EVICT_MAX, TETHER_LOG_INFO);
  for (int i = 0; i < EVICT_N; i++)
    s[i] = client_start(&sv, &c[i], false);
  /* Frozen one after the other: each session suspends (no heartbeat within
   * suspend_ms) before the next client freezes. */
  for (int i = 0; i < EVICT_N; i++) {
    kill(c[i].pid, SIGSTOP);
    wait_state(s[i], TETHER_STATE_SUSPENDED, WAIT_MS);
    if (i >= EVICT_MAX)
      wait_state(s[i - EVICT_MAX], TETHER_STATE_FAILED, WAIT_MS);
  }
  for (int i = 0; i < EVICT_N; i++) {
    if (i < EVICT_N - EVICT_MAX) {
      assert_int_equal(tether_session_state(s[i]), TETHER_STATE_FAILED);
      assert_int_equal(tether_session_error(s[i]), TETHER_EEVICTED);
    } else {
      assert_int_equal(tether_session_state(s[i]), TETHER_STATE_SUSPENDED);
    }
  }
  for (int i = 0; i < EVICT_N; i++)
    kill(c[i].pid, SIGCONT);
  for (int i = EVICT_N - EVICT_MAX; i < EVICT_N; i++) {
    wait_state(s[i], TETHER_STATE_CONNECTED, WAIT_MS);
    assert_int_equal(tether_write(s[i], "q", 1), 1);
    assert_int_equal(client_end(&c[i], msg, sizeof(msg)), 0);
  }
  for (int i = 0; i < EVICT_N - EVICT_MAX; i++) {
    assert_int_equal(client_end(&c[i], msg, sizeof(msg)), 3);
    char want[32];
    snprintf(want, sizeof(want), "E%d", TETHER_ESESSIONGONE);
    assert_string_equal(msg, want);
  }
  printf("# %d sessions suspended with TETHER_OPT_MAX_SUSPENDED %d: the %d oldest evicted, "
         "the others resumed\n",
         EVICT_N, EVICT_MAX, EVICT_N - EVICT_MAX);
  for (int i = 0; i < EVICT_N; i++)
    tether_close(s[i]);
  tether_ctx_free(sv.ctx);
}

#define FIG_N 1000

/* A client process holding FIG_N sessions (durable or not), accepted into
 * s[]; returns its pid. */
static pid_t many_start(struct server *sv, tether_session **s, bool durable) {
  int p[2];
  char r;
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(p[1], STDOUT_FILENO);
    char n[16];
    snprintf(n, sizeof(n), "%d", FIG_N);
    char hb[16];
    snprintf(hb, sizeof(hb), "%d", sv->heartbeat_ms);
    execl(self, self, "client", sv->port, durable ? "1" : "0", n, sv->dial, hb, (char *)NULL);
    _exit(2);
  }
  close(p[1]);
  kids[n_kids++] = pid;
  for (int i = 0; i < FIG_N; i++) {
    struct pollfd pl = {tether_listener_fd(sv->l), POLLIN, 0};
    assert_int_equal(poll(&pl, 1, WAIT_MS), 1);
    assert_int_equal(tether_accept(sv->l, &s[i]), 0);
    assert_int_equal(tether_write(s[i], "h", 1), 1);
  }
  struct pollfd pc = {p[0], POLLIN, 0};
  assert_int_equal(poll(&pc, 1, WAIT_MS), 1);
  assert_int_equal(read(p[0], &r, 1), 1);
  close(p[0]);
  /* Heard on the side channel: each acknowledged its byte. */
  for (int i = 0; i < FIG_N; i++) {
    uint64_t got = 0, t0 = now_ms();
    while (tether_session_peer_received(s[i], &got) == 0 && got < 1 && now_ms() - t0 < WAIT_MS)
      nap_ms(5);
    assert_int_equal(got, 1);
  }
  return pid;
}

static double cpu_percent_over(unsigned ms) {
  uint64_t cpu0 = cpu_us(), t0 = now_ms();
  nap_ms(ms);
  return 100.0 * (double)(cpu_us() - cpu0) / 1000.0 / (double)(now_ms() - t0);
}

static void test_figures(void **state) {
  (void)state;
  struct server sv = {.heartbeat_ms = FIG_HEARTBEAT_MS};
  char b;
  server_open(&sv, 0, TETHER_LOG_WARN);
  tether_session **s = calloc(FIG_N, sizeof(*s));
  assert_non_null(s);
  int base = fd_base();
  long rss0 = rss_kib();

  /* A durable client's sessions: kept, suspended. */
  pid_t pid = many_start(&sv, s, true);
  int live_fds = fd_count();
  long live_rss = rss_kib();
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  n_kids--;
  /* Suspended, each as an application that polls it holds it: its
   * descriptor a never-ready placeholder (installed by the next call). */
  for (int i = 0; i < FIG_N; i++) {
    wait_state(s[i], TETHER_STATE_SUSPENDED, WAIT_MS);
    assert_int_equal(tether_set_nonblocking(s[i], 1), 0);
    assert_int_equal(tether_read(s[i], &b, 1), -EAGAIN);
  }
  double cpu = cpu_percent_over(2000);
  int susp_fds = fd_count();
  long susp_rss = rss_kib();
  printf("# %d sessions of a durable client: connected %.2f fds and %.1f KiB each; suspended "
         "%.2f fds and %.1f KiB each; CPU while suspended %.2f%%\n",
         FIG_N, (double)(live_fds - base) / FIG_N, (double)(live_rss - rss0) / FIG_N,
         (double)(susp_fds - base) / FIG_N, (double)(susp_rss - rss0) / FIG_N, cpu);
  assert_true(susp_fds - base <= 2 * FIG_N);
  for (int i = 0; i < FIG_N; i++)
    tether_close(s[i]);
  wait_fds(base);

  /* A non-durable client's sessions: probed while it is frozen, let go
   * once it is killed (its host's ICMP errors: only the global rate limit
   * on loopback). */
  pid = many_start(&sv, s, false);
  kill(pid, SIGSTOP);
  for (int i = 0; i < FIG_N; i++)
    wait_state(s[i], TETHER_STATE_SUSPENDED, WAIT_MS);
  cpu = cpu_percent_over(2000);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  n_kids--;
  uint64_t t0 = now_ms(), last = 0;
  for (int i = 0; i < FIG_N; i++) {
    wait_state(s[i], TETHER_STATE_FAILED, 60000);
    assert_int_equal(tether_session_error(s[i]), TETHER_ESESSIONGONE);
  }
  last = now_ms() - t0;
  printf("# %d sessions of a non-durable client: CPU while they are suspended and probed every "
         "%d ms %.2f%%; killed, all failed after %llu ms\n",
         FIG_N, FIG_HEARTBEAT_MS, cpu, (unsigned long long)last);
  for (int i = 0; i < FIG_N; i++)
    tether_close(s[i]);
  wait_fds(base);
  free(s);
  tether_ctx_free(sv.ctx);
}

/* Each test starts without firewall rules (a failed one may leave its). */
static int no_rules(void **state) {
  (void)state;
  return system("iptables -w -F INPUT && iptables -w -F OUTPUT") == 0 ? 0 : -1;
}

static int kill_kids(void **state) {
  (void)state;
  for (; n_kids > 0; n_kids--) {
    kill(kids[n_kids - 1], SIGKILL);
    waitpid(kids[n_kids - 1], NULL, 0);
  }
  return 0;
}

/* A network namespace of the test's own, loopback up. */
static void test_server_killed(void **state) {
  (void)state;
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(p[1], STDOUT_FILENO);
    char hb[16];
    snprintf(hb, sizeof(hb), "%d", HEARTBEAT_MS);
    execl(self, self, "server", hb, (char *)NULL);
    _exit(2);
  }
  close(p[1]);
  kids[n_kids++] = pid;
  char port[16] = "";
  size_t got = 0;
  struct pollfd pp = {p[0], POLLIN, 0};
  while (got < sizeof(port) - 1 && !strchr(port, '\n')) {
    assert_int_equal(poll(&pp, 1, WAIT_MS), 1);
    ssize_t n = read(p[0], port + got, sizeof(port) - 1 - got);
    assert_true(n > 0);
    got += (size_t)n;
    port[got] = '\0';
  }
  *strchr(port, '\n') = '\0';
  close(p[0]);

  tether_ctx *ctx = client_ctx(false, HEARTBEAT_MS);
  tether_session *s;
  char c;
  assert_int_equal(tether_connect(ctx, "127.0.0.1", port, &s), 0);
  assert_int_equal(tether_read(s, &c, 1), 1);
  /* The server's side channel is heard: its acknowledgement of our byte. */
  assert_int_equal(tether_write(s, "x", 1), 1);
  uint64_t acked = 0, t0 = now_ms();
  while (tether_session_peer_received(s, &acked) == 0 && acked < 1 && now_ms() - t0 < WAIT_MS)
    nap_ms(5);
  assert_int_equal(acked, 1);

  kill(pid, SIGKILL);
  assert_int_equal(waitpid(pid, NULL, 0), pid);
  n_kids--;
  t0 = now_ms();
  uint64_t took = wait_state(s, TETHER_STATE_FAILED, WAIT_MS);
  printf("# non-durable server killed: the client's session failed after %llu ms (heartbeat %d "
         "ms): %s\n",
         (unsigned long long)took, HEARTBEAT_MS, tether_strerror(tether_session_error(s)));
  assert_int_equal(tether_session_error(s), TETHER_ESESSIONGONE);
  assert_true(now_ms() - t0 < 3000); /* about 2 heartbeats; generous */
  tether_close(s);
  tether_ctx_free(ctx);
}

static bool own_netns(void) {
  if (unshare(CLONE_NEWNET) < 0)
    return false;
  return system("ip link set lo up") == 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "server") == 0)
    return server_main(atoi(argv[2]));
  if (argc == 7 && strcmp(argv[1], "client") == 0)
    return client_main(argv[5], argv[2], argv[3][0] == '1', atoi(argv[4]), atoi(argv[6]));
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = '\0';
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max; /* the figures' 1000 sessions; their client inherits it */
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (!own_netns()) {
    printf("# skipped: needs root for a network namespace of its own\n");
    return 77;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_killed_nondurable, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_killed_nondurable_ipv6, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_killed_durable, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_rejected_alive, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_evict_oldest, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_server_killed, no_rules, kill_kids),
      cmocka_unit_test_setup_teardown(test_figures, no_rules, kill_kids),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
