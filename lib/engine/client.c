/* The connecting side: tether_connect() (blocking, in the caller's thread),
 * tether_connect_async() (on the application's loop) and redials of
 * suspended sessions (non-blocking, in the engine). */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine.h"

/* The side channel for sessions this side connects, one per address family. */
/* The context's side-channel socket for sessions it connects, opened on
 * first use; NULL if that fails. */
struct udp_chan *client_udp(struct tether_ctx *ctx, int family) {
  struct udp_chan **slot = family == AF_INET6 ? &ctx->udp6 : &ctx->udp4;
  pthread_mutex_lock(&ctx->lock);
  if (!*slot) {
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = (sa_family_t)family;
    *slot = udp_open(ctx, family, (struct sockaddr *)&any,
                     family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  }
  struct udp_chan *u = *slot;
  pthread_mutex_unlock(&ctx->lock);
  return u;
}

static int open_connecting(const struct sockaddr *sa, socklen_t len, bool *connecting,
                           struct tether_session *redial) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0)
    return -errno;
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
  if (redial && redial->ctx->redial_hook)
    redial->ctx->redial_hook(redial, fd);
  *connecting = false;
  if (connect(fd, sa, len) < 0) {
    if (errno != EINPROGRESS) {
      int err = errno;
      close(fd);
      return -err;
    }
    *connecting = true;
  }
  return fd;
}

static int64_t ms_left(uint64_t deadline) {
  uint64_t now = now_ns();
  return now >= deadline ? 0 : (int64_t)((deadline - now) / 1000000) + 1;
}

/* A connect() to a, and the handshake that will set a new session up over
 * it (not started); NULL and *rc when either fails. */
static struct hs_conn *dial(struct tether_ctx *ctx, const struct addrinfo *a, int *rc) {
  bool connecting;
  if (!client_udp(ctx, a->ai_family))
    LOG_WARN(ctx, "no side channel for this address family; using TCP signals only");
  int fd = open_connecting(a->ai_addr, a->ai_addrlen, &connecting, NULL);
  if (fd < 0) {
    *rc = fd;
    return NULL;
  }
  struct hs_conn *h = hs_conn_new(ctx, HS_CLIENT_NEW, fd);
  if (!h) {
    close(fd);
    *rc = -ENOMEM;
    return NULL;
  }
  h->connecting = connecting;
  memcpy(&h->peer, a->ai_addr, a->ai_addrlen);
  h->peer_len = a->ai_addrlen;
  return h;
}

/* A new session from h's finished handshake, started: 0 and *out, or a
 * negative code. */
static int connected(struct hs_conn *h, bool async, struct tether_session **out) {
  char tag[17], addr[64];
  struct tether_session *s = session_new(h->ctx, h, true, async);
  h->fd = s ? -1 : h->fd;
  int rc = s ? session_start(s) : -ENOMEM;
  if (rc < 0) {
    session_destroy(s);
    return rc;
  }
  LOG_INFO(h->ctx, "session %s: connected to %s", session_tag(s->id, tag),
           sock_addr_str((struct sockaddr *)&h->peer, addr, sizeof(addr)));
  *out = s;
  return 0;
}

/* Logs a failed setup with h; whether another address is worth a try
 * (only connection-level failures are). */
static bool connect_failed(const struct hs_conn *h, int rc) {
  char addr[64];
  LOG_INFO(h->ctx, "connect to %s failed: %s (%s)",
           sock_addr_str((const struct sockaddr *)&h->peer, addr, sizeof(addr)),
           tether_strerror(rc), h->why ? h->why : "");
  return rc == -ECONNREFUSED || rc == -ENETUNREACH || rc == -EHOSTUNREACH ||
         rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT;
}

/* Runs a client handshake to completion on the caller's thread. */
static int run_blocking(struct hs_conn *h, uint64_t deadline) {
  for (;;) {
    int rc = hs_conn_advance(h);
    if (rc == HS_DONE)
      return 0;
    if (rc < 0)
      return rc;
    struct pollfd p = {.fd = h->fd, .events = rc == HS_WANT_READ ? POLLIN : POLLOUT};
    int64_t left = ms_left(deadline);
    if (left <= 0) {
      h->why = "timed out";
      return -ETIMEDOUT;
    }
    if (poll(&p, 1, (int)(left > INT32_MAX ? INT32_MAX : left)) < 0 && errno != EINTR)
      return -errno;
  }
}

int tether_connect(tether_ctx *ctx, const char *host, const char *port, tether_session **out) {
  struct addrinfo *ai = NULL;
  int rc;
  if (!ctx || !port || !out)
    return -EINVAL;
  *out = NULL;
  if ((rc = sock_resolve(host, port, false, &ai)) < 0) {
    LOG_WARN(ctx, "cannot resolve %s:%s", host ? host : "", port);
    return rc;
  }
  uint64_t deadline = now_ns() + (uint64_t)ctx->cfg.connect_timeout_ms * 1000000;
  rc = -ECONNREFUSED;
  for (struct addrinfo *a = ai; a; a = a->ai_next) {
    struct hs_conn *h = dial(ctx, a, &rc);
    if (!h && rc == -ENOMEM)
      break;
    if (!h)
      continue;
    rc = run_blocking(h, deadline);
    if (rc == 0) {
      rc = connected(h, false, out);
      hs_conn_free(h);
      break;
    }
    bool next = connect_failed(h, rc);
    hs_conn_free(h);
    if (!next)
      break;
  }
  freeaddrinfo(ai);
  return rc;
}

/* ---- on the application's loop ---- */

struct connect_req {
  struct tether_ctx *ctx;
  struct addrinfo *ai, *next; /* the addresses, those not tried yet */
  uint64_t deadline;
  tether_connect_cb cb;
  void *arg;
};

/* Starts the handshake with the next address that takes a connect(): 0, or
 * the last error when none is left. */
static int connect_next(struct connect_req *r, int rc) {
  struct tether_ctx *ctx = r->ctx;
  while (r->next) {
    struct addrinfo *a = r->next;
    r->next = a->ai_next;
    struct hs_conn *h = dial(ctx, a, &rc);
    if (!h && rc == -ENOMEM)
      return rc;
    if (!h)
      continue;
    h->req = r;
    int64_t left = ms_left(r->deadline);
    if (left <= 0 || (rc = hs_conn_start_async(h, (uint64_t)left)) < 0) {
      hs_conn_free(h);
      return left <= 0 ? -ETIMEDOUT : rc;
    }
    return 0;
  }
  return rc;
}

static void connect_req_free(struct connect_req *r) {
  freeaddrinfo(r->ai);
  free(r);
}

int tether_connect_async(tether_ctx *ctx, const char *host, const char *port, tether_connect_cb cb,
                         void *arg) {
  int rc;
  if (!ctx || !port || !cb || ctx->own_base)
    return -EINVAL;
  struct connect_req *r = calloc(1, sizeof(*r));
  if (!r)
    return -ENOMEM;
  if ((rc = sock_resolve(host, port, false, &r->ai)) < 0) {
    LOG_WARN(ctx, "cannot resolve %s:%s", host ? host : "", port);
    free(r);
    return rc;
  }
  r->ctx = ctx;
  r->next = r->ai;
  r->deadline = now_ns() + (uint64_t)ctx->cfg.connect_timeout_ms * 1000000;
  r->cb = cb;
  r->arg = arg;
  if ((rc = connect_next(r, -ECONNREFUSED)) < 0)
    connect_req_free(r);
  return rc;
}

void client_connect_done(struct hs_conn *h, int rc) {
  struct connect_req *r = h->req;
  struct tether_session *s = NULL;
  if (rc == 0)
    rc = connected(h, true, &s);
  else if (connect_failed(h, rc) && (rc = connect_next(r, rc)) == 0) {
    hs_conn_free(h); /* another address is being tried */
    return;
  }
  hs_conn_free(h);
  if (rc == 0 && (rc = async_attach(s)) < 0) {
    session_close(s);
    s = NULL;
  }
  tether_connect_cb cb = r->cb;
  void *arg = r->arg;
  connect_req_free(r);
  cb(s, rc, arg);
}

void client_connect_drop(struct hs_conn *h) {
  if (h->req)
    connect_req_free(h->req);
  h->req = NULL;
}

/* ---- redial (engine thread) ---- */

static void drop_redial(struct tether_session *s, struct hs_conn *h) {
  for (int i = 0; i < 2; i++)
    if (s->redials[i] == h)
      s->redials[i] = NULL;
  if (s->redials[0] == NULL) {
    s->redials[0] = s->redials[1];
    s->redials[1] = NULL;
  }
  if (s->finishing == h)
    s->finishing = NULL;
}

void client_redial(struct tether_session *s) {
  struct tether_ctx *ctx = s->ctx;
  bool connecting;
  /* At most two attempts in flight: a new one replaces the oldest if that is
   * still stuck connecting (a lost SYN must not delay recovery once the path
   * heals); an attempt already past connect is left to finish. */
  if (s->redials[0] && s->redials[1]) {
    if (!s->redials[0]->connecting)
      return;
    struct hs_conn *old = s->redials[0];
    drop_redial(s, old);
    hs_conn_abort(old);
  }
  int fd = open_connecting((struct sockaddr *)&s->dial_addr, s->dial_len, &connecting, s);
  if (fd < 0) {
    LOG_DEBUG(ctx, "redial: %s", strerror(-fd));
    return;
  }
  struct hs_conn *h = hs_conn_new(ctx, HS_CLIENT_RESUME, fd);
  if (!h) {
    close(fd);
    return;
  }
  h->connecting = connecting;
  h->session = s;
  memcpy(&h->peer, &s->dial_addr, s->dial_len);
  h->peer_len = s->dial_len;
  if (hs_conn_start_async(h, ctx->cfg.connect_timeout_ms) < 0) {
    hs_conn_free(h);
    return;
  }
  s->redials[s->redials[0] ? 1 : 0] = h;
}

void client_redial_done(struct tether_session *s, struct hs_conn *h, int rc) {
  char tag[17];
  drop_redial(s, h);
  if (rc == 0) {
    for (int i = 0; i < 2; i++)
      if (s->redials[i]) {
        struct hs_conn *other = s->redials[i];
        drop_redial(s, other);
        hs_conn_abort(other);
        i = -1;
      }
    session_attach(s, h);
    hs_conn_free(h);
    return;
  }
  if (redial_err_final(rc)) {
    LOG_WARN(s->ctx, "session %s: server refused to resume: %s", session_tag(s->id, tag),
             tether_strerror(rc));
    session_fail(s, rc);
  } else if (rc == -ESTALE) {
    /* Our numbers are behind what the server saw: we were restored again
     * from a snapshot that an earlier run of ours had resumed from. */
    LOG_INFO(s->ctx, "session %s: the server has seen newer resumes; redialling in a new epoch",
             session_tag(s->id, tag));
    session_lock(s);
    core_resume_refused_stale(&s->core);
    session_unlock(s);
  } else if (rc == TETHER_EAUTH) {
    LOG_WARN(s->ctx, "session %s: redial failed authentication: %s; retrying",
             session_tag(s->id, tag), h->why ? h->why : "");
  } else {
    LOG_DEBUG(s->ctx, "session %s: redial failed: %s (%s)", session_tag(s->id, tag),
              tether_strerror(rc), h->why ? h->why : "");
  }
  hs_conn_free(h);
}
