/* Unit tests for the preload's fd bookkeeping (lib/preload/fdtable.c):
 * aliases and the table, close-on-exec per number, and epoll registrations
 * that must follow a psock from file to file (level, edge-triggered,
 * one-shot), with real pipes, eventfds and epoll instances. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "preload.h"

/* The interposer takes libc's functions from here. */
struct real_fns real = {
    .dup3 = dup3, .epoll_ctl = epoll_ctl, .close = close, .fcntl = fcntl,
};

static bool same_file(int a, int b) {
  struct stat sa, sb;
  assert_int_equal(fstat(a, &sa), 0);
  assert_int_equal(fstat(b, &sb), 0);
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* epoll_wait with no timeout: how many events, the first one's data. */
static int events(int ep, uint64_t *data, uint32_t *what) {
  struct epoll_event ev[4];
  int n = epoll_wait(ep, ev, 4, 0);
  if (n > 0) {
    if (data)
      *data = ev[0].data.u64;
    if (what)
      *what = ev[0].events;
  }
  return n;
}

static int ready_eventfd(void) { return eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); }

static void reg(struct psock *ps, int ep, int op, int fd, uint32_t what, uint64_t data) {
  struct epoll_event ev = {.events = what, .data.u64 = data};
  assert_int_equal(epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev), 0);
  ps_reg_update(ps, ep, op, fd, &ev);
}

static int setup(void **state) {
  assert_int_equal(fdt_init(), 0);
  return 0;
}

static void test_aliases_and_table(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  assert_non_null(ps);
  int a = dup(p[0]), b = dup(p[0]);
  assert_int_equal(ps_add_alias(ps, a, false), 0);
  assert_int_equal(ps_add_alias(ps, b, true), 0);
  assert_ptr_equal(fdt_get(a), ps);
  assert_ptr_equal(fdt_get(b), ps);
  assert_true(ps_has_alias(ps, a));
  assert_int_equal(ps_remove_alias(ps, a), 1);
  assert_null(fdt_get(a));
  assert_ptr_equal(fdt_get(b), ps);
  assert_int_equal(ps_remove_alias(ps, b), 0);
  assert_null(fdt_get(b));
  assert_null(fdt_get(-1));
  assert_null(fdt_get(1 << 30));
  close(a), close(b), close(p[0]), close(p[1]);
  ps_free(ps);
}

static void test_swap_keeps_numbers_and_cloexec(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int a = fcntl(p[0], F_DUPFD_CLOEXEC, 0), b = dup(p[0]);
  ps_add_alias(ps, a, true);
  ps_add_alias(ps, b, false);
  int e = ready_eventfd();
  ps_swap(ps, e);
  assert_true(same_file(a, e));
  assert_true(same_file(b, e));
  assert_true(fcntl(a, F_GETFD) & FD_CLOEXEC);
  assert_false(fcntl(b, F_GETFD) & FD_CLOEXEC);
  ps_set_cloexec(ps, b, true);
  ps_swap(ps, p[0]);
  assert_true(same_file(a, p[0]));
  assert_true(fcntl(b, F_GETFD) & FD_CLOEXEC);
  ps_remove_alias(ps, a);
  ps_remove_alias(ps, b);
  close(a), close(b), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* A level-triggered registration follows the swap; the old file no longer
 * reports anything. */
static void test_epoll_level_follows_swap(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int fd = dup(p[0]);
  ps_add_alias(ps, fd, false);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  reg(ps, ep, EPOLL_CTL_ADD, fd, EPOLLIN, 42);
  assert_int_equal(events(ep, NULL, NULL), 0);
  int e = ready_eventfd();
  ps_swap(ps, e);
  uint64_t data = 0;
  assert_int_equal(events(ep, &data, NULL), 1);
  assert_int_equal(data, 42);
  /* Back to the (still open) pipe: nothing ready, and no stale item. */
  ps_swap(ps, p[0]);
  assert_int_equal(events(ep, NULL, NULL), 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_int_equal(events(ep, &data, NULL), 1);
  assert_int_equal(data, 42);
  /* The program's own MOD and DEL still work on the current file. */
  reg(ps, ep, EPOLL_CTL_MOD, fd, EPOLLIN, 43);
  assert_int_equal(events(ep, &data, NULL), 1);
  assert_int_equal(data, 43);
  reg(ps, ep, EPOLL_CTL_DEL, fd, 0, 0);
  ps_swap(ps, e);
  assert_int_equal(events(ep, NULL, NULL), 0);
  ps_remove_alias(ps, fd);
  close(fd), close(ep), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* Edge-triggered: a swap to a ready file is one edge, not a stream. */
static void test_epoll_edge_triggered(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int fd = dup(p[0]);
  ps_add_alias(ps, fd, false);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  reg(ps, ep, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLET, 7);
  int e = ready_eventfd();
  ps_swap(ps, e);
  assert_int_equal(events(ep, NULL, NULL), 1);
  assert_int_equal(events(ep, NULL, NULL), 0);
  ps_swap(ps, p[0]);
  assert_int_equal(events(ep, NULL, NULL), 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_int_equal(events(ep, NULL, NULL), 1);
  assert_int_equal(events(ep, NULL, NULL), 0);
  ps_remove_alias(ps, fd);
  close(fd), close(ep), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* One-shot: fires once; a swap re-adds it armed (at most one extra,
 * spurious wake-up, which the program's next call absorbs). */
static void test_epoll_oneshot(void **state) {
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int e1 = ready_eventfd(), e2 = ready_eventfd();
  int fd = dup(e1);
  ps_add_alias(ps, fd, false);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  reg(ps, ep, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLONESHOT, 9);
  assert_int_equal(events(ep, NULL, NULL), 1);
  assert_int_equal(events(ep, NULL, NULL), 0);
  ps_swap(ps, e2);
  assert_int_equal(events(ep, NULL, NULL), 1);
  assert_int_equal(events(ep, NULL, NULL), 0);
  ps_remove_alias(ps, fd);
  close(fd), close(ep), close(e1), close(e2);
  ps_free(ps);
}

/* Registrations of every alias, in several epoll instances, move together;
 * closing an epoll instance or an alias forgets its registrations. */
static void test_epoll_aliases_and_forget(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int a = dup(p[0]), b = dup(p[0]);
  ps_add_alias(ps, a, false);
  ps_add_alias(ps, b, false);
  int ep1 = epoll_create1(EPOLL_CLOEXEC), ep2 = epoll_create1(EPOLL_CLOEXEC);
  reg(ps, ep1, EPOLL_CTL_ADD, a, EPOLLIN, 1);
  reg(ps, ep1, EPOLL_CTL_ADD, b, EPOLLIN, 2);
  reg(ps, ep2, EPOLL_CTL_ADD, a, EPOLLIN, 3);
  assert_int_equal(ps->nregs, 3);
  int e = ready_eventfd();
  ps_swap(ps, e);
  struct epoll_event ev[4];
  assert_int_equal(epoll_wait(ep1, ev, 4, 0), 2);
  assert_int_equal(events(ep2, NULL, NULL), 1);
  fdt_forget_epfd(ep2);
  assert_int_equal(ps->nregs, 2);
  close(ep2);
  /* The program closed b (a careful one deletes its registration first:
   * the kernel keeps it while the file lives on in other numbers). */
  reg(ps, ep1, EPOLL_CTL_DEL, b, 0, 0);
  ps_reg_update(ps, ep1, EPOLL_CTL_ADD, b, &(struct epoll_event){.events = EPOLLIN});
  assert_int_equal(ps_remove_alias(ps, b), 1); /* forgets b's registration too */
  close(b);
  assert_int_equal(ps->nregs, 1);
  ps_swap(ps, p[0]);
  ps_swap(ps, e);
  uint64_t data = 0;
  assert_int_equal(events(ep1, &data, NULL), 1);
  assert_int_equal(data, 1);
  ps_remove_alias(ps, a);
  close(a), close(ep1), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_aliases_and_table),
      cmocka_unit_test(test_swap_keeps_numbers_and_cloexec),
      cmocka_unit_test(test_epoll_level_follows_swap),
      cmocka_unit_test(test_epoll_edge_triggered),
      cmocka_unit_test(test_epoll_oneshot),
      cmocka_unit_test(test_epoll_aliases_and_forget),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
