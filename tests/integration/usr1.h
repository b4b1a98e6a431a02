/* SIGUSR1 for the tests that interrupt waits: a handler that notes when it
 * ran (no SA_RESTART), and a thread that signals another after a delay. */
#ifndef TETHER_TEST_USR1_H
#define TETHER_TEST_USR1_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static volatile uint64_t usr1_ns; /* when SIGUSR1 last came */

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
  return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

static inline void on_usr1(int sig) {
  (void)sig;
  usr1_ns = mono_ns();
}

/* Installs on_usr1 (old gets the previous action); 0 or -1. */
static inline int usr1_install(struct sigaction *old) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1;
  return sigaction(SIGUSR1, &sa, old);
}

struct usr1_kick {
  pthread_t target;
  int delay_us;
};

/* Thread: sends SIGUSR1 to k->target after k->delay_us. */
static inline void *usr1_kick_run(void *arg) {
  struct usr1_kick *k = arg;
  struct timespec ts = {k->delay_us / 1000000, (long)(k->delay_us % 1000000) * 1000};
  nanosleep(&ts, NULL);
  pthread_kill(k->target, SIGUSR1);
  return NULL;
}

#endif
