/*
 * cli — helpers shared by the command-line tools (tether-echo, tether-bench,
 * tether-cp): argument parsing, a monotonic clock, JSON-safe output and
 * "write everything" loops.  Every parser returns 0 or -EINVAL and leaves its
 * output untouched on error.
 */
#ifndef TETHER_EXAMPLES_CLI_H
#define TETHER_EXAMPLES_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <tether/tether.h>

/* Exit statuses shared by every tool. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

struct cli_hostport {
  char host[256]; /* "" when the argument was ":PORT" */
  char port[6];   /* decimal, 0..65535 */
};

/* Splits "HOST:PORT", "[IPV6]:PORT" or ":PORT".  PORT must be decimal. */
int cli_parse_hostport(const char *arg, struct cli_hostport *out);

/* A byte count with an optional binary suffix: 512, 64K, 64M, 1G, 2T
 * (also "64KiB", "64MB"...; K = 1024).  Must be >= 1. */
int cli_parse_size(const char *arg, uint64_t *out);

/* A plain decimal integer in [min, max]. */
int cli_parse_uint(const char *arg, uint64_t min, uint64_t max, uint64_t *out);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t cli_now_ns(void);

/* Writes s as a quoted, escaped JSON string. */
void cli_json_str(FILE *f, const char *s);
/* Writes v as a JSON number, or null when it is not finite (JSON has no
 * NaN or infinity). */
void cli_json_double(FILE *f, double v);
/* One line: {"reconnects":N,"bytes_sent":N,"bytes_received":N,
 * "bytes_resent":N,"suspended_ms":N} */
void cli_print_stats_json(FILE *f, const tether_stats *st);

/* "PROG: message" and a hint to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "PROG: WHAT: message (NAME)" on stderr; err is -errno or a TETHER_E* code. */
void cli_print_error(const char *prog, const char *what, int err);

/* True for the codes that only mean "not now" (-EAGAIN, -EINTR...). */
int cli_err_is_retry(int err);

/* Blocking loops that write all of buf.  Return 0 or a negative code
 * (-errno, or the session's code). */
int cli_fd_write_all(int fd, const void *buf, size_t len);
int cli_session_write_all(tether_session *s, const void *buf, size_t len);

#endif /* TETHER_EXAMPLES_CLI_H */
