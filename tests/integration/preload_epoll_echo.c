/* An ordinary epoll program, standing in for unmodified binaries in
 * preload_epoll.sh (it knows nothing of tether; it is built with
 * -O2 -D_FORTIFY_SOURCE=2 like a distribution's).
 *
 *   preload_epoll_echo server PORT THREADS CONNS
 *     An echo server: a non-blocking listener (level-triggered) and
 *     connections registered EPOLLIN|EPOLLET|EPOLLONESHOT|EPOLLRDHUP, served
 *     by THREADS threads in epoll_wait, epoll_pwait and epoll_pwait2 on one
 *     epoll instance.  Exits after CONNS connections ended.
 *   preload_epoll_echo client PORT BYTES SEED RATE
 *     Connects non-blocking (EINPROGRESS), sends BYTES of a pseudo-random
 *     stream at RATE bytes/s and checks the echo byte by byte, all on one
 *     EPOLLET|EPOLLONESHOT registration.
 *
 * Both count what TCP would never show on a healthy connection, and exit 1
 * if any occurred: EPOLLERR or EPOLLHUP, EPOLLRDHUP before the peer closed,
 * an event for a one-shot registration not re-armed (or while another
 * thread still handles it), a wrong byte, a read or write error. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_int violations;
static atomic_int conns_done;

#define VIOLATION(...) \
  do { \
    fprintf(stderr, "VIOLATION: " __VA_ARGS__); \
    fputc('\n', stderr); \
    atomic_fetch_add(&violations, 1); \
  } while (0)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The test stream: byte i of stream `seed`. */
static uint8_t stream_byte(uint64_t seed, uint64_t i) {
  uint64_t x = (seed + (i >> 3)) * 0x9e3779b97f4a7c15ull;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return (uint8_t)(x >> ((i & 7) * 8));
}

/* ---- server ---- */

struct conn {
  int fd;
  atomic_int busy;  /* a thread handles it */
  bool armed;       /* re-armed since its last event (guarded by busy) */
  uint8_t buf[1 << 16];
  size_t have;      /* bytes read, not yet echoed */
  uint64_t echoed;
};

static int ep;
static int lsock;
static int conns_wanted;

static void rearm(struct conn *c) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET | EPOLLONESHOT | EPOLLRDHUP, .data.ptr = c};
  if (c->have)
    ev.events |= EPOLLOUT;
  c->armed = true;
  atomic_store(&c->busy, 0);
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
    VIOLATION("epoll_ctl MOD fd %d: %s", c->fd, strerror(errno));
}

static void serve(struct conn *c, uint32_t what) {
  if (atomic_exchange(&c->busy, 1))
    VIOLATION("fd %d: event %#x while another thread handles it", c->fd, what);
  if (!c->armed)
    VIOLATION("fd %d: event %#x for a one-shot registration not re-armed", c->fd, what);
  c->armed = false;
  if (what & (EPOLLERR | EPOLLHUP))
    VIOLATION("fd %d: %s%s", c->fd, what & EPOLLERR ? "EPOLLERR " : "", what & EPOLLHUP ? "EPOLLHUP" : "");
  bool eof = false;
  for (;;) {
    /* Echo what we hold, then read more while there is room. */
    while (c->have) {
      ssize_t w = write(c->fd, c->buf, c->have);
      if (w < 0) {
        if (errno != EAGAIN)
          VIOLATION("fd %d: write: %s", c->fd, strerror(errno));
        break;
      }
      memmove(c->buf, c->buf + w, c->have - (size_t)w);
      c->have -= (size_t)w;
      c->echoed += (uint64_t)w;
    }
    if (eof || c->have == sizeof(c->buf))
      break; /* the client reads: EPOLLOUT will come */
    ssize_t n = read(c->fd, c->buf + c->have, sizeof(c->buf) - c->have);
    if (n > 0) {
      c->have += (size_t)n;
      continue;
    }
    if (n == 0) {
      eof = true;
      continue; /* one more echo */
    }
    if (errno != EAGAIN) {
      VIOLATION("fd %d: read: %s", c->fd, strerror(errno));
      eof = true;
    }
    break;
  }
  if ((what & EPOLLRDHUP) && !eof)
    VIOLATION("fd %d: EPOLLRDHUP but no EOF", c->fd);
  if (eof && !c->have) {
    fprintf(stderr, "server: fd %d done, %llu bytes echoed\n", c->fd, (unsigned long long)c->echoed);
    close(c->fd); /* close deletes the registration */
    free(c);
    atomic_fetch_add(&conns_done, 1);
    return;
  }
  rearm(c);
}

static void accept_all(void) {
  for (;;) {
    int fd = accept4(lsock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN)
        VIOLATION("accept4: %s", strerror(errno));
      return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    c->fd = fd;
    c->armed = true;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | EPOLLONESHOT | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
      VIOLATION("epoll_ctl ADD: %s", strerror(errno));
  }
}

static void *worker(void *arg) {
  int kind = (int)(intptr_t)arg % 3;
  while (conns_wanted == 0 || atomic_load(&conns_done) < conns_wanted) {
    struct epoll_event evs[8];
    int n;
    if (kind == 0) {
      n = epoll_wait(ep, evs, 8, 200);
    } else if (kind == 1) {
      sigset_t none;
      sigemptyset(&none);
      n = epoll_pwait(ep, evs, 8, 200, &none);
    } else {
      struct timespec ts = {0, 200 * 1000000};
      n = epoll_pwait2(ep, evs, 8, &ts, NULL);
    }
    if (n < 0 && errno != EINTR)
      VIOLATION("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == &lsock)
        accept_all();
      else
        serve(evs[i].data.ptr, evs[i].events);
    }
  }
  return NULL;
}

static int server(int port, int threads, int conns) {
  conns_wanted = conns;
  lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(lsock, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lsock, 64) < 0) {
    perror("server: bind/listen");
    return 2;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lsock};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lsock, &ev) < 0) {
    perror("server: epoll_ctl");
    return 2;
  }
  pthread_t th[16];
  if (threads > 16)
    threads = 16;
  for (int i = 0; i < threads; i++)
    pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
  for (int i = 0; i < threads; i++)
    pthread_join(th[i], NULL);
  int v = atomic_load(&violations);
  printf("server: %d connections, %d violations\n", atomic_load(&conns_done), v);
  return v ? 1 : 0;
}

/* ---- client ---- */

static int client(int port, uint64_t bytes, uint64_t seed, uint64_t rate) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
    fprintf(stderr, "client: connected at once\n");
  } else if (errno != EINPROGRESS) {
    perror("client: connect");
    return 2;
  }
  int ep1 = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLONESHOT | EPOLLRDHUP,
                           .data.u64 = 0xfeedface12345678ull};
  if (epoll_ctl(ep1, EPOLL_CTL_ADD, fd, &ev) < 0) {
    perror("client: epoll_ctl");
    return 2;
  }
  bool armed = true, connected = false, blocked = false;
  uint64_t sent = 0, got = 0, t0 = now_ms(), last_progress = t0;
  uint8_t buf[1 << 15];
  int events = 0;
  while (got < bytes) {
    struct epoll_event out[4];
    int n = epoll_wait(ep1, out, 4, 5);
    if (n < 0 && errno != EINTR)
      VIOLATION("client: epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      events++;
      uint32_t w = out[i].events;
      if (out[i].data.u64 != 0xfeedface12345678ull)
        VIOLATION("client: event data %#llx is not ours", (unsigned long long)out[i].data.u64);
      if (!armed)
        VIOLATION("client: event %#x on a disarmed one-shot registration", w);
      armed = false;
      if (w & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))
        VIOLATION("client: %#x (ERR/HUP/RDHUP) at %llu/%llu bytes", w, (unsigned long long)sent,
                  (unsigned long long)got);
      if (!connected && (w & EPOLLOUT)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
          fprintf(stderr, "client: connect: %s\n", strerror(err));
          return 2;
        }
        connected = true;
      }
    }
    if (n > 0 || armed == false) {
      /* Read everything there is and check it. */
      for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r > 0) {
          for (ssize_t k = 0; k < r; k++)
            if (buf[k] != stream_byte(seed, got + (uint64_t)k)) {
              VIOLATION("client: byte %llu differs", (unsigned long long)(got + (uint64_t)k));
              return 1;
            }
          got += (uint64_t)r;
          last_progress = now_ms();
          continue;
        }
        if (r == 0) {
          VIOLATION("client: EOF after %llu bytes", (unsigned long long)got);
          return 1;
        }
        if (errno != EAGAIN)
          VIOLATION("client: read: %s", strerror(errno));
        break;
      }
    }
    if (connected) {
      /* Send what the rate allows. */
      uint64_t allowed = rate ? (now_ms() - t0 + 1) * rate / 1000 : bytes;
      if (allowed > bytes)
        allowed = bytes;
      blocked = false;
      while (sent < allowed && sent - got < (4u << 20)) {
        size_t len = allowed - sent < sizeof(buf) ? (size_t)(allowed - sent) : sizeof(buf);
        for (size_t k = 0; k < len; k++)
          buf[k] = stream_byte(seed, sent + k);
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
          if (errno != EAGAIN)
            VIOLATION("client: write: %s", strerror(errno));
          blocked = true;
          break;
        }
        sent += (uint64_t)w;
      }
    }
    if (!armed) {
      /* EPOLLOUT only when a write would wait: a writable socket would
       * fire at once, and for ever. */
      struct epoll_event re = ev;
      if (connected && !blocked)
        re.events &= ~(uint32_t)EPOLLOUT;
      if (epoll_ctl(ep1, EPOLL_CTL_MOD, fd, &re) < 0)
        VIOLATION("client: epoll_ctl MOD: %s", strerror(errno));
      armed = true;
    }
    if (now_ms() - last_progress > 30000) {
      fprintf(stderr, "client: no progress for 30 s (%llu sent, %llu echoed)\n",
              (unsigned long long)sent, (unsigned long long)got);
      return 1;
    }
  }
  close(fd);
  int v = atomic_load(&violations);
  printf("client: %llu bytes echoed in %llu ms, %d events, %d violations\n",
         (unsigned long long)got, (unsigned long long)(now_ms() - t0), events, v);
  return v ? 1 : 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 5 && strcmp(argv[1], "server") == 0)
    return server(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (argc == 6 && strcmp(argv[1], "client") == 0)
    return client(atoi(argv[2]), strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0),
                  strtoull(argv[5], NULL, 0));
  fprintf(stderr, "usage: %s server PORT THREADS CONNS | client PORT BYTES SEED RATE\n", argv[0]);
  return 2;
}
