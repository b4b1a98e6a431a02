/* An ordinary program that uses the less common socket calls, standing in
 * for unmodified binaries in preload_calls.sh.  It knows nothing of tether
 * and is built with -O2 -D_FORTIFY_SOURCE=2 -D_FILE_OFFSET_BITS=64 (so its
 * read, recv, recvfrom, poll and ppoll are glibc's _chk variants and its
 * fcntl is fcntl64, as in distribution binaries).
 *
 *   preload_calls PORT [TEST...]
 *
 * PORT is an echo server (preload_epoll_echo).  Each test prints "ok NAME"
 * or "not ok NAME: why"; the exit status is the number of failures.  Tests
 * cut their own connections (ss -K, through system()) at the moments that
 * matter, so every call is also checked across a resume.
 *
 *   peek      MSG_PEEK shows the same bytes before and after a resume
 *   rcvtimeo  SO_RCVTIMEO: EAGAIN after the timeout, connected or suspended
 *   sndtimeo  SO_SNDTIMEO: a full session gives EAGAIN after the timeout
 *   sendfile  sendfile and sendfile64 (with and without an offset), resumed
 *             mid-file: the echo is the file
 *   chk       __read_chk, __recv_chk, __recvfrom_chk, __poll_chk, __ppoll_chk
 *   fcntl     fcntl64: O_NONBLOCK (EAGAIN while suspended), F_DUPFD_CLOEXEC
 *   close_range  close_range of an alias, CLOSE_RANGE_CLOEXEC, of the session
 *   fork      parent and child keep working; the child uses the inherited
 *             session too (relayed by the parent), also across a resume;
 *             closefrom in the child
 *   exec      a session the child puts on fd 0 survives exec (a stream socket
 *             the parent relays); one merely left open for exec under
 *             another number does not (the helper must not take its bytes);
 *             the parent's sessions are unharmed
 *   vfork     a vfork child that dup2s a session over another number (as
 *             before an exec) changes nothing in the parent, and its copy
 *             is close-on-exec
 *   mmsg      sendmmsg/recvmmsg
 *   connect_close  a non-blocking connect closed before it ends: nothing of it
 *             stays (no thread, no descriptor)
 *   connect_again  200 non-blocking connects, each asked again with connect()
 *             once epoll reports it writable (as APR, hence ab, does): 0 or
 *             EISCONN every time, never EALREADY
 *   handshake_kill  new sessions set up while every connection is reset
 *             every millisecond: none fails
 *   syscall   syscall(SYS_write/SYS_read/SYS_sendto/SYS_recvfrom/SYS_dup/
 *             SYS_close) on a session, across a resume: the same bytes as
 *             the named calls; syscall(SYS_io_uring_setup) is reported
 *             (preload_calls.sh looks for the warning)
 *   spin      poll and epoll_wait on a session spin after short waits
 *             (TETHER_READ_SPIN_US, 1000 in preload_calls.sh): a signal
 *             during the spin still ends the wait with EINTR, and a run of
 *             long waits spins at most once (20 waits of 20 ms cost the
 *             thread well under 20 x 1 ms of CPU)
 *   listeners 30 listeners opened, used (by a child's session) and closed:
 *             their descriptors are all released (with a short
 *             TETHER_SUSPEND_MS, their sessions end soon)
 *   poll_late a thread in poll() on a session, woken by a resume, looks
 *             only after another thread's write put the new socket in
 *             place (a real-time thread holds its CPU meanwhile): the
 *             bytes that come later still wake it
 *
 * Calls that answer as plain TCP does (each compared with a plain pair made
 * in this process: a connection to one's own listener stays plain), or fail
 * loudly as tether(7) PRELOAD documents:
 *   errqueue  recv/recvmsg MSG_ERRQUEUE: -1/EAGAIN at once, connected or
 *             resuming, the bytes untouched
 *   trunc     MSG_TRUNC discards (NULL buffer or not), MSG_PEEK|MSG_TRUNC
 *             counts; MSG_TRUNC|MSG_WAITALL of 200 kB across a resume
 *   async     F_SETFL O_ASYNC and FIOASYNC on a session fail with EINVAL,
 *             changing nothing; a socket set O_ASYNC before it connects
 *             stays plain and gets its SIGIO
 *   bigselect select with nfds 4096 (sets that large) on a session below
 *             and above FD_SETSIZE, across resumes; select(1 << 20) with an
 *             ordinary fd_set (the kernel's clamp)
 *   transition  a session held resuming (its peer, a child, stopped):
 *             SIOCOUTQ/SIOCOUTQNSD answer the bytes the peer lacks, fstat,
 *             fstatat and statx say socket, MSG_ERRQUEUE is EAGAIN at once;
 *             SIOCOUTQ falls to 0 once the peer read everything
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <linux/sockios.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "usr1.h"

static int port;
static const char *self;
static int failures;
static char why[512];

#define CHECK(cond, ...) \
  do { \
    if (!(cond)) { \
      snprintf(why, sizeof(why), __VA_ARGS__); \
      return false; \
    } \
  } while (0)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int dial_port(int p) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int dial(void) { return dial_port(port); }

/* Resets every TCP connection to port p (the sessions resume). */
static void kill_conns(int p) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ss -K -H -tn dst 127.0.0.1 dport = :%d >/dev/null 2>&1", p);
  if (system(cmd) != 0)
    fprintf(stderr, "ss -K failed\n");
}

static uint8_t pat(uint64_t i) { return (uint8_t)(i * 131 + (i >> 9) * 7 + 3); }

/* One transfer call: read or write len bytes at buf, as read(2) does. */
typedef long (*io_fn)(int fd, void *buf, size_t len);

static long io_read(int fd, void *buf, size_t len) { return read(fd, buf, len); }
static long io_write(int fd, void *buf, size_t len) { return write(fd, buf, len); }

/* Moves all len bytes with op, retrying after EINTR. */
static bool io_all(io_fn op, int fd, void *buf, size_t len) {
  char *p = buf;
  while (len) {
    long n = op(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

static bool write_all(int fd, const void *buf, size_t len) {
  return io_all(io_write, fd, (void *)buf, len);
}

static bool read_all(int fd, void *buf, size_t len) { return io_all(io_read, fd, buf, len); }

/* n bytes there and back, checked. */
static bool echo(int fd, size_t n, uint64_t seed) {
  static uint8_t out[1 << 16], in[1 << 16];
  while (n) {
    size_t k = n < sizeof(out) ? n : sizeof(out);
    for (size_t i = 0; i < k; i++)
      out[i] = pat(seed + i);
    if (!write_all(fd, out, k) || !read_all(fd, in, k) || memcmp(in, out, k) != 0)
      return false;
    seed += k;
    n -= k;
  }
  return true;
}

/* Waits until fd has at least n bytes to read (poll + FIONREAD would be
 * simpler; MSG_PEEK is under test). */
static bool wait_readable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, 10000) == 1;
}

/* ---- tests ---- */

static bool t_peek(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect: %s", strerror(errno));
  CHECK(write_all(fd, "hello world", 11), "write");
  char buf[16];
  size_t got = 0;
  for (int i = 0; i < 100 && got < 11; i++) {
    CHECK(wait_readable(fd), "nothing to read");
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK);
    CHECK(n > 0, "recv MSG_PEEK: %zd %s", n, strerror(errno));
    got = (size_t)n;
    if (got < 11)
      usleep(10000);
  }
  CHECK(got == 11 && memcmp(buf, "hello world", 11) == 0, "peeked %zu bytes", got);
  /* The bytes the kernel held are gone with the connection; the session
   * delivers them again. */
  kill_conns(port);
  ssize_t n = recv(fd, buf, 5, MSG_PEEK);
  CHECK(n == 5 && memcmp(buf, "hello", 5) == 0, "peek after a resume: %zd %s", n, strerror(errno));
  CHECK(read_all(fd, buf, 11) && memcmp(buf, "hello world", 11) == 0, "read after peek");
  /* MSG_PEEK with MSG_DONTWAIT on an empty session. */
  n = recv(fd, buf, 5, MSG_PEEK | MSG_DONTWAIT);
  CHECK(n < 0 && errno == EAGAIN, "empty peek: %zd %s", n, strerror(errno));
  CHECK(echo(fd, 1000, 1), "echo");
  close(fd);
  return true;
}

static bool t_rcvtimeo(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  struct timeval tv = {0, 300000};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "setsockopt");
  struct timeval back = {0, 0};
  socklen_t len = sizeof(back);
  CHECK(getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &back, &len) == 0 && back.tv_usec == 300000,
        "getsockopt SO_RCVTIMEO: %ld.%06ld", (long)back.tv_sec, (long)back.tv_usec);
  char buf[8];
  for (int round = 0; round < 2; round++) {
    if (round == 1)
      kill_conns(port); /* now suspended (or resuming): the same rule */
    uint64_t t0 = now_ms();
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    uint64_t dt = now_ms() - t0;
    CHECK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "round %d: recv %zd %s", round, n,
          strerror(errno));
    CHECK(dt >= 280 && dt < 2000, "round %d: timed out after %llu ms", round, (unsigned long long)dt);
  }
  CHECK(echo(fd, 5000, 2), "echo after the timeouts");
  close(fd);
  return true;
}

static bool t_sndtimeo(void) {
  /* A peer that accepts and never reads: another process (a connection to
   * oneself would be plain). */
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(a);
  CHECK(bind(ls, (struct sockaddr *)&a, sizeof(a)) == 0, "bind");
  CHECK(getsockname(ls, (struct sockaddr *)&a, &alen) == 0, "getsockname");
  int lport = ntohs(a.sin_port);
  int done[2];
  CHECK(pipe(done) == 0, "pipe");
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    close(done[1]);
    char b;
    int peer = listen(ls, 4) == 0 ? accept(ls, NULL, NULL) : -1;
    (void)!read(done[0], &b, 1); /* until the parent is done */
    close(peer);
    exit(peer >= 0 ? 0 : 1);
  }
  close(ls);
  close(done[0]);
  int fd = -1;
  for (int i = 0; i < 200 && fd < 0; i++) { /* until the child listens */
    fd = dial_port(lport);
    if (fd < 0)
      usleep(10000);
  }
  CHECK(fd >= 0, "connect");
  struct timeval tv = {0, 300000};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0, "setsockopt");
  static char chunk[1 << 16];
  uint64_t total = 0, t0 = 0, dt = 0;
  ssize_t w = 0;
  /* Short writes once the session is full (each after the timeout), then
   * one with nothing written: EAGAIN. */
  for (int i = 0; i < 4096; i++) {
    t0 = now_ms();
    w = write(fd, chunk, sizeof(chunk));
    dt = now_ms() - t0;
    if (w < 0)
      break;
    if (w < (ssize_t)sizeof(chunk))
      CHECK(dt >= 280 && dt < 2000, "a short write (%zd) after %llu ms", w, (unsigned long long)dt);
    total += (uint64_t)w;
  }
  CHECK(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && dt >= 280 && dt < 2000,
        "write on a full session: %zd %s after %llu ms", w, strerror(errno), (unsigned long long)dt);
  /* Suspended: the same. */
  kill_conns(lport);
  t0 = now_ms();
  w = write(fd, chunk, sizeof(chunk));
  dt = now_ms() - t0;
  CHECK(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && dt >= 280 && dt < 2000,
        "write while suspended: %zd %s after %llu ms", w, strerror(errno), (unsigned long long)dt);
  fprintf(stderr, "sndtimeo: %llu bytes in before the session was full\n", (unsigned long long)total);
  close(fd);
  close(done[1]);
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the peer: %#x", st);
  return true;
}

struct reader {
  int fd;
  size_t len;
  const uint8_t *want;
  bool ok;
  char why[128];
};

static void *read_back(void *arg) {
  struct reader *r = arg;
  static uint8_t buf[1 << 16];
  size_t got = 0;
  while (got < r->len) {
    ssize_t n = read(r->fd, buf, sizeof(buf));
    if (n <= 0) {
      snprintf(r->why, sizeof(r->why), "read at %zu: %zd %s", got, n, strerror(errno));
      return NULL;
    }
    if (memcmp(buf, r->want + got, (size_t)n) != 0) {
      snprintf(r->why, sizeof(r->why), "echo differs near byte %zu", got);
      return NULL;
    }
    got += (size_t)n;
  }
  r->ok = true;
  return NULL;
}

ssize_t sendfile64(int out, int in, off_t *offset, size_t count);

static bool t_sendfile(void) {
  const size_t size = 3u << 20;
  char path[] = "/tmp/tether-sendfile.XXXXXX";
  int f = mkstemp(path);
  CHECK(f >= 0, "mkstemp");
  unlink(path);
  uint8_t *data = malloc(size);
  for (size_t i = 0; i < size; i++)
    data[i] = pat(i * 7);
  CHECK(write_all(f, data, size), "file write");
  int fd = dial();
  CHECK(fd >= 0, "connect");
  struct reader r = {.fd = fd, .len = size, .want = data};
  pthread_t th;
  pthread_create(&th, NULL, read_back, &r);
  /* First half with an offset (the file position stays), resumed mid-way;
   * second half through the file position, with sendfile64. */
  off_t off = 0;
  bool killed = false;
  while ((size_t)off < size / 2) {
    ssize_t n = sendfile(fd, f, &off, size / 2 - (size_t)off);
    CHECK(n > 0, "sendfile: %zd %s", n, strerror(errno));
    if (!killed && off > (off_t)(size / 4)) {
      kill_conns(port);
      killed = true;
    }
  }
  CHECK(lseek(f, 0, SEEK_CUR) == (off_t)size, "sendfile with an offset moved the file position");
  CHECK(lseek(f, (off_t)(size / 2), SEEK_SET) == (off_t)(size / 2), "lseek");
  size_t left = size - size / 2;
  killed = false;
  while (left) {
    ssize_t n = sendfile64(fd, f, NULL, left);
    CHECK(n > 0, "sendfile64: %zd %s", n, strerror(errno));
    left -= (size_t)n;
    if (!killed && left < size / 4) {
      kill_conns(port);
      killed = true;
    }
  }
  CHECK(lseek(f, 0, SEEK_CUR) == (off_t)size, "sendfile64 left the position at %lld",
        (long long)lseek(f, 0, SEEK_CUR));
  pthread_join(th, NULL);
  CHECK(r.ok, "%s", r.why);
  close(fd);
  close(f);
  free(data);
  return true;
}

/* The lengths come from here so that the compiler cannot prove them safe:
 * the calls stay __read_chk & co. */
static volatile size_t vlen = 64;
static volatile nfds_t vnfds = 1;

static bool t_chk(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  char buf[64];
  struct pollfd p[1] = {{.fd = fd, .events = POLLIN}};
  for (int round = 0; round < 3; round++) {
    const char *msg = "fortified";
    CHECK(write_all(fd, msg, 9), "write");
    if (round == 1)
      kill_conns(port);
    p[0].revents = 0;
    int pr = round == 2 ? ppoll(p, vnfds, &(struct timespec){10, 0}, NULL) : poll(p, vnfds, 10000);
    CHECK(pr == 1 && (p[0].revents & POLLIN) && !(p[0].revents & (POLLERR | POLLHUP)),
          "round %d: poll %d revents %#x", round, pr, p[0].revents);
    size_t got = 0;
    while (got < 9) {
      char tmp[64];
      ssize_t n;
      if (round == 0)
        n = read(fd, tmp, vlen);
      else if (round == 1)
        n = recv(fd, tmp, vlen, 0);
      else
        n = recvfrom(fd, tmp, vlen, 0, NULL, NULL);
      CHECK(n > 0 && got + (size_t)n <= sizeof(buf), "round %d: %zd %s", round, n, strerror(errno));
      memcpy(buf + got, tmp, (size_t)n);
      got += (size_t)n;
    }
    CHECK(got == 9 && memcmp(buf, msg, 9) == 0, "round %d: got %zu bytes", round, got);
  }
  close(fd);
  return true;
}

static bool t_fcntl(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  int fl = fcntl(fd, F_GETFL);
  CHECK(fl >= 0 && !(fl & O_NONBLOCK), "F_GETFL %#x", fl);
  CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0, "F_SETFL");
  CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "O_NONBLOCK not reported");
  char buf[8];
  ssize_t n = read(fd, buf, sizeof(buf));
  CHECK(n < 0 && errno == EAGAIN, "non-blocking read: %zd %s", n, strerror(errno));
  kill_conns(port);
  uint64_t t0 = now_ms();
  n = read(fd, buf, sizeof(buf));
  CHECK(n < 0 && errno == EAGAIN && now_ms() - t0 < 100, "non-blocking read while suspended: %zd %s",
        n, strerror(errno));
  CHECK(fcntl(fd, F_SETFL, fl) == 0, "F_SETFL back");
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 100);
  CHECK(d >= 100, "F_DUPFD_CLOEXEC: %d", d);
  CHECK(fcntl(d, F_GETFD) == FD_CLOEXEC && fcntl(fd, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC");
  CHECK(fcntl(fd, F_SETFD, 0) == 0 && fcntl(fd, F_GETFD) == 0, "F_SETFD 0");
  CHECK(write_all(d, "via dup", 7) && read_all(fd, buf, 7) && memcmp(buf, "via dup", 7) == 0,
        "write on the duplicate, read on the original");
  close(d);
  CHECK(echo(fd, 20000, 3), "echo after closing the duplicate");
  close(fd);
  return true;
}

static bool t_close_range(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  CHECK(dup2(fd, 200) == 200, "dup2");
  CHECK(close_range(200, 210, 0) == 0, "close_range: %s", strerror(errno));
  CHECK(fcntl(200, F_GETFD) < 0 && errno == EBADF, "200 still open");
  CHECK(echo(fd, 1000, 4), "echo after closing the alias");
  CHECK(close_range((unsigned)fd, (unsigned)fd, CLOSE_RANGE_CLOEXEC) == 0, "CLOSE_RANGE_CLOEXEC");
  CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC after CLOSE_RANGE_CLOEXEC");
  kill_conns(port);
  CHECK(echo(fd, 1000, 5), "echo after a resume");
  CHECK(close_range((unsigned)fd, (unsigned)fd, 0) == 0, "close_range of the session");
  CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF, "the session's number still open");
  int again = dial();
  CHECK(again >= 0 && echo(again, 1000, 6), "a new session");
  close(again);
  return true;
}

static bool t_fork(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  CHECK(echo(fd, 1000, 7), "echo before fork");
  int sync[2];
  CHECK(pipe(sync) == 0, "pipe");
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    close(sync[1]);
    int rc = 0;
    char buf[4];
    if (read(sync[0], buf, 1) != 0) /* the parent's echo is done */
      rc |= 32;
    /* The inherited session works here too (the parent relays it; it does
     * not read meanwhile), before and after a resume. */
    if (!echo(fd, 100000, 20))
      rc |= 1;
    /* The child's own connection works, and survives a reset (which hits
     * the parent's connection too). */
    int c = dial();
    if (c < 0 || !echo(c, 100000, 8))
      rc |= 4;
    kill_conns(port);
    if (c < 0 || !echo(c, 100000, 9))
      rc |= 8;
    if (!echo(fd, 100000, 21))
      rc |= 2;
    if (close(fd) != 0)
      rc |= 16;
    closefrom(3); /* as a child does before exec: tether's descriptors too */
    _exit(rc);
  }
  close(sync[0]);
  bool ok = echo(fd, 200000, 10);
  close(sync[1]);
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
  CHECK(ok, "the parent's echo before the child's");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: status %#x", st);
  CHECK(echo(fd, 1000, 11), "echo after the child exited");
  kill_conns(port);
  CHECK(echo(fd, 1000, 12), "echo after a resume");
  close(fd);
  return true;
}

static bool t_exec(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  int other = dial();
  CHECK(other >= 0, "connect");
  CHECK(fcntl(other, F_SETFD, 0) == 0, "F_SETFD 0"); /* left open for exec */
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    char num2[16];
    snprintf(num2, sizeof(num2), "%d", other);
    if (dup2(fd, 0) != 0) /* inetd style */
      _exit(98);
    execl(self, self, "exec-child", "0", num2, (char *)NULL);
    _exit(99);
  }
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exec'd child: status %#x", st);
  CHECK(echo(fd, 1000, 13), "the parent's session after the exec");
  CHECK(echo(other, 1000, 16), "the parent's other session after the exec");
  close(other);
  kill_conns(port);
  CHECK(echo(fd, 1000, 14), "the parent's session after a resume");
  close(fd);
  return true;
}

/* In the program exec'd with a session on fd 0 (it works) and another
 * under a number left open for exec (it is closed). */
static int exec_child(int fd, int hidden) {
  if (!echo(fd, 100000, 15)) {
    fprintf(stderr, "exec-child: no echo on fd %d: %s\n", fd, strerror(errno));
    return 1;
  }
  if (fcntl(hidden, F_GETFD) >= 0 || errno != EBADF) {
    fprintf(stderr, "exec-child: fd %d is open after exec\n", hidden);
    return 1;
  }
  return 0;
}

static bool t_vfork(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  int p[2];
  CHECK(pipe(p) == 0, "pipe");
  pid_t pid = vfork();
  CHECK(pid >= 0, "vfork");
  if (pid == 0) {
    /* Shares the parent's memory, not its descriptors. */
    if (dup2(fd, p[0]) != p[0])
      _exit(1);
    int fl = fcntl(p[0], F_GETFD);
    _exit(fl >= 0 && (fl & FD_CLOEXEC) ? 0 : 2);
  }
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vfork child: status %#x", st);
  /* The parent's p[0] is still its pipe, and the session still works. */
  char buf[8];
  CHECK(write(p[1], "pipe", 4) == 4 && read(p[0], buf, sizeof(buf)) == 4 &&
            memcmp(buf, "pipe", 4) == 0, "the pipe after the vfork child");
  CHECK(echo(fd, 1000, 17), "the session after the vfork child");
  close(p[0]), close(p[1]), close(fd);
  return true;
}

static bool t_mmsg(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect");
  char a[] = "first", b[] = "second";
  struct iovec io[2] = {{a, 5}, {b, 6}};
  struct mmsghdr m[2];
  memset(m, 0, sizeof(m));
  m[0].msg_hdr.msg_iov = &io[0];
  m[0].msg_hdr.msg_iovlen = 1;
  m[1].msg_hdr.msg_iov = &io[1];
  m[1].msg_hdr.msg_iovlen = 1;
  CHECK(sendmmsg(fd, m, 2, 0) == 2 && m[0].msg_len == 5 && m[1].msg_len == 6, "sendmmsg");
  kill_conns(port);
  char in[32];
  size_t got = 0;
  while (got < 11) {
    struct iovec ri[2] = {{in + got, 3}, {in + got + 3, sizeof(in) - got - 3}};
    struct mmsghdr rm[1];
    memset(rm, 0, sizeof(rm));
    rm[0].msg_hdr.msg_iov = ri;
    rm[0].msg_hdr.msg_iovlen = 2;
    int n = recvmmsg(fd, rm, 1, 0, NULL);
    CHECK(n == 1 && rm[0].msg_len > 0, "recvmmsg: %d %s", n, strerror(errno));
    got += rm[0].msg_len;
  }
  CHECK(got == 11 && memcmp(in, "firstsecond", 11) == 0, "recvmmsg got %zu bytes", got);
  close(fd);
  return true;
}

static int count_dir(const char *path) {
  int n = 0;
  DIR *d = opendir(path);
  if (!d)
    return -1;
  struct dirent *e;
  while ((e = readdir(d)))
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static bool t_connect_close(void) {
  /* Warm up (tether's engine thread), then count. */
  int fd = dial();
  CHECK(fd >= 0, "connect");
  close(fd);
  int threads0 = count_dir("/proc/self/task"), fds0 = count_dir("/proc/self/fd");
  /* A black hole (TEST-NET-1): the connect stays in progress. */
  fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9)};
  a.sin_addr.s_addr = htonl(0xc0000201); /* 192.0.2.1 */
  int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
  CHECK(rc < 0 && errno == EINPROGRESS, "connect: %d %s", rc, strerror(errno));
  usleep(100000);
  close(fd);
  int threads = 0, fds = 0;
  for (int i = 0; i < 100; i++) {
    threads = count_dir("/proc/self/task");
    fds = count_dir("/proc/self/fd");
    if (threads <= threads0 && fds <= fds0)
      break;
    usleep(10000);
  }
  CHECK(threads <= threads0 && fds <= fds0, "1 s after close: %d threads (%d before), %d fds (%d before)",
        threads, threads0, fds, fds0);
  return true;
}

static bool t_connect_again(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ep = epoll_create1(EPOLL_CLOEXEC);
  CHECK(ep >= 0, "epoll_create1: %s", strerror(errno));
  for (int i = 0; i < 200; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    CHECK(rc == 0 || errno == EINPROGRESS, "connect %d: %s", i, strerror(errno));
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd}, got;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl: %s", strerror(errno));
    CHECK(epoll_wait(ep, &got, 1, 10000) == 1, "connect %d: not writable after 10 s", i);
    CHECK(got.events & EPOLLOUT, "connect %d: events %#x", i, got.events);
    rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    CHECK(rc == 0 || errno == EISCONN, "connect %d again after EPOLLOUT: %s", i,
          strerror(errno));
    CHECK(fcntl(fd, F_SETFL, 0) == 0 && echo(fd, 1, 10), "connect %d: echo", i);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) == 0, "epoll_ctl DEL: %s", strerror(errno));
    close(fd);
  }
  close(ep);
  return true;
}

static bool t_listeners(void) {
  int warm = dial(); /* tether's engine and side channel exist before the count */
  CHECK(warm >= 0 && echo(warm, 10, 15), "warm-up");
  close(warm);
  int fds0 = count_dir("/proc/self/fd");
  for (int i = 0; i < 30; i++) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    CHECK(bind(ls, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(ls, 4) == 0, "listen");
    CHECK(getsockname(ls, (struct sockaddr *)&a, &alen) == 0, "getsockname");
    /* The client is another process (a connection to oneself is plain). */
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
      char buf[4];
      int c = dial_port(ntohs(a.sin_port));
      bool ok = c >= 0 && write_all(c, "ping", 4) && read_all(c, buf, 4) && memcmp(buf, "pong", 4) == 0;
      close(c);
      exit(ok ? 0 : 1); /* exit, not _exit: tether closes the session at exit as the kernel would */
    }
    int s = accept(ls, NULL, NULL);
    CHECK(s >= 0, "accept %d", i);
    char buf[4];
    CHECK(read_all(s, buf, 4) && memcmp(buf, "ping", 4) == 0 && write_all(s, "pong", 4), "ping %d", i);
    close(ls);
    close(s); /* before the client exits: both learn the other's final state */
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d: %#x", i, st);
  }
  int fds = 0, fds_max = 0;
  for (int i = 0; i < 150; i++) { /* TIME_WAIT, then the reaper */
    fds = count_dir("/proc/self/fd");
    if (fds > fds_max)
      fds_max = fds;
    if (fds <= fds0 + 2)
      break;
    usleep(100000);
  }
  fprintf(stderr, "listeners: %d fds before, %d after (at most %d)\n", fds0, fds, fds_max);
  if (fds > fds0 + 2) {
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd >&2", (int)getpid());
    (void)!system(cmd);
  }
  CHECK(fds <= fds0 + 2, "%d descriptors 15 s after closing 30 listeners (%d before)", fds, fds0);
  return true;
}

static volatile bool storm_on;

static void *storm(void *arg) {
  while (storm_on) {
    kill_conns(port);
    usleep(1000);
  }
  return NULL;
}

static bool t_handshake_kill(void) {
  pthread_t th;
  storm_on = true;
  pthread_create(&th, NULL, storm, NULL);
  int n = 0, failed = 0;
  char first[160] = "";
  uint64_t t0 = now_ms();
  while (now_ms() - t0 < 3000) {
    int c = dial();
    if (c < 0 || !echo(c, 100, 16)) {
      if (!failed++)
        snprintf(first, sizeof(first), "%s: %s", c < 0 ? "connect" : "echo", strerror(errno));
    }
    if (c >= 0)
      close(c);
    n++;
  }
  storm_on = false;
  pthread_join(th, NULL);
  fprintf(stderr, "handshake_kill: %d connections, %d failed\n", n, failed);
  CHECK(failed == 0, "%d of %d connections failed while connections were reset (first: %s)", failed, n,
        first);
  return true;
}

/* The same transfers through syscall(2). */
static long sys_read(int fd, void *buf, size_t len) { return syscall(SYS_read, fd, buf, len); }
static long sys_write(int fd, void *buf, size_t len) { return syscall(SYS_write, fd, buf, len); }
static long sys_recvfrom(int fd, void *buf, size_t len) {
  return syscall(SYS_recvfrom, fd, buf, len, 0, NULL, NULL);
}
static long sys_sendto(int fd, void *buf, size_t len) {
  return syscall(SYS_sendto, fd, buf, len, 0, NULL, 0);
}

static bool t_syscall(void) {
  static uint8_t out[1 << 16], in[1 << 16];
  int fd = dial();
  CHECK(fd >= 0, "connect: %s", strerror(errno));
  for (int round = 0; round < 4; round++) {
    bool sock_calls = round & 1;
    for (size_t i = 0; i < sizeof(out); i++)
      out[i] = pat((uint64_t)round << 16 | i);
    CHECK(io_all(sock_calls ? sys_sendto : sys_write, fd, out, sizeof(out)), "round %d: write: %s",
          round, strerror(errno));
    if (round == 1)
      kill_conns(port); /* the echo of what was just written comes after a resume */
    CHECK(io_all(sock_calls ? sys_recvfrom : sys_read, fd, in, sizeof(in)), "round %d: read: %s",
          round, strerror(errno));
    CHECK(memcmp(in, out, sizeof(in)) == 0, "round %d: the echo differs", round);
  }
  long d = syscall(SYS_dup, fd);
  CHECK(d >= 0, "SYS_dup: %s", strerror(errno));
  CHECK(syscall(SYS_close, fd) == 0, "SYS_close: %s", strerror(errno));
  CHECK(echo((int)d, 1000, 77), "echo on the SYS_dup copy after SYS_close of the original");
  close((int)d);
  /* Whatever the kernel says (io_uring may be disabled), tether warns. */
  uint8_t params[120] = {0}; /* struct io_uring_params */
  long ring = syscall(SYS_io_uring_setup, 1, params);
  if (ring >= 0)
    close((int)ring);
  return true;
}

static uint64_t thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Waits up to ms for fd to be readable: with poll, or with epoll_wait on ep
 * (where fd is registered) when ep >= 0.  Returns what the call did. */
static int wait_in(int ep, int fd, int ms) {
  if (ep >= 0) {
    struct epoll_event ev;
    return epoll_wait(ep, &ev, 1, ms);
  }
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, ms);
}

/* Short waits, so that the next wait spins. */
static bool short_waits(int ep, int fd, const char *how) {
  for (int i = 0; i < 50; i++) {
    char c = 's', r;
    CHECK(write(fd, &c, 1) == 1, "%s: write: %s", how, strerror(errno));
    CHECK(wait_in(ep, fd, 5000) == 1, "%s: wait for the echo", how);
    CHECK(read(fd, &r, 1) == 1 && r == c, "%s: read the echo", how);
  }
  return true;
}

/* Short waits (spins from then on), then: a signal 100 us into a wait ends
 * it with EINTR, though it comes during the spin; 20 waits of 20 ms for
 * nothing spin at most once. */
static bool spin_run(int ep, int fd, const char *how) {
  struct sigaction old;
  CHECK(usr1_install(&old) == 0, "sigaction");
  for (int round = 0; round < 5; round++) {
    if (!short_waits(ep, fd, how))
      return false;
    pthread_t t;
    struct usr1_kick k = {.target = pthread_self(), .delay_us = 100};
    CHECK(pthread_create(&t, NULL, usr1_kick_run, &k) == 0, "pthread_create");
    uint64_t wait_ns = mono_ns();
    int rc = wait_in(ep, fd, 3000);
    int err = errno;
    pthread_join(t, NULL);
    if (usr1_ns < wait_ns)
      continue; /* a loaded machine ran the signal before the wait */
    CHECK(rc == -1 && err == EINTR, "%s: a signal during the wait's spin did not end it (%d)", how,
          rc);
  }
  sigaction(SIGUSR1, &old, NULL);
  if (!short_waits(ep, fd, how))
    return false;
  uint64_t cpu = thread_cpu_us();
  for (int i = 0; i < 20; i++)
    CHECK(wait_in(ep, fd, 20) == 0, "%s: nothing should be readable", how);
  cpu = thread_cpu_us() - cpu;
  CHECK(cpu < 10000, "%s: 20 waits of 20 ms took %llu us of CPU (a 1 ms spin before each: 20000)",
        how, (unsigned long long)cpu);
  return true;
}

static bool t_spin(void) {
  int fd = dial();
  CHECK(fd >= 0, "connect: %s", strerror(errno));
  if (!spin_run(-1, fd, "poll"))
    return false;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll: %s", strerror(errno));
  if (!spin_run(ep, fd, "epoll_wait"))
    return false;
  close(ep);
  close(fd);
  return true;
}

/* ---- issue 12 §5: calls that must answer as TCP does (or fail loudly) ---- */

/* A plain TCP pair in this process (a connection to one's own listener
 * stays plain): the reference the session is compared with. */
static bool plain_pair(int *c, int *a) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(sa);
  if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4) < 0 ||
      getsockname(ls, (struct sockaddr *)&sa, &alen) < 0)
    return false;
  *c = dial_port(ntohs(sa.sin_port));
  *a = *c >= 0 ? accept(ls, NULL, NULL) : -1;
  close(ls);
  return *c >= 0 && *a >= 0;
}

/* Waits until fd holds n bytes to read (peeked, bounded). */
static bool wait_bytes(int fd, size_t n) {
  char buf[256];
  for (int i = 0; i < 1000; i++) {
    if (!wait_readable(fd))
      return false;
    ssize_t k = recv(fd, buf, n < sizeof(buf) ? n : sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (k >= (ssize_t)n)
      return true;
    usleep(1000);
  }
  return false;
}

/* recv/recvmsg with MSG_ERRQUEUE on fd holding "abc": -1/EAGAIN at once
 * (blocking socket), the bytes untouched.  Describes the result in out. */
static void errqueue_probe(int fd, char *out, size_t outlen) {
  char buf[16];
  uint64_t t0 = now_ms();
  errno = 0;
  ssize_t n1 = recv(fd, buf, sizeof(buf), MSG_ERRQUEUE);
  int e1 = errno;
  char ctl[64];
  struct msghdr m = {.msg_control = ctl, .msg_controllen = sizeof(ctl)}; /* no vector, as usual */
  errno = 0;
  ssize_t n2 = recvmsg(fd, &m, MSG_ERRQUEUE);
  int e2 = errno;
  snprintf(out, outlen, "recv %zd %s, recvmsg %zd %s%s", n1, n1 < 0 ? strerrorname_np(e1) : "",
           n2, n2 < 0 ? strerrorname_np(e2) : "", now_ms() - t0 > 2000 ? " (slow)" : "");
}

static bool t_errqueue(void) {
  int c, a;
  CHECK(plain_pair(&c, &a), "plain pair: %s", strerror(errno));
  char want[128], got[128], buf[8];
  CHECK(write_all(a, "abc", 3) && wait_bytes(c, 3), "plain: abc");
  errqueue_probe(c, want, sizeof(want));
  CHECK(read_all(c, buf, 3) && memcmp(buf, "abc", 3) == 0, "plain: the bytes after MSG_ERRQUEUE");
  close(c), close(a);
  int fd = dial();
  CHECK(fd >= 0, "connect");
  CHECK(write_all(fd, "abc", 3) && wait_bytes(fd, 3), "session: abc");
  errqueue_probe(fd, got, sizeof(got));
  CHECK(strcmp(got, want) == 0, "session: %s; plain TCP: %s", got, want);
  CHECK(read_all(fd, buf, 3) && memcmp(buf, "abc", 3) == 0, "session: the bytes after MSG_ERRQUEUE");
  /* Resuming: the same (never a wait). */
  CHECK(write_all(fd, "abc", 3), "write");
  kill_conns(port);
  errqueue_probe(fd, got, sizeof(got));
  CHECK(strcmp(got, want) == 0, "session across a reset: %s; plain TCP: %s", got, want);
  CHECK(read_all(fd, buf, 3) && memcmp(buf, "abc", 3) == 0, "the bytes after a resume");
  CHECK(echo(fd, 1000, 30), "echo");
  close(fd);
  return true;
}

/* MSG_TRUNC on fd holding "0123456789": what TCP does is the spec. */
static void trunc_probe(int fd, char *out, size_t outlen) {
  char buf[16] = "";
  ssize_t n1 = recv(fd, NULL, 4, MSG_TRUNC);                  /* discards 4 */
  ssize_t n2 = recv(fd, NULL, 100, MSG_PEEK | MSG_TRUNC);     /* counts 6 */
  char keep[4] = "zz";
  ssize_t n3 = recv(fd, keep, 2, MSG_TRUNC);                  /* discards 2, buffer untouched */
  ssize_t n4 = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  snprintf(out, outlen, "%zd %zd %zd [%.2s] %zd [%.*s]", n1, n2, n3, keep, n4,
           n4 > 0 ? (int)n4 : 0, buf);
}

static bool t_trunc(void) {
  int c, a;
  CHECK(plain_pair(&c, &a), "plain pair: %s", strerror(errno));
  char want[128], got[128];
  CHECK(write_all(a, "0123456789", 10) && wait_bytes(c, 10), "plain: bytes");
  trunc_probe(c, want, sizeof(want));
  close(c), close(a);
  int fd = dial();
  CHECK(fd >= 0, "connect");
  CHECK(write_all(fd, "0123456789", 10) && wait_bytes(fd, 10), "session: bytes");
  trunc_probe(fd, got, sizeof(got));
  CHECK(strcmp(got, want) == 0, "session: %s; plain TCP: %s", got, want);
  /* A large discard with MSG_WAITALL across a resume, then the stream goes
   * on where it should. */
  static uint8_t big[200000];
  for (size_t i = 0; i < sizeof(big); i++)
    big[i] = pat(i);
  CHECK(write_all(fd, big, sizeof(big)), "write");
  kill_conns(port);
  ssize_t n = recv(fd, NULL, sizeof(big), MSG_TRUNC | MSG_WAITALL);
  CHECK(n == (ssize_t)sizeof(big), "MSG_TRUNC|MSG_WAITALL across a resume: %zd %s", n, strerror(errno));
  CHECK(echo(fd, 1000, 31), "echo after the discard");
  close(fd);
  return true;
}

static bool sigio_within(int ms) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGIO);
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  return sigtimedwait(&set, NULL, &ts) == SIGIO;
}

/* fd's SIGIO goes to this thread (blocked: taken by sigtimedwait). */
static bool own_sigio(int fd) {
  struct f_owner_ex o = {.type = F_OWNER_TID, .pid = (pid_t)syscall(SYS_gettid)};
  return fcntl(fd, F_SETOWN_EX, &o) == 0;
}

static bool t_async(void) {
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGIO);
  CHECK(pthread_sigmask(SIG_BLOCK, &set, &old) == 0, "sigmask");
  /* Plain TCP: O_ASYNC brings SIGIO when bytes arrive. */
  int c, a;
  CHECK(plain_pair(&c, &a), "plain pair: %s", strerror(errno));
  int fl = fcntl(c, F_GETFL);
  CHECK(own_sigio(c) && fcntl(c, F_SETFL, fl | O_ASYNC) == 0, "plain: O_ASYNC: %s", strerror(errno));
  CHECK(write_all(a, "x", 1) && sigio_within(5000), "plain: no SIGIO");
  close(c), close(a);
  /* A session cannot: refused, nothing changed (O_NONBLOCK neither). */
  int fd = dial();
  CHECK(fd >= 0, "connect");
  fl = fcntl(fd, F_GETFL);
  CHECK(fl >= 0 && !(fl & O_NONBLOCK), "F_GETFL %#x", fl);
  CHECK(own_sigio(fd), "F_SETOWN_EX: %s", strerror(errno));
  errno = 0;
  int rc = fcntl(fd, F_SETFL, fl | O_ASYNC | O_NONBLOCK);
  CHECK(rc < 0 && errno == EINVAL, "session: F_SETFL O_ASYNC: %d %s (must fail with EINVAL)", rc,
        strerror(errno));
  CHECK(fcntl(fd, F_GETFL) == fl, "session: flags changed by a refused F_SETFL: %#x", fcntl(fd, F_GETFL));
  int one = 1;
  errno = 0;
  rc = ioctl(fd, FIOASYNC, &one);
  CHECK(rc < 0 && errno == EINVAL, "session: FIOASYNC: %d %s (must fail with EINVAL)", rc,
        strerror(errno));
  CHECK(echo(fd, 1000, 32), "echo");
  close(fd);
  /* A socket set for SIGIO before it connects stays plain TCP: SIGIO
   * comes. */
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(s >= 0 && own_sigio(s) && fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_ASYNC) == 0, "O_ASYNC socket");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s", strerror(errno));
  while (sigio_within(0))
    ; /* the connect's own */
  char b;
  CHECK(write_all(s, "y", 1) && sigio_within(5000) && read_all(s, &b, 1) && b == 'y',
        "O_ASYNC before connect: no SIGIO for the echo");
  close(s);
  while (sigio_within(0))
    ;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return true;
}

/* fd sets of 4096 bits (a program that allocates them for more than
 * FD_SETSIZE), set and read by hand (FD_SET stops at FD_SETSIZE). */
#define BIG_FDS 4096
struct bigset {
  unsigned long w[BIG_FDS / (8 * sizeof(unsigned long))];
};
static void big_set(struct bigset *b, int fd) { b->w[fd / 64] |= 1UL << (fd % 64); }
static bool big_isset(const struct bigset *b, int fd) { return (b->w[fd / 64] >> (fd % 64)) & 1; }

/* select(nfds, {fd}) for readability within ms: "rc bit errno". */
static void big_select(int nfds, int fd, int ms, char *out, size_t outlen) {
  struct bigset r;
  memset(&r, 0, sizeof(r));
  big_set(&r, fd);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  errno = 0;
  int rc = select(nfds, (fd_set *)(void *)&r, NULL, NULL, &tv);
  snprintf(out, outlen, "%d %d %s", rc, big_isset(&r, fd), rc < 0 ? strerrorname_np(errno) : "");
}

/* The kernel's descriptor table size (FDSize), or -1. */
static int fd_table_bits(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while (f && fgets(line, sizeof(line), f))
    if (sscanf(line, "FDSize: %d", &n) == 1)
      break;
  if (f)
    fclose(f);
  return n;
}

static bool t_bigselect(void) {
  int c, a;
  char want[64], got[64], b;
  CHECK(plain_pair(&c, &a), "plain pair: %s", strerror(errno));
  CHECK(write_all(a, "x", 1), "plain write");
  big_select(BIG_FDS, c, 5000, want, sizeof(want));
  CHECK(strcmp(want, "1 1 ") == 0, "plain: select %s", want);
  close(c), close(a);
  int fd = dial();
  CHECK(fd >= 0 && fd < 1024, "connect: %d", fd);
  CHECK(write_all(fd, "x", 1), "write");
  big_select(BIG_FDS, fd, 5000, got, sizeof(got));
  CHECK(strcmp(got, want) == 0, "session, nfds %d: select %s; plain TCP: %s", BIG_FDS, got, want);
  CHECK(read_all(fd, &b, 1) && b == 'x', "read");
  /* Nothing to read, suspended: a timeout, not an error. */
  kill_conns(port);
  big_select(BIG_FDS, fd, 200, got, sizeof(got));
  CHECK(strcmp(got, "0 0 ") == 0, "session, nothing to read: select %s", got);
  /* The echo of a byte written before a reset: readable after the resume. */
  CHECK(write_all(fd, "z", 1), "write");
  kill_conns(port);
  big_select(BIG_FDS, fd, 10000, got, sizeof(got));
  CHECK(strcmp(got, want) == 0, "session across a reset: select %s; plain TCP: %s", got, want);
  CHECK(read_all(fd, &b, 1) && b == 'z', "read after the resume");
  /* An ordinary fd_set with nfds far past the descriptor table (as
   * select(getdtablesize(), ...) does): the kernel looks at the table's
   * width only. */
  int table = fd_table_bits();
  if (table > 0 && table <= FD_SETSIZE) { /* else the kernel too would read past the set */
    fd_set small;
    FD_ZERO(&small);
    FD_SET(fd, &small);
    struct timeval tv = {5, 0};
    CHECK(write_all(fd, "w", 1), "write");
    int rc = select(1 << 20, &small, NULL, NULL, &tv);
    CHECK(rc == 1 && FD_ISSET(fd, &small), "select(1 << 20) with an fd_set: %d %s", rc,
          strerror(errno));
    CHECK(read_all(fd, &b, 1) && b == 'w', "read");
  } else {
    fprintf(stderr, "bigselect: descriptor table of %d: select(1 << 20) with an fd_set skipped\n",
            table);
  }
  /* A session's number above FD_SETSIZE (where the limit allows it). */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < BIG_FDS && rl.rlim_max >= BIG_FDS) {
    rl.rlim_cur = BIG_FDS;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  int hi = dup2(fd, 3000);
  if (hi == 3000) {
    CHECK(write_all(hi, "h", 1), "write");
    kill_conns(port);
    big_select(BIG_FDS, hi, 10000, got, sizeof(got));
    CHECK(strcmp(got, want) == 0, "session on fd 3000 across a reset: select %s", got);
    CHECK(read_all(hi, &b, 1) && b == 'h', "read on 3000");
    close(hi);
  } else {
    fprintf(stderr, "bigselect: no fd 3000 (%s): that part skipped\n", strerror(errno));
  }
  CHECK(echo(fd, 1000, 33), "echo");
  close(fd);
  return true;
}

/* What /proc says the number names now ("socket:[...]", "pipe:[...]"). */
static bool names_socket(int fd) {
  char path[64], target[128];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof(target) - 1);
  return n > 7 && strncmp(target, "socket:", 7) == 0;
}

/* fstat, fstatat(AT_EMPTY_PATH) and statx(AT_EMPTY_PATH) say socket. */
static bool stats_socket(int fd, char *why_, size_t len) {
  struct stat st;
  struct statx sx;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    snprintf(why_, len, "fstat mode %#o", (unsigned)st.st_mode);
    return false;
  }
  if (fstatat(fd, "", &st, AT_EMPTY_PATH) != 0 || !S_ISSOCK(st.st_mode)) {
    snprintf(why_, len, "fstatat mode %#o", (unsigned)st.st_mode);
    return false;
  }
  if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE, &sx) != 0 || !S_ISSOCK(sx.stx_mode)) {
    snprintf(why_, len, "statx mode %#o", (unsigned)sx.stx_mode);
    return false;
  }
  return true;
}

/* A session held in a transition: its peer (a child) is stopped and its
 * connection reset, so it cannot resume until the child goes on.  There
 * SIOCOUTQ answers (the bytes the peer does not have), fstat says socket,
 * MSG_ERRQUEUE says EAGAIN at once. */
static bool transition_checks(int fd, pid_t pid, int lport) {
  char w[128];
  int n = -1;
  /* Plain TCP: SIOCOUTQ and SIOCOUTQNSD answer, fstat says socket. */
  int c, a;
  CHECK(plain_pair(&c, &a), "plain pair");
  CHECK(ioctl(c, SIOCOUTQ, &n) == 0 && n >= 0 && ioctl(c, SIOCOUTQNSD, &n) == 0 && n >= 0,
        "plain: SIOCOUTQ: %s", strerror(errno));
  CHECK(stats_socket(c, w, sizeof(w)), "plain: %s", w);
  close(c), close(a);
  /* Connected: the same. */
  static char chunk[5000];
  memset(chunk, 'q', sizeof(chunk));
  CHECK(write_all(fd, chunk, sizeof(chunk)), "write");
  CHECK(ioctl(fd, SIOCOUTQ, &n) == 0 && n >= 0 && n <= (int)sizeof(chunk), "connected: SIOCOUTQ %d %s",
        n, strerror(errno));
  CHECK(stats_socket(fd, w, sizeof(w)), "connected: %s", w);
  CHECK(kill(pid, SIGSTOP) == 0, "SIGSTOP");
  kill_conns(lport);
  int i;
  for (i = 0; i < 1000 && names_socket(fd); i++)
    usleep(2000); /* until the session notices (the reset is in the kernel already) */
  CHECK(!names_socket(fd), "the session never left its socket after the reset");
  /* The peer's application read nothing: every byte is still owed. */
  n = -1;
  errno = 0;
  CHECK(ioctl(fd, SIOCOUTQ, &n) == 0 && n == (int)sizeof(chunk), "suspended: SIOCOUTQ %d %s (want %zu)",
        n, strerror(errno), sizeof(chunk));
  n = -1;
  CHECK(ioctl(fd, SIOCOUTQNSD, &n) == 0 && n == (int)sizeof(chunk), "suspended: SIOCOUTQNSD %d %s", n,
        strerror(errno));
  CHECK(stats_socket(fd, w, sizeof(w)), "suspended: %s", w);
  char buf[8];
  uint64_t t0 = now_ms();
  ssize_t r = recv(fd, buf, sizeof(buf), MSG_ERRQUEUE);
  CHECK(r < 0 && errno == EAGAIN && now_ms() - t0 < 2000, "suspended: MSG_ERRQUEUE %zd %s", r,
        strerror(errno));
  r = recv(fd, NULL, 10, MSG_TRUNC | MSG_DONTWAIT);
  CHECK(r < 0 && errno == EAGAIN, "suspended: MSG_TRUNC|MSG_DONTWAIT %zd %s", r, strerror(errno));
  CHECK(names_socket(fd) == false, "resumed while the peer was stopped?");
  return true;
}

static bool t_transition(void) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(a);
  CHECK(bind(ls, (struct sockaddr *)&a, sizeof(a)) == 0, "bind");
  CHECK(getsockname(ls, (struct sockaddr *)&a, &alen) == 0, "getsockname");
  int lport = ntohs(a.sin_port);
  int go[2];
  CHECK(pipe(go) == 0, "pipe");
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) { /* accepts, reads nothing until told, then the 5000 bytes */
    close(go[1]);
    char b, buf[5000];
    int peer = listen(ls, 4) == 0 ? accept(ls, NULL, NULL) : -1;
    bool ok = peer >= 0 && read(go[0], &b, 1) == 1 && read_all(peer, buf, sizeof(buf));
    for (size_t i = 0; ok && i < sizeof(buf); i++)
      ok = buf[i] == 'q';
    close(peer);
    exit(ok ? 0 : 1);
  }
  close(ls);
  close(go[0]);
  int fd = -1;
  for (int i = 0; i < 200 && fd < 0; i++) { /* until the child listens */
    fd = dial_port(lport);
    if (fd < 0)
      usleep(10000);
  }
  bool ok = fd >= 0 && transition_checks(fd, pid, lport);
  kill(pid, SIGCONT);
  int st = 0;
  if (ok) {
    (void)!write(go[1], "g", 1); /* the child reads the 5000 bytes after the resume */
    int n = -1;
    for (int i = 0; i < 1000; i++) { /* and the session learns it did */
      if (ioctl(fd, SIOCOUTQ, &n) == 0 && n == 0)
        break;
      usleep(10000);
    }
    if (n != 0) {
      snprintf(why, sizeof(why), "SIOCOUTQ still %d 10 s after the peer read everything", n);
      ok = false;
    }
  } else {
    kill(pid, SIGKILL);
  }
  close(go[1]);
  if (waitpid(pid, &st, 0) == pid && ok && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    snprintf(why, sizeof(why), "the peer: status %#x", st);
    ok = false;
  }
  if (fd >= 0)
    close(fd);
  return ok;
}

/* ---- poll_late ---- */

static void pin_thread(pid_t tid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)sched_setaffinity(tid, sizeof(set), &set);
}

/* Every thread of this process (the engine's too) onto cpu, or any CPU
 * (cpu < 0). */
static void pin_all(int cpu) {
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  cpu_set_t any;
  CPU_ZERO(&any);
  for (int i = 0; i < CPU_SETSIZE && i < sysconf(_SC_NPROCESSORS_ONLN); i++)
    CPU_SET(i, &any);
  while (d && (e = readdir(d)))
    if (e->d_name[0] != '.') {
      if (cpu >= 0)
        pin_thread((pid_t)atoi(e->d_name), cpu);
      else
        (void)sched_setaffinity((pid_t)atoi(e->d_name), sizeof(any), &any);
    }
  if (d)
    closedir(d);
}

static long task_field(pid_t tid, const char *file, const char *key) {
  char path[64], line[160];
  long v = -1;
  snprintf(path, sizeof(path), "/proc/self/task/%d/%s", (int)tid, file);
  FILE *f = fopen(path, "re");
  size_t kl = strlen(key);
  while (f && fgets(line, sizeof(line), f))
    if (strncmp(line, key, kl) == 0) {
      v = strtol(line + kl, NULL, 10);
      break;
    }
  if (f)
    fclose(f);
  return v;
}

/* Whether tid sleeps in poll (its wait has attached to the files). */
static bool asleep_in_poll(pid_t tid) {
  char path[64], wchan[64] = "";
  snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", (int)tid);
  FILE *f = fopen(path, "re");
  if (f) {
    (void)!fgets(wchan, sizeof(wchan), f);
    fclose(f);
  }
  return strstr(wchan, "poll") != NULL;
}

/* The local port of this host's connection to port p (ss), or -1. */
static int local_port_to(int p) {
  char cmd[128], line[256];
  int lport = -1;
  snprintf(cmd, sizeof(cmd), "ss -Htn state established dst 127.0.0.1 dport = :%d", p);
  FILE *f = popen(cmd, "re");
  while (f && fgets(line, sizeof(line), f)) {
    char local[64];
    if (sscanf(line, "%*s %*s %63s", local) == 1 && strrchr(local, ':'))
      lport = atoi(strrchr(local, ':') + 1);
  }
  if (f)
    pclose(f);
  return lport;
}

struct late_reader {
  int fd;
  pid_t tid;
  int got; /* bytes read (atomic) */
};

static void *late_read(void *arg) {
  struct late_reader *r = arg;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  /* ss's exit (SIGCHLD) would restart the poll, which then attaches to the
   * new file afresh: the case under test would not happen. */
  pthread_sigmask(SIG_BLOCK, &chld, NULL);
  __atomic_store_n(&r->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
  pin_thread(0, 0);
  for (;;) {
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    char c;
    if (poll(&p, 1, -1) < 0 && errno != EINTR)
      return NULL;
    ssize_t n = recv(r->fd, &c, 1, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || (n == 1 && c == 'q'))
      return NULL;
    if (n == 1)
      __atomic_fetch_add(&r->got, 1, __ATOMIC_RELEASE);
  }
}

static volatile int spin_hold_cpu;
static void *hold_cpu0(void *arg) {
  (void)arg;
  pin_thread(0, 0);
  __atomic_store_n((int *)arg, 1, __ATOMIC_RELEASE);
  while (spin_hold_cpu) {
  }
  return NULL;
}

static bool wait_for_count(int *v, int want, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (__atomic_load_n(v, __ATOMIC_ACQUIRE) < want && now_ms() < end)
    usleep(5000);
  return __atomic_load_n(v, __ATOMIC_ACQUIRE) >= want;
}

static bool t_poll_late(void) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
    fprintf(stderr, "poll_late: skipped (one CPU)\n");
    return true;
  }
  int fd = dial();
  CHECK(fd >= 0, "connect: %s", strerror(errno));
  pin_all(1);
  struct late_reader r = {.fd = fd};
  pthread_t rt, st;
  pthread_create(&rt, NULL, late_read, &r);
  CHECK(write(fd, "a", 1) == 1, "write: %s", strerror(errno));
  CHECK(wait_for_count(&r.got, 1, 5000), "the first byte never came");
  uint64_t end = now_ms() + 5000;
  pid_t tid = __atomic_load_n(&r.tid, __ATOMIC_ACQUIRE);
  while (!asleep_in_poll(tid) && now_ms() < end)
    usleep(5000);
  CHECK(asleep_in_poll(tid), "the reader is not in poll");
  long slept = task_field(tid, "status", "voluntary_ctxt_switches:");

  /* CPU 0 is taken: the reader, once woken, cannot look yet. */
  pthread_attr_t attr;
  struct sched_param prio = {.sched_priority = 1};
  int running = 0;
  pthread_attr_init(&attr);
  pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
  pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
  pthread_attr_setschedparam(&attr, &prio);
  spin_hold_cpu = 1;
  int rc = pthread_create(&st, &attr, hold_cpu0, &running);
  pthread_attr_destroy(&attr);
  if (rc == EPERM) { /* a container without CAP_SYS_NICE */
    fprintf(stderr, "poll_late: skipped (no real-time thread allowed)\n");
    (void)!write(fd, "q", 1);
    pthread_join(rt, NULL);
    close(fd);
    pin_all(-1);
    return true;
  }
  CHECK(rc == 0, "no real-time thread: %s", strerror(rc));
  wait_for_count(&running, 1, 5000);
  /* The connection is reset and the session resumes; then this thread's
   * call puts the new socket in place, before the reader has looked. */
  int before = local_port_to(port);
  kill_conns(port);
  end = now_ms() + 5000;
  while (local_port_to(port) == before && now_ms() < end)
    usleep(5000);
  usleep(200000); /* the resume's handshake, after the connect */
  ssize_t w = write(fd, "", 0);
  int err = errno;
  spin_hold_cpu = 0;
  pthread_join(st, NULL);
  CHECK(w == 0, "write of nothing across the resume: %zd %s", w, strerror(err));
  end = now_ms() + 5000;
  while (task_field(tid, "status", "voluntary_ctxt_switches:") <= slept && now_ms() < end)
    usleep(5000);
  /* The reader looked and slept again; a byte now must wake it. */
  CHECK(write(fd, "b", 1) == 1, "write: %s", strerror(errno));
  bool got = wait_for_count(&r.got, 2, 5000);
  pin_all(-1);
  CHECK(got, "the reader slept through the byte after the resume"); /* left asleep */
  CHECK(write(fd, "q", 1) == 1, "write: %s", strerror(errno));
  pthread_join(rt, NULL);
  close(fd);
  return true;
}

static const struct {
  const char *name;
  bool (*fn)(void);
} tests[] = {
    /* First: bigselect needs a descriptor table no larger than FD_SETSIZE,
     * which handshake_kill's thousands of connections grow. */
    {"errqueue", t_errqueue}, {"trunc", t_trunc},       {"async", t_async},
    {"bigselect", t_bigselect}, {"transition", t_transition},
    {"peek", t_peek},         {"rcvtimeo", t_rcvtimeo}, {"sndtimeo", t_sndtimeo},
    {"sendfile", t_sendfile}, {"chk", t_chk},           {"fcntl", t_fcntl},
    {"close_range", t_close_range}, {"fork", t_fork},   {"exec", t_exec},
    {"vfork", t_vfork},       {"mmsg", t_mmsg},         {"connect_close", t_connect_close},
    {"connect_again", t_connect_again},
    {"syscall", t_syscall},   {"spin", t_spin},         {"listeners", t_listeners},
    {"handshake_kill", t_handshake_kill}, {"poll_late", t_poll_late},
};

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  self = argv[0];
  if (argc == 4 && strcmp(argv[1], "exec-child") == 0)
    return exec_child(atoi(argv[2]), atoi(argv[3]));
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [TEST...]\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    bool run = argc == 2;
    for (int k = 2; k < argc; k++)
      run |= strcmp(argv[k], tests[i].name) == 0;
    if (!run)
      continue;
    why[0] = '\0';
    uint64_t t0 = now_ms();
    if (tests[i].fn()) {
      printf("ok %s (%llu ms)\n", tests[i].name, (unsigned long long)(now_ms() - t0));
    } else {
      printf("not ok %s: %s\n", tests[i].name, why);
      failures++;
    }
  }
  return failures;
}
