/* Hostile peers against a live server.  The server under test is the
 * tether-echo example in its own process (server_proc.h: connect_timeout_ms
 * 3000, everything else default, no pre-shared key).  One honest session
 * (honest.h) streams through it all along -- a 64 MiB random pattern over
 * and over, paced at 16 MiB/s, every byte of the echo compared -- while the
 * attacks come in turn:
 *
 *   1. a client that declares a 2^40-byte receive buffer, reads everything
 *      the echo sends and never acknowledges (no side channel at all), then
 *      stops reading: the server's memory stays bounded by its retention cap
 *      (its own send buffer plus this host's tcp_rmem ceiling), not by what
 *      it wrote, and it does not spin while its echo waits;
 *   2. a flood of 1,500 handshakes from 127.0.0.2-9 (1,100 ClientHellos cut
 *      short, 400 whole ones never confirmed): a new client still connects,
 *      and every flooder is gone after connect_timeout_ms;
 *   3. a slowloris: 1,100 connections sending a ClientHello a byte a second;
 *   4. control datagrams at 50,000 a second: MACs forged for the honest
 *      session's id, unknown ids, and replays (authentic datagrams, sealed
 *      with the honest session's real key taken from a snapshot of the
 *      client's context, with sequence numbers the server has already
 *      seen): the server's CPU per datagram, and the honest throughput with
 *      and without the flood (medians of interleaved windows, unpaced, then
 *      paced at 60% of that);
 *   5. peers that finish their ClientHello and never send the ClientFinish,
 *      holding their connections: dropped after connect_timeout_ms.
 *
 * After each: the server's resident memory stayed within a stated bound of
 * where it was, its CPU time within a stated bound, its descriptors and
 * threads are back, and the honest session is byte-exact and was never
 * suspended.  Prints one line of figures per attack.  Needs TETHER_ECHO
 * (set by ctest); raw sockets are not used, root is not needed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#include "honest.h"
#include "server_proc.h"
#include "wire/control.h"
#include "wire/snapshot.h"

#define CONNECT_TIMEOUT_MS 3000 /* the server's (environment, below) */
#define STR_(x) #x
#define STR(x) STR_(x)
#define PAT_LEN HONEST_PAT_LEN
#define HONEST_RATE ((uint64_t)16 << 20) /* bytes a second, between measurements */
#define CHUNK ((size_t)256 << 10)
#define MIB (1024.0 * 1024.0)
#define KIB_PER_MIB 1024

static struct server_proc srv;
/* Sanitizer builds (TETHER_SANITIZED=1, from ctest) keep freed memory in
 * quarantine and run several times slower: there the memory and throughput
 * figures are printed but not held to bounds, and CPU bounds are 4x. */
static bool sanitized;
#define CPU_BOUND(share) ((share) * (sanitized ? 4 : 1))
#define ASSERT_RSS(grew, cap)                                                                      \
  do {                                                                                             \
    if (!sanitized)                                                                                \
      assert_true((grew) <= (cap));                                                                \
  } while (0)
static int begun, ended; /* tests started, and run to their end: the server's
                            log is printed when they differ */
static tether_ctx *legit; /* where new legitimate clients connect from */

/* ---- small helpers ---- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void sleep_ms(uint64_t ms) { sleep_ns(ms * 1000000u); }

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* The third field of a net.ipv4.tcp_[rw]mem file: the autotuning ceiling. */
static uint64_t tcp_mem_max(const char *path) {
  unsigned long long lo, def, max;
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  assert_int_equal(fscanf(f, "%llu %llu %llu", &lo, &def, &max), 3);
  fclose(f);
  return max;
}

static void raise_nofile(void) {
  struct rlimit r;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &r), 0);
  r.rlim_cur = r.rlim_max;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &r), 0);
}

static void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  assert_true(fl >= 0);
  assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* A whole ClientHello frame (preface included) with a fresh key. */
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

/* After an attack: the server lives, and the honest session is intact,
 * was never suspended, and moved on since got_before. */
static void honest_check(const char *attack, uint64_t got_before) {
  tether_stats st;
  assert_int_equal(tether_session_stats(H.s, &st), 0);
  printf("    %s: honest session: %.0f MiB echoed so far, state %s, %llu reconnects, "
         "suspended %llu ns, %d suspensions seen, first bad byte %lld, error %s\n",
         attack, (double)LOAD(H.received) / MIB, tether_state_name(tether_session_state(H.s)),
         (unsigned long long)st.reconnects, (unsigned long long)st.suspended_ns,
         LOAD(H.suspends), (long long)LOAD(H.bad_at),
         LOAD(H.err) ? tether_err_name(LOAD(H.err)) : "none");
  if (!server_proc_alive(&srv)) {
    server_proc_dump_log(&srv);
    fail_msg("the server died: wait status %#x", srv.status);
  }
  assert_int_equal(LOAD(H.err), 0);
  assert_true(LOAD(H.bad_at) < 0);
  assert_int_equal(tether_session_state(H.s), TETHER_STATE_CONNECTED);
  assert_int_equal(st.reconnects, 0);
  assert_int_equal(st.suspended_ns, 0);
  assert_int_equal(LOAD(H.suspends), 0);
  assert_true(LOAD(H.received) > got_before);
}

/* ---- measurement windows over the server process ---- */

struct window {
  uint64_t t0, cpu0, rss0_kib, got0, threads0;
  unsigned fds0;
  uint64_t wall_ms, cpu_ms, peak_kib;
  double honest_mibs; /* the honest session's echo rate meanwhile */
};

static void window_open(struct window *w) {
  memset(w, 0, sizeof(*w));
  server_proc_peak_reset(&srv);
  w->rss0_kib = server_proc_rss_kib(&srv);
  w->cpu0 = server_proc_cpu_ms(&srv);
  w->got0 = LOAD(H.received);
  w->fds0 = server_proc_fds(&srv);
  w->threads0 = server_proc_threads(&srv);
  w->t0 = proc_now_ms();
}

static void window_close(struct window *w) {
  w->wall_ms = proc_now_ms() - w->t0;
  w->cpu_ms = server_proc_cpu_ms(&srv) - w->cpu0;
  w->peak_kib = server_proc_peak_kib(&srv);
  w->honest_mibs = (double)(LOAD(H.received) - w->got0) / MIB / ((double)w->wall_ms / 1000.0);
}

static double grew_mib(const struct window *w) {
  return ((double)w->peak_kib - (double)w->rss0_kib) / KIB_PER_MIB;
}

static double core_share(const struct window *w) {
  return w->wall_ms ? (double)w->cpu_ms / (double)w->wall_ms : 0;
}

/* One line of figures: grew is the server's RSS growth (MiB) that the
 * attack is held to, rss_cap its bound; cpu_cap the bound on its CPU time
 * as a share of one core over the window. */
static void report(const char *attack, const struct window *w, double grew, double rss_cap_mib,
                   double cpu_cap, const char *extra) {
  printf("%-24s server RSS %.1f MiB, peak +%.1f MiB (bound +%.0f); CPU %llu ms in %llu ms "
         "(%.0f%% of a core; bound %.0f%%); honest %.1f MiB/s; %s\n",
         attack, (double)w->rss0_kib / KIB_PER_MIB, grew, rss_cap_mib,
         (unsigned long long)w->cpu_ms, (unsigned long long)w->wall_ms, 100 * core_share(w),
         100 * cpu_cap, w->honest_mibs, extra);
  fflush(stdout);
}

/* After an attack the server lets go of what its attackers held: waits
 * (30 s at most) until it has no more than `fds` descriptors and `threads`
 * threads more than when w opened, and its descriptors have not changed for
 * 300 ms (the next attack's baseline), and says how it went.  The new
 * client's session that an attack's check closed stays on the server for
 * TIME_WAIT (2 x suspend_ms + reconnect_max_ms: 7 s) once both sides are
 * done, and a loaded server takes its time to get there: it took 4 to 5 s
 * more after a handshake flood on a quiet machine, over 10 s on a busy
 * one. */
static void settled(const char *attack, const struct window *w, unsigned fds, uint64_t threads) {
  uint64_t t0 = proc_now_ms(), still_since = t0;
  unsigned nfd = server_proc_fds(&srv);
  uint64_t nth = server_proc_threads(&srv);
  for (int i = 0; i < 3000; i++) {
    uint64_t now = proc_now_ms();
    if (nfd <= w->fds0 + fds && nth <= w->threads0 + threads && now - still_since >= 300)
      break;
    sleep_ms(10);
    unsigned n = server_proc_fds(&srv);
    still_since = n == nfd ? still_since : proc_now_ms();
    nfd = n;
    nth = server_proc_threads(&srv);
  }
  printf("    %s: server after %llu ms more: %u descriptors (%u before), %llu threads (%llu "
         "before), RSS %.1f MiB\n",
         attack, (unsigned long long)(proc_now_ms() - t0), nfd, w->fds0, (unsigned long long)nth,
         (unsigned long long)w->threads0, (double)server_proc_rss_kib(&srv) / KIB_PER_MIB);
  assert_true(nfd <= w->fds0 + fds);
  assert_true(nth <= w->threads0 + threads);
}

/* A new client connects from the legitimate context and 64 KiB go there
 * and back.  Returns how long the connect took, in ms. */
static uint64_t legit_round_trip(const char *attack) {
  tether_session *s = NULL;
  uint8_t back[64 * 1024];
  size_t out = 0, in = 0;
  uint64_t t0 = proc_now_ms();
  int rc = tether_connect(legit, "127.0.0.1", srv.port_s, &s);
  uint64_t ms = proc_now_ms() - t0;
  printf("    %s: a new client's connect: %s after %llu ms\n", attack,
         rc == 0 ? "ok" : tether_err_name(rc), (unsigned long long)ms);
  assert_int_equal(rc, 0);
  assert_int_equal(tether_set_nonblocking(s, 1), 0);
  for (int idle = 0; in < sizeof(back);) {
    short ev = out < sizeof(back) ? POLLIN | POLLOUT : POLLIN;
    struct pollfd p = {.fd = tether_fd(s), .events = ev};
    if (poll(&p, 1, 1000) == 0)
      assert_true(++idle < 10);
    if (out < sizeof(back)) {
      ssize_t n = tether_write(s, H.pat + out, sizeof(back) - out);
      assert_true(n > 0 || n == -EAGAIN);
      out += n > 0 ? (size_t)n : 0;
    }
    ssize_t n = tether_read(s, back + in, sizeof(back) - in);
    assert_true(n > 0 || n == -EAGAIN);
    in += n > 0 ? (size_t)n : 0;
  }
  assert_memory_equal(back, H.pat, sizeof(back));
  assert_int_equal(tether_close(s), 0);
  return ms;
}

/* How many of fds the server has not closed by deadline (ms, proc_now_ms).
 * Each one closed is marked -1 after close(). */
static int still_open_at(int *fds, int n, uint64_t deadline) {
  int open = 0;
  for (int i = 0; i < n; i++) {
    if (fds[i] < 0)
      continue;
    uint64_t now = proc_now_ms();
    if (hand_closed_within(fds[i], now < deadline ? (int)(deadline - now) : 0)) {
      close(fds[i]);
      fds[i] = -1;
    } else {
      open++;
    }
  }
  return open;
}

/* ---- 1. a huge declared receive buffer, and no acknowledgements ---- */

/* Sends total bytes and reads their echo back, both at once. */
static void pump(int fd, uint64_t total) {
  static uint8_t sink[CHUNK];
  uint64_t out = 0, in = 0;
  for (int idle = 0; in < total;) {
    struct pollfd p = {.fd = fd, .events = (short)(POLLIN | (out < total ? POLLOUT : 0))};
    int r = poll(&p, 1, 2000);
    assert_true(r >= 0 || errno == EINTR);
    if (r == 0 && ++idle == 5) /* 10 s without progress */
      fail_msg("the echo stopped after %llu of %llu bytes came back (%llu sent).  Seen so "
               "far: the server's writer, held back at its retention cap and asleep in "
               "poll(POLLOUT), is not woken when room returns (snapshot_test: "
               "test_held_writer_asleep_in_poll_woken)",
               (unsigned long long)in, (unsigned long long)total, (unsigned long long)out);
    if (r == 0)
      continue;
    idle = 0;
    if (out < total) {
      size_t off = out % PAT_LEN;
      ssize_t k = send(fd, H.pat + off, min_sz(min_sz(CHUNK, PAT_LEN - off), total - out),
                       MSG_DONTWAIT | MSG_NOSIGNAL);
      assert_true(k > 0 || errno == EAGAIN);
      out += k > 0 ? (uint64_t)k : 0;
    }
    ssize_t k = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
    assert_true(k != 0); /* the server closed */
    assert_true(k > 0 || errno == EAGAIN);
    in += k > 0 ? (uint64_t)k : 0;
  }
}

static void test_big_rcvbuf_no_acks(void **state) {
  (void)state;
  /* The cap: our send buffer's ceiling plus the most of a peer's declared
   * receive buffer believed, this host's tcp_rmem ceiling (tether(7),
   * "Capacity and memory"). */
  uint64_t cap = tcp_mem_max("/proc/sys/net/ipv4/tcp_wmem") +
                 tcp_mem_max("/proc/sys/net/ipv4/tcp_rmem");
  uint64_t total = 10 * cap > ((uint64_t)384 << 20) ? 10 * cap : (uint64_t)384 << 20;
  /* Without the cap the ring would keep all `total` bytes.  With it: held,
   * the ring at its cap; plus up to as much again of freed rings the
   * allocator keeps resident (glibc's mmap threshold rises as large blocks
   * are freed, up to 32 MiB: later ones come from an arena's heap and stay
   * there); plus 16 MiB for the rest (a thread, its buffers, the honest
   * session's ring).  At the peak, one more cap: the ring changes size by
   * copying into a new buffer (retention.c, resize()), so while it grows to
   * the cap, or is cut to its content on a heartbeat, it holds the old one
   * too. */
  double held_cap = 2 * (double)cap / MIB + 16, peak_cap = 3 * (double)cap / MIB + 16;
  uint64_t got = LOAD(H.received);
  struct hand a;
  struct window w, held;
  char extra[160];

  window_open(&w);
  hand_hello_rcvbuf(&a, srv.port, "127.0.0.1", (uint64_t)1 << 40);
  hand_server_hello(&a, NULL);
  uint8_t fin[128];
  hand_send_all(a.fd, fin, hand_finish_frame(&a, false, fin, sizeof(fin)));
  set_nonblocking(a.fd);
  pump(a.fd, total);
  window_close(&w);
  snprintf(extra, sizeof(extra), "%.0f MiB echoed to it (%.1f ns of server CPU a byte)",
           (double)total / MIB, (double)w.cpu_ms * 1e6 / (double)total);
  report("1 rcvbuf 2^40, no acks:", &w, grew_mib(&w), peak_cap, CPU_BOUND(1.0), extra);

  /* Now it stops reading too: everything fills up and the server's echo
   * waits (held at its retention cap, or by TCP).  It must wait idle. */
  uint64_t extra_bytes = 0;
  for (int i = 0; i < 4096; i++) { /* 1 GiB at most: far more than fits */
    ssize_t k = send(a.fd, H.pat, CHUNK, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0) {
      extra_bytes += (uint64_t)k;
      continue;
    }
    assert_int_equal(errno, EAGAIN);
    struct pollfd p = {.fd = a.fd, .events = POLLOUT};
    if (poll(&p, 1, 500) == 0)
      break;
  }
  window_open(&held);
  sleep_ms(2500); /* the measurement window: two heartbeats at least */
  window_close(&held);
  double peak_mib = ((double)held.peak_kib - (double)w.rss0_kib) / KIB_PER_MIB;
  double held_mib = ((double)server_proc_rss_kib(&srv) - (double)w.rss0_kib) / KIB_PER_MIB;
  snprintf(extra, sizeof(extra),
           "%.0f MiB more sent, none read; RSS over the start: +%.1f MiB at the end, "
           "+%.1f MiB at the peak (bound +%.0f)",
           (double)extra_bytes / MIB, held_mib, peak_mib, peak_cap);
  report("1 ... then no reads:", &held, held_mib, held_cap, CPU_BOUND(0.25), extra);

  /* It goes away; the server keeps its session, suspended, for a resume
   * (give_up_s), with what it retains: one descriptor, one thread. */
  hand_free(&a);
  settled("1", &w, 2, 1);
  honest_check("1", got);
  assert_true(extra_bytes < ((uint64_t)1 << 30));
  ASSERT_RSS(grew_mib(&w), peak_cap);
  ASSERT_RSS(peak_mib, peak_cap);
  ASSERT_RSS(held_mib, held_cap);
  assert_true(core_share(&held) <= CPU_BOUND(0.25));
  /* Echoing is real work (about 2 ns a byte here); a spin at the cap would
   * show as far more. */
  assert_true((double)w.cpu_ms * 1e6 / (double)total <= CPU_BOUND(20.0));
  ended++;
}

/* ---- 2. a flood of handshakes ---- */

enum { HOSTS = 8, CUT = 1100, WHOLE = 400, FLOOD = CUT + WHOLE };
/* 4 in every 15 whole: 400 of 1,500. */
enum { FLOOD_MIX = 15, WHOLE_IN_MIX = 4 };
_Static_assert(FLOOD % FLOOD_MIX == 0 && FLOOD / FLOOD_MIX * WHOLE_IN_MIX == WHOLE, "mix");

static void test_handshake_flood(void **state) {
  (void)state;
  int *fds = calloc(FLOOD, sizeof(int));
  uint8_t hello[512];
  uint64_t got = LOAD(H.received), threads0 = server_proc_threads(&srv), threads_max = 0;
  struct window w;
  char extra[200];
  assert_non_null(fds);

  window_open(&w);
  uint64_t t0 = proc_now_ms();
  for (int i = 0; i < FLOOD; i++) {
    char src[32];
    snprintf(src, sizeof(src), "127.0.0.%d", 2 + i % HOSTS);
    size_t n = hello_frame(hello, sizeof(hello));
    fds[i] = hand_dial(srv.port, src);
    /* WHOLE of them whole, never confirmed; the others cut short. */
    hand_send_all(fds[i], hello, i % FLOOD_MIX < WHOLE_IN_MIX ? n : HS_PREFACE_LEN + 4 + 3);
  }
  uint64_t dialled = proc_now_ms();
  uint64_t connect_ms = legit_round_trip("2");
  threads_max = server_proc_threads(&srv);
  int open = still_open_at(fds, FLOOD, dialled + CONNECT_TIMEOUT_MS + 3000);
  window_close(&w);
  snprintf(extra, sizeof(extra),
           "%d handshakes dialled in %llu ms, new client in %llu ms, %d still open after "
           "connect_timeout + 3 s; server threads %llu -> %llu",
           FLOOD, (unsigned long long)(dialled - t0), (unsigned long long)connect_ms, open,
           (unsigned long long)threads0, (unsigned long long)threads_max);
  report("2 handshake flood:", &w, grew_mib(&w), 64, CPU_BOUND(0.6), extra);
  for (int i = 0; i < FLOOD; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  free(fds);
  settled("2", &w, 0, 0);
  honest_check("2", got);
  assert_int_equal(open, 0);
  /* A full table with nothing stalled makes newcomers wait up to the
   * stall period (min(connect_timeout_ms / 4, 1 s)). */
  assert_true(connect_ms <= 4000);
  ASSERT_RSS(grew_mib(&w), 64);
  assert_true(core_share(&w) <= CPU_BOUND(0.6));
  ended++;
}

/* ---- 3. slowloris ---- */

enum { SLOW = 1100 };

struct drip {
  int *fds;
  const uint8_t *bytes;
  size_t len;
  int stop; /* atomic */
};

/* One more byte of a ClientHello on every connection, every second. */
static void *drip(void *arg) {
  struct drip *d = arg;
  for (size_t k = 1; k < d->len && !LOAD(d->stop); k++) {
    for (int s = 0; s < 10 && !LOAD(d->stop); s++)
      sleep_ms(100);
    for (int i = 0; i < SLOW; i++)
      if (d->fds[i] >= 0)
        (void)send(d->fds[i], d->bytes + k, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  return NULL;
}

static void test_slowloris(void **state) {
  (void)state;
  uint8_t hello[512];
  struct drip d = {.fds = calloc(SLOW, sizeof(int)), .bytes = hello};
  uint64_t got = LOAD(H.received);
  pthread_t dripper;
  struct window w;
  char extra[160];
  assert_non_null(d.fds);
  d.len = hello_frame(hello, sizeof(hello));

  window_open(&w);
  for (int i = 0; i < SLOW; i++) {
    char src[32];
    snprintf(src, sizeof(src), "127.0.0.%d", 2 + i % HOSTS);
    d.fds[i] = hand_dial(srv.port, src);
    hand_send_all(d.fds[i], hello, 1);
  }
  uint64_t dialled = proc_now_ms();
  assert_int_equal(pthread_create(&dripper, NULL, drip, &d), 0);
  sleep_ms(1200); /* past the stall period: the drippers are evictable now */
  uint64_t connect_ms = legit_round_trip("3");
  /* The dripper closes nothing: fds stay valid while it runs. */
  int open = 0;
  uint64_t deadline = dialled + CONNECT_TIMEOUT_MS + 3000;
  for (int i = 0; i < SLOW; i++) {
    uint64_t now = proc_now_ms();
    open += !hand_closed_within(d.fds[i], now < deadline ? (int)(deadline - now) : 0);
  }
  STORE(d.stop, 1);
  pthread_join(dripper, NULL);
  window_close(&w);
  snprintf(extra, sizeof(extra),
           "%d connections at a byte a second, new client in %llu ms, %d still open after "
           "connect_timeout + 3 s",
           SLOW, (unsigned long long)connect_ms, open);
  report("3 slowloris:", &w, grew_mib(&w), 32, CPU_BOUND(0.25), extra);
  for (int i = 0; i < SLOW; i++)
    close(d.fds[i]);
  free(d.fds);
  settled("3", &w, 0, 0);
  honest_check("3", got);
  assert_int_equal(open, 0);
  assert_true(connect_ms <= 4000);
  ASSERT_RSS(grew_mib(&w), 32);
  assert_true(core_share(&w) <= CPU_BOUND(0.25));
  ended++;
}

/* ---- 4. forged and replayed control datagrams ---- */

/* 50,000 datagrams a second: 30,000 of each kind for the CPU figures, then
 * ROUNDS windows of ROUND_DG (a quarter of a second) unpaced and as many
 * paced; about 5.8 s of flooding in all. */
enum { POOL = 4096, DG_RATE = 50000, PER_KIND = 30000, ROUNDS = 8, ROUND_DG = 12500 };

struct dg {
  uint8_t b[CTL_MAX];
  size_t n;
};

/* A well-formed datagram for id whose MAC is random: a Control that, were
 * it believed, would fail the session (a peer's divergent replay). */
static void forge(struct dg *d, const uint8_t id[SESSION_ID_LEN]) {
  Tether__Wire__Control m = TETHER__WIRE__CONTROL__INIT;
  uint64_t seq;
  assert_int_equal(crypto_random(&seq, sizeof(seq)), 0);
  m.seq = (seq >> 1) | 1;
  m.write_closed = m.read_closed = true;
  m.failed = (uint32_t)-TETHER_EDIVERGED;
  size_t body = tether__wire__control__get_packed_size(&m);
  assert_true(CTL_HDR_LEN + body + MAC_LEN <= sizeof(d->b));
  memcpy(d->b, CTL_MAGIC, 4);
  memcpy(d->b + 4, id, SESSION_ID_LEN);
  tether__wire__control__pack(&m, d->b + CTL_HDR_LEN);
  assert_int_equal(crypto_random(d->b + CTL_HDR_LEN + body, MAC_LEN), 0);
  d->n = CTL_HDR_LEN + body + MAC_LEN;
}

/* Authentic datagrams the honest client could have sent, with sequence
 * numbers it has used already: its key and counters from a snapshot of its
 * context (its latest number left out: it may still be on its way).
 * Returns how many (distinct sequence numbers, up to POOL). */
static size_t replays(struct dg *pool) {
  size_t n = 0;
  /* The honest client acknowledges every 2 MiB it reads, and heartbeats:
   * wait (5 s at most) until it has used two sequence numbers at least.
   * Every one it used was received (loopback) long before the flood. */
  for (int tries = 0; n == 0 && tries < 50; tries++) {
    void *blob;
    size_t len;
    int err = 0;
    const char *why = NULL;
    assert_int_equal(tether_snapshot(H.ctx, &blob, &len), 0);
    snap_msg *m = snap_open(blob, len, &err, &why);
    assert_non_null(m);
    for (size_t i = 0; i < m->n_sessions; i++) {
      const Tether__Snap__Session *s = m->sessions[i];
      if (s->id.len != SESSION_ID_LEN || memcmp(s->id.data, H.id, SESSION_ID_LEN) != 0 ||
          s->tx_seq < 2)
        continue;
      assert_true(s->is_client && s->k_ctl_c2s.len == KEY_LEN);
      for (uint64_t seq = s->tx_seq - 1; seq >= 1 && n < POOL; seq--) {
        struct core_ctl c = {.seq = seq, .delivered = s->delivered, .sent = s->sent};
        ssize_t k = ctl_seal(H.id, &c, s->k_ctl_c2s.data, pool[n].b, sizeof(pool[n].b));
        assert_true(k > 0);
        pool[n++].n = (size_t)k;
      }
    }
    snap_free(m);
    free(blob);
    if (n == 0)
      sleep_ms(100);
  }
  assert_true(n > 0);
  return n;
}

/* Sends n datagrams from pool (cycled) to the server at rate a second, in
 * batches.  Returns the time it took in ms. */
static uint64_t flood(int fd, const struct dg *pool, size_t pool_n, uint64_t n) {
  enum { BATCH = 32 };
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port)};
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  uint64_t t0 = now_ns(), sent = 0;
  int errors = 0;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  while (sent < n) {
    unsigned b = (unsigned)(n - sent < BATCH ? n - sent : BATCH);
    for (unsigned k = 0; k < b; k++) {
      const struct dg *d = &pool[(sent + k) % pool_n];
      iov[k] = (struct iovec){(void *)d->b, d->n};
      msgs[k] = (struct mmsghdr){.msg_hdr = {.msg_name = &to,
                                             .msg_namelen = sizeof(to),
                                             .msg_iov = &iov[k],
                                             .msg_iovlen = 1}};
    }
    int r = sendmmsg(fd, msgs, b, 0);
    if (r <= 0) {
      assert_true(++errors < 1000);
      continue;
    }
    sent += (uint64_t)r;
    uint64_t due = t0 + sent * 1000000000u / DG_RATE, now = now_ns();
    if (due > now)
      sleep_ns(due - now);
  }
  return (now_ns() - t0) / 1000000u;
}

/* CPU time of the calling thread (the flood's sender), in us. */
static uint64_t thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The honest session's echo rate (MiB/s) at pace `rate` (0: unpaced), in
 * ROUNDS windows without (quiet) then with (flooded) ROUND_DG datagrams
 * from mixed.  Prints them. */
static void throughput(int fd, const struct dg *mixed, uint64_t rate, double *quiet,
                       double *flooded) {
  struct window w;
  STORE(H.rate, rate);
  sleep_ms(1000); /* to speed (unpaced, the first few hundred ms are slow) */
  uint64_t drops0 = server_proc_udp_drops(&srv);
  for (int r = 0; r < ROUNDS; r++) {
    window_open(&w);
    sleep_ms(ROUND_DG * 1000 / DG_RATE); /* the measurement window */
    window_close(&w);
    quiet[r] = w.honest_mibs;
    window_open(&w);
    flood(fd, mixed, POOL, ROUND_DG);
    window_close(&w);
    flooded[r] = w.honest_mibs;
  }
  char how[64] = "unpaced";
  if (rate)
    snprintf(how, sizeof(how), "paced at %.0f MiB/s", (double)rate / MIB);
  printf("    4: honest %s, MiB/s in %d ms windows, quiet/flooded:", how,
         ROUND_DG * 1000 / DG_RATE);
  for (int r = 0; r < ROUNDS; r++)
    printf(" %.0f/%.0f", quiet[r], flooded[r]);
  printf("; %llu datagrams dropped by the server's socket\n",
         (unsigned long long)(server_proc_udp_drops(&srv) - drops0));
}

static void test_control_flood(void **state) {
  (void)state;
  static struct dg pools[3][POOL], mixed[POOL];
  static const char *kinds[3] = {"forged MAC, honest id", "unknown ids", "replays"};
  size_t pool_n[3] = {POOL, POOL, 0};
  uint64_t got = LOAD(H.received);
  struct window base, all, w;
  double us[3], q[ROUNDS], f[ROUNDS];
  char extra[200];

  for (int i = 0; i < POOL; i++) {
    uint8_t id[SESSION_ID_LEN];
    assert_int_equal(crypto_random(id, sizeof(id)), 0);
    forge(&pools[0][i], H.id);
    forge(&pools[1][i], id);
  }
  pool_n[2] = replays(pools[2]);
  for (int i = 0; i < POOL; i++)
    mixed[i] = pools[i % 3][(size_t)i % pool_n[i % 3]];
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);

  /* CPU per datagram, the honest session paced: against a quiet second. */
  window_open(&all);
  window_open(&base);
  sleep_ms(1000); /* the measurement window */
  window_close(&base);
  double base_share = core_share(&base);
  for (int k = 0; k < 3; k++) {
    uint64_t drops0 = server_proc_udp_drops(&srv), sender0 = thread_cpu_us();
    window_open(&w);
    flood(fd, pools[k], pool_n[k], PER_KIND);
    window_close(&w);
    uint64_t drops = server_proc_udp_drops(&srv) - drops0;
    double sender_us = (double)(thread_cpu_us() - sender0) / PER_KIND;
    us[k] = ((double)w.cpu_ms - base_share * (double)w.wall_ms) * 1000.0 / PER_KIND;
    printf("    4: %d %s in %llu ms: server CPU %llu ms (quiet: %.0f%% of a core), %.1f us a "
           "datagram; %llu dropped by its socket; the sender's own CPU %.1f us a datagram\n",
           PER_KIND, kinds[k], (unsigned long long)w.wall_ms, (unsigned long long)w.cpu_ms,
           100 * base_share, us[k], (unsigned long long)drops, sender_us);
  }
  window_close(&all);

  /* The honest session's throughput in windows without and with the flood,
   * interleaved (the machine's other load hits both alike): unpaced, then
   * paced at 60% of the unpaced quiet median. */
  throughput(fd, mixed, 0, q, f);
  double mq = median(q, ROUNDS), mf = median(f, ROUNDS);
  uint64_t pace = (uint64_t)(mq * 0.6 * MIB);
  throughput(fd, mixed, pace, q, f);
  double pq = median(q, ROUNDS), pf = median(f, ROUNDS);
  STORE(H.rate, HONEST_RATE);
  close(fd);
  snprintf(extra, sizeof(extra),
           "%.1f / %.1f / %.1f us a datagram (forged / unknown id / replay); honest unpaced "
           "%.0f -> %.0f MiB/s (%.2fx), paced at %.0f: %.0f -> %.0f MiB/s (%.2fx)",
           us[0], us[1], us[2], mq, mf, mf / mq, (double)pace / MIB, pq, pf, pf / pq);
  report("4 control datagrams:", &all, grew_mib(&all), 16, CPU_BOUND(0.6), extra);
  honest_check("4", got);
  for (int k = 0; k < 3; k++)
    assert_true(us[k] <= CPU_BOUND(25.0));
  ASSERT_RSS(grew_mib(&all), 16);
  assert_true(core_share(&all) <= CPU_BOUND(0.6));
  /* The target, 0.8x, holds paced, where the server has CPU to
   * spare for its share of the flood.  Unpaced, the honest stream takes all
   * the CPU there is, and this test's own sending (3-5 us a datagram: a
   * fifth of a core) comes out of it on a 2-core machine; with the other
   * load of a shared machine, the medians swing between 0.7x and 1.2x
   * there: only a collapse fails. */
  assert_true(sanitized || pf >= 0.8 * pq);
  assert_true(sanitized || mf >= 0.5 * mq);
  ended++;
}

/* ---- 5. peers that never confirm ---- */

enum { NEVER = 32 };

static void test_never_confirm(void **state) {
  (void)state;
  struct hand *h = calloc(NEVER, sizeof(*h));
  uint64_t *answered = calloc(NEVER, sizeof(uint64_t));
  uint64_t got = LOAD(H.received), threads0 = server_proc_threads(&srv);
  uint64_t lo = UINT64_MAX, hi = 0;
  struct window w;
  char extra[200];
  assert_non_null(h);
  assert_non_null(answered);

  window_open(&w);
  for (int i = 0; i < NEVER; i++) {
    char src[32];
    snprintf(src, sizeof(src), "127.0.0.%d", 2 + i % HOSTS);
    hand_hello_from(&h[i], srv.port, src);
    hand_server_hello(&h[i], NULL);
    answered[i] = proc_now_ms();
  }
  uint64_t threads_mid = server_proc_threads(&srv);
  int open = 0;
  for (int i = 0; i < NEVER; i++) {
    uint64_t deadline = answered[i] + CONNECT_TIMEOUT_MS + 3000, now = proc_now_ms();
    if (!hand_closed_within(h[i].fd, now < deadline ? (int)(deadline - now) : 0)) {
      open++;
      continue;
    }
    uint64_t after = proc_now_ms() - answered[i];
    lo = after < lo ? after : lo;
    hi = after > hi ? after : hi;
  }
  window_close(&w);
  snprintf(extra, sizeof(extra),
           "%d held unconfirmed: closed %llu..%llu ms after their ServerHello, %d still open; "
           "server threads %llu -> %llu -> %llu",
           NEVER, (unsigned long long)lo, (unsigned long long)hi, open,
           (unsigned long long)threads0, (unsigned long long)threads_mid,
           (unsigned long long)server_proc_threads(&srv));
  report("5 never confirm:", &w, grew_mib(&w), 16, CPU_BOUND(0.25), extra);
  for (int i = 0; i < NEVER; i++)
    hand_free(&h[i]);
  free(h);
  free(answered);
  settled("5", &w, 0, 0);
  honest_check("5", got);
  assert_int_equal(open, 0);
  /* connect_timeout_ms after setup (hand_closed_within sees it within a
   * poll's wake-up), not much sooner: the confirm timer, not something
   * else. */
  assert_true(lo >= CONNECT_TIMEOUT_MS / 2);
  ASSERT_RSS(grew_mib(&w), 16);
  assert_true(core_share(&w) <= CPU_BOUND(0.25));
  ended++;
}

/* ---- the honest session, to the end ---- */

static void test_honest_stream_intact(void **state) {
  (void)state;
  /* The writer ends after its current write, the reader at the echo's EOF
   * (30 s at most each: a stream stuck on the server fails here). */
  if (honest_finish(30) < 0)
    fail_msg("the honest stream did not finish: %.0f MiB sent, %.0f MiB echoed back",
             (double)LOAD(H.sent) / MIB, (double)LOAD(H.received) / MIB);
  tether_stats st;
  assert_int_equal(tether_session_stats(H.s, &st), 0);
  printf("honest session: %.0f MiB sent, %.0f MiB echoed back byte-exact: %s; %llu reconnects, "
         "suspended %llu ns\n",
         (double)LOAD(H.sent) / MIB, (double)LOAD(H.received) / MIB,
         LOAD(H.bad_at) < 0 && LOAD(H.received) == LOAD(H.sent) ? "yes" : "NO",
         (unsigned long long)st.reconnects, (unsigned long long)st.suspended_ns);
  assert_int_equal(LOAD(H.err), 0);
  assert_true(LOAD(H.bad_at) < 0);
  assert_int_equal(LOAD(H.received), LOAD(H.sent));
  assert_int_equal(st.reconnects, 0);
  assert_int_equal(LOAD(H.suspends), 0);
  ended++;
}

/* ---- the server and the honest session around the tests ---- */

static int setup(void **state) {
  (void)state;
  const char *exe = getenv("TETHER_ECHO");
  static const char *const env[] = {"TETHER_CONNECT_TIMEOUT_MS=" STR(CONNECT_TIMEOUT_MS), NULL};
  if (!exe || !*exe) {
    fprintf(stderr, "TETHER_ECHO is not set (run through ctest, or export it)\n");
    return -1;
  }
  const char *san = getenv("TETHER_SANITIZED");
  sanitized = san && strcmp(san, "1") == 0;
  raise_nofile();
  server_proc_start(&srv, exe, env);
  honest_start(srv.port_s, HONEST_RATE);
  assert_int_equal(tether_ctx_new(NULL, &legit), 0);
  printf("server: tether-echo, pid %d, port %d, connect_timeout_ms %d%s\n", (int)srv.pid,
         srv.port, CONNECT_TIMEOUT_MS, sanitized ? " (sanitizer build: looser bounds)" : "");
  return 0;
}

static int begin(void **state) {
  (void)state;
  begun++;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  int status = server_proc_stop(&srv);
  if (status != 0 || begun != ended)
    server_proc_dump_log(&srv);
  unlink(srv.log);
  if (!H.joined) {
    /* test_honest_stream_intact did not run to its end (a failure, or a
     * filter): the honest session, its server gone, would wait for it
     * until give_up_s.  The process exits with its threads. */
    STORE(H.stop, 1);
    return status == 0 ? 0 : -1;
  }
  tether_close(H.s);
  tether_ctx_free(H.ctx);
  tether_ctx_free(legit);
  free(H.pat);
  return status == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc > 1)
    cmocka_set_test_filter(argv[1]); /* say test_slowloris: the others are skipped */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_big_rcvbuf_no_acks, begin),
      cmocka_unit_test_setup(test_handshake_flood, begin),
      cmocka_unit_test_setup(test_slowloris, begin),
      cmocka_unit_test_setup(test_control_flood, begin),
      cmocka_unit_test_setup(test_never_confirm, begin),
      cmocka_unit_test_setup(test_honest_stream_intact, begin),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
