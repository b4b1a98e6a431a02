#include "control.h"

#include <errno.h>
#include <string.h>

#include "tether.pb-c.h"

ssize_t ctl_seal(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                 const uint8_t key[KEY_LEN], uint8_t *out, size_t cap) {
  Tether__Wire__Control m = TETHER__WIRE__CONTROL__INIT;
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

int ctl_peek(const uint8_t *dg, size_t len, const uint8_t **id) {
  if (len < CTL_HDR_LEN + MAC_LEN || len > CTL_MAX || memcmp(dg, CTL_MAGIC, 4) != 0)
    return -EPROTO;
  *id = dg + 4;
  return 0;
}

int ctl_decode_body(const uint8_t *body, size_t len, struct core_ctl *out) {
  if (len > CTL_MAX)
    return -EPROTO;
  Tether__Wire__Control *m = tether__wire__control__unpack(NULL, len, body);
  if (!m)
    return -EPROTO;
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
  tether__wire__control__free_unpacked(m, NULL);
  return out->seq ? 0 : -EPROTO; /* seq 0 is never sent */
}

int ctl_open(const uint8_t *dg, size_t len, const uint8_t key[KEY_LEN], struct core_ctl *out) {
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
  return ctl_decode_body(dg + CTL_HDR_LEN, signed_len - CTL_HDR_LEN, out);
}
