/* The sans-IO session core: counters, retention, the state machine, timers,
 * reconnect backoff, resume arithmetic and the close protocol of one session.
 *
 * No sockets, clock, threads or event loop here.  Every entry point takes the
 * current time as a uint64_t nanosecond timestamp; randomness comes in as an
 * argument.  The caller (the engine, or the simulator in tests/sim) performs
 * the I/O the core asks for and reports what happened.  Locking is the
 * caller's business.
 *
 * Stream arithmetic (all offsets are 64-bit byte counts since the session
 * began):
 *   sent       bytes the application wrote (all of [ret.base, sent) retained)
 *   tx_pos     bytes pushed into the current transport (<= sent; < sent only
 *              while a resend after a reconnect is in progress)
 *   delivered  bytes handed to the application
 *   peer_acked the peer's delivered count as last reported
 */
#ifndef TETHER_CORE_SESSION_H
#define TETHER_CORE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "replay.h"
#include "retention.h"

struct core_config {
  uint64_t heartbeat_ns;
  uint64_t suspend_ns;
  uint64_t reconnect_max_ns;
  uint64_t give_up_ns; /* 0 = never */
  bool durable;        /* we may restart from snapshots: keep the tail our
                          peer needs to check a replay (core_trim_floor) */
  uint64_t retain_max; /* retention cap while the peer is durable */
  uint64_t peer_rcvbuf_cap; /* most of a peer's declared receive buffer
                               that is believed (0: CORE_PEER_RCVBUF_CAP):
                               what a peer declares sizes our retention */
};

/* The cap on a peer's declared receive buffer when the configuration sets
 * none (the engine always sets one: see TETHER_OPT_PEER_RCVBUF_MAX_BYTES). */
#define CORE_PEER_RCVBUF_CAP ((uint64_t)64 << 20)

enum core_role { CORE_CLIENT, CORE_SERVER };

/* Values match tether_state. */
enum core_state {
  CORE_CONNECTED = 1,
  CORE_SUSPENDED = 2,
  CORE_CLOSED = 3,
  CORE_FAILED = 4,
};

/* What core_on_timer() asks the caller to do, as bits. */
enum core_action {
  CORE_ACT_HEARTBEAT = 1 << 0, /* send a control datagram (core_build_ctl) */
  CORE_ACT_SUSPEND = 1 << 1,   /* heartbeat timeout, or only a resume can
                                  help: retire the transport and call
                                  core_on_transport_lost() */
  CORE_ACT_REDIAL = 1 << 2,    /* client: start a reconnection attempt */
  CORE_ACT_FAILED = 1 << 3,    /* the session just failed (see ->error) */
  CORE_ACT_FIN = 1 << 4,       /* shut down writing on the transport */
  CORE_ACT_DONE = 1 << 5,      /* a closed session is finished: free it */
};

/* A control datagram's content, decoded and authenticated by the caller. */
struct core_ctl {
  uint64_t seq;
  uint64_t delivered;
  uint64_t sent;
  bool write_closed;
  bool read_closed;
  bool ack_write_closed;
  bool ack_read_closed;
  bool want_reply;
  uint64_t rcvbuf_max;
  uint64_t durable_sent;      /* sender is durable: counters of its last */
  uint64_t durable_delivered; /* committed snapshot */
  bool durable_finished;      /* ... which holds this session finished
                                 (CLOSED): it never comes back behind */
  uint32_t failed;            /* sender's session failed: -TETHER_E* code */
  bool suspended;             /* sender is suspended (a probe: core_on_unreachable) */
  bool solo;                  /* sender's session is not covered by its path's
                                 heartbeats (core_path_cover): a covered,
                                 quiet peer answers it */
};

/* What each side says about itself when a session resumes. */
struct core_resume_state {
  uint64_t delivered;
  uint64_t sent;
  uint64_t retained_from;
  bool write_closed;
  bool read_closed;
  uint64_t rcvbuf_max;
  uint64_t verify_from;       /* oldest offset of the peer's stream a replay of
                                 which this side can check (= delivered when
                                 it keeps no replay log) */
  uint64_t durable_sent;      /* this side is durable: its last committed */
  uint64_t durable_delivered; /* snapshot's counters (else 0) */
  uint64_t ctl_seq;           /* the last control sequence number it used:
                                 the peer drops datagrams sent before */
  uint64_t ctl_seq_seen;      /* the last one it accepted from the peer: a
                                 peer restored again from the same snapshot
                                 moves above it (core_on_resumed) */
  /* Local knowledge, not sent: where this side knows the peer's stream ends
   * (a peer restored behind it must end it there again). */
  bool peer_wr_closed;
  uint64_t peer_wr_end;
};

/* Control sequence numbers are epoch << CORE_EPOCH_SHIFT | counter; the
 * epoch counts restores (and moves past every number a peer has seen from
 * an earlier run of the same snapshot), so no number is ever used twice. */
#define CORE_EPOCH_SHIFT 40
#define CORE_EPOCH_MAX ((1u << 23) - 1)

/* One direction of a session closed by one side, as this side knows it.
 * Each session tracks four: its own writing and reading (wr, rd) and the
 * peer's (peer_wr, peer_rd).  A half-close moves OPEN -> CLOSED when the
 * closing side's application closes it (our own) or announces it (the
 * peer's), and CLOSED -> ACKED once the closing side has the other's
 * acknowledgement of it; a resume sets all four afresh from both sides'
 * states (a peer restored from an older snapshot may open again what it
 * had closed).  A session is finished when every direction is closed and
 * acknowledged (core_finished). */
enum core_half {
  CORE_HALF_OPEN = 0,
  CORE_HALF_CLOSED,
  CORE_HALF_ACKED,
};

/* How a CLOSED session waits until the peer needs nothing more from it. */
enum core_linger {
  CORE_LINGER_WAIT = 0, /* for the peer's word */
  CORE_LINGER_REDIAL,   /* client: the server may lack our final state and
                           does not answer: resume to tell it */
  CORE_LINGER_OVER,     /* waits no more (past CORE_LINGER_MAX_NS, or the
                           peer's session is gone) */
};

static inline bool core_half_closed(enum core_half h) { return h != CORE_HALF_OPEN; }
static inline bool core_half_acked(enum core_half h) { return h == CORE_HALF_ACKED; }

struct core_session {
  struct core_config cfg;
  enum core_role role;
  enum core_state state; /* atomic stores (set_state): read lock-free too */
  int error; /* TETHER_E* once FAILED */

  /* transmit side */
  uint64_t sent;
  uint64_t tx_pos;
  uint64_t peer_acked;
  uint64_t peer_delivered; /* as the peer last reported it: unlike peer_acked
                              it may exceed sent, after our own rollback */
  uint64_t peer_delivered_max; /* the most the peer ever reported (a peer
                                  checking our replay reports less): after
                                  our rollback, how far we must write again
                                  even though the peer closed */
  uint64_t local_sndbuf_max;
  uint64_t peer_rcvbuf_max; /* as declared, capped by cfg.peer_rcvbuf_cap */
  struct retention ret;     /* at most local_sndbuf_max + peer_rcvbuf_max
                               bytes, or cfg.retain_max if more while the
                               peer is durable: writers wait beyond */

  /* receive side */
  uint64_t delivered;
  uint64_t acked_delivered; /* delivered count in the last control sent */

  /* close protocol: the four half-closes (enum core_half) */
  enum core_half wr;      /* our application shut down writing at `sent` */
  enum core_half rd;      /* our application closed: discard what arrives */
  enum core_half peer_wr; /* the peer shut down writing at peer_wr_end
                             (ACKED: it has every acknowledgement of its
                             writes) */
  uint64_t peer_wr_end;
  enum core_half peer_rd; /* the peer's application closed */
  bool fin_sent;          /* FIN issued on the current transport */
  uint64_t closed_at_ns;   /* when our application shut down writing */
  uint64_t released_at_ns; /* when it closed the session (core_close) */
  uint64_t finished_at_ns; /* when the session became CLOSED */
  uint64_t settled_at_ns;  /* CLOSED: when the peer was first known to have
                              all it needs from us (TIME_WAIT runs from it) */
  enum core_linger linger; /* CLOSED: how it waits for the peer */
  bool accept_unheard;     /* server: resumed, and no datagram since that
                              shows the client got our ResumeAccept */
  struct {                         /* what our last datagram acknowledged */
    uint64_t at_ns, delivered;
    bool write_closed, read_closed;
    uint64_t durable_sent, durable_delivered; /* and reported (cfg.durable) */
    bool durable_finished;
  } last_ctl;
  uint64_t unconfirmed_give_up_ns; /* server: nonzero until the client proved
                                      it holds the keys (core_set_unconfirmed) */
  uint64_t ack_poll_at_ns; /* client, no side channel: resume then to learn
                              the acknowledgements of our writes */
  unsigned ack_polls;      /* such resumes so far (the interval doubles) */

  uint32_t epoch; /* restores from snapshots so far */

  /* durable acknowledgements (see replay.h and tether(7), SNAPSHOTS) */
  bool peer_durable;               /* the peer may roll back to a snapshot */
  uint64_t peer_durable_sent;      /* its last committed snapshot's counters */
  uint64_t peer_durable_delivered;
  bool peer_durable_finished;      /* its last committed snapshot holds the
                                      session finished (or we stopped
                                      waiting for that: see done_at()) */
  uint64_t durable_sent;           /* ours (cfg.durable) */
  uint64_t durable_delivered;
  bool durable_finished;           /* our last committed snapshot holds the
                                      session CLOSED */
  struct replay_log rlog;          /* peer_durable: hashes of what we delivered */
  uint64_t rx_pos;                 /* offset of the next byte the transport
                                      brings; < delivered during a replay */
  struct replay_check rcheck;      /* checks [rx_pos, delivered) */

  /* side channel */
  uint64_t tx_seq;
  uint64_t rx_seq;
  bool udp_seen; /* ever received an authenticated datagram */
  uint64_t last_rx_ns;
  uint64_t next_hb_ns;
  uint64_t close_retry_ns; /* pending close notice retransmission interval */
  /* Path liveness (tether(7), "Path heartbeats"): while its path covers it,
   * a quiet session (core_quiet) sends no heartbeat of its own, and the
   * path's heartbeats, which vouch for it, count as the peer's (path_rx_ns,
   * the latest).  The engine sets both without the session's locks:
   * atomic. */
  bool path_covered;
  uint64_t path_rx_ns;
  /* Suspended, peer not durable: reports that nothing listens on
   * the peer's side channel any more (core_on_unreachable). */
  struct {
    uint64_t seq;      /* the last probe reported (at first: our last
                          control number before the suspension) */
    uint64_t first_ns; /* when the first of these reports came */
    unsigned n;        /* reports for distinct probes since */
    bool since_rx;     /* a report came after the peer's last datagram */
    bool distrust;     /* the peer spoke after such a report: for this
                          peer they prove nothing (a firewall's reject) */
  } unreach;

  /* reconnection */
  uint64_t suspended_at_ns;
  uint64_t next_redial_ns;
  uint64_t backoff_ns;

  /* statistics */
  uint64_t resent;
  uint64_t reconnects;
  uint64_t suspended_total_ns;
};

void core_init(struct core_session *c, const struct core_config *cfg,
               enum core_role role, uint64_t now, uint64_t local_sndbuf_max,
               uint64_t peer_rcvbuf_max);
void core_clear(struct core_session *c);

/* ---- transmit side ---- */

/* 0 if the application may write now; -EPIPE after shutdown or when the
 * peer closed (after our rollback: once we wrote again what it delivered); -EAGAIN while suspended or a resend is pending; a TETHER_E*
 * once failed. */
int core_write_check(const struct core_session *c);
/* How many bytes the application may write now (retention room; after our
 * rollback, with the peer closed, no more than it delivered before). */
size_t core_write_room(const struct core_session *c);
/* Reserves retention memory for n bytes (call before pushing them into the
 * transport: once the kernel has them they must be kept).  0 or -ENOMEM. */
int core_reserve(struct core_session *c, size_t n) __attribute__((warn_unused_result));
/* Records n bytes (reserved before) the caller just pushed into the transport. */
void core_on_written(struct core_session *c, const void *data, size_t n);
/* The next contiguous run of retained bytes not yet in the transport. */
size_t core_pending(const struct core_session *c, const uint8_t **p);
/* Records n pending bytes pushed into the transport. */
void core_on_flushed(struct core_session *c, size_t n);
/* The in-flight rule: drop bytes the peer must have consumed, given the
 * local kernel send queue length -- but never below core_trim_floor(). */
void core_trim_inflight(struct core_session *c, uint64_t outq);
/* The oldest byte retention must keep whatever the peer consumed: what the
 * durable peer's last snapshot does not cover, and, when we are durable,
 * the start of the chunk holding our write position (a replay after our own
 * rollback resends from there; see replay.h). */
uint64_t core_trim_floor(const struct core_session *c);

/* ---- receive side ---- */

/* n bytes at data were read from the transport and handed to the
 * application (logged for replay checks while the peer is durable). */
void core_on_delivered(struct core_session *c, const void *data, size_t n);
/* Bytes the transport brings next that the application already has (a
 * replay after the peer's rollback): read them with core_on_replayed()
 * instead of delivering them. */
static inline uint64_t core_replay_pending(const struct core_session *c) {
  return c->state == CORE_FAILED ? 0 : c->delivered - c->rx_pos;
}
/* Checks n <= core_replay_pending() replayed bytes: 0, or TETHER_EDIVERGED
 * when they differ from what was delivered (the session has failed).  A
 * check that ends with the session finished makes core_next_deadline() 0:
 * core_on_timer() then closes it. */
int core_on_replayed(struct core_session *c, const void *data, size_t n);
/* Bytes delivered since the last acknowledgement after which an explicit
 * ack is due, so the peer's retention shrinks to about the bytes really in
 * flight instead of the peer's whole receive buffer.  Not needed for speed
 * (a writer trims by the in-flight bound when it runs out of room), only for
 * memory: each ack costs the reader a MAC and a datagram and wakes the
 * writer's engine, so at tens of Gbit/s they are kept to a few thousand a
 * second. */
#define CORE_ACK_EVERY ((uint64_t)2 * 1024 * 1024)
/* True when the application read enough since the last ack to send one now. */
bool core_ack_due(const struct core_session *c);
/* True if the peer shut down writing and every byte has been delivered. */
bool core_at_eof(const struct core_session *c);
/* The transport reported EOF: true if it is the peer's real close (deliver
 * EOF), false if it must be treated as a failure. */
bool core_eof_confirmed(const struct core_session *c);

/* ---- side channel ---- */

void core_build_ctl(struct core_session *c, uint64_t now, struct core_ctl *out);
/* An authenticated control datagram arrived.  Returns 0, or -1 if it was a
 * replay (ignore it).  Sets *reply when the peer expects an answer now. */
int core_on_ctl(struct core_session *c, uint64_t now, const struct core_ctl *ctl,
                bool *reply);

/* A server session made before the client proved that it holds the
 * session keys (the engine checks the client's ClientFinish later, on the
 * session's first read): if its transport is lost before any proof, it
 * gives up after `ns` rather than give_up_ns -- a client that never
 * finished its handshake will never resume.  Proofs: an authenticated
 * datagram, a resume, or core_confirm() (a correct ClientFinish). */
void core_set_unconfirmed(struct core_session *c, uint64_t ns);
void core_confirm(struct core_session *c);

/* Peer not durable (it never restores from a snapshot), either role: while
 * suspended, heartbeats (probes, marked suspended) keep going to the peer's
 * side channel, so
 * that the peer's host can tell that nobody listens there any more -- the
 * peer's process is gone, and with it the session, which no redial can
 * resume.  The caller reports each ICMP port unreachable for one of our
 * control datagrams (authenticated: `seq` is one we sent) from the peer's
 * host.  The session fails with TETHER_ESESSIONGONE once reports for two
 * different probes span core_unreach_span() with nothing heard from the peer
 * in between: one report (a spoofed one, a datagram that arrived as a
 * restarting NAT forgot its mappings) is not enough, and a live client that
 * can reach us again redials within that span (a live server answers our
 * redials, and a restarted one that is not durable refuses the session).  Reports while connected,
 * for datagrams sent before the suspension, or for a peer that spoke after
 * an earlier report (its host rejects our datagrams while it lives, as a
 * firewall's REJECT does) count for nothing.  Returns true when the session
 * just failed. */
bool core_on_unreachable(struct core_session *c, uint64_t now, uint64_t seq);
/* How long the evidence of core_on_unreachable() must span (less an eighth
 * of a heartbeat, for timer jitter): two heartbeat intervals, and at least
 * our own reconnect_max_ns (taken for the peer's longest pause between
 * redials). */
uint64_t core_unreach_span(const struct core_session *c);

/* ---- path liveness ---- */

/* Whether a heartbeat would tell the peer nothing new: connected, the side
 * channel proven, every byte we sent acknowledged (so no byte waits in
 * TCP: nothing for the transport's own liveness check to watch), every
 * byte delivered acknowledged, no half-close, no replay check, our durable
 * counters reported.  Caller holds the session's locks. */
bool core_quiet(const struct core_session *c);
/* The engine: the path's heartbeats vouch for this session (covered, at
 * `now`) or no longer do (!covered).  Safe without the session's locks. */
void core_path_cover(struct core_session *c, bool covered, uint64_t now);
/* The engine: its path's heartbeats last vouched for this session at
 * `when` (a covered session's time, brought up to date when it needs it). */
void core_path_heard(struct core_session *c, uint64_t when);
static inline bool core_path_covered(const struct core_session *c) {
  return __atomic_load_n(&c->path_covered, __ATOMIC_RELAXED);
}

/* ---- durable acknowledgements ---- */

/* The peer may roll back to snapshots (it said so in the handshake): keep
 * what its snapshots do not cover and log what we deliver (replay.h). */
void core_set_peer_durable(struct core_session *c);
/* A snapshot holding our counters sent/delivered is durable now: report them
 * to the peer at once. */
void core_durable_commit(struct core_session *c, uint64_t now, uint64_t sent, uint64_t delivered);
/* The snapshot just committed holds this session CLOSED (finished): restored
 * from it, this side never needs its peer to resend or check anything.
 * Reported to the peer, which may then let its own finished session go. */
void core_durable_finished(struct core_session *c, uint64_t now);

/* ---- lifecycle ---- */

void core_shutdown(struct core_session *c, uint64_t now);
/* The application let go.  Like TCP's orphaned sockets, the session keeps
 * delivering its last bytes across outages, but gives up after at most
 * CORE_LINGER_MAX_NS of suspension: nobody is left to report a failure to. */
#define CORE_LINGER_MAX_NS ((uint64_t)120 * 1000000000)
/* A closed session lingers until the peer is known to have all it needs
 * from us (every byte and both closes acknowledged, or shown by a resume)
 * and, when the peer is durable, until the peer's last committed snapshot
 * holds the session finished (so that no restore of the peer can come back
 * to it behind the end), at most CORE_LINGER_MAX_NS after it finished; a
 * client resumes to tell a server that does not answer.  Meanwhile a peer
 * restored from an older snapshot resumes it like any suspended session
 * (CLOSED -> CONNECTED): its resend and the check of its replay need what
 * the session still retains.  Then it stays this long (like TCP's
 * TIME_WAIT) so that its own last acknowledgement can be repeated and a
 * peer that missed it can still resume and learn the outcome: long enough
 * for the peer to notice a lost transport and redial once. */
#define CORE_TIME_WAIT_NS(c) (2 * (c)->cfg.suspend_ns + (c)->cfg.reconnect_max_ns)
void core_close(struct core_session *c, uint64_t now);
/* The transport failed or was retired.  No-op unless CONNECTED. */
void core_on_transport_lost(struct core_session *c, uint64_t now);
void core_resume_state(const struct core_session *c, struct core_resume_state *out);
/* Client: our state for a new resume attempt.  Each attempt takes a
 * control number of its own, so that the server can tell a late attempt,
 * given up and overtaken by a newer one, from that newer one. */
void core_resume_attempt(struct core_session *c, struct core_resume_state *out);
/* Server: whether an authenticated resume attempt is older than something
 * the client has sent since (a resume or a datagram): it must be refused
 * (Reject STALE) without touching the session. */
bool core_resume_stale(const struct core_session *c, const struct core_resume_state *peer);
/* Client: the server refused our attempt as stale although we gave up none
 * we did not replace: we are a second run from one snapshot, behind the
 * numbers the first run used.  Moves to the next epoch (attempts refused
 * again move further, until past them). */
void core_resume_refused_stale(struct core_session *c);
/* Whether two sides' resume states can be reconciled: 0, or TETHER_EWINDOW
 * when bytes one side lacks are no longer retained by the other, or when one
 * side rolled back behind what its peer delivered and the peer cannot check
 * the replay (it keeps no replay log that far back); TETHER_EDIVERGED when a
 * side shut down writing below what its peer delivered.
 * Symmetric, so both sides of a resume reach the same verdict -- except that
 * `ours` also says where we know the peer's stream ends (peer_wr_closed,
 * peer_wr_end, which do not travel): a peer that rolled back and now ends
 * it elsewhere, or writes past it, diverged (TETHER_EDIVERGED), which only
 * we can tell; our Reject, or our failed control datagrams, tell the peer. */
int core_resume_check(const struct core_resume_state *ours, const struct core_resume_state *peer);
/* Where tx's resend starts (see resume.c): rx's delivered count, or, after
 * tx rolled back behind it, the chunk boundary below tx's write position. */
uint64_t core_resume_from(const struct core_resume_state *tx, const struct core_resume_state *rx);
/* A resume handshake succeeded with `peer` as the peer's state.  Returns 0
 * (the caller flushes core_pending() first) or TETHER_EWINDOW / -EPROTO
 * when the peer's state cannot be reconciled (the session has failed).
 * A CLOSED session may also resume: it only exchanges final states (a peer
 * that missed our final acknowledgement finishes that way). */
int core_on_resumed(struct core_session *c, uint64_t now,
                    const struct core_resume_state *peer);
/* A CLOSED session stays CLOSED, except after a divergent replay
 * (TETHER_EDIVERGED): a failure then only means that the peer's session is
 * gone (it needs nothing more from us). */
void core_fail(struct core_session *c, int err);
/* Whether the session needs no transport any more (both directions done). */
bool core_finished(const struct core_session *c);

/* ---- time ---- */

/* The earliest time core_on_timer() has something to do (UINT64_MAX: none). */
uint64_t core_next_deadline(const struct core_session *c);
/* Advances timers; returns CORE_ACT_* bits.  rnd is a fresh random value. */
unsigned core_on_timer(struct core_session *c, uint64_t now, uint32_t rnd);

#endif
