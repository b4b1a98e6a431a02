/*
 * bench_loop — many sessions on one event loop per side (see bench_loop.h).
 *
 * Both modes run the same loop code: a session is a tether session of the
 * async API (tether_config_set_event_base) or, with --raw, a libevent
 * bufferevent on a plain TCP socket (TCP_NODELAY, as tether's sockets).
 * Both move bytes through evbuffers and run on a loop made by
 * cli_event_base(), so the comparison is like for like.  Connects are
 * paced: at most CONNECT_WINDOW in flight, as a load client that does not
 * want its SYNs dropped by the server's backlog keeps them.
 */
#include "bench_loop.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <tether/tether.h>

#define CONNECT_WINDOW 128
/* Sessions must all be up within this long. */
#define SETUP_LIMIT_NS (120 * 1000000000ull)
/* Idle: how long after the last connect the measurement starts, so that it
 * sees the sessions' steady state, not their first heartbeats. */
#define IDLE_SETTLE_NS (3 * 1000000000ull)
/* c10k: ping-pong runs this long before the measured window. */
#define C10K_WARMUP_NS (1000000000ull)
/* c10k: the most round trips kept for the percentiles (8 bytes each). */
#define C10K_MAX_SAMPLES (16u << 20)

/* ---- one side's loop ---- */

struct side {
  const char *prog;
  int raw;
  struct event_base *base;
  tether_ctx *ctx; /* tether mode */
};

static int side_open(struct side *sd, const char *prog, int raw) {
  *sd = (struct side){.prog = prog, .raw = raw};
  if (!(sd->base = cli_event_base())) {
    cli_print_error(prog, "event loop", -ENOMEM);
    return -ENOMEM;
  }
  if (raw)
    return 0;
  tether_config *cfg;
  int r = cli_config_new(prog, 0, &cfg);
  if (r < 0)
    return r;
  tether_config_set_event_base(cfg, sd->base);
  r = tether_ctx_new(cfg, &sd->ctx);
  tether_config_free(cfg);
  if (r < 0)
    cli_print_error(prog, "cannot create a context", r);
  return r;
}

static void side_close(struct side *sd) {
  if (sd->ctx)
    tether_ctx_free(sd->ctx);
  if (sd->base)
    event_base_free(sd->base);
}

/* ---- server ---- */

static void tether_echo_read(tether_session *s, void *arg) {
  (void)arg;
  evbuffer_add_buffer(tether_session_output(s), tether_session_input(s));
}

static void tether_echo_event(tether_session *s, tether_event ev, int err, void *arg) {
  (void)err;
  (void)arg;
  if (ev == TETHER_EVENT_EOF)
    (void)tether_shutdown(s);
  else if (ev == TETHER_EVENT_CLOSED || ev == TETHER_EVENT_FAILED ||
           ev == TETHER_EVENT_WRITE_FAILED)
    (void)tether_close(s);
}

static void tether_accepted(tether_listener *l, tether_session *s, void *arg) {
  (void)l;
  (void)arg;
  (void)tether_session_setcb(s, tether_echo_read, NULL, tether_echo_event, NULL);
}

static void raw_echo_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  bufferevent_write_buffer(bev, bufferevent_get_input(bev));
}

static void raw_echo_event(struct bufferevent *bev, short what, void *arg) {
  (void)arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
    bufferevent_free(bev);
}

static void raw_accept(evutil_socket_t lfd, short what, void *arg) {
  struct side *sd = arg;
  (void)what;
  for (int i = 0; i < 64; i++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return; /* EAGAIN; EMFILE and the like: the client's setup fails */
    (void)cli_tcp_nodelay(fd);
    struct bufferevent *bev = bufferevent_socket_new(sd->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
      close(fd);
      continue;
    }
    bufferevent_priority_set(bev, 1);
    bufferevent_setcb(bev, raw_echo_read, NULL, raw_echo_event, NULL);
    bufferevent_enable(bev, EV_READ);
  }
}

int loop_server(const char *prog, int raw, const struct cli_hostport *hp, int ready_fd) {
  struct side sd;
  struct event *accept_ev = NULL;
  tether_listener *l = NULL;
  int lfd = -1, port = -1, r;

  if ((r = side_open(&sd, prog, raw)) < 0)
    goto out;
  if (raw) {
    if ((lfd = cli_tcp_socket(prog, hp, 1)) < 0 || evutil_make_socket_nonblocking(lfd) < 0 ||
        !(accept_ev = event_new(sd.base, lfd, EV_READ | EV_PERSIST, raw_accept, &sd)) ||
        event_add(accept_ev, NULL) < 0)
      goto out;
    port = cli_tcp_port(lfd);
  } else {
    if ((r = tether_listen(sd.ctx, hp->host[0] ? hp->host : NULL, hp->port, &l)) < 0) {
      cli_print_addr_error(prog, "cannot listen on", hp, r);
      goto out;
    }
    (void)tether_listener_set_accept_cb(l, tether_accepted, NULL);
    port = tether_listener_port(l);
  }
  if (ready_fd >= 0) {
    if (write(ready_fd, &port, sizeof(port)) != sizeof(port)) {
      cli_print_error(prog, "cannot report the port", -errno);
      goto out;
    }
    close(ready_fd);
    ready_fd = -1;
  } else {
    fprintf(stderr, "%s: listening on port %d\n", prog, port);
  }
  event_base_dispatch(sd.base);
out:
  if (ready_fd >= 0)
    close(ready_fd);
  if (accept_ev)
    event_free(accept_ev);
  if (lfd >= 0)
    close(lfd);
  side_close(&sd);
  return CLI_EXIT_FAIL;
}

/* ---- client ---- */

struct client;

struct peer {
  struct client *cl;
  tether_session *s;       /* tether mode */
  struct bufferevent *bev; /* raw mode */
  uint64_t sent_ns;        /* c10k: when its byte left (0: none out) */
};

struct client {
  struct side sd;
  const struct loop_bench *b;
  struct addrinfo *ai; /* raw: the server's address */
  struct peer *peers;
  uint64_t started, up, failed;
  int first_err;
  uint64_t setup_ns; /* when the last one came up */
  bool pinging;      /* c10k: every session pings */
  bool measuring;    /* c10k: inside the measured window */
  uint64_t requests; /* c10k: round trips in the window */
  uint64_t *samples;
  size_t n_samples;
  /* Idle: resumes seen (a storm made by hand, ss -K), and from the first
   * suspension to the last resume. */
  uint64_t resumes, first_suspend_ns, last_resume_ns;
};

static void start_connects(struct client *cl);

static void send_ping(struct peer *p) {
  static const char byte = 'x';
  p->sent_ns = cli_now_ns();
  if (p->bev)
    bufferevent_write(p->bev, &byte, 1);
  else
    evbuffer_add(tether_session_output(p->s), &byte, 1);
}

/* The echo of p's byte arrived (its input holds it). */
static void pong(struct peer *p, struct evbuffer *in) {
  struct client *cl = p->cl;
  evbuffer_drain(in, evbuffer_get_length(in));
  if (!p->sent_ns)
    return;
  uint64_t now = cli_now_ns();
  if (cl->measuring) {
    cl->requests++;
    if (cl->n_samples < C10K_MAX_SAMPLES)
      cl->samples[cl->n_samples++] = now - p->sent_ns;
  }
  p->sent_ns = 0;
  if (cl->pinging)
    send_ping(p);
}

static void session_up(struct peer *p) {
  struct client *cl = p->cl;
  if (++cl->up + cl->failed == cl->b->sessions)
    cl->setup_ns = cli_now_ns();
  start_connects(cl);
  if (cl->up + cl->failed == cl->b->sessions)
    event_base_loopbreak(cl->sd.base);
}

static void session_failed(struct client *cl, int err) {
  if (!cl->first_err)
    cl->first_err = err;
  cl->failed++;
  start_connects(cl);
  if (cl->up + cl->failed == cl->b->sessions)
    event_base_loopbreak(cl->sd.base);
}

static void on_tether_read(tether_session *s, void *arg) { pong(arg, tether_session_input(s)); }

static void on_tether_event(tether_session *s, tether_event ev, int err, void *arg) {
  struct peer *p = arg;
  struct client *cl = p->cl;
  (void)s;
  if (ev == TETHER_EVENT_SUSPENDED && !cl->first_suspend_ns)
    cl->first_suspend_ns = cli_now_ns();
  if (ev == TETHER_EVENT_CONNECTED) {
    cl->resumes++;
    cl->last_resume_ns = cli_now_ns();
  }
  if (ev == TETHER_EVENT_FAILED || ev == TETHER_EVENT_WRITE_FAILED) {
    if (!p->cl->first_err)
      p->cl->first_err = err;
    p->cl->failed++;
  }
}

static void tether_connected(tether_session *s, int err, void *arg) {
  struct peer *p = arg;
  if (err < 0) {
    session_failed(p->cl, err);
    return;
  }
  p->s = s;
  (void)tether_session_setcb(s, on_tether_read, NULL, on_tether_event, p);
  session_up(p);
}

static void raw_read_cb(struct bufferevent *bev, void *arg) {
  pong(arg, bufferevent_get_input(bev));
}

static void raw_event_cb(struct bufferevent *bev, short what, void *arg) {
  struct peer *p = arg;
  if (what & BEV_EVENT_CONNECTED) {
    (void)cli_tcp_nodelay(bufferevent_getfd(bev));
    session_up(p);
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    int err = what & BEV_EVENT_EOF ? -ECONNRESET : -EVUTIL_SOCKET_ERROR();
    bufferevent_free(bev);
    p->bev = NULL;
    if (p->cl->up + p->cl->failed < p->cl->b->sessions)
      session_failed(p->cl, err);
    else
      p->cl->failed++;
  }
}

/* Keeps CONNECT_WINDOW connects in flight until all are started. */
static void start_connects(struct client *cl) {
  while (cl->started < cl->b->sessions && cl->started - cl->up - cl->failed < CONNECT_WINDOW) {
    struct peer *p = &cl->peers[cl->started++];
    p->cl = cl;
    int r;
    if (cl->sd.raw) {
      p->bev = bufferevent_socket_new(cl->sd.base, -1, BEV_OPT_CLOSE_ON_FREE);
      if (!p->bev) {
        r = -ENOMEM;
      } else {
        bufferevent_priority_set(p->bev, 1);
        bufferevent_setcb(p->bev, raw_read_cb, NULL, raw_event_cb, p);
        bufferevent_enable(p->bev, EV_READ);
        r = bufferevent_socket_connect(p->bev, cl->ai->ai_addr, (int)cl->ai->ai_addrlen) < 0
                ? -ECONNREFUSED
                : 0;
      }
    } else {
      r = tether_connect_async(cl->sd.ctx, cl->b->peer.host, cl->b->peer.port, tether_connected, p);
    }
    if (r < 0)
      session_failed(cl, r);
  }
}

static void on_timer_break(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  event_base_loopbreak(arg);
}

/* Runs the loop for ns (or until something breaks it). */
static void run_for(struct client *cl, uint64_t ns) {
  struct event *t = evtimer_new(cl->sd.base, on_timer_break, cl->sd.base);
  struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000),
                       .tv_usec = (suseconds_t)(ns % 1000000000 / 1000)};
  if (t && evtimer_add(t, &tv) == 0)
    event_base_dispatch(cl->sd.base);
  if (t)
    event_free(t);
}

/* Opens every session: 0, or the first failure (reported). */
static int client_open(struct client *cl, const char *prog, const struct loop_bench *b) {
  int r;
  *cl = (struct client){.b = b};
  if ((r = side_open(&cl->sd, prog, b->raw)) < 0)
    return r;
  if (!(cl->peers = calloc(b->sessions, sizeof(*cl->peers))))
    return -ENOMEM;
  if (b->raw) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (getaddrinfo(b->peer.host, b->peer.port, &hints, &cl->ai) != 0) {
      cli_print_addr_error(prog, "cannot resolve", &b->peer, -ENOENT);
      return -ENOENT;
    }
  }
  uint64_t t0 = cli_now_ns();
  start_connects(cl);
  if (cl->up + cl->failed < b->sessions)
    run_for(cl, SETUP_LIMIT_NS);
  if (cl->failed || cl->up < b->sessions) {
    r = cl->first_err ? cl->first_err : -ETIMEDOUT;
    fprintf(stderr, "%s: %llu of %llu sessions set up: %s\n", prog, (unsigned long long)cl->up,
            (unsigned long long)b->sessions, tether_strerror(r));
    return r;
  }
  cl->setup_ns -= t0;
  return 0;
}

static void client_close(struct client *cl) {
  for (uint64_t i = 0; cl->peers && i < cl->started; i++) {
    if (cl->peers[i].s)
      (void)tether_close(cl->peers[i].s);
    if (cl->peers[i].bev)
      bufferevent_free(cl->peers[i].bev);
  }
  free(cl->peers);
  free(cl->samples);
  if (cl->ai)
    freeaddrinfo(cl->ai);
  side_close(&cl->sd);
}

static double setups_per_s(const struct client *cl) {
  return (double)cl->b->sessions / ((double)cl->setup_ns / 1e9);
}

int loop_idle(const char *prog, const struct loop_bench *b, double m[7]) {
  struct client cl;
  double rss0 = cli_rss_bytes(getpid());
  double srss0 = b->server > 0 ? cli_rss_bytes(b->server) : 0;
  int r = client_open(&cl, prog, b);
  if (r < 0)
    goto out;
  m[0] = setups_per_s(&cl);
  run_for(&cl, IDLE_SETTLE_NS);
  struct cli_cpu c0 = cli_cpu_self(),
                 s0 = b->server > 0 ? cli_cpu_of(b->server) : (struct cli_cpu){0, 0};
  uint64_t t0 = cli_now_ns();
  run_for(&cl, b->seconds * 1000000000ull);
  double wall = (double)(cli_now_ns() - t0) / 1e9;
  struct cli_cpu c1 = cli_cpu_self(),
                 s1 = b->server > 0 ? cli_cpu_of(b->server) : (struct cli_cpu){0, 0};
  m[1] = 100 * (c1.user + c1.sys - c0.user - c0.sys) / wall;
  m[2] = 100 * (s1.user + s1.sys - s0.user - s0.sys) / wall;
  m[3] = (cli_rss_bytes(getpid()) - rss0) / (double)b->sessions;
  m[4] = b->server > 0 ? (cli_rss_bytes(b->server) - srss0) / (double)b->sessions : 0;
  m[5] = (double)cl.resumes;
  m[6] = cl.resumes ? (double)(cl.last_resume_ns - cl.first_suspend_ns) / 1e6 : 0;
  uint64_t down = 0; /* every session must be up at the end (tether) */
  for (uint64_t i = 0; i < cl.started; i++)
    down += cl.peers[i].s && tether_session_state(cl.peers[i].s) != TETHER_STATE_CONNECTED;
  if (down && !cl.failed) {
    fprintf(stderr, "%s: %llu sessions not connected at the end\n", prog, (unsigned long long)down);
    r = -EIO;
  }
  if (cl.failed) {
    fprintf(stderr, "%s: %llu sessions failed while idle: %s\n", prog,
            (unsigned long long)cl.failed, tether_strerror(cl.first_err));
    r = cl.first_err ? cl.first_err : -EIO;
  }
out:
  client_close(&cl);
  return r;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int loop_c10k(const char *prog, const struct loop_bench *b, double m[4]) {
  struct client cl;
  int r = client_open(&cl, prog, b);
  if (r < 0)
    goto out;
  m[0] = setups_per_s(&cl);
  if (!(cl.samples = malloc(C10K_MAX_SAMPLES * sizeof(*cl.samples)))) {
    r = -ENOMEM;
    goto out;
  }
  cl.pinging = true;
  for (uint64_t i = 0; i < b->sessions; i++)
    send_ping(&cl.peers[i]);
  run_for(&cl, C10K_WARMUP_NS);
  cl.measuring = true;
  uint64_t t0 = cli_now_ns();
  run_for(&cl, b->seconds * 1000000000ull);
  double wall = (double)(cli_now_ns() - t0) / 1e9;
  cl.measuring = false;
  cl.pinging = false;
  m[1] = (double)cl.requests / wall;
  qsort(cl.samples, cl.n_samples, sizeof(*cl.samples), cmp_u64);
  m[2] = cl.n_samples ? (double)cl.samples[cl.n_samples / 2] / 1e3 : 0;
  m[3] = cl.n_samples ? (double)cl.samples[cl.n_samples * 99 / 100] / 1e3 : 0;
  if (cl.failed) {
    fprintf(stderr, "%s: %llu sessions failed: %s\n", prog, (unsigned long long)cl.failed,
            tether_strerror(cl.first_err));
    r = cl.first_err ? cl.first_err : -EIO;
  }
out:
  client_close(&cl);
  return r;
}
