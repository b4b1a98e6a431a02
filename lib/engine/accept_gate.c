/* Accepting from a listening socket without spinning.  A listening socket
 * stays readable while connections wait, so an accept() that keeps failing
 * for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) would
 * have a level-triggered event call it again at once, forever.  Instead the
 * gate stops watching the socket for a while -- 10 ms, doubling up to 1 s,
 * back to 10 ms after a success -- and logs at most once a second.  The
 * connections wait in the kernel's backlog meanwhile.  The same pause serves
 * the handshake table (hs_table.c): while it has no slot, connections wait
 * there too, until a slot frees or a handshake stalls long enough to be
 * evicted. */
#include <errno.h>
#include <string.h>

#include <event2/event.h>

#include "engine.h"

#define BACKOFF_FIRST_MS 10
#define BACKOFF_MAX_MS 1000

static void pause_for(struct accept_gate *g, uint64_t ns);

static void on_retry(evutil_socket_t fd, short what, void *arg) {
  struct accept_gate *g = arg;
  if (!g->paused)
    return;
  g->paused = false;
  g->wait_room = false;
  if (event_add(g->accept_ev, NULL) < 0) {
    /* Not watching the socket now would leave it unwatched for good, its
     * connections waiting in the backlog forever: try again shortly. */
    tlog_limited(g->ctx, &g->log, TETHER_LOG_WARN,
                 "accept: cannot watch the listening socket (%s); trying again in %u ms",
                 strerror(errno), BACKOFF_FIRST_MS);
    pause_for(g, (uint64_t)BACKOFF_FIRST_MS * 1000000);
    return;
  }
  event_active(g->accept_ev, EV_READ, 0); /* try at once */
}

int accept_gate_init(struct accept_gate *g, struct tether_ctx *ctx, struct event *accept_ev) {
  memset(g, 0, sizeof(*g));
  g->ctx = ctx;
  g->accept_ev = accept_ev;
  g->retry_ev = engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_retry, g);
  return g->retry_ev ? 0 : -ENOMEM;
}

void accept_gate_clear(struct accept_gate *g) {
  if (g->retry_ev)
    event_free(g->retry_ev);
  g->retry_ev = NULL;
}

static void pause_for(struct accept_gate *g, uint64_t ns) {
  struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000),
                       .tv_usec = (suseconds_t)(ns % 1000000000 / 1000)};
  event_del(g->accept_ev);
  g->paused = true;
  evtimer_add(g->retry_ev, &tv);
}

bool accept_gate_failed(struct accept_gate *g, int err) {
  switch (err) {
  case EAGAIN:
#if EWOULDBLOCK != EAGAIN
  case EWOULDBLOCK:
#endif
    return false; /* nothing more waiting */
  case EINTR:
  case ECONNABORTED:
  case EPERM: /* a firewall's verdict on one connection */
  case EPROTO:
  case ENETDOWN:
  case ENOPROTOOPT:
  case EHOSTDOWN:
  case ENONET:
  case EHOSTUNREACH:
  case ENETUNREACH:
  case EOPNOTSUPP:
    return true; /* that connection's problem: take the next */
  default:
    break;
  }
  /* Out of descriptors or memory, or something unexpected: trying again
   * at once would fail again. */
  g->backoff_ms = !g->backoff_ms ? BACKOFF_FIRST_MS
                  : g->backoff_ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS
                                                        : g->backoff_ms * 2;
  tlog_limited(g->ctx, &g->log, TETHER_LOG_WARN, "accept: %s; not accepting for %u ms",
               strerror(err), g->backoff_ms);
  pause_for(g, (uint64_t)g->backoff_ms * 1000000);
  return false;
}

void accept_gate_wait_room(struct accept_gate *g, uint64_t wait_ns) {
  if (wait_ns < 1000000)
    wait_ns = 1000000;
  g->wait_room = true;
  pause_for(g, wait_ns);
}

void accept_gate_room(struct accept_gate *g) {
  if (!g->paused || !g->wait_room)
    return;
  evtimer_del(g->retry_ev);
  on_retry(-1, 0, g);
}
