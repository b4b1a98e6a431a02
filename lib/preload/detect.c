/* Detecting tether on the other side without a stray byte on the TCP
 * stream (tether(7), PRELOAD).  A client binds its socket (so it knows its
 * source port), sends a probe datagram naming that port to the server's
 * port number on UDP, and connects; a preloaded server answers and records
 * (client address, port), and treats exactly the connections it recorded
 * as tether.  This file holds the datagram format, the server's records
 * and TETHER_EXCLUDE. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"

/* "TTP1" | type | 0 | TCP port (big-endian) | nonce (8) */
void probe_encode(const struct probe *p, uint8_t out[PROBE_LEN]) {
  memcpy(out, PROBE_MAGIC, 4);
  out[4] = p->type;
  out[5] = 0;
  out[6] = (uint8_t)(p->port >> 8);
  out[7] = (uint8_t)p->port;
  memcpy(out + 8, p->nonce, 8);
}

int probe_decode(const uint8_t *dg, size_t len, struct probe *p) {
  if (len != PROBE_LEN || memcmp(dg, PROBE_MAGIC, 4) != 0 || dg[5] != 0)
    return -1;
  if (dg[4] < PROBE_ASK || dg[4] > PROBE_CANCEL)
    return -1;
  p->type = dg[4];
  p->port = (uint16_t)(dg[6] << 8 | dg[7]);
  memcpy(p->nonce, dg + 8, 8);
  return 0;
}

bool ipport_from(const struct sockaddr *sa, struct ipport *out) {
  memset(out, 0, sizeof(*out));
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const void *)sa;
    out->ip[10] = out->ip[11] = 0xff;
    memcpy(out->ip + 12, &a->sin_addr, 4);
    out->port = ntohs(a->sin_port);
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const void *)sa;
    memcpy(out->ip, &a->sin6_addr, 16);
    out->port = ntohs(a->sin6_port);
    return true;
  }
  return false;
}

bool ipport_eq(const struct ipport *a, const struct ipport *b) {
  return a->port == b->port && memcmp(a->ip, b->ip, 16) == 0;
}

/* ---- the server's records ---- */

#define RECORDS 1024
#define RECORD_TTL_MS 10000

static struct record {
  struct ipport who;
  int lport; /* the listener's port the client asked or announced at */
  uint64_t expires;
} records[RECORDS];
pthread_mutex_t records_lock = PTHREAD_MUTEX_INITIALIZER;

void probes_record(const struct ipport *who, int lport, uint64_t now_ms) {
  pthread_mutex_lock(&records_lock);
  int slot = -1;
  uint64_t oldest = UINT64_MAX;
  for (int i = 0; i < RECORDS; i++) {
    if (records[i].expires > now_ms && ipport_eq(&records[i].who, who)) {
      slot = i;
      break;
    }
    if (records[i].expires < oldest) {
      oldest = records[i].expires;
      slot = i;
    }
  }
  records[slot].who = *who;
  records[slot].lport = lport;
  records[slot].expires = now_ms + RECORD_TTL_MS;
  pthread_mutex_unlock(&records_lock);
}

bool probes_expected(int lport, uint64_t now_ms) {
  bool yes = false;
  pthread_mutex_lock(&records_lock);
  for (int i = 0; i < RECORDS && !yes; i++)
    yes = records[i].expires > now_ms && records[i].lport == lport;
  pthread_mutex_unlock(&records_lock);
  return yes;
}

bool probes_take(const struct ipport *who, uint64_t now_ms, bool any_port) {
  int found = -1;
  pthread_mutex_lock(&records_lock);
  for (int i = 0; i < RECORDS && found < 0; i++)
    if (records[i].expires > now_ms && ipport_eq(&records[i].who, who))
      found = i;
  if (found >= 0) {
    records[found].expires = 0;
  } else if (any_port) {
    /* A NAT may give the connection another source port than the probe's:
     * a record of the same address makes it wait for its first bytes too.
     * Not taken: it may still be its own connection's. */
    for (int i = 0; i < RECORDS && found < 0; i++)
      if (records[i].expires > now_ms && memcmp(records[i].who.ip, who->ip, 16) == 0)
        found = i;
  }
  pthread_mutex_unlock(&records_lock);
  return found >= 0;
}

/* Connections handed to the program as plain, for as long as records
 * live: a probe for one of them that arrives after its connection (it
 * raced the SYN and lost) must not be answered -- the client would then
 * speak tether to the program.  Only while that connection lives: its
 * descriptor is remembered, and once it names no socket from that peer
 * (the program closed it) a probe from the same port is a new
 * connection's (clients reuse source ports within seconds when they
 * connect in a loop; each such probe went unanswered before, and its
 * client waited for nothing and then fell back to plain TCP). */
#define HANDED 256
static struct {
  struct ipport who;
  int fd;
  uint64_t expires;
} handed[HANDED];
static unsigned handed_next;

void probes_handed_plain(const struct ipport *who, int fd, uint64_t now_ms) {
  pthread_mutex_lock(&records_lock);
  unsigned i = handed_next++ % HANDED; /* the oldest goes */
  handed[i].who = *who;
  handed[i].fd = fd;
  handed[i].expires = now_ms + RECORD_TTL_MS;
  pthread_mutex_unlock(&records_lock);
}

/* Whether fd is (still) a socket connected from who. */
static bool still_from(int fd, const struct ipport *who) {
  struct sockaddr_storage peer;
  socklen_t len = sizeof(peer);
  struct ipport p;
  return real.getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
         ipport_from((struct sockaddr *)&peer, &p) && ipport_eq(&p, who);
}

bool probes_was_handed_plain(const struct ipport *who, uint64_t now_ms) {
  bool yes = false;
  pthread_mutex_lock(&records_lock);
  for (int i = 0; i < HANDED && !yes; i++)
    if (handed[i].expires > now_ms && ipport_eq(&handed[i].who, who)) {
      yes = still_from(handed[i].fd, who);
      if (!yes)
        handed[i].expires = 0; /* gone: forget it */
    }
  pthread_mutex_unlock(&records_lock);
  return yes;
}

/* ---- TETHER_EXCLUDE ---- */

/* Items separated by commas or spaces: PORT, :PORT, ADDR, ADDR:PORT,
 * [ADDR6]:PORT, ADDR/BITS, ADDR/BITS:PORT, [ADDR6/BITS]:PORT. */
#define EXCLUDE_MAX 64
static struct rule {
  bool any_addr;
  uint8_t ip[16];
  int bits; /* prefix length over the 16-byte form */
  int port; /* 0 = any */
} rules[EXCLUDE_MAX];
static int nrules;

static int parse_addr(const char *s, struct rule *r) {
  char buf[80];
  int bits = -1;
  snprintf(buf, sizeof(buf), "%s", s);
  char *slash = strchr(buf, '/');
  if (slash) {
    char *end;
    *slash = '\0';
    long b = strtol(slash + 1, &end, 10);
    if (*end || b < 0 || b > 128)
      return -1;
    bits = (int)b;
  }
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, buf, &a4) == 1) {
    memset(r->ip, 0, 16);
    r->ip[10] = r->ip[11] = 0xff;
    memcpy(r->ip + 12, &a4, 4);
    if (bits > 32)
      return -1;
    r->bits = bits < 0 ? 128 : 96 + bits;
  } else if (inet_pton(AF_INET6, buf, &a6) == 1) {
    memcpy(r->ip, &a6, 16);
    r->bits = bits < 0 ? 128 : bits;
  } else {
    return -1;
  }
  return 0;
}

static int parse_port(const char *s) {
  char *end;
  long p = strtol(s, &end, 10);
  if (!*s || *end || p < 1 || p > 65535)
    return -1;
  return (int)p;
}

static int parse_item(char *it, struct rule *r) {
  memset(r, 0, sizeof(*r));
  char *colon;
  if (it[0] == '[') { /* [v6]:port */
    char *close = strchr(it, ']');
    if (!close)
      return -1;
    *close = '\0';
    if (parse_addr(it + 1, r) < 0)
      return -1;
    if (close[1] == ':')
      return (r->port = parse_port(close + 2)) < 0 ? -1 : 0;
    return close[1] ? -1 : 0;
  }
  colon = strchr(it, ':');
  if (colon && strchr(colon + 1, ':')) /* bare IPv6 address */
    return parse_addr(it, r);
  if (colon) {
    *colon = '\0';
    if ((r->port = parse_port(colon + 1)) < 0)
      return -1;
    if (!*it) {
      r->any_addr = true;
      return 0;
    }
    return parse_addr(it, r);
  }
  if (strspn(it, "0123456789") == strlen(it)) {
    r->any_addr = true;
    return (r->port = parse_port(it)) < 0 ? -1 : 0;
  }
  return parse_addr(it, r);
}

int exclude_parse(const char *spec) {
  char buf[4096];
  nrules = 0;
  if (!spec)
    return 0;
  snprintf(buf, sizeof(buf), "%s", spec);
  for (char *save = NULL, *it = strtok_r(buf, ", \t", &save); it; it = strtok_r(NULL, ", \t", &save)) {
    if (nrules == EXCLUDE_MAX || parse_item(it, &rules[nrules]) < 0) {
      nrules = 0; /* all or nothing */
      return -EINVAL;
    }
    nrules++;
  }
  return 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, int bits) {
  int bytes = bits / 8, rest = bits % 8;
  if (memcmp(a, b, (size_t)bytes) != 0)
    return false;
  if (rest == 0)
    return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[bytes] & mask) == (b[bytes] & mask);
}

bool excluded(const struct sockaddr *sa) {
  struct ipport ip;
  if (!ipport_from(sa, &ip))
    return true;
  for (int i = 0; i < nrules; i++) {
    const struct rule *r = &rules[i];
    if (r->port && r->port != ip.port)
      continue;
    if (r->any_addr || prefix_match(r->ip, ip.ip, r->bits))
      return true;
  }
  return false;
}
