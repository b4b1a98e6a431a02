/* The read spin's signal discipline (lib/engine/spin.c) on its own: a
 * signal that comes while a spin holds signals back must end the wait that
 * follows, as it would have ended a plain poll; one the thread blocks, or
 * ignores, must not.  The signal is sent before the wait starts, which is
 * the case a wait that lets signals in first and sleeps second would lose.
 * The waits are on a timerfd that fires after 200 ms, so that a wrong
 * answer fails the test instead of hanging it. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/engine.h"

static volatile sig_atomic_t handled;

static void on_usr1(int sig) {
  (void)sig;
  handled++;
}

static int timer_200ms(void) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  struct itimerspec its = {.it_value = {0, 200 * 1000000}};
  assert_true(fd >= 0);
  assert_int_equal(timerfd_settime(fd, 0, &its, NULL), 0);
  return fd;
}

/* A session whose app fd is fd, as far as its waits go (waiters.c). */
static struct tether_session *waits_on(int fd) {
  static struct tether_session s;
  memset(&s, 0, sizeof(s));
  s.app_fd = fd;
  pthread_mutex_init(&s.waiters_lock, NULL);
  return &s;
}

static void set_usr1(void (*handler)(int), struct sigaction *old) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = handler; /* no SA_RESTART: poll is never restarted anyway */
  assert_int_equal(sigaction(SIGUSR1, &sa, old), 0);
  handled = 0;
}

/* Sent during the spin: the wait after it ends at once with -EINTR, the
 * handler having run once. */
static void test_signal_during_spin_ends_wait(void **state) {
  (void)state;
  struct sigaction old;
  struct spin_hold h;
  int fd = timer_200ms();
  set_usr1(on_usr1, &old);
  spin_hold(&h);
  assert_int_equal(pthread_kill(pthread_self(), SIGUSR1), 0);
  assert_int_equal(handled, 0); /* held back */
  assert_int_equal(spin_wait(&h, waits_on(fd), POLLIN), -EINTR);
  assert_int_equal(handled, 1);
  assert_int_equal(spin_release(&h), 0);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  assert_int_equal(poll(&p, 1, 0), 0); /* it did not wait for the timer */
  close(fd);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

/* A signal the thread itself blocks stays pending and ends nothing. */
static void test_blocked_signal_waits(void **state) {
  (void)state;
  struct sigaction old;
  struct spin_hold h;
  sigset_t usr1, before;
  int fd = timer_200ms();
  set_usr1(on_usr1, &old);
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  assert_int_equal(pthread_sigmask(SIG_BLOCK, &usr1, &before), 0);
  spin_hold(&h);
  assert_int_equal(pthread_kill(pthread_self(), SIGUSR1), 0);
  assert_int_equal(spin_wait(&h, waits_on(fd), POLLIN), 0); /* the timer ended it */
  assert_int_equal(spin_release(&h), 0);
  assert_int_equal(handled, 0);
  int sig = 0;
  assert_int_equal(sigwait(&usr1, &sig), 0); /* still pending: take it */
  assert_int_equal(sig, SIGUSR1);
  assert_int_equal(pthread_sigmask(SIG_SETMASK, &before, NULL), 0);
  close(fd);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

/* An ignored signal interrupts no wait. */
static void test_ignored_signal_waits(void **state) {
  (void)state;
  struct sigaction old;
  struct spin_hold h;
  int fd = timer_200ms();
  set_usr1(SIG_IGN, &old);
  spin_hold(&h);
  assert_int_equal(pthread_kill(pthread_self(), SIGUSR1), 0);
  assert_int_equal(spin_wait(&h, waits_on(fd), POLLIN), 0);
  assert_int_equal(spin_release(&h), 0);
  close(fd);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

/* The preload's way (spin_release, then its own wait): a signal during the
 * spin is reported by spin_release. */
static void test_release_reports_signal(void **state) {
  (void)state;
  struct sigaction old;
  struct spin_hold h;
  set_usr1(on_usr1, &old);
  spin_hold(&h);
  assert_int_equal(pthread_kill(pthread_self(), SIGUSR1), 0);
  assert_int_equal(spin_release(&h), -EINTR);
  assert_int_equal(handled, 1);
  assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_signal_during_spin_ends_wait),
      cmocka_unit_test(test_blocked_signal_waits),
      cmocka_unit_test(test_ignored_signal_waits),
      cmocka_unit_test(test_release_reports_signal),
  };
  return cmocka_run_group_tests_name("spin", tests, NULL, NULL);
}
