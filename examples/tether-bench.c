/*
 * tether-bench — the same workloads over tether sessions or plain TCP.
 *
 *   tether-bench throughput|latency|setup|idle|c10k [--raw] [--bytes N]
 *                [--write-size N] [--count N] [--seconds S] [--runs N]
 *                [--listen HOST:PORT | --connect HOST:PORT]
 *
 * One code path runs both modes: struct net/struct conn hide whether a
 * connection is a tether session or a TCP socket, so raw and tether do the
 * identical reads and writes with identical buffer sizes.  Raw sockets get
 * TCP_NODELAY because the library sets it on its own sockets.
 *
 * Without --listen/--connect the server runs in a forked child on
 * 127.0.0.1 and an ephemeral port.  A child process (rather than a thread)
 * can simply be killed at the end, whatever state its sessions are in, and
 * the fork happens before either side creates an engine thread.
 *
 * The server is sequential: one connection at a time, which is all a
 * benchmark client opens.  It never waits for a setup client's close, so
 * teardown is not counted in the next connection's setup time.  The idle
 * and c10k tests are the exception: many sessions on one event loop per
 * side (bench_loop.c), through tether's async API or libevent bufferevents.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, pipe2 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tether/tether.h>

#include "bench_loop.h"
#include "cli.h"

#define PROG "tether-bench"
#define IO_SIZE (128 * 1024) /* every read and write, both modes */
#define MAX_COUNT 10000000u  /* samples are kept in memory: 80 MB at most */
#define MAX_RUNS 1000u
#define MAX_IDLE_SECONDS 3600u
/* Idle test: how long after the last connect the measurement starts, so
 * that it sees the sessions' steady state, not their first heartbeats. */
#define IDLE_SETTLE_NS (3 * 1000000000ull)
/* Per run: a test's own metrics (up to MAX_TEST_METRICS), then CPU_METRICS. */
#define MAX_TEST_METRICS 8
#define CPU_METRICS 4
#define MAX_METRICS (MAX_TEST_METRICS + CPU_METRICS)

enum test { TEST_THROUGHPUT, TEST_LATENCY, TEST_SETUP, TEST_IDLE, TEST_C10K };

/* ---- transport: plain TCP or tether, behind one interface -------------- */

struct net {
  int raw;
  tether_ctx *ctx;    /* tether mode */
  tether_listener *l; /* tether mode, server */
  int lfd;            /* raw mode, server */
};

struct conn {
  tether_session *s; /* tether mode */
  int fd;            /* raw mode */
};

static int net_init(struct net *n, int raw) {
  *n = (struct net){.raw = raw, .lfd = -1};
  if (raw)
    return 0;
  return cli_ctx_new(PROG, &n->ctx);
}

static void net_free(struct net *n) {
  if (n->l != NULL)
    tether_listener_close(n->l);
  if (n->ctx != NULL)
    tether_ctx_free(n->ctx);
  if (n->lfd >= 0)
    close(n->lfd);
}

static int net_listen(struct net *n, const struct cli_hostport *hp) {
  int r;

  if (n->raw) {
    r = cli_tcp_socket(PROG, hp, 1);
    if (r >= 0)
      n->lfd = r;
    return r < 0 ? r : 0;
  }
  r = tether_listen(n->ctx, hp->host, hp->port, &n->l);
  if (r < 0)
    cli_print_addr_error(PROG, "cannot listen on", hp, r);
  return r;
}

/* The bound port, or a negative code. */
static int net_port(const struct net *n) {
  if (!n->raw)
    return tether_listener_port(n->l);
  return cli_tcp_port(n->lfd);
}

static int net_accept(struct net *n, struct conn *c) {
  int r;

  *c = (struct conn){.fd = -1};
  if (!n->raw) {
    r = tether_accept(n->l, &c->s);
    if (r < 0)
      cli_print_error(PROG, "accept", r);
    return r;
  }
  do
    c->fd = accept4(n->lfd, NULL, NULL, SOCK_CLOEXEC);
  while (c->fd < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (c->fd < 0) {
    r = -errno;
    cli_print_error(PROG, "accept", r);
    return r;
  }
  r = cli_tcp_nodelay(c->fd);
  if (r < 0) {
    cli_print_error(PROG, "TCP_NODELAY", r);
    close(c->fd);
    c->fd = -1;
  }
  return r;
}

static int net_connect(struct net *n, const struct cli_hostport *hp,
                       struct conn *c) {
  int r;

  *c = (struct conn){.fd = -1};
  if (n->raw) {
    r = cli_tcp_socket(PROG, hp, 0);
    if (r >= 0)
      c->fd = r;
    return r < 0 ? r : 0;
  }
  r = tether_connect(n->ctx, hp->host, hp->port, &c->s);
  if (r < 0)
    cli_print_addr_error(PROG, "cannot connect to", hp, r);
  return r;
}

/* Like read(2): bytes, 0 at EOF, or a negative code. */
static ssize_t conn_read(struct conn *c, void *buf, size_t len) {
  for (;;) {
    ssize_t n;

    if (c->s != NULL) {
      n = tether_read(c->s, buf, len);
    } else {
      n = read(c->fd, buf, len);
      if (n < 0)
        n = -errno;
    }
    if (n != -EINTR)
      return n;
  }
}

static int conn_write_all(struct conn *c, const void *buf, size_t len) {
  if (c->s != NULL)
    return cli_session_write_all(c->s, buf, len);
  return cli_fd_write_all(c->fd, buf, len);
}

static int conn_shutdown(struct conn *c) {
  if (c->s != NULL)
    return tether_shutdown(c->s);
  return shutdown(c->fd, SHUT_WR) < 0 ? -errno : 0;
}

static int conn_close(struct conn *c) {
  int r = 0;

  if (c->s != NULL)
    r = tether_close(c->s);
  else if (c->fd >= 0 && close(c->fd) < 0)
    r = -errno;
  *c = (struct conn){.fd = -1};
  return r;
}

/* Reads the one byte the peer must send now (an ack or an echo). */
static int expect_byte(struct conn *c, char *buf, const char *what) {
  ssize_t n = conn_read(c, buf, 1);

  if (n == 1)
    return 0;
  if (n == 0) {
    fprintf(stderr, PROG ": %s: unexpected EOF from the server\n", what);
    return -EPROTO;
  }
  cli_print_error(PROG, what, (int)n);
  return (int)n;
}

/* ---- server ------------------------------------------------------------ */

/* Serves one connection of test t; buf holds IO_SIZE bytes. */
static int serve_conn(enum test t, struct conn *c, char *buf) {
  ssize_t n;
  int r;

  switch (t) {
  case TEST_THROUGHPUT:
    /* Discard until EOF, then ack: the client's clock stops at the ack. */
    while ((n = conn_read(c, buf, IO_SIZE)) > 0)
      ;
    if (n < 0)
      return (int)n;
    return conn_write_all(c, "", 1);
  case TEST_LATENCY:
    while ((n = conn_read(c, buf, IO_SIZE)) > 0) {
      r = conn_write_all(c, buf, (size_t)n);
      if (r < 0)
        return r;
    }
    return (int)n;
  case TEST_SETUP:
    /* Echo the one byte and close without waiting for the client's EOF. */
    n = conn_read(c, buf, 1);
    if (n <= 0)
      return n < 0 ? (int)n : -EPROTO;
    return conn_write_all(c, buf, 1);
  case TEST_IDLE:
  case TEST_C10K:
    break; /* loop_server's */
  }
  return -EINVAL;
}

/* Serves connections one at a time until killed; returns only on failure.
 * The port goes to ready_fd (an int) when it is >= 0, else to stderr. */
static int run_server(int raw, enum test t, const struct cli_hostport *hp,
                      int ready_fd) {
  struct net net;
  char *buf = NULL;
  int port, r;

  if (t == TEST_IDLE || t == TEST_C10K)
    return loop_server(PROG, raw, hp, ready_fd);
  r = net_init(&net, raw);
  if (r < 0)
    goto out;
  r = net_listen(&net, hp);
  if (r < 0)
    goto out;
  port = net_port(&net);
  if (port < 0) {
    cli_print_error(PROG, "getsockname", port);
    goto out;
  }
  buf = malloc(IO_SIZE);
  if (buf == NULL) {
    cli_print_error(PROG, "malloc", -ENOMEM);
    goto out;
  }
  if (ready_fd >= 0) {
    if (write(ready_fd, &port, sizeof(port)) != sizeof(port)) {
      cli_print_error(PROG, "cannot report the port", -errno);
      goto out;
    }
    close(ready_fd);
    ready_fd = -1;
  } else {
    fprintf(stderr, PROG ": listening on port %d\n", port);
  }

  for (;;) {
    struct conn c;

    r = net_accept(&net, &c);
    if (r < 0)
      goto out;
    /* A client that fails costs its connection, not the server. */
    r = serve_conn(t, &c, buf);
    if (r < 0)
      cli_print_error(PROG, "connection", r);
    int cr = conn_close(&c);
    if (cr < 0 && r >= 0)
      cli_print_error(PROG, "close", cr);
  }
out:
  if (ready_fd >= 0)
    close(ready_fd);
  free(buf);
  net_free(&net);
  return CLI_EXIT_FAIL;
}

/* Forks a server on 127.0.0.1 and an ephemeral port.  Must run before this
 * process creates any thread (a tether context). */
static int spawn_server(int raw, enum test t, pid_t *pid, int *port) {
  pid_t parent = getpid();
  int p[2];
  ssize_t n;

  if (pipe2(p, O_CLOEXEC) < 0) {
    int err = -errno;
    cli_print_error(PROG, "pipe", err);
    return err;
  }
  fflush(NULL); /* or the child would inherit unwritten output */
  *pid = fork();
  if (*pid < 0) {
    int err = -errno;
    cli_print_error(PROG, "fork", err);
    close(p[0]);
    close(p[1]);
    return err;
  }
  if (*pid == 0) {
    const struct cli_hostport lo = {.host = "127.0.0.1", .port = "0"};

    close(p[0]);
    /* Die with the parent even if it is killed before it can stop us. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
      _exit(CLI_EXIT_FAIL);
    _exit(run_server(raw, t, &lo, p[1]));
  }
  close(p[1]);
  do
    n = read(p[0], port, sizeof(*port));
  while (n < 0 && errno == EINTR);
  close(p[0]);
  if (n != sizeof(*port)) {
    /* The child has said why on stderr. */
    waitpid(*pid, NULL, 0);
    *pid = -1;
    return -ECHILD;
  }
  return 0;
}

static void stop_server(pid_t pid) {
  if (kill(pid, SIGTERM) < 0)
    cli_print_error(PROG, "kill server", -errno);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

/* ---- client: the measurements ------------------------------------------ */

struct bench {
  enum test test;
  int raw;
  uint64_t bytes; /* throughput */
  size_t write_size; /* throughput: bytes per write */
  uint64_t count; /* latency, setup; idle, c10k: sessions */
  uint64_t seconds; /* idle, c10k */
  pid_t server; /* the forked server, or -1 */
  unsigned runs;
  struct cli_hostport peer;
  struct net net;
  char *buf;         /* IO_SIZE bytes */
  uint64_t *samples; /* count entries, ns */
};

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

  return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;

  return (x > y) - (x < y);
}

/* Nearest-rank percentile (p in 1..100) of sorted ns samples, in µs. */
static double percentile_us(const uint64_t *sorted, size_t n, unsigned p) {
  size_t rank = (p * n + 99) / 100; /* ceil(p/100 * n), >= 1 for n >= 1 */

  return (double)sorted[rank - 1] / 1000.0;
}

/* m[] = median, p90, p99, min (µs); sorts the samples. */
static void summarize(uint64_t *samples, size_t n, double *m) {
  qsort(samples, n, sizeof(*samples), cmp_u64);
  m[0] = percentile_us(samples, n, 50);
  m[1] = percentile_us(samples, n, 90);
  m[2] = percentile_us(samples, n, 99);
  m[3] = (double)samples[0] / 1000.0;
}

/* m[] = seconds, Gbit/s. */
static int run_throughput(struct bench *b, double *m) {
  struct conn c;
  uint64_t t0, left = b->bytes;
  int r, cr;

  r = net_connect(&b->net, &b->peer, &c);
  if (r < 0)
    return r;
  t0 = cli_now_ns();
  while (left > 0) {
    size_t chunk = left < b->write_size ? (size_t)left : b->write_size;
    r = conn_write_all(&c, b->buf, chunk);
    if (r < 0) {
      cli_print_error(PROG, "write", r);
      goto out;
    }
    left -= chunk;
  }
  r = conn_shutdown(&c);
  if (r < 0) {
    cli_print_error(PROG, "shutdown", r);
    goto out;
  }
  r = expect_byte(&c, b->buf, "read ack");
  if (r < 0)
    goto out;
  m[0] = (double)(cli_now_ns() - t0) / 1e9;
  m[1] = (double)b->bytes * 8 / m[0] / 1e9;
out:
  cr = conn_close(&c);
  if (cr < 0 && r >= 0) {
    cli_print_error(PROG, "close", cr);
    r = cr;
  }
  return r;
}

/* One connection, count 1-byte round trips; m[] as summarize(). */
static int run_latency(struct bench *b, double *m) {
  struct conn c;
  int r, cr;

  r = net_connect(&b->net, &b->peer, &c);
  if (r < 0)
    return r;
  for (uint64_t i = 0; i < b->count; i++) {
    uint64_t t0 = cli_now_ns();
    r = conn_write_all(&c, b->buf, 1);
    if (r < 0) {
      cli_print_error(PROG, "write", r);
      goto out;
    }
    r = expect_byte(&c, b->buf, "read echo");
    if (r < 0)
      goto out;
    b->samples[i] = cli_now_ns() - t0;
  }
  summarize(b->samples, b->count, m);
out:
  cr = conn_close(&c);
  if (cr < 0 && r >= 0) {
    cli_print_error(PROG, "close", cr);
    r = cr;
  }
  return r;
}

/* count times connect, 1-byte echo, close; m[] as summarize(). */
static int run_setup(struct bench *b, double *m) {
  for (uint64_t i = 0; i < b->count; i++) {
    uint64_t t0 = cli_now_ns();
    struct conn c;
    int r, cr;

    r = net_connect(&b->net, &b->peer, &c);
    if (r < 0)
      return r;
    r = conn_write_all(&c, b->buf, 1);
    if (r < 0)
      cli_print_error(PROG, "write", r);
    else
      r = expect_byte(&c, b->buf, "read echo");
    cr = conn_close(&c);
    if (cr < 0 && r >= 0) {
      cli_print_error(PROG, "close", cr);
      r = cr;
    }
    if (r < 0)
      return r;
    b->samples[i] = cli_now_ns() - t0;
  }
  summarize(b->samples, b->count, m);
  return 0;
}

/* ---- CPU time of both ends ------------------------------------------------ */

static int run_idle(struct bench *b, double *m) {
  struct loop_bench lb = {b->raw, b->count, b->seconds, b->server, b->peer};
  return loop_idle(PROG, &lb, m);
}

static int run_c10k(struct bench *b, double *m) {
  struct loop_bench lb = {b->raw, b->count, b->seconds, b->server, b->peer};
  return loop_c10k(PROG, &lb, m);
}

static const char *const cpu_keys[CPU_METRICS] = {"cpu_user_s", "cpu_sys_s", "server_cpu_user_s",
                                                  "server_cpu_sys_s"};

/* What a test measures: its metrics per run and as the median over runs. */
struct metric {
  const char *run_key;
  const char *summary_key;
};

struct test_desc {
  const char *name;
  int (*run)(struct bench *b, double *m);
  size_t n_metrics;
  struct metric metrics[MAX_TEST_METRICS];
};

static const struct test_desc tests[] = {
    [TEST_THROUGHPUT] = {"throughput",
                         run_throughput,
                         2,
                         {{"seconds", "seconds_median"},
                          {"gbit_s", "gbit_s_median"}}},
    [TEST_LATENCY] = {"latency",
                      run_latency,
                      4,
                      {{"rtt_us_median", "rtt_us_median"},
                       {"rtt_us_p90", "rtt_us_p90"},
                       {"rtt_us_p99", "rtt_us_p99"},
                       {"rtt_us_min", "rtt_us_min"}}},
    [TEST_SETUP] = {"setup",
                    run_setup,
                    4,
                    {{"setup_us_median", "setup_us_median"},
                     {"setup_us_p90", "setup_us_p90"},
                     {"setup_us_p99", "setup_us_p99"},
                     {"setup_us_min", "setup_us_min"}}},
    [TEST_IDLE] = {"idle",
                   run_idle,
                   7,
                   {{"setups_per_s", "setups_per_s_median"},
                    {"idle_cpu_pct", "idle_cpu_pct_median"},
                    {"server_idle_cpu_pct", "server_idle_cpu_pct_median"},
                    {"rss_bytes_per_session", "rss_bytes_per_session_median"},
                    {"server_rss_bytes_per_session", "server_rss_bytes_per_session_median"},
                    {"resumes", "resumes_median"},
                    {"resume_ms", "resume_ms_median"}}},
    [TEST_C10K] = {"c10k",
                   run_c10k,
                   4,
                   {{"setups_per_s", "setups_per_s_median"},
                    {"requests_per_s", "requests_per_s_median"},
                    {"rtt_us_p50", "rtt_us_p50_median"},
                    {"rtt_us_p99", "rtt_us_p99_median"}}},
};

static double median(double *v, size_t n) {
  qsort(v, n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One JSON line on stdout; results[run * MAX_METRICS + metric], the test's
 * own metrics first, then CPU_METRICS (the server's only when it ran here:
 * with_server). */
static int print_json(const struct bench *b, const double *results, bool with_server) {
  const struct test_desc *d = &tests[b->test];
  double column[MAX_RUNS];
  size_t ncpu = with_server ? CPU_METRICS : 2;

  fputs("{\"test\":", stdout);
  cli_json_str(stdout, d->name);
  fputs(",\"mode\":", stdout);
  cli_json_str(stdout, b->raw ? "raw" : "tether");
  if (b->test == TEST_THROUGHPUT)
    printf(",\"bytes\":%" PRIu64 ",\"write_size\":%zu", b->bytes, b->write_size);
  else if (b->test == TEST_IDLE || b->test == TEST_C10K)
    printf(",\"sessions\":%" PRIu64 ",\"seconds\":%" PRIu64, b->count, b->seconds);
  else
    printf(",\"count\":%" PRIu64, b->count);
  fputs(",\"runs\":[", stdout);
  for (unsigned run = 0; run < b->runs; run++) {
    fputs(run ? ",{" : "{", stdout);
    for (size_t k = 0; k < d->n_metrics; k++) {
      printf("%s\"%s\":", k ? "," : "", d->metrics[k].run_key);
      cli_json_double(stdout, results[run * MAX_METRICS + k]);
    }
    for (size_t k = 0; k < ncpu; k++) {
      printf(",\"%s\":", cpu_keys[k]);
      cli_json_double(stdout, results[run * MAX_METRICS + d->n_metrics + k]);
    }
    fputs("}", stdout);
  }
  fputs("]", stdout);
  for (size_t k = 0; k < d->n_metrics; k++) {
    for (unsigned run = 0; run < b->runs; run++)
      column[run] = results[run * MAX_METRICS + k];
    printf(",\"%s\":", d->metrics[k].summary_key);
    cli_json_double(stdout, median(column, b->runs));
  }
  for (size_t k = 0; k < ncpu; k++) {
    for (unsigned run = 0; run < b->runs; run++)
      column[run] = results[run * MAX_METRICS + d->n_metrics + k];
    printf(",\"%s_median\":", cpu_keys[k]);
    cli_json_double(stdout, median(column, b->runs));
  }
  fputs("}\n", stdout);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_print_error(PROG, "write stdout", -errno);
    return -EIO;
  }
  return 0;
}

/* Runs the measurements against connect_hp, or against a forked server
 * when it is NULL, and prints the JSON line. */
static int run_client(struct bench *b, const struct cli_hostport *connect_hp) {
  double *results = NULL;
  pid_t child = -1;
  int rc = CLI_EXIT_FAIL, r;

  b->net = (struct net){.lfd = -1};
  if (connect_hp != NULL) {
    b->peer = *connect_hp;
  } else {
    int port;
    if (spawn_server(b->raw, b->test, &child, &port) < 0)
      goto out;
    b->server = child;
    b->peer = (struct cli_hostport){.host = "127.0.0.1"};
    snprintf(b->peer.port, sizeof(b->peer.port), "%d", port);
  }
  bool looped = b->test == TEST_IDLE || b->test == TEST_C10K; /* own loop */
  if (!looped && net_init(&b->net, b->raw) < 0)
    goto out;
  b->buf = malloc(IO_SIZE);
  results = calloc((size_t)b->runs * MAX_METRICS, sizeof(*results));
  bool sampled = b->test == TEST_LATENCY || b->test == TEST_SETUP;
  if (sampled)
    b->samples = calloc(b->count, sizeof(*b->samples));
  if (b->buf == NULL || results == NULL || (sampled && b->samples == NULL)) {
    cli_print_error(PROG, "malloc", -ENOMEM);
    goto out;
  }
  memset(b->buf, 0xa5, IO_SIZE);

  for (unsigned run = 0; run < b->runs; run++) {
    double *m = &results[run * MAX_METRICS];
    struct cli_cpu c0 = cli_cpu_self(), s0 = child > 0 ? cli_cpu_of(child) : (struct cli_cpu){0, 0};
    r = tests[b->test].run(b, m);
    if (r < 0)
      goto out;
    struct cli_cpu c1 = cli_cpu_self(), s1 = child > 0 ? cli_cpu_of(child) : (struct cli_cpu){0, 0};
    double *cpu = m + tests[b->test].n_metrics;
    cpu[0] = c1.user - c0.user;
    cpu[1] = c1.sys - c0.sys;
    cpu[2] = s1.user - s0.user;
    cpu[3] = s1.sys - s0.sys;
  }
  if (print_json(b, results, child > 0) == 0)
    rc = CLI_EXIT_OK;
out:
  net_free(&b->net);
  if (child > 0)
    stop_server(child);
  free(results);
  free(b->samples);
  free(b->buf);
  return rc;
}

/* ---- main -------------------------------------------------------------- */

static void usage(FILE *f) {
  fputs("usage: " PROG " throughput|latency|setup|idle|c10k [--raw] [--bytes N] "
        "[--write-size N]\n"
        "                    [--count N] [--seconds S] [--runs N]\n"
        "                    [--listen HOST:PORT | --connect HOST:PORT]\n"
        "\n"
        "  throughput   send --bytes from client to server; report Gbit/s\n"
        "  latency      --count 1-byte round trips on one connection; "
        "report µs\n"
        "  setup        --count times connect, 1-byte echo, close; "
        "report µs\n"
        "  idle         hold --count sessions idle for --seconds; report the\n"
        "               CPU and memory they cost each side\n"
        "  c10k         --count sessions each ping-pong one byte for --seconds;\n"
        "               report requests/s and round-trip p50/p99\n"
        "\n"
        "  -r, --raw                plain TCP instead of tether (same "
        "workload)\n"
        "  -b, --bytes N            throughput volume (default 1G; "
        "suffixes K M G T)\n"
        "  -w, --write-size N       throughput: bytes per write (default "
        "128K, at most 128K)\n"
        "  -n, --count N            latency round trips (default 20000),\n"
        "                           setup connections (default 1000) or\n"
        "                           idle and c10k sessions (default 1000)\n"
        "  -s, --seconds S          idle, c10k: how long to measure (default 10)\n"
        "  -R, --runs N             repeat N times; report each and the "
        "median\n"
        "  -l, --listen HOST:PORT   run only the server (until killed)\n"
        "  -c, --connect HOST:PORT  run only the client, against that "
        "server\n"
        "  -V, --version            print the library version\n"
        "  -h, --help               print this help\n"
        "\n"
        "Without --listen/--connect both ends run here over 127.0.0.1.\n"
        "Prints one JSON line on stdout.  See tether-bench(1).\n",
        f);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"raw", no_argument, NULL, 'r'},
      {"bytes", required_argument, NULL, 'b'},
      {"write-size", required_argument, NULL, 'w'},
      {"count", required_argument, NULL, 'n'},
      {"seconds", required_argument, NULL, 's'},
      {"runs", required_argument, NULL, 'R'},
      {"listen", required_argument, NULL, 'l'},
      {"connect", required_argument, NULL, 'c'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct bench b = {.bytes = 1ull << 30, .write_size = IO_SIZE, .seconds = 10, .server = -1,
                    .runs = 1};
  const char *bytes_arg = NULL, *write_size_arg = NULL, *count_arg = NULL, *runs_arg = NULL;
  const char *seconds_arg = NULL, *listen_arg = NULL, *connect_arg = NULL;
  struct cli_hostport hp;
  uint64_t v;
  int c;

  int first = cli_command_arg(argc, argv, PROG, usage,
                              "missing test: throughput, latency, setup, idle or c10k");
  if (first >= 0)
    return first;
  if (strcmp(argv[1], "throughput") == 0)
    b.test = TEST_THROUGHPUT;
  else if (strcmp(argv[1], "latency") == 0)
    b.test = TEST_LATENCY;
  else if (strcmp(argv[1], "setup") == 0)
    b.test = TEST_SETUP;
  else if (strcmp(argv[1], "idle") == 0)
    b.test = TEST_IDLE;
  else if (strcmp(argv[1], "c10k") == 0)
    b.test = TEST_C10K;
  else
    return cli_usage_error(PROG,
                           "unknown test '%s' (expected throughput, latency, "
                           "setup, idle or c10k)",
                           argv[1]);
  b.count = b.test == TEST_LATENCY ? 20000 : 1000;

  /* Options follow the test name (see tether-echo.c). */
  argc--;
  argv++;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":rb:w:n:s:R:l:c:Vh", opts, NULL)) != -1) {
    switch (c) {
    case 'r':
      b.raw = 1;
      break;
    case 'b':
      bytes_arg = optarg;
      break;
    case 'w':
      write_size_arg = optarg;
      break;
    case 'n':
      count_arg = optarg;
      break;
    case 's':
      seconds_arg = optarg;
      break;
    case 'R':
      runs_arg = optarg;
      break;
    case 'l':
      listen_arg = optarg;
      break;
    case 'c':
      connect_arg = optarg;
      break;
    case 'V':
      printf(PROG " %s\n", tether_version());
      return CLI_EXIT_OK;
    case 'h':
      usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_getopt_error(PROG, c, argv);
    }
  }
  if (optind < argc)
    return cli_usage_error(PROG, "unexpected argument '%s'", argv[optind]);

  if (bytes_arg != NULL) {
    if (b.test != TEST_THROUGHPUT)
      return cli_usage_error(PROG, "--bytes applies to throughput only");
    if (cli_parse_size(bytes_arg, &b.bytes) < 0)
      return cli_usage_error(PROG, "bad --bytes '%s' (e.g. 1G, 64M, 4096)",
                             bytes_arg);
  }
  if (write_size_arg != NULL) {
    if (b.test != TEST_THROUGHPUT)
      return cli_usage_error(PROG, "--write-size applies to throughput only");
    if (cli_parse_size(write_size_arg, &v) < 0 || v < 1 || v > IO_SIZE)
      return cli_usage_error(PROG, "bad --write-size '%s' (1..128K)", write_size_arg);
    b.write_size = (size_t)v;
  }
  if (count_arg != NULL) {
    if (b.test == TEST_THROUGHPUT)
      return cli_usage_error(PROG, "--count applies to latency, setup, idle and c10k only");
    if (cli_parse_uint(count_arg, 1, MAX_COUNT, &b.count) < 0)
      return cli_usage_error(PROG, "bad --count '%s' (1..%u)", count_arg,
                             MAX_COUNT);
  }
  if (seconds_arg != NULL) {
    if (b.test != TEST_IDLE && b.test != TEST_C10K)
      return cli_usage_error(PROG, "--seconds applies to idle and c10k only");
    if (cli_parse_uint(seconds_arg, 1, MAX_IDLE_SECONDS, &b.seconds) < 0)
      return cli_usage_error(PROG, "bad --seconds '%s' (1..%u)", seconds_arg, MAX_IDLE_SECONDS);
  }
  if (runs_arg != NULL) {
    if (cli_parse_uint(runs_arg, 1, MAX_RUNS, &v) < 0)
      return cli_usage_error(PROG, "bad --runs '%s' (1..%u)", runs_arg,
                             MAX_RUNS);
    b.runs = (unsigned)v;
  }
  if (listen_arg != NULL && connect_arg != NULL)
    return cli_usage_error(PROG, "--listen and --connect exclude each other");

  if (b.test == TEST_IDLE || b.test == TEST_C10K)
    cli_raise_nofile();
  /* A peer that resets must fail a write with EPIPE, not kill us. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    cli_print_error(PROG, "signal", -errno);
    return CLI_EXIT_FAIL;
  }
  if (listen_arg != NULL) {
    if (bytes_arg != NULL || write_size_arg != NULL || count_arg != NULL || runs_arg != NULL ||
        seconds_arg != NULL)
      return cli_usage_error(PROG,
                             "--bytes, --write-size, --count, --seconds and --runs are client "
                             "options; "
                             "the server follows the client");
    if (cli_parse_hostport(listen_arg, &hp) < 0)
      return cli_usage_error(PROG,
                             "bad --listen '%s' (expected HOST:PORT, "
                             "[IPV6]:PORT or :PORT)",
                             listen_arg);
    return run_server(b.raw, b.test, &hp, -1);
  }
  if (connect_arg != NULL) {
    if (cli_parse_hostport(connect_arg, &hp) < 0 || hp.host[0] == '\0')
      return cli_usage_error(PROG,
                             "bad --connect '%s' (expected HOST:PORT or "
                             "[IPV6]:PORT)",
                             connect_arg);
    return run_client(&b, &hp);
  }
  return run_client(&b, NULL);
}
