/* Rejects of a resume (tether(7), "Rejects of a resume"), over real loopback
 * sockets in one process.  The client reaches its server through a proxy
 * run here, which relays, or cuts the connection (reset), or answers the
 * client's ResumeHello itself with a Reject it cannot MAC -- what an
 * attacker on the path could send.
 *
 *   - With a pre-shared key the client ignores forged Rejects, keeps
 *     redialling and resumes once the path is clean again.
 *   - A server that does not know the session (here: another server with
 *     the same key) MACs its Reject{UNKNOWN_SESSION}: the session fails at
 *     once with TETHER_ESESSIONGONE.
 *   - The same Reject from a server with another key is ignored.
 *   - Without a pre-shared key a Reject{UNKNOWN_SESSION} before the
 *     server's challenge cannot be authenticated and ends the session: the
 *     documented limit (setup without a key is unauthenticated anyway).
 *   - A resume attempt's ResumeFinish held back on the path and delivered
 *     after a newer attempt resumed the session (what someone who can
 *     only delay packets can do) is refused as STALE: the live session is
 *     not touched. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tether/tether.h>

#include "wire/handshake.h"

#define PSK "reject-test key: 32 bytes long.."
#define OTHER_PSK "another key, also 32 bytes long."

enum mode { RELAY, FORGE, HOLD };

struct server {
  tether_ctx *ctx;
  tether_listener *l;
  int port;
  pthread_t thread;
  bool serving;
  int stop; /* set by server_stop, read by serve: atomic */
};

struct proxy {
  int lfd, port;
  int wake[2];
  pthread_t thread;
  pthread_mutex_t lock;
  enum mode mode;
  int target;     /* server port relayed to */
  int kill;       /* request: reset the relayed pair */
  int stop;
  int forged;     /* Rejects sent */
  int relayed;    /* connections relayed */
  int a, b;       /* the relayed pair: client side, server side */
  int held_fd;    /* HOLD: the server side of the attempt held back */
  hs_msg *held;   /* ... and the client's ResumeFinish it did not pass on */
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* ---- the server: echoes one session ---- */

static void *serve(void *arg) {
  struct server *sv = arg;
  tether_session *s = NULL;
  if (tether_accept(sv->l, &s) != 0)
    return NULL;
  (void)tether_set_nonblocking(s, 1);
  char buf[256];
  while (!__atomic_load_n(&sv->stop, __ATOMIC_ACQUIRE)) {
    struct pollfd p = {.fd = tether_fd(s), .events = POLLIN};
    (void)poll(&p, 1, 50);
    ssize_t n = tether_read(s, buf, sizeof(buf));
    if (n > 0)
      (void)tether_write(s, buf, (size_t)n);
    else if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR))
      break;
  }
  tether_close(s);
  return NULL;
}

static tether_config *config(const char *psk) {
  tether_config *cfg = tether_config_new();
  assert_non_null(cfg);
  if (psk)
    assert_int_equal(tether_config_set_psk(cfg, psk, strlen(psk)), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_HEARTBEAT_MS, 100), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_SUSPEND_MS, 500), 0);
  assert_int_equal(tether_config_set(cfg, TETHER_OPT_RECONNECT_MAX_MS, 50), 0);
  return cfg;
}

static void server_start(struct server *sv, const char *psk, bool serving) {
  tether_config *cfg = config(psk);
  memset(sv, 0, sizeof(*sv));
  assert_int_equal(tether_ctx_new(cfg, &sv->ctx), 0);
  tether_config_free(cfg);
  assert_int_equal(tether_listen(sv->ctx, "127.0.0.1", "0", &sv->l), 0);
  sv->port = tether_listener_port(sv->l);
  sv->serving = serving;
  if (serving)
    assert_int_equal(pthread_create(&sv->thread, NULL, serve, sv), 0);
}

static void server_stop(struct server *sv) {
  __atomic_store_n(&sv->stop, 1, __ATOMIC_RELEASE);
  tether_listener_close(sv->l); /* ends an accept still waiting */
  if (sv->serving)
    pthread_join(sv->thread, NULL);
  tether_ctx_free(sv->ctx);
}

/* ---- the proxy ---- */

static void reset_close(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  if (fd < 0)
    return;
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* Reads the client's first frame, checks it is a ResumeHello and answers
 * with a Reject{UNKNOWN_SESSION} that carries no MAC. */
static void forge(struct proxy *px, int fd) {
  struct timeval tv = {.tv_sec = 2};
  struct hs_reader rd;
  const char *why = NULL;
  int rc;
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  hs_reader_init(&rd, true);
  while ((rc = hs_reader_step(&rd, fd, &why)) == 0)
    ;
  if (rc == 1) {
    hs_msg *in = hs_decode(rd.buf, rd.have, &why);
    if (in && in->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO) {
      Tether__Wire__Reject rj = TETHER__WIRE__REJECT__INIT;
      hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
      uint8_t out[256];
      rj.code = TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION;
      rj.reason = (char *)"forged";
      m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_REJECT;
      m.reject = &rj;
      ssize_t n = hs_encode(&m, true, out, sizeof(out));
      if (n > 0 && send(fd, out, (size_t)n, MSG_NOSIGNAL) == n) {
        pthread_mutex_lock(&px->lock);
        px->forged++;
        pthread_mutex_unlock(&px->lock);
      }
    }
    hs_free(in);
  }
  close(fd);
}

/* Reads one handshake message (with the preface first if `preface`). */
static hs_msg *read_msg(int fd, bool preface) {
  struct timeval tv = {.tv_sec = 5};
  struct hs_reader rd;
  const char *why = NULL;
  int rc;
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  hs_reader_init(&rd, preface);
  while ((rc = hs_reader_step(&rd, fd, &why)) == 0)
    ;
  return rc == 1 ? hs_decode(rd.buf, rd.have, &why) : NULL;
}

static bool send_msg(int fd, const hs_msg *m, bool preface) {
  uint8_t out[HS_PREFACE_LEN + 4 + HS_FRAME_MAX];
  ssize_t n = hs_encode(m, preface, out, sizeof(out));
  return n > 0 && send(fd, out, (size_t)n, MSG_NOSIGNAL) == n;
}

/* HOLD, once: relays a resume attempt up to the client's ResumeFinish, which
 * it keeps, and resets the client's side (the client gives the attempt up
 * and redials); the server's side stays open, waiting for the ResumeFinish
 * (proxy_release).  Then relays again. */
static void hold(struct proxy *px, int fd) {
  int up = dial(px->target);
  hs_msg *hello = read_msg(fd, true), *challenge = NULL, *finish = NULL;
  bool ok = up >= 0 && hello && hello->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO &&
            send_msg(up, hello, true) && (challenge = read_msg(up, true)) != NULL &&
            send_msg(fd, challenge, true) && (finish = read_msg(fd, false)) != NULL &&
            finish->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH;
  hs_free(hello);
  hs_free(challenge);
  reset_close(fd);
  pthread_mutex_lock(&px->lock);
  if (ok) {
    px->held_fd = up;
    px->held = finish;
    px->mode = RELAY;
  } else {
    reset_close(up);
    hs_free(finish);
  }
  pthread_mutex_unlock(&px->lock);
}

/* Copies what is there from one end of the pair to the other; false once
 * the pair is done. */
static bool pump(int from, int to) {
  char buf[65536];
  ssize_t n = recv(from, buf, sizeof(buf), MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
    return false;
  for (ssize_t off = 0; n > 0 && off < n;) {
    ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
    if (w < 0)
      return false;
    off += w;
  }
  return true;
}

static void *proxy_run(void *arg) {
  struct proxy *px = arg;
  for (;;) {
    pthread_mutex_lock(&px->lock);
    if (px->kill) {
      reset_close(px->a);
      reset_close(px->b);
      px->a = px->b = -1;
      px->kill = 0;
    }
    bool stop = px->stop;
    int a = px->a, b = px->b;
    pthread_mutex_unlock(&px->lock);
    if (stop)
      break;
    struct pollfd p[4] = {{.fd = px->lfd, .events = POLLIN},
                          {.fd = px->wake[0], .events = POLLIN},
                          {.fd = a, .events = POLLIN},
                          {.fd = b, .events = POLLIN}};
    (void)poll(p, a >= 0 ? 4 : 2, 1000);
    if (p[1].revents) {
      char c[16];
      (void)!read(px->wake[0], c, sizeof(c));
    }
    if (a >= 0 && ((p[2].revents && !pump(a, b)) || (p[3].revents && !pump(b, a)))) {
      pthread_mutex_lock(&px->lock);
      reset_close(px->a);
      reset_close(px->b);
      px->a = px->b = -1;
      pthread_mutex_unlock(&px->lock);
      continue;
    }
    if (!p[0].revents)
      continue;
    int fd = accept(px->lfd, NULL, NULL);
    if (fd < 0)
      continue;
    pthread_mutex_lock(&px->lock);
    enum mode mode = px->mode;
    int target = px->target;
    pthread_mutex_unlock(&px->lock);
    if (mode == FORGE) {
      forge(px, fd);
      continue;
    }
    if (mode == HOLD) {
      hold(px, fd);
      continue;
    }
    int up = dial(target);
    pthread_mutex_lock(&px->lock);
    reset_close(px->a); /* one pair at a time */
    reset_close(px->b);
    px->a = fd;
    px->b = up;
    if (up < 0) {
      reset_close(fd);
      px->a = -1;
    } else {
      px->relayed++;
    }
    pthread_mutex_unlock(&px->lock);
  }
  return NULL;
}

static void proxy_start(struct proxy *px, int target) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(a);
  memset(px, 0, sizeof(*px));
  px->a = px->b = px->held_fd = -1;
  px->target = target;
  px->mode = RELAY;
  pthread_mutex_init(&px->lock, NULL);
  assert_int_equal(pipe(px->wake), 0);
  px->lfd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(px->lfd >= 0);
  assert_int_equal(bind(px->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(px->lfd, 16), 0);
  assert_int_equal(getsockname(px->lfd, (struct sockaddr *)&a, &alen), 0);
  px->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&px->thread, NULL, proxy_run, px), 0);
}

/* Changes the proxy's mode and target (target < 0: unchanged); with `cut`
 * also resets the relayed connection. */
static void proxy_set(struct proxy *px, enum mode mode, int target, bool cut) {
  pthread_mutex_lock(&px->lock);
  px->mode = mode;
  if (target >= 0)
    px->target = target;
  if (cut)
    px->kill = 1;
  pthread_mutex_unlock(&px->lock);
  (void)!write(px->wake[1], "x", 1);
}

static int proxy_forged(struct proxy *px) {
  pthread_mutex_lock(&px->lock);
  int n = px->forged;
  pthread_mutex_unlock(&px->lock);
  return n;
}

/* Whether the proxy holds a ResumeFinish back (HOLD). */
static bool proxy_holds(struct proxy *px) {
  pthread_mutex_lock(&px->lock);
  bool held = px->held != NULL;
  pthread_mutex_unlock(&px->lock);
  return held;
}

/* Delivers the ResumeFinish held back to the server, late; returns the
 * server's answer (NULL if none). */
static hs_msg *proxy_release(struct proxy *px) {
  pthread_mutex_lock(&px->lock);
  int fd = px->held_fd;
  hs_msg *finish = px->held;
  px->held_fd = -1;
  px->held = NULL;
  pthread_mutex_unlock(&px->lock);
  assert_non_null(finish);
  assert_true(send_msg(fd, finish, false));
  hs_free(finish);
  hs_msg *answer = read_msg(fd, false);
  reset_close(fd);
  return answer;
}

static void proxy_stop(struct proxy *px) {
  pthread_mutex_lock(&px->lock);
  px->stop = 1;
  pthread_mutex_unlock(&px->lock);
  (void)!write(px->wake[1], "x", 1);
  pthread_join(px->thread, NULL);
  reset_close(px->a);
  reset_close(px->b);
  reset_close(px->held_fd);
  hs_free(px->held);
  close(px->lfd);
  close(px->wake[0]);
  close(px->wake[1]);
  pthread_mutex_destroy(&px->lock);
}

/* ---- the client ---- */

struct client {
  tether_ctx *ctx;
  tether_session *s;
};

static void client_connect(struct client *c, const char *psk, int port) {
  tether_config *cfg = config(psk);
  char p[16];
  assert_int_equal(tether_ctx_new(cfg, &c->ctx), 0);
  tether_config_free(cfg);
  snprintf(p, sizeof(p), "%d", port);
  assert_int_equal(tether_connect(c->ctx, "127.0.0.1", p, &c->s), 0);
}

/* A byte's round trip through the echo server. */
static void round_trip(struct client *c, char x) {
  char y = 0;
  assert_int_equal(tether_write(c->s, &x, 1), 1);
  assert_int_equal(tether_read(c->s, &y, 1), 1);
  assert_int_equal(y, x);
}

/* Waits up to ms for the session to reach state st. */
static bool wait_state(struct client *c, tether_state st, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (tether_session_state(c->s) != st) {
    if (now_ms() > end)
      return false;
    msleep(10);
  }
  return true;
}

static bool wait_forged(struct proxy *px, int n, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (proxy_forged(px) < n) {
    if (now_ms() > end)
      return false;
    msleep(10);
  }
  return true;
}

static void client_close(struct client *c) {
  tether_close(c->s);
  tether_ctx_free(c->ctx);
}

/* ---- tests ---- */

static void test_forged_reject_ignored_with_psk(void **state) {
  (void)state;
  struct server sv;
  struct proxy px;
  struct client c;
  server_start(&sv, PSK, true);
  proxy_start(&px, sv.port);
  client_connect(&c, PSK, px.port);
  round_trip(&c, 'a');

  proxy_set(&px, FORGE, -1, true);
  assert_true(wait_forged(&px, 3, 10000)); /* three attempts rejected */
  assert_int_equal(tether_session_state(c.s), TETHER_STATE_SUSPENDED);

  proxy_set(&px, RELAY, -1, false);
  assert_true(wait_state(&c, TETHER_STATE_CONNECTED, 10000));
  round_trip(&c, 'b');

  client_close(&c);
  proxy_stop(&px);
  server_stop(&sv);
}

static void test_authentic_reject_ends_session(void **state) {
  (void)state;
  struct server sv, other;
  struct proxy px;
  struct client c;
  server_start(&sv, PSK, true);
  server_start(&other, PSK, false); /* same key, never heard of the session */
  proxy_start(&px, sv.port);
  client_connect(&c, PSK, px.port);
  round_trip(&c, 'a');

  uint64_t cut = now_ms();
  proxy_set(&px, RELAY, other.port, true);
  assert_true(wait_state(&c, TETHER_STATE_FAILED, 10000));
  assert_int_equal(tether_session_error(c.s), TETHER_ESESSIONGONE);
  /* At once, not after give_up_s (a day by default). */
  assert_true(now_ms() - cut < 5000);

  client_close(&c);
  proxy_stop(&px);
  server_stop(&other);
  server_stop(&sv);
}

static void test_reject_under_another_key_ignored(void **state) {
  (void)state;
  struct server sv, other;
  struct proxy px;
  struct client c;
  server_start(&sv, PSK, true);
  server_start(&other, OTHER_PSK, false);
  proxy_start(&px, sv.port);
  client_connect(&c, PSK, px.port);
  round_trip(&c, 'a');

  proxy_set(&px, RELAY, other.port, true);
  msleep(1000); /* many redials (reconnect_max 50 ms), each rejected */
  assert_int_equal(tether_session_state(c.s), TETHER_STATE_SUSPENDED);

  proxy_set(&px, RELAY, sv.port, false);
  assert_true(wait_state(&c, TETHER_STATE_CONNECTED, 10000));
  round_trip(&c, 'b');

  client_close(&c);
  proxy_stop(&px);
  server_stop(&other);
  server_stop(&sv);
}

static void test_without_psk_forged_reject_is_final(void **state) {
  (void)state;
  struct server sv;
  struct proxy px;
  struct client c;
  server_start(&sv, NULL, true);
  proxy_start(&px, sv.port);
  client_connect(&c, NULL, px.port);
  round_trip(&c, 'a');

  proxy_set(&px, FORGE, -1, true);
  assert_true(wait_state(&c, TETHER_STATE_FAILED, 10000));
  assert_int_equal(tether_session_error(c.s), TETHER_ESESSIONGONE);
  /* The proxy counts its Reject once sent: maybe after the client failed. */
  assert_true(wait_forged(&px, 1, 5000));
  assert_int_equal(proxy_forged(&px), 1);

  client_close(&c);
  proxy_stop(&px);
  server_stop(&sv);
}

static uint64_t client_reconnects(struct client *c) {
  tether_stats st;
  assert_int_equal(tether_session_stats(c->s, &st), 0);
  return st.reconnects;
}

static void test_late_resume_attempt_refused(void **state) {
  (void)state;
  struct server sv;
  struct proxy px;
  struct client c;
  server_start(&sv, PSK, true);
  proxy_start(&px, sv.port);
  client_connect(&c, PSK, px.port);
  round_trip(&c, 'a');

  /* Attempt A: its ResumeFinish is held back; the client redials (B). */
  proxy_set(&px, HOLD, -1, true);
  uint64_t end = now_ms() + 10000;
  while (!proxy_holds(&px) && now_ms() < end)
    msleep(10);
  assert_true(proxy_holds(&px));
  assert_true(wait_state(&c, TETHER_STATE_CONNECTED, 10000));
  uint64_t resumes = client_reconnects(&c);
  assert_true(resumes >= 1);
  /* Both streams move on past what attempt A knows, and the heartbeats'
   * acknowledgements let the server drop what A would need resent. */
  for (char x = 'b'; x < 'k'; x++)
    round_trip(&c, x);
  msleep(500);

  hs_msg *answer = proxy_release(&px);
  assert_non_null(answer);
  assert_int_equal(answer->msg_case, TETHER__WIRE__HANDSHAKE__MSG_REJECT);
  assert_int_equal(answer->reject->code, TETHER__WIRE__REJECT__CODE__STALE);
  hs_free(answer);
  /* The live connection was not touched. */
  msleep(500);
  assert_int_equal(tether_session_state(c.s), TETHER_STATE_CONNECTED);
  assert_int_equal(client_reconnects(&c), resumes);
  round_trip(&c, 'z');

  client_close(&c);
  proxy_stop(&px);
  server_stop(&sv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forged_reject_ignored_with_psk),
      cmocka_unit_test(test_authentic_reject_ends_session),
      cmocka_unit_test(test_reject_under_another_key_ignored),
      cmocka_unit_test(test_without_psk_forged_reject_is_final),
      cmocka_unit_test(test_late_resume_attempt_refused),
  };
  return cmocka_run_group_tests_name("reject", tests, NULL, NULL);
}
