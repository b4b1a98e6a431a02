/* The connecting side: connect() on a TCP socket.  Detection runs in
 * parallel with the TCP connect: a probe datagram to the server's port
 * number (see detect.c), then either the tether handshake (the server
 * answered) or plain TCP (a refusal, or no answer within one connect time
 * plus TETHER_PROBE_MS).  A blocking connect runs it all in the caller's
 * thread; a non-blocking one returns EINPROGRESS at once and runs it in a
 * helper thread while the program's number holds a placeholder that polls
 * ready only when the outcome is installed. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

struct cjob {
  struct psock *ps;
  int sock; /* the TCP socket being connected (a dup of the program's) */
  struct sockaddr_storage dst;
  socklen_t dstlen;
  struct sockaddr_storage local; /* the connection's own address (for a redial) */
  bool async;
  int abort_fd; /* async: readable once the program closed its numbers, else -1 */
  int err; /* positive errno, 0 = success */
  struct tether_session *s; /* tether: the session, not started */
};

static socklen_t family_len(int family) {
  return family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* The side channel for sessions this process connects (as client.c). */
static int ensure_udp(struct tether_ctx *ctx, int family) {
  struct udp_chan **slot = family == AF_INET6 ? &ctx->udp6 : &ctx->udp4;
  int rc = 0;
  pthread_mutex_lock(&ctx->lock);
  if (!*slot) {
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = (sa_family_t)family;
    *slot = udp_open(ctx, family, (struct sockaddr *)&any, family_len(family));
    if (!*slot)
      rc = -EIO;
  }
  pthread_mutex_unlock(&ctx->lock);
  return rc;
}

static void send_probe(int u, uint8_t type, uint16_t port, const uint8_t nonce[8]) {
  struct probe p = {.type = type, .port = port};
  uint8_t dg[PROBE_LEN];
  memcpy(p.nonce, nonce, 8);
  probe_encode(&p, dg);
  (void)real.send(u, dg, sizeof(dg), MSG_DONTWAIT | MSG_NOSIGNAL);
}

#define MS_NS ((uint64_t)1000000)
/* The server's engine answering a probe takes a thread wake-up. */
#define ANSWER_SLACK_NS ((uint64_t)200000)
/* The least wait for a destination known to run tether. */
#define KNOWN_TETHER_WAIT_NS (1000 * MS_NS)

/* How long after the TCP connect completes the probe's answer is waited
 * for.  It left before our SYN, so from a tether server it is due about
 * when the SYN-ACK is back: a destination known to be plain is not waited
 * for at all (what has arrived is looked at), an unknown one for half a
 * connect time more, one known to be tether's for a full connect time and
 * at least a second: a busy server's engine answers late (two clients
 * connecting in a loop to one server on two cores saw 4% of answers come
 * after 20 ms), and giving up would make a connection meant to be durable
 * plain TCP.  TETHER_PROBE_MS, if set, replaces both floors. */
static uint64_t answer_wait_ns(enum dest_kind kind, uint64_t rtt) {
  if (kind == DEST_PLAIN)
    return 0;
  uint64_t floor = tp_probe_ms >= 0 ? (uint64_t)tp_probe_ms * MS_NS
                   : kind == DEST_TETHER ? KNOWN_TETHER_WAIT_NS
                                         : 0;
  uint64_t wait = tp_probe_ms >= 0 || kind == DEST_TETHER ? rtt : rtt / 2 + ANSWER_SLACK_NS;
  return wait > floor ? wait : floor;
}

/* Connects j->sock, and finds out whether a tether server is there.
 * Returns 0 (*tether set) or a positive errno. */
static int probe_and_connect(struct cjob *j, bool *tether) {
  struct psock *ps = j->ps;
  struct sockaddr_storage local;
  socklen_t llen = sizeof(local);
  uint8_t nonce[8];
  enum { P_NONE, P_WAIT, P_YES, P_REFUSED } probe = P_NONE;
  int u = -1, err = 0, lost = 0;
  struct ipport dp;
  enum dest_kind kind = dest_get((struct sockaddr *)&j->dst);
  bool may_probe = ipport_from((struct sockaddr *)&j->dst, &dp) && dest_probe_port(dp.port);
  *tether = false;

  int fl = real.fcntl(j->sock, F_GETFL);
  (void)real.fcntl(j->sock, F_SETFL, (fl < 0 ? 0 : fl) | O_NONBLOCK);
  if (!ps->bound) { /* the probe must name our source port: bind first */
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = (sa_family_t)ps->family;
    (void)real.bind(j->sock, (struct sockaddr *)&any, family_len(ps->family));
  }
  memset(&local, 0, sizeof(local));
  if (real.getsockname(j->sock, (struct sockaddr *)&local, &llen) == 0 && may_probe &&
      crypto_random(nonce, sizeof(nonce)) == 0) {
    struct ipport lp;
    u = real.socket(j->dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u >= 0 && ipport_from((struct sockaddr *)&local, &lp) && lp.port != 0) {
      if (ps->bound) { /* same source address as the TCP connection */
        struct sockaddr_storage a = local;
        if (a.ss_family == AF_INET)
          ((struct sockaddr_in *)&a)->sin_port = 0;
        else
          ((struct sockaddr_in6 *)&a)->sin6_port = 0;
        (void)real.bind(u, (struct sockaddr *)&a, llen);
      }
      if (real.connect(u, (struct sockaddr *)&j->dst, j->dstlen) == 0) {
        send_probe(u, PROBE_ASK, lp.port, nonce);
        probe = P_WAIT;
      }
    }
  }

  uint64_t t0 = now_ns(), deadline = 0;
  bool done = false, last = false;
  if (real.connect(j->sock, (struct sockaddr *)&j->dst, j->dstlen) == 0) {
    done = true;
  } else if (errno != EINPROGRESS) {
    err = errno;
    goto out;
  }
  if (done)
    deadline = now_ns() + answer_wait_ns(kind, 0);
  while (!done || probe == P_WAIT) {
    struct pollfd p[3] = {{.fd = done ? -1 : j->sock, .events = POLLOUT},
                          {.fd = probe == P_WAIT ? u : -1, .events = POLLIN},
                          {.fd = j->abort_fd, .events = POLLIN}};
    struct timespec ts, *timeout = NULL;
    if (done) {
      /* Past the deadline, one last look at what has arrived. */
      uint64_t now = now_ns(), left = now >= deadline ? 0 : deadline - now;
      last = left == 0;
      ts.tv_sec = (time_t)(left / 1000000000);
      ts.tv_nsec = (long)(left % 1000000000);
      timeout = &ts;
    }
    if (real.ppoll(p, 3, timeout, NULL) < 0 && errno != EINTR) {
      err = errno;
      goto out;
    }
    if (p[2].revents) {
      err = ECANCELED; /* the program closed it */
      goto out;
    }
    if (p[0].revents) {
      socklen_t len = sizeof(err);
      if (real.getsockopt(j->sock, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
      if (err && probe != P_NONE && (err == ECONNRESET || err == ECONNABORTED)) {
        /* Reset while connecting: if the server is tether's, the handshake
         * dials again (the program sees nothing); wait for the answer. */
        lost = err;
        err = 0;
      } else if (err) {
        goto out;
      }
      done = true;
      uint64_t now = now_ns();
      deadline = now + answer_wait_ns(kind, now - t0);
    }
    if (p[1].revents) {
      uint8_t dg[64];
      struct probe pr;
      ssize_t n = real.recv(u, dg, sizeof(dg), MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN && errno != EINTR)
        probe = P_REFUSED; /* ECONNREFUSED: nothing on that UDP port */
      else if (n > 0 && probe_decode(dg, (size_t)n, &pr) == 0 && pr.type == PROBE_YES &&
               memcmp(pr.nonce, nonce, 8) == 0)
        probe = P_YES;
    }
    if (last && !p[1].revents)
      break; /* no answer: plain */
  }
  if (lost && probe != P_YES)
    err = lost; /* plain TCP would have failed: so do we */
out:
  j->local = local;
  if (probe == P_WAIT || (err && probe == P_YES)) {
    struct ipport lp;
    if (ipport_from((struct sockaddr *)&local, &lp))
      send_probe(u, PROBE_CANCEL, lp.port, nonce); /* the server need not wait for us */
  }
  if (!err && probe != P_NONE)
    dest_set((struct sockaddr *)&j->dst, probe == P_YES ? DEST_TETHER : DEST_PLAIN);
  static const char *const known[] = {"unknown", "known plain", "known tether"};
  static const char *const outcome[] = {"not probed", "no answer", "tether", "refused"};
  struct tether_ctx *ctx = tp_ctx();
  if (ctx && !err)
    LOG_DEBUG(ctx, "probe to port %d (%s): %s; connected and decided in %" PRIu64 " us",
              (int)dp.port, known[kind], outcome[probe], (now_ns() - t0) / 1000);
  if (ctx && !err && probe == P_WAIT)
    dest_watch_late(ctx, u, (struct sockaddr *)&j->dst, j->dstlen, nonce); /* takes u */
  else if (u >= 0)
    real.close(u);
  *tether = !err && probe == P_YES;
  return err;
}

static bool transport_lost(int rc) {
  return rc == -ECONNRESET || rc == -ECONNABORTED || rc == -EPIPE || rc == -ENOTCONN ||
         rc == -EHOSTUNREACH || rc == -ENETUNREACH || rc == -ETIMEDOUT;
}

/* A new TCP connection to the server for another handshake attempt: from
 * the first one's local address, announced (as a redial is) so that the
 * server takes it for tether's.  A connecting socket, or -1. */
static int redial(struct cjob *j, bool *connecting) {
  struct sockaddr_storage a = j->local;
  socklen_t alen = j->dst.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (a.ss_family == AF_INET)
    ((struct sockaddr_in *)&a)->sin_port = 0;
  else if (a.ss_family == AF_INET6)
    ((struct sockaddr_in6 *)&a)->sin6_port = 0;
  else
    memset(&a, 0, sizeof(a)), a.ss_family = j->dst.ss_family;
  int fd = real.socket(j->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct ipport me;
  socklen_t len = sizeof(a);
  if (real.bind(fd, (struct sockaddr *)&a, alen) < 0 ||
      real.getsockname(fd, (struct sockaddr *)&a, &len) < 0 || !ipport_from((struct sockaddr *)&a, &me)) {
    real.close(fd);
    return -1;
  }
  int u = real.socket(j->dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (u >= 0 && real.connect(u, (struct sockaddr *)&j->dst, j->dstlen) == 0) {
    uint8_t nonce[8] = {0};
    if (crypto_random(nonce, sizeof(nonce)) < 0)
      memset(nonce, 0, sizeof(nonce)); /* the nonce only pairs answers to asks */
    for (int i = 0; i < 2; i++) /* twice: as a redial does */
      send_probe(u, PROBE_ANNOUNCE, me.port, nonce);
  }
  if (u >= 0)
    real.close(u);
  *connecting = false;
  if (real.connect(fd, (struct sockaddr *)&j->dst, j->dstlen) < 0) {
    if (errno != EINPROGRESS) {
      real.close(fd);
      return -1;
    }
    *connecting = true;
  }
  return fd;
}

/* Runs the new-session handshake on j->sock (consumed).  A connection lost
 * during the handshake (the server had no session yet) is dialled again
 * until connect_timeout_ms: the program never saw it. */
static int handshake(struct cjob *j) {
  struct tether_ctx *ctx = tp_ctx();
  int rc;
  if (!ctx)
    return ECONNREFUSED;
  if (ensure_udp(ctx, j->dst.ss_family) < 0)
    LOG_WARN(ctx, "no side channel for this address family; using TCP signals only");
  struct hs_conn *h = hs_conn_new(ctx, HS_CLIENT_NEW, j->sock);
  if (!h)
    return ENOMEM;
  j->sock = -1;
  memcpy(&h->peer, &j->dst, j->dstlen);
  h->peer_len = j->dstlen;
  uint64_t deadline = now_ns() + (uint64_t)ctx->cfg.connect_timeout_ms * 1000000;
  int attempts = 1;
  for (;;) {
    rc = hs_conn_advance(h);
    if (rc == HS_DONE)
      break;
    uint64_t now = now_ns();
    if (rc < 0) {
      bool again;
      int fd;
      if (!transport_lost(rc) || now >= deadline || attempts >= 8 ||
          (fd = redial(j, &again)) < 0)
        break;
      LOG_DEBUG(ctx, "tether handshake: connection lost (%s): dialling again", h->why ? h->why : "");
      hs_conn_free(h);
      if (!(h = hs_conn_new(ctx, HS_CLIENT_NEW, fd))) {
        real.close(fd);
        return ENOMEM;
      }
      h->connecting = again;
      memcpy(&h->peer, &j->dst, j->dstlen);
      h->peer_len = j->dstlen;
      attempts++;
      rc = again ? HS_WANT_WRITE : HS_WANT_READ;
      if (!again)
        continue;
    }
    if (now >= deadline) {
      rc = -ETIMEDOUT;
      h->why = "handshake timed out";
      break;
    }
    struct pollfd p[2] = {{.fd = h->fd, .events = rc == HS_WANT_READ ? POLLIN : POLLOUT},
                          {.fd = j->abort_fd, .events = POLLIN}};
    (void)real.poll(p, 2, (int)((deadline - now) / 1000000) + 1);
    if (p[1].revents) {
      rc = -ECANCELED;
      h->why = "closed by the program";
      break;
    }
  }
  if (rc == HS_DONE) {
    j->s = session_new(ctx, h, true, false);
    if (j->s)
      h->fd = -1; /* the session owns the socket */
    rc = j->s ? 0 : -ENOMEM;
  } else {
    char addr[64];
    if (rc == -ECANCELED) /* the program closed it: nothing went wrong */
      LOG_DEBUG(ctx, "tether handshake with %s: %s",
                sock_addr_str((struct sockaddr *)&j->dst, addr, sizeof(addr)), h->why);
    else
      LOG_WARN(ctx, "tether handshake with %s failed: %s (%s)",
               sock_addr_str((struct sockaddr *)&j->dst, addr, sizeof(addr)), tether_strerror(rc),
               h->why ? h->why : "");
  }
  hs_conn_free(h);
  if (rc == 0)
    return 0;
  return rc == -ETIMEDOUT ? ETIMEDOUT : rc == -ECANCELED ? ECANCELED : ECONNRESET;
}

static void run(struct cjob *j) {
  bool tether;
  j->err = probe_and_connect(j, &tether);
  if (!j->err && tether)
    j->err = handshake(j);
}

/* Installs the outcome on the program's numbers.  A session is started
 * before the program can see it (the engine's first transition may come at
 * once: its hook takes ps->lock, so the start happens without it). */
static void finish(struct cjob *j) {
  struct psock *ps = j->ps;
  pthread_mutex_lock(&ps->lock);
  if (j->abort_fd >= 0) {
    real.close(j->abort_fd);
    ps->abort_efd = j->abort_fd = -1;
  }
  if (ps->closed) { /* the program closed it meanwhile */
    if (j->s)
      session_destroy(j->s);
    if (j->sock >= 0)
      real.close(j->sock);
    if (ps->placeholder_w >= 0)
      real.close(ps->placeholder_w);
    pthread_mutex_unlock(&ps->lock);
    ps_free(ps);
    free(j);
    return;
  }
  if (j->s) {
    struct tether_session *s = j->s;
    int q = s->app_fd;
    tp_session_attach_hooks(ps, s);
    /* Before the swap, which makes the number writable: see
     * pc_wait_connected(). */
    __atomic_store_n(&ps->s, s, __ATOMIC_RELEASE);
    ps_swap(ps, s->sock);
    real.close(q);
    s->app_fd = ps->naliases ? ps->aliases[0] : -1;
    ps->local_len = sizeof(ps->local);
    (void)real.getsockname(s->sock, (struct sockaddr *)&ps->local, &ps->local_len);
    pthread_mutex_unlock(&ps->lock); /* still PS_CONNECTING for the program */
    if (session_start(s) < 0)
      LOG_ERR(s->ctx, "cannot start a session");
    pthread_mutex_lock(&ps->lock);
    if (ps->closed) { /* every number closed while it started */
      if (ps->placeholder_w >= 0)
        real.close(ps->placeholder_w);
      pthread_mutex_unlock(&ps->lock);
      session_lock(s);
      s->app_fd = -1;
      s->app_fd_hook = NULL;
      session_unlock(s);
      tether_close(s);
      ps_free(ps);
      free(j);
      return;
    }
    ps->kind = PS_SESSION;
  } else {
    /* The kind first: the program's own close-on-exec flags come back with
     * the swap (ps_exec_hidden). */
    if (j->err) {
      ps->conn_err = j->err;
      ps->kind = PS_FAILED;
    } else {
      ps->kind = PS_PLAIN;
    }
    int sock = j->sock;
    if (sock < 0) /* the handshake consumed it: stand in an unconnected socket */
      sock = real.socket(ps->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock >= 0) {
      int fl = real.fcntl(sock, F_GETFL);
      if (fl >= 0)
        (void)real.fcntl(sock, F_SETFL, ps->nonblock ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
      if (j->async || j->sock < 0)
        ps_swap(ps, sock);
      real.close(sock);
    }
    j->sock = -1;
  }
  if (ps->placeholder_w >= 0) { /* wakes pollers of the placeholder */
    real.close(ps->placeholder_w);
    ps->placeholder_w = -1;
  }
  pthread_mutex_unlock(&ps->lock);
  free(j);
}

static void *runner(void *arg) {
  struct cjob *j = arg;
  run(j);
  finish(j);
  return NULL;
}

/* A socket set for signal-driven I/O (O_ASYNC) before it connects stays
 * plain: a session could not send its SIGIO (tether(7), PRELOAD). */
static bool async_io(int fd) {
  int fl = real.fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_ASYNC);
}

int pc_connect(struct psock *ps, int fd, const struct sockaddr *sa, socklen_t len) {
  struct tether_ctx *ctx = NULL;
  if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || len > sizeof(struct sockaddr_storage) ||
      excluded(sa) || pl_own_listener(sa) || async_io(fd) || !(ctx = tp_ctx())) {
    ps->kind = PS_PLAIN;
    return real.connect(fd, sa, len);
  }
  struct cjob *j = calloc(1, sizeof(*j));
  if (!j) {
    errno = ENOMEM;
    return -1;
  }
  j->ps = ps;
  j->abort_fd = -1;
  memcpy(&j->dst, sa, len);
  j->dstlen = len;
  j->sock = real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (j->sock < 0) {
    free(j);
    return -1;
  }
  pthread_mutex_lock(&ps->lock);
  memcpy(&ps->peer, sa, len);
  ps->peer_len = len;
  ps->kind = PS_CONNECTING;
  if (ps->nonblock) {
    int p[2];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd >= 0 && pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
      ps_swap(ps, p[0]);
      real.close(p[0]);
      ps->placeholder_w = p[1];
      ps->abort_efd = j->abort_fd = efd;
      j->async = true;
    } else if (efd >= 0) {
      real.close(efd);
    }
  }
  pthread_mutex_unlock(&ps->lock);
  if (j->async) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* a connect and a handshake */
    TP_ENTER();
    int rc = pthread_create(&th, &attr, runner, j); /* ours: the thread runs inside tether */
    TP_LEAVE();
    pthread_attr_destroy(&attr);
    if (rc == 0) {
      errno = EINPROGRESS;
      return -1;
    }
  }
  TP_ENTER();
  tp_signals_now++; /* it sleeps holding no lock: handlers run at once */
  run(j);
  tp_signals_now--;
  int err = j->err;
  finish(j);
  TP_LEAVE();
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

int pc_wait_connected(struct psock *ps, int fd, bool nonblock) {
  while (__atomic_load_n(&ps->kind, __ATOMIC_ACQUIRE) == PS_CONNECTING) {
    /* Once the session's socket is under the number (finish()), the
     * number polls writable, and a program that asks again after POLLOUT
     * (APR does) must hear EISCONN, not EALREADY: only the session's start
     * is left, which takes no round trip.  Waited for, briefly. */
    if (nonblock && !__atomic_load_n(&ps->s, __ATOMIC_ACQUIRE))
      return -EAGAIN;
    int rc = tp_wait(fd, POLLIN | POLLOUT, 50);
    if (rc == -EINTR && !tp_restart_after_eintr())
      return -EINTR;
  }
  return 0;
}
