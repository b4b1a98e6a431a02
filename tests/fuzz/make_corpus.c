/* Writes the seed corpora for the fuzz targets:
 *
 *   make_corpus DIR   ->  DIR/handshake/<seed>, DIR/control/<seed>
 *
 * Every seed is built with the library's own encoders (hs_encode, ctl_seal)
 * from fixed field values, so the corpus is deterministic and follows the
 * wire format as it changes; nothing binary is kept in the repository. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "wire/control.h"
#include "wire/handshake.h"
#include "wire/snapshot.h"

static const char *outdir;
static int failures;

static void put_file(const char *sub, const char *name, const void *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s/%s", outdir, sub, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "make_corpus: cannot write %s: %s\n", path, strerror(errno));
    failures++;
  }
}

static void make_dir(const char *sub) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", outdir, sub);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "make_corpus: cannot create %s: %s\n", path, strerror(errno));
    exit(1);
  }
}

/* ---- handshake ---------------------------------------------------------- */

static uint8_t k32a[32], k32b[32], n16a[16], n16b[16], id16[16], mac32[32];

static ProtobufCBinaryData bin(uint8_t *p, size_t n) {
  ProtobufCBinaryData b = {n, p};
  return b;
}

/* Writes, for one message: the bare body (hs_decode), preface + frame
 * (the server's reader) and length + body (the client's reader). */
static void put_msg(const char *name, const hs_msg *m) {
  uint8_t buf[HS_PREFACE_LEN + 4 + HS_FRAME_MAX];
  char fname[128];
  ssize_t n = hs_encode(m, true, buf, sizeof(buf));
  if (n < 0) {
    fprintf(stderr, "make_corpus: hs_encode(%s) failed: %zd\n", name, n);
    failures++;
    return;
  }
  snprintf(fname, sizeof(fname), "body-%s", name);
  put_file("handshake", fname, buf + HS_PREFACE_LEN + 4, (size_t)n - HS_PREFACE_LEN - 4);
  snprintf(fname, sizeof(fname), "preface-%s", name);
  put_file("handshake", fname, buf, (size_t)n);
  snprintf(fname, sizeof(fname), "frame-%s", name);
  put_file("handshake", fname, buf + HS_PREFACE_LEN, (size_t)n - HS_PREFACE_LEN);
}

static size_t append_msg(uint8_t *out, size_t at, size_t cap, const hs_msg *m, bool preface) {
  ssize_t n = hs_encode(m, preface, out + at, cap - at);
  if (n < 0) {
    failures++;
    return at;
  }
  return at + (size_t)n;
}

static void handshake_seeds(void) {
  for (int i = 0; i < 32; i++) {
    k32a[i] = (uint8_t)(0x10 + i);
    k32b[i] = (uint8_t)(0x90 + i);
    mac32[i] = (uint8_t)(0xc0 ^ i);
  }
  for (int i = 0; i < 16; i++) {
    n16a[i] = (uint8_t)(0x40 + i);
    n16b[i] = (uint8_t)(0x60 + i);
    id16[i] = (uint8_t)(0xa0 + i);
  }
  make_dir("handshake");

  Tether__Wire__ClientHello ch = TETHER__WIRE__CLIENT_HELLO__INIT;
  ch.x25519_pub = bin(k32a, 32);
  ch.nonce = bin(n16a, 16);
  ch.rcvbuf_max = 6291456;
  ch.udp_port = 40001;
  hs_msg m_ch = TETHER__WIRE__HANDSHAKE__INIT;
  m_ch.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_HELLO;
  m_ch.client_hello = &ch;
  put_msg("client_hello", &m_ch);

  Tether__Wire__ServerHello sh = TETHER__WIRE__SERVER_HELLO__INIT;
  sh.x25519_pub = bin(k32b, 32);
  sh.nonce = bin(n16b, 16);
  sh.session_id = bin(id16, 16);
  sh.rcvbuf_max = 131072;
  sh.udp_port = 7000;
  sh.confirm = bin(mac32, 32);
  hs_msg m_sh = TETHER__WIRE__HANDSHAKE__INIT;
  m_sh.msg_case = TETHER__WIRE__HANDSHAKE__MSG_SERVER_HELLO;
  m_sh.server_hello = &sh;
  put_msg("server_hello", &m_sh);

  Tether__Wire__ClientFinish cf = TETHER__WIRE__CLIENT_FINISH__INIT;
  cf.confirm = bin(mac32, 32);
  hs_msg m_cf = TETHER__WIRE__HANDSHAKE__INIT;
  m_cf.msg_case = TETHER__WIRE__HANDSHAKE__MSG_CLIENT_FINISH;
  m_cf.client_finish = &cf;
  put_msg("client_finish", &m_cf);

  Tether__Wire__ResumeHello rh = TETHER__WIRE__RESUME_HELLO__INIT;
  rh.session_id = bin(id16, 16);
  rh.nonce = bin(n16a, 16);
  hs_msg m_rh = TETHER__WIRE__HANDSHAKE__INIT;
  m_rh.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_HELLO;
  m_rh.resume_hello = &rh;
  put_msg("resume_hello", &m_rh);

  Tether__Wire__ResumeChallenge rc = TETHER__WIRE__RESUME_CHALLENGE__INIT;
  rc.nonce = bin(n16b, 16);
  rc.mac = bin(mac32, 32);
  hs_msg m_rc = TETHER__WIRE__HANDSHAKE__INIT;
  m_rc.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_CHALLENGE;
  m_rc.resume_challenge = &rc;
  put_msg("resume_challenge", &m_rc);

  Tether__Wire__ResumeState st = TETHER__WIRE__RESUME_STATE__INIT;
  st.delivered = 52428800;
  st.sent = 1048576;
  st.retained_from = 1000;
  st.write_closed = 1;
  st.read_closed = 0;
  st.rcvbuf_max = 6291456;
  Tether__Wire__ResumeFinish rf = TETHER__WIRE__RESUME_FINISH__INIT;
  rf.state = &st;
  rf.mac = bin(mac32, 32);
  hs_msg m_rf = TETHER__WIRE__HANDSHAKE__INIT;
  m_rf.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_FINISH;
  m_rf.resume_finish = &rf;
  put_msg("resume_finish", &m_rf);

  Tether__Wire__ResumeState st2 = TETHER__WIRE__RESUME_STATE__INIT;
  st2.delivered = UINT64_MAX;
  st2.sent = UINT64_MAX - 1;
  st2.retained_from = 1;
  st2.read_closed = 1;
  st2.rcvbuf_max = 1;
  Tether__Wire__ResumeAccept ra = TETHER__WIRE__RESUME_ACCEPT__INIT;
  ra.state = &st2;
  ra.mac = bin(mac32, 32);
  hs_msg m_ra = TETHER__WIRE__HANDSHAKE__INIT;
  m_ra.msg_case = TETHER__WIRE__HANDSHAKE__MSG_RESUME_ACCEPT;
  m_ra.resume_accept = &ra;
  put_msg("resume_accept", &m_ra);

  Tether__Wire__Reject rj = TETHER__WIRE__REJECT__INIT;
  rj.code = TETHER__WIRE__REJECT__CODE__UNKNOWN_SESSION;
  rj.reason = "no such session";
  hs_msg m_rj = TETHER__WIRE__HANDSHAKE__INIT;
  m_rj.msg_case = TETHER__WIRE__HANDSHAKE__MSG_REJECT;
  m_rj.reject = &rj;
  put_msg("reject", &m_rj);

  /* Whole conversations as one side reads them, with application bytes
   * after the last frame (the reader must leave those alone). */
  uint8_t conv[4 * (HS_PREFACE_LEN + 4 + 256)];
  size_t n = append_msg(conv, 0, sizeof(conv), &m_ch, true);
  n = append_msg(conv, n, sizeof(conv), &m_cf, false);
  memcpy(conv + n, "app bytes", 9);
  put_file("handshake", "conv-server-new", conv, n + 9);
  n = append_msg(conv, 0, sizeof(conv), &m_rh, true);
  n = append_msg(conv, n, sizeof(conv), &m_rf, false);
  memcpy(conv + n, "app bytes", 9);
  put_file("handshake", "conv-server-resume", conv, n + 9);
  n = append_msg(conv, 0, sizeof(conv), &m_sh, false);
  n = append_msg(conv, n, sizeof(conv), &m_rj, false);
  put_file("handshake", "conv-client", conv, n);

  /* Bad prefaces and lengths. */
  static const uint8_t v9[] = {'T', 'T', 'H', 'R', 9, 0, 0, 0, 2, 0x3a, 0};
  static const uint8_t huge[] = {'T', 'T', 'H', 'R', 1, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t over[] = {'T', 'T', 'H', 'R', 1, 0, 0, 0x10, 0x01, 0x3a};
  static const uint8_t zero[] = {'T', 'T', 'H', 'R', 1, 0, 0, 0, 0};
  static const uint8_t http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  put_file("handshake", "bad-version9", v9, sizeof(v9));
  put_file("handshake", "bad-huge-length", huge, sizeof(huge));
  put_file("handshake", "bad-length-4097", over, sizeof(over));
  put_file("handshake", "bad-zero-length", zero, sizeof(zero));
  put_file("handshake", "bad-http", http, sizeof(http) - 1);
  /* Regressions: inputs that once broke a property.  3a 00 80 00 04: an
   * empty Reject, then field number 0 in a non-minimal tag, which
   * libprotobuf-c keeps as an unknown field but cannot re-encode. */
  static const uint8_t tag0[] = {0x3a, 0x00, 0x80, 0x00, 0x04};
  put_file("handshake", "regress-tag0-unknown", tag0, sizeof(tag0));
  /* A maximum-size frame: a Reject whose reason fills HS_FRAME_MAX. */
  static char reason[HS_FRAME_MAX];
  memset(reason, 'r', sizeof(reason) - 1);
  /* Handshake tag + 2-byte length, Reject.code tag + value, reason tag +
   * 2-byte length: 8 bytes around the reason. */
  reason[HS_FRAME_MAX - 8] = '\0';
  rj.reason = reason;
  put_msg("reject-max", &m_rj);
}

/* ---- control ------------------------------------------------------------ */

static void put_ctl_path(const char *name, const struct core_ctl *c, const struct ctl_path *path) {
  uint8_t dg[CTL_MAX], dump[FUZZ_DUMP_LEN];
  char fname[128];
  ssize_t n = ctl_seal_path(id16, c, path, fuzz_ctl_key, dg, sizeof(dg));
  if (n < 0) {
    fprintf(stderr, "make_corpus: ctl_seal(%s) failed: %zd\n", name, n);
    failures++;
    return;
  }
  snprintf(fname, sizeof(fname), "dgram-%s", name);
  put_file("control", fname, dg, (size_t)n);
  snprintf(fname, sizeof(fname), "body-%s", name);
  put_file("control", fname, dg + CTL_HDR_LEN, (size_t)n - CTL_HDR_LEN - MAC_LEN);
  fuzz_dump_write(id16, c, dump);
  snprintf(fname, sizeof(fname), "dump-%s", name);
  put_file("control", fname, dump, sizeof(dump));
}

static void put_ctl(const char *name, const struct core_ctl *c) { put_ctl_path(name, c, NULL); }

static void control_seeds(void) {
  make_dir("control");
  struct core_ctl c = {0};
  c.seq = 1;
  put_ctl("first", &c);
  c.seq = 77;
  c.delivered = 52428800;
  c.sent = 1 << 20;
  c.rcvbuf_max = 6291456;
  put_ctl("heartbeat", &c);
  c.seq = 78;
  c.write_closed = true;
  c.want_reply = true;
  put_ctl("close-notice", &c);
  c.seq = 79;
  c.read_closed = true;
  c.ack_write_closed = true;
  c.ack_read_closed = true;
  put_ctl("all-flags", &c);
  struct core_ctl big = {UINT64_MAX, UINT64_MAX, UINT64_MAX, true, true, true, true, true,
                         UINT64_MAX};
  put_ctl("max", &big);
  struct core_ctl zero = {0};
  put_ctl("seq0", &zero); /* sealed fine, rejected by ctl_open */
  /* Path heartbeats: the smallest and the largest. */
  static struct ctl_path beat;
  c.seq = 80;
  c.solo = true;
  beat.buckets = 1;
  beat.digest[0] = 0xdeadbeef;
  put_ctl_path("path-1", &c, &beat);
  beat.buckets = CTL_PATH_BUCKETS_MAX;
  for (uint32_t i = 0; i < beat.buckets; i++)
    beat.digest[i] = i * 0x01010101u;
  put_ctl_path("path-max", &c, &beat);
}

/* Snapshot payloads (fuzz_snapshot frames them): a client and a server
 * session with a listener, and an empty snapshot. */
static void put_snapshot(const char *name, const snap_msg *m) {
  size_t n = tether__snap__snapshot__get_packed_size(m);
  uint8_t *b = malloc(n ? n : 1);
  if (!b) {
    failures++;
    return;
  }
  tether__snap__snapshot__pack(m, b);
  put_file("snapshot", name, b, n);
  free(b);
}

static void snapshot_seeds(void) {
  make_dir("snapshot");
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(7000)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(7001)};
  Tether__Snap__Address a4 = TETHER__SNAP__ADDRESS__INIT, a6 = TETHER__SNAP__ADDRESS__INIT;
  a4.sockaddr = bin((uint8_t *)&sin, sizeof(sin));
  a6.sockaddr = bin((uint8_t *)&sin6, sizeof(sin6));
  Tether__Snap__Listener l = TETHER__SNAP__LISTENER__INIT;
  l.addr = &a6;
  Tether__Snap__Listener *ls[] = {&l};
  static uint8_t retained[100];
  Tether__Snap__Session c = TETHER__SNAP__SESSION__INIT, sv;
  c.id = bin(id16, 16);
  c.is_client = true;
  c.epoch = 2;
  c.k_ctl_c2s = c.k_ctl_s2c = c.k_resume_c = c.k_resume_s = bin(k32a, 32);
  c.dial = &a4;
  c.udp_peer = &a4;
  c.listener = -1;
  c.sent = 1100;
  c.retained_from = 1000;
  c.retained = bin(retained, sizeof(retained));
  c.peer_acked = 1000;
  c.delivered = 5000;
  c.tx_seq = ((uint64_t)2 << 40) + 17;
  c.rx_seq = 99;
  c.heartbeat_ms = 1000;
  c.suspend_ms = 3000;
  c.reconnect_max_ms = 1000;
  c.give_up_s = 86400;
  sv = c;
  sv.is_client = false;
  sv.dial = NULL;
  sv.udp_peer = &a6;
  sv.listener = 0;
  sv.queued = true;
  sv.wr_closed = true;
  sv.peer_wr_closed = true;
  sv.peer_wr_end = 6000;
  Tether__Snap__Session *ss[] = {&c, &sv};
  snap_msg m = TETHER__SNAP__SNAPSHOT__INIT;
  m.created_unix_ms = 1795000000000;
  put_snapshot("empty", &m);
  m.n_listeners = 1;
  m.listeners = ls;
  m.n_sessions = 2;
  m.sessions = ss;
  put_snapshot("two-sessions", &m);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  outdir = argv[1];
  if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "make_corpus: cannot create %s: %s\n", outdir, strerror(errno));
    return 1;
  }
  handshake_seeds();
  control_seeds();
  snapshot_seeds();
  return failures ? 1 : 0;
}
