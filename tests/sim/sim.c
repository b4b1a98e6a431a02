/* Deterministic two-peer simulation of the sans-IO core (lib/core).
 *
 * Two struct core_session (a client and a server) are driven exactly the way
 * lib/engine/session.c drives them, over a simulated network with virtual
 * time that jumps from event to event:
 *
 *   - a TCP connection is two byte pipes.  Each pipe holds the sender's kernel
 *     send queue (bounded by its sndbuf: bytes not yet sent or not yet
 *     acknowledged, which is what SIOCOUTQ reports), segments in flight
 *     (latency, serialization at a seeded bandwidth) and the receiver's kernel
 *     receive queue (bounded by its rcvbuf: flow control).  A byte counts as
 *     acknowledged as soon as it reaches the receive queue, which makes the
 *     in-flight trim rule as aggressive as it can ever be on a real kernel;
 *   - the UDP side channel carries core_build_ctl() output to core_on_ctl()
 *     with seeded loss, delay and reordering;
 *   - faults at seeded times: connection cuts (contents lost; each end learns
 *     by a reset, or only by TCP timeouts, or when the peer's heartbeats stop),
 *     black holes (TCP and UDP silently dropped, then healed; a black hole
 *     longer than TCP's user timeout kills the connection), UDP outages, and
 *     in "give-up" runs a permanent outage;
 *   - the client redials on CORE_ACT_REDIAL with the engine's policy (at most
 *     two attempts, the older replaced while still connecting); an attempt is
 *     a TCP connect plus two round trips (ResumeHello, Challenge, Finish +
 *     client state, Accept + server state), and every message can be lost;
 *     the server retires a still connected transport first and resumes when
 *     Finish arrives, the client when Accept arrives, as the engine does;
 *     each flushes core_pending() before new writes.
 *
 * The applications write seeded pseudo-random streams (byte i of a stream is
 * a function of its key and i) in random chunks exactly as tether_write does
 * (core_write_check, core_write_room, core_trim_inflight with the pipe's
 * SIOCOUTQ, core_reserve, send, core_on_written), read and verify every byte
 * incrementally (core_on_delivered, the ack every CORE_ACK_EVERY), shut down,
 * wait for EOF and close.  Modes: one-way, echo, bidirectional; in some runs
 * one application closes before EOF (the peer's writes then fail with
 * EPIPE); some datagrams are replayed.
 *
 * Checks, for every seed: every delivered byte is the right one (nothing
 * lost, duplicated or reordered), EOF comes at exactly the peer's final
 * count, both sessions end (CLOSED then DONE) within an hour of virtual time,
 * nothing fails while the network is healthy at the end, retention stays
 * within its maximum and never blocks a writer earlier than TCP would; in a
 * give-up run the client fails with TETHER_EGIVEUP exactly give_up after it
 * was suspended.
 *
 * --restore (issue 3): both sides are durable.  Each takes snapshots at
 * random times (a deep copy of its core, retention and replay log included,
 * plus its application's state: the writer's next offset is the core's
 * `sent`, the reader's its `delivered`) and commits each after a random
 * delay (core_durable_commit); at random points one side or both crash
 * (sockets reset, or silently gone; down for a while or not) and restart
 * from their last committed snapshots exactly as session_restore() does
 * (epoch + 1, control numbers above, SUSPENDED).  Replays are read through
 * core_replay_pending/core_on_replayed as the engine does.  In some seeds
 * (all with --diverge) a restored application writes one different byte
 * among those its peer already delivered: the peer must fail with
 * TETHER_EDIVERGED (the writer too when the verdict gets through) and never
 * deliver it.  Crashes happen at any point, also after the peer finished
 * (CLOSED) the session: a finished side keeps the session until its
 * durable peer's committed snapshot holds it finished, and a peer restored
 * behind the end reopens it (core_on_resumed); the seed must then end like
 * any other.  A restored application whose stream ends elsewhere than an
 * earlier incarnation's, as its peer knows it (it closes early, or stops on
 * EPIPE, at another point of its replay: the sim's applications are not
 * deterministic there), is a divergent replay: the side that sees it must
 * fail with TETHER_EDIVERGED, found by the core itself (end_div_checks).
 * Nothing is excused: a seed that does not end as expected fails.
 *
 * A failing seed prints `seed N: FAIL <reason>` and the command that replays
 * it with a trace: `sim --seed N -v`; one that kills the simulator (a failed
 * assert, a sanitizer's report) prints `sim: died in seed N` and the same
 * command on stderr.  Run `sim --help` for the options.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/session.h"
#include "tether/tether.h"

typedef uint64_t ns_t;
#define NEVER UINT64_MAX
#define US ((ns_t)1000)
#define MS ((ns_t)1000000)
#define SEC ((ns_t)1000000000)
#define LIMIT (3600 * SEC) /* virtual time budget per seed */
#define MAXSEG 512
#define MAXDG 4096
#define MAXFAULTS 16
#define MAXCRASH 8
#define NO_OFF UINT64_MAX
#define MAXCHUNK (64 * 1024)
#define ECHO_MAX (64 * 1024)

/* ---- randomness -------------------------------------------------------- */

struct rng {
  uint64_t s;
};

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t rnext(struct rng *r) { return mix64(r->s += 0x9E3779B97F4A7C15ull); }
static uint64_t rbelow(struct rng *r, uint64_t n) { return n ? rnext(r) % n : 0; }
static uint64_t rrange(struct rng *r, uint64_t lo, uint64_t hi) {
  return hi <= lo ? lo : lo + rbelow(r, hi - lo + 1);
}
static bool rchance(struct rng *r, unsigned percent) { return rbelow(r, 100) < percent; }
/* Log-uniform in [lo, hi]: small values as likely as large ones. */
static uint64_t rlog(struct rng *r, uint64_t lo, uint64_t hi) {
  if (lo < 1)
    lo = 1;
  if (hi <= lo)
    return lo;
  int bits_hi = 64 - __builtin_clzll(hi);
  int bits_lo = 64 - __builtin_clzll(lo);
  int b = (int)rrange(r, (uint64_t)bits_lo, (uint64_t)bits_hi);
  uint64_t top = b >= 64 ? UINT64_MAX : ((uint64_t)1 << b) - 1;
  uint64_t bot = (uint64_t)1 << (b - 1);
  if (top > hi)
    top = hi;
  if (bot < lo)
    bot = lo;
  return rrange(r, bot, top);
}

/* ---- the streams --------------------------------------------------------- */

/* Bytes [off, off + n) of the stream with key `key`: byte i is byte i % 8 of
 * a hash of (key, i / 8). */
static uint64_t stream_word(uint64_t key, uint64_t word) {
  return mix64(key ^ word * 0xD6E8FEB86659FD93ull);
}

static void stream_fill(uint64_t key, uint64_t off, uint8_t *p, size_t n) {
  size_t i = 0;
  for (; i < n && ((off + i) & 7); i++)
    p[i] = (uint8_t)(stream_word(key, (off + i) >> 3) >> (8 * ((off + i) & 7)));
  for (; n - i >= 8; i += 8) {
    uint64_t w = stream_word(key, (off + i) >> 3);
    for (unsigned b = 0; b < 8; b++)
      p[i + b] = (uint8_t)(w >> (8 * b));
  }
  for (; i < n; i++)
    p[i] = (uint8_t)(stream_word(key, (off + i) >> 3) >> (8 * ((off + i) & 7)));
}

/* Index of the first byte that differs from the stream, or n. */
static size_t stream_check(uint64_t key, uint64_t off, const uint8_t *p, size_t n) {
  uint8_t tmp[4096];
  for (size_t done = 0; done < n;) {
    size_t k = n - done < sizeof(tmp) ? n - done : sizeof(tmp);
    stream_fill(key, off + done, tmp, k);
    if (memcmp(tmp, p + done, k) != 0) {
      for (size_t j = 0; j < k; j++)
        if (tmp[j] != p[done + j])
          return done + j;
    }
    done += k;
  }
  return n;
}

/* ---- scenario ------------------------------------------------------------ */

enum mode { M_ONEWAY, M_ECHO, M_BIDIR };
static const char *mode_name[] = {"one-way", "echo", "bidirectional"};

enum fault_kind { F_CUT, F_BLACKHOLE, F_UDP_OUTAGE };
enum cut_kind { CUT_RST_BOTH, CUT_RST_CLIENT, CUT_RST_SERVER, CUT_SILENT };

/* --restore: side 0, 1, or 2 (both) crash, are down for `down` and restart
 * from their last committed snapshots. */
struct crash {
  ns_t at, down;
  int who;
  bool silent; /* the peer sees no reset: only its timeouts tell */
};

struct fault {
  enum fault_kind kind;
  ns_t at, dur;
  int sub;
  bool purge; /* a cut also loses what sits in the receive queues */
};

struct scen {
  enum mode mode;
  bool giveup;             /* permanent outage during the transfer */
  unsigned giveup_permille; /* ... once the client wrote this much of its stream */
  ns_t lat;                /* TCP one-way latency */
  ns_t udp_lat, udp_jitter;
  unsigned udp_loss; /* percent */
  bool udp_blocked;
  uint64_t ps_per_byte; /* serialization time */
  size_t mss;
  ns_t connect_timeout;
  ns_t rto_extra; /* TCP's own recovery delay after a black hole */
  struct core_config cfg;
  unsigned udp_dup; /* percent of datagrams delivered twice (replays) */
  int early_closer; /* -1, or the side whose application closes before EOF */
  unsigned early_permille; /* ... once it read this much of the peer's stream */
  struct fault faults[MAXFAULTS];
  int nfaults;
  /* --restore: crashes and restores from snapshots */
  struct crash crashes[MAXCRASH];
  int ncrash;
  bool diverge;             /* one restored application writes a different byte */
  ns_t snap_every[2];       /* mean interval between a side's snapshots */
  ns_t commit_max[2];       /* most a snapshot takes to become durable */
};

/* ---- the network --------------------------------------------------------- */

struct seg {
  ns_t at;
  uint32_t len;
  bool fin;
};

/* One direction of a TCP connection: [rcvq | in flight | sndq], FIFO. */
struct pipe {
  uint8_t *buf;
  size_t cap, head, len;
  size_t rcvq, inflight;
  struct seg segs[MAXSEG];
  unsigned seg_head, seg_n;
  size_t sndbuf, rcvbuf;
  bool fin_queued, fin_sent, fin_arrived;
  ns_t next_tx;
};

enum end_state { E_PENDING, E_OPEN, E_CLOSED };

/* What an application snapshot records besides the core: where its streams
 * stand is in the core (the writer's next offset is `sent`, the reader's
 * `delivered`); the rest is how far the application got. */
struct app_state {
  bool wr_shut;
  uint64_t wr_final;
  bool got_epipe;
  bool rd_eof;
  bool app_closed;
  ns_t close_at;
  ns_t through_at;
};

/* A snapshot: a deep copy of the core (retention ring, replay log) as
 * tether_snapshot captures it, plus the application's state. */
struct snap {
  bool valid;
  ns_t taken_at;
  struct core_session c;
  struct app_state app;
};

/* End 0 is the client (writes p[0], reads p[1]); end 1 the server. */
struct conn {
  int id;
  struct pipe p[2];
  ns_t dead_at;   /* segments arriving at or after this are lost */
  ns_t err_at[2]; /* when end i's socket reports an error */
  enum end_state end[2];
  bool graceful[2]; /* end i closed its socket normally: its FIN still goes out */
  struct conn *next;
};

struct dg {
  ns_t at;
  int to;
  struct core_ctl ctl;
};

struct side {
  const char *name;
  struct core_session c;
  bool live; /* the core exists (not yet DONE) */
  bool done; /* the core said DONE */
  struct conn *conn;
  size_t sndbuf, rcvbuf;
  /* writer application */
  uint64_t wr_key, wr_total;
  bool wr_shut;
  uint64_t wr_final; /* sent when the application shut down */
  bool got_epipe;
  ns_t wr_next, wr_think;
  size_t wr_chunk;
  bool shut_early; /* one-way server: shuts down at once */
  /* reader application */
  uint64_t rd_key;
  bool rd_eof;
  ns_t rd_next, rd_think;
  size_t rd_chunk;
  /* close */
  bool app_closed;
  ns_t close_at, close_delay;
  /* outcome */
  ns_t failed_at, suspended_at_fail; /* CORE_ACT_FAILED: when, and since when suspended */
  ns_t failed_at_any;                 /* when the core was first seen FAILED */
  ns_t through_at; /* when the application was through (EOF read, writes shut down) */
  unsigned suspends, resumes;
  /* --restore */
  uint64_t rd_off;   /* the reader application's next expected offset */
  uint64_t hi_sent;  /* the most this side's stream ever had written */
  bool ever_shut;    /* some incarnation of the application shut down ... */
  uint64_t ever_final; /* ... at this offset */
  struct snap committed, pending;
  ns_t next_snap_at, commit_at;
  bool down;         /* crashed, not yet restarted */
  ns_t down_until;
  bool crash_silent;
  uint64_t div_off;  /* NO_OFF, or the offset the restored writer changes */
  unsigned crashes;
};

/* A redial, as lib/engine/client.c runs it: TCP connect (one round trip),
 * then ResumeHello, Challenge, Finish (client state), Accept (server state). */
enum phase { P_CONNECT, P_HELLO, P_CHALLENGE, P_FINISH, P_ACCEPT, P_REJECT };
struct attempt {
  bool active;
  int id;
  enum phase phase; /* the message in flight */
  ns_t next_at, deadline;
  bool lost;
  struct core_resume_state cstate, sstate;
  struct conn *conn;
  int reject_err; /* P_REJECT: what the Reject's code tells the client */
};

static struct sim {
  uint64_t seed;
  int verbose;
  bool linger_check;
  bool short_backoff;
  bool tight_timeouts;
  struct rng r;
  struct scen sc;
  ns_t now;
  struct side s[2];
  struct conn *conns;
  int nconn;
  struct dg udp[MAXDG];
  int nudp;
  struct attempt att[2]; /* att[0] the older */
  int finishing;         /* id of the attempt committed to resuming, 0: none */
  int attempt_ids;
  bool outage;
  ns_t outage_at;
  int next_fault;
  bool fail;
  char why[512];
  uint64_t steps;
  uint8_t scratch[MAXCHUNK];
  unsigned resumes_total;
  bool giveup_checked; /* the give-up expectation was verified */
  /* --restore */
  bool restore;
  bool force_diverge;
  int end_div;           /* -1, or the side that saw its peer's restored
                            application end its stream elsewhere than an
                            earlier incarnation did (check_invariants) */
  int next_crash;
  int div_writer;        /* -1, or the side whose restored application diverges */
  uint64_t div_at;       /* ... at this offset of its stream */
  bool div_written;      /* the divergent byte went into the transport */
  bool div_escaped;      /* the reader's replay check was abandoned before it */
  int div_detected[2];   /* side i saw TETHER_EDIVERGED (1: itself, 2: told) */
  uint64_t replayed[2];  /* bytes side i checked instead of delivering */
} S;

/* Across seeds, to show what the runs exercised. */
static struct {
  uint64_t seeds_resumed, resumes, resent, giveups, early, epipe, delivered;
  uint64_t crashes, restores, both_crashes, replayed, rolled_back;
  uint64_t end_div, end_div_both, closed_reopened;
  uint64_t div_injected, div_written, div_reader, div_both, div_escaped, div_unwritten;
  uint64_t div_writer_err[4]; /* the writer ended: ESESSIONGONE, EGIVEUP, other error, not failed */
} stats;

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...) {
  if (!S.verbose)
    return;
  va_list ap;
  va_start(ap, fmt);
  printf("[%5" PRIu64 ".%06" PRIu64 "] ", S.now / SEC, S.now % SEC / 1000);
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
}

static void sim_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sim_fail(const char *fmt, ...) {
  if (S.fail)
    return;
  S.fail = true;
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(S.why, sizeof(S.why), "t=%.6fs: ", (double)S.now / 1e9);
  vsnprintf(S.why + n, sizeof(S.why) - (size_t)n, fmt, ap);
  va_end(ap);
  if (S.verbose)
    printf("*** FAIL: %s\n", S.why);
}

/* tether_strerror/tether_err_name live in the engine; the sim links only the
 * core, so it names the codes itself from the same X-macro. */
static const char *err_name(int err) {
  static char buf[32];
  switch (err) {
#define SIM_ERR_CASE_(name, value, kind, msg) \
  case name: return #name;
    TETHER_ERROR_MAP(SIM_ERR_CASE_)
#undef SIM_ERR_CASE_
  case -EPIPE: return "EPIPE";
  case -EAGAIN: return "EAGAIN";
  case -EINVAL: return "EINVAL";
  case -ENOMEM: return "ENOMEM";
  default: snprintf(buf, sizeof(buf), "error %d", err); return buf;
  }
}

static const char *state_name(enum core_state st) {
  switch (st) {
  case CORE_CONNECTED: return "CONNECTED";
  case CORE_SUSPENDED: return "SUSPENDED";
  case CORE_CLOSED: return "CLOSED";
  case CORE_FAILED: return "FAILED";
  }
  return "?";
}

/* ---- link state ---------------------------------------------------------- */

static bool tcp_up(ns_t t) {
  if (S.outage && t >= S.outage_at)
    return false;
  for (int i = 0; i < S.sc.nfaults; i++) {
    const struct fault *f = &S.sc.faults[i];
    if (f->kind == F_BLACKHOLE && t >= f->at && t < f->at + f->dur)
      return false;
  }
  return true;
}

static bool udp_up(ns_t t) {
  if (S.sc.udp_blocked || !tcp_up(t))
    return false;
  for (int i = 0; i < S.sc.nfaults; i++) {
    const struct fault *f = &S.sc.faults[i];
    if (f->kind == F_UDP_OUTAGE && t >= f->at && t < f->at + f->dur)
      return false;
  }
  return true;
}

/* The first time >= t at which TCP gets through again. */
static ns_t heal_time(ns_t t) {
  for (int guard = 0; guard < 64 && !tcp_up(t); guard++) {
    if (S.outage && t >= S.outage_at)
      return NEVER;
    for (int i = 0; i < S.sc.nfaults; i++) {
      const struct fault *f = &S.sc.faults[i];
      if (f->kind == F_BLACKHOLE && t >= f->at && t < f->at + f->dur)
        t = f->at + f->dur;
    }
  }
  return t;
}

static ns_t add_sat(ns_t a, ns_t b) { return a > NEVER - b ? NEVER : a + b; }

/* When a packet sent now (e.g. a reset) reaches the other end. */
static ns_t arrival_after(ns_t t) { return add_sat(heal_time(t), S.sc.lat); }

/* TCP-level detection of a dead path (user timeout / keepalive). */
static ns_t tcp_detect_delay(void) {
  ns_t sus = S.sc.cfg.suspend_ns;
  ns_t ka = 4 * (sus < SEC ? SEC : sus);
  return rrange(&S.r, sus, ka);
}

/* ---- pipes and connections ----------------------------------------------- */

static size_t pipe_outq(const struct pipe *p) { return p->len - p->rcvq; }
static size_t pipe_sndq(const struct pipe *p) { return p->len - p->rcvq - p->inflight; }
static size_t pipe_space(const struct pipe *p) {
  size_t q = pipe_outq(p);
  return q >= p->sndbuf ? 0 : p->sndbuf - q;
}

static void pipe_init(struct pipe *p, size_t sndbuf, size_t rcvbuf) {
  memset(p, 0, sizeof(*p));
  p->sndbuf = sndbuf;
  p->rcvbuf = rcvbuf;
  p->cap = sndbuf + rcvbuf;
  p->buf = malloc(p->cap);
  if (!p->buf) {
    fprintf(stderr, "sim: out of memory\n");
    exit(2);
  }
}

static void pipe_write(struct pipe *p, const uint8_t *d, size_t n) {
  size_t tail = (p->head + p->len) % p->cap;
  size_t first = p->cap - tail < n ? p->cap - tail : n;
  memcpy(p->buf + tail, d, first);
  memcpy(p->buf, d + first, n - first);
  p->len += n;
}

static void pipe_read(struct pipe *p, uint8_t *out, size_t n) {
  size_t first = p->cap - p->head < n ? p->cap - p->head : n;
  memcpy(out, p->buf + p->head, first);
  memcpy(out + first, p->buf, n - first);
  p->head = (p->head + n) % p->cap;
  p->len -= n;
  p->rcvq -= n;
}

/* Nothing in flight will arrive any more.  The bytes stay in the sender's
 * kernel, unacknowledged (they still count in its SIOCOUTQ), until its socket
 * reports the error. */
static void pipe_freeze(struct pipe *p) { p->seg_n = 0; }

/* The receiver's kernel lost its receive queue. */
static void pipe_drop_rcvq(struct pipe *p) {
  p->head = (p->head + p->rcvq) % p->cap;
  p->len -= p->rcvq;
  p->rcvq = 0;
}

static struct conn *conn_new(void) {
  struct conn *k = calloc(1, sizeof(*k));
  if (!k) {
    fprintf(stderr, "sim: out of memory\n");
    exit(2);
  }
  k->id = ++S.nconn;
  pipe_init(&k->p[0], S.s[0].sndbuf, S.s[1].rcvbuf);
  pipe_init(&k->p[1], S.s[1].sndbuf, S.s[0].rcvbuf);
  k->dead_at = NEVER;
  k->err_at[0] = k->err_at[1] = NEVER;
  k->end[0] = k->end[1] = E_PENDING;
  k->next = S.conns;
  S.conns = k;
  return k;
}

static bool conn_unused(const struct conn *k) {
  return k->end[0] == E_CLOSED && k->end[1] == E_CLOSED;
}

/* Frees connections no end uses any more. */
static void conn_gc(void) {
  for (struct conn **pp = &S.conns; *pp;) {
    struct conn *k = *pp;
    bool busy = k->p[0].seg_n || k->p[1].seg_n;
    if (conn_unused(k) && (!busy || k->dead_at <= S.now) && k != S.att[0].conn && k != S.att[1].conn) {
      *pp = k->next;
      free(k->p[0].buf);
      free(k->p[1].buf);
      free(k);
    } else {
      pp = &k->next;
    }
  }
}

static void conn_free_all(void) {
  while (S.conns) {
    struct conn *k = S.conns;
    S.conns = k->next;
    free(k->p[0].buf);
    free(k->p[1].buf);
    free(k);
  }
}

/* End i lets go of its socket: a reset (the engine sets SO_LINGER {1,0}) or,
 * for a finished session or a handshake socket, an orderly close. */
static void conn_close_end(struct conn *k, int i, bool graceful) {
  if (k->end[i] == E_CLOSED)
    return;
  vlog("conn %d: %s end closes%s", k->id, i ? "server" : "client", graceful ? "" : " with a reset");
  k->end[i] = E_CLOSED;
  if (k->dead_at <= S.now)
    return;
  if (graceful) {
    k->graceful[i] = true;
    k->p[i].fin_queued = true;
    return;
  }
  /* The reset reaches the peer one latency later (after a black hole heals);
   * segments that arrive before it are still delivered. */
  ns_t t = arrival_after(S.now);
  if (t < k->dead_at)
    k->dead_at = t;
  if (t < k->err_at[1 - i])
    k->err_at[1 - i] = t;
}

/* The connection dies on the path: nothing more is delivered. */
static void conn_kill(struct conn *k, ns_t err0, ns_t err1, bool purge) {
  if (k->dead_at > S.now)
    k->dead_at = S.now;
  if (err0 < k->err_at[0])
    k->err_at[0] = err0;
  if (err1 < k->err_at[1])
    k->err_at[1] = err1;
  pipe_freeze(&k->p[0]);
  pipe_freeze(&k->p[1]);
  if (purge) {
    pipe_drop_rcvq(&k->p[0]);
    pipe_drop_rcvq(&k->p[1]);
  }
}

/* ---- the side channel ---------------------------------------------------- */

static void udp_send(int from) {
  struct side *sd = &S.s[from];
  struct core_ctl ctl;
  core_build_ctl(&sd->c, S.now, &ctl); /* also schedules the next one */
  if (!udp_up(S.now) || rchance(&S.r, S.sc.udp_loss)) {
    vlog("%s: ctl #%" PRIu64 " lost", sd->name, ctl.seq);
    return;
  }
  if (S.nudp >= MAXDG) {
    sim_fail("datagram queue overflow");
    return;
  }
  struct dg *d = &S.udp[S.nudp++];
  d->at = S.now + S.sc.udp_lat + rbelow(&S.r, S.sc.udp_jitter + 1);
  d->to = 1 - from;
  d->ctl = ctl;
  if (S.sc.udp_dup && rchance(&S.r, S.sc.udp_dup) && S.nudp < MAXDG) {
    struct dg *e = &S.udp[S.nudp++]; /* a replayed copy, later */
    *e = *d;
    e->at += rbelow(&S.r, 2 * S.sc.cfg.heartbeat_ns + 1);
  }
  vlog("%s: ctl #%" PRIu64 " delivered=%" PRIu64 " sent=%" PRIu64 "%s%s%s%s%s", sd->name,
       ctl.seq, ctl.delivered, ctl.sent, ctl.write_closed ? " WR_CLOSED" : "",
       ctl.read_closed ? " RD_CLOSED" : "", ctl.ack_write_closed ? " ACK_WR" : "",
       ctl.ack_read_closed ? " ACK_RD" : "", ctl.want_reply ? " WANT_REPLY" : "");
}

/* ---- sessions ------------------------------------------------------------ */

static void suspend_side(int i, const char *why) {
  struct side *sd = &S.s[i];
  if (!sd->live)
    return;
  if (sd->c.state != CORE_CONNECTED) {
    /* A closed session's socket failing only matters to a client that may
     * owe the server its final state (core: CORE_LINGER_REDIAL). */
    if (sd->c.state == CORE_CLOSED)
      core_on_transport_lost(&sd->c, S.now);
    if (sd->conn) {
      vlog("%s: transport lost (%s) while %s", sd->name, why, state_name(sd->c.state));
      conn_close_end(sd->conn, i, false);
      sd->conn = NULL;
    }
    return;
  }
  core_on_transport_lost(&sd->c, S.now);
  vlog("%s: transport lost (%s) -> %s", sd->name, why, state_name(sd->c.state));
  if (sd->c.state == CORE_SUSPENDED)
    sd->suspends++;
  if (sd->conn) {
    conn_close_end(sd->conn, i, false);
    sd->conn = NULL;
  }
}

static void side_free(int i) {
  struct side *sd = &S.s[i];
  vlog("%s: DONE, freed", sd->name);
  if (sd->conn) {
    conn_close_end(sd->conn, i, sd->c.state == CORE_CLOSED);
    sd->conn = NULL;
  }
  sd->live = false;
  core_clear(&sd->c);
}

static void attempt_start(void);

/* Engine settle(): a session the application let go is freed once the core
 * says DONE (CLOSED and past TIME_WAIT).  The sim keeps a failed core around
 * for the final checks (nothing can happen to it any more). */
static bool release_if_done(int i) {
  struct side *sd = &S.s[i];
  if (!sd->live || !sd->done)
    return false;
  side_free(i);
  return true;
}

/* Engine: flush_pending_locked.  Returns true on progress. */
static bool flush(int i) {
  struct side *sd = &S.s[i];
  struct core_session *c = &sd->c;
  bool progress = false;
  if (!sd->live || !sd->conn || c->state == CORE_FAILED)
    return false;
  struct pipe *out = &sd->conn->p[i];
  const uint8_t *p;
  size_t n;
  for (;;) {
    if (c->tx_pos < c->sent && c->tx_pos < c->ret.base) {
      /* core_pending() would read outside the retained bytes. */
      sim_fail("%s: resend from %" PRIu64 " but retention starts at %" PRIu64, sd->name,
               c->tx_pos, c->ret.base);
      return false;
    }
    if ((n = core_pending(c, &p)) == 0)
      break;
    if (S.now >= sd->conn->err_at[i]) {
      suspend_side(i, "send error during resend");
      return true;
    }
    size_t w = pipe_space(out);
    if (w > n)
      w = n;
    if (w == 0)
      break;
    pipe_write(out, p, w);
    core_on_flushed(c, w);
    progress = true;
  }
  return progress;
}

/* The application's write, as tether_write does it. */
static bool app_write(int i) {
  struct side *sd = &S.s[i];
  struct core_session *c = &sd->c;
  if (!sd->live || sd->wr_shut || S.now < sd->wr_next || c->state == CORE_FAILED)
    return false;
  uint64_t limit = sd->wr_total;
  if (S.sc.mode == M_ECHO && i == 1 && c->delivered < limit)
    limit = c->delivered; /* echo what was read */
  bool echo_done = S.sc.mode == M_ECHO && i == 1 && sd->rd_eof && c->sent >= c->delivered;
  if (c->sent >= sd->wr_total || echo_done) {
    /* Done writing.  An echo server, and a one-way server unless it shuts
     * down at once, shut down when they read EOF. */
    if (i == 1 && S.sc.mode != M_BIDIR && !sd->shut_early && !sd->rd_eof)
      return false;
    vlog("%s: app shuts down writing at %" PRIu64, sd->name, c->sent);
    core_shutdown(c, S.now);
    sd->wr_shut = true;
    sd->wr_final = c->sent;
    sd->ever_shut = true;
    sd->ever_final = c->sent;
    return true;
  }
  if (c->sent >= limit)
    return false;
  int rc = core_write_check(c);
  if (rc == -EAGAIN && c->state == CORE_CONNECTED && sd->conn) {
    flush(i);
    rc = core_write_check(c);
  }
  if (rc == -EAGAIN)
    return false;
  if (rc == -EPIPE && core_half_closed(c->peer_rd) && !core_half_closed(c->wr)) {
    /* The peer's application closed: the writer gives up writing. */
    vlog("%s: write: EPIPE (peer closed) at %" PRIu64, sd->name, c->sent);
    sd->got_epipe = true;
    core_shutdown(c, S.now);
    sd->wr_shut = true;
    sd->wr_final = c->sent;
    sd->ever_shut = true;
    sd->ever_final = c->sent;
    return true;
  }
  if (rc < 0) {
    if (c->state != CORE_FAILED)
      sim_fail("%s: write refused with %s in state %s", sd->name, err_name(rc),
               state_name(c->state));
    return false;
  }
  if (!sd->conn) {
    sim_fail("%s: writable (CONNECTED) without a transport", sd->name);
    return false;
  }
  struct conn *k = sd->conn;
  if (S.now >= k->err_at[i]) {
    suspend_side(i, "send error");
    return true;
  }
  struct pipe *out = &k->p[i];
  size_t len = (size_t)rrange(&S.r, 1, sd->wr_chunk);
  if (len > limit - c->sent)
    len = (size_t)(limit - c->sent);
  size_t room = core_write_room(c);
  if (room < len) {
    core_trim_inflight(c, pipe_outq(out));
    room = core_write_room(c);
  }
  size_t n = len < room ? len : room;
  size_t space = pipe_space(out);
  size_t tcp = len < space ? len : space;
  if (core_half_closed(c->peer_rd) && c->sent < c->peer_delivered_max &&
      c->peer_delivered_max - c->sent < tcp)
    tcp = (size_t)(c->peer_delivered_max - c->sent); /* a short write: see core_write_room */
  if (n < tcp) {
    sim_fail("%s: retention blocks the writer earlier than TCP would (room %zu, kernel "
             "accepts %zu; sent %" PRIu64 " retained from %" PRIu64 ", outq %zu)",
             sd->name, room, tcp, c->sent, c->ret.base, pipe_outq(out));
    return false;
  }
  if (n == 0)
    return false;
  if (core_reserve(c, n) < 0) {
    sim_fail("%s: core_reserve(%zu) failed", sd->name, n);
    return false;
  }
  size_t w = n < space ? n : space;
  if (w == 0)
    return false;
  stream_fill(sd->wr_key, c->sent, S.scratch, w);
  if (sd->div_off != NO_OFF && sd->div_off >= c->sent && sd->div_off < c->sent + w) {
    S.scratch[sd->div_off - c->sent] ^= 0x5a;
    vlog("%s: app writes a different byte at %" PRIu64, sd->name, sd->div_off);
    sd->div_off = NO_OFF;
    S.div_written = true;
  }
  pipe_write(out, S.scratch, w);
  core_on_written(c, S.scratch, w);
  if (c->sent > sd->hi_sent)
    sd->hi_sent = c->sent;
  sd->wr_next = S.now + (sd->wr_think ? rbelow(&S.r, sd->wr_think) : 0);
  return true;
}

static void check_eof(int i) {
  struct side *sd = &S.s[i];
  const struct side *peer = &S.s[1 - i];
  sd->rd_eof = true;
  vlog("%s: app reads EOF at %" PRIu64, sd->name, sd->c.delivered);
  if (S.restore && sd->app_closed)
    return; /* closed early: the engine only drains what arrives */
  if (S.restore) {
    /* The peer may have rolled back since: any incarnation's shutdown
     * counts (they all shut down at the same offset). */
    if (!peer->ever_shut)
      sim_fail("%s: EOF at %" PRIu64 " but the peer's application never shut down", sd->name,
               sd->c.delivered);
    else if (sd->c.delivered != peer->ever_final || sd->c.peer_wr_end != peer->ever_final)
      sim_fail("%s: EOF after %" PRIu64 " bytes (peer_wr_end %" PRIu64 "), the peer wrote %" PRIu64,
               sd->name, sd->c.delivered, sd->c.peer_wr_end, peer->ever_final);
    return;
  }
  if (!peer->wr_shut)
    sim_fail("%s: EOF at %" PRIu64 " but the peer's application never shut down", sd->name,
             sd->c.delivered);
  else if (sd->c.delivered != peer->wr_final || sd->c.peer_wr_end != peer->wr_final)
    sim_fail("%s: EOF after %" PRIu64 " bytes (peer_wr_end %" PRIu64 "), the peer wrote %" PRIu64,
             sd->name, sd->c.delivered, sd->c.peer_wr_end, peer->wr_final);
}

/* Engine: take_replay_locked.  While the peer replays what the application
 * already has (after the peer's rollback), the engine reads it from the
 * socket itself, whatever the application does, and checks it instead of
 * delivering it; on a difference it tells the peer at once. */
static bool take_replay(int i) {
  struct side *sd = &S.s[i];
  struct core_session *c = &sd->c;
  uint64_t pending = core_replay_pending(c);
  if (!sd->live || !sd->conn || pending == 0 ||
      (c->state != CORE_CONNECTED && c->state != CORE_CLOSED))
    return false;
  struct conn *k = sd->conn;
  if (S.now >= k->err_at[i]) {
    suspend_side(i, "receive error during a replay");
    return true;
  }
  struct pipe *in = &k->p[1 - i];
  if (in->rcvq == 0) {
    if (!in->fin_arrived)
      return false;
    suspend_side(i, "EOF during a replay");
    return true;
  }
  size_t n = in->rcvq < sizeof(S.scratch) ? in->rcvq : sizeof(S.scratch);
  if (n > pending)
    n = (size_t)pending;
  pipe_read(in, S.scratch, n);
  S.replayed[i] += n;
  if (core_on_replayed(c, S.scratch, n) < 0) {
    vlog("%s: the replay differs from what was delivered: FAILED %s", sd->name,
         err_name(c->error));
    S.div_detected[i] = 1;
    udp_send(i);
  }
  return true;
}

/* The application's read, as tether_read does it. */
static bool app_read(int i) {
  struct side *sd = &S.s[i];
  struct core_session *c = &sd->c;
  if (!sd->live || sd->rd_eof || S.now < sd->rd_next)
    return false;
  if (core_at_eof(c)) {
    check_eof(i);
    return true;
  }
  if (c->state == CORE_FAILED)
    return false;
  if (!sd->conn || (c->state != CORE_CONNECTED && c->state != CORE_CLOSED))
    return false;
  if (core_replay_pending(c))
    return false; /* take_replay() first */
  struct conn *k = sd->conn;
  if (S.now >= k->err_at[i]) {
    suspend_side(i, "receive error");
    return true;
  }
  if (S.sc.mode == M_ECHO && i == 1 && !sd->wr_shut && c->delivered - c->sent >= ECHO_MAX)
    return false; /* the echo backlog is full */
  struct pipe *in = &k->p[1 - i];
  if (in->rcvq > 0) {
    size_t n = (size_t)rrange(&S.r, 1, sd->rd_chunk);
    if (n > in->rcvq)
      n = in->rcvq;
    pipe_read(in, S.scratch, n);
    size_t bad = stream_check(sd->rd_key, c->delivered, S.scratch, n);
    if (bad < n) {
      sim_fail("%s: delivered byte at offset %" PRIu64 " is wrong (read of %zu at %" PRIu64 ")",
               sd->name, c->delivered + bad, n, c->delivered);
      return false;
    }
    if (core_half_closed(c->peer_wr) && c->delivered + n > c->peer_wr_end) {
      sim_fail("%s: delivering past the peer's end %" PRIu64, sd->name, c->peer_wr_end);
      return false;
    }
    if (S.restore && sd->rd_off != c->delivered) {
      sim_fail("%s: the application expects offset %" PRIu64 ", the core delivers at %" PRIu64,
               sd->name, sd->rd_off, c->delivered);
      return false;
    }
    core_on_delivered(c, S.scratch, n);
    sd->rd_off += n;
    if (core_ack_due(c))
      udp_send(i);
    sd->rd_next = S.now + (sd->rd_think ? rbelow(&S.r, sd->rd_think) : 0);
    return true;
  }
  if (in->fin_arrived) {
    if (core_eof_confirmed(c)) {
      check_eof(i);
      return true;
    }
    suspend_side(i, "EOF without a close");
    return true;
  }
  return false;
}

/* ---- the resume handshake ------------------------------------------------ */

static void attempt_end(struct attempt *a, const char *why) {
  vlog("redial #%d: ends (%s)", a->id, why);
  if (a->conn && a->conn->end[0] == E_PENDING)
    conn_close_end(a->conn, 0, true); /* the handshake socket just closes */
  if (S.finishing == a->id)
    S.finishing = 0;
  memset(a, 0, sizeof(*a));
  if (!S.att[0].active && S.att[1].active) {
    S.att[0] = S.att[1];
    memset(&S.att[1], 0, sizeof(S.att[1]));
  }
}

/* client_redial(): at most two attempts; a new one replaces the older only
 * if that one is still connecting. */
static void attempt_start(void) {
  if (S.att[0].active && S.att[1].active) {
    if (S.att[0].phase != P_CONNECT)
      return;
    attempt_end(&S.att[0], "replaced by a new attempt");
  }
  struct attempt *a = S.att[0].active ? &S.att[1] : &S.att[0];
  memset(a, 0, sizeof(*a));
  a->active = true;
  a->id = ++S.attempt_ids;
  a->phase = P_CONNECT;
  a->deadline = S.now + S.sc.connect_timeout;
  a->next_at = S.now + 2 * S.sc.lat;
  vlog("redial #%d: connecting", a->id);
}

/* Side i (the reader of a divergent replay) resumed: a replay check still
 * pending across the divergent byte must go on after it. */
static void note_resume(int i, uint64_t rx_before, uint64_t delivered_before) {
  const struct core_session *c = &S.s[i].c;
  if (S.div_writer != 1 - i || !S.div_written)
    return;
  if (rx_before <= S.div_at && S.div_at < delivered_before && c->rx_pos > S.div_at) {
    vlog("%s: resumed with its replay check at %" PRIu64 " abandoned: the divergent byte at "
         "%" PRIu64 " will not be checked (resumes at %" PRIu64 ")",
         S.s[i].name, rx_before, S.div_at, c->rx_pos);
    S.div_escaped = true;
  }
}

static void attempt_step(struct attempt *a) {
  struct side *cl = &S.s[0], *sv = &S.s[1];
  if (!tcp_up(S.now) || !tcp_up(S.now - S.sc.lat) || sv->down) {
    a->lost = true; /* the handshake stalls until connect_timeout */
    a->next_at = NEVER;
    vlog("redial #%d: handshake message %d lost", a->id, a->phase);
    return;
  }
  a->next_at = S.now + S.sc.lat;
  switch (a->phase) {
  case P_CONNECT: /* connected; ResumeHello goes out */
    a->phase = P_HELLO;
    return;
  case P_HELLO: /* ResumeHello reaches the server */
    a->phase = sv->live ? P_CHALLENGE : P_REJECT;
    a->reject_err = TETHER_ESESSIONGONE;
    return;
  case P_CHALLENGE: /* the client answers with its state */
    if (!cl->live || (cl->c.state != CORE_SUSPENDED && cl->c.state != CORE_CLOSED)) {
      attempt_end(a, "client no longer suspended");
      return;
    }
    if (S.finishing && S.finishing != a->id) {
      attempt_end(a, "another attempt is resuming");
      return;
    }
    S.finishing = a->id;
    core_resume_state(&cl->c, &a->cstate);
    a->cstate.rcvbuf_max = cl->rcvbuf;
    a->phase = P_FINISH;
    return;
  case P_FINISH: /* ResumeFinish reaches the server */
    /* A CLOSED server session (TIME_WAIT) still answers: the client learns
     * the final state through the handshake. */
    /* Engine: listener_resume_authenticated() tells irreconcilable streams
     * as such, other failures as a session gone. */
    a->reject_err = TETHER_ESESSIONGONE;
    if (sv->live && sv->c.state == CORE_FAILED &&
        (sv->c.error == TETHER_EDIVERGED || sv->c.error == TETHER_EWINDOW))
      a->reject_err = sv->c.error;
    if (!sv->live || sv->c.state == CORE_FAILED) {
      a->phase = P_REJECT;
      return;
    }
    if (sv->c.state == CORE_CONNECTED)
      suspend_side(1, "peer reconnected");
    core_resume_state(&sv->c, &a->sstate);
    a->sstate.rcvbuf_max = sv->rcvbuf;
    if (core_resume_check(&a->sstate, &a->cstate) == TETHER_EDIVERGED) {
      /* Engine: on_resume_finish() fails the session and rejects it with
       * DIVERGED (a restored client ends its stream elsewhere than the
       * server knows it ends). */
      vlog("server: the two streams' ends disagree after a rollback: FAILED TETHER_EDIVERGED");
      core_fail(&sv->c, TETHER_EDIVERGED);
      S.div_detected[1] = 1;
      a->reject_err = TETHER_EDIVERGED;
      a->phase = P_REJECT;
      return;
    }
    a->conn = conn_new();
    bool was_closed = sv->c.state == CORE_CLOSED;
    if (was_closed) {
      /* Engine: session_attach() lets a CLOSED session learn the client's
       * final state; a client restored behind the end reopens it. */
      uint64_t rx0 = sv->c.rx_pos, dl0 = sv->c.delivered;
      core_on_resumed(&sv->c, S.now, &a->cstate);
      if (sv->c.state == CORE_CONNECTED) {
        vlog("server: CLOSED session reopened by a client restored behind its end");
        stats.closed_reopened++;
        note_resume(1, rx0, dl0);
        a->conn->end[1] = E_OPEN;
        sv->conn = a->conn;
        sv->resumes++;
        flush(1);
      } else {
        vlog("server: %s after retiring; resume not needed", state_name(sv->c.state));
        conn_close_end(a->conn, 1, true);
      }
    } else if (sv->c.state == CORE_SUSPENDED) {
      uint64_t rx0 = sv->c.rx_pos, dl0 = sv->c.delivered;
      int rc = core_on_resumed(&sv->c, S.now, &a->cstate);
      if (rc == 0)
        note_resume(1, rx0, dl0);
      if (rc < 0) {
        sim_fail("server: core_on_resumed refused the client's state (delivered %" PRIu64
                 " sent %" PRIu64 "): %s; server sent %" PRIu64 " retained from %" PRIu64,
                 a->cstate.delivered, a->cstate.sent, err_name(rc), sv->c.sent, sv->c.ret.base);
        conn_close_end(a->conn, 1, true);
      } else {
        a->conn->end[1] = E_OPEN;
        sv->conn = a->conn;
        sv->resumes++;
        vlog("server: resumed on conn %d; resending [%" PRIu64 ", %" PRIu64 ")", a->conn->id,
             sv->c.tx_pos, sv->c.sent);
        flush(1);
      }
    }
    a->phase = P_ACCEPT;
    return;
  case P_ACCEPT: /* ResumeAccept reaches the client */
    if (!cl->live || (cl->c.state != CORE_SUSPENDED && cl->c.state != CORE_CLOSED)) {
      attempt_end(a, "client no longer suspended");
      return;
    }
    {
      uint64_t rx0 = cl->c.rx_pos, dl0 = cl->c.delivered;
      bool cl_was_closed = cl->c.state == CORE_CLOSED;
      int rc = core_on_resumed(&cl->c, S.now, &a->sstate);
      if (rc == 0 && cl->c.state == CORE_CONNECTED) {
        note_resume(0, rx0, dl0);
        if (cl_was_closed) {
          vlog("client: CLOSED session reopened by a server restored behind its end");
          stats.closed_reopened++;
        }
      }
      if (rc == TETHER_EDIVERGED) {
        /* The client knew where the server's stream ends (a Reject tells
         * the server otherwise: core_resume_check is symmetric there). */
        vlog("client: the two streams' ends disagree after a rollback: FAILED TETHER_EDIVERGED");
        S.div_detected[0] = 1;
        udp_send(0);
        attempt_end(a, "resume refused");
        return;
      }
      if (rc < 0) {
        sim_fail("client: core_on_resumed refused the server's state (delivered %" PRIu64
                 " sent %" PRIu64 "): %s; client sent %" PRIu64 " retained from %" PRIu64,
                 a->sstate.delivered, a->sstate.sent, err_name(rc), cl->c.sent, cl->c.ret.base);
        attempt_end(a, "resume refused");
        return;
      }
      if (cl->c.state == CORE_CONNECTED) {
        a->conn->end[0] = E_OPEN;
        cl->conn = a->conn;
        a->conn = NULL;
        cl->resumes++;
        S.resumes_total++;
        vlog("client: resumed on conn %d; resending [%" PRIu64 ", %" PRIu64 ")", cl->conn->id,
             cl->c.tx_pos, cl->c.sent);
        flush(0);
      }
      attempt_end(a, cl->c.state == CORE_CONNECTED ? "resumed" : "resumed into a closed session");
      while (S.att[0].active)
        attempt_end(&S.att[0], "another attempt resumed");
    }
    return;
  case P_REJECT: /* Reject reaches the client */
    vlog("client: resume rejected: %s", err_name(a->reject_err));
    if (cl->live)
      core_fail(&cl->c, a->reject_err);
    attempt_end(a, "rejected");
    return;
  }
}

/* ---- snapshots, crashes and restores (--restore) -------------------------- */

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "sim: out of memory\n");
    exit(2);
  }
  return p;
}

/* Snapshots' retention copies are recycled: a seed takes snapshots by the
 * hundred thousand, some of megabytes, and under ASan every large
 * allocation is an mmap and its release an munmap (minutes per seed where
 * glibc takes a second).  At most 4 snapshots live at once (pending and
 * committed, per side); a few spare buffers serve them all. */
static struct {
  uint8_t *buf;
  size_t cap;
} spare[6];

/* A buffer of at least `need` bytes (a power of two): *cap gets its size. */
static uint8_t *ret_buf_get(size_t need, size_t *cap) {
  int best = -1;
  for (int k = 0; k < 6; k++)
    if (spare[k].buf && spare[k].cap >= need && (best < 0 || spare[k].cap < spare[best].cap))
      best = k;
  if (best >= 0) {
    uint8_t *b = spare[best].buf;
    *cap = spare[best].cap;
    spare[best].buf = NULL;
    return b;
  }
  *cap = 1;
  while (*cap < need)
    *cap <<= 1;
  return xmalloc(*cap);
}

/* Keeps b (cap bytes) for ret_buf_get, in place of a smaller spare if all
 * are taken. */
static void ret_buf_put(uint8_t *b, size_t cap) {
  int slot = 0; /* an empty one, else the smallest */
  for (int k = 0; k < 6; k++) {
    if (!spare[k].buf) {
      slot = k;
      break;
    }
    if (spare[k].cap < spare[slot].cap)
      slot = k;
  }
  if (spare[slot].buf && spare[slot].cap >= cap) {
    free(b);
    return;
  }
  free(spare[slot].buf);
  spare[slot].buf = b;
  spare[slot].cap = cap;
}

static void ret_bufs_free(void) {
  for (int k = 0; k < 6; k++) {
    free(spare[k].buf);
    spare[k].buf = NULL;
  }
}

/* A deep copy of a core: its retention ring and replay log included.  The
 * ring keeps only the bytes it holds (as a snapshot does: capture_session
 * stores `retained`), unwrapped at its start, in a recycled buffer: rings
 * of 128 KiB that hold a few hundred bytes are common.  Only its bytes are
 * read back (core_restore). */
static void core_copy(struct core_session *dst, const struct core_session *src) {
  *dst = *src;
  dst->ret.buf = NULL;
  dst->ret.cap = dst->ret.head = 0;
  if (src->ret.len) {
    dst->ret.buf = ret_buf_get(src->ret.len, &dst->ret.cap);
    size_t first = src->ret.cap - src->ret.head < src->ret.len ? src->ret.cap - src->ret.head
                                                                : src->ret.len;
    memcpy(dst->ret.buf, src->ret.buf + src->ret.head, first);
    memcpy(dst->ret.buf + first, src->ret.buf, src->ret.len - first);
  }
  dst->rlog.hash = NULL;
  if (src->rlog.hash) {
    dst->rlog.hash = xmalloc(src->rlog.cap * sizeof(*src->rlog.hash));
    memcpy(dst->rlog.hash, src->rlog.hash, src->rlog.cap * sizeof(*src->rlog.hash));
  }
}

static void snap_free(struct snap *sn) {
  if (sn->valid && sn->c.ret.buf) {
    ret_buf_put(sn->c.ret.buf, sn->c.ret.cap);
    sn->c.ret.buf = NULL;
    sn->c.ret.cap = 0;
  }
  if (sn->valid)
    core_clear(&sn->c);
  memset(sn, 0, sizeof(*sn));
}

static void app_save(const struct side *sd, struct app_state *a) {
  a->wr_shut = sd->wr_shut;
  a->wr_final = sd->wr_final;
  a->got_epipe = sd->got_epipe;
  a->rd_eof = sd->rd_eof;
  a->app_closed = sd->app_closed;
  a->close_at = sd->close_at;
  a->through_at = sd->through_at;
}

static void app_load(struct side *sd, const struct app_state *a) {
  sd->wr_shut = a->wr_shut;
  sd->wr_final = a->wr_final;
  sd->got_epipe = a->got_epipe;
  sd->rd_eof = a->rd_eof;
  sd->app_closed = a->app_closed;
  sd->close_at = a->close_at;
  sd->through_at = a->through_at;
}

static void snap_take(int i, struct snap *sn) {
  struct side *sd = &S.s[i];
  sn->valid = true;
  sn->taken_at = S.now;
  core_copy(&sn->c, &sd->c);
  app_save(sd, &sn->app);
}

/* Engine: tether_snapshot_commit -> core_durable_commit with the counters
 * the capture holds; the snapshot becomes the one a crash restores. */
static void snap_commit(int i) {
  struct side *sd = &S.s[i];
  core_durable_commit(&sd->c, S.now, sd->pending.c.sent, sd->pending.c.delivered);
  if (sd->pending.c.state == CORE_CLOSED)
    core_durable_finished(&sd->c, S.now);
  vlog("%s: snapshot of %.6f committed (sent %" PRIu64 " delivered %" PRIu64 ")", sd->name,
       (double)sd->pending.taken_at / 1e9, sd->pending.c.sent, sd->pending.c.delivered);
  snap_free(&sd->committed);
  sd->committed = sd->pending;
  memset(&sd->pending, 0, sizeof(sd->pending));
}

/* Engine: session_restore() from a snapshot holding exactly what
 * capture_session() persists of the core. */
static void core_restore(struct core_session *c, const struct core_session *m, ns_t now) {
  core_init(c, &m->cfg, m->role, now, m->local_sndbuf_max, m->peer_rcvbuf_max);
  retention_init(&c->ret, c->ret.max, m->ret.base);
  if (m->ret.len > c->ret.max)
    retention_set_max(&c->ret, m->ret.len);
  for (uint64_t at = m->ret.base; at < retention_end(&m->ret);) {
    const uint8_t *p;
    size_t n = retention_peek(&m->ret, at, &p);
    if (retention_append(&c->ret, p, n) < 0) {
      fprintf(stderr, "sim: out of memory\n");
      exit(2);
    }
    at += n;
  }
  c->sent = c->tx_pos = m->sent;
  c->peer_acked = m->peer_acked;
  c->peer_delivered_max = m->peer_delivered_max; /* Session.peer_delivered_max */
  c->delivered = c->acked_delivered = m->delivered;
  bool finished = m->state == CORE_CLOSED; /* Session.finished */
  enum core_half ours_closed = finished ? CORE_HALF_ACKED : CORE_HALF_CLOSED;
  c->wr = core_half_closed(m->wr) ? ours_closed : CORE_HALF_OPEN;
  c->rd = core_half_closed(m->rd) ? ours_closed : CORE_HALF_OPEN;
  c->peer_wr = core_half_closed(m->peer_wr) ? CORE_HALF_CLOSED : CORE_HALF_OPEN;
  c->peer_wr_end = m->peer_wr_end;
  c->peer_rd = core_half_closed(m->peer_rd) ? CORE_HALF_CLOSED : CORE_HALF_OPEN;
  if (core_half_closed(m->wr))
    c->closed_at_ns = now;
  if (core_half_closed(m->rd))
    c->released_at_ns = now;
  c->epoch = m->epoch + 1;
  c->tx_seq = (uint64_t)c->epoch << 40; /* SNAP_EPOCH_SHIFT */
  if (m->tx_seq > c->tx_seq)
    c->tx_seq = m->tx_seq;
  c->rx_seq = m->rx_seq;
  c->resent = m->resent;
  c->reconnects = m->reconnects;
  c->rx_pos = c->delivered;
  if (c->cfg.durable) {
    c->durable_sent = c->sent;
    c->durable_delivered = c->delivered;
    c->durable_finished = finished;
  }
  if (m->peer_durable) {
    core_set_peer_durable(c);
    c->peer_durable_sent = m->peer_durable_sent;
    c->peer_durable_delivered = m->peer_durable_delivered;
    c->peer_durable_finished = m->peer_durable_finished;
    struct replay_log *rl = &c->rlog;
    if (m->rlog.n) {
      rl->hash = xmalloc(m->rlog.n * sizeof(*rl->hash));
      memcpy(rl->hash, m->rlog.hash, m->rlog.n * sizeof(*rl->hash));
    }
    rl->n = rl->cap = m->rlog.n;
    rl->from = m->rlog.from;
    rl->cur = m->rlog.cur;
    rl->skip_first = m->rlog.skip_first;
  }
  core_on_transport_lost(c, now); /* CONNECTED -> SUSPENDED, redial at once */
}

/* The process of side i dies: its sockets go (the peer sees a reset, or
 * with `silent` nothing until its timeouts), its handshakes in progress
 * end, an uncommitted snapshot is lost. */
static void crash(int i, ns_t down, bool silent) {
  struct side *sd = &S.s[i];
  vlog("CRASH: %s%s, down for %.3f s; restores the snapshot of %.6f (sent %" PRIu64
       " delivered %" PRIu64 "), was at sent %" PRIu64 " delivered %" PRIu64,
       sd->name, silent ? " (silently)" : "", (double)down / 1e9,
       (double)sd->committed.taken_at / 1e9, sd->committed.c.sent, sd->committed.c.delivered,
       sd->c.sent, sd->c.delivered);
  sd->crashes++;
  stats.crashes++;
  stats.rolled_back += (sd->c.sent - sd->committed.c.sent) + (sd->c.delivered - sd->committed.c.delivered);
  for (struct conn *k = S.conns; k; k = k->next) {
    if (k->end[i] == E_CLOSED)
      continue;
    if (silent && k->dead_at > S.now) {
      ns_t e = S.now + tcp_detect_delay();
      conn_kill(k, i == 0 ? S.now : e, i == 1 ? S.now : e, false);
      k->end[i] = E_CLOSED;
    } else {
      conn_close_end(k, i, false);
    }
  }
  sd->conn = NULL;
  for (int j = 1; j >= 0; j--)
    if (S.att[j].active)
      attempt_end(&S.att[j], "a side crashed");
  snap_free(&sd->pending);
  core_clear(&sd->c);
  sd->live = false;
  sd->down = true;
  sd->down_until = S.now + down;
  app_load(sd, &sd->committed.app);
}

/* The crashed side restarts from its last committed snapshot; with a
 * planned divergence its application then writes one different byte among
 * those its peer already delivered. */
static void restart(int i) {
  struct side *sd = &S.s[i];
  struct side *peer = &S.s[1 - i];
  sd->down = false;
  sd->live = true;
  core_restore(&sd->c, &sd->committed.c, S.now);
  sd->rd_off = sd->c.delivered;
  sd->wr_next = sd->rd_next = S.now;
  sd->next_snap_at = S.now + rlog(&S.r, 1 * US, S.sc.snap_every[i]);
  stats.restores++;
  vlog("%s: restored (epoch %u): sent %" PRIu64 " delivered %" PRIu64 " -> %s%s%s", sd->name,
       sd->c.epoch, sd->c.sent, sd->c.delivered, state_name(sd->c.state),
       core_half_closed(sd->c.wr) ? ", shut down writing" : "",
       sd->app_closed ? ", closed by the app" : "");
  if (S.sc.diverge && S.div_writer < 0 && !peer->down && peer->live &&
      peer->c.state != CORE_FAILED && !peer->app_closed && !sd->app_closed &&
      peer->c.delivered > sd->c.sent) {
    sd->div_off = rrange(&S.r, sd->c.sent, peer->c.delivered - 1);
    S.div_writer = i;
    S.div_at = sd->div_off;
    stats.div_injected++;
    vlog("%s: the restored application will write a different byte at %" PRIu64
         " (the peer delivered %" PRIu64 ")", sd->name, sd->div_off, peer->c.delivered);
  }
}

static void restore_due(void) {
  if (!S.restore)
    return;
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    if (sd->down && sd->down_until <= S.now)
      restart(i);
  }
  /* No crash after a divergence: its detection is what the seed checks. */
  while (S.next_crash < S.sc.ncrash && S.sc.crashes[S.next_crash].at <= S.now) {
    const struct crash *cr = &S.sc.crashes[S.next_crash++];
    if (S.div_writer >= 0 || S.end_div >= 0)
      continue;
    int n = 0;
    bool go[2];
    for (int i = 0; i < 2; i++) {
      struct side *sd = &S.s[i];
      go[i] = (cr->who == i || cr->who == 2) && sd->live && !sd->down && sd->c.state != CORE_FAILED;
    }
    for (int i = 0; i < 2; i++)
      if (go[i]) {
        crash(i, cr->down, cr->silent);
        n++;
      }
    if (n == 2)
      stats.both_crashes++;
    for (int i = 0; i < 2; i++)
      if (S.s[i].down && S.s[i].down_until <= S.now)
        restart(i);
  }
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    if (!sd->live || sd->c.state == CORE_FAILED)
      continue;
    if (sd->pending.valid && sd->commit_at <= S.now)
      snap_commit(i);
    if (!sd->pending.valid && sd->next_snap_at <= S.now) {
      snap_take(i, &sd->pending);
      sd->commit_at = S.now + (rchance(&S.r, 20) ? 0 : rlog(&S.r, 1 * US, S.sc.commit_max[i]));
      sd->next_snap_at = S.now + rlog(&S.r, 1 * US, S.sc.snap_every[i]);
      vlog("%s: snapshot (sent %" PRIu64 " delivered %" PRIu64 "), durable at %.6f", sd->name,
           sd->c.sent, sd->c.delivered, (double)sd->commit_at / 1e9);
      if (sd->commit_at <= S.now)
        snap_commit(i);
    }
  }
}

static ns_t restore_next(void) {
  ns_t t = NEVER;
  if (!S.restore)
    return t;
  if (S.next_crash < S.sc.ncrash)
    t = S.sc.crashes[S.next_crash].at;
  for (int i = 0; i < 2; i++) {
    const struct side *sd = &S.s[i];
    if (sd->down && sd->down_until < t)
      t = sd->down_until;
    if (!sd->live || sd->c.state == CORE_FAILED)
      continue;
    ns_t x = sd->pending.valid ? sd->commit_at : sd->next_snap_at;
    if (x < t)
      t = x;
  }
  return t;
}

/* ---- faults -------------------------------------------------------------- */

static void apply_fault(const struct fault *f) {
  switch (f->kind) {
  case F_CUT:
    for (struct conn *k = S.conns; k; k = k->next) {
      if (conn_unused(k) || k->dead_at <= S.now)
        continue;
      ns_t e0, e1;
      ns_t rst0 = arrival_after(S.now) + rbelow(&S.r, S.sc.lat + 1);
      ns_t rst1 = arrival_after(S.now) + rbelow(&S.r, S.sc.lat + 1);
      switch (f->sub) {
      case CUT_RST_BOTH: e0 = rst0, e1 = rst1; break;
      case CUT_RST_CLIENT: e0 = rst0, e1 = S.now + tcp_detect_delay(); break;
      case CUT_RST_SERVER: e0 = S.now + tcp_detect_delay(), e1 = rst1; break;
      default: e0 = S.now + tcp_detect_delay(), e1 = S.now + tcp_detect_delay(); break;
      }
      vlog("FAULT: cut conn %d (kind %d%s): client learns at %.6f, server at %.6f", k->id, f->sub,
           f->purge ? ", receive queues lost" : "", (double)e0 / 1e9, (double)e1 / 1e9);
      conn_kill(k, e0, e1, f->purge);
    }
    break;
  case F_BLACKHOLE:
    vlog("FAULT: black hole for %.3f s", (double)f->dur / 1e9);
    for (struct conn *k = S.conns; k; k = k->next) {
      if (conn_unused(k) || k->dead_at <= S.now)
        continue;
      ns_t d0 = tcp_detect_delay(), d1 = tcp_detect_delay();
      if (d0 >= f->dur && d1 >= f->dur)
        continue; /* TCP rides it out */
      ns_t after = add_sat(f->at + f->dur, S.sc.lat);
      ns_t e0 = d0 < f->dur ? S.now + d0 : after;
      ns_t e1 = d1 < f->dur ? S.now + d1 : after;
      vlog("FAULT: conn %d dies in the black hole", k->id);
      conn_kill(k, e0, e1, false);
    }
    break;
  case F_UDP_OUTAGE:
    vlog("FAULT: UDP outage for %.3f s", (double)f->dur / 1e9);
    break;
  }
}

static void start_outage(void) {
  S.outage = true;
  S.outage_at = S.now;
  vlog("FAULT: permanent outage");
  for (struct conn *k = S.conns; k; k = k->next)
    if (!conn_unused(k) && k->dead_at > S.now)
      conn_kill(k, S.now + tcp_detect_delay(), S.now + tcp_detect_delay(), false);
}

/* ---- events -------------------------------------------------------------- */

static void seg_arrivals(struct conn *k, int d) {
  struct pipe *p = &k->p[d];
  while (p->seg_n > 0) {
    struct seg *sg = &p->segs[p->seg_head];
    if (sg->at > S.now)
      return;
    if (sg->at >= k->dead_at) {
      pipe_freeze(p);
      return;
    }
    if (!tcp_up(S.now)) {
      /* Dropped in a black hole: TCP retransmits after it heals. */
      ns_t h = heal_time(S.now);
      sg->at = add_sat(add_sat(h, S.sc.lat), S.sc.rto_extra);
      return;
    }
    if (k->end[1 - d] == E_CLOSED && sg->len > 0) {
      /* Data for a closed socket: answered with a reset. */
      vlog("conn %d: %u bytes for the closed %s end: reset", k->id, sg->len, d ? "client" : "server");
      ns_t t = S.now + S.sc.lat;
      if (t < k->err_at[d])
        k->err_at[d] = t;
      if (t < k->dead_at)
        k->dead_at = t;
      pipe_freeze(p);
      return;
    }
    p->inflight -= sg->len;
    p->rcvq += sg->len;
    if (sg->fin)
      p->fin_arrived = true;
    p->seg_head = (p->seg_head + 1) % MAXSEG;
    p->seg_n--;
  }
}

/* Pushes what the window and the link allow now; returns true on progress. */
static bool transmit(struct conn *k, int d) {
  struct pipe *p = &k->p[d];
  bool progress = false;
  if (k->dead_at <= S.now || (k->end[d] == E_CLOSED && !k->graceful[d]))
    return false;
  while (p->seg_n < MAXSEG && S.now >= p->next_tx && tcp_up(S.now)) {
    size_t sndq = pipe_sndq(p);
    size_t win = p->rcvbuf > p->rcvq + p->inflight ? p->rcvbuf - p->rcvq - p->inflight : 0;
    size_t n = sndq < win ? sndq : win;
    if (n > S.sc.mss)
      n = S.sc.mss;
    bool fin = false;
    if (n == 0) {
      if (sndq == 0 && p->fin_queued && !p->fin_sent)
        fin = true;
      else
        break;
    }
    struct seg *sg = &p->segs[(p->seg_head + p->seg_n) % MAXSEG];
    sg->at = S.now + S.sc.lat;
    if (p->seg_n > 0) {
      const struct seg *last = &p->segs[(p->seg_head + p->seg_n - 1) % MAXSEG];
      if (sg->at < last->at)
        sg->at = last->at;
    }
    sg->len = (uint32_t)n;
    sg->fin = fin;
    p->seg_n++;
    p->inflight += n;
    if (fin)
      p->fin_sent = true;
    p->next_tx = S.now + (ns_t)((n * S.sc.ps_per_byte) / 1000);
    progress = true;
  }
  return progress;
}

static void handle_timer(int i) {
  struct side *sd = &S.s[i];
  for (int guard = 0; sd->live; guard++) {
    uint64_t d = core_next_deadline(&sd->c);
    if (d > S.now)
      return;
    if (guard > 1000) {
      sim_fail("%s: timer livelock: deadline %" PRIu64 " <= now in state %s", sd->name, d,
               state_name(sd->c.state));
      return;
    }
    unsigned act = core_on_timer(&sd->c, S.now, (uint32_t)rnext(&S.r));
    if (act & CORE_ACT_SUSPEND)
      suspend_side(i, "no heartbeat within suspend_ns");
    if (act & CORE_ACT_HEARTBEAT) {
      if (sd->conn)
        core_trim_inflight(&sd->c, pipe_outq(&sd->conn->p[i]));
      retention_shrink(&sd->c.ret); /* as the engine does */
      udp_send(i);
    }
    if (act & CORE_ACT_FIN) {
      vlog("%s: FIN after %" PRIu64 " bytes%s", sd->name, sd->c.sent,
           sd->conn ? "" : " (no transport)");
      if (sd->conn)
        sd->conn->p[i].fin_queued = true;
    }
    if (act & CORE_ACT_FAILED) {
      vlog("%s: FAILED: %s", sd->name, err_name(sd->c.error));
      sd->failed_at = S.now;
      sd->suspended_at_fail = sd->c.suspended_at_ns;
    }
    if (act & CORE_ACT_REDIAL) {
      if (i != 0)
        sim_fail("server asked to redial");
      else
        attempt_start();
    }
    if (act & CORE_ACT_DONE) {
      /* Engine: DONE (TIME_WAIT over) lets settle() free the session. */
      sd->done = true;
      release_if_done(i);
      return;
    }
    if (act == 0 && core_next_deadline(&sd->c) <= S.now) {
      sim_fail("%s: deadline %" PRIu64 " is due but core_on_timer does nothing (state %s)",
               sd->name, core_next_deadline(&sd->c), state_name(sd->c.state));
      return;
    }
  }
}

static void process_due(void) {
  while (S.next_fault < S.sc.nfaults && S.sc.faults[S.next_fault].at <= S.now)
    apply_fault(&S.sc.faults[S.next_fault++]);
  restore_due();
  for (struct conn *k = S.conns; k; k = k->next) {
    seg_arrivals(k, 0);
    seg_arrivals(k, 1);
  }
  /* Datagrams, in arrival order. */
  for (;;) {
    int best = -1;
    for (int j = 0; j < S.nudp; j++)
      if (S.udp[j].at <= S.now && (best < 0 || S.udp[j].at < S.udp[best].at))
        best = j;
    if (best < 0)
      break;
    struct dg d = S.udp[best];
    S.udp[best] = S.udp[--S.nudp];
    struct side *to = &S.s[d.to];
    if (!udp_up(S.now) || !to->live) {
      vlog("%s: ctl #%" PRIu64 " dropped on arrival (%s)", to->name, d.ctl.seq,
           to->live ? "path down" : "session freed");
      continue;
    }
    bool reply = false;
    uint64_t rx_seq = to->c.rx_seq;
    bool was_failed = to->c.state == CORE_FAILED;
    int rc = core_on_ctl(&to->c, S.now, &d.ctl, &reply);
    if (!was_failed && to->c.state == CORE_FAILED && to->c.error == TETHER_EDIVERGED &&
        !d.ctl.failed) {
      vlog("%s: the peer's stream ends elsewhere than it did: FAILED TETHER_EDIVERGED", to->name);
      S.div_detected[d.to] = 1;
    }
    if ((rc == 0) != (d.ctl.seq > rx_seq)) {
      sim_fail("%s: core_on_ctl(seq %" PRIu64 ") returned %d after seq %" PRIu64, to->name,
               d.ctl.seq, rc, rx_seq);
      return;
    }
    if (rc == 0) {
      vlog("%s: got ctl #%" PRIu64 " -> %s%s", to->name, d.ctl.seq, state_name(to->c.state),
           reply ? ", replies" : "");
      if (reply)
        udp_send(d.to);
    }
  }
  for (int j = 1; j >= 0; j--) {
    if (S.att[j].active && S.att[j].next_at <= S.now)
      attempt_step(&S.att[j]);
    if (S.att[j].active && S.att[j].deadline <= S.now)
      attempt_end(&S.att[j], "connect timeout");
  }
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    if (sd->live && sd->conn && S.now >= sd->conn->err_at[i])
      suspend_side(i, "socket error");
  }
  for (int i = 0; i < 2; i++)
    handle_timer(i);
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    if (sd->live && !sd->app_closed && sd->close_at <= S.now) {
      vlog("%s: app closes the session", sd->name);
      sd->app_closed = true;
      if (!sd->wr_shut) {
        sd->wr_shut = true;
        sd->wr_final = sd->c.sent;
        sd->ever_shut = true;
        sd->ever_final = sd->c.sent;
      }
      core_close(&sd->c, S.now);
      if (!release_if_done(i))
        handle_timer(i);
    }
  }
}

static void check_invariants(int i) {
  struct side *sd = &S.s[i];
  const struct core_session *c = &sd->c;
  const struct side *y = &S.s[1 - i];
  if (S.restore && S.end_div < 0 && sd->live && y->live &&
      ((y->wr_shut && (y->wr_final < c->delivered ||
                       (core_half_closed(c->peer_wr) && c->peer_wr_end != y->wr_final))) ||
       (core_half_closed(c->peer_wr) && y->c.sent > c->peer_wr_end))) {
    /* The peer rolled back and its application then ends its stream
     * elsewhere than an earlier incarnation did (it got EPIPE, or closed
     * early, at another point of its replay: a non-deterministic
     * application): below what we delivered, or not where we know the
     * stream ends.  A divergent replay: we must fail with TETHER_EDIVERGED
     * (see end_div_checks()). */
    vlog("END DIVERGES: the %s's peer %s %" PRIu64 ", delivered %" PRIu64 ", end known %s%" PRIu64,
         sd->name, y->wr_shut ? "shut down at" : "wrote up to", y->wr_shut ? y->wr_final : y->c.sent,
         c->delivered, core_half_closed(c->peer_wr) ? "" : "(none) ", c->peer_wr_end);
    S.end_div = i;
  }
  if (!sd->live)
    return;
  if (c->state == CORE_FAILED && !sd->failed_at_any)
    sd->failed_at_any = S.now;
  if (!sd->through_at && sd->wr_shut &&
      (sd->rd_eof || (S.sc.early_closer == i && sd->app_closed)))
    sd->through_at = S.now;
  if (c->ret.len > c->ret.max)
    sim_fail("%s: retention holds %zu > max %zu", sd->name, c->ret.len, c->ret.max);
  if (S.restore) {
    if (c->ret.max < c->cfg.retain_max)
      sim_fail("%s: retention max %zu below retain_max %" PRIu64 " with a durable peer", sd->name,
               c->ret.max, c->cfg.retain_max);
  } else if (c->ret.max != sd->sndbuf + S.s[1 - i].rcvbuf)
    sim_fail("%s: retention max %zu, expected sndbuf+peer rcvbuf %zu", sd->name, c->ret.max,
             sd->sndbuf + S.s[1 - i].rcvbuf);
  if (retention_end(&c->ret) != c->sent)
    sim_fail("%s: retention ends at %" PRIu64 ", sent %" PRIu64, sd->name, retention_end(&c->ret),
             c->sent);
  if (c->tx_pos > c->sent)
    sim_fail("%s: tx_pos %" PRIu64 " > sent %" PRIu64, sd->name, c->tx_pos, c->sent);
  if (c->state != CORE_FAILED && c->ret.base > c->tx_pos)
    sim_fail("%s: retention starts at %" PRIu64 " above tx_pos %" PRIu64, sd->name, c->ret.base,
             c->tx_pos);
  if (c->peer_acked > c->sent)
    sim_fail("%s: peer_acked %" PRIu64 " > sent %" PRIu64, sd->name, c->peer_acked, c->sent);
  const struct side *peer = &S.s[1 - i];
  if (c->delivered > peer->wr_total)
    sim_fail("%s: delivered %" PRIu64 " > what the peer will ever write", sd->name, c->delivered);
  if (S.restore) {
    /* A peer that rolled back has sent and delivered less than before. */
    if (c->delivered > peer->hi_sent)
      sim_fail("%s: delivered %" PRIu64 " > the most the peer ever sent %" PRIu64, sd->name,
               c->delivered, peer->hi_sent);
    if (c->rx_pos > c->delivered)
      sim_fail("%s: rx_pos %" PRIu64 " > delivered %" PRIu64, sd->name, c->rx_pos, c->delivered);
    return;
  }
  if (peer->live && c->delivered > peer->c.sent)
    sim_fail("%s: delivered %" PRIu64 " > peer sent %" PRIu64, sd->name, c->delivered,
             peer->c.sent);
  if (peer->live && c->peer_acked > peer->c.delivered)
    sim_fail("%s: peer_acked %" PRIu64 " > peer delivered %" PRIu64, sd->name, c->peer_acked,
             peer->c.delivered);
}

static bool settle(void) {
  bool any = false;
  for (int round = 0; round < 100000; round++) {
    bool progress = false;
    for (int i = 0; i < 2; i++) {
      struct side *sd = &S.s[i];
      if (!sd->live)
        continue;
      if (sd->c.state == CORE_FAILED && sd->conn) {
        conn_close_end(sd->conn, i, false);
        sd->conn = NULL;
      }
      if (release_if_done(i)) {
        progress = true;
        continue;
      }
      if (sd->live && sd->conn && S.now >= sd->conn->err_at[i]) {
        suspend_side(i, "socket error");
        progress = true;
      }
      progress |= flush(i);
      progress |= take_replay(i);
      progress |= app_write(i);
      progress |= app_read(i);
      if (sd->live && !sd->app_closed && sd->close_at == NEVER && sd->rd_eof && sd->wr_shut) {
        sd->close_at = S.now + sd->close_delay;
        progress = true;
      }
      if (sd->live && !sd->app_closed && sd->close_at == NEVER && S.sc.early_closer == i &&
          sd->c.delivered * 1000 >= S.s[1 - i].wr_total * S.sc.early_permille) {
        vlog("%s: app will close early, after %" PRIu64 " bytes read", sd->name, sd->c.delivered);
        sd->close_at = S.now;
        progress = true;
      }
    }
    for (struct conn *k = S.conns; k; k = k->next) {
      progress |= transmit(k, 0);
      progress |= transmit(k, 1);
    }
    if (S.sc.giveup && !S.outage &&
        S.s[0].c.sent * 1000 >= S.s[0].wr_total * S.sc.giveup_permille) {
      start_outage();
      progress = true;
    }
    for (int i = 0; i < 2; i++)
      check_invariants(i);
    if (S.fail)
      return any;
    if (!progress)
      return any;
    any = true;
    if (round > 0)
      process_due(); /* actions can make deadlines due now (FIN, DONE) */
  }
  sim_fail("settle does not converge");
  return any;
}

static ns_t next_event(void) {
  ns_t t = NEVER;
#define CAND(x)                                                                               \
  do {                                                                                        \
    ns_t x_ = (x);                                                                            \
    if (x_ < t)                                                                               \
      t = x_;                                                                                 \
  } while (0)
  if (S.next_fault < S.sc.nfaults)
    CAND(S.sc.faults[S.next_fault].at);
  for (struct conn *k = S.conns; k; k = k->next) {
    for (int d = 0; d < 2; d++) {
      struct pipe *p = &k->p[d];
      if (p->seg_n)
        CAND(p->segs[p->seg_head].at);
      if (k->dead_at > S.now && (k->end[d] != E_CLOSED || k->graceful[d]) && p->seg_n < MAXSEG &&
          (pipe_sndq(p) > 0 || (p->fin_queued && !p->fin_sent))) {
        size_t win = p->rcvbuf > p->rcvq + p->inflight ? p->rcvbuf - p->rcvq - p->inflight : 0;
        if (win > 0 || pipe_sndq(p) == 0) {
          ns_t x = p->next_tx > S.now ? p->next_tx : S.now;
          if (!tcp_up(x))
            x = heal_time(x);
          if (x > S.now)
            CAND(x);
        }
      }
    }
  }
  for (int j = 0; j < S.nudp; j++)
    CAND(S.udp[j].at);
  CAND(restore_next());
  for (int j = 0; j < 2; j++)
    if (S.att[j].active) {
      CAND(S.att[j].next_at);
      CAND(S.att[j].deadline);
    }
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    if (!sd->live)
      continue;
    CAND(core_next_deadline(&sd->c));
    if (sd->conn && sd->conn->err_at[i] > S.now)
      CAND(sd->conn->err_at[i]);
    if (!sd->wr_shut && sd->wr_next > S.now)
      CAND(sd->wr_next);
    if (!sd->rd_eof && sd->rd_next > S.now)
      CAND(sd->rd_next);
    if (!sd->app_closed && sd->close_at != NEVER)
      CAND(sd->close_at);
  }
#undef CAND
  return t;
}

/* ---- one seed ------------------------------------------------------------ */

static bool force_giveup;

static void make_scenario(void) {
  struct scen *sc = &S.sc;
  struct rng *r = &S.r;
  memset(sc, 0, sizeof(*sc));
  sc->mode = (enum mode)rbelow(r, 3);
  sc->giveup = force_giveup || rchance(r, 6);
  sc->giveup_permille = (unsigned)rrange(r, 0, 900);
  sc->lat = rlog(r, 20 * US, 80 * MS);
  sc->udp_lat = rchance(r, 50) ? sc->lat : rlog(r, 20 * US, 80 * MS);
  sc->udp_jitter = rchance(r, 30) ? 0 : rlog(r, 1, sc->udp_lat * 2);
  sc->udp_blocked = rchance(r, 8);
  sc->udp_loss = rchance(r, 30) ? 0 : (unsigned)rlog(r, 1, 60);
  sc->udp_dup = rchance(r, 80) ? 0 : (unsigned)rlog(r, 1, 30);
  sc->ps_per_byte = rlog(r, 50, 200000); /* 20 GB/s .. 5 MB/s */
  sc->mss = (size_t)rlog(r, 536, 65536);
  /* The engine's redial policy needs an attempt to outlive a round trip:
   * client_redial() aborts an attempt still connecting once two newer redials
   * were due, so with reconnect_max < RTT / 2 no attempt ever connects (and a
   * handshake of 3 round trips needs connect_timeout above that).  Keep to
   * configurations where recovery is possible; --short-backoff lifts this. */
  sc->connect_timeout = rlog(r, 200 * MS, 10 * SEC);
  if (!S.short_backoff && sc->connect_timeout < 8 * sc->lat)
    sc->connect_timeout = 8 * sc->lat;
  sc->rto_extra = rchance(r, 50) ? 0 : rlog(r, 1 * MS, 2 * SEC);
  sc->cfg.heartbeat_ns = rlog(r, 10 * MS, 1000 * MS);
  sc->cfg.suspend_ns = sc->cfg.heartbeat_ns * rrange(r, 2, 5) + rbelow(r, sc->cfg.heartbeat_ns);
  /* After a resume the server's suspend timer runs from the moment it
   * resumed, but the client's first heartbeat can reach it only a TCP plus a
   * UDP one-way delay later: with suspend_ns below that the session flaps
   * forever.  Keep suspend_ns above twice the path delay unless
   * --tight-timeouts. */
  ns_t path = sc->lat + sc->udp_lat + sc->udp_jitter;
  if (!S.tight_timeouts && sc->cfg.suspend_ns < 2 * path + sc->cfg.heartbeat_ns)
    sc->cfg.suspend_ns = 2 * path + sc->cfg.heartbeat_ns;
  sc->cfg.reconnect_max_ns = rlog(r, 1 * MS, 2 * SEC);
  if (!S.short_backoff && sc->cfg.reconnect_max_ns < 4 * sc->lat)
    sc->cfg.reconnect_max_ns = 4 * sc->lat;
  sc->cfg.give_up_ns = sc->giveup ? rlog(r, 1 * SEC, 120 * SEC) : 100000 * SEC;

  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    sd->sndbuf = (size_t)rlog(r, 1024, 512 * 1024);
    sd->rcvbuf = (size_t)rlog(r, 1024, 512 * 1024);
  }
  /* Stream lengths and pacing. */
  uint64_t total = rchance(r, 5) ? 0 : rlog(r, 1, 4u << 20);
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    sd->wr_chunk = (size_t)rlog(r, 1, MAXCHUNK);
    sd->rd_chunk = (size_t)rlog(r, 1, MAXCHUNK);
    sd->wr_think = rchance(r, 60) ? 0 : rlog(r, 1 * US, 20 * MS);
    sd->rd_think = rchance(r, 60) ? 0 : rlog(r, 1 * US, 20 * MS);
    sd->close_delay = rchance(r, 50) ? 0 : rlog(r, 1 * US, 3 * SEC);
  }
  S.s[0].wr_total = total;
  S.s[0].wr_key = rnext(r);
  switch (sc->mode) {
  case M_ONEWAY:
    S.s[1].wr_total = 0;
    S.s[1].wr_key = rnext(r);
    S.s[1].shut_early = rchance(r, 50);
    break;
  case M_ECHO:
    S.s[1].wr_total = total;
    S.s[1].wr_key = S.s[0].wr_key;
    break;
  case M_BIDIR:
    S.s[1].wr_total = rchance(r, 5) ? 0 : rlog(r, 1, 4u << 20);
    S.s[1].wr_key = rnext(r);
    break;
  }
  S.s[0].rd_key = S.s[1].wr_key;
  S.s[1].rd_key = S.s[0].wr_key;
  /* Keep the number of application calls bounded. */
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    uint64_t most = S.s[0].wr_total > S.s[1].wr_total ? S.s[0].wr_total : S.s[1].wr_total;
    while (sd->wr_chunk < MAXCHUNK && most / sd->wr_chunk > 20000)
      sd->wr_chunk *= 2;
    while (sd->rd_chunk < MAXCHUNK && most / sd->rd_chunk > 20000)
      sd->rd_chunk *= 2;
    if (sd->wr_chunk > MAXCHUNK)
      sd->wr_chunk = MAXCHUNK;
    if (sd->rd_chunk > MAXCHUNK)
      sd->rd_chunk = MAXCHUNK;
    if (sd->wr_think && most / sd->wr_chunk * sd->wr_think > 60 * SEC)
      sd->wr_think = 0;
    if (sd->rd_think && most / sd->rd_chunk * sd->rd_think > 60 * SEC)
      sd->rd_think = 0;
  }
  sc->early_closer = !sc->giveup && rchance(r, 10) ? (int)rbelow(r, 2) : -1;
  sc->early_permille = (unsigned)rbelow(r, 1000);
  /* Faults within the (estimated) life of the session. */
  uint64_t most = S.s[0].wr_total + S.s[1].wr_total;
  ns_t est = (ns_t)(most * sc->ps_per_byte / 1000) + 20 * sc->lat + sc->cfg.heartbeat_ns;
  ns_t horizon = rrange(r, est / 2, 2 * est + 5 * SEC);
  sc->nfaults = rchance(r, 10) ? 0 : (int)rrange(r, 1, 8);
  for (int f = 0; f < sc->nfaults; f++) {
    struct fault *ft = &sc->faults[f];
    unsigned k = (unsigned)rbelow(r, 10);
    ft->kind = k < 5 ? F_CUT : k < 8 ? F_BLACKHOLE : F_UDP_OUTAGE;
    ft->at = rbelow(r, horizon);
    ft->sub = (int)rbelow(r, 4);
    ft->purge = rchance(r, 50);
    ns_t sus = sc->cfg.suspend_ns;
    ft->dur = rchance(r, 50) ? rlog(r, 1 * MS, sus) : rlog(r, sus, 10 * sus + 5 * SEC);
  }
  /* Sorted by start. */
  for (int a = 1; a < sc->nfaults; a++)
    for (int b = a; b > 0 && sc->faults[b].at < sc->faults[b - 1].at; b--) {
      struct fault t = sc->faults[b];
      sc->faults[b] = sc->faults[b - 1];
      sc->faults[b - 1] = t;
    }
  if (!S.restore)
    return;
  /* --restore: both sides durable, snapshots at random times, crashes at
   * random points (drawn after everything else, so that the other modes'
   * scenarios stay what they were). */
  sc->giveup = false;
  sc->cfg.give_up_ns = 600 * SEC; /* ends a side stuck after a divergence */
  sc->cfg.durable = true;
  sc->cfg.retain_max = 16u << 20;
  sc->diverge = S.force_diverge || rchance(r, 15);
  if (sc->diverge)
    sc->early_closer = -1;
  for (int i = 0; i < 2; i++) {
    sc->snap_every[i] = rlog(r, 5 * MS, 3 * SEC);
    sc->commit_max[i] = rlog(r, 1 * US, 2 * SEC);
  }
  sc->ncrash = (int)rrange(r, 1, sc->diverge ? 3 : 5);
  for (int k = 0; k < sc->ncrash; k++) {
    struct crash *cr = &sc->crashes[k];
    cr->at = rbelow(r, horizon);
    cr->who = rchance(r, 25) ? 2 : (int)rbelow(r, 2);
    cr->down = rchance(r, 50) ? 0 : rlog(r, 1 * MS, 3 * SEC);
    cr->silent = rchance(r, 30);
  }
  for (int a = 1; a < sc->ncrash; a++)
    for (int b = a; b > 0 && sc->crashes[b].at < sc->crashes[b - 1].at; b--) {
      struct crash t = sc->crashes[b];
      sc->crashes[b] = sc->crashes[b - 1];
      sc->crashes[b - 1] = t;
    }
}

static void describe(void) {
  const struct scen *sc = &S.sc;
  printf("seed %" PRIu64 ": %s%s, client writes %" PRIu64 ", server writes %" PRIu64 "\n", S.seed,
         mode_name[sc->mode], sc->giveup ? " + permanent outage (give-up)" : "",
         S.s[0].wr_total, S.s[1].wr_total);
  printf("  tcp latency %.3f ms, %.3f MB/s, mss %zu; udp latency %.3f ms jitter %.3f ms loss %u%%%s\n",
         (double)sc->lat / 1e6, 1e6 / (double)sc->ps_per_byte, sc->mss, (double)sc->udp_lat / 1e6,
         (double)sc->udp_jitter / 1e6, sc->udp_loss, sc->udp_blocked ? " BLOCKED" : "");
  printf("  heartbeat %.1f ms, suspend %.1f ms, reconnect_max %.1f ms, give_up %.1f s, connect "
         "timeout %.1f ms\n",
         (double)sc->cfg.heartbeat_ns / 1e6, (double)sc->cfg.suspend_ns / 1e6,
         (double)sc->cfg.reconnect_max_ns / 1e6, (double)sc->cfg.give_up_ns / 1e9,
         (double)sc->connect_timeout / 1e6);
  for (int i = 0; i < 2; i++)
    printf("  %s: sndbuf %zu rcvbuf %zu, write chunk %zu think %.3f ms, read chunk %zu think "
           "%.3f ms, close delay %.3f ms%s\n",
           S.s[i].name, S.s[i].sndbuf, S.s[i].rcvbuf, S.s[i].wr_chunk,
           (double)S.s[i].wr_think / 1e6, S.s[i].rd_chunk, (double)S.s[i].rd_think / 1e6,
           (double)S.s[i].close_delay / 1e6, S.s[i].shut_early ? ", shuts down at once" : "");
  static const char *fk[] = {"cut", "black hole", "udp outage"};
  static const char *ck[] = {"reset both", "reset client only", "reset server only", "silent"};
  for (int f = 0; f < sc->nfaults; f++) {
    const struct fault *ft = &sc->faults[f];
    if (ft->kind == F_CUT)
      printf("  fault at %.6f s: cut (%s%s)\n", (double)ft->at / 1e9, ck[ft->sub],
             ft->purge ? ", receive queues lost" : "");
    else
      printf("  fault at %.6f s: %s for %.3f s\n", (double)ft->at / 1e9, fk[ft->kind],
             (double)ft->dur / 1e9);
  }
  if (sc->giveup)
    printf("  permanent outage once the client wrote %u/1000 of its stream\n", sc->giveup_permille);
  if (sc->early_closer >= 0)
    printf("  the %s's application closes after reading %u/1000 of the peer's stream\n",
           S.s[sc->early_closer].name, sc->early_permille);
  if (sc->udp_dup)
    printf("  %u%% of datagrams replayed\n", sc->udp_dup);
  if (S.restore) {
    static const char *who[] = {"client", "server", "both"};
    printf("  restore: snapshots every ~%.3f/%.3f s, durable after up to %.3f/%.3f s (client/server)%s\n",
           (double)sc->snap_every[0] / 1e9, (double)sc->snap_every[1] / 1e9,
           (double)sc->commit_max[0] / 1e9, (double)sc->commit_max[1] / 1e9,
           sc->diverge ? "; a restored application diverges" : "");
    for (int k = 0; k < sc->ncrash; k++)
      printf("  crash at %.6f s: %s, down %.3f s%s\n", (double)sc->crashes[k].at / 1e9,
             who[sc->crashes[k].who], (double)sc->crashes[k].down / 1e9,
             sc->crashes[k].silent ? ", silently" : "");
  }
}

/* Both applications are through: read to EOF (or closed early) and shut
 * down writing. */
static bool apps_done(void) {
  return S.s[0].through_at && S.s[1].through_at;
}

static bool finished(void) {
  for (int i = 0; i < 2; i++) {
    const struct side *sd = &S.s[i];
    if (sd->down || (sd->live && sd->c.state != CORE_FAILED))
      return false;
  }
  return true;
}

static void final_checks(void) {
  struct side *cl = &S.s[0], *sv = &S.s[1];
  if (S.sc.giveup) {
    if (!cl->live || cl->c.state != CORE_FAILED) {
      if (!(cl->rd_eof && sv->rd_eof)) /* an outage after the data finished is no give-up */
        sim_fail("give-up run: client ended %s, not FAILED", cl->live ? state_name(cl->c.state) : "DONE");
      return;
    }
    if (cl->c.error == TETHER_ESESSIONGONE && sv->c.state == CORE_FAILED &&
        sv->c.error == TETHER_EGIVEUP && sv->failed_at <= cl->failed_at_any) {
      /* The server gave up first (give_up shorter than an earlier black
       * hole): refusing the resume is then right. */
    } else if (cl->c.error != TETHER_EGIVEUP)
      sim_fail("give-up run: client failed with %s, expected TETHER_EGIVEUP",
               err_name(cl->c.error));
    else if (cl->failed_at != cl->suspended_at_fail + cl->c.cfg.give_up_ns || !cl->failed_at)
      sim_fail("give-up run: client failed at %.9f s, suspended at %.9f s + give_up %.9f s",
               (double)cl->failed_at / 1e9, (double)cl->suspended_at_fail / 1e9,
               (double)cl->c.cfg.give_up_ns / 1e9);
    if (sv->live && sv->c.state == CORE_FAILED && sv->c.error != TETHER_EGIVEUP)
      sim_fail("give-up run: server failed with %s", err_name(sv->c.error));
    S.giveup_checked = true;
    return;
  }
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    /* Without the linger check, only failures the application could see
     * count: before it was through. */
    bool counts = S.linger_check || !sd->through_at || sd->failed_at_any < sd->through_at;
    if (sd->live && sd->c.state == CORE_FAILED && counts) {
      sim_fail("%s FAILED with %s (read %s, %" PRIu64 "/%" PRIu64 " bytes) on a healed network",
               sd->name, err_name(sd->c.error), sd->rd_eof ? "to EOF" : "not to EOF",
               sd->c.delivered, S.s[1 - i].wr_total);
      return;
    }
    if (!sd->rd_eof && S.sc.early_closer != i) {
      sim_fail("%s never read EOF", sd->name);
      return;
    }
  }
}

static bool short_backoff, tight_timeouts, restore_mode, force_diverge;

/* A seed with a divergent restore: the reader of the divergent replay must
 * fail with TETHER_EDIVERGED (its application never sees the byte: app_read
 * checks every byte); the writer hears the verdict if it gets through. */
static void divergence_checks(void) {
  int w = S.div_writer, rd = 1 - w;
  const struct side *ws = &S.s[w], *rs = &S.s[rd];
  if (!S.div_written) {
    stats.div_unwritten++;
    return;
  }
  stats.div_written++;
  bool reader_failed = rs->live && rs->c.state == CORE_FAILED && rs->c.error == TETHER_EDIVERGED;
  if (!reader_failed) {
    if (S.div_escaped) {
      stats.div_escaped++;
      return;
    }
    sim_fail("the %s's divergent byte at %" PRIu64 " went undetected: the %s ended %s%s%s",
             ws->name, S.div_at, rs->name, rs->live ? state_name(rs->c.state) : "DONE",
             rs->live && rs->c.state == CORE_FAILED ? " with " : "",
             rs->live && rs->c.state == CORE_FAILED ? err_name(rs->c.error) : "");
    return;
  }
  if (!S.div_detected[rd])
    sim_fail("%s: failed with TETHER_EDIVERGED without a replay that differed", rs->name);
  stats.div_reader++;
  if (ws->live && ws->c.state == CORE_FAILED && ws->c.error == TETHER_EDIVERGED)
    stats.div_both++;
  else if (ws->live && ws->c.state == CORE_FAILED)
    stats.div_writer_err[ws->c.error == TETHER_ESESSIONGONE ? 0 : ws->c.error == TETHER_EGIVEUP ? 1 : 2]++;
  else
    stats.div_writer_err[3]++;
}

/* A seed where a restored application ended its stream elsewhere than an
 * earlier incarnation (S.end_div saw it): that side must fail with
 * TETHER_EDIVERGED, found by the core itself (never EOF at the wrong offset:
 * check_eof); its peer too when the verdict gets through. */
static void end_div_checks(void) {
  int rd = S.end_div, w = 1 - rd;
  const struct side *rs = &S.s[rd], *ws = &S.s[w];
  stats.end_div++;
  if (!rs->live || rs->c.state != CORE_FAILED || rs->c.error != TETHER_EDIVERGED) {
    sim_fail("the %s's restored stream ended elsewhere than before, undetected: the %s ended %s%s%s",
             ws->name, rs->name, rs->live ? state_name(rs->c.state) : "DONE",
             rs->live && rs->c.state == CORE_FAILED ? " with " : "",
             rs->live && rs->c.state == CORE_FAILED ? err_name(rs->c.error) : "");
    return;
  }
  if (!S.div_detected[0] && !S.div_detected[1])
    sim_fail("%s: failed with TETHER_EDIVERGED, yet no side saw a divergence", rs->name);
  if (ws->live && ws->c.state == CORE_FAILED && ws->c.error == TETHER_EDIVERGED)
    stats.end_div_both++;
}

static bool run_seed(uint64_t seed, int verbose, bool linger_check) {
  memset(&S, 0, sizeof(S));
  S.short_backoff = short_backoff;
  S.tight_timeouts = tight_timeouts;
  S.seed = seed;
  S.verbose = verbose;
  S.linger_check = linger_check;
  S.restore = restore_mode || force_diverge;
  S.force_diverge = force_diverge;
  S.div_writer = -1;
  S.end_div = -1;
  S.r.s = mix64(seed ^ 0x7e7e7e7e7e7e7e7eull);
  S.s[0].name = "client";
  S.s[1].name = "server";
  make_scenario();
  if (verbose)
    describe();
  S.now = 1 * SEC;
  /* The handshake is done: both sides connected on connection 1. */
  struct conn *k = conn_new();
  k->end[0] = k->end[1] = E_OPEN;
  for (int i = 0; i < 2; i++) {
    struct side *sd = &S.s[i];
    core_init(&sd->c, &S.sc.cfg, i ? CORE_SERVER : CORE_CLIENT, S.now, sd->sndbuf,
              S.s[1 - i].rcvbuf);
    sd->live = true;
    sd->conn = k;
    sd->close_at = NEVER;
    sd->wr_next = sd->rd_next = S.now;
    sd->div_off = NO_OFF;
    if (S.restore) {
      /* Engine: both handshakes said durable.  The first snapshot is the
       * session as it began (a restore of it replays everything). */
      core_set_peer_durable(&sd->c);
      snap_take(i, &sd->committed);
      sd->next_snap_at = S.now + rlog(&S.r, 1 * US, S.sc.snap_every[i]);
    }
  }
  for (int f = 0; f < S.sc.nfaults; f++)
    S.sc.faults[f].at += S.now;
  for (int f = 0; f < S.sc.ncrash; f++)
    S.sc.crashes[f].at += S.now;

  int same = 0;
  ns_t last = 0;
  while (!S.fail) {
    process_due();
    if (S.fail)
      break;
    settle();
    if (S.fail || finished())
      break;
    conn_gc();
    if (!S.linger_check && !S.sc.giveup && apps_done())
      break;
    ns_t t = next_event();
    if (t == NEVER) {
      sim_fail("stuck: nothing left to happen (client %s%s, server %s%s)",
               S.s[0].live ? state_name(S.s[0].c.state) : "DONE", S.s[0].rd_eof ? " eof" : "",
               S.s[1].live ? state_name(S.s[1].c.state) : "DONE", S.s[1].rd_eof ? " eof" : "");
      break;
    }
    if (t > LIMIT) {
      sim_fail("not finished after %" PRIu64 " s virtual: client %s%s (delivered %" PRIu64
               "), server %s%s (delivered %" PRIu64 ")",
               LIMIT / SEC, S.s[0].live ? state_name(S.s[0].c.state) : "DONE",
               S.s[0].rd_eof ? " eof" : "", S.s[0].c.delivered,
               S.s[1].live ? state_name(S.s[1].c.state) : "DONE", S.s[1].rd_eof ? " eof" : "",
               S.s[1].c.delivered);
      break;
    }
    if (t <= S.now) {
      if (++same > 100000) {
        sim_fail("livelock: no progress of virtual time");
        break;
      }
    } else {
      same = 0;
      S.now = t;
    }
    if (S.now < last) {
      sim_fail("time went backwards");
      break;
    }
    last = S.now;
    S.steps++;
  }
  if (!S.fail) {
    if (S.div_writer >= 0)
      divergence_checks();
    else if (S.end_div >= 0)
      end_div_checks();
    else
      final_checks();
  }
  if (verbose) {
    for (int i = 0; i < 2; i++) {
      const struct side *sd = &S.s[i];
      printf("%s: %s, sent %" PRIu64 " delivered %" PRIu64 ", %u suspensions, %u resumes%s\n",
             sd->name, sd->live ? state_name(sd->c.state) : "DONE", sd->c.sent, sd->c.delivered,
             sd->suspends, sd->resumes, sd->rd_eof ? ", read EOF" : "");
    }
    printf("virtual time %.3f s, %" PRIu64 " steps\n", (double)S.now / 1e9, S.steps);
  }
  if (S.resumes_total)
    stats.seeds_resumed++;
  stats.resumes += S.resumes_total;
  stats.giveups += S.giveup_checked;
  stats.early += S.sc.early_closer >= 0;
  for (int i = 0; i < 2; i++) {
    stats.resent += S.s[i].c.resent;
    stats.epipe += S.s[i].got_epipe;
    stats.delivered += S.s[i].c.delivered;
  }
  for (int i = 0; i < 2; i++) {
    stats.replayed += S.replayed[i];
    if (S.s[i].live)
      core_clear(&S.s[i].c);
    snap_free(&S.s[i].committed);
    snap_free(&S.s[i].pending);
  }
  ret_bufs_free();
  conn_free_all();
  return !S.fail;
}

static void usage(void) {
  fprintf(stderr,
          "usage: sim [--seeds N] [--first S] [--seed S [-v]] [options]\n"
          "  --seeds N          run seeds first..first+N-1 (default 1000)\n"
          "  --first S          first seed (default 1)\n"
          "  --seed S           run one seed; -v prints the scenario and a trace\n"
          "  --quiet            print at most 20 failing seeds\n"
          "  --no-linger        end each run once both applications are through (EOF\n"
          "                     read, writes shut down); skip the check that both\n"
          "                     sessions then end cleanly\n"
          "  --giveup           every run has a permanent outage (expects TETHER_EGIVEUP)\n"
          "  --short-backoff    allow reconnect_max below the round trip time and\n"
          "                     connect_timeout below 8 one-way delays\n"
          "  --tight-timeouts   allow suspend_ns below twice the path delay\n"
          "  --restore          both sides durable: snapshots at random times, committed\n"
          "                     after random delays; sides crash (one, or both) at random\n"
          "                     points and restart from their last committed snapshots;\n"
          "                     in 15%% of the seeds a restored application writes one\n"
          "                     different byte among those its peer already has\n"
          "                     (expects TETHER_EDIVERGED)\n"
          "  --diverge          --restore with a divergent restore in every seed\n");
  exit(2);
}

/* ---- a seed that kills the simulator still names itself ------------------ */

static volatile uint64_t running_seed;
static char replay_flags[160]; /* the options that reproduce the run */

/* Async-signal-safe: write(2) only. */
static void say_running_seed(void) {
  char num[24], line[320];
  size_t n = 0, k = sizeof(num);
  uint64_t v = running_seed;
  do
    num[--k] = (char)('0' + v % 10);
  while ((v /= 10) && k > 0);
  const char *parts[] = {"sim: died in seed ", "; replay: sim --seed ", " -v", "\n"};
  for (int i = 0; i < 4; i++) {
    for (const char *c = parts[i]; *c && n < sizeof(line); c++)
      line[n++] = *c;
    if (i < 2)
      for (size_t j = k; j < sizeof(num) && n < sizeof(line); j++)
        line[n++] = num[j];
    if (i == 2)
      for (const char *c = replay_flags; *c && n < sizeof(line); c++)
        line[n++] = *c;
  }
  (void)!write(STDERR_FILENO, line, n);
}

static void on_fatal_signal(int sig) {
  say_running_seed();
  raise(sig); /* SA_RESETHAND: the default action now */
}

/* Defined by the sanitizers' runtime (ASan, UBSan, TSan), absent otherwise.
 * A sanitizer reports a crash itself (a handler of ours would replace its
 * report) and then exits without a signal: it calls this back.  It leaves
 * abort() alone (a failed assert). */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void name_seed_on_death(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_fatal_signal;
  sa.sa_flags = (int)SA_RESETHAND;
  sigaction(SIGABRT, &sa, NULL);
  if (__sanitizer_set_death_callback) {
    __sanitizer_set_death_callback(say_running_seed);
    return;
  }
  const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
  for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
    sigaction(sigs[i], &sa, NULL);
}

int main(int argc, char **argv) {
  uint64_t first = 1, count = 1000;
  bool one = false, linger = true, quiet = false;
  int verbose = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seeds") && i + 1 < argc)
      count = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--first") && i + 1 < argc)
      first = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
      first = strtoull(argv[++i], NULL, 10);
      count = 1;
      one = true;
    } else if (!strcmp(argv[i], "-v"))
      verbose = 1;
    else if (!strcmp(argv[i], "--no-linger"))
      linger = false;
    else if (!strcmp(argv[i], "--short-backoff"))
      short_backoff = true;
    else if (!strcmp(argv[i], "--tight-timeouts"))
      tight_timeouts = true;
    else if (!strcmp(argv[i], "--giveup"))
      force_giveup = true;
    else if (!strcmp(argv[i], "--restore"))
      restore_mode = true;
    else if (!strcmp(argv[i], "--diverge"))
      force_diverge = true;
    else if (!strcmp(argv[i], "--quiet"))
      quiet = true;
    else
      usage();
  }
  snprintf(replay_flags, sizeof(replay_flags), "%s%s%s%s%s%s", linger ? "" : " --no-linger",
           force_giveup ? " --giveup" : "", short_backoff ? " --short-backoff" : "",
           tight_timeouts ? " --tight-timeouts" : "",
           restore_mode && !force_diverge ? " --restore" : "", force_diverge ? " --diverge" : "");
  name_seed_on_death();
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint64_t passed = 0, failed = 0;
  for (uint64_t seed = first; seed < first + count; seed++) {
    running_seed = seed;
    bool ok = run_seed(seed, verbose && one, linger);
    if (ok) {
      passed++;
      if (one)
        printf("seed %" PRIu64 ": ok\n", seed);
    } else {
      failed++;
      if (!quiet || failed <= 20)
        printf("seed %" PRIu64 ": FAIL %s\n  replay: sim --seed %" PRIu64 " -v%s\n", seed, S.why,
               seed, replay_flags);
    }
    fflush(stdout);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (!one)
    printf("exercised: %" PRIu64 " seeds resumed (%" PRIu64 " resumes, %.1f MB resent), %.1f MB "
           "delivered, %" PRIu64 " give-ups checked, %" PRIu64 " early closes (%" PRIu64
           " EPIPE)\n",
           stats.seeds_resumed, stats.resumes, (double)stats.resent / 1e6,
           (double)stats.delivered / 1e6, stats.giveups, stats.early, stats.epipe);
  if (!one && (restore_mode || force_diverge))
    printf("restores: %" PRIu64 " crashes (%" PRIu64 " of both sides), %" PRIu64
           " restores, %.1f MB rolled back, %.1f MB of replays checked; divergences: %" PRIu64
           " injected, %" PRIu64 " written, %" PRIu64 " detected (%" PRIu64
           " on both sides; writer otherwise ESESSIONGONE %" PRIu64 ", EGIVEUP %" PRIu64
           ", other %" PRIu64 ", not failed %" PRIu64 "), %" PRIu64
           " escaped an interrupted replay, %" PRIu64 " never written; %" PRIu64
           " streams ended elsewhere after a rollback (detected; %" PRIu64 " on both sides); %" PRIu64
           " closed sessions reopened by a peer restored behind the end\n",
           stats.crashes, stats.both_crashes, stats.restores, (double)stats.rolled_back / 1e6,
           (double)stats.replayed / 1e6, stats.div_injected, stats.div_written, stats.div_reader,
           stats.div_both, stats.div_writer_err[0], stats.div_writer_err[1],
           stats.div_writer_err[2], stats.div_writer_err[3], stats.div_escaped,
           stats.div_unwritten, stats.end_div, stats.end_div_both, stats.closed_reopened);
  printf("%" PRIu64 " passed, %" PRIu64 " failed (%.1f s)\n", passed, failed, secs);
  return failed ? 1 : 0;
}
