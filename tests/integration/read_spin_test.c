/* The blocking reader's spin (TETHER_OPT_READ_SPIN_US, tether(7)), over real
 * loopback sockets in one process.  What must hold whatever the machine's
 * load, so no assertion here depends on how fast anything runs:
 *
 *   - a reader whose waits were short (it spins) and that then waits long
 *     stops spinning: a run of long waits costs it one spin, not one each;
 *   - a signal during a long wait still interrupts it (-EINTR), also one
 *     that comes while the read spins (it is held back, then let in): the
 *     signalling thread looks at the reader (/proc, usr1.h) and signals
 *     once it sleeps in poll, or once it holds signals back (spins);
 *   - with the spin off, or on, the bytes are the same;
 *   - the option's range. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <tether/tether.h>

#include "usr1.h"

struct pair {
  tether_ctx *sctx, *cctx;
  tether_listener *l;
  tether_session *srv, *cli;
};

/* A session over loopback; the client's reads spin up to spin_us, the
 * server's up to server_spin_us. */
static void pair_open2(struct pair *p, int64_t spin_us, int64_t server_spin_us) {
  tether_config *cfg = tether_config_new();
  char port[16];
  assert_non_null(cfg);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, server_spin_us), 0);
  assert_int_equal(tether_ctx_new(cfg, &p->sctx), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, spin_us), 0);
  assert_int_equal(tether_ctx_new(cfg, &p->cctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(p->sctx, "127.0.0.1", "0", &p->l), 0);
  snprintf(port, sizeof(port), "%d", tether_listener_port(p->l));
  assert_int_equal(tether_connect(p->cctx, "127.0.0.1", port, &p->cli), 0);
  assert_int_equal(tether_accept(p->l, &p->srv), 0);
}

static void pair_open(struct pair *p, int64_t spin_us) { pair_open2(p, spin_us, spin_us); }

/* No other call may race with tether_close (tether_close(3)): a thread still
 * in tether_read on a session that is closed may use freed memory, or poll
 * a closed descriptor forever. */
static void pair_close(struct pair *p) {
  tether_close(p->cli);
  tether_close(p->srv);
  tether_listener_close(p->l);
  tether_ctx_free(p->cctx);
  tether_ctx_free(p->sctx);
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static uint64_t thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The server answers each byte it reads with the same byte; a byte 'L'
 * only after a pause of 20 ms.  Ends at the client's end of stream. */
static void *echo_slowly(void *arg) {
  struct pair *p = arg;
  char c;
  while (tether_read(p->srv, &c, 1) == 1) {
    if (c == 'L')
      msleep(20);
    if (tether_write(p->srv, &c, 1) != 1)
      break;
  }
  return NULL;
}

/* Ends the echo thread t (the client's shutdown: its read returns 0), then
 * the pair. */
static void pair_close_echo(struct pair *p, pthread_t t) {
  assert_int_equal(tether_shutdown(p->cli), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  pair_close(p);
}

static void round_trip(struct pair *p, char c) {
  char r = 0;
  assert_int_equal(tether_write(p->cli, &c, 1), 1);
  assert_int_equal(tether_read(p->cli, &r, 1), 1);
  assert_int_equal(r, c);
}

static void test_long_wait_sleeps(void **state) {
  (void)state;
  struct pair p;
  pthread_t t;
  pair_open(&p, 1000); /* the longest spin: the clearest difference */
  assert_int_equal(pthread_create(&t, NULL, echo_slowly, &p), 0);
  for (int i = 0; i < 200; i++) /* short waits: the reader spins */
    round_trip(&p, 's');
  uint64_t cpu = thread_cpu_us();
  for (int i = 0; i < 20; i++) /* long waits: 20 ms each */
    round_trip(&p, 'L');
  cpu = thread_cpu_us() - cpu;
  /* A 1 ms spin before each of the 20 waits would take 20 ms of CPU; only
   * the first wait may spin, the round trips' own work is well under 1 ms. */
  if (cpu > 10000)
    fail_msg("the reader used %llu us of CPU in 20 waits of 20 ms", (unsigned long long)cpu);
  pair_close_echo(&p, t);
}

static void test_signal_interrupts_wait(void **state) {
  (void)state;
  struct pair p;
  pthread_t t;
  struct sigaction old;
  assert_int_equal(usr1_install(&old), 0);
  pair_open(&p, 50);
  for (int i = 0; i < 3; i++) { /* the server echoes by hand here */
    char c = 'x', r;
    assert_int_equal(tether_write(p.cli, &c, 1), 1);
    assert_int_equal(tether_read(p.srv, &r, 1), 1);
    assert_int_equal(tether_write(p.srv, &r, 1), 1);
    assert_int_equal(tether_read(p.cli, &r, 1), 1);
  }
  struct usr1_kick k = {
      .target = pthread_self(), .when = USR1_ASLEEP, .tid = gettid(), .give_up_ms = 20000};
  assert_int_equal(pthread_create(&t, NULL, usr1_kick_run, &k), 0);
  char c;
  usr1_arm(&k);
  assert_int_equal(tether_read(p.cli, &c, 1), -EINTR); /* nothing comes */
  pthread_join(t, NULL);
  assert_true(k.seen);
  /* And the session still works. */
  assert_int_equal(tether_write(p.srv, "y", 1), 1);
  assert_int_equal(tether_read(p.cli, &c, 1), 1);
  assert_int_equal(c, 'y');
  pair_close(&p);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

struct kick {
  struct usr1_kick k;
  struct pair *p;
  sem_t done;  /* the read returned */
  bool wrote;  /* the byte that ended a read the signal did not */
};

/* Signals the reader once it has seen it spin (within 1 ms, or past its
 * end: then the read must still end with -EINTR); if the read has not returned 2 s later,
 * sends a byte so that it ends.  Never cancelled: it could be in
 * tether_write, holding the session's locks. */
static void *kick_reader(void *arg) {
  struct kick *k = arg;
  struct timespec ts;
  usr1_kick_run(&k->k);
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2;
  while (sem_timedwait(&k->done, &ts) != 0)
    if (errno == ETIMEDOUT) {
      k->wrote = tether_write(k->p->srv, "w", 1) == 1;
      break;
    }
  return NULL;
}

static void test_signal_during_spin(void **state) {
  (void)state;
  struct pair p;
  pthread_t echo;
  struct sigaction old;
  assert_int_equal(usr1_install(&old), 0);
  /* The echo thread sleeps while it waits, so that the signalling thread
   * finds a CPU while the reader spins. */
  pair_open2(&p, 1000, 0);
  assert_int_equal(pthread_create(&echo, NULL, echo_slowly, &p), 0);
  int conclusive = 0;
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < 5; i++) /* short waits (another thread answers): the next read spins */
      round_trip(&p, 's');
    pthread_t t;
    struct kick k = {
        .k = {.target = pthread_self(), .when = USR1_IN_SPIN, .tid = gettid(), .give_up_ms = 200,
              .after_us = round * 150}, /* within the spin, at its end, after it */
        .p = &p};
    assert_int_equal(sem_init(&k.done, 0, 0), 0);
    assert_int_equal(pthread_create(&t, NULL, kick_reader, &k), 0);
    char c = 0;
    usr1_arm(&k.k);
    ssize_t n = tether_read(p.cli, &c, 1);
    sem_post(&k.done);
    pthread_join(t, NULL);
    sem_destroy(&k.done);
    if (n == -EINTR && k.wrote) { /* interrupted just as the byte went: take it */
      assert_int_equal(tether_read(p.cli, &c, 1), 1);
      assert_int_equal(c, 'w');
    }
    if (!k.k.seen) { /* the signal may have come before the read waited */
      if (n != -EINTR && (n != 1 || c != 'w'))
        fail_msg("round %d: %zd ('%c')", round, n, c);
      continue;
    }
    if (n != -EINTR)
      fail_msg("round %d: a signal while the read spun did not interrupt it (%zd)", round, n);
    conclusive++;
  }
  /* Unless the machine was so loaded that no signal came during a read. */
  if (conclusive == 0)
    fprintf(stderr, "read_spin_test: no round had its signal while the read spun\n");
  pair_close_echo(&p, echo);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

/* 4 MiB one way, with the spin on and off: the same bytes. */
static void *send_pattern(void *arg) {
  struct pair *p = arg;
  static uint8_t buf[65536];
  for (uint32_t off = 0; off < 4u << 20; off += sizeof(buf)) {
    for (size_t i = 0; i < sizeof(buf); i++)
      buf[i] = (uint8_t)((off + i) * 2654435761u >> 24);
    for (size_t done = 0; done < sizeof(buf);) {
      ssize_t w = tether_write(p->srv, buf + done, sizeof(buf) - done);
      if (w <= 0)
        return NULL;
      done += (size_t)w;
    }
  }
  (void)tether_shutdown(p->srv);
  return NULL;
}

static void transfer(int64_t spin_us) {
  struct pair p;
  pthread_t t;
  uint8_t buf[7000];
  uint32_t got = 0;
  ssize_t n;
  pair_open(&p, spin_us);
  assert_int_equal(pthread_create(&t, NULL, send_pattern, &p), 0);
  while ((n = tether_read(p.cli, buf, sizeof(buf))) > 0) {
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] != (uint8_t)((got + (uint32_t)i) * 2654435761u >> 24))
        fail_msg("byte %u differs (spin %lld us)", got + (unsigned)i, (long long)spin_us);
    got += (uint32_t)n;
  }
  assert_int_equal(n, 0);
  assert_int_equal(got, 4u << 20);
  pthread_join(t, NULL);
  pair_close(&p);
}

static void test_bytes_same_with_and_without_spin(void **state) {
  (void)state;
  transfer(0);
  transfer(50);
}

static void test_option_range(void **state) {
  (void)state;
  tether_config *cfg = tether_config_new();
  int64_t v;
  assert_non_null(cfg);
  assert_int_equal(tether_config_get(cfg, TETHER_OPT_READ_SPIN_US, &v), 0);
  assert_int_equal(v, 50);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, 0), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, 1000), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, 1001), -EINVAL);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_READ_SPIN_US, -1), -EINVAL);
  tether_config_free(cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_wait_sleeps),
      cmocka_unit_test(test_signal_interrupts_wait),
      cmocka_unit_test(test_signal_during_spin),
      cmocka_unit_test(test_bytes_same_with_and_without_spin),
      cmocka_unit_test(test_option_range),
  };
  return cmocka_run_group_tests_name("read_spin", tests, NULL, NULL);
}
