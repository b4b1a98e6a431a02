/* An ordinary threaded program for preload_threads.sh: one thread blocks in
 * a socket call while another shuts the socket down, as servers do to stop
 * their reader threads.  It knows nothing of tether; under tether-run its
 * sockets are sessions, and each call must end as it does on plain TCP.
 *
 *   preload_threads PORT SINK_PORT
 *   preload_threads sink SINK_PORT
 *
 * PORT is an echo server (preload_epoll_echo), SINK_PORT the second form.
 * Each test prints "ok NAME" or "not ok NAME: why"; the exit status is the
 * number of failures.  The shutting (or closing) thread acts only once it
 * has seen the other asleep in the kernel (/proc/self/task/TID/syscall: in
 * the call, or in tether's poll), so every case exercises a call in
 * progress, not a shutdown that came first.
 *
 *   shut_rd    recv() blocked, shutdown(SHUT_RD): recv returns 0
 *   shut_rdwr  read() blocked, shutdown(SHUT_RDWR): read returns 0
 *   poll_shut_rd  poll() for POLLIN blocked, shutdown(SHUT_RD): it reports
 *              POLLIN, and the read then returns 0
 *   epoll_shut_rd  epoll_wait() for EPOLLIN|EPOLLRDHUP blocked,
 *              shutdown(SHUT_RD): it reports both, the next wait
 *              (level-triggered) reports EPOLLIN again, and the read then
 *              returns 0
 *   shut_wr    send() blocked on a full connection, shutdown(SHUT_WR):
 *              send fails with EPIPE
 *   close_busy one send() of 8 MiB to a slow sink (preload_threads sink
 *              SINK_PORT), blocked, when another thread closes the
 *              descriptor: as on TCP the call goes on to its end (the
 *              socket lives while a call uses it); the sink gets it all
 *   fork_busy  40 forks while another thread spawns programs
 *              (posix_spawn with file actions) and opens connections
 *              without pause: every child spawns a program and echoes
 *              over a connection of its own, and exits 0 within 10 s (a
 *              child that finds a lock held by a thread it does not have
 *              hangs)
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int port;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* One round trip: the session is set up and the echo server serves it. */
static bool echo_once(int fd) {
  char c = 'x';
  return send(fd, &c, 1, MSG_NOSIGNAL) == 1 && recv(fd, &c, 1, MSG_WAITALL) == 1 && c == 'x';
}

struct blocked {
  int fd;
  int how; /* the call: 'r' recv, 'R' read, 'p' poll then read, 'w' send
               until it fails */
  pid_t tid;
  ssize_t rc;
  int err;
  uint64_t ended_ms;
};

static void *block_in_call(void *arg) {
  struct blocked *b = arg;
  static char buf[65536];
  __atomic_store_n(&b->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
  switch (b->how) {
  case 'r': b->rc = recv(b->fd, buf, sizeof(buf), 0); break;
  case 'R': b->rc = read(b->fd, buf, sizeof(buf)); break;
  case 'p': {
    struct pollfd p = {.fd = b->fd, .events = POLLIN};
    b->rc = poll(&p, 1, -1) == 1 && (p.revents & POLLIN) ? read(b->fd, buf, sizeof(buf)) : -1;
    break;
  }
  case 'e': { /* level-triggered: ready again at the next wait */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP}, got[2];
    b->rc = -1;
    if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, b->fd, &ev) == 0 &&
        epoll_wait(ep, got, 2, -1) == 1 && (got[0].events & (EPOLLIN | EPOLLRDHUP)) ==
                                                (EPOLLIN | EPOLLRDHUP) &&
        epoll_wait(ep, got, 2, 0) == 1 && (got[0].events & EPOLLIN))
      b->rc = read(b->fd, buf, sizeof(buf));
    if (ep >= 0)
      close(ep);
    break;
  }
  default:
    while ((b->rc = send(b->fd, buf, sizeof(buf), MSG_NOSIGNAL)) > 0)
      ;
  }
  b->err = errno;
  b->ended_ms = now_ms();
  return NULL;
}

/* Whether thread tid sleeps in the kernel where a blocked call does: in
 * the call itself (plain TCP) or in poll (tether waits there). */
static bool asleep_in_poll(pid_t tid) {
  char path[64], line[64];
  snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  bool in = false;
  if (fgets(line, sizeof(line), f) && line[0] >= '0' && line[0] <= '9') {
    long nr = atol(line);
    in = nr == SYS_poll || nr == SYS_ppoll || nr == SYS_recvfrom || nr == SYS_read ||
         nr == SYS_sendto || nr == SYS_epoll_wait || nr == SYS_epoll_pwait;
  }
  fclose(f);
  return in;
}

/* Starts the call, waits (up to 10 s) until it has been asleep for 20 ms
 * (looked at every millisecond: not a passing poll, and not a send that
 * still wakes as the peer's acknowledgements make room), shuts fd down
 * with `how`, and joins it; 0, or -1 with *why set. */
static int shut_blocked(struct blocked *b, int how, const char **why, uint64_t *wake_ms) {
  pthread_t t;
  if (pthread_create(&t, NULL, block_in_call, b) != 0) {
    *why = "pthread_create";
    return -1;
  }
  uint64_t deadline = now_ms() + 10000, asleep_since = 0;
  for (;;) {
    pid_t tid = __atomic_load_n(&b->tid, __ATOMIC_ACQUIRE);
    uint64_t now = now_ms();
    if (!tid || !asleep_in_poll(tid))
      asleep_since = 0;
    else if (!asleep_since)
      asleep_since = now;
    else if (now - asleep_since >= 20)
      break;
    if (now > deadline) {
      *why = "the call never stayed asleep for 20 ms";
      shutdown(b->fd, SHUT_RDWR);
      pthread_join(t, NULL);
      return -1;
    }
    usleep(1000);
  }
  uint64_t t0 = now_ms();
  if (shutdown(b->fd, how) != 0) {
    *why = "shutdown failed";
    return -1;
  }
  pthread_join(t, NULL); /* a wake-up that never comes: the script's timeout */
  *wake_ms = b->ended_ms - t0;
  return 0;
}

static int report(const char *name, const char *why) {
  if (why) {
    printf("not ok %s: %s\n", name, why);
    return 1;
  }
  printf("ok %s\n", name);
  return 0;
}

static int t_shut_read(const char *name, int call, int how) {
  const char *why = NULL;
  uint64_t wake_ms = 0;
  int fd = dial();
  if (fd < 0 || !echo_once(fd))
    return report(name, "no echo");
  struct blocked b = {.fd = fd, .how = call};
  if (shut_blocked(&b, how, &why, &wake_ms) == 0) {
    if (b.rc != 0)
      why = b.rc < 0 ? strerror(b.err) : "bytes instead of end of stream";
    else if (wake_ms > 2000)
      why = "woken only after 2 s";
  }
  printf("# %s: the blocked call returned %zd %u ms after shutdown\n", name, b.rc,
         (unsigned)wake_ms);
  close(fd);
  return report(name, why);
}

static int t_shut_wr(void) {
  const char *why = NULL;
  uint64_t wake_ms = 0;
  int fd = dial();
  if (fd < 0 || !echo_once(fd))
    return report("shut_wr", "no echo");
  /* Nothing is read back: the echo server stops reading once its replies
   * fill the way back, and then our sends block. */
  struct blocked b = {.fd = fd, .how = 'w'};
  if (shut_blocked(&b, SHUT_WR, &why, &wake_ms) == 0) {
    if (b.rc != -1 || b.err != EPIPE)
      why = b.rc < 0 ? strerror(b.err) : "send succeeded";
    else if (wake_ms > 2000)
      why = "woken only after 2 s";
  }
  printf("# shut_wr: the blocked send returned %zd (%s) %u ms after shutdown\n", b.rc,
         b.rc < 0 ? strerror(b.err) : "-", (unsigned)wake_ms);
  /* The echo of what got through, to its end: a close with unread bytes
   * would be a reset on plain TCP, and a session kept to deliver them. */
  static char buf[65536];
  while (recv(fd, buf, sizeof(buf), 0) > 0)
    ;
  close(fd);
  return report("shut_wr", why);
}

#define BUSY_LEN ((size_t)8 << 20)

/* sink PORT: accepts connections one after the other and reads each to its
 * end, 64 KiB every 5 ms (slower than a sender: it waits on it), printing
 * how many bytes it got. */
static int sink_main(int p) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
      bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 8) < 0)
    return 2;
  static char buf[65536];
  for (;;) {
    int c = accept(l, NULL, NULL);
    if (c < 0)
      return 2;
    size_t total = 0;
    ssize_t n;
    while ((n = read(c, buf, sizeof(buf))) > 0) {
      total += (size_t)n;
      usleep(5000);
    }
    printf("sink: %zu bytes\n", total);
    close(c);
  }
}

static void *send_busy(void *arg) {
  struct blocked *b = arg;
  static uint8_t big[BUSY_LEN];
  __atomic_store_n(&b->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
  b->rc = send(b->fd, big, sizeof(big), MSG_NOSIGNAL);
  b->err = errno;
  return NULL;
}

/* One send() of 8 MiB to the slow sink, blocked, when another thread closes
 * the descriptor: as on TCP the call goes on to its end (the socket lives
 * while a call uses it).  The sink reports the bytes it got. */
static int t_close_busy(int sink_port) {
  const char *why = NULL;
  int saved = port;
  port = sink_port;
  int fd = dial();
  port = saved;
  if (fd < 0)
    return report("close_busy", "cannot connect to the sink");
  struct blocked b = {.fd = fd};
  pthread_t t;
  if (pthread_create(&t, NULL, send_busy, &b) != 0)
    return report("close_busy", "pthread_create");
  uint64_t deadline = now_ms() + 10000;
  pid_t tid;
  while (!(tid = __atomic_load_n(&b.tid, __ATOMIC_ACQUIRE)) || !asleep_in_poll(tid)) {
    if (now_ms() > deadline) {
      why = "the send never slept";
      break;
    }
    usleep(1000);
  }
  if (close(fd) != 0 && !why)
    why = "close failed";
  pthread_join(t, NULL); /* a hang is the script's timeout */
  printf("# close_busy: the send returned %zd (%s) after the close\n", b.rc,
         b.rc < 0 ? strerror(b.err) : "-");
  if (!why && b.rc != (ssize_t)BUSY_LEN)
    why = "the send did not go on to its end after the close";
  return report("close_busy", why);
}

/* posix_spawn of /bin/true with (empty) file actions, reaped: true if it
 * exited 0. */
static bool spawn_true(void) {
  posix_spawn_file_actions_t fa;
  char *argv[] = {"true", NULL};
  extern char **environ;
  pid_t pid;
  if (posix_spawn_file_actions_init(&fa) != 0)
    return false;
  int rc = posix_spawn(&pid, "/bin/true", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  int st;
  return rc == 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static bool busy_stop;

/* Spawns and connects until told to stop: at any moment of a fork, this
 * thread may hold a lock of tether's. */
static void *spawn_busy(void *arg) {
  (void)arg;
  while (!__atomic_load_n(&busy_stop, __ATOMIC_ACQUIRE)) {
    (void)spawn_true();
    int fd = dial();
    if (fd >= 0) {
      (void)echo_once(fd);
      close(fd);
    }
  }
  return NULL;
}

static int t_fork_busy(void) {
  const char *why = NULL;
  pthread_t t;
  if (pthread_create(&t, NULL, spawn_busy, NULL) != 0)
    return report("fork_busy", "pthread_create");
  for (int i = 0; i < 40 && !why; i++) {
    usleep(2000); /* a fork at a different point of the other thread's work */
    pid_t pid = fork();
    if (pid < 0) {
      why = "fork failed";
      break;
    }
    if (pid == 0) {
      int fd = dial();
      bool ok = spawn_true() && fd >= 0 && echo_once(fd);
      _exit(ok ? 0 : 1);
    }
    int st = 0;
    uint64_t deadline = now_ms() + 10000;
    pid_t w;
    while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() < deadline)
      usleep(1000);
    if (w == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      why = "a child hung";
    } else if (w != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      why = "a child could not spawn or echo";
    }
  }
  __atomic_store_n(&busy_stop, true, __ATOMIC_RELEASE);
  pthread_join(t, NULL);
  return report("fork_busy", why);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 3 && strcmp(argv[1], "sink") == 0)
    return sink_main(atoi(argv[2]));
  if (argc != 3) {
    fprintf(stderr, "usage: preload_threads PORT SINK_PORT | sink SINK_PORT\n");
    return 100;
  }
  port = atoi(argv[1]);
  int failed = 0;
  failed += t_shut_read("shut_rd", 'r', SHUT_RD);
  failed += t_shut_read("shut_rdwr", 'R', SHUT_RDWR);
  failed += t_shut_read("poll_shut_rd", 'p', SHUT_RD);
  failed += t_shut_read("epoll_shut_rd", 'e', SHUT_RD);
  failed += t_shut_wr();
  failed += t_close_busy(atoi(argv[2]));
  failed += t_fork_busy();
  return failed;
}
