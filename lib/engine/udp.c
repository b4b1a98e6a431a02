/* The UDP side channel: heartbeats, cumulative acks and close notices,
 * authenticated per direction and replay-protected.  Anything that does not
 * authenticate is dropped without a reply, so probing it reveals nothing and
 * disturbs no session.
 *
 * Its sockets also collect ICMP errors for the datagrams they sent
 * (IP_RECVERR): a peer's host that says nothing listens on the peer's side
 * channel any more tells us that a peer which cannot restore from a
 * snapshot is gone (session_on_unreachable). */
#include <errno.h>
#include <time.h> /* before linux/errqueue.h, which needs struct timespec */
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"
#include "wire/control.h"

/* Asked of the kernel (which caps it at net.core.rmem_max): thousands of
 * sessions' first heartbeats, or their own while their path's digests
 * differ (a storm of setups), arrive faster than a loop busy with setups
 * reads them between its turns. */
#define UDP_RCVBUF (4 << 20)
#define UDP_BATCH 2048

static void on_datagram(struct udp_chan *u, const uint8_t *dg, size_t len,
                        const struct sockaddr *from, socklen_t fromlen) {
  struct tether_ctx *ctx = u->ctx;
  const uint8_t *id;
  struct core_ctl ctl;
  struct ctl_path path;
  char tag[17];
  if (ctl_peek(dg, len, &id) < 0) {
    if (u->on_other && u->on_other(u, dg, len, from, fromlen))
      return;
    LOG_DEBUG(ctx, "dropped a datagram that is not tether's (%zu bytes)", len);
    return;
  }
  /* Sessions are freed only on this (the engine) thread, so s stays valid. */
  pthread_mutex_lock(&ctx->lock);
  struct tether_session *s = registry_find(ctx, id);
  pthread_mutex_unlock(&ctx->lock);
  if (!s) {
    LOG_DEBUG(ctx, "dropped a datagram for unknown session %s", session_tag(id, tag));
    return;
  }
  int rc = ctl_open_path(dg, len, s->is_client ? s->keys.ctl_s2c : s->keys.ctl_c2s, &ctl, &path);
  if (rc < 0) {
    LOG_DEBUG(ctx, "session %s: dropped a datagram that failed %s", session_tag(s->id, tag),
              rc == -EBADMSG ? "authentication" : "decoding");
    return;
  }
  if (s->udp != u)
    path.buckets = 0; /* a path heartbeat counts on its path's socket only */
  session_on_ctl(s, &ctl, &path, from, fromlen);
}

/* An ICMP port unreachable from the host the datagram went to (not from a
 * router or a firewall on the way), or its ICMPv6 twin. */
static bool port_unreachable(const struct sock_extended_err *ee, const struct sockaddr *dst,
                             socklen_t dstlen) {
  if (ee->ee_origin == SO_EE_ORIGIN_ICMP) {
    if (ee->ee_type != 3 || ee->ee_code != 3) /* destination unreachable: port */
      return false;
  } else if (ee->ee_origin == SO_EE_ORIGIN_ICMP6) {
    if (ee->ee_type != 1 || ee->ee_code != 4) /* destination unreachable: port */
      return false;
  } else {
    return false;
  }
  const struct sockaddr *from = SO_EE_OFFENDER(ee);
  socklen_t fromlen = from->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6);
  return sock_addr_same(from, fromlen, dst, dstlen, false);
}

/* dg: the datagram of ours that the peer's host refused, as its ICMP error
 * quoted it.  Only a whole control datagram that authenticates under the
 * sending key of a server session on this channel counts: it names the
 * session, and no one who has not seen that datagram can forge the quote. */
static void on_refused(struct udp_chan *u, const uint8_t *dg, size_t len,
                       const struct sockaddr *dst, socklen_t dstlen) {
  struct tether_ctx *ctx = u->ctx;
  const uint8_t *id;
  struct core_ctl ctl;
  if (ctl_peek(dg, len, &id) < 0)
    return; /* quoted in part only, or not ours */
  pthread_mutex_lock(&ctx->lock);
  struct tether_session *s = registry_find(ctx, id);
  pthread_mutex_unlock(&ctx->lock);
  if (!s || s->udp != u)
    return;
  /* Ours: sealed with our own direction's key. */
  if (ctl_open(dg, len, s->is_client ? s->keys.ctl_c2s : s->keys.ctl_s2c, &ctl) < 0)
    return;
  session_on_unreachable(s, ctl.seq, dst, dstlen);
}

/* Reads the socket's error queue (IP_RECVERR).  While it holds anything the
 * socket polls as an error (EPOLLERR, which libevent reports as readable),
 * so every entry is read, whatever it says: bounded per call like the
 * datagrams, and called again while entries remain. */
static void drain_errors(struct udp_chan *u) {
  uint8_t buf[CTL_MAX];
  union {
    struct cmsghdr align;
    uint8_t b[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6)) * 2];
  } cbuf;
  for (int i = 0; i < 256; i++) {
    struct sockaddr_storage dst;
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr mh = {.msg_name = &dst, .msg_namelen = sizeof(dst), .msg_iov = &iov,
                        .msg_iovlen = 1, .msg_control = cbuf.b,
                        .msg_controllen = sizeof(cbuf.b)};
    ssize_t n = recvmsg(u->fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (n < 0)
      return; /* EAGAIN: empty */
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
      continue;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
      if (!((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
            (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
        continue;
      /* The error, then its offender's address (SO_EE_OFFENDER). */
      const struct sock_extended_err *ee = (const void *)CMSG_DATA(cm);
      size_t need = sizeof(*ee) + sizeof(struct sockaddr_in);
      if (cm->cmsg_len < CMSG_LEN(need) ||
          (SO_EE_OFFENDER(ee)->sa_family == AF_INET6 &&
           cm->cmsg_len < CMSG_LEN(sizeof(*ee) + sizeof(struct sockaddr_in6))))
        break;
      if (port_unreachable(ee, (struct sockaddr *)&dst, mh.msg_namelen))
        on_refused(u, buf, (size_t)n, (struct sockaddr *)&dst, mh.msg_namelen);
      break;
    }
  }
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  struct udp_chan *u = arg;
  uint8_t buf[CTL_MAX + 1];
  /* Datagrams first: one its sender sent before it died is older than the
   * error that tells of its death (see core_on_unreachable). */
  /* Bounded (a flood cannot hold the loop for more than a few ms), but
   * not small: on the application's loop the side channel gets one batch
   * per turn of the rest (on_event). */
  for (int i = 0; i < UDP_BATCH; i++) {
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof(from);
    ssize_t n = recvfrom(u->fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC,
                         (struct sockaddr *)&from, &fromlen);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      continue; /* an error reported once (ECONNREFUSED...): read on */
    }
    if ((size_t)n > CTL_MAX)
      continue; /* oversized: not ours */
    on_datagram(u, buf, (size_t)n, (struct sockaddr *)&from, fromlen);
  }
  drain_errors(u);
}

void udp_drain(struct udp_chan *u) { on_readable(u->fd, EV_READ, u); }

/* On the application's loop the side channel's event has the highest
 * priority (engine_event_prio), and libevent serves only the highest
 * priority that has work: a steady stream of datagrams -- a flood, or
 * thousands of suspended sessions probing -- would run it at every turn
 * and starve everything else, handshakes and bytes included.  So after
 * each batch it steps aside for one turn of the rest (up to the loop's
 * dispatch interval): its event comes back from one of the lowest
 * priority. */
static void on_event(evutil_socket_t fd, short what, void *arg) {
  struct udp_chan *u = arg;
  on_readable(fd, what, u);
  if (u->rearm_ev) {
    event_del(u->ev);
    event_active(u->rearm_ev, EV_READ, 0);
  }
}

static void on_rearm(evutil_socket_t fd, short what, void *arg) {
  struct udp_chan *u = arg;
  event_add(u->ev, NULL); /* level-triggered: what waits is read at once */
}

struct udp_chan *udp_open(struct tether_ctx *ctx, int family, const struct sockaddr *bind_addr,
                          socklen_t len) {
  struct udp_chan *u = calloc(1, sizeof(*u));
  if (!u)
    return NULL;
  u->ctx = ctx;
  u->family = family;
  u->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
  if (u->fd < 0)
    goto fail;
  int zero = 0, one = 1;
  if (family == AF_INET6)
    (void)setsockopt(u->fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  /* ICMP errors into the error queue (drain_errors); on an IPv6 socket
   * both, for the IPv4 peers it reaches through mapped addresses. */
  (void)setsockopt(u->fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one));
  if (family == AF_INET6)
    (void)setsockopt(u->fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof(one));
  /* Room for bursts: a context's thousands of sessions may all talk at
   * once (after a resume storm, or their path's heartbeats stop matching);
   * the kernel caps it at net.core.rmem_max. */
  int rcvbuf = UDP_RCVBUF;
  (void)setsockopt(u->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  if (bind(u->fd, bind_addr, len) < 0)
    goto fail;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  if (getsockname(u->fd, (struct sockaddr *)&bound, &blen) < 0)
    goto fail;
  u->port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                    : ((struct sockaddr_in6 *)&bound)->sin6_port);
  u->ev = engine_event_new(ctx, ENGINE_PRIO_LIVE, u->fd, EV_READ | EV_PERSIST, on_event, u);
  if (!u->ev || event_add(u->ev, NULL) < 0)
    goto fail;
  if (!ctx->own_base && event_base_get_npriorities(ctx->base) > 1 &&
      !(u->rearm_ev = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_rearm, u)))
    goto fail;
  return u;
fail:
  udp_close(u);
  return NULL;
}

void udp_close(struct udp_chan *u) {
  if (!u)
    return;
  if (u->ev)
    event_free(u->ev);
  if (u->rearm_ev)
    event_free(u->rearm_ev);
  if (u->fd >= 0)
    close(u->fd);
  free(u);
}

void udp_send_ctl(struct tether_session *s, uint64_t now) { udp_send_ctl_path(s, now, NULL); }

void udp_send_ctl_path(struct tether_session *s, uint64_t now, const struct ctl_path *path) {
  struct core_ctl ctl;
  uint8_t dg[CTL_MAX];
  core_build_ctl(&s->core, now, &ctl); /* also schedules the next one */
  if (!s->udp || s->udp_peer_len == 0)
    return;
  ssize_t n = ctl_seal_path(s->id, &ctl, path, s->is_client ? s->keys.ctl_c2s : s->keys.ctl_s2c,
                            dg, sizeof(dg));
  if (n < 0)
    return;
  union sock_addr to = s->udp_peer;
  socklen_t tolen = s->udp_peer_len;
  /* A dual-stack socket reaches IPv4 peers through mapped addresses. */
  if (s->udp->family == AF_INET6 && to.sa.sa_family == AF_INET) {
    struct sockaddr_in v4 = s->udp_peer.in4;
    struct sockaddr_in6 *v6 = &to.in6;
    memset(v6, 0, sizeof(*v6));
    v6->sin6_family = AF_INET6;
    v6->sin6_port = v4.sin_port;
    v6->sin6_addr.s6_addr[10] = v6->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&v6->sin6_addr.s6_addr[12], &v4.sin_addr, 4);
    tolen = sizeof(*v6);
  }
  (void)sendto(s->udp->fd, dg, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&to, tolen);
}
