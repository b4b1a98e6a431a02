/* What each destination is: the client's memory of detection (connect.c).
 *
 * A connect to a destination (address and port) whose last probe found a
 * plain server does not wait for an answer again: it looks only at what has
 * arrived by the time the TCP connect completes (a server that became
 * tether's answers before its SYN-ACK is back, the probe having left first).
 * A probe that got no answer in time is still listened to for a moment by
 * the engine: a late yes (a tether server slow to answer) makes the next
 * connect wait for it.  Bounded: a small set-associative table, the least
 * recently used entry replaced.
 *
 * And where no probe goes: the UDP port numbers of well-known UDP services
 * (DNS, QUIC, syslog...), where a stray datagram would land in another
 * program, unless TETHER_PROBE_PORTS names them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"
#include "preload.h"

#define SETS 256
#define WAYS 4
/* How long a probe that got no answer in time is still listened to. */
#define LATE_MS 1000
/* At most this many at once (the others are closed at once). */
#define LATE_MAX 64

static struct dest {
  struct ipport who;
  uint8_t kind;  /* enum dest_kind; DEST_UNKNOWN: a free way */
  uint32_t used; /* recency, for replacement */
} table[SETS][WAYS];
static uint32_t clock_;
pthread_mutex_t dest_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned set_of(const struct ipport *w) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (int i = 0; i < 16; i++)
    h = (h ^ w->ip[i]) * 16777619u;
  h = (h ^ (w->port & 0xff)) * 16777619u;
  h = (h ^ (w->port >> 8)) * 16777619u;
  return h % SETS;
}

enum dest_kind dest_get(const struct sockaddr *dst) {
  struct ipport w;
  if (!ipport_from(dst, &w))
    return DEST_UNKNOWN;
  enum dest_kind k = DEST_UNKNOWN;
  pthread_mutex_lock(&dest_lock);
  struct dest *set = table[set_of(&w)];
  for (int i = 0; i < WAYS; i++)
    if (set[i].kind != DEST_UNKNOWN && ipport_eq(&set[i].who, &w)) {
      k = set[i].kind;
      set[i].used = ++clock_;
      break;
    }
  pthread_mutex_unlock(&dest_lock);
  return k;
}

void dest_set(const struct sockaddr *dst, enum dest_kind kind) {
  struct ipport w;
  if (!ipport_from(dst, &w))
    return;
  pthread_mutex_lock(&dest_lock);
  struct dest *set = table[set_of(&w)], *slot = &set[0];
  for (int i = 0; i < WAYS; i++) {
    if (set[i].kind != DEST_UNKNOWN && ipport_eq(&set[i].who, &w)) {
      slot = &set[i];
      break;
    }
    if (set[i].kind == DEST_UNKNOWN || set[i].used < slot->used)
      slot = &set[i];
  }
  slot->who = w;
  slot->kind = (uint8_t)kind;
  slot->used = ++clock_;
  pthread_mutex_unlock(&dest_lock);
}

/* ---- late answers (engine thread) ---- */

struct late {
  struct event *ev;
  int u; /* the probe's socket, connected to the server's UDP port */
  struct sockaddr_storage dst;
  uint8_t nonce[8];
};

static struct late *lates[LATE_MAX]; /* watched now (dest_lock) */

static void late_end(struct late *l) {
  pthread_mutex_lock(&dest_lock);
  for (int i = 0; i < LATE_MAX; i++)
    if (lates[i] == l)
      lates[i] = NULL;
  pthread_mutex_unlock(&dest_lock);
  event_free(l->ev);
  real.close(l->u);
  free(l);
}

static void on_late(evutil_socket_t fd, short what, void *arg) {
  struct late *l = arg;
  if (what & EV_READ) {
    uint8_t dg[64];
    struct probe p;
    ssize_t n = real.recv(fd, dg, sizeof(dg), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return; /* (a persistent event: still watched) */
    if (n > 0 && probe_decode(dg, (size_t)n, &p) == 0 && p.type == PROBE_YES &&
        memcmp(p.nonce, l->nonce, 8) == 0)
      dest_set((struct sockaddr *)&l->dst, DEST_TETHER);
  }
  late_end(l);
}

void dest_watch_late(struct tether_ctx *ctx, int u, const struct sockaddr *dst, socklen_t dstlen,
                     const uint8_t nonce[8]) {
  struct late *l = dstlen <= sizeof(l->dst) ? calloc(1, sizeof(*l)) : NULL;
  int slot = -1;
  if (l) {
    l->u = u;
    memcpy(&l->dst, dst, dstlen);
    memcpy(l->nonce, nonce, 8);
    l->ev = event_new(ctx->base, u, EV_READ | EV_PERSIST, on_late, l);
  }
  pthread_mutex_lock(&dest_lock);
  for (int i = 0; i < LATE_MAX && slot < 0 && l && l->ev; i++)
    if (!lates[i])
      lates[slot = i] = l;
  pthread_mutex_unlock(&dest_lock);
  struct timeval tv = {LATE_MS / 1000, (LATE_MS % 1000) * 1000};
  if (slot >= 0 && event_add(l->ev, &tv) == 0)
    return;
  if (slot >= 0) {
    pthread_mutex_lock(&dest_lock);
    lates[slot] = NULL;
    pthread_mutex_unlock(&dest_lock);
  }
  if (l && l->ev)
    event_free(l->ev);
  free(l);
  real.close(u); /* too many watched: not this one */
}

void dest_after_fork_child(void) {
  /* The parent's engine watches them; their sockets are closed here. */
  for (int i = 0; i < LATE_MAX; i++)
    if (lates[i]) {
      real.close(lates[i]->u);
      lates[i] = NULL; /* (its memory is the parent's engine's: left) */
    }
}

/* ---- ports not probed ---- */

/* Well-known UDP services on the same port number as a TCP service. */
static const uint16_t udp_services[] = {
    53,   /* DNS */
    67,   68,   /* DHCP */
    69,   /* TFTP */
    123,  /* NTP */
    137,  138,  /* NetBIOS */
    161,  162,  /* SNMP */
    443,  /* QUIC (HTTP/3) */
    500,  4500, /* IKE, IPsec NAT traversal */
    514,  /* syslog */
    853,  /* DNS over QUIC */
    1194, /* OpenVPN */
    1812, 1813, /* RADIUS */
    1900, /* SSDP */
    3389, /* RDP */
    3478, /* STUN, TURN */
    5060, /* SIP */
    5353, /* mDNS */
    5355, /* LLMNR */
    11211, /* memcached */
    51820, /* WireGuard */
};

static uint16_t *allowed; /* TETHER_PROBE_PORTS */
static int nallowed;

int dest_parse_probe_ports(const char *s) {
  if (!s || !*s)
    return 0;
  int n = 1;
  for (const char *p = s; *p; p++)
    n += *p == ',';
  uint16_t *a = calloc((size_t)n, sizeof(*a));
  if (!a)
    return -ENOMEM;
  int k = 0;
  for (const char *p = s; *p;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 1 || v > 65535 || (*end && *end != ',')) {
      free(a);
      return -EINVAL;
    }
    a[k++] = (uint16_t)v;
    p = *end ? end + 1 : end;
  }
  allowed = a;
  nallowed = k;
  return 0;
}

bool dest_probe_port(int port) {
  for (int i = 0; i < nallowed; i++)
    if (allowed[i] == port)
      return true;
  for (size_t i = 0; i < sizeof(udp_services) / sizeof(udp_services[0]); i++)
    if (udp_services[i] == port)
      return false;
  return true;
}
