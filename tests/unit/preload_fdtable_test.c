/* Unit tests for the preload's fd bookkeeping (lib/preload/fdtable.c):
 * aliases and the table, close-on-exec per number, and epoll registrations:
 * tokens in the kernel and the program's data out of epoll_wait, and
 * registrations that follow a psock from file to file (level,
 * edge-triggered, one-shot), with real pipes, eventfds and epoll instances;
 * and what a fork does to them (tether's own number of a session shared
 * with children, orphans in the child). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* A program's epoll instance, tracked as the interposer tracks it. */
struct ep {
  int fd;
  struct psock *ps;
};

static struct ep ep_new(void) {
  struct ep e = {.fd = epoll_create1(EPOLL_CLOEXEC)};
  assert_true(e.fd >= 0);
  e.ps = ps_new(PS_EPOLL, 0);
  assert_non_null(e.ps);
  assert_int_equal(ps_add_alias(e.ps, e.fd, true), 0);
  assert_int_equal(ep_track(e.ps, e.fd), 0);
  return e;
}

static void ep_close(struct ep *e) {
  assert_int_equal(ps_remove_alias(e->ps, e->fd), 0);
  close(e->fd);
  ps_free(e->ps); /* forgets its registrations everywhere */
}

/* epoll_wait with no timeout, translated as epoll_wait() does: how many
 * events, the first one's data and events. */
static int events(struct ep *e, uint64_t *data, uint32_t *what) {
  struct epoll_event ev[8];
  struct ep_hit hits[8];
  int n = epoll_wait(e->fd, ev, 8, 0);
  assert_true(n >= 0);
  n = ep_translate(e->ps, ev, n, hits);
  if (n > 0) {
    if (data)
      *data = ev[0].data.u64;
    if (what)
      *what = ev[0].events;
  }
  return n;
}

/* What the kernel itself holds: the raw data of the first event. */
static int raw_events(struct ep *e, uint64_t *data) {
  struct epoll_event ev[8];
  int n = epoll_wait(e->fd, ev, 8, 0);
  if (n > 0 && data)
    *data = ev[0].data.u64;
  return n;
}

static int ctl(struct psock *ps, struct ep *e, int op, int fd, uint32_t what, uint64_t data) {
  struct epoll_event ev = {.events = what, .data.u64 = data};
  return ep_ctl(e->ps, ps, e->fd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev);
}

static int ready_eventfd(void) { return eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); }

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
  assert_true(fdt_limit() >= 1024);
  close(a), close(b), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* A swap keeps every number and its close-on-exec flag; a session's
 * numbers are close-on-exec in the kernel whatever the program asked for
 * (it sees its own setting). */
static void test_swap_keeps_numbers_and_cloexec(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  struct psock *ps = ps_new(PS_TCP, AF_INET);
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
  ps_set_cloexec(ps, b, false);
  /* A session: hidden from exec in the kernel, the program's view kept. */
  ps->kind = PS_SESSION;
  assert_true(ps_exec_hidden(ps));
  ps_swap(ps, e);
  assert_true(fcntl(b, F_GETFD) & FD_CLOEXEC);
  assert_false(ps_get_cloexec(ps, b));
  assert_true(ps_get_cloexec(ps, a));
  /* Plain again (a connect that found no tether): the program's flags. */
  ps->kind = PS_PLAIN;
  assert_false(ps_exec_hidden(ps));
  ps_swap(ps, p[0]);
  assert_false(fcntl(b, F_GETFD) & FD_CLOEXEC);
  assert_true(fcntl(a, F_GETFD) & FD_CLOEXEC);
  ps_remove_alias(ps, a);
  ps_remove_alias(ps, b);
  close(a), close(b), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* The kernel holds a token, never the program's data; epoll_wait gives
 * the program's data back, and says which registration fired. */
static void test_epoll_token_translation(void **state) {
  struct ep e = ep_new();
  struct psock *ps = ps_new(PS_OTHER, 0);
  int fd = ready_eventfd();
  ps_add_alias(ps, fd, true);
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 0x1234), 0);
  assert_int_equal(ps_nregs(ps), 1);
  uint64_t raw = 0;
  assert_int_equal(raw_events(&e, &raw), 1);
  assert_int_not_equal(raw, 0x1234);
  struct epoll_event ev[2];
  struct ep_hit hits[2];
  assert_int_equal(epoll_wait(e.fd, ev, 2, 0), 1);
  assert_int_equal(ep_translate(e.ps, ev, 1, hits), 1);
  assert_int_equal(ev[0].data.u64, 0x1234);
  assert_int_equal(ev[0].events, EPOLLIN | EPOLLOUT);
  assert_int_equal(hits[0].fd, fd);
  assert_int_equal(hits[0].events, EPOLLIN | EPOLLOUT);
  /* The kernel's errors come back as they are. */
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN, 1), -EEXIST);
  assert_int_equal(ps_nregs(ps), 1);
  /* A stale event (its registration deleted meanwhile) is dropped. */
  assert_int_equal(epoll_wait(e.fd, ev, 2, 0), 1);
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_DEL, fd, 0, 0), 0);
  assert_int_equal(ps_nregs(ps), 0);
  assert_int_equal(ep_translate(e.ps, ev, 1, hits), 0);
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_DEL, fd, 0, 0), -ENOENT);
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_MOD, fd, EPOLLIN, 0), -ENOENT);
  /* A slot used again gets another check value: the old token is dead. */
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN, 77), 0);
  ev[0].events = EPOLLIN; /* ev[0] still holds the old token */
  assert_int_equal(ep_translate(e.ps, ev, 1, hits), 0);
  assert_int_equal(events(&e, &raw, NULL), 1);
  assert_int_equal(raw, 77);
  /* Data that merely looks like a slot number is not a token. */
  ev[0].data.u64 = 0;
  assert_int_equal(ep_translate(e.ps, ev, 1, hits), 0);
  ps_remove_alias(ps, fd);
  close(fd);
  ps_free(ps);
  ep_close(&e);
}

/* A level-triggered registration follows the swap; the old file no longer
 * reports anything. */
static void test_epoll_level_follows_swap(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int fd = dup(p[0]);
  ps_add_alias(ps, fd, false);
  struct ep e = ep_new();
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN, 42), 0);
  assert_int_equal(events(&e, NULL, NULL), 0);
  int r = ready_eventfd();
  ps_swap(ps, r);
  uint64_t data = 0;
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 42);
  assert_int_equal(events(&e, &data, NULL), 1); /* level: again */
  /* Back to the (still open) pipe: nothing ready, and no stale item. */
  ps_swap(ps, p[0]);
  assert_int_equal(events(&e, NULL, NULL), 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 42);
  /* The program's own MOD and DEL still work on the current file. */
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_MOD, fd, EPOLLIN, 43), 0);
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 43);
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_DEL, fd, 0, 0), 0);
  ps_swap(ps, r);
  assert_int_equal(events(&e, NULL, NULL), 0);
  ps_remove_alias(ps, fd);
  close(fd), close(r), close(p[0]), close(p[1]);
  ps_free(ps);
  ep_close(&e);
}

/* Edge-triggered: a swap to a ready file is one edge, not a stream. */
static void test_epoll_edge_triggered(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int fd = dup(p[0]);
  ps_add_alias(ps, fd, false);
  struct ep e = ep_new();
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLET, 7), 0);
  int r = ready_eventfd();
  ps_swap(ps, r);
  assert_int_equal(events(&e, NULL, NULL), 1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  ps_swap(ps, p[0]);
  assert_int_equal(events(&e, NULL, NULL), 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_int_equal(events(&e, NULL, NULL), 1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  /* Data already there when the file comes back: one edge for it. */
  ps_swap(ps, r);
  assert_int_equal(events(&e, NULL, NULL), 1);
  ps_swap(ps, p[0]);
  assert_int_equal(events(&e, NULL, NULL), 1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  ps_remove_alias(ps, fd);
  close(fd), close(r), close(p[0]), close(p[1]);
  ps_free(ps);
  ep_close(&e);
}

/* One-shot: fires once, and stays disarmed across swaps until the
 * program's MOD; an event the interposer took but did not pass on is
 * undone (the registration is armed again). */
static void test_epoll_oneshot(void **state) {
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int e1 = ready_eventfd(), e2 = ready_eventfd();
  int fd = dup(e1);
  ps_add_alias(ps, fd, false);
  struct ep e = ep_new();
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLONESHOT, 9), 0);
  assert_int_equal(events(&e, NULL, NULL), 1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  ps_swap(ps, e2); /* a ready file: the kernel would fire a re-added item */
  assert_int_equal(events(&e, NULL, NULL), 0);
  assert_int_equal(raw_events(&e, NULL), 0);
  ps_swap(ps, e1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  /* The program re-arms it. */
  uint64_t data = 0;
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT, 10), 0);
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 10);
  assert_int_equal(events(&e, NULL, NULL), 0);
  /* Armed and swapped before it fires: fires once, on the new file. */
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT, 11), 0);
  ps_swap(ps, e2);
  assert_int_equal(events(&e, NULL, NULL), 1);
  assert_int_equal(events(&e, NULL, NULL), 0);
  /* Undone: taken from the kernel but not passed on. */
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT, 12), 0);
  struct epoll_event ev[2];
  struct ep_hit hits[2];
  assert_int_equal(epoll_wait(e.fd, ev, 2, 0), 1);
  assert_int_equal(ep_translate(e.ps, ev, 1, hits), 1);
  assert_int_equal(raw_events(&e, NULL), 0); /* disarmed by the kernel */
  ep_unfire(e.ps, &hits[0]);
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 12);
  ep_unfire(e.ps, &(struct ep_hit){.slot = 999, .events = EPOLLONESHOT}); /* unknown: nothing */
  ps_remove_alias(ps, fd);
  close(fd), close(e1), close(e2);
  ps_free(ps);
  ep_close(&e);
}

/* A disarmed one-shot registration re-added on a file that hangs up (a
 * pipe whose writer is gone) gets the implied EPOLLHUP from the kernel:
 * the program never sees it. */
static void test_epoll_oneshot_disarmed_hangup(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int r = ready_eventfd();
  int fd = dup(r);
  ps_add_alias(ps, fd, false);
  struct ep e = ep_new();
  assert_int_equal(ctl(ps, &e, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLET | EPOLLONESHOT, 5), 0);
  assert_int_equal(events(&e, NULL, NULL), 1);
  close(p[1]);
  ps_swap(ps, p[0]);
  assert_int_equal(events(&e, NULL, NULL), 0);
  assert_int_equal(raw_events(&e, NULL), 0); /* fired once (dropped), now disarmed */
  ps_remove_alias(ps, fd);
  close(fd), close(r), close(p[0]);
  ps_free(ps);
  ep_close(&e);
}

/* Registrations of every alias, in several epoll instances, move together;
 * closing an epoll instance forgets its registrations; closing a number
 * deletes its registrations from the kernel even though the file lives on
 * (as a session's socket does, held by tether). */
static void test_epoll_aliases_close_and_forget(void **state) {
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  int a = dup(p[0]), b = dup(p[0]);
  ps_add_alias(ps, a, false);
  ps_add_alias(ps, b, false);
  struct ep e1 = ep_new(), e2 = ep_new();
  assert_int_equal(ctl(ps, &e1, EPOLL_CTL_ADD, a, EPOLLIN, 1), 0);
  assert_int_equal(ctl(ps, &e1, EPOLL_CTL_ADD, b, EPOLLIN, 2), 0);
  assert_int_equal(ctl(ps, &e2, EPOLL_CTL_ADD, a, EPOLLIN, 3), 0);
  assert_int_equal(ps_nregs(ps), 3);
  int r = ready_eventfd();
  ps_swap(ps, r);
  assert_int_equal(events(&e1, NULL, NULL), 2);
  assert_int_equal(events(&e2, NULL, NULL), 1);
  ep_close(&e2);
  assert_int_equal(ps_nregs(ps), 2);
  /* The program closes b: its registration goes (the kernel alone would
   * keep it, the file being open under a). */
  ps_close_regs(ps, b);
  assert_int_equal(ps_remove_alias(ps, b), 1);
  close(b);
  assert_int_equal(ps_nregs(ps), 1);
  uint64_t data = 0;
  assert_int_equal(events(&e1, &data, NULL), 1);
  assert_int_equal(data, 1);
  ps_swap(ps, p[0]);
  ps_swap(ps, r);
  assert_int_equal(events(&e1, &data, NULL), 1);
  assert_int_equal(data, 1);
  /* A number closed behind our back and handed out again for another
   * file: the next ADD replaces the stale registration.  (The kernel keeps
   * the old item, the eventfd being open elsewhere: its events carry a dead
   * token and are dropped.) */
  ps_remove_alias(ps, a);
  close(a);
  struct psock *other = ps_new(PS_OTHER, 0);
  int c = dup(p[0]); /* takes a's number */
  assert_int_equal(c, a);
  ps_add_alias(other, c, false);
  assert_int_equal(ps_nregs(ps), 0);
  assert_int_equal(write(p[1], "y", 1), 1);
  assert_int_equal(ctl(other, &e1, EPOLL_CTL_ADD, c, EPOLLIN, 4), 0);
  assert_int_equal(raw_events(&e1, NULL), 2);
  assert_int_equal(events(&e1, &data, NULL), 1);
  assert_int_equal(data, 4);
  /* The epoll instance under another number: tether's calls follow it. */
  int e1b = dup(e1.fd);
  ps_add_alias(e1.ps, e1b, false);
  ps_remove_alias(e1.ps, e1.fd);
  close(e1.fd);
  e1.fd = e1b;
  int r2 = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ps_swap(other, r2);
  assert_int_equal(events(&e1, NULL, NULL), 0);
  ps_swap(other, p[0]);
  assert_int_equal(events(&e1, &data, NULL), 1);
  assert_int_equal(data, 4);
  ps_remove_alias(other, c);
  close(c);
  ps_free(other);
  close(r), close(r2), close(p[0]), close(p[1]);
  ps_free(ps);
  ep_close(&e1);
}

/* tether's own number of a session (kept for forked children) follows the
 * swaps like the program's, stays close-on-exec, and is not counted as the
 * program's; an orphan's numbers are hidden from exec (they name the
 * parent's socket), a relay's and an orphan listener's are not. */
static void test_own_number_and_orphans(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  assert_true(ps->serial != 0);
  assert_int_equal(ps->own_fd, -1);
  int a = dup(p[0]);
  ps_add_alias(ps, a, false);
  assert_int_equal(ps_program_aliases(ps), 1);
  assert_false(ps_shared(ps));
  int own = fcntl(a, F_DUPFD_CLOEXEC, 0);
  assert_int_equal(ps_add_alias(ps, own, true), 0);
  ps->own_fd = own;
  ps->kids = 1;
  assert_int_equal(ps_program_aliases(ps), 1);
  assert_true(ps_shared(ps));
  int e = ready_eventfd();
  ps_swap(ps, e);
  assert_true(same_file(own, e));
  assert_true(same_file(a, e));
  assert_true(fcntl(own, F_GETFD) & FD_CLOEXEC);
  /* The program closes its number: only tether's is left. */
  assert_int_equal(ps_remove_alias(ps, a), 1);
  assert_int_equal(ps_program_aliases(ps), 0);
  assert_ptr_equal(fdt_get(own), ps);
  struct psock *other = ps_new(PS_ORPHAN, AF_INET);
  assert_true(ps_exec_hidden(other));
  assert_true(ps_orphan_session(other));
  other->kind = PS_RELAY;
  assert_false(ps_exec_hidden(other));
  other->kind = PS_ORPHAN;
  other->pl = (struct plisten *)&other; /* a listener's: any non-NULL */
  assert_false(ps_orphan_session(other));
  assert_false(ps_exec_hidden(other));
  other->pl = NULL;
  assert_int_not_equal(other->serial, ps->serial);
  ps_free(other);
  ps_remove_alias(ps, own);
  close(a), close(own), close(e), close(p[0]), close(p[1]);
  ps_free(ps);
}

/* After fork, in the child: a session becomes an orphan with the same
 * serial, loses tether's own number (closed) and its registrations (the
 * epoll instance is shared with the parent, whose registration stays); a
 * relay of our own parent's becomes a plain shared socket (serial 0). */
static void test_after_fork_child(void **state) {
  struct ep e = ep_new();
  int efd = ready_eventfd();
  struct psock *ps = ps_new(PS_SESSION, AF_INET);
  ps_add_alias(ps, efd, true);
  int own = fcntl(efd, F_DUPFD_CLOEXEC, 0);
  ps_add_alias(ps, own, true);
  ps->own_fd = own;
  ps->kids = 2;
  ps->relays = 1;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
  assert_int_equal(ep_ctl(e.ps, ps, e.fd, EPOLL_CTL_ADD, efd, &ev), 0);
  uint64_t serial = ps->serial;
  struct psock *relay = ps_new(PS_RELAY, AF_INET); /* a relay from our own parent */
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    fdt_after_fork_child();
    int bad = 0;
    if (ps->kind != PS_ORPHAN || ps->serial != serial)
      bad |= 1;
    if (ps->own_fd != -1 || ps_has_alias(ps, own) || fcntl(own, F_GETFD) >= 0 || fdt_get(own))
      bad |= 2;
    if (!ps_has_alias(ps, efd) || ps_program_aliases(ps) != 1 || fdt_get(efd) != ps)
      bad |= 4;
    if (ps->kids || ps->relays || ps->regs || ps->s)
      bad |= 8;
    if (relay->kind != PS_RELAY || relay->serial != 0) /* nobody here to ask about it */
      bad |= 16;
    _exit(bad);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  /* The parent's registration survived the child. */
  uint64_t data = 0;
  assert_int_equal(events(&e, &data, NULL), 1);
  assert_int_equal(data, 42);
  assert_int_equal(ps->kind, PS_SESSION);
  assert_int_equal(ps->own_fd, own);
  assert_true(relay->serial != 0);
  ps_free(relay);
  ps_close_regs(ps, efd);
  ps_remove_alias(ps, efd);
  ps_remove_alias(ps, own);
  close(efd), close(own);
  ps_free(ps);
  ep_close(&e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_aliases_and_table),
      cmocka_unit_test(test_swap_keeps_numbers_and_cloexec),
      cmocka_unit_test(test_epoll_token_translation),
      cmocka_unit_test(test_epoll_level_follows_swap),
      cmocka_unit_test(test_epoll_edge_triggered),
      cmocka_unit_test(test_epoll_oneshot),
      cmocka_unit_test(test_epoll_oneshot_disarmed_hangup),
      cmocka_unit_test(test_epoll_aliases_close_and_forget),
      cmocka_unit_test(test_own_number_and_orphans),
      cmocka_unit_test(test_after_fork_child),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
