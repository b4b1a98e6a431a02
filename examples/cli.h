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

#define CLI_HOST_MAX 256

struct cli_hostport {
  char host[CLI_HOST_MAX]; /* "" when the argument was ":PORT" */
  char port[6];            /* decimal, 0..65535 */
};

/* Splits "HOST:PORT", "[IPV6]:PORT" or ":PORT".  PORT must be decimal. */
int cli_parse_hostport(const char *arg, struct cli_hostport *out);

/* hp as HOST:PORT, with brackets around an IPv6 host, in buf (which
 * should hold CLI_HOSTPORT_MAX bytes); returns buf. */
#define CLI_HOSTPORT_MAX (CLI_HOST_MAX + 8) /* "[" "]:" 5 digits */
const char *cli_format_hostport(const struct cli_hostport *hp, char *buf,
                                size_t len);

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

/* The first argument of a tool whose first word is a command: -1 when
 * argv[1] may name one (the caller checks which), else the exit code after
 * handling --help / --version or reporting `missing` when there is none. */
int cli_command_arg(int argc, char **argv, const char *prog, void (*usage)(FILE *),
                    const char *missing);

/* Reports what getopt_long() refused, for a loop run with opterr = 0 and
 * an optstring starting with ':' (c is then '?' or ':'); returns
 * CLI_EXIT_USAGE. */
int cli_getopt_error(const char *prog, int c, char *const argv[]);

/* "PROG: WHAT: message (NAME)" on stderr; err is -errno or a TETHER_E* code. */
void cli_print_error(const char *prog, const char *what, int err);

/* "PROG: WHAT HOST:PORT: message (NAME)" on stderr. */
void cli_print_addr_error(const char *prog, const char *what,
                          const struct cli_hostport *hp, int err);

/* A configuration with the defaults and the TETHER_* environment, durable
 * (TETHER_OPT_DURABLE) if asked; says on stderr what failed. */
int cli_config_new(const char *prog, int durable, tether_config **out);

/* tether_ctx_new() with the defaults and the TETHER_* environment; says on
 * stderr what failed (a malformed variable, or the context itself). */
int cli_ctx_new(const char *prog, tether_ctx **out);

/* Plain TCP (tether-bench --raw, tether-cp --plain): a connected
 * (passive = 0, TCP_NODELAY set) or listening (passive = 1, SO_REUSEADDR)
 * socket for the first address of hp that works, or a negative code
 * (reported on stderr). */
int cli_tcp_socket(const char *prog, const struct cli_hostport *hp,
                   int passive);
/* Sets TCP_NODELAY; 0 or -errno. */
int cli_tcp_nodelay(int fd);
/* The port a socket is bound to, or -errno. */
int cli_tcp_port(int fd);

/* True for the codes that only mean "not now" (-EAGAIN, -EINTR...). */
int cli_err_is_retry(int err);

/* Blocking loops that write all of buf.  Return 0 or a negative code
 * (-errno, or the session's code). */
int cli_fd_write_all(int fd, const void *buf, size_t len);
int cli_session_write_all(tether_session *s, const void *buf, size_t len);

/* User and system CPU seconds (all threads) of this process, or of another
 * one from /proc (clock ticks: 10 ms steps, so a run should last a second
 * or more for its figure to mean much); zeros if unknown. */
struct cli_cpu {
  double user, sys;
};
struct cli_cpu cli_cpu_self(void);
struct cli_cpu cli_cpu_of(pid_t pid);
/* A process's resident set in bytes (VmRSS), or 0. */
double cli_rss_bytes(pid_t pid);
/* The soft limit on open files goes up to the hard one (for many
 * sessions; inherited by forked children). */
void cli_raise_nofile(void);

/* A libevent loop with two priorities -- tether's side channel and the
 * ends of connections take the higher, everything else the lower -- which
 * looks for new events after 50 ms of lower-priority callbacks: with
 * thousands of busy sessions, or thousands being set up, the side
 * channel's datagrams are read in time (tether_config_set_event_base(3)).
 * NULL on failure. */
struct event_base;
struct event_base *cli_event_base(void);

#endif /* TETHER_EXAMPLES_CLI_H */
