#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine.h"

int sock_set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return -errno;
  return 0;
}

void sock_setup_session(int fd) {
  int one = 1;
  /* A killed process must reset its connections, so that the peer suspends
   * at once instead of mistaking the FIN for a close. */
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void sock_keepalive(int fd, const struct tether_config *cfg, bool long_idle) {
  /* Without a side channel, keepalive finds a dead peer of an idle
   * connection; sock_path_silent one of a busy connection.  With one, the
   * path's heartbeats watch the peer, and a probe every suspend_ms on each
   * of thousands of idle connections would cost the kernel more than all
   * of them otherwise do: a probe a minute still keeps NAT state alive.
   * Not TCP_USER_TIMEOUT: it also ends a connection whose peer acknowledges
   * everything but reads nothing for that long (a zero window), which is
   * back-pressure, not a failure. */
  int one = 1;
  int intvl = (int)(cfg->suspend_ms / 1000) ? (int)(cfg->suspend_ms / 1000) : 1;
  int idle = long_idle && intvl < SOCK_KEEPIDLE_LONG_S ? SOCK_KEEPIDLE_LONG_S : intvl;
  int cnt = 3;
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

bool sock_path_silent(int fd, uint32_t limit_ms) {
  struct tcp_info ti;
  socklen_t len = sizeof(ti);
  memset(&ti, 0, sizeof(ti));
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
    return false;
  /* Segments in flight, or two probes in a row unanswered (window or
   * keepalive probes: one may be lost, or just not answered yet). */
  if (ti.tcpi_unacked == 0 && ti.tcpi_probes < 2)
    return false;
  return ti.tcpi_last_ack_recv >= limit_ms;
}

/* The third field of /proc/sys/net/ipv4/tcp_[rw]mem: autotuning's ceiling. */
static uint64_t sysctl_max(const char *path, uint64_t fallback) {
  FILE *f = fopen(path, "re");
  unsigned long long a, b, c;
  uint64_t v = fallback;
  if (!f)
    return fallback;
  if (fscanf(f, "%llu %llu %llu", &a, &b, &c) == 3)
    v = c;
  fclose(f);
  return v;
}

/* Read once per process: every handshake needs them. */
static uint64_t rmem_max, wmem_max;
static pthread_once_t sysctl_once = PTHREAD_ONCE_INIT;
static void read_sysctls(void) {
  rmem_max = sysctl_max("/proc/sys/net/ipv4/tcp_rmem", 6u << 20);
  wmem_max = sysctl_max("/proc/sys/net/ipv4/tcp_wmem", 4u << 20);
}

static uint64_t buf_max(int fd, int opt, uint64_t auto_max) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) < 0)
    return auto_max;
  /* Either the application pinned it (the kernel reports double the set
   * value) or autotuning may grow it up to the sysctl: take the larger. */
  return (uint64_t)v > auto_max ? (uint64_t)v : auto_max;
}

uint64_t sock_rcvbuf_max(int fd) {
  pthread_once(&sysctl_once, read_sysctls);
  return buf_max(fd, SO_RCVBUF, rmem_max);
}

uint64_t sock_sndbuf_max(int fd) {
  pthread_once(&sysctl_once, read_sysctls);
  return buf_max(fd, SO_SNDBUF, wmem_max);
}

uint64_t sock_host_rcvbuf_max(void) {
  pthread_once(&sysctl_once, read_sysctls);
  return rmem_max;
}

uint64_t sock_host_sndbuf_max(void) {
  pthread_once(&sysctl_once, read_sysctls);
  return wmem_max;
}

uint64_t sock_outq(int fd) {
  int q = 0;
  if (ioctl(fd, SIOCOUTQ, &q) < 0 || q < 0)
    return UINT64_MAX; /* unknown: trim nothing */
  return (uint64_t)q;
}

int sock_resolve(const char *host, const char *port, bool passive, struct addrinfo **out) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (host && !*host)
    host = NULL;
  /* Numeric addresses first: no resolver, no interface scan. */
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  int rc = host ? getaddrinfo(host, port, &hints, out) : EAI_NONAME;
  if (rc != 0) {
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    rc = getaddrinfo(host, port, &hints, out);
  }
  if (rc == 0)
    return 0;
  if (rc == EAI_SYSTEM)
    return -errno;
  if (rc == EAI_MEMORY)
    return -ENOMEM;
  /* A name that does not resolve is final for this call, not transient. */
  return -ENOENT;
}

const char *sock_addr_str(const struct sockaddr *sa, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const void *)sa;
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    port = ntohs(a->sin_port);
    snprintf(buf, len, "%s:%u", ip, port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const void *)sa;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
    snprintf(buf, len, "[%s]:%u", ip, port);
  } else {
    snprintf(buf, len, "(family %d)", sa->sa_family);
  }
  return buf;
}

bool sock_addr_key(const struct sockaddr *sa, socklen_t len, uint8_t ip[16], uint16_t *port) {
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *a = (const void *)sa;
    memset(ip, 0, 10);
    ip[10] = ip[11] = 0xff;
    memcpy(ip + 12, &a->sin_addr, 4);
    *port = a->sin_port;
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *a = (const void *)sa;
    memcpy(ip, &a->sin6_addr, 16);
    *port = a->sin6_port;
    return true;
  }
  return false;
}

bool sock_addr_same(const struct sockaddr *a, socklen_t alen, const struct sockaddr *b,
                    socklen_t blen, bool with_port) {
  uint8_t ia[16], ib[16];
  uint16_t pa, pb;
  if (!sock_addr_key(a, alen, ia, &pa) || !sock_addr_key(b, blen, ib, &pb))
    return false;
  return memcmp(ia, ib, 16) == 0 && (!with_port || pa == pb);
}
