/* Ordinary forking programs, standing in for unmodified binaries in
 * preload_fork.sh (they know nothing of tether).
 *
 *   preload_fork server PORT CONNS
 *     accept -> fork -> the parent closes its copy; the child echoes the
 *     connection with blocking read/write until EOF, then exits 0.  The
 *     parent exits after CONNS children, with the first failing child's
 *     status (or 0).
 *   preload_fork server-exec PORT CONNS PROGRAM [ARGS...]
 *     The same, inetd style: the child puts the connection on fds 0 and 1,
 *     closes the original and everything from 3 up (closefrom), and execs
 *     PROGRAM (cat is an echo).
 *   preload_fork server-poll PORT CONNS
 *     The same as server, but the child serves with a non-blocking socket
 *     and poll().
 *   preload_fork server-crash PORT
 *     One connection: the child echoes 1 MiB, then kills itself (SIGKILL)
 *     without closing; the parent closed its copy long before.
 *   preload_fork server-lastword PORT
 *     One connection: the child echoes it until EOF, then, half a second
 *     later, writes "BYE\n", closes and exits; the parent exits as soon as
 *     it has reaped the child.
 *   preload_fork server-spawn PORT CONNS
 *     accept -> posix_spawn of cat with the connection on its fds 0 and 1
 *     (POSIX_SPAWN_DUP2 file actions) -> the parent closes its copy and
 *     waits for cat; exits after CONNS connections with the first failing
 *     cat's status (or 0).
 *   preload_fork prefork PORT WORKERS CONNS
 *     Pre-forked: the parent listens, forks WORKERS workers, closes its own
 *     listener and accepts nothing; each worker accepts (blocking) and
 *     echoes connections one after the other, as server's children do.
 *     After CONNS connections in all the parent ends the workers and exits
 *     with the first failing worker's status (or 0).
 *   preload_fork client PORT IN OUT
 *     connect -> fork; the child sends file IN and writes what comes back to
 *     OUT (poll, non-blocking), shuts down writing after IN, and exits at
 *     EOF; the parent keeps its copy open until the child has exited, then
 *     closes it and exits with the child's status.
 *
 * Every unexpected error is reported on stderr with the word FAIL. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define FAIL(...) \
  do { \
    fprintf(stderr, "FAIL [%d]: ", (int)getpid()); \
    fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n"); \
    exit(1); \
  } while (0)

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Echoes c until EOF (or, with crash_after, dies holding it after that
 * many bytes). */
static void echo_until_eof(int c, size_t crash_after) {
  char buf[65536];
  size_t total = 0;
  for (;;) {
    if (crash_after && total >= crash_after)
      raise(SIGKILL); /* dies holding the connection */
    ssize_t n = read(c, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      FAIL("child read: %s", strerror(errno));
    if (n == 0)
      break;
    if (write_all(c, buf, (size_t)n) < 0)
      FAIL("child write: %s", strerror(errno));
    total += (size_t)n;
  }
}

static void echo_blocking(int c, size_t crash_after) {
  echo_until_eof(c, crash_after);
  if (close(c) < 0)
    FAIL("child close: %s", strerror(errno));
}

/* server-lastword's child. */
static void echo_then_bye(int c) {
  echo_until_eof(c, 0);
  usleep(500000);
  if (write_all(c, "BYE\n", 4) < 0 || close(c) < 0)
    FAIL("child: last words: %s", strerror(errno));
}

/* Non-blocking, with poll: what the child echoes waits in buf. */
static void echo_poll(int c) {
  static char buf[1 << 20];
  size_t head = 0, len = 0;
  bool eof = false;
  if (fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK) < 0)
    FAIL("fcntl: %s", strerror(errno));
  while (!eof || len) {
    struct pollfd p = {.fd = c, .events = (short)((!eof && len < sizeof(buf) ? POLLIN : 0) |
                                                  (len ? POLLOUT : 0))};
    if (poll(&p, 1, 30000) <= 0)
      FAIL("child poll: %s", errno ? strerror(errno) : "30 s without readiness");
    if (p.revents & (POLLERR | POLLNVAL))
      FAIL("child poll: revents %#x", p.revents);
    if (len) {
      ssize_t w = write(c, buf + head, len);
      if (w > 0) {
        head += (size_t)w;
        len -= (size_t)w;
        if (!len)
          head = 0;
      } else if (errno != EAGAIN && errno != EINTR) {
        FAIL("child write: %s", strerror(errno));
      }
    }
    if (!eof && head + len < sizeof(buf)) {
      ssize_t n = read(c, buf + head + len, sizeof(buf) - head - len);
      if (n > 0)
        len += (size_t)n;
      else if (n == 0)
        eof = true;
      else if (errno != EAGAIN && errno != EINTR)
        FAIL("child read: %s", strerror(errno));
    }
  }
  close(c);
}

static int listen_on(int port) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 16) < 0)
    FAIL("listen: %s", strerror(errno));
  return l;
}

static int server(int mode, int port, int conns, char **prog) {
  int l = listen_on(port);
  int status = 0, started = 0, ended = 0;
  while (ended < conns) {
    if (started < conns) {
      struct sockaddr_in peer;
      socklen_t plen = sizeof(peer);
      int c = accept(l, (struct sockaddr *)&peer, &plen);
      if (c < 0) {
        if (errno == EINTR)
          continue;
        FAIL("accept: %s", strerror(errno));
      }
      if (plen != sizeof(peer) || peer.sin_family != AF_INET)
        FAIL("accept: peer address of family %d", peer.sin_family);
      pid_t pid = fork();
      if (pid < 0)
        FAIL("fork: %s", strerror(errno));
      if (pid == 0) {
        close(l);
        struct sockaddr_in a;
        socklen_t alen = sizeof(a);
        if (getpeername(c, (struct sockaddr *)&a, &alen) < 0 || a.sin_family != AF_INET)
          FAIL("child getpeername: %s", strerror(errno));
        if (mode == 4) {
          echo_then_bye(c);
        } else if (mode == 0 || mode == 3) {
          echo_blocking(c, mode == 3 ? 1 << 20 : 0);
        } else if (mode == 2) {
          echo_poll(c);
        } else {
          if (dup2(c, 0) < 0 || dup2(c, 1) < 0)
            FAIL("dup2: %s", strerror(errno));
          close(c);
          closefrom(3); /* as daemons do before exec */
          execvp(prog[0], prog);
          FAIL("exec %s: %s", prog[0], strerror(errno));
        }
        _exit(0);
      }
      started++;
      if (close(c) < 0) /* the child serves it */
        FAIL("parent close: %s", strerror(errno));
      fprintf(stderr, "server: connection %d to child %d\n", started, (int)pid);
    }
    /* Reap what has ended; block only once everything is started. */
    int st;
    pid_t w = waitpid(-1, &st, started < conns ? WNOHANG : 0);
    if (w > 0) {
      ended++;
      int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (mode == 3 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
        rc = 0; /* as planned */
      fprintf(stderr, "server: child %d ended with %d\n", (int)w, rc);
      if (rc && !status)
        status = rc;
    } else if (w < 0 && errno != EINTR) {
      FAIL("waitpid: %s", strerror(errno));
    }
  }
  close(l);
  return status;
}

static int server_spawn(int port, int conns) {
  int l = listen_on(port);
  int status = 0;
  for (int i = 0; i < conns; i++) {
    int c = accept(l, NULL, NULL);
    if (c < 0 && errno == EINTR) {
      i--;
      continue;
    }
    if (c < 0)
      FAIL("accept: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) || posix_spawn_file_actions_adddup2(&fa, c, 0) ||
        posix_spawn_file_actions_adddup2(&fa, c, 1))
      FAIL("file actions");
    char *argv[] = {"cat", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "cat", &fa, NULL, argv, environ);
    if (rc)
      FAIL("posix_spawnp: %s", strerror(rc));
    posix_spawn_file_actions_destroy(&fa);
    if (close(c) < 0) /* cat serves it */
      FAIL("parent close: %s", strerror(errno));
    int st;
    while (waitpid(pid, &st, 0) < 0)
      if (errno != EINTR)
        FAIL("waitpid: %s", strerror(errno));
    rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    fprintf(stderr, "server: cat %d ended with %d\n", (int)pid, rc);
    if (rc && !status)
      status = rc;
  }
  close(l);
  return status;
}

static int prefork(int port, int workers, int conns) {
  int l = listen_on(port);
  int done[2];
  if (pipe(done) < 0)
    FAIL("pipe: %s", strerror(errno));
  pid_t *pids = calloc((size_t)workers, sizeof(*pids));
  for (int i = 0; i < workers; i++) {
    pids[i] = fork();
    if (pids[i] < 0)
      FAIL("fork: %s", strerror(errno));
    if (pids[i] == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL); /* no worker outlives a failed test */
      close(done[0]);
      for (;;) {
        struct sockaddr_in peer, a;
        socklen_t plen = sizeof(peer), alen = sizeof(a);
        int c = accept(l, (struct sockaddr *)&peer, &plen);
        if (c < 0 && errno == EINTR)
          continue;
        if (c < 0)
          FAIL("worker accept: %s", strerror(errno));
        if (plen != sizeof(peer) || peer.sin_family != AF_INET)
          FAIL("worker accept: peer address of family %d", peer.sin_family);
        if (getpeername(c, (struct sockaddr *)&a, &alen) < 0 || a.sin_family != AF_INET ||
            a.sin_port != peer.sin_port)
          FAIL("worker getpeername: %s", errno ? strerror(errno) : "not the accepted peer");
        fprintf(stderr, "worker %d: a connection from port %d\n", (int)getpid(),
                ntohs(peer.sin_port));
        echo_blocking(c, 0);
        if (write(done[1], "x", 1) != 1)
          FAIL("worker: pipe: %s", strerror(errno));
      }
    }
  }
  close(done[1]);
  if (close(l) < 0) /* the workers keep it open */
    FAIL("parent close: %s", strerror(errno));
  int status = 0, served = 0;
  while (served < conns) {
    char x;
    ssize_t n = read(done[0], &x, 1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      status = 1; /* every worker died */
      fprintf(stderr, "FAIL: the workers are gone after %d connections\n", served);
      break;
    }
    served++;
  }
  for (int i = 0; i < workers; i++)
    kill(pids[i], SIGTERM);
  for (int i = 0; i < workers; i++) {
    int st;
    while (waitpid(pids[i], &st, 0) < 0)
      if (errno != EINTR)
        FAIL("waitpid: %s", strerror(errno));
    int rc = WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM ? 0
             : WIFEXITED(st)                            ? WEXITSTATUS(st)
                                                        : 128 + WTERMSIG(st);
    fprintf(stderr, "server: worker %d ended with %d\n", (int)pids[i], rc);
    if (rc && !status)
      status = rc;
  }
  free(pids);
  return status;
}

static int client(int port, const char *in, const char *out) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
    FAIL("connect: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    int fi = open(in, O_RDONLY), fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fi < 0 || fo < 0)
      FAIL("open: %s", strerror(errno));
    if (fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK) < 0)
      FAIL("fcntl: %s", strerror(errno));
    static char ob[65536], ib[65536];
    size_t olen = 0, ooff = 0;
    bool in_done = false, eof = false;
    while (!eof) {
      if (!olen && !in_done) {
        ssize_t n = read(fi, ob, sizeof(ob));
        if (n < 0)
          FAIL("read %s: %s", in, strerror(errno));
        if (n == 0) {
          in_done = true;
          if (shutdown(c, SHUT_WR) < 0)
            FAIL("shutdown: %s", strerror(errno));
        }
        olen = (size_t)n;
        ooff = 0;
      }
      struct pollfd p = {.fd = c, .events = (short)(POLLIN | (olen ? POLLOUT : 0))};
      if (poll(&p, 1, 30000) <= 0)
        FAIL("client poll: %s", errno ? strerror(errno) : "30 s without readiness");
      if (p.revents & (POLLERR | POLLNVAL))
        FAIL("client poll: revents %#x", p.revents);
      if (olen) {
        ssize_t w = send(c, ob + ooff, olen, MSG_NOSIGNAL);
        if (w > 0) {
          ooff += (size_t)w;
          olen -= (size_t)w;
        } else if (errno != EAGAIN && errno != EINTR) {
          FAIL("client send: %s", strerror(errno));
        }
      }
      ssize_t n = recv(c, ib, sizeof(ib), 0);
      if (n > 0) {
        if (write_all(fo, ib, (size_t)n) < 0)
          FAIL("write %s: %s", out, strerror(errno));
      } else if (n == 0) {
        eof = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        FAIL("client recv: %s", strerror(errno));
      }
    }
    if (!in_done)
      FAIL("EOF before all of %s was sent", in);
    close(fo);
    close(c);
    _exit(0);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      FAIL("waitpid: %s", strerror(errno));
  if (close(c) < 0)
    FAIL("parent close: %s", strerror(errno));
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 4 && strcmp(argv[1], "server") == 0)
    return server(0, atoi(argv[2]), atoi(argv[3]), NULL);
  if (argc == 4 && strcmp(argv[1], "server-poll") == 0)
    return server(2, atoi(argv[2]), atoi(argv[3]), NULL);
  if (argc == 3 && strcmp(argv[1], "server-crash") == 0)
    return server(3, atoi(argv[2]), 1, NULL);
  if (argc >= 5 && strcmp(argv[1], "server-exec") == 0)
    return server(1, atoi(argv[2]), atoi(argv[3]), argv + 4);
  if (argc == 3 && strcmp(argv[1], "server-lastword") == 0)
    return server(4, atoi(argv[2]), 1, NULL);
  if (argc == 4 && strcmp(argv[1], "server-spawn") == 0)
    return server_spawn(atoi(argv[2]), atoi(argv[3]));
  if (argc == 5 && strcmp(argv[1], "prefork") == 0)
    return prefork(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (argc == 5 && strcmp(argv[1], "client") == 0)
    return client(atoi(argv[2]), argv[3], argv[4]);
  fprintf(stderr, "usage: preload_fork server|server-poll PORT CONNS\n"
                  "       preload_fork server-crash PORT\n"
                  "       preload_fork server-exec PORT CONNS PROGRAM [ARGS...]\n"
                  "       preload_fork server-lastword PORT\n"
                  "       preload_fork server-spawn PORT CONNS\n"
                  "       preload_fork prefork PORT WORKERS CONNS\n"
                  "       preload_fork client PORT IN OUT\n");
  return 2;
}
