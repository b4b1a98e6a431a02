#include "session.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "tether/tether.h"

#define MS ((uint64_t)1000000)
#define FIRST_BACKOFF_NS (50 * MS)
#define FIRST_CLOSE_RETRY_NS (10 * MS)
#define FIRST_HEARTBEAT_NS (50 * MS)

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Every change of state.  The engine holds its locks around every call
 * here, but it also looks at the state without them where a stale answer
 * is harmless (tether_session_state, the data path's first check): those
 * are atomic loads, so the stores are atomic too.  A compiler builtin, no
 * thread library: the core stays free of I/O and threads. */
static void set_state(struct core_session *c, enum core_state st) {
  __atomic_store_n(&c->state, st, __ATOMIC_RELAXED);
}

/* Local send buffer plus the peer's receive buffer: a writer never blocks
 * earlier than with TCP.  A durable peer's rollback needs more: up to
 * retain_max, after which writers wait for its next durable ack. */
static size_t retention_cap(const struct core_session *c) {
  uint64_t m = c->local_sndbuf_max + c->peer_rcvbuf_max;
  if (m < c->local_sndbuf_max) /* overflowed */
    m = UINT64_MAX;
  if (c->peer_durable && c->cfg.retain_max > m)
    m = c->cfg.retain_max;
  return m > SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)m;
}

/* Every receive buffer size the peer declares (hello, control datagram,
 * resume, or a snapshot of any of them) comes in here: believed up to the
 * local policy's cap only, since it sizes our retention -- a peer claiming
 * a huge buffer and withholding acknowledgements would otherwise make us
 * keep all we write. */
static void set_peer_rcvbuf(struct core_session *c, uint64_t declared) {
  uint64_t cap = c->cfg.peer_rcvbuf_cap ? c->cfg.peer_rcvbuf_cap : CORE_PEER_RCVBUF_CAP;
  c->peer_rcvbuf_max = min64(declared, cap);
  retention_set_max(&c->ret, retention_cap(c));
}

uint64_t core_trim_floor(const struct core_session *c) {
  uint64_t floor = UINT64_MAX;
  if (c->peer_durable)
    floor = c->peer_durable_delivered;
  if (c->cfg.durable)
    floor = min64(floor, replay_align(c->sent));
  return floor;
}

/* What we tell the peer we delivered: while a replay is being checked, only
 * how far the check got, so that a resume interrupting it resends (and we
 * check) the rest instead of skipping it. */
static uint64_t reported_delivered(const struct core_session *c) {
  return core_replay_pending(c) ? c->rx_pos : c->delivered;
}

static void trim(struct core_session *c, uint64_t upto) {
  retention_trim(&c->ret, min64(upto, core_trim_floor(c)));
}

/* The peer's durable point moved: forget the hashes it no longer needs, but
 * none that a replay in progress has yet to be checked against. */
static void trim_replay_log(struct core_session *c) {
  uint64_t upto = c->peer_durable_sent;
  if (core_replay_pending(c))
    upto = min64(upto, c->rx_pos);
  replay_log_trim(&c->rlog, upto);
}

void core_init(struct core_session *c, const struct core_config *cfg,
               enum core_role role, uint64_t now, uint64_t local_sndbuf_max,
               uint64_t peer_rcvbuf_max) {
  memset(c, 0, sizeof(*c));
  c->cfg = *cfg;
  c->role = role;
  set_state(c, CORE_CONNECTED);
  c->local_sndbuf_max = local_sndbuf_max;
  retention_init(&c->ret, 0, 0);
  set_peer_rcvbuf(c, peer_rcvbuf_max);
  c->last_rx_ns = now;
  /* Soon, to prove the side channel early, but not at once: a short
   * session (a request and its answer) ends before it and never needs a
   * heartbeat, and a new session's first moments are its setup's critical
   * path, which an extra datagram and the peer's wake-up would slow. */
  c->next_hb_ns = now + min64(FIRST_HEARTBEAT_NS, cfg->heartbeat_ns);
}

void core_clear(struct core_session *c) {
  retention_clear(&c->ret);
  replay_log_clear(&c->rlog);
}

/* ---- transmit side ------------------------------------------------------ */

int core_write_check(const struct core_session *c) {
  if (c->state == CORE_FAILED)
    return c->error;
  /* After our own rollback the peer may have delivered (and discarded, its
   * application having closed) more of our stream than we have written
   * again: the application must still write that part as it did before, or
   * its replay would end early and diverge.  How much, only a resume tells
   * (a restored session has not resumed yet): not while suspended. */
  if (core_half_closed(c->wr) || c->state == CORE_CLOSED)
    return -EPIPE;
  if (core_half_closed(c->peer_rd) && c->sent >= c->peer_delivered_max &&
      c->state != CORE_SUSPENDED)
    return -EPIPE;
  if (c->state != CORE_CONNECTED || c->tx_pos < c->sent)
    return -EAGAIN;
  return 0;
}

size_t core_write_room(const struct core_session *c) {
  size_t room = retention_room(&c->ret);
  if (core_half_closed(c->peer_rd) && c->sent < c->peer_delivered_max &&
      c->peer_delivered_max - c->sent < room)
    room = (size_t)(c->peer_delivered_max - c->sent);
  return room;
}

int core_reserve(struct core_session *c, size_t n) { return retention_reserve(&c->ret, n); }

void core_on_written(struct core_session *c, const void *data, size_t n) {
  int rc = retention_append(&c->ret, data, n);
  assert(rc == 0); /* reserved by core_reserve() */
  (void)rc;
  c->sent += n;
  c->tx_pos += n;
}

size_t core_pending(const struct core_session *c, const uint8_t **p) {
  if (c->tx_pos >= c->sent) {
    *p = NULL;
    return 0;
  }
  return retention_peek(&c->ret, c->tx_pos, p);
}

void core_on_flushed(struct core_session *c, size_t n) {
  c->tx_pos += n;
  c->resent += n;
}

void core_trim_inflight(struct core_session *c, uint64_t outq) {
  /* Everything below tx_pos - outq was acknowledged by the peer's kernel, and
   * its receive queue cannot hold more than peer_rcvbuf_max: older bytes have
   * reached the peer's application.  (An unknown outq, UINT64_MAX, trims
   * nothing; the comparison avoids overflowing the sum.) */
  if (outq < c->tx_pos && c->tx_pos - outq > c->peer_rcvbuf_max)
    trim(c, c->tx_pos - outq - c->peer_rcvbuf_max);
  trim(c, c->peer_acked);
}

/* ---- receive side ------------------------------------------------------- */

void core_on_delivered(struct core_session *c, const void *data, size_t n) {
  c->delivered += n;
  c->rx_pos += n;
  if (c->peer_durable)
    (void)replay_log_append(&c->rlog, data, n); /* -ENOMEM: a shorter log */
}

int core_on_replayed(struct core_session *c, const void *data, size_t n) {
  assert(n <= core_replay_pending(c));
  c->rx_pos += n;
  if (replay_check_feed(&c->rcheck, &c->rlog, data, n) < 0) {
    core_fail(c, TETHER_EDIVERGED);
    return TETHER_EDIVERGED;
  }
  return 0;
}

bool core_ack_due(const struct core_session *c) {
  return c->delivered - c->acked_delivered >= CORE_ACK_EVERY;
}

bool core_at_eof(const struct core_session *c) {
  return core_half_closed(c->peer_wr) && c->delivered >= c->peer_wr_end;
}

bool core_eof_confirmed(const struct core_session *c) { return core_at_eof(c); }

/* ---- close bookkeeping -------------------------------------------------- */

/* A peer that closed needs nothing more of our stream -- except, after our
 * rollback, what it delivered (and discarded) before: it checks that we
 * write that again, so it must have acknowledged it (peer_acked reaches
 * peer_delivered_max only then; they are equal otherwise). */
static bool write_done(const struct core_session *c) {
  return (core_half_closed(c->peer_rd) && c->peer_acked >= c->peer_delivered_max) ||
         (core_half_acked(c->wr) && c->peer_acked >= c->sent);
}

/* Not while a replay is being checked: a peer that rolled back behind our
 * end must write it again, and we must see that it is the same. */
static bool read_done(const struct core_session *c) {
  return (core_at_eof(c) || core_half_acked(c->rd)) && !core_replay_pending(c);
}

bool core_finished(const struct core_session *c) { return write_done(c) && read_done(c); }

/* We ask for an answer while a close, or a byte written before our write
 * close, is unacknowledged: so a datagram that announces a close without
 * asking tells that its sender has every acknowledgement for it. */
static bool close_unacked(const struct core_session *c) {
  return (core_half_closed(c->wr) && !(core_half_acked(c->wr) && c->peer_acked >= c->sent)) ||
         (core_half_closed(c->rd) && !core_half_acked(c->rd));
}

/* The peer has all it needs from us to finish (the mirror of write_done()
 * and read_done() on its side), or we stopped trying to tell it. */
static bool peer_settled(const struct core_session *c) {
  return c->linger == CORE_LINGER_OVER ||
         ((core_half_acked(c->rd) || core_half_acked(c->peer_wr)) &&
          ((core_half_acked(c->wr) && c->peer_acked >= c->sent) || core_half_acked(c->peer_rd)));
}

/* ... and, when the peer may roll back, its last committed snapshot holds
 * the session finished: no restore of the peer can need us any more. */
static bool peer_done(const struct core_session *c) {
  return peer_settled(c) &&
         (!c->peer_durable || c->peer_durable_finished || c->linger == CORE_LINGER_OVER);
}

/* A half-close the peer's datagram announces: CLOSED, or ACKED if the
 * datagram asks for no reply (see close_unacked(): the peer has every
 * acknowledgement for it).  Datagrams never reopen one; only a resume can. */
static void peer_announced(enum core_half *h, bool want_reply) {
  if (!want_reply)
    *h = CORE_HALF_ACKED;
  else if (*h == CORE_HALF_OPEN)
    *h = CORE_HALF_CLOSED;
}

/* A CLOSED session is done with (TIME_WAIT may start) once the peer is, and,
 * when we are durable ourselves, once our own committed snapshot holds the
 * session finished: freed earlier, a restore of an older snapshot would
 * bring it back behind the end, to a peer that may have let go; and the
 * peer learns of that snapshot only from this session (durable_finished).
 * So a peer whose session is gone (ESESSIONGONE) can no longer come back. */
static bool done_waiting(const struct core_session *c) {
  return peer_done(c) && (!c->cfg.durable || c->durable_finished || c->linger == CORE_LINGER_OVER);
}

/* A peer restored from an older snapshot resumes a session we consider
 * CLOSED: whether it needs more than our final state (bytes resent, its
 * replay checked, or its stream's end written again on a transport). */
static bool peer_behind(const struct core_session *c, const struct core_resume_state *peer) {
  return peer->delivered < c->sent || peer->sent < c->delivered ||
         (core_half_closed(c->peer_wr) && (!peer->write_closed || peer->sent != c->peer_wr_end)) ||
         (core_half_closed(c->peer_rd) && !peer->read_closed);
}

/* The peer's stream ends where we know it does: a restored peer that ends it
 * below what we delivered, elsewhere than it did before, or writes past
 * that end, replays divergently (see core_resume_check()). */
static bool ctl_end_diverged(const struct core_session *c, const struct core_ctl *ctl) {
  if (ctl->write_closed && ctl->sent < c->delivered)
    return true;
  if (!core_half_closed(c->peer_wr))
    return false;
  return ctl->sent > c->peer_wr_end || (ctl->write_closed && ctl->sent != c->peer_wr_end);
}

/* Without a side channel the acknowledgements of our closed writing
 * direction come only in a resume: a client that has sent and read all it
 * will and still lacks them resumes to ask (see ack_poll_at_ns). */
static bool acks_by_resume(const struct core_session *c) {
  return c->role == CORE_CLIENT && c->state == CORE_CONNECTED && !c->udp_seen &&
         core_half_closed(c->wr) && c->tx_pos >= c->sent && read_done(c) && !write_done(c);
}

/* TIME_WAIT runs from the moment both sides are known to be done. */
static void note_settled(struct core_session *c, uint64_t now, bool was) {
  if (c->state == CORE_CLOSED && !was && done_waiting(c))
    c->settled_at_ns = now;
}

/* Our close notice must reach the peer quickly: retransmit it on a short,
 * doubling interval until acknowledged, instead of waiting for heartbeats. */
static void schedule_close_notice(struct core_session *c, uint64_t now) {
  c->close_retry_ns = FIRST_CLOSE_RETRY_NS;
  c->next_hb_ns = now; /* at once */
}

static void enter_closed_if_finished(struct core_session *c, uint64_t now) {
  if ((c->state == CORE_CONNECTED || c->state == CORE_SUSPENDED) && core_finished(c)) {
    if (c->state == CORE_SUSPENDED)
      c->suspended_total_ns += now - c->suspended_at_ns;
    set_state(c, CORE_CLOSED);
    c->finished_at_ns = now;
    c->settled_at_ns = now;
    retention_fit(&c->ret); /* no more writes: keep what a restored peer
                               may need, in storage of its size */
  }
}

/* Suspended, peer not durable (it cannot come back from a snapshot): probes
 * go to its side channel (see core_on_unreachable), once it has been heard
 * there (a peer whose datagrams never arrived may be behind a firewall that
 * rejects ours).  A server probes its client's host, a client its server's:
 * either may be gone for good. */
static bool probing(const struct core_session *c) {
  return c->state == CORE_SUSPENDED && !c->peer_durable && c->udp_seen && !c->unreach.distrust;
}

uint64_t core_unreach_span(const struct core_session *c) {
  uint64_t span = 2 * c->cfg.heartbeat_ns;
  return span > c->cfg.reconnect_max_ns ? span : c->cfg.reconnect_max_ns;
}

bool core_on_unreachable(struct core_session *c, uint64_t now, uint64_t seq) {
  c->unreach.since_rx = true;
  if (!probing(c) || seq <= c->unreach.seq)
    return false; /* not a probe, or one reported already */
  if (c->unreach.n++ == 0)
    c->unreach.first_ns = now;
  c->unreach.seq = seq;
  /* (Less an eighth of a heartbeat: the probes' timers and the reports'
   * handling run a little late or early.) */
  if (c->unreach.n < 2 || now + c->cfg.heartbeat_ns / 8 < c->unreach.first_ns + core_unreach_span(c))
    return false;
  c->suspended_total_ns += now - c->suspended_at_ns;
  core_fail(c, TETHER_ESESSIONGONE);
  return true;
}

/* ---- side channel ------------------------------------------------------- */

bool core_quiet(const struct core_session *c) {
  return c->state == CORE_CONNECTED && c->udp_seen && c->peer_acked == c->sent &&
         c->tx_pos == c->sent && c->acked_delivered == c->delivered &&
         !core_replay_pending(c) && c->wr == CORE_HALF_OPEN && c->rd == CORE_HALF_OPEN &&
         c->peer_wr == CORE_HALF_OPEN && c->peer_rd == CORE_HALF_OPEN &&
         !c->unconfirmed_give_up_ns &&
         (!c->cfg.durable || (c->last_ctl.durable_sent == c->durable_sent &&
                              c->last_ctl.durable_delivered == c->durable_delivered &&
                              c->last_ctl.durable_finished == c->durable_finished));
}

void core_path_heard(struct core_session *c, uint64_t when) {
  __atomic_store_n(&c->path_rx_ns, when, __ATOMIC_RELAXED);
}

void core_path_cover(struct core_session *c, bool covered, uint64_t now) {
  if (covered)
    __atomic_store_n(&c->path_rx_ns, now, __ATOMIC_RELAXED);
  __atomic_store_n(&c->path_covered, covered, __ATOMIC_RELAXED);
}

/* Covered by its path and quiet: no heartbeat of its own is due, and its
 * path watches the peer's liveness for it. */
static bool path_quiet(const struct core_session *c) {
  return core_path_covered(c) && core_quiet(c);
}

/* When the peer was last heard from, by this session or for it. */
static uint64_t last_heard(const struct core_session *c) {
  uint64_t p = __atomic_load_n(&c->path_rx_ns, __ATOMIC_RELAXED);
  return p > c->last_rx_ns ? p : c->last_rx_ns;
}

void core_build_ctl(struct core_session *c, uint64_t now, struct core_ctl *out) {
  memset(out, 0, sizeof(*out));
  out->seq = ++c->tx_seq;
  out->delivered = reported_delivered(c);
  out->sent = c->sent;
  out->write_closed = core_half_closed(c->wr);
  out->read_closed = core_half_closed(c->rd);
  out->ack_write_closed = core_half_closed(c->peer_wr);
  out->ack_read_closed = core_half_closed(c->peer_rd);
  out->want_reply = close_unacked(c);
  out->rcvbuf_max = 0; /* only the handshake reports it for now */
  if (c->cfg.durable) {
    out->durable_sent = c->durable_sent;
    out->durable_delivered = c->durable_delivered;
    out->durable_finished = c->durable_finished;
  }
  if (c->state == CORE_FAILED)
    out->failed = (uint32_t)-c->error;
  out->suspended = c->state == CORE_SUSPENDED;
  out->solo = !core_path_covered(c);
  c->acked_delivered = c->delivered;
  c->last_ctl.at_ns = now;
  c->last_ctl.delivered = out->delivered;
  c->last_ctl.write_closed = out->ack_write_closed;
  c->last_ctl.read_closed = out->ack_read_closed;
  c->last_ctl.durable_sent = out->durable_sent;
  c->last_ctl.durable_delivered = out->durable_delivered;
  c->last_ctl.durable_finished = out->durable_finished;
  if (out->want_reply) {
    c->next_hb_ns = now + min64(c->close_retry_ns ? c->close_retry_ns : FIRST_CLOSE_RETRY_NS,
                                c->cfg.heartbeat_ns);
    c->close_retry_ns = min64(c->close_retry_ns * 2, c->cfg.heartbeat_ns);
  } else {
    c->next_hb_ns = now + c->cfg.heartbeat_ns;
  }
}

/* Whether the datagram we sent last, moments ago, already acknowledged all
 * that ctl announces: then the two crossed (both sides closing at once) and
 * answering would repeat it.  Had ours been lost, the peer asks again after
 * its retry interval, when ours is no longer recent. */
static bool answered_by_last(const struct core_session *c, uint64_t now,
                             const struct core_ctl *ctl) {
  return now - c->last_ctl.at_ns < FIRST_CLOSE_RETRY_NS / 2 &&
         (c->last_ctl.write_closed || !ctl->write_closed) &&
         (c->last_ctl.read_closed || !ctl->read_closed) &&
         (!ctl->write_closed || c->last_ctl.delivered >= ctl->sent);
}

int core_on_ctl(struct core_session *c, uint64_t now, const struct core_ctl *ctl,
                bool *reply) {
  *reply = false;
  if (ctl->seq <= c->rx_seq)
    return -1; /* replayed or reordered: heartbeats are cumulative, drop it */
  c->rx_seq = ctl->seq;
  c->udp_seen = true;
  /* The peer lives: reports that nothing listens there were wrong. */
  c->unreach.distrust |= c->unreach.since_rx;
  c->unreach.since_rx = false;
  c->unreach.n = 0;
  c->unconfirmed_give_up_ns = 0; /* only a key holder can authenticate it */
  c->last_rx_ns = now;
  if (!ctl->suspended) /* a suspended client's probe does not show it resumed */
    c->accept_unheard = false;
  if (c->state == CORE_FAILED) {
    /* A peer that still talks missed our verdict: repeat it (not to a
     * verdict, or two failed sides would answer each other forever). */
    *reply = !ctl->failed && (c->error == TETHER_EDIVERGED || c->error == TETHER_EWINDOW);
    return 0;
  }
  if (ctl->failed == (uint32_t)-TETHER_EDIVERGED || ctl->failed == (uint32_t)-TETHER_EWINDOW) {
    /* The peer found the two streams irreconcilable: so are we. */
    core_fail(c, -(int)ctl->failed);
    return 0;
  }
  if (ctl->failed == (uint32_t)-TETHER_EABORTED) {
    /* The peer's application closed and went away before all its bytes
     * reached us (its linger time ran out): they never will. */
    core_fail(c, TETHER_EABORTED);
    return 0;
  }
  if (ctl_end_diverged(c, ctl)) {
    core_fail(c, TETHER_EDIVERGED);
    *reply = true; /* tell it at once */
    return 0;
  }
  bool settled = done_waiting(c);

  /* An authenticated peer never acknowledges bytes we did not send; clamp
   * rather than trust. */
  uint64_t acked = ctl->delivered > c->sent ? c->sent : ctl->delivered;
  if (acked > c->peer_acked)
    c->peer_acked = acked;
  if (ctl->delivered > c->peer_delivered)
    c->peer_delivered = ctl->delivered;
  if (ctl->delivered > c->peer_delivered_max)
    c->peer_delivered_max = ctl->delivered;
  if (c->peer_durable) {
    if (ctl->durable_delivered > c->peer_durable_delivered)
      c->peer_durable_delivered = min64(ctl->durable_delivered, c->peer_acked);
    if (ctl->durable_sent > c->peer_durable_sent) {
      c->peer_durable_sent = min64(ctl->durable_sent, c->delivered);
      /* Not while suspended: the peer may already have resumed and moved
       * its durable point past where the replay that our own resume will
       * check begins (its state in the handshake is older than this
       * datagram); core_on_resumed() trims once that replay is known.  Nor
       * while CLOSED: a peer restored behind the end resumes it the same
       * way (the log goes with the session). */
      if (c->state != CORE_SUSPENDED && c->state != CORE_CLOSED)
        trim_replay_log(c);
    }
    /* The latest report counts: a finished session that a rollback of ours
     * reopened may be captured unfinished again. */
    c->peer_durable_finished = ctl->durable_finished;
  }
  trim(c, c->peer_acked);
  if (ctl->write_closed && !core_half_closed(c->peer_wr))
    c->peer_wr_end = ctl->sent;
  if (ctl->write_closed)
    peer_announced(&c->peer_wr, ctl->want_reply);
  if (ctl->read_closed)
    peer_announced(&c->peer_rd, ctl->want_reply);
  if (ctl->ack_write_closed && core_half_closed(c->wr))
    c->wr = CORE_HALF_ACKED;
  if (ctl->ack_read_closed && core_half_closed(c->rd))
    c->rd = CORE_HALF_ACKED;
  if (ctl->rcvbuf_max)
    set_peer_rcvbuf(c, ctl->rcvbuf_max);
  *reply = ctl->want_reply && !answered_by_last(c, now, ctl);
  /* The peer's session is not covered by the path's heartbeats, ours is and
   * has nothing to say: our path's heartbeats do not prove us alive to it,
   * so answer each of its own. */
  *reply |= ctl->solo && path_quiet(c);
  enter_closed_if_finished(c, now);
  note_settled(c, now, settled);
  return 0;
}

/* ---- lifecycle ---------------------------------------------------------- */

void core_shutdown(struct core_session *c, uint64_t now) {
  if (core_half_closed(c->wr))
    return;
  c->wr = CORE_HALF_CLOSED;
  c->closed_at_ns = now;
  schedule_close_notice(c, now);
  enter_closed_if_finished(c, now);
}

void core_close(struct core_session *c, uint64_t now) {
  core_shutdown(c, now);
  if (c->cfg.give_up_ns == 0 || c->cfg.give_up_ns > CORE_LINGER_MAX_NS)
    c->cfg.give_up_ns = CORE_LINGER_MAX_NS;
  if (!core_half_closed(c->rd)) {
    c->rd = CORE_HALF_CLOSED;
    c->released_at_ns = now; /* the cap counts from here, not from a shutdown */
    schedule_close_notice(c, now);
  }
  enter_closed_if_finished(c, now);
}

void core_on_transport_lost(struct core_session *c, uint64_t now) {
  enter_closed_if_finished(c, now); /* finished: closes, does not suspend */
  if (c->state == CORE_CLOSED && c->role == CORE_CLIENT && c->linger == CORE_LINGER_WAIT &&
      !peer_settled(c)) {
    /* The server may still wait for our final state: tell it through one
     * more resume. */
    c->linger = CORE_LINGER_REDIAL;
    c->next_redial_ns = now;
    c->backoff_ns = 0;
    return;
  }
  if (c->state != CORE_CONNECTED)
    return;
  set_state(c, CORE_SUSPENDED);
  c->suspended_at_ns = now;
  c->next_redial_ns = now; /* first retry at once */
  c->backoff_ns = 0;
  c->fin_sent = false;
  c->unreach.seq = c->tx_seq; /* probes come after */
  c->unreach.n = 0;
  /* The first probe, if any, a moment later: a dying peer's kernel closes
   * its connection (which suspends us) and its side channel one after the
   * other. */
  c->next_hb_ns = now + min64(FIRST_HEARTBEAT_NS, c->cfg.heartbeat_ns);
  retention_fit(&c->ret); /* no writes until resumed, maybe for long */
}

void core_resume_state(const struct core_session *c, struct core_resume_state *out) {
  memset(out, 0, sizeof(*out));
  out->delivered = reported_delivered(c);
  out->sent = c->sent;
  out->retained_from = c->ret.base;
  out->write_closed = core_half_closed(c->wr);
  out->read_closed = core_half_closed(c->rd);
  out->verify_from = c->peer_durable ? min64(replay_log_start(&c->rlog), c->delivered) : c->delivered;
  out->peer_wr_closed = core_half_closed(c->peer_wr);
  out->peer_wr_end = c->peer_wr_end;
  if (c->cfg.durable) {
    out->durable_sent = c->durable_sent;
    out->durable_delivered = c->durable_delivered;
  }
  out->ctl_seq = c->tx_seq;
  out->ctl_seq_seen = c->rx_seq;
}

void core_resume_attempt(struct core_session *c, struct core_resume_state *out) {
  c->tx_seq++;
  core_resume_state(c, out);
}

bool core_resume_stale(const struct core_session *c, const struct core_resume_state *peer) {
  return peer->ctl_seq <= c->rx_seq;
}

void core_resume_refused_stale(struct core_session *c) {
  if (c->epoch < CORE_EPOCH_MAX)
    c->epoch++;
  c->tx_seq = (uint64_t)c->epoch << CORE_EPOCH_SHIFT;
}

/* The peer accepted control numbers from us that we have not used yet: we
 * were restored from a snapshot that an earlier run of ours had been
 * restored from too, and that run used them.  Continue in a new epoch above
 * them, so that no (key, number) pair goes out twice and the peer does not
 * drop our datagrams as replays.  -EPROTO for a number no run of ours can
 * have sent. */
static int skip_used_seqs(struct core_session *c, uint64_t seen) {
  if (seen < c->tx_seq)
    return 0;
  uint64_t epoch = (seen >> CORE_EPOCH_SHIFT) + 1;
  if (epoch > CORE_EPOCH_MAX)
    return -EPROTO;
  if (epoch > c->epoch)
    c->epoch = (uint32_t)epoch;
  c->tx_seq = (uint64_t)c->epoch << CORE_EPOCH_SHIFT;
  return 0;
}

int core_on_resumed(struct core_session *c, uint64_t now,
                    const struct core_resume_state *peer) {
  if (c->state != CORE_SUSPENDED && c->state != CORE_CLOSED)
    return -EINVAL;
  if (c->state == CORE_CLOSED && peer_behind(c, peer)) {
    /* The peer restored a snapshot older than the end (we waited for its
     * durable point to pass the end for this, see done_at()): resume like
     * a suspended session, from what we still retain. */
    set_state(c, CORE_SUSPENDED);
    c->suspended_at_ns = now;
    if (core_half_closed(c->rd))
      c->released_at_ns = now; /* its linger cap starts over */
    c->linger = CORE_LINGER_WAIT; /* (the half-closes are set afresh below) */
  }
  struct core_resume_state ours;
  core_resume_state(c, &ours);
  if (c->state == CORE_SUSPENDED) {
    int rc = core_resume_check(&ours, peer);
    if (rc < 0) {
      core_fail(c, rc);
      return rc;
    }
  }
  if (skip_used_seqs(c, peer->ctl_seq_seen) < 0) {
    core_fail(c, TETHER_EPROTO);
    return TETHER_EPROTO;
  }
  c->unconfirmed_give_up_ns = 0; /* the peer proved its keys to resume */
  /* Datagrams the peer sent before this resume may still be on their way;
   * after a rollback on either side they speak of a stream that no longer
   * is (an old delivered count would acknowledge bytes that the peer must
   * yet check in our replay).  The resume state supersedes them. */
  if (peer->ctl_seq > c->rx_seq)
    c->rx_seq = peer->ctl_seq;
  bool settled = done_waiting(c);
  /* Lower than before only if the peer rolled back to a snapshot.  After our
   * own rollback, only up to where the peer's check of our replay starts:
   * bytes it has yet to check must stay for a resume that interrupts it. */
  uint64_t resend = core_resume_from(&ours, peer);
  c->peer_acked = resend > c->sent ? c->sent : resend;
  c->peer_delivered = peer->delivered;
  /* A peer that reports less than before rolled back, or checks our replay
   * (it reports how far the check got).  Only the latter, after our own
   * rollback behind what it had delivered, must keep the larger figure. */
  if (c->peer_delivered_max <= c->sent || peer->delivered > c->peer_delivered_max)
    c->peer_delivered_max = peer->delivered;
  if (c->peer_durable) {
    c->peer_durable_delivered = min64(peer->durable_delivered, c->peer_acked);
    c->peer_durable_sent = min64(peer->durable_sent, c->delivered);
  }
  trim(c, c->peer_acked);
  if (peer->write_closed && !core_half_closed(c->peer_wr))
    c->peer_wr_end = peer->sent;
  /* All four half-closes afresh.  Our state travelled in the authenticated
   * handshake: the peer has our closes.  (The server's ResumeAccept may yet
   * be lost; then the client resumes again, and a server session that
   * finished meanwhile answers while CLOSED.)  The peer's state says what it
   * still needs from us -- assigned, not accumulated: what earlier
   * datagrams showed may be stale, the peer may have rolled back, or
   * reopened a CLOSED session.  Except that the end of the peer's stream,
   * once known, stays known (a peer restored from before it must end its
   * stream there again); but a peer restored from before its application
   * closed reads again (and closes again). */
  if (core_half_closed(c->wr))
    c->wr = CORE_HALF_ACKED;
  if (core_half_closed(c->rd))
    c->rd = CORE_HALF_ACKED;
  if (core_half_closed(c->peer_wr) || peer->write_closed)
    c->peer_wr = peer->write_closed && ours.delivered >= peer->sent ? CORE_HALF_ACKED
                                                                    : CORE_HALF_CLOSED;
  c->peer_rd = peer->read_closed ? CORE_HALF_ACKED : CORE_HALF_OPEN;
  if (peer->rcvbuf_max)
    set_peer_rcvbuf(c, peer->rcvbuf_max);
  c->accept_unheard = c->role == CORE_SERVER;
  if (c->state == CORE_CLOSED) {
    /* Only the final states were exchanged: the peer now has ours. */
    c->linger = CORE_LINGER_WAIT;
    c->last_rx_ns = now; /* a client waiting for a durable peer asks again later */
    note_settled(c, now, settled);
    return 0;
  }
  c->tx_pos = resend;
  uint64_t rx_from = core_resume_from(peer, &ours);
  if (rx_from < c->delivered && !(core_replay_pending(c) && rx_from == c->rx_pos))
    replay_check_init(&c->rcheck, rx_from, c->delivered); /* else: continue the check */
  c->rx_pos = rx_from;
  if (c->peer_durable)
    trim_replay_log(c);
  /* The server may still be reading: ask again later, twice as late each
   * time (up to CORE_LINGER_MAX_NS), so that the polls stay few. */
  uint64_t wait = c->cfg.suspend_ns;
  for (unsigned i = 0; i < c->ack_polls && wait < CORE_LINGER_MAX_NS; i++)
    wait *= 2;
  c->ack_poll_at_ns = now + wait;
  c->fin_sent = false;
  set_state(c, CORE_CONNECTED);
  c->reconnects++;
  c->suspended_total_ns += now - c->suspended_at_ns;
  c->last_rx_ns = now;
  c->next_hb_ns = now; /* tell the peer's side channel where we are now */
  c->backoff_ns = 0;
  enter_closed_if_finished(c, now);
  return 0;
}

void core_set_unconfirmed(struct core_session *c, uint64_t ns) {
  c->unconfirmed_give_up_ns = ns ? ns : 1;
}

void core_confirm(struct core_session *c) { c->unconfirmed_give_up_ns = 0; }

/* How long a suspension may last (0: forever). */
static uint64_t give_up_after(const struct core_session *c) {
  uint64_t g = c->cfg.give_up_ns, u = c->unconfirmed_give_up_ns;
  return u && (g == 0 || u < g) ? u : g;
}

void core_set_peer_durable(struct core_session *c) {
  c->peer_durable = true;
  c->peer_durable_delivered = c->peer_acked;
  c->peer_durable_sent = c->delivered;
  replay_log_init(&c->rlog, c->delivered, (size_t)(c->cfg.retain_max / REPLAY_CHUNK));
  retention_set_max(&c->ret, retention_cap(c));
}

void core_durable_commit(struct core_session *c, uint64_t now, uint64_t sent, uint64_t delivered) {
  bool was_finished = c->durable_finished;
  c->durable_finished = false; /* (core_durable_finished() follows if it was) */
  if (sent <= c->durable_sent && delivered <= c->durable_delivered && !was_finished)
    return;
  if (sent > c->durable_sent)
    c->durable_sent = sent;
  if (delivered > c->durable_delivered)
    c->durable_delivered = delivered;
  if (c->state == CORE_CONNECTED || c->state == CORE_CLOSED)
    c->next_hb_ns = now; /* report it at once: the peer's retention waits */
}

void core_durable_finished(struct core_session *c, uint64_t now) {
  if (c->durable_finished)
    return;
  bool settled = done_waiting(c);
  c->durable_finished = true;
  note_settled(c, now, settled); /* TIME_WAIT repeats the report */
  if (c->state == CORE_CONNECTED || c->state == CORE_CLOSED)
    c->next_hb_ns = now; /* the peer's finished session waits for it */
}

void core_fail(struct core_session *c, int err) {
  if (c->state == CORE_CLOSED && err != TETHER_EDIVERGED) {
    /* The peer's session is gone: nothing left to tell it, and (see
     * done_waiting()) no restore of it will come back. */
    c->linger = CORE_LINGER_OVER;
    return;
  }
  if (c->state == CORE_FAILED)
    return;
  set_state(c, CORE_FAILED);
  c->error = err;
}

/* ---- time --------------------------------------------------------------- */

/* Hold the FIN until the peer knows it is a real close, so it never has to
 * guess.  If no acknowledgement comes (side channel blocked or lossy), send
 * it anyway: after one heartbeat if no datagram ever arrived, else after
 * suspend_ns; the peer then confirms the close through a resume. */
static uint64_t fin_deadline(const struct core_session *c) {
  return c->closed_at_ns + (c->udp_seen ? c->cfg.suspend_ns : c->cfg.heartbeat_ns);
}

static bool fin_due(const struct core_session *c, uint64_t now) {
  if (c->state != CORE_CONNECTED && c->state != CORE_CLOSED)
    return false;
  if (!core_half_closed(c->wr) || c->fin_sent || c->tx_pos < c->sent)
    return false;
  return core_half_acked(c->wr) || now >= fin_deadline(c);
}

/* A closed client whose server may lack its final state and is silent (or
 * can never be heard: no side channel) resumes to tell it.  One that waits
 * for a durable server's snapshot to hold the end resumes when the server
 * has been silent for suspend_ns (it may have restored and wait for us). */
static uint64_t final_redial_at(const struct core_session *c) {
  if (c->role != CORE_CLIENT)
    return UINT64_MAX;
  if (c->linger == CORE_LINGER_REDIAL)
    return c->next_redial_ns;
  if (!peer_settled(c) && !c->udp_seen)
    return 0;
  return c->last_rx_ns + c->cfg.suspend_ns;
}

/* When a closed session the application let go is freed.  A server that
 * does not know whether its ResumeAccept arrived stays for as long as the
 * client may come back for it. */
static uint64_t done_at(const struct core_session *c) {
  uint64_t cap = c->finished_at_ns + CORE_LINGER_MAX_NS;
  if (!done_waiting(c) || c->accept_unheard)
    return cap;
  return min64(c->settled_at_ns + CORE_TIME_WAIT_NS(c), cap);
}

/* CLOSED, and the peer has everything it needs from us: TIME_WAIT only
 * answers (a peer that missed our last word repeats its own, asking for a
 * reply) and accepts final resumes; heartbeats would tell nothing new, and
 * a busy server holds thousands of such sessions.  Durable sessions keep
 * them: their durable acknowledgements may still move. */
static bool heartbeats_due(const struct core_session *c) {
  return c->state == CORE_CONNECTED || !peer_settled(c) || c->peer_durable || c->cfg.durable;
}

uint64_t core_next_deadline(const struct core_session *c) {
  uint64_t d = UINT64_MAX;
  switch (c->state) {
  case CORE_CONNECTED:
  case CORE_CLOSED:
    if (heartbeats_due(c) && !path_quiet(c))
      d = c->next_hb_ns;
    if (c->state == CORE_CONNECTED && core_finished(c))
      d = 0; /* finished by the end of a replay check: close now */
    if (c->state == CORE_CONNECTED && c->udp_seen && !path_quiet(c))
      d = min64(d, last_heard(c) + c->cfg.suspend_ns);
    if (acks_by_resume(c))
      d = min64(d, c->ack_poll_at_ns);
    if (core_half_closed(c->wr) && !c->fin_sent && c->tx_pos >= c->sent)
      d = min64(d, core_half_acked(c->wr) ? 0 : fin_deadline(c));
    if (c->state == CORE_CLOSED && !peer_done(c))
      d = min64(d, min64(final_redial_at(c), c->finished_at_ns + CORE_LINGER_MAX_NS));
    if (c->state == CORE_CLOSED && core_half_closed(c->rd))
      d = min64(d, done_at(c));
    if (c->state == CORE_CONNECTED && core_half_closed(c->rd)) /* core_close capped give_up_ns */
      d = min64(d, c->released_at_ns + c->cfg.give_up_ns);
    break;
  case CORE_SUSPENDED:
    if (give_up_after(c))
      d = c->suspended_at_ns + give_up_after(c);
    if (c->role == CORE_CLIENT)
      d = min64(d, c->next_redial_ns);
    if (probing(c))
      d = min64(d, c->next_hb_ns);
    break;
  case CORE_FAILED:
    break;
  }
  return d;
}

/* Schedules the next redial: exponential backoff with jitter in [b/2, b],
 * capped; the first retry is immediate. */
static unsigned redial(struct core_session *c, uint64_t now, uint32_t rnd) {
  uint64_t b = c->backoff_ns ? c->backoff_ns * 2 : FIRST_BACKOFF_NS;
  b = min64(b, c->cfg.reconnect_max_ns);
  c->backoff_ns = b;
  c->next_redial_ns = now + b / 2 + (b / 2 ? rnd % (b / 2 + 1) : 0);
  return CORE_ACT_REDIAL;
}

unsigned core_on_timer(struct core_session *c, uint64_t now, uint32_t rnd) {
  unsigned act = 0;
  enter_closed_if_finished(c, now); /* a replay check just ended */
  switch (c->state) {
  case CORE_CONNECTED:
    if (core_half_closed(c->rd) && now >= c->released_at_ns + c->cfg.give_up_ns) {
      /* Closed by the application and still not finished: stop trying. */
      core_fail(c, TETHER_EGIVEUP);
      return CORE_ACT_FAILED;
    }
    if (c->udp_seen && now >= last_heard(c) + c->cfg.suspend_ns)
      return CORE_ACT_SUSPEND;
    if (acks_by_resume(c) && now >= c->ack_poll_at_ns) {
      c->ack_polls++;
      return CORE_ACT_SUSPEND;
    }
    /* fall through */
  case CORE_CLOSED:
    if (now >= c->next_hb_ns && heartbeats_due(c) && !path_quiet(c))
      act |= CORE_ACT_HEARTBEAT;
    if (fin_due(c, now)) {
      c->fin_sent = true;
      act |= CORE_ACT_FIN;
    }
    if (c->state == CORE_CLOSED && !peer_done(c)) {
      if (now >= c->finished_at_ns + CORE_LINGER_MAX_NS) {
        /* Bounded, like everything after close: stop telling it (and
         * stop waiting for a durable peer's snapshot: a restore of it
         * from before the end then finds the session gone). */
        c->linger = CORE_LINGER_OVER;
      } else if (now >= final_redial_at(c)) {
        if (c->linger != CORE_LINGER_REDIAL)
          c->backoff_ns = 0;
        c->linger = CORE_LINGER_REDIAL;
        act |= redial(c, now, rnd);
      }
    }
    if (c->state == CORE_CLOSED && core_half_closed(c->rd) && now >= done_at(c))
      act |= CORE_ACT_DONE;
    break;
  case CORE_SUSPENDED:
    if (give_up_after(c) && now >= c->suspended_at_ns + give_up_after(c)) {
      c->suspended_total_ns += now - c->suspended_at_ns;
      core_fail(c, TETHER_EGIVEUP);
      act |= CORE_ACT_FAILED;
      break;
    }
    if (c->role == CORE_CLIENT && now >= c->next_redial_ns)
      act |= redial(c, now, rnd);
    if (probing(c) && now >= c->next_hb_ns)
      act |= CORE_ACT_HEARTBEAT; /* a probe (core_on_unreachable) */
    break;
  case CORE_FAILED:
    break;
  }
  return act;
}
