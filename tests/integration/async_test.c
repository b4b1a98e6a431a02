/* Sessions on the application's event loop (tether_config_set_event_base):
 * a server context and a client context on one libevent loop, driven by the
 * test, over loopback in a network namespace of the test's own (so that
 * ss -K kills only its connections).
 *
 * echo         sessions set up with tether_connect_async and an accept
 *              callback echo pseudo-random bytes byte-exact, end with
 *              shutdowns (EOF, then CLOSED on both sides), and hold one
 *              descriptor each: the TCP socket
 * resume       every connection is killed mid-stream (ss -K): each session
 *              reports SUSPENDED then CONNECTED and the echo stays
 *              byte-exact
 * backpressure a server that stops reading holds at most its input high
 *              watermark; the client's output waits in its buffer; all of
 *              it arrives once the server reads again
 * close        bytes in the output buffer at tether_close() are delivered,
 *              then the peer reads EOF and sees CLOSED
 * failed       a server that is gone for good: the client's session reports
 *              FAILED with TETHER_EGIVEUP after give_up_s
 * refused      a connect to a port nobody listens on calls back with
 *              -ECONNREFUSED; the async calls refuse a threaded context */
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include <tether/tether.h>

#define MAX_SESSIONS 200

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The byte at offset i of stream k. */
static uint8_t pattern(unsigned k, uint64_t i) {
  uint64_t x = (i / 8) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(k + 1) * 0xc2b2ae3d27d4eb4full;
  x ^= x >> 29;
  return (uint8_t)(x >> (8 * (i % 8)));
}

/* ---- the server: echo, or hold (does not read) ---- */

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  int port;
  bool hold;     /* sessions leave their input unread */
  size_t rd_high; /* their input high watermark (0: the default) */
  tether_session *sessions[MAX_SESSIONS];
  unsigned n;
  unsigned eofs, closed, failed;
  size_t max_input; /* the most any input buffer held */
};

static void srv_read(tether_session *s, void *arg) {
  struct server *sv = arg;
  struct evbuffer *in = tether_session_input(s);
  if (evbuffer_get_length(in) > sv->max_input)
    sv->max_input = evbuffer_get_length(in);
  if (!sv->hold)
    assert_int_equal(evbuffer_add_buffer(tether_session_output(s), in), 0);
}

static void srv_event(tether_session *s, tether_event ev, int err, void *arg) {
  struct server *sv = arg;
  if (ev == TETHER_EVENT_EOF) {
    sv->eofs++;
    assert_int_equal(tether_shutdown(s), 0); /* after the echo still buffered */
  } else if (ev == TETHER_EVENT_CLOSED) {
    sv->closed++;
  } else if (ev == TETHER_EVENT_FAILED) {
    sv->failed++;
    printf("# server session failed: %s\n", tether_strerror(err));
  }
}

static void srv_accept(tether_listener *l, tether_session *s, void *arg) {
  struct server *sv = arg;
  assert_true(sv->n < MAX_SESSIONS);
  sv->sessions[sv->n++] = s;
  assert_int_equal(tether_session_setcb(s, srv_read, NULL, srv_event, sv), 0);
  if (sv->rd_high)
    assert_int_equal(tether_session_setwatermark(s, TETHER_EV_READ, 0, sv->rd_high), 0);
}

/* ---- the client: streams, checks the echo ---- */

struct stream {
  struct client *cl;
  unsigned k;
  tether_session *s;
  uint64_t sent, received;
  bool shut, eof, closed, failed;
  int fail_err;
  unsigned suspended, resumed;
};

struct client {
  tether_ctx *ctx;
  struct stream st[MAX_SESSIONS];
  unsigned n, connected, connect_errors;
  int last_connect_err;
  uint64_t bytes; /* each stream sends this many, then shuts down */
  bool shutdown_at_end;
};

/* Tops the output buffer up to 256 KiB, until the stream is all written. */
static void cl_fill(struct stream *t) {
  struct evbuffer *out = tether_session_output(t->s);
  uint8_t chunk[16384];
  while (t->sent < t->cl->bytes && evbuffer_get_length(out) < 256 * 1024) {
    size_t n = sizeof(chunk);
    if (t->cl->bytes - t->sent < n)
      n = (size_t)(t->cl->bytes - t->sent);
    for (size_t i = 0; i < n; i++)
      chunk[i] = pattern(t->k, t->sent + i);
    assert_int_equal(evbuffer_add(out, chunk, n), 0);
    t->sent += n;
  }
  if (t->sent == t->cl->bytes && t->cl->shutdown_at_end && !t->shut) {
    t->shut = true;
    assert_int_equal(tether_shutdown(t->s), 0); /* after what is buffered */
  }
}

static void cl_read(tether_session *s, void *arg) {
  struct stream *t = arg;
  struct evbuffer *in = tether_session_input(s);
  uint8_t buf[16384];
  int n;
  while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0) {
    for (int i = 0; i < n; i++)
      if (buf[i] != pattern(t->k, t->received + (uint64_t)i))
        fail_msg("stream %u: byte %llu differs", t->k,
                 (unsigned long long)(t->received + (uint64_t)i));
    t->received += (uint64_t)n;
  }
}

static void cl_write(tether_session *s, void *arg) {
  (void)s;
  cl_fill(arg);
}

static void cl_event(tether_session *s, tether_event ev, int err, void *arg) {
  struct stream *t = arg;
  (void)s;
  switch (ev) {
  case TETHER_EVENT_SUSPENDED: t->suspended++; break;
  case TETHER_EVENT_CONNECTED: t->resumed++; break;
  case TETHER_EVENT_EOF: t->eof = true; break;
  case TETHER_EVENT_CLOSED: t->closed = true; break;
  case TETHER_EVENT_WRITE_FAILED: fail_msg("stream %u: write failed: %s", t->k, tether_strerror(err));
  case TETHER_EVENT_FAILED:
    t->failed = true;
    t->fail_err = err;
    break;
  }
}

static void cl_connected(tether_session *s, int err, void *arg) {
  struct stream *t = arg;
  if (err < 0) {
    t->cl->connect_errors++;
    t->cl->last_connect_err = err;
    return;
  }
  t->s = s;
  t->cl->connected++;
  assert_int_equal(tether_session_setcb(s, cl_read, cl_write, cl_event, t), 0);
  /* Refill whenever the output drains below half. */
  assert_int_equal(tether_session_setwatermark(s, TETHER_EV_WRITE, 128 * 1024, 0), 0);
  cl_fill(t);
}

/* ---- the loop ---- */

struct fixture {
  struct event_base *base;
  struct server sv;
  struct client cl;
};

static void on_tick(evutil_socket_t fd, short what, void *arg) {}

/* Runs the loop until done(f) or ms pass; whether done. */
static bool run_until(struct fixture *f, bool (*done)(struct fixture *), uint64_t ms) {
  struct event *tick = evtimer_new(f->base, on_tick, NULL);
  struct timeval tv = {0, 10000};
  uint64_t end = now_ms() + ms;
  bool ok;
  assert_non_null(tick);
  while (!(ok = done(f)) && now_ms() < end) {
    evtimer_add(tick, &tv);
    assert_true(event_base_loop(f->base, EVLOOP_ONCE) >= 0);
  }
  event_free(tick);
  return ok;
}

static tether_config *config(struct event_base *base) {
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  tether_config_set_event_base(cfg, base);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, 200), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 1000), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 100), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_LINGER_S, 2), 0);
  return cfg;
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  assert_non_null(f->base = event_base_new());
  tether_config *cfg = config(f->base);
  assert_int_equal(tether_ctx_new(cfg, &f->sv.ctx), 0);
  assert_int_equal(tether_ctx_new(cfg, &f->cl.ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(f->sv.ctx, "127.0.0.1", "0", &f->sv.l), 0);
  f->sv.port = tether_listener_port(f->sv.l);
  assert_int_equal(tether_listener_set_accept_cb(f->sv.l, srv_accept, &f->sv), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  if (f->cl.ctx)
    tether_ctx_free(f->cl.ctx);
  if (f->sv.ctx)
    tether_ctx_free(f->sv.ctx);
  event_base_free(f->base);
  free(f);
  return 0;
}

static void start_streams(struct fixture *f, unsigned n, uint64_t bytes, bool shut) {
  char port[16];
  snprintf(port, sizeof(port), "%d", f->sv.port);
  f->cl.n = n;
  f->cl.bytes = bytes;
  f->cl.shutdown_at_end = shut;
  for (unsigned k = 0; k < n; k++) {
    f->cl.st[k] = (struct stream){.cl = &f->cl, .k = k};
    assert_int_equal(tether_connect_async(f->cl.ctx, "127.0.0.1", port, cl_connected, &f->cl.st[k]),
                     0);
  }
}

static bool all_connected(struct fixture *f) { return f->cl.connected + f->cl.connect_errors == f->cl.n; }

static bool all_echoed(struct fixture *f) {
  for (unsigned k = 0; k < f->cl.n; k++)
    if (f->cl.st[k].received < f->cl.bytes || f->cl.st[k].failed)
      return f->cl.st[k].failed;
  return true;
}

static bool all_closed(struct fixture *f) {
  for (unsigned k = 0; k < f->cl.n; k++)
    if (!f->cl.st[k].closed && !f->cl.st[k].failed)
      return false;
  return f->sv.closed + f->sv.failed == f->cl.n;
}

static unsigned open_fds(void) {
  unsigned n = 0;
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

static void test_echo(void **state) {
  struct fixture *f = *state;
  const unsigned n = 100;
  unsigned fds0 = open_fds();
  start_streams(f, n, 1u << 20, true);
  assert_true(run_until(f, all_connected, 20000));
  assert_int_equal(f->cl.connect_errors, 0);
  assert_true(run_until(f, all_echoed, 60000));
  /* Both sides' sessions in this process: one socket each, plus the
   * contexts' side channels and their first sockets (a handful). */
  unsigned fds = open_fds();
  printf("# %u sessions: %u descriptors more than before\n", n, fds - fds0);
  assert_true(fds - fds0 <= 2 * n + 8);
  assert_true(run_until(f, all_closed, 20000));
  for (unsigned k = 0; k < n; k++) {
    struct stream *t = &f->cl.st[k];
    assert_false(t->failed);
    assert_true(t->eof);
    assert_int_equal(t->received, f->cl.bytes);
    assert_int_equal(t->suspended, 0);
  }
  assert_int_equal(f->sv.eofs, n);
  assert_int_equal(f->sv.closed, n);
  assert_int_equal(f->sv.failed, 0);
  for (unsigned k = 0; k < n; k++) {
    assert_int_equal(tether_close(f->cl.st[k].s), 0);
    assert_int_equal(tether_close(f->sv.sessions[k]), 0);
  }
}

static bool half_echoed(struct fixture *f) {
  for (unsigned k = 0; k < f->cl.n; k++)
    if (f->cl.st[k].received < f->cl.bytes / 2)
      return false;
  return true;
}

static bool all_resumed(struct fixture *f) {
  for (unsigned k = 0; k < f->cl.n; k++)
    if (f->cl.st[k].resumed == 0)
      return false;
  return true;
}

static void test_resume(void **state) {
  struct fixture *f = *state;
  const unsigned n = 20;
  char cmd[128];
  start_streams(f, n, 8u << 20, true);
  assert_true(run_until(f, all_connected, 20000));
  assert_true(run_until(f, half_echoed, 60000));
  snprintf(cmd, sizeof(cmd), "ss -K -H -tn sport = :%d >/dev/null", f->sv.port);
  assert_int_equal(system(cmd), 0);
  assert_true(run_until(f, all_resumed, 20000));
  assert_true(run_until(f, all_echoed, 60000));
  assert_true(run_until(f, all_closed, 20000));
  for (unsigned k = 0; k < n; k++) {
    struct stream *t = &f->cl.st[k];
    assert_false(t->failed);
    assert_int_equal(t->received, f->cl.bytes);
    assert_true(t->suspended >= 1);
    assert_true(t->resumed >= 1);
  }
}

static bool server_full(struct fixture *f) {
  return f->sv.n == 1 && f->sv.max_input >= f->sv.rd_high;
}

static bool output_stuck(struct fixture *f) {
  return f->cl.st[0].s && evbuffer_get_length(tether_session_output(f->cl.st[0].s)) > 0;
}

static void test_backpressure(void **state) {
  struct fixture *f = *state;
  f->sv.hold = true;
  f->sv.rd_high = 64 * 1024;
  start_streams(f, 1, 64u << 20, true);
  assert_true(run_until(f, all_connected, 20000));
  assert_true(run_until(f, server_full, 20000));
  /* Give the loop time to move whatever it would: the server reads no more
   * than its high watermark (one read may end past it by nothing: reads are
   * sized to the room left), the client's output waits. */
  uint64_t until = now_ms() + 500;
  while (now_ms() < until) {
    struct timeval tv = {0, 20000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
  }
  tether_session *s = f->sv.sessions[0];
  size_t held = evbuffer_get_length(tether_session_input(s));
  printf("# server holds %zu bytes; client sent %llu of %llu\n", held,
         (unsigned long long)f->cl.st[0].sent, (unsigned long long)f->cl.bytes);
  assert_true(held <= f->sv.rd_high);
  assert_true(f->cl.st[0].sent < f->cl.bytes); /* kept back: the buffers are full */
  assert_true(output_stuck(f));
  /* Reading again, and echoing: everything arrives. */
  f->sv.hold = false;
  assert_int_equal(tether_session_enable(s, TETHER_EV_READ), 0);
  srv_read(s, &f->sv);
  assert_true(run_until(f, all_echoed, 60000));
  assert_true(run_until(f, all_closed, 20000));
  assert_false(f->cl.st[0].failed);
  assert_true(f->sv.max_input <= f->sv.rd_high);
}

static bool server_closed(struct fixture *f) { return f->sv.closed == 1; }

static void test_close(void **state) {
  struct fixture *f = *state;
  start_streams(f, 1, 0, false);
  assert_true(run_until(f, all_connected, 20000));
  /* 8 MiB in the output buffer, then close at once: all of it arrives. */
  tether_session *s = f->cl.st[0].s;
  struct evbuffer *out = tether_session_output(s);
  uint8_t chunk[65536];
  for (uint64_t off = 0; off < (8u << 20); off += sizeof(chunk)) {
    for (size_t i = 0; i < sizeof(chunk); i++)
      chunk[i] = pattern(7, off + i);
    assert_int_equal(evbuffer_add(out, chunk, sizeof(chunk)), 0);
  }
  f->sv.hold = false;
  assert_int_equal(tether_close(s), 0);
  f->cl.st[0].s = NULL;
  assert_true(run_until(f, server_closed, 30000));
  assert_int_equal(f->sv.eofs, 1);
  assert_int_equal(f->sv.failed, 0);
  /* The server echoed it all back into a closed session: dropped there. */
}

static bool client_failed(struct fixture *f) { return f->cl.st[0].failed; }

static void test_failed(void **state) {
  struct fixture *f = *state;
  start_streams(f, 1, 1024, false);
  assert_true(run_until(f, all_connected, 20000));
  assert_true(run_until(f, all_echoed, 20000));
  /* The server is gone for good (its context dropped, its port closed). */
  tether_ctx_free(f->sv.ctx);
  f->sv.ctx = NULL;
  uint64_t t0 = now_ms();
  assert_true(run_until(f, client_failed, 15000));
  printf("# failed after %llu ms: %s\n", (unsigned long long)(now_ms() - t0),
         tether_strerror(f->cl.st[0].fail_err));
  assert_int_equal(f->cl.st[0].fail_err, TETHER_EGIVEUP);
  assert_true(f->cl.st[0].suspended >= 1);
  assert_int_equal(tether_close(f->cl.st[0].s), 0);
}

static bool connect_answered(struct fixture *f) { return f->cl.connect_errors + f->cl.connected > 0; }

static void test_refused(void **state) {
  struct fixture *f = *state;
  f->cl.n = 1;
  f->cl.st[0] = (struct stream){.cl = &f->cl};
  assert_int_equal(tether_connect_async(f->cl.ctx, "127.0.0.1", "1", cl_connected, &f->cl.st[0]), 0);
  assert_true(run_until(f, connect_answered, 10000));
  assert_int_equal(f->cl.connected, 0);
  assert_int_equal(f->cl.last_connect_err, -ECONNREFUSED);
  /* The async calls belong to contexts on the application's loop. */
  tether_ctx *threaded;
  tether_listener *l;
  assert_int_equal(tether_ctx_new(NULL, &threaded), 0);
  assert_int_equal(tether_connect_async(threaded, "127.0.0.1", "1", cl_connected, &f->cl.st[0]),
                   -EINVAL);
  assert_int_equal(tether_listen(threaded, "127.0.0.1", "0", &l), 0);
  assert_int_equal(tether_listener_set_accept_cb(l, srv_accept, &f->sv), -EINVAL);
  tether_ctx_free(threaded);
}

static int setup_failed(void **state) {
  setup(state);
  struct fixture *f = *state;
  /* A client that gives up after 2 s. */
  tether_ctx_free(f->cl.ctx);
  tether_config *cfg = config(f->base);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_GIVE_UP_S, 2), 0);
  assert_int_equal(tether_ctx_new(cfg, &f->cl.ctx), 0);
  tether_config_free(cfg);
  return 0;
}

static bool own_netns(void) {
  if (unshare(CLONE_NEWNET) < 0)
    return false;
  return system("ip link set lo up") == 0;
}

int main(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (!own_netns()) {
    printf("# skipped: needs root for a network namespace of its own\n");
    return 77;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
      cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed, setup_failed, teardown),
      cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
