/* The accepting side: listeners, their accept queues, and the server half of
 * every handshake (new sessions and resumes), all in the engine thread so a
 * slow or hostile client never stalls anyone. */
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "engine.h"

static void on_accept(evutil_socket_t fd, short what, void *arg) {
  struct tether_listener *l = arg;
  struct tether_ctx *ctx = l->ctx;
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    uint64_t wait_ns;
    if (!hs_table_room(ctx, &wait_ns)) {
      /* Every slot is taken by a handshake still making progress: the
       * connection waits in the kernel's backlog rather than be refused. */
      accept_gate_wait_room(&l->gate, wait_ns);
      return;
    }
    int c = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (accept_gate_failed(&l->gate, errno))
        continue;
      return;
    }
    accept_gate_ok(&l->gate);
    int one = 1;
    (void)setsockopt(c, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
    struct hs_conn *h = hs_conn_new(ctx, HS_SERVER, c);
    if (!h) {
      close(c);
      continue;
    }
    h->listener = l;
    memcpy(&h->peer, &peer, len);
    h->peer_len = len;
    if (hs_conn_start_async(h, ctx->cfg.connect_timeout_ms) < 0)
      hs_conn_free(h); /* logged */
  }
}

/* ---- the accept queue's bound ---- */

bool listener_has_room_locked(const struct tether_listener *l) {
  return listener_closed(l) || l->queued + l->reserved < l->ctx->cfg.accept_backlog;
}

bool listener_reserve(struct hs_conn *h) {
  struct tether_listener *l = h->listener;
  if (!l || h->slot.reserved)
    return true;
  pthread_mutex_lock(&l->ctx->lock);
  bool room = listener_has_room_locked(l);
  if (room && !listener_closed(l)) {
    l->reserved++;
    h->slot.reserved = true;
  }
  pthread_mutex_unlock(&l->ctx->lock);
  return room;
}

static void give_back(struct tether_listener *l) {
  pthread_mutex_lock(&l->ctx->lock);
  l->reserved--;
  hs_table_room_freed_locked(l->ctx);
  pthread_mutex_unlock(&l->ctx->lock);
}

void listener_unreserve(struct hs_conn *h) {
  h->slot.reserved = false;
  give_back(h->listener);
}

/* ---- sessions that never confirm ---- */

/* Engine thread: if s is still in an accept queue, takes it out (with the
 * wake-up it queued) and returns true: nobody else holds it then. */
static bool unqueue(struct tether_session *s) {
  struct tether_ctx *ctx = s->ctx;
  uint64_t v;
  pthread_mutex_lock(&ctx->lock);
  struct tether_listener *l = s->queued_on;
  if (l) {
    struct tether_session *prev = NULL;
    for (struct tether_session *q = l->queue_head; q && q != s; q = q->queue_next)
      prev = q;
    if (prev)
      prev->queue_next = s->queue_next;
    else
      l->queue_head = s->queue_next;
    if (l->queue_tail == s)
      l->queue_tail = prev;
    s->queue_next = NULL;
    s->queued_on = NULL;
    l->queued--;
    /* One count fewer (an acceptor that already took it finds the queue
     * shorter, and looks again). */
    (void)!read(l->ready_fd, &v, sizeof(v));
    hs_table_room_freed_locked(ctx);
  }
  pthread_mutex_unlock(&ctx->lock);
  return l != NULL;
}

/* Server, no pre-shared key: connect_timeout_ms after setup the client's
 * ClientFinish must have arrived, whether or not the application has read
 * yet: the engine takes it now if it is there.  A session without one is
 * dropped -- still queued, it goes unseen; accepted, it fails with
 * TETHER_EAUTH -- so that a client holding a connection open without ever
 * confirming its keys cannot hold a session (and a place in the accept
 * queue) for longer. */
static void on_confirm_due(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  char tag[17];
  pthread_mutex_lock(&s->rx_lock);
  if (session_finish_due(s))
    (void)session_take_finish_locked(s);
  bool missing = session_finish_due(s);
  pthread_mutex_unlock(&s->rx_lock);
  if (!missing)
    return;
  bool queued = unqueue(s);
  LOG_INFO(s->ctx, "session %s: no ClientFinish within connect_timeout_ms: %s",
           session_tag(s->id, tag), queued ? "dropped before accept" : "failed");
  session_fail(s, TETHER_EAUTH);
  if (queued)
    tether_close(s); /* the engine frees it */
}

static int expect_finish_by(struct tether_session *s) {
  uint64_t ms = s->ctx->cfg.connect_timeout_ms;
  struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
  s->confirm_ev = engine_event_new(s->ctx, ENGINE_PRIO_BULK, -1, 0, on_confirm_due, s);
  if (!s->confirm_ev)
    return -ENOMEM;
  return evtimer_add(s->confirm_ev, &tv);
}

void listener_handshake_done(struct hs_conn *h, int rc) {
  struct tether_ctx *ctx = h->ctx;
  struct tether_listener *l = h->listener;
  char addr[64], tag[17];
  sock_addr_str((struct sockaddr *)&h->peer, addr, sizeof(addr));
  if (rc < 0) {
    /* (A flood of garbage must not flood the log too.) */
    if (rc == -ECONNRESET || rc == -ETIMEDOUT || rc == -ESTALE)
      LOG_INFO(ctx, "handshake from %s refused: %s (%s)", addr, tether_strerror(rc),
               h->why ? h->why : "");
    else
      tlog_limited(ctx, &ctx->hst.fail_log, TETHER_LOG_WARN, "handshake from %s refused: %s (%s)",
                   addr, tether_strerror(rc), h->why ? h->why : "");
    hs_conn_free(h);
    return;
  }
  if (h->session) {
    session_attach(h->session, h);
    hs_conn_free(h);
    return;
  }
  bool async = l->accept_cb != NULL;
  struct tether_session *s = session_new(ctx, h, false, async);
  if (!s) {
    LOG_ERR(ctx, "out of memory for a new session from %s", addr);
    hs_conn_free(h);
    return;
  }
  h->fd = -1; /* the session owns the socket now */
  if (h->finish_later && (session_expect_finish(s, h) < 0 || expect_finish_by(s) < 0)) {
    hs_conn_free(h);
    session_destroy(s);
    return;
  }
  bool reserved = h->slot.reserved;
  h->slot.reserved = false; /* the session takes its place */
  hs_conn_free(h);
  if (session_start(s) < 0) {
    if (reserved)
      give_back(l);
    session_destroy(s);
    return;
  }
  LOG_INFO(ctx, "session %s: accepted from %s", session_tag(s->id, tag), addr);
  if (!async) {
    listener_enqueue(l, s, reserved);
    return;
  }
  /* The application's loop takes it at once: no queue to hold a place in. */
  if (reserved)
    give_back(l);
  if (listener_closed(l) || async_attach(s) < 0) {
    session_close(s);
    return;
  }
  l->accept_cb(l, s, l->accept_arg);
}

int tether_listener_set_accept_cb(tether_listener *l, tether_accept_cb cb, void *arg) {
  if (!l || l->ctx->own_base)
    return -EINVAL;
  l->accept_cb = cb;
  l->accept_arg = arg;
  return 0;
}

void listener_enqueue(struct tether_listener *l, struct tether_session *s, bool reserved) {
  uint64_t one = 1;
  pthread_mutex_lock(&l->ctx->lock);
  if (reserved)
    l->reserved--;
  bool closed = listener_closed(l);
  if (!closed) {
    if (l->queue_tail)
      l->queue_tail->queue_next = s;
    else
      l->queue_head = s;
    l->queue_tail = s;
    s->queued_on = l;
    l->queued++;
  }
  pthread_mutex_unlock(&l->ctx->lock);
  if (closed) { /* set up while the listener closed: as its queue did */
    tether_close(s);
    return;
  }
  (void)!write(l->ready_fd, &one, sizeof(one));
}

int listener_resume_authenticated(struct hs_conn *h, struct core_resume_state *ours) {
  struct tether_session *s = h->session;
  int rc = 0;
  session_lock(s);
  if (s->core.state == CORE_FAILED) {
    /* Irreconcilable streams are told as such; other failures as gone. */
    rc = s->core.error == TETHER_EDIVERGED || s->core.error == TETHER_EWINDOW
             ? s->core.error
             : TETHER_ESESSIONGONE;
  } else {
    if (s->core.state == CORE_CONNECTED)
      session_suspend_locked(s, now_ns(), "peer reconnected");
    session_retire_locked(s);
    core_resume_state(&s->core, ours);
  }
  session_unlock(s);
  return rc;
}

int listener_open(tether_ctx *ctx, const char *host, const char *port, bool start,
                  tether_listener **out) {
  struct addrinfo *ai = NULL;
  int rc, fd = -1;
  if (!ctx || !port || !out)
    return -EINVAL;
  *out = NULL;
  if ((rc = sock_resolve(host, port, true, &ai)) < 0)
    return rc;
  /* Prefer IPv6 for a wildcard: one dual-stack socket serves both. */
  struct addrinfo *a = ai;
  if (!host || !*host)
    for (struct addrinfo *b = ai; b; b = b->ai_next)
      if (b->ai_family == AF_INET6) {
        a = b;
        break;
      }
  struct tether_listener *l = calloc(1, sizeof(*l));
  if (!l) {
    rc = -ENOMEM;
    goto out;
  }
  l->ctx = ctx;
  l->fd = l->ready_fd = -1;
  fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    rc = -errno;
    goto out;
  }
  int one = 1, zero = 0;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (a->ai_family == AF_INET6)
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  /* Every client speaks first, so wake the engine once per connection, when
   * its first handshake bytes are in, rather than at the SYN and again at
   * the data. */
  int defer_s = (int)(ctx->cfg.connect_timeout_ms / 1000) + 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof(defer_s));
  if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
    rc = -errno;
    goto out;
  }
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  if (getsockname(fd, (struct sockaddr *)&bound, &blen) < 0) {
    rc = -errno;
    goto out;
  }
  l->port = ntohs(a->ai_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                          : ((struct sockaddr_in6 *)&bound)->sin6_port);
  l->fd = fd;
  fd = -1;
  /* The side channel takes the same port number, on UDP. */
  l->udp = udp_open(ctx, a->ai_family, (struct sockaddr *)&bound, blen);
  if (!l->udp)
    LOG_WARN(ctx, "UDP port %d unavailable: sessions of this listener detect failures from "
             "TCP signals only", l->port);
  l->ready_fd = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
  l->ev = engine_event_new(ctx, ENGINE_PRIO_BULK, l->fd, EV_READ | EV_PERSIST, on_accept, l);
  if (l->ready_fd < 0 || !l->ev || accept_gate_init(&l->gate, ctx, l->ev) < 0) {
    rc = -ENOMEM;
    goto out;
  }
  pthread_mutex_lock(&ctx->lock);
  l->next = ctx->listeners;
  ctx->listeners = l;
  pthread_mutex_unlock(&ctx->lock);
  if (start)
    listener_start(l);
  char addr[64];
  LOG_INFO(ctx, "listening on %s", sock_addr_str((struct sockaddr *)&bound, addr, sizeof(addr)));
  *out = l;
  l = NULL;
  rc = 0;
out:
  if (fd >= 0)
    close(fd);
  if (l) {
    accept_gate_clear(&l->gate);
    if (l->ev)
      event_free(l->ev);
    if (l->udp)
      udp_close(l->udp);
    if (l->fd >= 0)
      close(l->fd);
    if (l->ready_fd >= 0)
      close(l->ready_fd);
    free(l);
  }
  freeaddrinfo(ai);
  return rc;
}

void listener_start(struct tether_listener *l) { event_add(l->ev, NULL); }

int tether_listen(tether_ctx *ctx, const char *host, const char *port, tether_listener **out) {
  return listener_open(ctx, host, port, true, out);
}

int tether_listener_port(const tether_listener *l) { return l ? l->port : -EINVAL; }
int tether_listener_fd(const tether_listener *l) { return l ? l->ready_fd : -EINVAL; }

int tether_listener_set_nonblocking(tether_listener *l, int on) {
  if (!l)
    return -EINVAL;
  l->nonblocking = on != 0;
  return 0;
}

int tether_accept(tether_listener *l, tether_session **out) {
  if (!l || !out || l->accept_cb)
    return -EINVAL;
  for (;;) {
    uint64_t v;
    if (listener_closed(l)) /* tether_listener_close: any thread */
      return TETHER_ECLOSED;
    if (read(l->ready_fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
      pthread_mutex_lock(&l->ctx->lock);
      struct tether_session *s = l->queue_head;
      if (!s) { /* the wake-up of tether_listener_close() */
        pthread_mutex_unlock(&l->ctx->lock);
        continue;
      }
      l->queue_head = s->queue_next;
      if (!l->queue_head)
        l->queue_tail = NULL;
      s->queue_next = NULL;
      s->queued_on = NULL;
      l->queued--;
      hs_table_room_freed_locked(l->ctx); /* parked setups may go on */
      pthread_mutex_unlock(&l->ctx->lock);
      *out = s;
      return 0;
    }
    if (errno != EAGAIN && errno != EINTR)
      return -errno;
    if (l->nonblocking)
      return -EAGAIN;
    struct pollfd p = {.fd = l->ready_fd, .events = POLLIN};
    if (poll(&p, 1, -1) < 0 && errno == EINTR)
      return -EINTR;
  }
}

void tether_listener_close(tether_listener *l) {
  /* The listening socket stays open until the context ends: suspended
   * sessions redial it.  New sessions are refused from now on. */
  uint64_t one = 1;
  if (!l)
    return;
  __atomic_store_n(&l->closed, true, __ATOMIC_RELEASE);
  /* Sessions nobody accepted end now, closed, rather than idle forever. */
  pthread_mutex_lock(&l->ctx->lock);
  struct tether_session *q = l->queue_head;
  l->queue_head = l->queue_tail = NULL;
  l->queued = 0;
  for (struct tether_session *s = q; s; s = s->queue_next)
    s->queued_on = NULL;
  hs_table_room_freed_locked(l->ctx); /* parked setups are refused now */
  pthread_mutex_unlock(&l->ctx->lock);
  while (q) {
    struct tether_session *next = q->queue_next;
    tether_close(q);
    q = next;
  }
  (void)!write(l->ready_fd, &one, sizeof(one)); /* wake blocked acceptors */
}

void listener_free(struct tether_listener *l) {
  accept_gate_clear(&l->gate);
  if (l->ev)
    event_free(l->ev);
  if (l->udp)
    udp_close(l->udp);
  close(l->fd);
  close(l->ready_fd);
  free(l);
}
