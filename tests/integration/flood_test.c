/* The accepting side under floods (tether(7), "Handshake slots"), over
 * loopback in one process, with hand-driven clients (hand.h) from several
 * 127.x addresses:
 *
 *   - a flood of ClientHellos that never finish fills every handshake slot:
 *     a new client with the pre-shared key still connects, and an
 *     established session whose connection is killed still resumes;
 *   - a slowloris (connections that send a byte a second) from the very
 *     host of a legitimate client: the client connects, and no slowloris
 *     connection lives past connect_timeout_ms;
 *   - one host opens 2,000 sessions before the server accepts any: the
 *     accept queue takes its bound's worth (1024 by default), the rest wait
 *     -- none is refused -- and all are accepted in the end.
 *
 * Prints the figures it measures. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
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

#include "hand.h"

#define PSK "flood-test key: 32 bytes long..."
#define MAX_SERVED 64

/* ---- an echo server on its own thread ---- */

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  int port;
  char port_s[16];
  pthread_t thread;
  volatile int stop;
};

/* Accepts sessions and echoes what they send, until stopped. */
static void *serve(void *arg) {
  struct server *sv = arg;
  tether_session *ss[MAX_SERVED];
  int n = 0;
  char buf[256];
  assert_int_equal(tether_listener_set_nonblocking(sv->l, 1), 0);
  while (!sv->stop) {
    struct pollfd p[MAX_SERVED + 1];
    p[0] = (struct pollfd){.fd = tether_listener_fd(sv->l), .events = POLLIN};
    for (int i = 0; i < n; i++)
      p[i + 1] = (struct pollfd){.fd = tether_fd(ss[i]), .events = POLLIN};
    (void)poll(p, (nfds_t)n + 1, 50);
    tether_session *s;
    if (n < MAX_SERVED && tether_accept(sv->l, &s) == 0) {
      (void)tether_set_nonblocking(s, 1);
      ss[n++] = s;
    }
    for (int i = 0; i < n; i++) {
      ssize_t r = tether_read(ss[i], buf, sizeof(buf));
      if (r > 0)
        (void)tether_write(ss[i], buf, (size_t)r);
    }
  }
  for (int i = 0; i < n; i++)
    tether_close(ss[i]);
  return NULL;
}

static void server_start(struct server *sv, const char *psk, int connect_timeout_ms,
                         bool serving) {
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_load_env(cfg), 0); /* TETHER_LOG, say */
  if (psk)
    assert_int_equal(tether_config_set_psk(cfg, psk, strlen(psk)), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_CONNECT_TIMEOUT_MS, connect_timeout_ms), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, 200), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 2000), 0);
  memset(sv, 0, sizeof(*sv));
  assert_int_equal(tether_ctx_new(cfg, &sv->ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sv->ctx, "127.0.0.1", "0", &sv->l), 0);
  sv->port = tether_listener_port(sv->l);
  snprintf(sv->port_s, sizeof(sv->port_s), "%d", sv->port);
  if (serving)
    assert_int_equal(pthread_create(&sv->thread, NULL, serve, sv), 0);
}

static void server_stop(struct server *sv, bool serving) {
  sv->stop = 1;
  if (serving)
    pthread_join(sv->thread, NULL);
  tether_listener_close(sv->l);
  tether_ctx_free(sv->ctx);
}

static tether_ctx *client_ctx(const char *psk) {
  tether_ctx *ctx;
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  assert_int_equal(tether_config_load_env(cfg), 0); /* TETHER_LOG, say */
  if (psk)
    assert_int_equal(tether_config_set_psk(cfg, psk, strlen(psk)), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, 200), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 2000), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 50), 0);
  assert_int_equal(tether_ctx_new(cfg, &ctx), 0);
  tether_config_free(cfg);
  return ctx;
}

/* One byte there and back through an echoing server, within ms (the
 * session may be suspended meanwhile). */
static bool echoes(tether_session *s, char c, int ms) {
  char back = 0;
  bool sent = false;
  uint64_t end = hand_now_ms() + (uint64_t)ms;
  (void)tether_set_nonblocking(s, 1);
  while (back != c && hand_now_ms() < end) {
    struct pollfd p = {.fd = tether_fd(s), .events = sent ? POLLIN : POLLOUT};
    (void)poll(&p, 1, 50);
    ssize_t r = sent ? tether_read(s, &back, 1) : tether_write(s, &c, 1);
    if (r == 1)
      sent = true;
    else if (r != -EAGAIN && r != -EINTR)
      break;
  }
  (void)tether_set_nonblocking(s, 0);
  return back == c;
}

/* A ClientHello frame (preface included) with a valid key. */
static size_t hello_frame(uint8_t *out, size_t cap) {
  uint8_t nonce[NONCE_LEN];
  struct x25519_key *k = x25519_new();
  assert_non_null(k);
  assert_int_equal(crypto_random(nonce, NONCE_LEN), 0);
  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  ch.x25519_pub = (ProtobufCBinaryData){KEY_LEN, (uint8_t *)x25519_pub(k)};
  ch.nonce = (ProtobufCBinaryData){NONCE_LEN, nonce};
  ch.rcvbuf_max = 65536;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  ssize_t n = hs_encode(&m, true, out, cap);
  assert_true(n > 0);
  x25519_free(k);
  return (size_t)n;
}

static void raise_nofile(rlim_t need) {
  struct rlimit r;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &r), 0);
  if (r.rlim_max != RLIM_INFINITY && r.rlim_max < need)
    skip();
  r.rlim_cur = r.rlim_max;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &r), 0);
}

/* ---- a flood of ClientHellos that never finish ---- */

enum { FLOOD_HOSTS = 8, FLOOD_PER_HOST = 140 };

/* Kills the TCP connection under s (connected: its fd is the socket). */
static void kill_transport(tether_session *s) {
  struct sockaddr_in me;
  socklen_t len = sizeof(me);
  char cmd[128];
  assert_int_equal(tether_session_state(s), TETHER_STATE_CONNECTED);
  assert_int_equal(getsockname(tether_fd(s), (struct sockaddr *)&me, &len), 0);
  snprintf(cmd, sizeof(cmd), "ss -K src 127.0.0.1 sport = :%d >/dev/null 2>&1",
           ntohs(me.sin_port));
  assert_int_equal(system(cmd), 0);
}

static void test_hello_flood(void **state) {
  (void)state;
  enum { N = FLOOD_HOSTS * FLOOD_PER_HOST };
  struct server sv;
  tether_session *old = NULL, *fresh = NULL;
  uint8_t hello[512];
  int *flood = calloc(N, sizeof(int));
  assert_non_null(flood);
  if (geteuid() != 0)
    skip(); /* ss -K */
  raise_nofile(4 * N);
  /* Flooders hold their slots up to 20 s unless evicted. */
  server_start(&sv, PSK, 20000, true);
  tether_ctx *cctx = client_ctx(PSK);
  assert_int_equal(tether_connect(cctx, "127.0.0.1", sv.port_s, &old), 0);
  assert_true(echoes(old, 'a', 5000));

  /* 1120 ClientHellos from 127.0.0.2-9, never followed by a ClientFinish. */
  size_t hn = hello_frame(hello, sizeof(hello));
  for (int i = 0; i < N; i++) {
    char src[32];
    snprintf(src, sizeof(src), "127.0.0.%d", 2 + i % FLOOD_HOSTS);
    flood[i] = hand_dial(sv.port, src);
    hand_send_all(flood[i], hello, hn);
  }
  /* Until the server has answered a table's worth of them. */
  int answered = 0;
  uint64_t end = hand_now_ms() + 10000;
  while (answered < 1024 && hand_now_ms() < end) {
    answered = 0;
    for (int i = 0; i < N; i++) {
      struct pollfd p = {.fd = flood[i], .events = POLLIN};
      answered += poll(&p, 1, 0) == 1;
    }
  }
  assert_true(answered >= 1024);

  /* A new client with the key gets through. */
  uint64_t t0 = hand_now_ms();
  int rc = tether_connect(cctx, "127.0.0.1", sv.port_s, &fresh);
  uint64_t connect_ms = hand_now_ms() - t0;
  printf("flood of %d ClientHellos: a new client's connect: %s after %llu ms\n", N,
         rc == 0 ? "ok" : tether_err_name(rc), (unsigned long long)connect_ms);
  assert_int_equal(rc, 0);
  assert_true(echoes(fresh, 'b', 5000));

  /* An established session whose connection dies resumes. */
  tether_stats st;
  assert_true(echoes(old, 'c', 5000));
  assert_int_equal(tether_session_stats(old, &st), 0);
  uint64_t before = st.reconnects;
  t0 = hand_now_ms();
  kill_transport(old);
  bool resumed = echoes(old, 'd', 8000);
  uint64_t resume_ms = hand_now_ms() - t0;
  assert_int_equal(tether_session_stats(old, &st), 0);
  printf("flood of %d ClientHellos: an established session %s (%llu reconnects) after %llu ms\n",
         N, resumed ? "resumed" : "did not resume", (unsigned long long)st.reconnects,
         (unsigned long long)resume_ms);
  assert_true(resumed);
  assert_true(st.reconnects > before);

  tether_close(fresh);
  tether_close(old);
  tether_ctx_free(cctx);
  for (int i = 0; i < N; i++)
    close(flood[i]);
  free(flood);
  server_stop(&sv, true);
}

/* ---- slowloris ---- */

enum { SLOW = 1100, SLOW_TIMEOUT_MS = 3000 };

struct drip {
  int *fds;
  const uint8_t *bytes;
  size_t len;
  volatile int stop;
};

/* One more byte of a ClientHello on every connection, every second. */
static void *drip(void *arg) {
  struct drip *d = arg;
  for (size_t k = 1; !d->stop && k < d->len; k++) {
    for (int s = 0; s < 10 && !d->stop; s++)
      usleep(100 * 1000);
    for (int i = 0; i < SLOW; i++)
      (void)send(d->fds[i], d->bytes + k, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  return NULL;
}

static void test_slowloris(void **state) {
  (void)state;
  struct server sv;
  uint8_t hello[512];
  struct drip d = {.fds = calloc(SLOW, sizeof(int)), .bytes = hello};
  pthread_t dripper;
  assert_non_null(d.fds);
  raise_nofile(4 * SLOW);
  server_start(&sv, NULL, SLOW_TIMEOUT_MS, true);
  d.len = hello_frame(hello, sizeof(hello));
  /* From 127.0.0.1, the legitimate client's own address. */
  for (int i = 0; i < SLOW; i++) {
    d.fds[i] = hand_dial(sv.port, "127.0.0.1");
    hand_send_all(d.fds[i], hello, 1);
  }
  uint64_t dialled = hand_now_ms();
  assert_int_equal(pthread_create(&dripper, NULL, drip, &d), 0);
  usleep(200 * 1000); /* the engine takes them in */

  tether_ctx *cctx = client_ctx(NULL);
  for (int k = 0; k < 3; k++) {
    tether_session *s = NULL;
    uint64_t t0 = hand_now_ms();
    int rc = tether_connect(cctx, "127.0.0.1", sv.port_s, &s);
    printf("slowloris of %d connections: connect %d: %s after %llu ms\n", SLOW, k,
           rc == 0 ? "ok" : tether_err_name(rc), (unsigned long long)(hand_now_ms() - t0));
    assert_int_equal(rc, 0);
    assert_true(echoes(s, 'x', 5000));
    tether_close(s);
  }

  /* None outlives connect_timeout_ms (counted from when it could have
   * been accepted at the latest: a stall period after the dialling). */
  int open = 0;
  uint64_t deadline = dialled + SLOW_TIMEOUT_MS + 1000 + 3000; /* + stall + margin */
  for (int i = 0; i < SLOW; i++) {
    uint64_t now = hand_now_ms();
    open += !hand_closed_within(d.fds[i], now < deadline ? (int)(deadline - now) : 0);
  }
  uint64_t all_closed_ms = hand_now_ms() - dialled;
  d.stop = 1;
  pthread_join(dripper, NULL);
  printf("slowloris: %d of %d connections still open %llu ms after they were dialled\n", open,
         SLOW, (unsigned long long)all_closed_ms);
  assert_int_equal(open, 0);
  tether_ctx_free(cctx);
  for (int i = 0; i < SLOW; i++)
    close(d.fds[i]);
  free(d.fds);
  server_stop(&sv, true);
}

/* ---- one host's burst before any accept ---- */

enum { BURST = 2000, BACKLOG = 1024, BATCH = 256 };

enum { H_WAITING, H_ANSWERED, H_CLOSED };

/* Takes the ServerHellos that came: each is answered at once with the
 * ClientFinish and a byte.  Returns how many are answered in all. */
static int service(struct hand *h, int *st, int n, int *closed) {
  int answered = 0;
  for (int i = 0; i < n; i++) {
    if (st[i] == H_WAITING) {
      int rc = hand_poll_server_hello(&h[i], PSK);
      if (rc > 0) {
        uint8_t frame[128];
        size_t len = hand_finish_frame(&h[i], false, frame, sizeof(frame));
        frame[len++] = 'x';
        hand_send_all(h[i].fd, frame, len);
        st[i] = H_ANSWERED;
      } else if (rc < 0) {
        st[i] = H_CLOSED;
        ++*closed;
      }
    }
    answered += st[i] == H_ANSWERED;
  }
  return answered;
}

static void test_burst_from_one_host(void **state) {
  (void)state;
  struct server sv;
  struct hand *h = calloc(BURST, sizeof(*h));
  int *st = calloc(BURST, sizeof(int));
  int closed = 0, answered = 0, accepted = 0;
  assert_non_null(h);
  assert_non_null(st);
  raise_nofile(4 * BURST + 1024);
  server_start(&sv, PSK, 20000, false);

  /* Dialled in batches, each answered as its ServerHellos come (as a load
   * generator's engine would): more than a few hundred setups from one
   * host are in progress at times. */
  for (int i = 0; i < BURST; i++) {
    hand_hello_from(&h[i], sv.port, "127.0.0.1");
    if (i % BATCH == BATCH - 1)
      answered = service(h, st, i + 1, &closed);
  }
  uint64_t end = hand_now_ms() + 20000;
  while (answered < BACKLOG && closed == 0 && hand_now_ms() < end) {
    usleep(1000);
    answered = service(h, st, BURST, &closed);
  }
  /* The queue is full: the others wait (no ServerHello, not refused). */
  usleep(500 * 1000);
  answered = service(h, st, BURST, &closed);
  printf("%d setups from one host, none accepted yet: %d answered, %d refused, %d waiting\n",
         BURST, answered, closed, BURST - answered - closed);
  assert_int_equal(closed, 0);
  assert_int_equal(answered, BACKLOG);

  /* Accepting lets the rest through, one for each place freed. */
  assert_int_equal(tether_listener_set_nonblocking(sv.l, 1), 0);
  end = hand_now_ms() + 30000;
  while (accepted < BURST && closed == 0 && hand_now_ms() < end) {
    tether_session *s;
    int rc = tether_accept(sv.l, &s);
    if (rc == -EAGAIN) {
      struct pollfd p = {.fd = tether_listener_fd(sv.l), .events = POLLIN};
      (void)poll(&p, 1, 1);
      (void)service(h, st, BURST, &closed);
      continue;
    }
    assert_int_equal(rc, 0);
    char c = 0;
    assert_int_equal(tether_read(s, &c, 1), 1);
    assert_int_equal(c, 'x');
    tether_close(s);
    accepted++;
  }
  printf("%d setups from one host: %d accepted, %d refused\n", BURST, accepted, closed);
  assert_int_equal(closed, 0);
  assert_int_equal(accepted, BURST);
  for (int i = 0; i < BURST; i++)
    hand_free(&h[i]);
  free(h);
  free(st);
  server_stop(&sv, false);
}

int main(int argc, char **argv) {
  if (argc > 1)
    cmocka_set_test_filter(argv[1]); /* one test, say test_slowloris */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hello_flood),
      cmocka_unit_test(test_slowloris),
      cmocka_unit_test(test_burst_from_one_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
