/* SIGUSR1 for the tests that interrupt waits: a handler that notes when it
 * ran (no SA_RESTART), and a thread that signals another after a delay, or
 * once it has seen the other in the part of its wait a test is about. */
#ifndef TETHER_TEST_USR1_H
#define TETHER_TEST_USR1_H

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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

/* What the signalling thread waits for before it signals. */
enum usr1_when {
  USR1_AFTER_DELAY, /* delay_us only */
  USR1_IN_SPIN,     /* the target holds SIGUSR1 back: it is in a read spin
                       (nothing else in the tests blocks signals) */
  USR1_ASLEEP,      /* the target sleeps in poll or ppoll */
};

struct usr1_kick {
  pthread_t target;
  int delay_us;
  int when;       /* enum usr1_when; for the others: */
  pid_t tid;      /* the target's thread id (gettid()) */
  int give_up_ms; /* signal anyway after this long */
  int after_us;   /* once seen, signal this much later */
  int looking;    /* set by the signalling thread once it runs */
  int armed;      /* set by the target (usr1_arm) right before its call */
  bool seen;      /* out: the signal went after `when` was seen */
};

/* The target, right before the call the signal is for: waits until the
 * signalling thread runs (a new thread may wait longer for a CPU than a
 * read spins), and has it look from now on (not while the target was still
 * in pthread_create, which a sanitizer's runtime may run with signals
 * blocked). */
static inline void usr1_arm(struct usr1_kick *k) {
  while (!__atomic_load_n(&k->looking, __ATOMIC_ACQUIRE))
    sched_yield();
  __atomic_store_n(&k->armed, 1, __ATOMIC_RELEASE);
}

/* Whether thread tid of this process is where k->when wants it, from
 * /proc/self/task/TID/{status,syscall}. */
static inline bool usr1_target_ready(const struct usr1_kick *k) {
  char path[64], line[256];
  bool ready = false;
  snprintf(path, sizeof(path), "/proc/self/task/%d/%s", (int)k->tid,
           k->when == USR1_IN_SPIN ? "status" : "syscall");
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  while (!ready && fgets(line, sizeof(line), f)) {
    unsigned long long v;
    if (k->when == USR1_IN_SPIN && sscanf(line, "SigBlk: %llx", &v) == 1)
      ready = (v >> (SIGUSR1 - 1)) & 1;
    else if (k->when == USR1_ASLEEP && sscanf(line, "%llu ", &v) == 1)
      ready = v == SYS_ppoll
#ifdef SYS_poll
              || v == SYS_poll
#endif
          ;
    if (k->when == USR1_ASLEEP)
      break; /* one line: the system call's number and arguments */
  }
  fclose(f);
  return ready;
}

/* Thread: sends SIGUSR1 to k->target after k->delay_us and, unless `when`
 * is USR1_AFTER_DELAY, after_us after the target was where `when` says
 * (k->seen), or once give_up_ms have passed (!k->seen). */
static inline void *usr1_kick_run(void *arg) {
  struct usr1_kick *k = arg;
  struct timespec ts = {k->delay_us / 1000000, (long)(k->delay_us % 1000000) * 1000};
  nanosleep(&ts, NULL);
  k->seen = false;
  if (k->when != USR1_AFTER_DELAY) {
    __atomic_store_n(&k->looking, 1, __ATOMIC_RELEASE);
    uint64_t end = mono_ns() + (uint64_t)k->give_up_ms * 1000000;
    while (!__atomic_load_n(&k->armed, __ATOMIC_ACQUIRE) && mono_ns() < end)
      ;
    while (!(k->seen = usr1_target_ready(k)) && mono_ns() < end)
      ;
    if (k->seen && k->after_us) {
      struct timespec a = {k->after_us / 1000000, (long)(k->after_us % 1000000) * 1000};
      nanosleep(&a, NULL);
    }
  }
  pthread_kill(k->target, SIGUSR1);
  return NULL;
}

#endif
