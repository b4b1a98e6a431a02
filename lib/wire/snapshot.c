#include "snapshot.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/replay.h"
#include "crypto.h"
#include <stdbool.h>
#include "tether/tether.h"

static void put_be(uint8_t *p, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

int snap_seal(const snap_msg *m, uint32_t capture, uint8_t **out, size_t *out_len) {
  size_t n = tether__snap__snapshot__get_packed_size(m);
  if (n > SNAP_PAYLOAD_MAX)
    return -EMSGSIZE;
  size_t total = SNAP_HEADER_LEN + n + SNAP_TRAILER_LEN;
  uint8_t *b = malloc(total);
  if (!b)
    return -ENOMEM;
  memcpy(b, SNAP_MAGIC, 8);
  put_be(b + 8, SNAP_FORMAT_VERSION, 4);
  put_be(b + 12, capture, 4);
  put_be(b + 16, n, 8);
  tether__snap__snapshot__pack(m, b + SNAP_HEADER_LEN);
  struct buf_part part = {b, SNAP_HEADER_LEN + n};
  if (sha256_parts(&part, 1, b + SNAP_HEADER_LEN + n) < 0) {
    free(b);
    return -EIO;
  }
  *out = b;
  *out_len = total;
  return 0;
}

/* Fields this format version does not define are refused: a snapshot comes
 * from this code, and protobuf-c would keep (and write back) even
 * malformed ones. */
static bool known(const ProtobufCMessage *m) { return m->n_unknown_fields == 0; }

static bool addr_ok(const Tether__Snap__Address *a, bool optional) {
  if (!a)
    return optional;
  if (!known(&a->base))
    return false;
  const ProtobufCBinaryData *s = &a->sockaddr;
  if (s->len == sizeof(struct sockaddr_in))
    return ((const struct sockaddr *)s->data)->sa_family == AF_INET;
  if (s->len == sizeof(struct sockaddr_in6))
    return ((const struct sockaddr *)s->data)->sa_family == AF_INET6;
  return false;
}

/* Everything the restore relies on; the first defect found, or NULL. */
static const char *check_session(const Tether__Snap__Session *s, size_t n_listeners) {
  if (!known(&s->base))
    return "unknown session field";
  if (s->id.len != SESSION_ID_LEN)
    return "session id length";
  if (s->k_ctl_c2s.len != KEY_LEN || s->k_ctl_s2c.len != KEY_LEN || s->k_resume_c.len != KEY_LEN ||
      s->k_resume_s.len != KEY_LEN)
    return "key length";
  if (s->epoch >= SNAP_EPOCH_MAX)
    return "epoch out of range";
  if (s->is_client ? !addr_ok(s->dial, false) : s->dial != NULL)
    return "dial address";
  if (!addr_ok(s->udp_peer, true))
    return "side-channel address";
  if (s->is_client ? s->listener != -1 : (s->listener < -1 || s->listener >= (int64_t)n_listeners))
    return "listener index";
  if (s->retained_from > s->sent || s->retained.len != s->sent - s->retained_from)
    return "retained bytes do not match the counters";
  if (s->peer_acked > s->sent)
    return "acknowledged count beyond what was sent";
  if (s->peer_wr_closed && s->peer_wr_end < s->delivered)
    return "peer's end of stream before what was delivered";
  if (s->tx_seq >= (uint64_t)(SNAP_EPOCH_MAX + 1) << SNAP_EPOCH_SHIFT)
    return "sequence number out of range";
  if (!s->heartbeat_ms || !s->suspend_ms || !s->reconnect_max_ms)
    return "timing options";
  if (s->peer_durable_sent > s->delivered || s->peer_durable_delivered > s->peer_acked)
    return "durable counters beyond the stream";
  if (s->peer_durable != (s->replay_log != NULL))
    return "replay log";
  if (s->finished && !((s->wr_closed || s->peer_rd_closed) &&
                       ((s->peer_wr_closed && s->delivered >= s->peer_wr_end) || s->rd_closed)))
    return "a finished session with a direction still open";
  if (s->peer_durable_finished && !s->peer_durable)
    return "durable flags";
  if (s->replay_log) {
    const Tether__Snap__ReplayLog *l = s->replay_log;
    if (!known(&l->base) || l->from % REPLAY_CHUNK || l->cur_len >= REPLAY_CHUNK ||
        l->from > s->delivered ||
        (s->delivered - l->from - l->cur_len) / REPLAY_CHUNK != l->n_hash ||
        (s->delivered - l->from - l->cur_len) % REPLAY_CHUNK ||
        (l->skip_first && l->n_hash) || l->n_hash > s->retain_max / REPLAY_CHUNK + 1)
      return "replay log does not match the counters";
  }
  return NULL;
}

int snap_capture_id(const uint8_t *buf, size_t len, uint32_t *capture) {
  if (len < SNAP_HEADER_LEN || memcmp(buf, SNAP_MAGIC, 8) != 0 ||
      get_be(buf + 8, 4) != SNAP_FORMAT_VERSION)
    return TETHER_EPROTO;
  *capture = (uint32_t)get_be(buf + 12, 4);
  return 0;
}

snap_msg *snap_open(const uint8_t *buf, size_t len, int *err, const char **why) {
  uint8_t digest[32];
  *err = TETHER_EPROTO;
  if (len < 8 || memcmp(buf, SNAP_MAGIC, 8) != 0) {
    *why = "not a tether snapshot (bad magic)";
    return NULL;
  }
  if (len < SNAP_HEADER_LEN) {
    *why = "truncated header";
    return NULL;
  }
  if (get_be(buf + 8, 4) != SNAP_FORMAT_VERSION) {
    *err = TETHER_EVERSION;
    *why = "unsupported snapshot format version";
    return NULL;
  }
  uint64_t n = get_be(buf + 16, 8);
  if (n > SNAP_PAYLOAD_MAX) {
    *why = "bad header";
    return NULL;
  }
  if (len - SNAP_HEADER_LEN < n + SNAP_TRAILER_LEN) {
    *why = "truncated";
    return NULL;
  }
  if (len - SNAP_HEADER_LEN > n + SNAP_TRAILER_LEN) {
    *why = "trailing bytes after the checksum";
    return NULL;
  }
  struct buf_part part = {buf, SNAP_HEADER_LEN + n};
  if (sha256_parts(&part, 1, digest) < 0 ||
      !mac_equal(digest, buf + SNAP_HEADER_LEN + n)) {
    *why = "checksum mismatch (corrupt)";
    return NULL;
  }
  snap_msg *m = tether__snap__snapshot__unpack(NULL, n, buf + SNAP_HEADER_LEN);
  if (!m) {
    *why = "undecodable content";
    return NULL;
  }
  if (!known(&m->base)) {
    *why = "unknown field";
    snap_free(m);
    return NULL;
  }
  for (size_t i = 0; i < m->n_listeners; i++)
    if (!known(&m->listeners[i]->base) || !addr_ok(m->listeners[i]->addr, false)) {
      *why = "listener address";
      snap_free(m);
      return NULL;
    }
  for (size_t i = 0; i < m->n_sessions; i++)
    if ((*why = check_session(m->sessions[i], m->n_listeners)) != NULL) {
      snap_free(m);
      return NULL;
    }
  *err = 0;
  return m;
}

static void wipe_bytes(ProtobufCBinaryData *b) {
  if (b->data)
    wipe(b->data, b->len);
}

/* The session keys decoded into m are overwritten before they are freed. */
void snap_free(snap_msg *m) {
  if (!m)
    return;
  for (size_t i = 0; i < m->n_sessions; i++) {
    Tether__Snap__Session *s = m->sessions[i];
    if (!s)
      continue;
    wipe_bytes(&s->k_ctl_c2s);
    wipe_bytes(&s->k_ctl_s2c);
    wipe_bytes(&s->k_resume_c);
    wipe_bytes(&s->k_resume_s);
  }
  tether__snap__snapshot__free_unpacked(m, NULL);
}
