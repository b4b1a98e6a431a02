#include "control.h"

#include <errno.h>
#include <string.h>

#include "tether.pb-c.h"

ssize_t ctl_seal_path(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                      const struct ctl_path *path, const uint8_t key[KEY_LEN], uint8_t *out,
                      size_t cap) {
  Tether__Wire__Control m = TETHER__WIRE__CONTROL__INIT;
  Tether__Wire__PathBeat pb = TETHER__WIRE__PATH_BEAT__INIT;
  uint8_t digests[CTL_PATH_BUCKETS_MAX * 4];
  if (path && path->buckets) {
    if (path->buckets > CTL_PATH_BUCKETS_MAX || (path->buckets & (path->buckets - 1)))
      return -EINVAL;
    for (uint32_t b = 0; b < path->buckets; b++)
      for (int k = 0; k < 4; k++)
        digests[b * 4 + (uint32_t)k] = (uint8_t)(path->digest[b] >> (8 * k));
    pb.buckets = path->buckets;
    pb.digests.data = digests;
    pb.digests.len = path->buckets * 4;
    m.path = &pb;
  }
  m.seq = ctl->seq;
  m.delivered = ctl->delivered;
  m.sent = ctl->sent;
  m.write_closed = ctl->write_closed;
  m.read_closed = ctl->read_closed;
  m.ack_write_closed = ctl->ack_write_closed;
  m.ack_read_closed = ctl->ack_read_closed;
  m.want_reply = ctl->want_reply;
  m.rcvbuf_max = ctl->rcvbuf_max;
  m.durable_sent = ctl->durable_sent;
  m.durable_delivered = ctl->durable_delivered;
  m.failed = ctl->failed;
  m.durable_finished = ctl->durable_finished;
  m.suspended = ctl->suspended;
  m.solo = ctl->solo;
  size_t body = tether__wire__control__get_packed_size(&m);
  size_t total = CTL_HDR_LEN + body + MAC_LEN;
  if (total > cap || total > CTL_MAX)
    return -EMSGSIZE;
  memcpy(out, CTL_MAGIC, 4);
  memcpy(out + 4, id, SESSION_ID_LEN);
  tether__wire__control__pack(&m, out + CTL_HDR_LEN);
  struct buf_part part = {out, CTL_HDR_LEN + body};
  if (hmac_parts(key, &part, 1, out + CTL_HDR_LEN + body) < 0)
    return -EIO;
  return (ssize_t)total;
}

ssize_t ctl_seal(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                 const uint8_t key[KEY_LEN], uint8_t *out, size_t cap) {
  return ctl_seal_path(id, ctl, NULL, key, out, cap);
}

int ctl_peek(const uint8_t *dg, size_t len, const uint8_t **id) {
  if (len < CTL_HDR_LEN + MAC_LEN || len > CTL_MAX || memcmp(dg, CTL_MAGIC, 4) != 0)
    return -EPROTO;
  *id = dg + 4;
  return 0;
}

/* A path heartbeat as sent: a power of two of buckets, 4 bytes each. */
static int decode_path(const Tether__Wire__PathBeat *pb, struct ctl_path *path) {
  uint32_t n = pb->buckets;
  if (n == 0 || n > CTL_PATH_BUCKETS_MAX || (n & (n - 1)) || pb->digests.len != (size_t)n * 4)
    return -EPROTO;
  if (!path)
    return 0;
  path->buckets = n;
  for (uint32_t b = 0; b < n; b++) {
    const uint8_t *d = pb->digests.data + b * 4;
    path->digest[b] = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
                      (uint32_t)d[3] << 24;
  }
  return 0;
}

static int decode_body(const uint8_t *body, size_t len, struct core_ctl *out,
                       struct ctl_path *path) {
  if (len > CTL_MAX)
    return -EPROTO;
  if (path)
    path->buckets = 0;
  Tether__Wire__Control *m = tether__wire__control__unpack(NULL, len, body);
  if (!m)
    return -EPROTO;
  if (m->path && decode_path(m->path, path) < 0) {
    tether__wire__control__free_unpacked(m, NULL);
    return -EPROTO;
  }
  memset(out, 0, sizeof(*out));
  out->seq = m->seq;
  out->delivered = m->delivered;
  out->sent = m->sent;
  out->write_closed = m->write_closed;
  out->read_closed = m->read_closed;
  out->ack_write_closed = m->ack_write_closed;
  out->ack_read_closed = m->ack_read_closed;
  out->want_reply = m->want_reply;
  out->rcvbuf_max = m->rcvbuf_max;
  out->durable_sent = m->durable_sent;
  out->durable_delivered = m->durable_delivered;
  out->failed = m->failed;
  out->durable_finished = m->durable_finished;
  out->suspended = m->suspended;
  out->solo = m->solo;
  tether__wire__control__free_unpacked(m, NULL);
  if (!out->seq && path)
    path->buckets = 0;
  return out->seq ? 0 : -EPROTO; /* seq 0 is never sent */
}

int ctl_decode_body(const uint8_t *body, size_t len, struct core_ctl *out) {
  return decode_body(body, len, out, NULL);
}

int ctl_open_path(const uint8_t *dg, size_t len, const uint8_t key[KEY_LEN], struct core_ctl *out,
                  struct ctl_path *path) {
  const uint8_t *id;
  uint8_t mac[MAC_LEN];
  if (ctl_peek(dg, len, &id) < 0)
    return -EPROTO;
  size_t signed_len = len - MAC_LEN;
  struct buf_part part = {dg, signed_len};
  if (hmac_parts(key, &part, 1, mac) < 0)
    return -EIO;
  if (!mac_equal(mac, dg + signed_len))
    return -EBADMSG;
  return decode_body(dg + CTL_HDR_LEN, signed_len - CTL_HDR_LEN, out, path);
}

int ctl_open(const uint8_t *dg, size_t len, const uint8_t key[KEY_LEN], struct core_ctl *out) {
  return ctl_open_path(dg, len, key, out, NULL);
}
