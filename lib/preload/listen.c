/* The accepting side.  listen() on a TCP socket makes a listener: the real
 * listening socket moves to a hidden number that tether's engine accepts
 * from, and the program's numbers refer to an epoll instance that polls
 * readable when a plain connection or a session is ready for accept(), so
 * that the program's poll/select/epoll on its listening fd stay truthful
 * while handshakes run in the engine thread, never in the program's.
 *
 * The engine accepts connections itself (resumes must get through even
 * when the program no longer calls accept(), or closed its listener).  A
 * connection is plain unless a probe announced it (or its first bytes are
 * already tether's preface); an announced one waits for its first bytes (a
 * client that gave up on tether sends plain bytes, or a cancel datagram)
 * and becomes a session or a plain connection.  After the program closes
 * its listener the hidden socket stays open for resumes only (new
 * connections are reset) until the program binds its port again.
 *
 * What waits for the program's accept() is bounded: once HOLD_MAX plain
 * connections wait (or the program's backlog + 1, if fewer; sessions have
 * their own bound, TETHER_ACCEPT_BACKLOG), the engine stops accepting and
 * connections wait in the kernel's queue, taking no descriptor of the
 * program's, until the program accepts or a tether client announces
 * itself (a resume must pass; the plain connections ahead of it are held
 * then, up to twice backlog + 1, and beyond that reset).  The engine must
 * accept a connection to know what it is before the program's number
 * says "readable" (a resume must never wake a program whose accept() then
 * finds nothing), so a few descriptors are the price; the kernel's queue
 * cannot be looked into.
 *
 * A listener's UDP port (the same number) answers probes and carries the
 * sessions' side channel. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"
#include "preload.h"

/* At most this many plain connections wait for accept() in the engine's
 * hands (each holds a descriptor of the program's); the others wait in the
 * kernel's queue, and the engine takes the next as the program takes one. */
#define HOLD_MAX 4

/* How often a full listener looks whether an announcement expired. */
#define FULL_RECHECK_NS 1000000000ull

struct plisten {
  struct tether_listener l; /* the library's: ctx, fd (real socket), udp, ready_fd, queue */
  int plain_efd;            /* semaphore: one count per queued plain connection */
  pthread_mutex_t qlock;
  int *plainq;
  int nq, capq;
  int backlog; /* the program's, as the kernel takes it (qlock) */
  bool full;   /* the engine stopped accepting for want of room (atomic) */
  bool closed;
  struct event *ev; /* the engine's accept event on l.fd (paused by l.gate) */
  struct event *reap_ev; /* closed: looks whether it is still needed */
  struct plisten *next;
};

/* An announced connection waiting for its first bytes (engine thread). */
struct pending {
  struct plisten *pl;
  int sock;
  struct sockaddr_storage peer;
  socklen_t peer_len;
  struct ipport who;
  struct event *ev;
  uint64_t deadline_ms;
  struct pending *next;
};

pthread_mutex_t pl_lock = PTHREAD_MUTEX_INITIALIZER; /* listeners, pendings */
static struct plisten *listeners;
static struct pending *pendings;

static int pending_count(struct plisten *pl) {
  int n = 0;
  pthread_mutex_lock(&pl_lock);
  for (struct pending *p = pendings; p; p = p->next)
    n += p->pl == pl;
  pthread_mutex_unlock(&pl_lock);
  return n;
}

int pl_socket(struct plisten *pl) { return pl->l.fd; }

void pl_after_fork_child(void) {
  /* The parent's listeners and announced connections are the parent's
   * engine's (a child's inherited listener only accepts plain: PS_ORPHAN). */
  listeners = NULL;
  pendings = NULL;
}

static void reset_close(int sock) {
  struct linger lg = {1, 0};
  (void)real.setsockopt(sock, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  real.close(sock);
}

/* How the kernel takes a listen() backlog: negative or above somaxconn is
 * somaxconn.  At most backlog + 1 connections wait. */
static int kernel_backlog(int backlog) {
  static int somaxconn;
  int max = __atomic_load_n(&somaxconn, __ATOMIC_RELAXED);
  if (!max) {
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");
    if (!f || fscanf(f, "%d", &max) != 1 || max <= 0)
      max = 4096;
    if (f)
      fclose(f);
    __atomic_store_n(&somaxconn, max, __ATOMIC_RELAXED);
  }
  return backlog < 0 || backlog > max ? max : backlog;
}

static void push_plain(struct plisten *pl, int sock) {
  pthread_mutex_lock(&pl->qlock);
  if (pl->closed) {
    pthread_mutex_unlock(&pl->qlock);
    reset_close(sock); /* as from a closed port */
    return;
  }
  if (pl->nq >= 2 * (pl->backlog + 1)) {
    /* Taken only so that a resume behind it could pass: no room for it. */
    pthread_mutex_unlock(&pl->qlock);
    tlog_limited(pl->l.ctx, &pl->l.gate.log, TETHER_LOG_WARN,
                 "port %d: the program accepts nothing; a plain connection reset", pl->l.port);
    reset_close(sock);
    return;
  }
  if (pl->nq == pl->capq) {
    int cap = pl->capq ? pl->capq * 2 : 8;
    int *q = realloc(pl->plainq, (size_t)cap * sizeof(*q));
    if (!q) {
      pthread_mutex_unlock(&pl->qlock);
      real.close(sock);
      return;
    }
    pl->plainq = q;
    pl->capq = cap;
  }
  pl->plainq[pl->nq++] = sock;
  uint64_t one = 1;
  (void)!real.write(pl->plain_efd, &one, sizeof(one));
  pthread_mutex_unlock(&pl->qlock);
}

static int pop_plain(struct plisten *pl) {
  uint64_t v;
  int sock = -1;
  pthread_mutex_lock(&pl->qlock);
  if (pl->nq > 0 && real.read(pl->plain_efd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
    sock = pl->plainq[0];
    memmove(pl->plainq, pl->plainq + 1, (size_t)(pl->nq - 1) * sizeof(*pl->plainq));
    pl->nq--;
  }
  pthread_mutex_unlock(&pl->qlock);
  return sock;
}

/* ---- the bound (engine thread) ---- */

/* Whether to leave the next connections in the kernel's queue: as many
 * wait for the program's accept() as HOLD_MAX and its backlog allow
 * (queued plain ones, and announced ones still waiting for their first
 * bytes), and no tether client has announced itself. */
static bool no_room(struct plisten *pl) {
  pthread_mutex_lock(&pl->qlock);
  bool closed = pl->closed;
  int n = pl->nq, bound = pl->backlog < HOLD_MAX - 1 ? pl->backlog : HOLD_MAX - 1;
  pthread_mutex_unlock(&pl->qlock);
  return !closed && n + pending_count(pl) > bound && !probes_expected(pl->l.port, tp_now_ms());
}

/* Accepting again: the program took one, or a tether client announced
 * itself. */
static void room(struct plisten *pl) {
  if (__atomic_exchange_n(&pl->full, false, __ATOMIC_ACQ_REL))
    accept_gate_room(&pl->l.gate);
}

/* ---- announced connections (engine thread) ---- */

static void unlink_pending(struct pending *p) {
  pthread_mutex_lock(&pl_lock);
  for (struct pending **pp = &pendings; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  pthread_mutex_unlock(&pl_lock);
}

static void resolve(struct pending *p, bool tether) {
  struct tether_ctx *ctx = p->pl->l.ctx;
  unlink_pending(p);
  event_free(p->ev);
  if (tether) { /* after the program closed its listener, only resumes pass */
    struct hs_conn *h = hs_conn_new(ctx, HS_SERVER, p->sock);
    if (h) {
      h->listener = &p->pl->l;
      memcpy(&h->peer, &p->peer, p->peer_len);
      h->peer_len = p->peer_len;
      if (hs_conn_start_async(h, ctx->cfg.connect_timeout_ms) < 0)
        hs_conn_free(h); /* logged */
    } else {
      real.close(p->sock);
    }
  } else {
    push_plain(p->pl, p->sock);
  }
  free(p);
}

static void on_pending(evutil_socket_t fd, short what, void *arg) {
  struct pending *p = arg;
  uint8_t buf[HS_PREFACE_LEN];
  if (what & EV_TIMEOUT) {
    resolve(p, false);
    return;
  }
  ssize_t n = real.recv(p->sock, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    n = -2;
  if (n > 0 && memcmp(buf, HS_MAGIC, (size_t)n < 4 ? (size_t)n : 4) != 0) {
    resolve(p, false); /* plain bytes: the client gave up on tether */
    return;
  }
  if (n == -1) {
    /* Reset before its first byte: a tether client's connection lost
     * during setup (it dials again); nothing for the program. */
    LOG_DEBUG(p->pl->l.ctx, "announced connection: %s before its first byte: dropped", strerror(errno));
    unlink_pending(p);
    event_free(p->ev);
    real.close(p->sock);
    free(p);
    return;
  }
  if (n == (ssize_t)sizeof(buf) || n == 0) {
    resolve(p, n == (ssize_t)sizeof(buf)); /* EOF: the program sees it, as with TCP */
    return;
  }
  /* Part of the preface, or nothing yet: wait for the rest. */
  uint64_t now = tp_now_ms();
  uint64_t left = p->deadline_ms > now ? p->deadline_ms - now : 0;
  struct timeval tv = {.tv_sec = (time_t)(left / 1000), .tv_usec = (suseconds_t)(left % 1000) * 1000};
  event_add(p->ev, &tv);
}

static void start_pending(struct plisten *pl, int sock, const struct sockaddr_storage *peer,
                          socklen_t plen, const struct ipport *who, int wait_ms) {
  struct tether_ctx *ctx = pl->l.ctx;
  struct pending *p = calloc(1, sizeof(*p));
  if (p)
    p->ev = event_new(ctx->base, sock, EV_READ, on_pending, p);
  if (!p || !p->ev) {
    free(p);
    push_plain(pl, sock);
    return;
  }
  p->pl = pl;
  p->sock = sock;
  memcpy(&p->peer, peer, plen);
  p->peer_len = plen;
  p->who = *who;
  p->deadline_ms = tp_now_ms() + (uint64_t)wait_ms;
  pthread_mutex_lock(&pl_lock);
  p->next = pendings;
  pendings = p;
  pthread_mutex_unlock(&pl_lock);
  struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (suseconds_t)(wait_ms % 1000) * 1000};
  event_add(p->ev, &tv);
}

/* A connection from an address that probed, but from another port (a NAT
 * may have changed it): most likely a plain client beside a tether one on
 * the same host, which must not wait long for nothing.  A tether client's
 * preface follows its connect at once (with its probe's answer, due about
 * then): two round trips of this connection and 10 ms for the client's
 * scheduling, at most TETHER_ACCEPT_WAIT_MS. */
static int address_wait_ms(int sock) {
  struct tcp_info ti;
  socklen_t len = sizeof(ti);
  uint64_t rtt_us = real.getsockopt(sock, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 ? ti.tcpi_rtt : 0;
  uint64_t ms = 2 * rtt_us / 1000 + 10;
  return ms < (uint64_t)tp_accept_wait_ms ? (int)ms : tp_accept_wait_ms;
}

static bool preface_waiting(int sock) {
  uint8_t buf[HS_PREFACE_LEN];
  ssize_t n = real.recv(sock, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
  return n == (ssize_t)sizeof(buf) && hs_check_preface(buf) != -EPROTO;
}

static void on_accept(evutil_socket_t fd, short what, void *arg) {
  struct plisten *pl = arg;
  /* A probe or announce left before the connection's SYN, but its event
   * may come after this one: take it first. */
  if (pl->l.udp)
    udp_drain(pl->l.udp);
  if (__atomic_load_n(&pl->full, __ATOMIC_ACQUIRE) && !no_room(pl))
    room(pl); /* woken by the program's accept: watch the socket again */
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    if (no_room(pl)) {
      /* Looked at again now and then: an announcement may expire. */
      __atomic_store_n(&pl->full, true, __ATOMIC_RELEASE);
      accept_gate_wait_room(&pl->l.gate, FULL_RECHECK_NS);
      return;
    }
    int c = real.accept4(pl->l.fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (accept_gate_failed(&pl->l.gate, errno))
        continue;
      return;
    }
    accept_gate_ok(&pl->l.gate);
    struct ipport who;
    char addr[64];
    bool ip = ipport_from((struct sockaddr *)&peer, &who);
    bool announced = ip && probes_take(&who, tp_now_ms(), false);
    if (!announced && ip && pl->l.udp) { /* its probe may have come since the drain above */
      udp_drain(pl->l.udp);
      announced = probes_take(&who, tp_now_ms(), false);
    }
    bool preface = !announced && preface_waiting(c);
    bool by_address = false;
    if (!announced && !preface) /* behind a NAT that changed the port? */
      announced = by_address = probes_take(&who, tp_now_ms(), true);
    LOG_DEBUG(pl->l.ctx, "connection from %s: %s", sock_addr_str((struct sockaddr *)&peer, addr, sizeof(addr)),
              announced ? "announced" : preface ? "tether preface" : pl->closed ? "refused (listener closed)" : "plain");
    if (announced || preface) {
      start_pending(pl, c, &peer, plen, &who, by_address ? address_wait_ms(c) : tp_accept_wait_ms);
    } else {
      probes_handed_plain(&who, c, tp_now_ms());
      push_plain(pl, c); /* after the program closed: reset (resumes only) */
    }
  }
}

/* ---- the UDP port: probes ---- */

static bool port_listening(int port) {
  bool yes = false;
  pthread_mutex_lock(&pl_lock);
  for (struct plisten *pl = listeners; pl && !yes; pl = pl->next)
    yes = !pl->closed && pl->l.port == port;
  pthread_mutex_unlock(&pl_lock);
  return yes;
}

/* A tether client is about to connect to port: full listeners there
 * accept again (engine thread). */
static void rooms_for(int port) {
  pthread_mutex_lock(&pl_lock);
  for (struct plisten *pl = listeners; pl; pl = pl->next)
    if (pl->l.port == port && __atomic_load_n(&pl->full, __ATOMIC_ACQUIRE))
      event_active(pl->ev, EV_READ, 0); /* on_accept looks: room() */
  pthread_mutex_unlock(&pl_lock);
}

static bool on_probe(struct udp_chan *u, const uint8_t *dg, size_t len,
                     const struct sockaddr *from, socklen_t fromlen) {
  struct probe p;
  struct ipport who;
  if (probe_decode(dg, len, &p) < 0 || !ipport_from(from, &who))
    return false;
  who.port = p.port;
  LOG_DEBUG(u->ctx, "probe datagram type %d for port %u", p.type, p.port);
  switch (p.type) {
  case PROBE_ASK:
    if (probes_was_handed_plain(&who, tp_now_ms())) {
      LOG_DEBUG(u->ctx, "probe for port %u: its connection went to the program as plain: "
                "not answered", p.port);
      break;
    }
    if (port_listening(u->port)) {
      uint8_t out[PROBE_LEN];
      probes_record(&who, u->port, tp_now_ms());
      rooms_for(u->port);
      p.type = PROBE_YES;
      probe_encode(&p, out);
      (void)real.sendto(u->fd, out, sizeof(out), MSG_DONTWAIT, from, fromlen);
    }
    break;
  case PROBE_ANNOUNCE: /* a resume: welcome even after the program closed its listener */
    probes_record(&who, u->port, tp_now_ms());
    rooms_for(u->port);
    break;
  case PROBE_CANCEL: {
    struct pending *found = NULL;
    (void)probes_take(&who, tp_now_ms(), false);
    pthread_mutex_lock(&pl_lock);
    for (struct pending *q = pendings; q && !found; q = q->next)
      if (ipport_eq(&q->who, &who))
        found = q;
    pthread_mutex_unlock(&pl_lock);
    if (found) /* pendings are resolved on this thread only: still valid */
      resolve(found, false);
    break;
  }
  default:
    break;
  }
  return true;
}

/* The UDP channel for a listener on port: shared by listeners of the same
 * port number (an IPv6 dual-stack one takes IPv4 probes too). */
static struct udp_chan *udp_for(struct tether_ctx *ctx, const struct sockaddr_storage *bound,
                                socklen_t blen, int port, bool *created) {
  struct udp_chan *u = NULL;
  *created = false;
  pthread_mutex_lock(&pl_lock);
  for (struct plisten *pl = listeners; pl && !u; pl = pl->next)
    if (pl->l.port == port && pl->l.udp)
      u = pl->l.udp;
  pthread_mutex_unlock(&pl_lock);
  if (u)
    return u;
  u = udp_open(ctx, bound->ss_family, (const struct sockaddr *)bound, blen);
  if (u) {
    __atomic_store_n(&u->on_other, on_probe, __ATOMIC_RELEASE);
    *created = true;
  }
  return u;
}

/* Frees a listener that never served (pl_listen failed). */
static void pl_discard(struct plisten *pl, bool udp_new) {
  accept_gate_clear(&pl->l.gate);
  if (pl->ev)
    event_free(pl->ev);
  if (pl->l.udp && udp_new)
    udp_close(pl->l.udp);
  if (pl->l.fd >= 0)
    real.close(pl->l.fd);
  if (pl->l.ready_fd >= 0)
    real.close(pl->l.ready_fd);
  if (pl->plain_efd >= 0)
    real.close(pl->plain_efd);
  pthread_mutex_destroy(&pl->qlock);
  free(pl);
}

/* A bound socket's UDP channel and listener record exist before the TCP
 * port listens: a client that connects at once has its probe answered. */
int pl_listen(struct psock *ps, int fd, int backlog) {
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  struct tether_ctx *ctx = NULL;
  struct ipport bp;
  bool early = real.getsockname(fd, (struct sockaddr *)&bound, &blen) == 0 &&
               ipport_from((struct sockaddr *)&bound, &bp) && bp.port != 0;
  if (!early) { /* the kernel picks the port as it listens */
    if (real.listen(fd, backlog) < 0)
      return -1;
    blen = sizeof(bound);
    if (real.getsockname(fd, (struct sockaddr *)&bound, &blen) < 0) {
      ps->kind = PS_PLAIN;
      return 0;
    }
  }
  struct plisten *pl = NULL;
  int ffl = real.fcntl(fd, F_GETFL);
  bool async = ffl >= 0 && (ffl & O_ASYNC); /* SIGIO on connections: see pc_connect */
  if (excluded((struct sockaddr *)&bound) || async || !(ctx = tp_ctx()) ||
      !(pl = calloc(1, sizeof(*pl)))) {
    ps->kind = PS_PLAIN;
    return early ? real.listen(fd, backlog) : 0;
  }
  TP_ENTER();
  pthread_mutex_init(&pl->qlock, NULL);
  pl->l.ctx = ctx;
  pl->l.nonblocking = true;
  pl->backlog = kernel_backlog(backlog);
  pl->l.port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                : ((struct sockaddr_in6 *)&bound)->sin6_port);
  pl->l.fd = real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  pl->l.ready_fd = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
  pl->plain_efd = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
  int ep = real.epoll_create1(EPOLL_CLOEXEC);
  bool ok = pl->l.fd >= 0 && pl->l.ready_fd >= 0 && pl->plain_efd >= 0 && ep >= 0;
  int watch[2] = {pl->l.ready_fd, pl->plain_efd};
  for (int i = 0; ok && i < 2; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = watch[i]};
    ok = real.epoll_ctl(ep, EPOLL_CTL_ADD, watch[i], &ev) == 0;
  }
  if (ok) {
    int fl = real.fcntl(pl->l.fd, F_GETFL);
    (void)real.fcntl(pl->l.fd, F_SETFL, (fl < 0 ? 0 : fl) | O_NONBLOCK);
    pl->ev = event_new(ctx->base, pl->l.fd, EV_READ | EV_PERSIST, on_accept, pl);
    ok = pl->ev != NULL && accept_gate_init(&pl->l.gate, ctx, pl->ev) == 0;
  }
  if (!ok) {
    if (ep >= 0)
      real.close(ep);
    pl_discard(pl, false);
    ps->kind = PS_PLAIN;
    TP_LEAVE();
    return early ? real.listen(fd, backlog) : 0;
  }
  bool udp_new = false;
  pl->l.udp = udp_for(ctx, &bound, blen, pl->l.port, &udp_new);
  if (!pl->l.udp)
    LOG_INFO(ctx, "UDP port %d unavailable: clients will not detect tether on this listener",
             pl->l.port);
  pthread_mutex_lock(&pl_lock);
  pl->next = listeners;
  listeners = pl;
  pthread_mutex_unlock(&pl_lock);
  if (early && real.listen(fd, backlog) < 0) {
    int err = errno;
    pthread_mutex_lock(&pl_lock);
    for (struct plisten **pp = &listeners; *pp; pp = &(*pp)->next)
      if (*pp == pl) {
        *pp = pl->next;
        break;
      }
    pthread_mutex_unlock(&pl_lock);
    real.close(ep);
    pl_discard(pl, udp_new);
    TP_LEAVE();
    errno = err;
    return -1;
  }
  pthread_mutex_lock(&ps->lock);
  ps_swap(ps, ep);
  real.close(ep);
  ps->pl = pl;
  memcpy(&ps->local, &bound, blen);
  ps->local_len = blen;
  ps->kind = PS_LISTEN;
  pthread_mutex_unlock(&ps->lock);
  event_add(pl->ev, NULL);
  TP_LEAVE();
  return 0;
}

/* The program's thread: the engine stopped accepting for want of room;
 * there may be some now (on_accept looks). */
static void wake_full(struct plisten *pl) {
  if (__atomic_load_n(&pl->full, __ATOMIC_ACQUIRE) && pl->ev)
    event_active(pl->ev, EV_READ, 0);
}

int pl_relisten(struct plisten *pl, int backlog) {
  int rc = real.listen(pl->l.fd, backlog);
  if (rc == 0) {
    pthread_mutex_lock(&pl->qlock);
    pl->backlog = kernel_backlog(backlog);
    pthread_mutex_unlock(&pl->qlock);
    wake_full(pl);
  }
  return rc;
}

/* A session from the listener's queue becomes the program's. */
static int adopt(struct tether_session *s, int flags, struct sockaddr *addr, socklen_t *alen) {
  struct psock *ps = ps_new(PS_SESSION, AF_INET6);
  if (!ps) {
    tether_close(s);
    return -ENOMEM;
  }
  session_lock(s);
  int fd = s->app_fd;
  pthread_mutex_lock(&ps->lock);
  struct psock *stale = fdt_get(fd);
  if (stale && stale != ps) /* the number was closed behind our back */
    fdt_set(fd, NULL);
  ps_add_alias(ps, fd, (flags & SOCK_CLOEXEC) != 0); /* close-on-exec anyway: ps_exec_hidden */
  ps->nonblock = (flags & SOCK_NONBLOCK) != 0;
  ps->s = s;
  tp_session_attach_hooks(ps, s);
  /* The accepted connection's endpoints, even if it was lost meanwhile
   * (the session is suspended and has no socket to ask). */
  memset(&ps->peer, 0, sizeof(ps->peer));
  memcpy(&ps->peer, &s->tcp_peer, sizeof(s->tcp_peer));
  ps->peer_len = s->tcp_peer_len;
  memset(&ps->local, 0, sizeof(ps->local));
  memcpy(&ps->local, &s->tcp_local, sizeof(s->tcp_local));
  ps->local_len = s->tcp_local_len;
  if (ps->local_len)
    ps->family = ps->local.ss_family;
  pthread_mutex_unlock(&ps->lock);
  session_unlock(s);
  if (addr && alen) {
    socklen_t n = *alen < ps->peer_len ? *alen : ps->peer_len;
    memcpy(addr, &ps->peer, n);
    *alen = ps->peer_len;
  }
  return fd;
}

static void fill_peer(int sock, struct sockaddr *addr, socklen_t *alen) {
  if (addr && alen && real.getpeername(sock, addr, alen) < 0)
    *alen = 0;
}

int pl_take(struct plisten *pl, int *plain, struct psock **sp) {
  int c = pop_plain(pl);
  if (c >= 0) {
    wake_full(pl);
    *plain = c;
    return 1;
  }
  struct tether_session *s;
  if (tether_accept(&pl->l, &s) != 0)
    return -EAGAIN;
  c = adopt(s, SOCK_CLOEXEC, NULL, NULL);
  if (c < 0)
    return c;
  struct psock *ps = fdt_get(c);
  pthread_mutex_lock(&ps->lock);
  ps->own_fd = c; /* the number is tether's, not the program's */
  pthread_mutex_unlock(&ps->lock);
  *sp = ps;
  return 2;
}

int pl_accept(struct psock *ps, int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
  struct plisten *pl = ps->pl;
  if (ps->kind == PS_ORPHAN) { /* inherited through fork: the parent accepts */
    int got = fork_accept(ps, fd, addr, alen, flags);
    if (got != -ENOTCONN) {
      if (got < 0) {
        errno = -got;
        return -1;
      }
      return got;
    }
    for (;;) { /* no parent to ask: plain accepts only */
      int c = real.accept4(pl->l.fd, addr, alen, flags);
      if (c >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || ps->nonblock)
        return c;
      if (tp_wait(pl->l.fd, POLLIN, -1) == -EINTR && !tp_restart_after_eintr()) {
        errno = EINTR;
        return -1;
      }
    }
  }
  for (;;) {
    TP_ENTER();
    int c = pop_plain(pl);
    if (c >= 0) {
      wake_full(pl);
      if (!(flags & SOCK_NONBLOCK))
        (void)real.fcntl(c, F_SETFL, 0);
      if (!(flags & SOCK_CLOEXEC))
        (void)real.fcntl(c, F_SETFD, 0);
      fill_peer(c, addr, alen);
      TP_LEAVE();
      return c;
    }
    struct tether_session *s;
    if (tether_accept(&pl->l, &s) == 0) {
      c = adopt(s, flags, addr, alen);
      TP_LEAVE();
      if (c < 0) {
        errno = -c;
        return -1;
      }
      return c;
    }
    TP_LEAVE();
    if (ps->nonblock) {
      errno = EAGAIN;
      return -1;
    }
    if (tp_wait(fd, POLLIN, -1) == -EINTR && !tp_restart_after_eintr()) {
      errno = EINTR;
      return -1;
    }
  }
}

/* Engine thread.  Whether anything may still need a closed listener: an
 * announced connection or a handshake that names it, or a server-side
 * session (its resumes come through the listening socket, its side channel
 * is the listener's UDP port). */
static bool pl_in_use(struct plisten *pl) {
  struct tether_ctx *ctx = pl->l.ctx;
  const char *by = NULL;
  pthread_mutex_lock(&pl_lock);
  for (struct pending *p = pendings; p && !by; p = p->next)
    if (p->pl == pl)
      by = "an announced connection";
  pthread_mutex_unlock(&pl_lock);
  pthread_mutex_lock(&ctx->lock);
  for (struct hs_conn *h = ctx->handshakes; h && !by; h = h->next)
    if (h->listener == &pl->l)
      by = "a handshake";
  for (unsigned i = 0; i < ctx->n_buckets && !by; i++)
    for (struct tether_session *s = ctx->buckets[i]; s && !by; s = s->hash_next)
      if (!s->is_client && s->udp == pl->l.udp)
        by = "a session";
  pthread_mutex_unlock(&ctx->lock);
  if (by)
    LOG_DEBUG(ctx, "closed listener on port %d: kept for %s", pl->l.port, by);
  return by != NULL;
}

#define REAP_INTERVAL_MS 1000

/* Engine thread: a closed listener that nothing needs any more is freed,
 * and its port with it. */
static void on_reap(evutil_socket_t fd, short what, void *arg) {
  struct plisten *pl = arg;
  if (pl_in_use(pl)) {
    struct timeval tv = {REAP_INTERVAL_MS / 1000, (REAP_INTERVAL_MS % 1000) * 1000};
    event_add(pl->reap_ev, &tv);
    return;
  }
  bool udp_shared = false;
  pthread_mutex_lock(&pl_lock);
  for (struct plisten **pp = &listeners; *pp; pp = &(*pp)->next)
    if (*pp == pl) {
      *pp = pl->next;
      break;
    }
  for (struct plisten *o = listeners; o && !udp_shared; o = o->next)
    udp_shared = o->l.udp == pl->l.udp;
  pthread_mutex_unlock(&pl_lock);
  LOG_DEBUG(pl->l.ctx, "closed listener on port %d: freed", pl->l.port);
  accept_gate_clear(&pl->l.gate);
  if (pl->ev)
    event_free(pl->ev);
  if (pl->l.fd >= 0)
    real.close(pl->l.fd);
  real.close(pl->l.ready_fd);
  if (pl->l.udp && !udp_shared)
    udp_close(pl->l.udp);
  free(pl->plainq);
  pthread_mutex_destroy(&pl->qlock);
  event_free(pl->reap_ev); /* not pending: allowed in its own callback */
  free(pl);
}

void pl_close(struct plisten *pl) {
  TP_ENTER();
  pthread_mutex_lock(&pl->qlock);
  pl->closed = true;
  for (int i = 0; i < pl->nq; i++)
    real.close(pl->plainq[i]);
  pl->nq = 0;
  real.close(pl->plain_efd);
  pl->plain_efd = -1;
  pthread_mutex_unlock(&pl->qlock);
  /* Sessions nobody accepted end.  The struct, its ready_fd (the engine may
   * still signal it), the UDP channel and the listening socket (sessions
   * resume through them) stay until nothing needs them (on_reap). */
  tether_listener_close(&pl->l);
  pl->reap_ev = evtimer_new(pl->l.ctx->base, on_reap, pl);
  if (pl->reap_ev) {
    struct timeval tv = {REAP_INTERVAL_MS / 1000, (REAP_INTERVAL_MS % 1000) * 1000};
    event_add(pl->reap_ev, &tv);
  }
  TP_LEAVE();
}

/* Whether addr is an address of this host (binding to it works). */
static bool local_address(const struct sockaddr *addr) {
  struct sockaddr_storage a;
  socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  memcpy(&a, addr, len);
  if (a.ss_family == AF_INET)
    ((struct sockaddr_in *)&a)->sin_port = 0;
  else
    ((struct sockaddr_in6 *)&a)->sin6_port = 0;
  int u = real.socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (u < 0)
    return false;
  bool yes = real.bind(u, (struct sockaddr *)&a, len) == 0;
  real.close(u);
  return yes;
}

bool pl_own_listener(const struct sockaddr *dst) {
  struct ipport want;
  bool port = false;
  if (!ipport_from(dst, &want))
    return false;
  pthread_mutex_lock(&pl_lock);
  for (struct plisten *pl = listeners; pl && !port; pl = pl->next)
    port = !pl->closed && pl->l.port == want.port;
  pthread_mutex_unlock(&pl_lock);
  return port && local_address(dst);
}

bool pl_release_port(const struct sockaddr *sa) {
  struct ipport want;
  struct event *evs[16];
  int fds[16], n = 0;
  if (!ipport_from(sa, &want))
    return false;
  /* Taken under the lock, freed after it: event_free waits for a running
   * callback, which may want the lock. */
  pthread_mutex_lock(&pl_lock);
  for (struct plisten *pl = listeners; pl && n < 16; pl = pl->next)
    if (pl->closed && pl->l.fd >= 0 && pl->l.port == want.port) {
      evs[n] = pl->ev;
      fds[n++] = pl->l.fd;
      pl->ev = NULL;
      pl->l.fd = -1;
    }
  pthread_mutex_unlock(&pl_lock);
  TP_ENTER();
  for (int i = 0; i < n; i++) {
    if (evs[i])
      event_free(evs[i]);
    real.close(fds[i]);
  }
  TP_LEAVE();
  return n > 0;
}

/* Engine thread, before a redial connects: bind, and announce the source
 * port to the server so that it treats the connection as tether's. */
void pl_redial_hook(struct tether_session *s, int fd) {
  struct sockaddr_storage a;
  socklen_t len = s->dial_addr.sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                      : sizeof(struct sockaddr_in);
  memset(&a, 0, sizeof(a));
  a.ss_family = s->dial_addr.sa.sa_family;
  if (real.bind(fd, (struct sockaddr *)&a, len) < 0)
    return;
  len = sizeof(a);
  struct ipport me;
  if (real.getsockname(fd, (struct sockaddr *)&a, &len) < 0 || !ipport_from((struct sockaddr *)&a, &me))
    return;
  if (!s->udp || !s->udp_peer_len)
    return;
  struct probe p = {.type = PROBE_ANNOUNCE, .port = me.port};
  uint8_t dg[PROBE_LEN];
  if (crypto_random(p.nonce, sizeof(p.nonce)) < 0)
    memset(p.nonce, 0, sizeof(p.nonce)); /* the nonce only pairs answers to asks */
  probe_encode(&p, dg);
  for (int i = 0; i < 2; i++) /* twice: a lost datagram costs a failed redial */
    (void)real.sendto(s->udp->fd, dg, sizeof(dg), MSG_DONTWAIT, (struct sockaddr *)&s->udp_peer,
                      s->udp_peer_len);
}
