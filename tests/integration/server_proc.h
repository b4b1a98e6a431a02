/* A server under test in its own process -- the tether-echo example,
 * started on an ephemeral loopback port -- and what /proc says about it:
 * resident memory (current, and the peak over a window), CPU time, threads,
 * and the drops of its UDP socket.  Failures are cmocka assertions. */
#ifndef TETHER_TESTS_SERVER_PROC_H
#define TETHER_TESTS_SERVER_PROC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct server_proc {
  pid_t pid;
  int port;
  char port_s[16];
  char log[64]; /* its stderr */
  /* A thread samples VmRSS every few ms: the peak since the last reset.
   * VmHWM is reset too where the kernel lets us (root): the larger wins. */
  pthread_t sampler;
  uint64_t rss_peak_kib; /* atomic */
  int stop;              /* atomic */
  bool hwm_resettable;
  bool exited; /* reaped: */
  int status;  /* its wait status */
};

/* Starts `exe server --listen 127.0.0.1:0` with the environment plus env
 * (NULL-terminated "NAME=VALUE" strings) and waits for its port.  The
 * server dies with the test (PR_SET_PDEATHSIG). */
void server_proc_start(struct server_proc *p, const char *exe, const char *const *env);
/* SIGTERM (unless it is gone already), then waits; returns the wait
 * status. */
int server_proc_stop(struct server_proc *p);
/* Whether it still runs (else it is reaped: exited, status). */
bool server_proc_alive(struct server_proc *p);
/* Prints its stderr (on a failure, say). */
void server_proc_dump_log(const struct server_proc *p);

uint64_t server_proc_rss_kib(const struct server_proc *p);
uint64_t server_proc_threads(const struct server_proc *p);
/* Its open file descriptors. */
unsigned server_proc_fds(const struct server_proc *p);
/* utime + stime of every thread it ran (exited ones included), in ms. */
uint64_t server_proc_cpu_ms(const struct server_proc *p);
void server_proc_peak_reset(struct server_proc *p);
uint64_t server_proc_peak_kib(struct server_proc *p);
/* Datagrams its UDP socket (127.0.0.1:port) dropped for want of room. */
uint64_t server_proc_udp_drops(const struct server_proc *p);

uint64_t proc_now_ms(void);

#endif
