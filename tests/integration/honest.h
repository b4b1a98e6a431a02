/* The honest session of hostile_test: a tether client that streams a
 * random pattern (HONEST_PAT_LEN bytes, over and over) through an echo
 * server, paced or as fast as it goes, on a writer thread, and compares
 * every byte of the echo on a reader thread.  Failures are cmocka
 * assertions. */
#ifndef TETHER_TESTS_HONEST_H
#define TETHER_TESTS_HONEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tether/tether.h>

#define HONEST_PAT_LEN ((size_t)64 << 20)

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

/* Fields marked atomic are read and written with LOAD and STORE. */
struct honest {
  tether_ctx *ctx;
  tether_session *s;
  uint8_t id[16];
  uint8_t *pat; /* HONEST_PAT_LEN random bytes */
  pthread_t writer, reader;
  uint64_t sent, received; /* atomic */
  uint64_t rate;           /* atomic: bytes a second, 0 = as fast as it goes */
  int stop;                /* atomic: the writer shuts down and ends */
  int err;                 /* atomic: a read or write error */
  int64_t bad_at;          /* atomic: first offset of the echo that differed, -1 */
  int suspends;            /* atomic: state callbacks that said SUSPENDED */
  bool joined;             /* both threads are done */
};

extern struct honest H; /* one a process */

/* Connects to 127.0.0.1:port (a context configured from the environment)
 * and starts streaming at rate; returns once some echo came back. */
void honest_start(const char *port, uint64_t rate);
/* Stops the writer (it shuts the session down) and waits for both threads,
 * the reader until the echo's EOF: 0, or -ETIMEDOUT after timeout_s each. */
int honest_finish(int timeout_s);

#endif
