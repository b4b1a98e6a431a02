#include "handshake.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "tether/tether.h"

ssize_t hs_encode(const hs_msg *m, bool preface, uint8_t *out, size_t cap) {
  size_t body = tether__wire__handshake__get_packed_size(m);
  size_t pre = preface ? HS_PREFACE_LEN : 0;
  if (body == 0 || body > HS_FRAME_MAX || pre + 4 + body > cap)
    return -EMSGSIZE;
  if (preface) {
    memcpy(out, HS_MAGIC, 4);
    out[4] = HS_VERSION;
  }
  out[pre] = (uint8_t)(body >> 24);
  out[pre + 1] = (uint8_t)(body >> 16);
  out[pre + 2] = (uint8_t)(body >> 8);
  out[pre + 3] = (uint8_t)body;
  tether__wire__handshake__pack(m, out + pre + 4);
  return (ssize_t)(pre + 4 + body);
}

static bool len_is(const ProtobufCBinaryData *b, size_t n) { return b->len == n && b->data; }

static bool state_ok(const Tether__Wire__ResumeState *st) { return st != NULL; }

static const char *validate(const hs_msg *m) {
  switch (m->msg_case) {
  case TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO:
    if (!len_is(&m->client_hello->x25519_pub, KEY_LEN) ||
        !len_is(&m->client_hello->nonce, NONCE_LEN))
      return "ClientHello: bad key or nonce length";
    if (m->client_hello->udp_port > 65535)
      return "ClientHello: bad UDP port";
    return NULL;
  case TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO:
    if (!len_is(&m->server_hello->x25519_pub, KEY_LEN) ||
        !len_is(&m->server_hello->nonce, NONCE_LEN) ||
        !len_is(&m->server_hello->session_id, SESSION_ID_LEN) ||
        (m->server_hello->confirm.len != 0 && !len_is(&m->server_hello->confirm, MAC_LEN)))
      return "ServerHello: bad field length";
    if (m->server_hello->udp_port > 65535)
      return "ServerHello: bad UDP port";
    return NULL;
  case TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH:
    return len_is(&m->client_finish->confirm, MAC_LEN) ? NULL : "ClientFinish: bad MAC length";
  case TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO:
    return len_is(&m->resume_hello->session_id, SESSION_ID_LEN) &&
                   len_is(&m->resume_hello->nonce, NONCE_LEN)
               ? NULL
               : "ResumeHello: bad field length";
  case TETHER__WIRE__HANDSHAKE__MSG_RESUME_CHALLENGE:
    return len_is(&m->resume_challenge->nonce, NONCE_LEN) &&
                   len_is(&m->resume_challenge->mac, MAC_LEN)
               ? NULL
               : "ResumeChallenge: bad field length";
  case TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH:
    return state_ok(m->resume_finish->state) && len_is(&m->resume_finish->mac, MAC_LEN)
               ? NULL
               : "ResumeFinish: missing state or bad MAC length";
  case TETHER__WIRE__HANDSHAKE__MSG_RESUME_ACCEPT:
    return state_ok(m->resume_accept->state) && len_is(&m->resume_accept->mac, MAC_LEN)
               ? NULL
               : "ResumeAccept: missing state or bad MAC length";
  case TETHER__WIRE__HANDSHAKE__MSG_REJECT:
    return NULL;
  default:
    return "unknown handshake message";
  }
}

hs_msg *hs_decode(const uint8_t *body, size_t len, const char **why) {
  if (len == 0 || len > HS_FRAME_MAX) {
    *why = "frame length out of range";
    return NULL;
  }
  hs_msg *m = tether__wire__handshake__unpack(NULL, len, body);
  if (!m) {
    *why = "undecodable protobuf";
    return NULL;
  }
  const char *bad = validate(m);
  if (bad) {
    *why = bad;
    hs_free(m);
    return NULL;
  }
  return m;
}

void hs_free(hs_msg *m) {
  if (m)
    tether__wire__handshake__free_unpacked(m, NULL);
}

int hs_check_preface(const uint8_t p[HS_PREFACE_LEN]) {
  if (memcmp(p, HS_MAGIC, 4) != 0)
    return -EPROTO;
  return p[4] == HS_VERSION ? 0 : TETHER_EVERSION;
}

/* A prefaced frame's preface and length are read with one recv(); the
 * preface is checked as soon as it is in, so that a peer that is not tether
 * is refused without waiting for more bytes. */
void hs_reader_init(struct hs_reader *r, bool expect_preface) {
  r->have = 0;
  r->phase = expect_preface ? 0 : 1;
  r->need = expect_preface ? HS_PREFACE_LEN + 4 : 4;
}

static int check_preface(const struct hs_reader *r, const char **why) {
  int rc = hs_check_preface(r->buf);
  if (rc < 0)
    *why = rc == TETHER_EVERSION ? "unsupported protocol version" : "not a tether peer";
  return rc;
}

int hs_reader_step(struct hs_reader *r, int fd, const char **why) {
  for (;;) {
    while (r->have < r->need) {
      ssize_t n = recv(fd, r->buf + r->have, r->need - r->have, MSG_DONTWAIT);
      if (n == 0) {
        *why = "connection closed during handshake";
        return -ECONNRESET;
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return 0;
        if (errno == EINTR)
          continue;
        *why = "receive failed during handshake";
        return -errno;
      }
      r->have += (size_t)n;
      int rc;
      if (r->phase == 0 && r->have >= HS_PREFACE_LEN && (rc = check_preface(r, why)) < 0)
        return rc;
    }
    if (r->phase == 0) { /* preface checked: the length follows it */
      memmove(r->buf, r->buf + HS_PREFACE_LEN, 4);
      r->phase = 1;
      r->have = r->need = 4;
    } else if (r->phase == 1) {
      uint32_t len = (uint32_t)r->buf[0] << 24 | (uint32_t)r->buf[1] << 16 |
                     (uint32_t)r->buf[2] << 8 | r->buf[3];
      if (len == 0 || len > HS_FRAME_MAX) {
        *why = "handshake frame length out of range";
        return -EMSGSIZE;
      }
      r->phase = 2;
      r->have = 0;
      r->need = len;
    } else {
      return 1;
    }
  }
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

int hs_transcript_hash(const struct hs_transcript *t, uint8_t th[32]) {
  uint8_t nums[32];
  put64(nums, t->client_rcvbuf);
  put64(nums + 8, t->server_rcvbuf);
  put64(nums + 16, (uint64_t)t->client_udp << 32 | t->server_udp);
  put64(nums + 24, (uint64_t)t->client_flags << 32 | t->server_flags);
  struct buf_part parts[] = {
      {"tether/1 handshake", 18},
      {t->client_pub, KEY_LEN},
      {t->client_nonce, NONCE_LEN},
      {t->server_pub, KEY_LEN},
      {t->server_nonce, NONCE_LEN},
      {t->session_id, SESSION_ID_LEN},
      {nums, sizeof(nums)},
  };
  return sha256_parts(parts, sizeof(parts) / sizeof(parts[0]), th);
}

int hs_resume_mac(const uint8_t key[KEY_LEN], const char *label,
                  const uint8_t id[SESSION_ID_LEN], const uint8_t nonce_c[NONCE_LEN],
                  const uint8_t nonce_s[NONCE_LEN], const struct core_resume_state *st,
                  uint8_t out[MAC_LEN]) {
  uint8_t s[10 * 8];
  size_t n = 0;
  if (st) {
    put64(s, st->delivered);
    put64(s + 8, st->sent);
    put64(s + 16, st->retained_from);
    put64(s + 24, (uint64_t)st->write_closed << 1 | (uint64_t)st->read_closed);
    put64(s + 32, st->rcvbuf_max);
    put64(s + 40, st->verify_from);
    put64(s + 48, st->durable_sent);
    put64(s + 56, st->durable_delivered);
    put64(s + 64, st->ctl_seq);
    put64(s + 72, st->ctl_seq_seen);
    n = sizeof(s);
  }
  struct buf_part parts[] = {
      {label, strlen(label) + 1}, /* the NUL separates label from id */
      {id, SESSION_ID_LEN},
      {nonce_c, NONCE_LEN},
      {nonce_s, NONCE_LEN},
      {s, n},
  };
  return hmac_parts(key, parts, sizeof(parts) / sizeof(parts[0]), out);
}

int hs_reject_mac(const uint8_t key[KEY_LEN], uint32_t code, const uint8_t id[SESSION_ID_LEN],
                  const uint8_t nonce_c[NONCE_LEN], const uint8_t nonce_s[NONCE_LEN],
                  uint8_t out[MAC_LEN]) {
  uint8_t c[4] = {(uint8_t)(code >> 24), (uint8_t)(code >> 16), (uint8_t)(code >> 8),
                  (uint8_t)code};
  struct buf_part parts[] = {
      {"reject", sizeof("reject")}, /* with its NUL, as hs_resume_mac's labels */
      {c, sizeof(c)},
      {id, SESSION_ID_LEN},
      {nonce_c, NONCE_LEN},
      {nonce_s, NONCE_LEN},
  };
  return hmac_parts(key, parts, sizeof(parts) / sizeof(parts[0]), out);
}

int hs_psk_reject_key(const uint8_t *psk, size_t psk_len, uint8_t out[KEY_LEN]) {
  struct buf_part parts[] = {
      {"tether/1 reject", sizeof("tether/1 reject")},
      {psk, psk_len},
  };
  return sha256_parts(parts, sizeof(parts) / sizeof(parts[0]), out);
}

void hs_state_to_pb(const struct core_resume_state *st, Tether__Wire__ResumeState *pb) {
  tether__wire__resume_state__init(pb);
  pb->delivered = st->delivered;
  pb->sent = st->sent;
  pb->retained_from = st->retained_from;
  pb->write_closed = st->write_closed;
  pb->read_closed = st->read_closed;
  pb->rcvbuf_max = st->rcvbuf_max;
  pb->verify_from = st->verify_from;
  pb->durable_sent = st->durable_sent;
  pb->durable_delivered = st->durable_delivered;
  pb->ctl_seq = st->ctl_seq;
  pb->ctl_seq_seen = st->ctl_seq_seen;
}

void hs_state_from_pb(const Tether__Wire__ResumeState *pb, struct core_resume_state *st) {
  memset(st, 0, sizeof(*st));
  st->delivered = pb->delivered;
  st->sent = pb->sent;
  st->retained_from = pb->retained_from;
  st->write_closed = pb->write_closed;
  st->read_closed = pb->read_closed;
  st->rcvbuf_max = pb->rcvbuf_max;
  st->verify_from = pb->verify_from;
  st->durable_sent = pb->durable_sent;
  st->durable_delivered = pb->durable_delivered;
  st->ctl_seq = pb->ctl_seq;
  st->ctl_seq_seen = pb->ctl_seq_seen;
}
