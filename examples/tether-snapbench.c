/*
 * tether-snapbench — how big snapshots are, and how long taking and
 * restoring them takes.
 *
 *   tether-snapbench [--sessions N] [--runs N]
 *
 * In one process, over 127.0.0.1: a server context with a listener and a
 * client context connect one session, exchange a few bytes each way, and
 * wait until the heartbeats have acknowledged them (bytes_retained 0 on both
 * sides: an idle session).  Both contexts are snapshotted (tether_snapshot,
 * in memory: no file, no fsync) to measure the size with one session; then
 * N-1 more sessions are set up the same way, the sizes measured again, and
 * the per-session increment is the difference over N-1.  Taking the
 * snapshot of each context with N idle sessions is timed --runs times.
 * Then both contexts are freed and each snapshot is restored (tether_restore)
 * --runs times, each restored context freed before the next; only
 * tether_restore itself is timed.  Nothing listens any more while the
 * client's snapshot is restored, so its sessions redial in vain in the
 * background: that is the engine thread's work, not the restore's.
 *
 * Prints one JSON line on stdout (see usage()).  Public API only.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <tether/tether.h>

#include "cli.h"

#define PROG "tether-snapbench"
#define MAX_SESSIONS 100000u
#define MAX_RUNS 1000u
#define FDS_PER_SESSION 12 /* both ends, with margin (RLIMIT_NOFILE) */
#define MSG_LEN 64
#define WAIT_MS 10000      /* for one exchange */
#define IDLE_WAIT_MS 30000 /* for every acknowledgement */

struct bench {
  unsigned sessions, runs;
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  char port[8];
  tether_session **cli, **srv; /* sessions entries each */
  unsigned open;               /* sessions set up so far */
};

static void usage(FILE *f) {
  fputs("usage: " PROG " [--sessions N] [--runs N]\n"
        "\n"
        "Snapshot size with one idle session, per-session increment, and "
        "the\n"
        "time of tether_snapshot and tether_restore with N idle sessions, "
        "over\n"
        "127.0.0.1 in this process.\n"
        "\n"
        "  -n, --sessions N   idle sessions for the timings (default 1000)\n"
        "  -R, --runs N       timed runs of each; medians reported (default "
        "5)\n"
        "  -V, --version      print the library version\n"
        "  -h, --help         print this help\n"
        "\n"
        "Prints one JSON line: sessions, runs, bytes_1_session_client/"
        "_server\n"
        "(the snapshot's size with one session), bytes_per_session_client/"
        "_server\n"
        "(the increment per further session), bytes_n_sessions_client/"
        "_server,\n"
        "snapshot_ms_client/_server and restore_ms_client/_server (every "
        "run)\n"
        "and their _median.  The server's context also holds the listener.\n",
        f);
}

/* ---- setup --------------------------------------------------------------- */

/* Soft RLIMIT_NOFILE raised to what n sessions need (both ends here). */
static int raise_nofile(unsigned n) {
  rlim_t need = (rlim_t)n * FDS_PER_SESSION + 64;
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
    int err = -errno;
    cli_print_error(PROG, "getrlimit", err);
    return err;
  }
  if (rl.rlim_cur >= need)
    return 0;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
    fprintf(stderr,
            PROG ": %u sessions need about %llu descriptors; the hard limit "
                 "is %llu (ulimit -Hn)\n",
            n, (unsigned long long)need, (unsigned long long)rl.rlim_max);
    return -EMFILE;
  }
  rl.rlim_cur = need;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
    int err = -errno;
    cli_print_error(PROG, "setrlimit", err);
    return err;
  }
  return 0;
}

static int write_n(tether_session *s, const char *buf, size_t n) {
  int r = cli_session_write_all(s, buf, n);
  if (r < 0)
    cli_print_error(PROG, "write", r);
  return r;
}

/* Reads exactly n bytes, waiting at most WAIT_MS for each piece. */
static int read_n(tether_session *s, char *buf, size_t n) {
  while (n > 0) {
    struct pollfd p = {.fd = tether_fd(s), .events = POLLIN};
    int r = poll(&p, 1, WAIT_MS);
    if (r <= 0) {
      r = r < 0 ? -errno : -ETIMEDOUT;
      cli_print_error(PROG, "read", r);
      return r;
    }
    ssize_t got = tether_read(s, buf, n);
    if (got == -EAGAIN || got == -EINTR)
      continue;
    if (got <= 0) {
      r = got == 0 ? -EPIPE : (int)got;
      cli_print_error(PROG, "read", r);
      return r;
    }
    buf += got;
    n -= (size_t)got;
  }
  return 0;
}

/* Sets up sessions until there are n: connect, accept, MSG_LEN bytes each
 * way. */
static int open_sessions(struct bench *b, unsigned n) {
  char msg[MSG_LEN], in[MSG_LEN];
  int r;

  memset(msg, 'x', sizeof(msg));
  for (; b->open < n; b->open++) {
    unsigned i = b->open;
    r = tether_connect(b->cctx, "127.0.0.1", b->port, &b->cli[i]);
    if (r < 0) {
      cli_print_error(PROG, "connect", r);
      return r;
    }
    r = tether_accept(b->l, &b->srv[i]);
    if (r < 0) {
      cli_print_error(PROG, "accept", r);
      tether_close(b->cli[i]);
      return r;
    }
    if ((r = write_n(b->cli[i], msg, sizeof(msg))) < 0 ||
        (r = read_n(b->srv[i], in, sizeof(in))) < 0 ||
        (r = write_n(b->srv[i], msg, sizeof(msg))) < 0 ||
        (r = read_n(b->cli[i], in, sizeof(in))) < 0) {
      b->open++; /* both are open: closed with the others */
      return r;
    }
  }
  return 0;
}

/* Bytes retained by session s, or a negative code. */
static int64_t retained(tether_session *s) {
  tether_stats st;
  int r = tether_session_stats(s, &st);
  return r < 0 ? r : (int64_t)st.bytes_retained;
}

/* Waits until every session on both sides retains nothing. */
static int wait_idle(struct bench *b) {
  uint64_t deadline = cli_now_ns() + IDLE_WAIT_MS * 1000000ull;
  unsigned i = 0;

  while (i < b->open) {
    int64_t c = retained(b->cli[i]), s = retained(b->srv[i]);
    if (c < 0 || s < 0) {
      cli_print_error(PROG, "session statistics", (int)(c < 0 ? c : s));
      return c < 0 ? (int)c : (int)s;
    }
    if (c == 0 && s == 0) {
      i++;
      continue;
    }
    if (cli_now_ns() > deadline) {
      fprintf(stderr,
              PROG ": session %u still retains %" PRId64
                   " (client) and %" PRId64
                   " (server) bytes after %d ms: no acknowledgement\n",
              i, c, s, IDLE_WAIT_MS);
      return -ETIMEDOUT;
    }
    nanosleep(&(struct timespec){.tv_nsec = 20 * 1000000}, NULL);
  }
  return 0;
}

/* ---- measurements -------------------------------------------------------- */

static int snapshot_len(tether_ctx *ctx, size_t *len) {
  void *blob;
  int r = tether_snapshot(ctx, &blob, len);

  if (r < 0) {
    cli_print_error(PROG, "snapshot", r);
    return r;
  }
  free(blob);
  return 0;
}

static double ms_since(uint64_t t0) {
  return (double)(cli_now_ns() - t0) / 1e6;
}

/* Times runs snapshots of ctx into ms[]; keeps the last in *blob. */
static int time_snapshot(tether_ctx *ctx, unsigned runs, double *ms,
                         void **blob, size_t *len) {
  *blob = NULL;
  for (unsigned i = 0; i < runs; i++) {
    free(*blob);
    *blob = NULL;
    uint64_t t0 = cli_now_ns();
    int r = tether_snapshot(ctx, blob, len);
    ms[i] = ms_since(t0);
    if (r < 0) {
      cli_print_error(PROG, "snapshot", r);
      return r;
    }
  }
  return 0;
}

/* Times runs restores of blob into ms[]; each must bring back n sessions. */
static int time_restore(const void *blob, size_t len, unsigned runs, unsigned n,
                        double *ms) {
  for (unsigned i = 0; i < runs; i++) {
    tether_ctx *ctx;
    uint64_t t0 = cli_now_ns();
    int r = tether_restore(NULL, blob, len, &ctx);
    ms[i] = ms_since(t0);
    if (r < 0) {
      cli_print_error(PROG, "restore", r);
      return r;
    }
    size_t got = tether_ctx_sessions(ctx, NULL, 0);
    tether_ctx_free(ctx);
    if (got != n) {
      fprintf(stderr, PROG ": restore brought back %zu sessions, not %u\n", got,
              n);
      return -EPROTO;
    }
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *v, unsigned n) {
  double s[MAX_RUNS];

  memcpy(s, v, n * sizeof(*v));
  qsort(s, n, sizeof(*s), cmp_double);
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* ,"NAME":[runs...],"NAME_median":M */
static void print_runs(const char *name, const double *v, unsigned n) {
  printf(",\"%s\":[", name);
  for (unsigned i = 0; i < n; i++) {
    fputs(i ? "," : "", stdout);
    cli_json_double(stdout, v[i]);
  }
  printf("],\"%s_median\":", name);
  cli_json_double(stdout, median(v, n));
}

/* The increment per session from 1 to n sessions; null for n = 1. */
static void print_increment(const char *name, size_t one, size_t all,
                            unsigned n) {
  printf(",\"%s\":", name);
  if (n > 1)
    cli_json_double(stdout, ((double)all - (double)one) / (n - 1));
  else
    fputs("null", stdout);
}

static int run(struct bench *b) {
  size_t one_c, one_s, all_c, all_s, blob_c_len, blob_s_len;
  void *blob_c = NULL, *blob_s = NULL;
  double *ms = calloc(4 * (size_t)b->runs, sizeof(*ms));
  double *snap_c = ms, *snap_s = ms + b->runs, *rest_c = ms + 2 * b->runs,
         *rest_s = ms + 3 * b->runs;
  int r = -ENOMEM;

  b->cli = calloc(b->sessions, sizeof(*b->cli));
  b->srv = calloc(b->sessions, sizeof(*b->srv));
  if (ms == NULL || b->cli == NULL || b->srv == NULL) {
    cli_print_error(PROG, "malloc", r);
    goto out;
  }
  if ((r = cli_ctx_new(PROG, &b->sctx)) < 0 ||
      (r = cli_ctx_new(PROG, &b->cctx)) < 0)
    goto out;
  r = tether_listen(b->sctx, "127.0.0.1", "0", &b->l);
  if (r < 0) {
    cli_print_error(PROG, "listen on 127.0.0.1", r);
    goto out;
  }
  snprintf(b->port, sizeof(b->port), "%d", tether_listener_port(b->l));

  if ((r = open_sessions(b, 1)) < 0 || (r = wait_idle(b)) < 0 ||
      (r = snapshot_len(b->cctx, &one_c)) < 0 ||
      (r = snapshot_len(b->sctx, &one_s)) < 0)
    goto out;
  if ((r = open_sessions(b, b->sessions)) < 0 || (r = wait_idle(b)) < 0 ||
      (r = time_snapshot(b->cctx, b->runs, snap_c, &blob_c, &all_c)) < 0 ||
      (r = time_snapshot(b->sctx, b->runs, snap_s, &blob_s, &all_s)) < 0)
    goto out;
  blob_c_len = all_c;
  blob_s_len = all_s;

  /* Nothing of the originals may remain: the server's snapshot binds its
   * listener's port again. */
  tether_ctx_free(b->cctx);
  tether_ctx_free(b->sctx);
  b->cctx = b->sctx = NULL;
  if ((r = time_restore(blob_s, blob_s_len, b->runs, b->sessions, rest_s)) <
          0 ||
      (r = time_restore(blob_c, blob_c_len, b->runs, b->sessions, rest_c)) < 0)
    goto out;

  printf("{\"test\":\"snapshot\",\"sessions\":%u,\"runs\":%u", b->sessions,
         b->runs);
  printf(",\"bytes_1_session_client\":%zu,\"bytes_1_session_server\":%zu",
         one_c, one_s);
  print_increment("bytes_per_session_client", one_c, all_c, b->sessions);
  print_increment("bytes_per_session_server", one_s, all_s, b->sessions);
  printf(",\"bytes_n_sessions_client\":%zu,\"bytes_n_sessions_server\":%zu",
         all_c, all_s);
  print_runs("snapshot_ms_client", snap_c, b->runs);
  print_runs("snapshot_ms_server", snap_s, b->runs);
  print_runs("restore_ms_client", rest_c, b->runs);
  print_runs("restore_ms_server", rest_s, b->runs);
  fputs("}\n", stdout);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    r = -EIO;
    cli_print_error(PROG, "write stdout", r);
  }
out:
  /* Freeing a context drops its sessions too. */
  if (b->cctx != NULL)
    tether_ctx_free(b->cctx);
  if (b->sctx != NULL)
    tether_ctx_free(b->sctx);
  free(blob_c);
  free(blob_s);
  free(b->cli);
  free(b->srv);
  free(ms);
  return r < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"sessions", required_argument, NULL, 'n'},
      {"runs", required_argument, NULL, 'R'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct bench b = {.sessions = 1000, .runs = 5};
  uint64_t v;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":n:R:Vh", opts, NULL)) != -1) {
    switch (c) {
    case 'n':
      if (cli_parse_uint(optarg, 1, MAX_SESSIONS, &v) < 0)
        return cli_usage_error(PROG, "bad --sessions '%s' (1..%u)", optarg,
                               MAX_SESSIONS);
      b.sessions = (unsigned)v;
      break;
    case 'R':
      if (cli_parse_uint(optarg, 1, MAX_RUNS, &v) < 0)
        return cli_usage_error(PROG, "bad --runs '%s' (1..%u)", optarg,
                               MAX_RUNS);
      b.runs = (unsigned)v;
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
  /* A peer that resets must fail a write with EPIPE, not kill us. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    cli_print_error(PROG, "signal", -errno);
    return CLI_EXIT_FAIL;
  }
  if (raise_nofile(b.sessions) < 0)
    return CLI_EXIT_FAIL;
  return run(&b);
}
