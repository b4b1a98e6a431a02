/* Helpers shared by the in-process snapshot tests (snapshot_test.c,
 * store_test.c): a client and a server context over loopback, bounded
 * waits, and strings written and checked on sessions.  They fail the
 * current cmocka test on any surprise. */
#ifndef TETHER_TESTS_SNAP_PAIR_H
#define TETHER_TESTS_SNAP_PAIR_H

#include <stdbool.h>
#include <sys/types.h>

#include <tether/tether.h>

#define WAIT_MS 30000 /* generous: sanitizer builds on a loaded machine */

extern bool snap_durable; /* new contexts are durable (TETHER_OPT_DURABLE) */

/* cmocka setup/teardown: the test's contexts are durable. */
int durable_on(void **state);
int durable_off(void **state);

struct pair {
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  tether_session *srv, *cli;
  char port[16];
};

/* A context configured from the environment, durable if snap_durable. */
tether_ctx *new_ctx(void);
/* Waits (bounded) until s is readable/writable: poll(2)'s result. */
int io_wait(tether_session *s, short ev);
/* Writes all of str, waiting as needed. */
void send_str(tether_session *s, const char *str);
/* Reads exactly strlen(want) bytes and compares; returns 0 or the error
 * (-ETIMEDOUT, -EPIPE at end of stream). */
int expect_str(tether_session *s, const char *want);
/* Two contexts, a listener, a session between them, "hello"/"world"
 * exchanged; both sessions non-blocking. */
void pair_open(struct pair *p);
/* The only session of a restored context (suspended, or a client already
 * resumed), non-blocking. */
tether_session *only_session(tether_ctx *ctx);
/* Waits until s is connected again (a restored session resumes). */
void wait_connected(tether_session *s);

#endif
