/* A listener out of file descriptors (accept() failing with EMFILE) must
 * not spin: the engine stops watching the listening socket for a while
 * (10 ms doubling up to 1 s) and logs the failure at most once a second.
 * Checked in one process: its descriptors used up, connections waiting,
 * the process's CPU time over 2 s stays small and the log holds a few
 * lines, not one per failed accept; once descriptors are free again, a
 * client connects within the backoff's bound.  Prints its figures. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#define FILL_MAX 4096
#define WAITING 4

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t cpu_us(void) {
  struct rusage ru;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* How many times word occurs in the file behind fd. */
static unsigned count_word(int fd, const char *word) {
  static char buf[(1 << 16) + 64];
  size_t wlen = strlen(word), carry = 0;
  unsigned n = 0;
  off_t off = 0;
  ssize_t r;
  assert_true(wlen < 64);
  while ((r = pread(fd, buf + carry, sizeof(buf) - 1 - carry, off)) > 0) {
    off += r;
    size_t len = carry + (size_t)r;
    buf[len] = '\0';
    for (char *p = buf; (p = strstr(p, word)); p += wlen)
      n++;
    /* An occurrence may straddle two reads: keep a tail shorter than word. */
    carry = len < wlen - 1 ? len : wlen - 1;
    memmove(buf, buf + len - carry, carry);
  }
  return n;
}

static void test_emfile_no_spin(void **state) {
  (void)state;
  tether_ctx *ctx, *cctx;
  tether_listener *l;
  tether_session *s = NULL;
  char port[16], logpath[] = "/tmp/tether-emfile-XXXXXX";
  int fill[FILL_MAX], n_fill = 0, waiting[WAITING];

  /* The engine's log goes to a file, to be counted. */
  int logfd = mkstemp(logpath);
  assert_true(logfd >= 0);
  unlink(logpath);
  int saved_err = dup(STDERR_FILENO);
  assert_true(saved_err >= 0);
  assert_int_equal(dup2(logfd, STDERR_FILENO), STDERR_FILENO);

  assert_int_equal(tether_ctx_new(NULL, &ctx), 0);
  assert_int_equal(tether_listen(ctx, "127.0.0.1", "0", &l), 0);
  snprintf(port, sizeof(port), "%d", tether_listener_port(l));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)tether_listener_port(l)),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (int i = 0; i < WAITING; i++)
    assert_true((waiting[i] = socket(AF_INET, SOCK_STREAM, 0)) >= 0);

  /* Use up every descriptor (a low limit keeps it quick). */
  struct rlimit old, low;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 256;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
  int fd;
  while (n_fill < FILL_MAX && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    fill[n_fill++] = fd;
  assert_int_equal(errno, EMFILE);

  /* Connections wait (with a byte each: the listener defers accepting
   * until data arrives); every accept() now fails. */
  for (int i = 0; i < WAITING; i++) {
    assert_int_equal(connect(waiting[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(send(waiting[i], "T", 1, MSG_NOSIGNAL), 1);
  }
  unsigned lines0 = count_word(logfd, "accept: ");
  uint64_t cpu0 = cpu_us();
  struct timespec two = {2, 0};
  nanosleep(&two, NULL);
  uint64_t cpu = cpu_us() - cpu0;
  unsigned lines = count_word(logfd, "accept: ") - lines0;

  /* Descriptors back: a client gets through within the backoff's cap. */
  for (int i = 0; i < n_fill; i++)
    close(fill[i]);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
  uint64_t t0 = now_ms();
  assert_int_equal(tether_ctx_new(NULL, &cctx), 0);
  int rc = tether_connect(cctx, "127.0.0.1", port, &s);
  uint64_t took = now_ms() - t0;

  assert_int_equal(dup2(saved_err, STDERR_FILENO), STDERR_FILENO);
  close(saved_err);
  printf("out of descriptors for 2 s: process CPU %.1f ms, %u log lines about accept; "
         "connect afterwards: %d in %llu ms\n",
         (double)cpu / 1000, lines, rc, (unsigned long long)took);
  assert_true(cpu < 200000); /* spinning would take the whole 2 s */
  assert_true(lines <= 4);   /* at most one a second (and the first) */
  assert_int_equal(rc, 0);
  assert_true(took < 5000);
  tether_close(s);
  tether_ctx_free(cctx);
  for (int i = 0; i < WAITING; i++)
    close(waiting[i]);
  tether_listener_close(l);
  tether_ctx_free(ctx);
  close(logfd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_emfile_no_spin),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
