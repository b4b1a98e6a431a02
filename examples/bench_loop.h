/*
 * bench_loop — tether-bench's tests of many sessions on one event loop per
 * side (the async API, or libevent bufferevents over plain TCP with --raw):
 * idle (what held sessions cost) and c10k (1-byte ping-pong on every
 * session at once).
 */
#ifndef TETHER_EXAMPLES_BENCH_LOOP_H
#define TETHER_EXAMPLES_BENCH_LOOP_H

#include <stdint.h>
#include <sys/types.h>

#include "cli.h"

struct loop_bench {
  int raw;
  uint64_t sessions;
  uint64_t seconds;
  pid_t server; /* the forked server (its CPU and memory are measured), or -1 */
  struct cli_hostport peer;
};

/* The server of both tests: accepts every session and echoes what it
 * reads, on one loop, until killed.  The port goes to ready_fd (an int)
 * when it is >= 0, else to stderr.  Returns only on failure. */
int loop_server(const char *prog, int raw, const struct cli_hostport *hp, int ready_fd);

/* Opens b->sessions sessions, lets them settle, then measures for
 * b->seconds what they cost while idle: m[] = setups/s, CPU of the client
 * and of the server (% of one core, user+sys), resident memory per session
 * on each side (bytes: growth over the process's size before the first
 * connect), then the resumes the client's sessions made and the time from
 * the first suspension to the last resume in ms (0 without: nothing breaks
 * idle sessions unless someone kills their connections, ss -K, to measure
 * a resume storm).  0 or a negative code (reported). */
int loop_idle(const char *prog, const struct loop_bench *b, double m[7]);

/* Opens b->sessions sessions, then for b->seconds each sends one byte and
 * waits for its echo, over and over: m[] = setups/s, requests/s, round-trip
 * p50 and p99 (microseconds).  0 or a negative code (reported). */
int loop_c10k(const char *prog, const struct loop_bench *b, double m[4]);

#endif /* TETHER_EXAMPLES_BENCH_LOOP_H */
