/* One handshake on one TCP connection (tether(7), WIRE PROTOCOL).
 *
 * Steps.  Client, new session: send ClientHello, await ServerHello, send
 * ClientFinish.  Client, resume: send ResumeHello, await ResumeChallenge,
 * send ResumeFinish, await ResumeAccept.  Server: await ClientHello (then
 * send ServerHello, await ClientFinish) or ResumeHello (then send
 * ResumeChallenge, await ResumeFinish, send ResumeAccept).  Nothing is read
 * past the last frame: application bytes may follow it directly.  Without a
 * pre-shared key the server's part ends with its ServerHello: the session's
 * first read takes the ClientFinish (session.c, take_finish_locked).  The
 * server answers a ClientHello only once its listener's accept queue has
 * room for the session (S_AWAIT_ROOM: parked meanwhile, hs_table.c). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"

enum {
  S_START = 0,
  S_AWAIT_SERVER_HELLO,
  S_AWAIT_CHALLENGE,
  S_AWAIT_ACCEPT,
  S_AWAIT_FIRST = 10,
  S_AWAIT_CLIENT_FINISH,
  S_AWAIT_RESUME_FINISH,
  S_AWAIT_ROOM, /* a ClientHello read, its listener's accept queue full */
  S_DONE = 99,
};

/* A handshake holds about 9 KiB (its frame buffers) for a round trip or
 * two.  Mapped on its own rather than taken from the heap: a thousand in
 * flight among the sessions they create would leave a thousand holes
 * there, resident for good once the setups are over (a few KiB per
 * session of a process that set up thousands at once). */
struct hs_conn *hs_conn_new(struct tether_ctx *ctx, enum hs_kind kind, int fd) {
  struct hs_conn *h = calloc(1, sizeof(*h));
  if (!h)
    return NULL;
  h->ctx = ctx;
  h->kind = kind;
  h->fd = fd;
  h->step = kind == HS_SERVER ? S_AWAIT_FIRST : S_START;
  hs_reader_init(&h->rd, true);
  return h;
}

void hs_conn_free(struct hs_conn *h) {
  if (!h)
    return;
  if (h->slot.reserved)
    listener_unreserve(h);
  if (h->ev)
    event_free(h->ev);
  if (h->timeout)
    event_free(h->timeout);
  if (h->fd >= 0)
    close(h->fd);
  x25519_free(h->key);
  wipe(h, sizeof(*h)); /* keys, finish_mac */
  free(h);
}

/* Queues one frame (with our preface if this is our first message). */
static int queue(struct hs_conn *h, const hs_msg *m, bool preface) {
  if (preface && h->preface_sent)
    preface = false;
  if (preface)
    h->preface_sent = true;
  ssize_t n = hs_encode(m, preface, h->out + h->out_len, sizeof(h->out) - h->out_len);
  if (n < 0) {
    h->why = "handshake message too large";
    return (int)n;
  }
  h->out_len += (size_t)n;
  return 0;
}

static int flush(struct hs_conn *h) {
  while (h->out_off < h->out_len) {
    ssize_t n = send(h->fd, h->out + h->out_off, h->out_len - h->out_off,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return HS_WANT_WRITE;
      h->why = "send failed during handshake";
      return -errno;
    }
    h->out_off += (size_t)n;
  }
  h->out_off = h->out_len = 0;
  return 0;
}

/* Tells the peer why we stop (best effort), and returns err.  A server's
 * Reject of a resume carries a MAC when it has a key for one. */
static int reject(struct hs_conn *h, Tether__Wire__Reject__Code code, const char *reason,
                  int err) {
  Tether__Wire__Reject rj = TETHER__WIRE__REJECT__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  uint8_t mac[MAC_LEN];
  rj.code = code;
  rj.reason = (char *)reason;
  if (h->kind == HS_SERVER && h->reject_keyed &&
      hs_reject_mac(h->reject_key, (uint32_t)code, h->t.session_id, h->nonce_c, h->nonce_s,
                    mac) == 0)
    rj.mac = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_REJECT;
  m.reject = &rj;
  h->out_len = h->out_off = 0;
  if (queue(h, &m, h->kind == HS_SERVER) == 0)
    (void)flush(h);
  h->why = reason;
  return err;
}

static int reject_code_to_err(Tether__Wire__Reject__Code c) {
  switch (c) {
  case TETHER__WIRE__REJECT__CODE__VERSION: return TETHER_EVERSION;
  case TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION: return TETHER_ESESSIONGONE;
  case TETHER__WIRE__REJECT__CODE__AUTH: return TETHER_EAUTH;
  case TETHER__WIRE__REJECT__CODE__BUSY: return -EAGAIN;
  case TETHER__WIRE__REJECT__CODE__WINDOW: return TETHER_EWINDOW;
  case TETHER__WIRE__REJECT__CODE__DIVERGED: return TETHER_EDIVERGED;
  case TETHER__WIRE__REJECT__CODE__STALE: return -ESTALE;
  default: return TETHER_EPROTO;
  }
}

static uint32_t local_udp_port(struct hs_conn *h) {
  struct udp_chan *u = NULL;
  if (h->kind == HS_SERVER)
    u = h->listener ? h->listener->udp : NULL;
  else
    u = h->peer.ss_family == AF_INET6 ? h->ctx->udp6 : h->ctx->udp4;
  return u ? u->port : 0;
}

/* ---- client, new session ---- */

static int client_hello(struct hs_conn *h) {
  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  h->key = ctx_take_key(h->ctx);
  if (!h->key || crypto_random(h->nonce_c, NONCE_LEN) < 0) {
    h->why = "key generation failed";
    return -EIO;
  }
  memcpy(h->t.client_pub, x25519_pub(h->key), KEY_LEN);
  memcpy(h->t.client_nonce, h->nonce_c, NONCE_LEN);
  h->t.client_rcvbuf = sock_rcvbuf_max(h->fd);
  h->t.client_udp = local_udp_port(h);
  h->t.client_flags = h->ctx->cfg.durable ? HELLO_DURABLE : 0;
  ch.flags = h->t.client_flags;
  ch.x25519_pub = (ProtobufCBinaryData){KEY_LEN, h->t.client_pub};
  ch.nonce = (ProtobufCBinaryData){NONCE_LEN, h->nonce_c};
  ch.rcvbuf_max = h->t.client_rcvbuf;
  ch.udp_port = h->t.client_udp;
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m.client_hello = &ch;
  h->step = S_AWAIT_SERVER_HELLO;
  return queue(h, &m, true);
}

/* Derives the session keys from the transcript both sides now share. */
static int derive(struct hs_conn *h, const uint8_t peer_pub[KEY_LEN], uint8_t th[32]) {
  uint8_t shared[KEY_LEN];
  int rc = x25519_shared(h->key, peer_pub, shared);
  if (rc == 0)
    rc = hs_transcript_hash(&h->t, th);
  if (rc == 0)
    rc = keys_derive(shared, h->ctx->cfg.psk, h->ctx->cfg.psk_len, th, &h->keys);
  wipe(shared, sizeof(shared));
  x25519_free(h->key); /* this handshake's reference */
  h->key = NULL;
  return rc;
}

static int on_server_hello(struct hs_conn *h, const Tether__Wire__ServerHello *sh) {
  uint8_t th[32], mac[MAC_LEN];
  memcpy(h->t.server_pub, sh->x25519_pub.data, KEY_LEN);
  memcpy(h->t.server_nonce, sh->nonce.data, NONCE_LEN);
  memcpy(h->t.session_id, sh->session_id.data, SESSION_ID_LEN);
  h->t.server_rcvbuf = sh->rcvbuf_max;
  h->t.server_udp = sh->udp_port;
  h->t.server_flags = sh->flags;
  h->peer_durable = sh->flags & HELLO_DURABLE;
  h->peer_rcvbuf = sh->rcvbuf_max;
  h->peer_udp_port = sh->udp_port;
  bool confirmed = sh->confirm.len > 0;
  if (!confirmed && h->ctx->cfg.psk_len > 0) {
    h->why = "server did not authenticate with the pre-shared key (none configured there?)";
    return TETHER_EAUTH;
  }
  if (derive(h, h->t.server_pub, th) < 0) {
    h->why = "key agreement failed (bad server key)";
    return TETHER_EPROTO;
  }
  struct buf_part p = {th, sizeof(th)};
  if (confirmed) {
    if (hmac_parts(h->keys.confirm_s, &p, 1, mac) < 0)
      return -EIO;
    if (!mac_equal(mac, sh->confirm.data)) {
      h->why = "server failed key confirmation (pre-shared key mismatch?)";
      return TETHER_EAUTH;
    }
  }
  if (hmac_parts(h->keys.confirm_c, &p, 1, mac) < 0)
    return -EIO;

  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  cf.confirm = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m.client_finish = &cf;
  h->step = S_DONE;
  return queue(h, &m, false);
}

/* ---- client, resume ---- */

static int resume_hello(struct hs_conn *h) {
  Tether__Wire__ResumeHello rh = TETHER__WIRE__RESUME_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  if (crypto_random(h->nonce_c, NONCE_LEN) < 0)
    return -EIO;
  rh.session_id = (ProtobufCBinaryData){SESSION_ID_LEN, h->session->id};
  rh.nonce = (ProtobufCBinaryData){NONCE_LEN, h->nonce_c};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO;
  m.resume_hello = &rh;
  h->step = S_AWAIT_CHALLENGE;
  return queue(h, &m, true);
}

static int on_challenge(struct hs_conn *h, const Tether__Wire__ResumeChallenge *rc_msg) {
  struct tether_session *s = h->session;
  uint8_t mac[MAC_LEN];
  struct core_resume_state ours;
  memcpy(h->nonce_s, rc_msg->nonce.data, NONCE_LEN);
  if (hs_resume_mac(s->keys.resume_s, "challenge", s->id, h->nonce_c, h->nonce_s, NULL, mac) < 0)
    return -EIO;
  if (!mac_equal(mac, rc_msg->mac.data)) {
    h->why = "resume challenge failed authentication (not our server?)";
    return TETHER_EAUTH;
  }
  /* Only one attempt at a time may commit to resuming, or two could each
   * replace the other's connection on the server. */
  if (s->finishing && s->finishing != h) {
    h->why = "another attempt is resuming";
    return -EALREADY;
  }
  s->finishing = h;
  /* Suspended: the application cannot move these counters now. */
  session_lock(s);
  core_resume_attempt(&s->core, &ours);
  session_unlock(s);
  ours.rcvbuf_max = sock_rcvbuf_max(h->fd);
  if (hs_resume_mac(s->keys.resume_c, "finish", s->id, h->nonce_c, h->nonce_s, &ours, mac) < 0)
    return -EIO;
  Tether__Wire__ResumeState st;
  Tether__Wire__ResumeFinish rf = TETHER__WIRE__RESUME_FINISH__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  hs_state_to_pb(&ours, &st);
  rf.state = &st;
  rf.mac = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH;
  m.resume_finish = &rf;
  h->step = S_AWAIT_ACCEPT;
  return queue(h, &m, false);
}

static int on_accept(struct hs_conn *h, const Tether__Wire__ResumeAccept *ra) {
  struct tether_session *s = h->session;
  uint8_t mac[MAC_LEN];
  hs_state_from_pb(ra->state, &h->peer_state);
  if (hs_resume_mac(s->keys.resume_s, "accept", s->id, h->nonce_c, h->nonce_s, &h->peer_state,
                    mac) < 0)
    return -EIO;
  if (!mac_equal(mac, ra->mac.data)) {
    h->why = "resume accept failed authentication";
    return TETHER_EAUTH;
  }
  h->step = S_DONE;
  return 0;
}

/* ---- server ---- */

/* The server proves its keys in the ServerHello only with a pre-shared key
 * (without one an active attacker could complete the exchange anyway).
 * Otherwise it answers at once and agrees on keys while its ServerHello
 * travels, so the two sides' X25519 operations overlap.  The client always
 * proves its keys in ClientFinish.  With a pre-shared key that proof
 * authenticates the client, and no session exists here before it.  Without
 * one it proves nothing a client could not: the session is made at once
 * and queued for accept while the client agrees on keys, and the
 * ClientFinish, which the client sends right before its first bytes, is
 * checked when the session reads them -- the accepting side gains the
 * engine's and the accept's wake-ups on its first bytes.  Until some proof
 * (that ClientFinish, an authenticated datagram or a resume) a broken
 * connection ends such a session within connect_timeout_ms. */
static int on_client_hello(struct hs_conn *h, const Tether__Wire__ClientHello *ch) {
  if (h->listener && listener_closed(h->listener))
    return reject(h, TETHER__WIRE__REJECT__CODE__BUSY, "listener closed", -ECONNREFUSED);
  memcpy(h->t.client_pub, ch->x25519_pub.data, KEY_LEN);
  memcpy(h->t.client_nonce, ch->nonce.data, NONCE_LEN);
  h->t.client_rcvbuf = ch->rcvbuf_max;
  h->t.client_udp = ch->udp_port;
  h->t.client_flags = ch->flags;
  h->peer_durable = ch->flags & HELLO_DURABLE;
  h->peer_rcvbuf = ch->rcvbuf_max;
  h->peer_udp_port = ch->udp_port;
  /* Answered once the listener's accept queue can take the session
   * (hs_conn_advance); until then the client waits, as for a full TCP
   * backlog. */
  h->step = S_AWAIT_ROOM;
  return 0;
}

/* The ServerHello, once the accept queue has a place for the session. */
static int answer_client_hello(struct hs_conn *h) {
  uint8_t th[32], mac[MAC_LEN];
  bool confirm = h->ctx->cfg.psk_len > 0;
  int rc;
  if (h->listener && listener_closed(h->listener))
    return reject(h, TETHER__WIRE__REJECT__CODE__BUSY, "listener closed", -ECONNREFUSED);
  h->key = ctx_take_key(h->ctx);
  uint8_t rnd[NONCE_LEN + SESSION_ID_LEN]; /* one RAND_bytes() call for both */
  if (!h->key || crypto_random(rnd, sizeof(rnd)) < 0)
    return reject(h, TETHER__WIRE__REJECT__CODE__BUSY, "key generation failed", -EIO);
  memcpy(h->nonce_s, rnd, NONCE_LEN);
  memcpy(h->t.session_id, rnd + NONCE_LEN, SESSION_ID_LEN);
  wipe(rnd, sizeof(rnd));
  memcpy(h->t.server_pub, x25519_pub(h->key), KEY_LEN);
  memcpy(h->t.server_nonce, h->nonce_s, NONCE_LEN);
  h->t.server_rcvbuf = sock_rcvbuf_max(h->fd);
  h->t.server_udp = local_udp_port(h);
  h->t.server_flags = h->ctx->cfg.durable ? HELLO_DURABLE : 0;
  if (confirm) {
    if (derive(h, h->t.client_pub, th) < 0)
      return reject(h, TETHER__WIRE__REJECT__CODE__MALFORMED, "bad client key", TETHER_EPROTO);
    struct buf_part p = {th, sizeof(th)};
    if (hmac_parts(h->keys.confirm_s, &p, 1, mac) < 0)
      return -EIO;
  }

  Tether__Wire__ServerHello sh = TETHER__WIRE__SERVER_HELLO__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  sh.x25519_pub = (ProtobufCBinaryData){KEY_LEN, h->t.server_pub};
  sh.nonce = (ProtobufCBinaryData){NONCE_LEN, h->nonce_s};
  sh.session_id = (ProtobufCBinaryData){SESSION_ID_LEN, h->t.session_id};
  sh.rcvbuf_max = h->t.server_rcvbuf;
  sh.udp_port = h->t.server_udp;
  sh.flags = h->t.server_flags;
  if (confirm)
    sh.confirm = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO;
  m.server_hello = &sh;
  h->step = S_AWAIT_CLIENT_FINISH;
  if ((rc = queue(h, &m, true)) < 0 || confirm)
    return rc;
  if ((rc = flush(h)) < 0) /* on its way now; a remainder goes out later */
    return rc;
  if (derive(h, h->t.client_pub, th) < 0) {
    h->why = "bad client key"; /* too late for a Reject: the connection just closes */
    return TETHER_EPROTO;
  }
  struct buf_part p = {th, sizeof(th)};
  if (hmac_parts(h->keys.confirm_c, &p, 1, h->finish_mac) < 0)
    return -EIO;
  h->finish_later = true;
  h->step = S_DONE;
  return 0;
}

static int on_client_finish(struct hs_conn *h, const Tether__Wire__ClientFinish *cf) {
  uint8_t th[32], mac[MAC_LEN];
  if (hs_transcript_hash(&h->t, th) < 0)
    return -EIO;
  struct buf_part p = {th, sizeof(th)};
  if (hmac_parts(h->keys.confirm_c, &p, 1, mac) < 0)
    return -EIO;
  if (!mac_equal(mac, cf->confirm.data)) {
    h->why = "client failed key confirmation (pre-shared key mismatch?)";
    return TETHER_EAUTH;
  }
  h->step = S_DONE;
  return 0;
}

/* The session a resume names, looked up again at every step: it may have
 * ended meanwhile. */
static struct tether_session *find_session(struct hs_conn *h) {
  pthread_mutex_lock(&h->ctx->lock);
  struct tether_session *s = registry_find(h->ctx, h->t.session_id);
  pthread_mutex_unlock(&h->ctx->lock);
  return s;
}

static int on_resume_hello(struct hs_conn *h, const Tether__Wire__ResumeHello *rh) {
  uint8_t mac[MAC_LEN];
  char tag[17];
  memcpy(h->t.session_id, rh->session_id.data, SESSION_ID_LEN);
  memcpy(h->nonce_c, rh->nonce.data, NONCE_LEN);
  struct tether_session *s = find_session(h);
  if (!s) {
    LOG_INFO(h->ctx, "resume for unknown session %s refused",
             session_tag(h->t.session_id, tag));
    /* Without the session's key only a pre-shared key can vouch for us. */
    memset(h->nonce_s, 0, NONCE_LEN);
    h->reject_keyed = h->ctx->cfg.psk_len > 0 &&
                      hs_psk_reject_key(h->ctx->cfg.psk, h->ctx->cfg.psk_len, h->reject_key) == 0;
    return reject(h, TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION, "unknown session",
                  TETHER_ESESSIONGONE);
  }
  if (crypto_random(h->nonce_s, NONCE_LEN) < 0 ||
      hs_resume_mac(s->keys.resume_s, "challenge", s->id, h->nonce_c, h->nonce_s, NULL, mac) < 0)
    return -EIO;
  /* Kept for our Rejects of this attempt: the session may end before them. */
  memcpy(h->reject_key, s->keys.resume_s, KEY_LEN);
  h->reject_keyed = true;
  hs_table_resume(h); /* out of the slots new setups compete for */
  Tether__Wire__ResumeChallenge ch = TETHER__WIRE__RESUME_CHALLENGE__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  ch.nonce = (ProtobufCBinaryData){NONCE_LEN, h->nonce_s};
  ch.mac = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_CHALLENGE;
  m.resume_challenge = &ch;
  h->step = S_AWAIT_RESUME_FINISH;
  return queue(h, &m, true);
}

static int on_resume_finish(struct hs_conn *h, const Tether__Wire__ResumeFinish *rf) {
  uint8_t mac[MAC_LEN];
  char tag[17];
  struct core_resume_state ours;
  struct tether_session *s = find_session(h);
  if (!s)
    return reject(h, TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION, "session ended",
                  TETHER_ESESSIONGONE);
  hs_state_from_pb(rf->state, &h->peer_state);
  if (hs_resume_mac(s->keys.resume_c, "finish", s->id, h->nonce_c, h->nonce_s, &h->peer_state,
                    mac) < 0)
    return -EIO;
  if (!mac_equal(mac, rf->mac.data)) {
    LOG_WARN(h->ctx, "session %s: resume attempt with a wrong key refused; session untouched",
             session_tag(s->id, tag));
    return reject(h, TETHER__WIRE__REJECT__CODE__AUTH, "authentication failed", TETHER_EAUTH);
  }
  /* Authenticated, but perhaps an attempt the client gave up long ago,
   * delayed on the way: it must not replace the connection of a newer one
   * (only the newest resume wins). */
  session_lock(s);
  bool stale = core_resume_stale(&s->core, &h->peer_state);
  session_unlock(s);
  if (stale)
    return reject(h, TETHER__WIRE__REJECT__CODE__STALE, "an older resume attempt than one seen",
                  -ESTALE);
  /* Only now may the live session be touched. */
  h->session = s;
  int rc = listener_resume_authenticated(h, &ours);
  if (rc == TETHER_EDIVERGED)
    return reject(h, TETHER__WIRE__REJECT__CODE__DIVERGED, "divergent replay", rc);
  if (rc == TETHER_EWINDOW)
    return reject(h, TETHER__WIRE__REJECT__CODE__WINDOW, "streams cannot be reconciled", rc);
  if (rc < 0)
    return reject(h, TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION, "session cannot resume", rc);
  if ((rc = core_resume_check(&ours, &h->peer_state)) < 0) {
    /* Both sides fail with the same error: the client learns it here. */
    session_fail(s, rc);
    LOG_WARN(h->ctx, "session %s: the two sides' streams cannot be reconciled: failed",
             session_tag(s->id, tag));
    if (rc == TETHER_EDIVERGED)
      return reject(h, TETHER__WIRE__REJECT__CODE__DIVERGED, "divergent replay", rc);
    return reject(h, TETHER__WIRE__REJECT__CODE__WINDOW, "streams cannot be reconciled", rc);
  }
  ours.rcvbuf_max = sock_rcvbuf_max(h->fd);
  if (hs_resume_mac(s->keys.resume_s, "accept", s->id, h->nonce_c, h->nonce_s, &ours, mac) < 0)
    return -EIO;
  Tether__Wire__ResumeState st;
  Tether__Wire__ResumeAccept ra = TETHER__WIRE__RESUME_ACCEPT__INIT;
  hs_msg m = TETHER__WIRE__HANDSHAKE__INIT;
  hs_state_to_pb(&ours, &st);
  ra.state = &st;
  ra.mac = (ProtobufCBinaryData){MAC_LEN, mac};
  m.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_ACCEPT;
  m.resume_accept = &ra;
  h->step = S_DONE;
  return queue(h, &m, false);
}

/* ---- the driver ---- */

/* Client, resume: whether the server's Reject proves it comes from the
 * server that holds the session (after its challenge verified) or one that
 * knows our pre-shared key. */
static bool reject_authentic(struct hs_conn *h, const Tether__Wire__Reject *rj) {
  uint8_t key[KEY_LEN], zeros[NONCE_LEN] = {0}, mac[MAC_LEN];
  const uint8_t *nonce_s = h->nonce_s;
  if (rj->mac.len != MAC_LEN)
    return false;
  if (h->step == S_AWAIT_ACCEPT)
    memcpy(key, h->session->keys.resume_s, KEY_LEN);
  else if (h->ctx->cfg.psk_len == 0 ||
           hs_psk_reject_key(h->ctx->cfg.psk, h->ctx->cfg.psk_len, key) < 0)
    return false;
  else
    nonce_s = zeros;
  bool ok = hs_reject_mac(key, (uint32_t)rj->code, h->session->id, h->nonce_c, nonce_s, mac) == 0 &&
            mac_equal(mac, rj->mac.data);
  wipe(key, sizeof(key));
  return ok;
}

/* A Reject.  During a resume one that would end the session counts only if
 * it is authentic -- or, before the server proved it holds the session,
 * when there is no pre-shared key that could make it so (then setup was
 * unauthenticated too: see tether(7), SECURITY).  Any other is a failed
 * attempt, retried like a refused connection. */
static int on_reject(struct hs_conn *h, const Tether__Wire__Reject *rj) {
  int err = reject_code_to_err(rj->code);
  h->why = "peer rejected the handshake";
  if (h->kind != HS_CLIENT_RESUME || reject_authentic(h, rj))
    return err;
  if (err == -ESTALE) { /* moves our epoch on: only the server may say so */
    h->why = "ignored a Reject{STALE} without a valid MAC (forged?)";
    return -EAGAIN;
  }
  if (redial_err_final(err) && (h->step == S_AWAIT_ACCEPT || h->ctx->cfg.psk_len > 0)) {
    h->why = "ignored a Reject without a valid MAC (forged?)";
    return TETHER_EAUTH;
  }
  return err;
}

static int on_frame(struct hs_conn *h, const hs_msg *m) {
  if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_REJECT)
    return on_reject(h, m->reject);
  switch (h->step) {
  case S_AWAIT_SERVER_HELLO:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO)
      return on_server_hello(h, m->server_hello);
    break;
  case S_AWAIT_CHALLENGE:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_CHALLENGE)
      return on_challenge(h, m->resume_challenge);
    break;
  case S_AWAIT_ACCEPT:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_ACCEPT)
      return on_accept(h, m->resume_accept);
    break;
  case S_AWAIT_FIRST:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO)
      return on_client_hello(h, m->client_hello);
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO)
      return on_resume_hello(h, m->resume_hello);
    break;
  case S_AWAIT_CLIENT_FINISH:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH)
      return on_client_finish(h, m->client_finish);
    break;
  case S_AWAIT_RESUME_FINISH:
    if (m->msg_case == TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH)
      return on_resume_finish(h, m->resume_finish);
    break;
  }
  return reject(h, TETHER__WIRE__REJECT__CODE__MALFORMED, "unexpected handshake message",
                TETHER_EPROTO);
}

static int connect_done(struct hs_conn *h) {
  struct pollfd p = {.fd = h->fd, .events = POLLOUT};
  int err = 0;
  socklen_t len = sizeof(err);
  if (poll(&p, 1, 0) <= 0)
    return HS_WANT_WRITE;
  if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err) {
    h->why = "connect failed";
    return -err;
  }
  h->connecting = false;
  return 0;
}

int hs_conn_advance(struct hs_conn *h) {
  int rc;
  if (h->connecting && (rc = connect_done(h)) != 0)
    return rc;
  for (;;) {
    if ((rc = flush(h)) != 0)
      return rc;
    if (h->step == S_DONE)
      return HS_DONE;
    if (h->step == S_START) {
      rc = h->kind == HS_CLIENT_NEW ? client_hello(h) : resume_hello(h);
      if (rc < 0)
        return rc;
      continue;
    }
    if (h->step == S_AWAIT_ROOM) {
      if (!listener_reserve(h))
        return HS_WANT_ROOM;
      if ((rc = answer_client_hello(h)) < 0)
        return rc;
      continue;
    }
    rc = hs_reader_step(&h->rd, h->fd, &h->why);
    if (rc == 0)
      return HS_WANT_READ;
    if (rc < 0) {
      if (rc == TETHER_EVERSION)
        return reject(h, TETHER__WIRE__REJECT__CODE__VERSION, "unsupported version", rc);
      return rc == -EPROTO || rc == -EMSGSIZE ? TETHER_EPROTO : rc;
    }
    hs_msg *m = hs_decode(h->rd.buf, h->rd.have, &h->why);
    hs_reader_init(&h->rd, false);
    if (!m)
      return reject(h, TETHER__WIRE__REJECT__CODE__MALFORMED, h->why, TETHER_EPROTO);
    rc = on_frame(h, m);
    hs_free(m);
    if (rc < 0)
      return rc;
    if (h->kind == HS_SERVER)
      hs_table_progress(h);
  }
}

/* ---- engine-driven handshakes ---- */

/* ctx->lock held: out of ctx->handshakes and the table. */
static void unlink_locked(struct hs_conn *h) {
  struct tether_ctx *ctx = h->ctx;
  if (h->prev)
    h->prev->next = h->next;
  else if (ctx->handshakes == h)
    ctx->handshakes = h->next;
  if (h->next)
    h->next->prev = h->prev;
  h->next = h->prev = NULL;
  hs_table_leave_locked(h);
}

static void finish(struct hs_conn *h, int rc) {
  struct tether_ctx *ctx = h->ctx;
  pthread_mutex_lock(&ctx->lock);
  unlink_locked(h);
  pthread_mutex_unlock(&ctx->lock);
  event_del(h->ev);
  event_del(h->timeout);
  if (h->kind == HS_SERVER)
    listener_handshake_done(h, rc);
  else if (h->kind == HS_CLIENT_NEW)
    client_connect_done(h, rc); /* the engine runs only these new ones */
  else
    client_redial_done(h->session, h, rc);
}

static void on_io(evutil_socket_t fd, short what, void *arg) {
  struct hs_conn *h = arg;
  int rc = hs_conn_advance(h);
  if (rc == HS_WANT_READ || rc == HS_WANT_WRITE) {
    event_del(h->ev);
    event_assign(h->ev, h->ctx->base, h->fd, rc == HS_WANT_READ ? EV_READ : EV_WRITE, on_io, h);
    engine_event_prio(h->ctx, h->ev, ENGINE_PRIO_BULK);
    event_add(h->ev, NULL);
    return;
  }
  if (rc == HS_WANT_ROOM) {
    event_del(h->ev); /* the peer waits for our ServerHello: nothing to read */
    hs_table_park(h);
    return;
  }
  finish(h, rc == HS_DONE ? 0 : rc);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
  struct hs_conn *h = arg;
  h->why = "handshake timed out";
  finish(h, -ETIMEDOUT);
}

void hs_conn_unpark(struct hs_conn *h) { on_io(h->fd, EV_READ, h); }

int hs_conn_start_async(struct hs_conn *h, uint64_t timeout_ms) {
  struct tether_ctx *ctx = h->ctx;
  struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000),
                       .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
  short what = h->connecting || h->step == S_START ? EV_WRITE : EV_READ;
  struct hs_conn *victim = NULL;
  char addr[64];
  h->ev = engine_event_new(ctx, ENGINE_PRIO_BULK, h->fd, what, on_io, h);
  h->timeout = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_timeout, h);
  if (!h->ev || !h->timeout) {
    LOG_ERR(ctx, "out of memory for a handshake");
    return -ENOMEM;
  }
  pthread_mutex_lock(&ctx->lock);
  if (h->kind == HS_SERVER) {
    int rc = hs_table_admit_locked(h, &victim);
    if (rc < 0) {
      pthread_mutex_unlock(&ctx->lock);
      tlog_limited(ctx, &ctx->hst.refuse_log, TETHER_LOG_WARN, "connection from %s refused: %s",
                   sock_addr_str((struct sockaddr *)&h->peer, addr, sizeof(addr)),
                   rc == -EAGAIN ? "every handshake slot is held by one making progress"
                                 : "out of memory");
      return rc;
    }
  }
  h->prev = NULL;
  h->next = ctx->handshakes;
  if (h->next)
    h->next->prev = h;
  ctx->handshakes = h;
  pthread_mutex_unlock(&ctx->lock);
  if (victim) { /* evicted once h holds the slot it frees */
    sock_addr_str((struct sockaddr *)&victim->peer, addr, sizeof(addr));
    tlog_limited(ctx, &ctx->hst.evict_log, TETHER_LOG_INFO,
                 "handshake table full: evicted a stalled handshake from %s", addr);
    hs_conn_evict(victim);
  }
  event_add(h->ev, NULL);
  event_add(h->timeout, &tv);
  /* Listeners defer accepting until the first bytes arrived
   * (TCP_DEFER_ACCEPT): read them now rather than after another turn of
   * the event loop.  h may be gone after this. */
  if (h->kind == HS_SERVER)
    on_io(h->fd, EV_READ, h);
  return 0;
}

/* Removes an engine-driven handshake without reporting it (engine thread). */
void hs_conn_abort(struct hs_conn *h) {
  struct tether_ctx *ctx = h->ctx;
  pthread_mutex_lock(&ctx->lock);
  unlink_locked(h);
  pthread_mutex_unlock(&ctx->lock);
  hs_conn_free(h);
}

void hs_conn_evict(struct hs_conn *h) {
  /* A peer that has spoken tether learns why: a client's setup fails with
   * -EAGAIN, a redial tries again later. */
  if (h->step != S_AWAIT_FIRST)
    (void)reject(h, TETHER__WIRE__REJECT__CODE__BUSY, "server busy", -EAGAIN);
  hs_conn_abort(h);
}
