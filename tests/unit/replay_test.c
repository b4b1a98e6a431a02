/* Unit tests for verified replay and durable acknowledgements:
 * lib/core/replay.c (chunk hashes, the replay log, replay checks) and the
 * parts of lib/core/session.c that use them. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/replay.h"
#include "core/session.h"
#include "tether/tether.h"

#define MS ((uint64_t)1000000)
#define SEC (1000 * MS)
#define T0 (1000 * SEC)

static uint8_t pat(uint64_t off) { return (uint8_t)(off * 131 + (off >> 8) * 7 + 1); }

static void fill(uint8_t *b, uint64_t from, size_t n) {
  for (size_t i = 0; i < n; i++)
    b[i] = pat(from + i);
}

static uint32_t rnd_state = 12345;
static uint32_t rnd(uint32_t below) {
  rnd_state = rnd_state * 1103515245 + 12345;
  return (rnd_state >> 8) % below;
}

/* ---- chunk hashes and the log ------------------------------------------ */

static void test_hash_split_invariant(void **state) {
  (void)state;
  uint8_t b[REPLAY_CHUNK];
  fill(b, 0, sizeof(b));
  struct chunk_hash whole, parts;
  chunk_hash_init(&whole);
  chunk_hash_update(&whole, b, sizeof(b));
  for (int round = 0; round < 50; round++) {
    chunk_hash_init(&parts);
    for (size_t at = 0; at < sizeof(b);) {
      size_t k = 1 + rnd(17);
      if (k > sizeof(b) - at)
        k = sizeof(b) - at;
      chunk_hash_update(&parts, b + at, k);
      at += k;
    }
    assert_int_equal(chunk_hash_value(&parts), chunk_hash_value(&whole));
  }
  b[500] ^= 1; /* one bit changes the value */
  chunk_hash_init(&parts);
  chunk_hash_update(&parts, b, sizeof(b));
  assert_int_not_equal(chunk_hash_value(&parts), chunk_hash_value(&whole));
  /* A prefix differs from the whole, and from a zero-padded prefix. */
  uint8_t z[16] = {0};
  struct chunk_hash a, c;
  chunk_hash_init(&a);
  chunk_hash_update(&a, z, 8);
  chunk_hash_init(&c);
  chunk_hash_update(&c, z, 9);
  assert_int_not_equal(chunk_hash_value(&a), chunk_hash_value(&c));
}

/* Logs [0, n) in random pieces. */
static void log_stream(struct replay_log *l, uint64_t n) {
  uint8_t b[700];
  for (uint64_t at = replay_log_end(l); at < n;) {
    size_t k = 1 + rnd(sizeof(b));
    if (k > n - at)
      k = (size_t)(n - at);
    fill(b, at, k);
    assert_int_equal(replay_log_append(l, b, k), 0);
    at += k;
  }
}

/* Replays [from, end) in random pieces, optionally with one byte changed. */
static int replay(const struct replay_log *l, uint64_t from, uint64_t end, uint64_t flip_at) {
  struct replay_check rc;
  uint8_t b[500];
  replay_check_init(&rc, from, end);
  for (uint64_t at = from; at < end;) {
    size_t k = 1 + rnd(sizeof(b));
    if (k > end - at)
      k = (size_t)(end - at);
    fill(b, at, k);
    if (flip_at >= at && flip_at < at + k)
      b[flip_at - at] ^= 0x40;
    if (replay_check_feed(&rc, l, b, k) < 0)
      return -1;
    at += k;
  }
  return 0;
}

static void test_log_and_check(void **state) {
  (void)state;
  struct replay_log l = {0};
  replay_log_init(&l, 0, 1000);
  log_stream(&l, 5000);
  assert_int_equal(replay_log_end(&l), 5000);
  assert_int_equal(l.n, 4); /* 4 complete chunks, 904 bytes in progress */
  for (uint64_t from = 0; from < 5000; from += REPLAY_CHUNK) {
    assert_int_equal(replay(&l, from, 5000, UINT64_MAX), 0);
    assert_int_equal(replay(&l, from, 5000, from), -1);    /* first byte */
    assert_int_equal(replay(&l, from, 5000, 4999), -1);    /* last byte */
  }
  assert_int_equal(replay(&l, 2048, 5000, 3000), -1);
  /* The durable point moves to 2100: chunks below 2048 go. */
  replay_log_trim(&l, 2100);
  assert_int_equal(l.from, 2048);
  assert_int_equal(replay(&l, 2048, 5000, UINT64_MAX), 0);
  assert_int_equal(replay(&l, 1024, 5000, UINT64_MAX), -1); /* no longer checkable */
  replay_log_clear(&l);
}

static void test_log_starts_mid_chunk(void **state) {
  (void)state;
  struct replay_log l = {0};
  replay_log_init(&l, 1500, 1000); /* the peer became durable at 1500 */
  assert_int_equal(replay_log_start(&l), 2048);
  log_stream(&l, 1900);
  assert_int_equal(replay_log_end(&l), 1900);
  log_stream(&l, 4000);
  assert_int_equal(l.from, 2048);
  assert_int_equal(l.n, 1);
  assert_int_equal(replay(&l, 2048, 4000, UINT64_MAX), 0);
  assert_int_equal(replay(&l, 1024, 4000, UINT64_MAX), -1);
  replay_log_clear(&l);
}

static void test_log_cap_drops_oldest(void **state) {
  (void)state;
  struct replay_log l = {0};
  replay_log_init(&l, 0, 8);
  log_stream(&l, 20 * REPLAY_CHUNK + 10);
  assert_true(l.n <= 8);
  assert_int_equal(replay_log_end(&l), 20 * REPLAY_CHUNK + 10);
  assert_int_equal(replay(&l, l.from, replay_log_end(&l), UINT64_MAX), 0);
  replay_log_clear(&l);
}

/* ---- sessions ------------------------------------------------------------ */

static const struct core_config cfg_durable = {
    .heartbeat_ns = 1 * SEC,
    .suspend_ns = 3 * SEC,
    .reconnect_max_ns = 1 * SEC,
    .give_up_ns = 60 * SEC,
    .durable = true,
    .retain_max = 1 << 20,
};

/* The reader takes n bytes from the transport: checked while a replay is
 * pending, else delivered. */
static int feed(struct core_session *reader, const uint8_t *p, size_t n) {
  while (n) {
    size_t k = n;
    uint64_t pending = core_replay_pending(reader);
    if (pending) {
      if (k > pending)
        k = (size_t)pending;
      int rc = core_on_replayed(reader, p, k);
      if (rc < 0)
        return rc;
    } else {
      core_on_delivered(reader, p, k);
    }
    p += k;
    n -= k;
  }
  return 0;
}

/* The application writes n bytes of the pattern (one changed at flip_at),
 * which go straight into the transport (as tether_write does) and, when
 * reader is not NULL, on to it.  Returns feed's result. */
static int write_pat_to(struct core_session *c, size_t n, uint64_t flip_at,
                        struct core_session *reader) {
  uint8_t b[4096];
  assert_true(n <= sizeof(b));
  assert_int_equal(core_write_check(c), 0);
  assert_true(n <= core_write_room(c));
  fill(b, c->sent, n);
  if (flip_at >= c->sent && flip_at < c->sent + n)
    b[flip_at - c->sent] ^= 1;
  assert_int_equal(core_reserve(c, n), 0);
  core_on_written(c, b, n);
  return reader ? feed(reader, b, n) : 0;
}

static void write_pat(struct core_session *c, size_t n, uint64_t flip_at) {
  (void)write_pat_to(c, n, flip_at, NULL);
}

static void deliver_pat(struct core_session *c, size_t n) {
  uint8_t b[4096];
  assert_true(n <= sizeof(b));
  assert_int_equal(core_replay_pending(c), 0);
  fill(b, c->delivered, n);
  core_on_delivered(c, b, n);
}

/* writer: a durable client; reader: a server that knows it is durable. */
static void pair(struct core_session *writer, struct core_session *reader) {
  core_init(writer, &cfg_durable, CORE_CLIENT, T0, 1000, 500);
  core_init(reader, &cfg_durable, CORE_SERVER, T0, 1000, 500);
  core_set_peer_durable(reader);
  core_set_peer_durable(writer);
}

/* The writer rolls back: a fresh session that wrote only [0, upto) again
 * (as a restore of a snapshot taken at upto would be), then both resume. */
static void rollback_and_resume(struct core_session *writer, struct core_session *reader,
                                uint64_t upto) {
  core_clear(writer);
  core_init(writer, &cfg_durable, CORE_CLIENT, T0, 1000, 500);
  core_set_peer_durable(writer);
  while (writer->sent < upto)
    write_pat(writer, (size_t)(upto - writer->sent < 1000 ? upto - writer->sent : 1000),
              UINT64_MAX);
  core_durable_commit(writer, T0, writer->sent, writer->delivered);
  core_trim_inflight(writer, 0);
  core_on_transport_lost(writer, T0);
  core_on_transport_lost(reader, T0);
  struct core_resume_state ws, rs;
  core_resume_state(writer, &ws);
  core_resume_state(reader, &rs);
  assert_int_equal(core_resume_check(&ws, &rs), 0);
  assert_int_equal(core_on_resumed(writer, T0, &rs), 0);
  assert_int_equal(core_on_resumed(reader, T0, &ws), 0);
}

/* Feeds the reader the resend from the writer's retention. */
static int carry(struct core_session *writer, struct core_session *reader) {
  const uint8_t *p;
  size_t n;
  while ((n = core_pending(writer, &p)) > 0) {
    int rc = feed(reader, p, n);
    if (rc < 0)
      return rc;
    core_on_flushed(writer, n);
  }
  return 0;
}

static void test_durable_replay_verified(void **state) {
  (void)state;
  struct core_session w, r;
  pair(&w, &r);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  /* The writer's snapshot at 2000 survives; 2000..3000 it wrote again. */
  rollback_and_resume(&w, &r, 2000);
  assert_int_equal(w.tx_pos, 1024); /* from the chunk below its position */
  assert_int_equal(r.rx_pos, 1024);
  assert_int_equal(core_replay_pending(&r), 3000 - 1024);
  assert_int_equal(carry(&w, &r), 0); /* 1024..2000 from retention */
  assert_int_equal(write_pat_to(&w, 1000, UINT64_MAX, &r), 0); /* the replay */
  assert_int_equal(core_replay_pending(&r), 0);
  assert_int_equal(r.delivered, 3000); /* nothing delivered twice */
  assert_int_equal(write_pat_to(&w, 500, UINT64_MAX, &r), 0); /* new bytes */
  assert_int_equal(r.delivered, 3500);
  core_clear(&w);
  core_clear(&r);
}

static void test_durable_replay_diverges(void **state) {
  (void)state;
  struct core_session w, r;
  pair(&w, &r);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  rollback_and_resume(&w, &r, 2000);
  assert_int_equal(carry(&w, &r), 0);
  /* a non-deterministic replay */
  assert_int_equal(write_pat_to(&w, 1000, 2500, &r), TETHER_EDIVERGED);
  assert_int_equal(r.state, CORE_FAILED);
  assert_int_equal(r.error, TETHER_EDIVERGED);
  assert_int_equal(r.delivered, 3000);
  /* Its next datagram tells the writer, which fails the same way. */
  struct core_ctl ctl;
  bool reply;
  core_build_ctl(&r, T0, &ctl);
  assert_int_equal(ctl.failed, (uint32_t)-TETHER_EDIVERGED);
  assert_int_equal(core_on_ctl(&w, T0, &ctl, &reply), 0);
  assert_int_equal(w.state, CORE_FAILED);
  assert_int_equal(w.error, TETHER_EDIVERGED);
  core_clear(&w);
  core_clear(&r);
}

/* A replay that ends mid-chunk is checked up to the last delivered byte. */
static void test_durable_replay_partial_chunk(void **state) {
  (void)state;
  struct core_session w, r;
  pair(&w, &r);
  write_pat(&w, 2100, UINT64_MAX);
  deliver_pat(&r, 2100);
  rollback_and_resume(&w, &r, 2050);
  assert_int_equal(carry(&w, &r), 0);
  assert_int_equal(write_pat_to(&w, 49, UINT64_MAX, &r), 0);
  assert_int_equal(core_replay_pending(&r), 1);
  /* differs in the very last replayed byte */
  assert_int_equal(write_pat_to(&w, 1, 2099, &r), TETHER_EDIVERGED);
  core_clear(&w);
  core_clear(&r);
}

/* Without durable acknowledgements nothing can be replayed. */
static void test_rollback_without_durable_refused(void **state) {
  (void)state;
  struct core_session w, r;
  struct core_config plain = cfg_durable;
  plain.durable = false;
  core_init(&w, &plain, CORE_CLIENT, T0, 1000, 500);
  core_init(&r, &plain, CORE_SERVER, T0, 1000, 500);
  write_pat(&w, 1000, UINT64_MAX);
  deliver_pat(&r, 1000);
  struct core_resume_state ws, rs;
  core_resume_state(&r, &rs);
  ws = rs;
  ws.delivered = 0;
  ws.sent = 500;
  ws.retained_from = 0;
  ws.verify_from = 0;
  assert_int_equal(core_resume_check(&ws, &rs), TETHER_EWINDOW);
  core_clear(&w);
  core_clear(&r);
}

/* A durable peer's bytes stay until its snapshot covers them; writers wait
 * at retain_max, not at sndbuf + rcvbuf. */
static void test_durable_retention(void **state) {
  (void)state;
  struct core_session w, r;
  pair(&w, &r);
  assert_int_equal(core_write_room(&w), cfg_durable.retain_max);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  struct core_ctl ctl;
  bool reply;
  core_build_ctl(&r, T0, &ctl); /* delivered 3000, durable nothing yet */
  assert_int_equal(core_on_ctl(&w, T0, &ctl, &reply), 0);
  core_trim_inflight(&w, 0);
  assert_int_equal(w.ret.base, 0); /* all kept: the reader's snapshot lacks it */
  core_durable_commit(&r, T0, r.sent, 2500);
  core_build_ctl(&r, T0 + 1, &ctl);
  assert_int_equal(ctl.durable_delivered, 2500);
  assert_int_equal(core_on_ctl(&w, T0 + 1, &ctl, &reply), 0);
  assert_int_equal(w.ret.base, 2048); /* its own replay tail: the chunk start */
  core_durable_commit(&w, T0, w.sent, 0);
  core_trim_inflight(&w, 0);
  assert_int_equal(w.ret.base, 2048);
  /* The writer's own durable point lets the reader drop its log. */
  core_build_ctl(&w, T0 + 2, &ctl);
  assert_int_equal(core_on_ctl(&r, T0 + 2, &ctl, &reply), 0);
  assert_int_equal(r.rlog.from, 2048);
  core_clear(&w);
  core_clear(&r);
}

/* A durable ack that arrives while the reader is SUSPENDED must not trim the
 * replay log below where the pending resume's replay starts: the writer may
 * already have resumed (from the reader's point of view, its handshake is
 * still to come) and committed a later snapshot, while the state its
 * handshake carries is that of its rollback. */
static void test_durable_ack_while_suspended_keeps_log(void **state) {
  (void)state;
  struct core_session w, r, live;
  pair(&w, &r);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  assert_int_equal(replay_log_start(&r.rlog), 0);
  /* The writer restored a snapshot taken at 1000; its handshake says so. */
  core_clear(&w);
  core_init(&w, &cfg_durable, CORE_CLIENT, T0, 1000, 500);
  core_set_peer_durable(&w);
  write_pat(&w, 1000, UINT64_MAX);
  core_durable_commit(&w, T0, w.sent, w.delivered);
  core_on_transport_lost(&w, T0);
  struct core_resume_state ws, rs;
  core_resume_state(&w, &ws);
  /* Meanwhile a datagram of a later epoch, sent after a snapshot at 3000. */
  struct core_ctl ctl;
  memset(&ctl, 0, sizeof(ctl));
  ctl.seq = (uint64_t)1 << 40;
  ctl.sent = 3000;
  ctl.durable_sent = 3000;
  bool reply;
  core_on_transport_lost(&r, T0);
  assert_int_equal(r.state, CORE_SUSPENDED);
  /* The same datagram trims a connected reader's log (the check below would
   * then be refused): what the SUSPENDED case must not do. */
  memcpy(&live, &r, sizeof(live));
  live.state = CORE_CONNECTED;
  live.rlog.hash = malloc(r.rlog.cap * sizeof(*r.rlog.hash));
  assert_non_null(live.rlog.hash);
  memcpy(live.rlog.hash, r.rlog.hash, r.rlog.n * sizeof(*r.rlog.hash));
  live.ret.buf = NULL; /* (the reader wrote nothing) */
  assert_int_equal(core_on_ctl(&live, T0 + 1, &ctl, &reply), 0);
  assert_int_equal(replay_log_start(&live.rlog), 2048);
  replay_log_clear(&live.rlog);

  assert_int_equal(core_on_ctl(&r, T0 + 1, &ctl, &reply), 0);
  assert_int_equal(r.peer_durable_sent, 3000);
  assert_int_equal(replay_log_start(&r.rlog), 0); /* kept */
  core_resume_state(&r, &rs);
  assert_int_equal(core_resume_check(&ws, &rs), 0);
  assert_int_equal(core_on_resumed(&w, T0 + 2, &rs), 0);
  assert_int_equal(core_on_resumed(&r, T0 + 2, &ws), 0);
  assert_int_equal(r.rx_pos, 0);
  assert_int_equal(core_replay_pending(&r), 3000);
  /* The whole replay is checked: what the writer resends, then writes. */
  assert_int_equal(carry(&w, &r), 0);
  assert_int_equal(write_pat_to(&w, 2000, UINT64_MAX, &r), 0);
  assert_int_equal(core_replay_pending(&r), 0);
  assert_int_equal(r.state, CORE_CONNECTED);
  assert_int_equal(r.delivered, 3000);
  core_clear(&w);
  core_clear(&r);
}

/* A rolled-back writer's stream may not end anywhere but where it ended
 * before, nor below what its reader delivered (tether(7), Consistency
 * model): both are divergent replays. */
static void test_rolled_back_end_diverges(void **state) {
  (void)state;
  struct core_session w, r;
  struct core_ctl ctl;
  bool reply;
  /* Shut down below what the reader delivered: a datagram says so. */
  pair(&w, &r);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  rollback_and_resume(&w, &r, 2000);
  assert_int_equal(carry(&w, &r), 0);
  core_shutdown(&w, T0);
  core_build_ctl(&w, T0, &ctl);
  assert_true(ctl.write_closed);
  assert_int_equal(core_on_ctl(&r, T0, &ctl, &reply), 0);
  assert_int_equal(r.state, CORE_FAILED);
  assert_int_equal(r.error, TETHER_EDIVERGED);
  assert_true(reply);
  core_build_ctl(&r, T0, &ctl);
  assert_int_equal(core_on_ctl(&w, T0, &ctl, &reply), 0);
  assert_int_equal(w.error, TETHER_EDIVERGED);
  core_clear(&w);
  core_clear(&r);

  /* The reader knew the end (3000); the restored writer shut down at 2500:
   * its resume says so, and the check refuses it on both sides. */
  pair(&w, &r);
  write_pat(&w, 3000, UINT64_MAX);
  deliver_pat(&r, 3000);
  core_shutdown(&w, T0);
  core_build_ctl(&w, T0, &ctl);
  assert_int_equal(core_on_ctl(&r, T0, &ctl, &reply), 0);
  assert_true(core_half_closed(r.peer_wr));
  assert_int_equal(r.peer_wr_end, 3000);
  core_clear(&w);
  core_init(&w, &cfg_durable, CORE_CLIENT, T0, 1000, 500);
  core_set_peer_durable(&w);
  write_pat(&w, 2500, UINT64_MAX);
  core_shutdown(&w, T0);
  core_on_transport_lost(&w, T0);
  core_on_transport_lost(&r, T0);
  struct core_resume_state ws, rs;
  core_resume_state(&w, &ws);
  core_resume_state(&r, &rs);
  assert_int_equal(core_resume_check(&rs, &ws), TETHER_EDIVERGED);
  assert_int_equal(core_on_resumed(&r, T0, &ws), TETHER_EDIVERGED);
  assert_int_equal(r.error, TETHER_EDIVERGED);
  /* Ending at the same offset again is no divergence. */
  core_clear(&w);
  core_init(&w, &cfg_durable, CORE_CLIENT, T0, 1000, 500);
  core_set_peer_durable(&w);
  write_pat(&w, 3000, UINT64_MAX);
  core_shutdown(&w, T0);
  core_resume_state(&w, &ws);
  rs.peer_wr_closed = true;
  rs.peer_wr_end = 3000;
  assert_int_equal(core_resume_check(&rs, &ws), 0);
  /* Writing past the known end is. */
  w.wr = CORE_HALF_OPEN;
  write_pat(&w, 10, UINT64_MAX);
  core_resume_state(&w, &ws);
  assert_int_equal(core_resume_check(&rs, &ws), TETHER_EDIVERGED);
  core_clear(&w);
  core_clear(&r);
}

/* Control datagrams both ways, a few rounds (as heartbeats and replies). */
static void talk(struct core_session *a, struct core_session *b, uint64_t now) {
  for (int i = 0; i < 3; i++) {
    struct core_ctl ctl;
    bool reply;
    core_build_ctl(a, now, &ctl);
    (void)core_on_ctl(b, now, &ctl, &reply);
    core_build_ctl(b, now, &ctl);
    (void)core_on_ctl(a, now, &ctl, &reply);
  }
}

/* Both applications wrote, read everything and closed: both CLOSED. */
static void close_pair(struct core_session *w, struct core_session *r) {
  pair(w, r);
  write_pat(w, 2000, UINT64_MAX);
  deliver_pat(r, 2000);
  core_close(w, T0);
  core_close(r, T0);
  talk(w, r, T0);
  assert_int_equal(w->state, CORE_CLOSED);
  assert_int_equal(r->state, CORE_CLOSED);
}

/* Gap 1 of issue 3: with a durable peer a CLOSED session is not done (freed)
 * until the peer's committed snapshot holds the session finished (and, when
 * durable itself, its own) -- at most CORE_LINGER_MAX_NS -- and keeps what
 * a restore of the peer needs. */
static void test_closed_waits_for_durable_finish(void **state) {
  (void)state;
  struct core_session w, r;
  close_pair(&w, &r);
  uint64_t tw = CORE_TIME_WAIT_NS(&w);
  assert_int_equal(core_on_timer(&w, T0 + tw + 1, 0) & CORE_ACT_DONE, 0);
  assert_true(w.ret.base == 0); /* r's snapshot (delivered 0) needs it all */
  /* The reader's snapshot of the finished session becomes durable. */
  core_durable_commit(&r, T0 + 2, r.sent, r.delivered);
  core_durable_finished(&r, T0 + 2);
  talk(&r, &w, T0 + 2);
  assert_true(w.peer_durable_finished);
  /* w is durable too: it also waits for its own snapshot of the end (freed
   * before, a restore of an older one would come back to a peer that may
   * have let go), and then repeats the report for TIME_WAIT. */
  assert_int_equal(core_on_timer(&w, T0 + 2 + tw, 0) & CORE_ACT_DONE, 0);
  core_durable_commit(&w, T0 + 3, w.sent, w.delivered);
  core_durable_finished(&w, T0 + 3);
  struct core_ctl ctl;
  core_build_ctl(&w, T0 + 3, &ctl);
  assert_true(ctl.durable_finished);
  assert_int_equal(core_on_timer(&w, T0 + 3 + tw - 1, 0) & CORE_ACT_DONE, 0);
  assert_true(core_on_timer(&w, T0 + 3 + tw, 0) & CORE_ACT_DONE);
  /* Without it, the linger cap still ends it. */
  assert_int_equal(core_on_timer(&r, T0 + 2 + tw, 0) & CORE_ACT_DONE, 0);
  assert_true(core_on_timer(&r, T0 + CORE_LINGER_MAX_NS, 0) & CORE_ACT_DONE);
  core_clear(&w);
  core_clear(&r);
}

/* A peer restored from before the end resumes the CLOSED session: it is
 * reopened, resends what the peer lacks, and closes again. */
static void test_closed_reopened_by_rollback(void **state) {
  (void)state;
  struct core_session w, r;
  close_pair(&w, &r);
  /* The reader restores a snapshot taken when it had delivered 1000. */
  core_clear(&r);
  core_init(&r, &cfg_durable, CORE_SERVER, T0, 1000, 500);
  core_set_peer_durable(&r);
  deliver_pat(&r, 1000);
  core_durable_commit(&r, T0, 0, 1000);
  r.tx_seq = (uint64_t)1 << 40; /* a new epoch's control numbers */
  core_on_transport_lost(&r, T0);
  struct core_resume_state ws, rs;
  core_resume_state(&w, &ws);
  core_resume_state(&r, &rs);
  assert_int_equal(core_resume_check(&ws, &rs), 0);
  assert_int_equal(core_on_resumed(&w, T0 + 1, &rs), 0);
  assert_int_equal(w.state, CORE_CONNECTED);
  assert_int_equal(w.tx_pos, 1000);
  assert_int_equal(core_on_resumed(&r, T0 + 1, &ws), 0);
  assert_true(core_half_closed(r.peer_wr));
  assert_int_equal(r.peer_wr_end, 2000);
  assert_int_equal(carry(&w, &r), 0);
  assert_int_equal(r.delivered, 2000);
  core_close(&r, T0 + 2);
  talk(&w, &r, T0 + 2);
  assert_int_equal(w.state, CORE_CLOSED);
  assert_int_equal(r.state, CORE_CLOSED);
  /* An up-to-date peer's resume only exchanges final states. */
  core_resume_state(&r, &rs);
  assert_int_equal(core_on_resumed(&w, T0 + 3, &rs), 0);
  assert_int_equal(w.state, CORE_CLOSED);
  core_clear(&w);
  core_clear(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hash_split_invariant),
      cmocka_unit_test(test_log_and_check),
      cmocka_unit_test(test_log_starts_mid_chunk),
      cmocka_unit_test(test_log_cap_drops_oldest),
      cmocka_unit_test(test_durable_replay_verified),
      cmocka_unit_test(test_durable_replay_diverges),
      cmocka_unit_test(test_durable_replay_partial_chunk),
      cmocka_unit_test(test_rollback_without_durable_refused),
      cmocka_unit_test(test_durable_retention),
      cmocka_unit_test(test_durable_ack_while_suspended_keeps_log),
      cmocka_unit_test(test_rolled_back_end_diverges),
      cmocka_unit_test(test_closed_waits_for_durable_finish),
      cmocka_unit_test(test_closed_reopened_by_rollback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
