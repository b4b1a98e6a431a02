/* Sessions on the application's event loop (tether_ctx_new_base): the
 * engine's events and the application's share one libevent loop, and a
 * session's bytes move between its socket and two evbuffers, as with a
 * bufferevent.  Its only descriptor is the socket: no app fd, no pipes.
 *
 * Everything here runs on the loop's thread, which is also the engine's:
 * the session's locks are taken (tether_read/tether_write) but never
 * contended.  The application's callbacks run from events of their own
 * (never inside settle, never with a lock held), so they may call anything,
 * tether_close() included; after each, this code looks at whether the
 * application closed the session before it touches it again. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "engine.h"

/* The input buffer's default high watermark: a peer that writes faster than
 * the application reads is held back by TCP, not buffered here. */
#define ASYNC_READ_HIGH_DEFAULT (256 * 1024)
/* One recv() at most; the first of a turn reads into a small chunk, since
 * a turn often finds a few bytes (a request, a keystroke): 64 KiB for each
 * would cost a large allocation, mapped and unmapped, per read. */
#define ASYNC_READ_CHUNK (64 * 1024)
#define ASYNC_READ_FIRST 4096
/* Bytes read, or written, per session per turn of the loop.  A turn runs
 * every ready session's callbacks before the loop looks at its timers and
 * the side channel again, so this bounds how late heartbeats get with
 * thousands of busy sessions (one busy session still moves it every turn,
 * with an epoll_wait between). */
#define ASYNC_TURN_BYTES (64 * 1024)
/* Output chunks smaller than this are gathered (evbuffer_pullup) before a
 * write: one send per small piece would cost a system call each. */
#define ASYNC_GATHER (16 * 1024)
/* Notices queued for the event callback.  EOF, CLOSED, FAILED and
 * WRITE_FAILED come at most once each; the rest of the room is for
 * SUSPENDED and CONNECTED, of which the oldest give way when it is full. */
#define ASYNC_NOTICES 8

struct async_notice {
  tether_event ev;
  int err;
};

struct async_io {
  struct tether_session *s;
  struct evbuffer *in, *out;
  /* On the live socket: reading, and writing once the socket was full. */
  struct event *rd_ev, *wr_ev;
  int ev_sock; /* the socket they are assigned to; -1: none */
  struct event *work_ev; /* flush, notices, events in line with the state */
  short enabled;         /* TETHER_EV_READ / TETHER_EV_WRITE */
  size_t rd_low, rd_high, wr_low;
  tether_data_cb readcb, writecb;
  tether_event_cb eventcb;
  void *arg;
  /* OPEN: the application's.  CLOSING: closed by the application, still
   * writing its output (no callbacks).  CLOSED: handed to the engine. */
  enum { ASYNC_OPEN, ASYNC_CLOSING, ASYNC_CLOSED } phase;
  bool at_eof;    /* read the peer's end of stream */
  bool wr_failed; /* writing failed for good (told): output is dropped */
  bool shut_due;  /* tether_shutdown() once the output is written */
  bool sock_full; /* the last write would block on the socket */
  bool wait_room; /* ... on retention room: the engine's settle tells */
  tether_state told; /* the last state queued as a notice */
  struct async_notice notices[ASYNC_NOTICES];
  unsigned n_notices;
};

static void on_work(evutil_socket_t fd, short what, void *arg);

static void schedule(struct async_io *a) { event_active(a->work_ev, EV_WRITE, 0); }

static bool connected(const struct tether_session *s) {
  return s->core.state == CORE_CONNECTED && s->sock >= 0;
}

/* Whether the socket should be read now. */
static bool want_read(const struct async_io *a) {
  return a->phase == ASYNC_OPEN && (a->enabled & TETHER_EV_READ) && !a->at_eof &&
         (a->rd_high == 0 || evbuffer_get_length(a->in) < a->rd_high) && connected(a->s);
}

static bool want_write(const struct async_io *a) {
  return a->phase != ASYNC_CLOSED &&
         (a->phase == ASYNC_CLOSING || (a->enabled & TETHER_EV_WRITE)) &&
         evbuffer_get_length(a->out) > 0 && connected(a->s);
}

static void set_pending(struct event *ev, short what, bool on) {
  if (on == (event_pending(ev, what, NULL) != 0))
    return;
  if (on)
    event_add(ev, NULL);
  else
    event_del(ev);
}

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void on_writable(evutil_socket_t fd, short what, void *arg);

/* Bytes are bulk work: liveness comes first (engine_event_prio). */
static void data_prio(struct tether_session *s, struct event *ev) {
  engine_event_prio(s->ctx, ev, ENGINE_PRIO_BULK);
}

/* The socket events in line with the state: assigned to the live socket,
 * pending exactly while there is something to do there. */
static void sync_events(struct async_io *a) {
  struct tether_session *s = a->s;
  struct event_base *base = s->ctx->base;
  int sock = connected(s) ? s->sock : -1;
  if (sock != a->ev_sock) {
    event_del(a->rd_ev);
    event_del(a->wr_ev);
    if (sock >= 0) {
      event_assign(a->rd_ev, base, sock, EV_READ | EV_PERSIST, on_readable, s);
      event_assign(a->wr_ev, base, sock, EV_WRITE | EV_PERSIST, on_writable, s);
      data_prio(s, a->rd_ev);
      data_prio(s, a->wr_ev);
    }
    a->ev_sock = sock;
    a->sock_full = false; /* a new connection */
  }
  if (sock < 0)
    return;
  set_pending(a->rd_ev, EV_READ, want_read(a));
  set_pending(a->wr_ev, EV_WRITE, want_write(a) && a->sock_full);
}

static void notice(struct async_io *a, tether_event ev, int err) {
  if (a->n_notices == ASYNC_NOTICES) {
    unsigned i = 0;
    while (a->notices[i].ev != TETHER_EVENT_SUSPENDED && a->notices[i].ev != TETHER_EVENT_CONNECTED)
      i++; /* there is one: at most four notices are of the other kinds */
    memmove(a->notices + i, a->notices + i + 1, (--a->n_notices - i) * sizeof(a->notices[0]));
  }
  a->notices[a->n_notices++] = (struct async_notice){ev, err};
  schedule(a);
}

/* ---- reading ---- */

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  struct async_io *a = s->async;
  size_t before = evbuffer_get_length(a->in), turn = 0;
  uint8_t first[ASYNC_READ_FIRST];
  while (turn < ASYNC_TURN_BYTES && want_read(a)) {
    size_t want = turn ? ASYNC_READ_CHUNK : ASYNC_READ_FIRST, have = evbuffer_get_length(a->in);
    if (a->rd_high && a->rd_high - have < want)
      want = a->rd_high - have;
    /* The first read goes to the stack: a wake-up with nothing for the
     * application (a key confirmation, a replay checked) leaves no empty
     * chain behind in the input buffer -- 4 KiB for every idle session. */
    struct evbuffer_iovec v = {first, want};
    if (turn && evbuffer_reserve_space(a->in, (ev_ssize_t)want, &v, 1) < 1)
      break; /* out of memory: the socket stays readable, we come back */
    size_t len = v.iov_len < want ? v.iov_len : want;
    ssize_t n = tether_read(s, v.iov_base, len);
    v.iov_len = n > 0 ? (size_t)n : 0;
    if (turn) {
      evbuffer_commit_space(a->in, &v, 1);
    } else if (n > 0 && evbuffer_add(a->in, first, (size_t)n) < 0) {
      /* Counted as delivered, and nowhere to put them: the session cannot
       * keep its promise any more. */
      session_fail(s, -ENOMEM);
      break;
    }
    if (n > 0) {
      turn += (size_t)n;
      if ((size_t)n < len)
        break; /* the socket is empty: no recv() just to hear EAGAIN */
      continue;
    }
    if (n == 0) {
      a->at_eof = true;
      notice(a, TETHER_EVENT_EOF, 0);
    }
    break; /* -EAGAIN; a failure is told by the engine's settle */
  }
  sync_events(a);
  size_t have = evbuffer_get_length(a->in);
  if (have > before && have >= a->rd_low && a->readcb)
    a->readcb(s, a->arg);
}

/* The application took bytes from the input buffer: reading may go on. */
static void on_input_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info,
                             void *arg) {
  struct async_io *a = arg;
  if (info->n_deleted && a->rd_high && info->orig_size >= a->rd_high &&
      evbuffer_get_length(buf) < a->rd_high)
    schedule(a);
}

/* ---- writing ---- */

static bool sock_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* Writes from the output buffer as far as the session takes it. */
static void flush(struct async_io *a) {
  struct tether_session *s = a->s;
  size_t turn = 0;
  bool wrote = false;
  if (a->wr_failed) {
    evbuffer_drain(a->out, evbuffer_get_length(a->out));
    return;
  }
  while (want_write(a) && !a->wait_room) {
    if (turn >= ASYNC_TURN_BYTES) {
      schedule(a); /* the rest at the loop's next turn */
      break;
    }
    struct evbuffer_iovec v;
    if (evbuffer_peek(a->out, -1, NULL, &v, 1) < 1)
      break;
    size_t len = evbuffer_get_length(a->out);
    if (v.iov_len < ASYNC_GATHER && len > v.iov_len) {
      v.iov_len = len < ASYNC_READ_CHUNK ? len : ASYNC_READ_CHUNK;
      if (!(v.iov_base = evbuffer_pullup(a->out, (ev_ssize_t)v.iov_len)))
        break;
    }
    ssize_t n = tether_write(s, v.iov_base, v.iov_len);
    if (n > 0) {
      evbuffer_drain(a->out, (size_t)n);
      turn += (size_t)n;
      wrote = true;
      a->sock_full = false;
      continue;
    }
    if (n < 0 && n != -EAGAIN && s->core.state != CORE_FAILED) {
      /* This direction is over (the peer closed): what waits is dropped,
       * as plain TCP drops what it cannot deliver. */
      a->wr_failed = true;
      evbuffer_drain(a->out, evbuffer_get_length(a->out));
      notice(a, TETHER_EVENT_WRITE_FAILED, (int)n);
    }
    if (n == -EAGAIN && connected(s)) {
      /* Full retention with a writable socket: only an acknowledgement makes
       * room (a durable peer's commit), which the engine's settle reports. */
      if (core_write_room(&s->core) == 0 && sock_writable(s->sock))
        a->wait_room = true;
      else
        a->sock_full = true;
    }
    break; /* suspended (the resume schedules us), or failed (told) */
  }
  sync_events(a);
  if (wrote && a->phase == ASYNC_OPEN && a->writecb && evbuffer_get_length(a->out) <= a->wr_low)
    a->writecb(s, a->arg);
}

/* The socket takes bytes again: the work of on_work, whose shutdown or
 * close may have waited for just these. */
static void on_writable(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  s->async->sock_full = false;
  on_work(fd, what, arg);
}

/* The application added bytes: written at the loop's next turn (several
 * additions in one callback make one write). */
static void on_output_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info,
                              void *arg) {
  struct async_io *a = arg;
  if (info->n_added && a->phase != ASYNC_CLOSED)
    schedule(a);
}

/* ---- the state, and closing ---- */

/* CLOSING: the output is written, or never will be: the engine takes over. */
static void close_now(struct async_io *a) {
  a->phase = ASYNC_CLOSED;
  event_del(a->rd_ev);
  event_del(a->wr_ev);
  event_del(a->work_ev);
  evbuffer_drain(a->out, evbuffer_get_length(a->out));
  (void)session_close(a->s);
}

static void on_work(evutil_socket_t fd, short what, void *arg) {
  struct tether_session *s = arg;
  struct async_io *a = s->async;
  if (a->phase == ASYNC_CLOSED)
    return;
  sync_events(a);
  flush(a);
  if (a->shut_due && evbuffer_get_length(a->out) == 0) {
    a->shut_due = false;
    (void)session_shutdown(s); /* a failure is told as the state */
  }
  if (a->phase == ASYNC_CLOSING) {
    int st = s->core.state;
    if (evbuffer_get_length(a->out) == 0 || (st != CORE_CONNECTED && st != CORE_SUSPENDED))
      close_now(a);
    return;
  }
  /* Notices in order; the application may close the session in any. */
  while (a->phase == ASYNC_OPEN && a->n_notices > 0) {
    struct async_notice n = a->notices[0];
    memmove(a->notices, a->notices + 1, --a->n_notices * sizeof(a->notices[0]));
    if (a->eventcb)
      a->eventcb(s, n.ev, n.err, a->arg);
  }
}

void async_settle_locked(struct tether_session *s) {
  struct async_io *a = s->async;
  if (a->phase == ASYNC_CLOSED)
    return;
  tether_state st = (tether_state)s->core.state;
  if (st != a->told) {
    a->told = st;
    /* Closed before the reader saw the end of stream: every byte is in the
     * input buffer (delivered), so the end is told first. */
    if (st == TETHER_STATE_CLOSED && !a->at_eof && core_at_eof(&s->core)) {
      a->at_eof = true;
      notice(a, TETHER_EVENT_EOF, 0);
    }
    a->wait_room = false;
    notice(a, st == TETHER_STATE_CONNECTED   ? TETHER_EVENT_CONNECTED
              : st == TETHER_STATE_SUSPENDED ? TETHER_EVENT_SUSPENDED
              : st == TETHER_STATE_CLOSED    ? TETHER_EVENT_CLOSED
                                             : TETHER_EVENT_FAILED,
           st == TETHER_STATE_FAILED ? s->core.error : 0);
  }
  if (a->wait_room && s->sock >= 0)
    core_trim_inflight(&s->core, sock_outq(s->sock)); /* as tether_write would */
  if (a->wait_room && core_write_room(&s->core) > 0) {
    a->wait_room = false;
    schedule(a);
  }
  if ((connected(s) ? s->sock : -1) != a->ev_sock)
    schedule(a); /* resumed, or the socket was retired: events follow */
}

void async_forget_sock(struct tether_session *s, int fd) {
  struct async_io *a = s->async;
  if (a->ev_sock != fd)
    return;
  event_del(a->rd_ev);
  event_del(a->wr_ev);
  a->ev_sock = -1;
}

int async_close(struct tether_session *s) {
  struct async_io *a = s->async;
  if (a->phase != ASYNC_OPEN)
    return -EBADF;
  a->phase = ASYNC_CLOSING;
  a->readcb = a->writecb = NULL;
  a->eventcb = NULL;
  evbuffer_drain(a->in, evbuffer_get_length(a->in)); /* nobody will read them */
  if (evbuffer_get_length(a->out) == 0)
    close_now(a);
  else
    schedule(a);
  return 0;
}

int async_shutdown(struct tether_session *s) {
  struct async_io *a = s->async;
  if (a->phase != ASYNC_OPEN)
    return -EBADF;
  if (s->core.state == CORE_FAILED)
    return s->core.error;
  if (evbuffer_get_length(a->out) == 0)
    return session_shutdown(s);
  a->shut_due = true;
  schedule(a);
  return 0;
}

bool async_closing(const struct tether_session *s) {
  return s->async && s->async->phase == ASYNC_CLOSING;
}

bool async_buffered(const struct tether_session *s) {
  return s->async && s->async->phase != ASYNC_CLOSED &&
         (evbuffer_get_length(s->async->in) || evbuffer_get_length(s->async->out));
}

int async_attach(struct tether_session *s) {
  struct event_base *base = s->ctx->base;
  struct async_io *a = calloc(1, sizeof(*a));
  if (!a)
    return -ENOMEM;
  a->s = s;
  a->ev_sock = -1;
  a->enabled = TETHER_EV_READ | TETHER_EV_WRITE;
  a->rd_high = ASYNC_READ_HIGH_DEFAULT;
  a->told = TETHER_STATE_CONNECTED;
  a->in = evbuffer_new();
  a->out = evbuffer_new();
  a->rd_ev = event_new(base, -1, 0, on_readable, s);
  a->wr_ev = event_new(base, -1, 0, on_writable, s);
  a->work_ev = event_new(base, -1, 0, on_work, s);
  if (!a->in || !a->out || !a->rd_ev || !a->wr_ev || !a->work_ev ||
      !evbuffer_add_cb(a->in, on_input_changed, a) ||
      !evbuffer_add_cb(a->out, on_output_changed, a)) {
    s->async = a;
    async_free(s);
    return -ENOMEM;
  }
  data_prio(s, a->work_ev);
  session_lock(s);
  s->nonblocking = true;
  s->async = a;
  a->told = (tether_state)s->core.state;
  session_unlock(s);
  schedule(a); /* bytes may be waiting already */
  return 0;
}

void async_free(struct tether_session *s) {
  struct async_io *a = s->async;
  if (!a)
    return;
  s->async = NULL;
  if (a->rd_ev)
    event_free(a->rd_ev);
  if (a->wr_ev)
    event_free(a->wr_ev);
  if (a->work_ev)
    event_free(a->work_ev);
  if (a->in)
    evbuffer_free(a->in);
  if (a->out)
    evbuffer_free(a->out);
  free(a);
}

/* ---- the public calls ---- */

static struct async_io *open_async(tether_session *s) {
  return s && s->async && s->async->phase == ASYNC_OPEN ? s->async : NULL;
}

/* A session of a restored context on the loop (it has an app fd, which
 * nobody polls there) becomes a loop session. */
static int adopt(struct tether_session *s) {
  if (s->ctx->own_base || s->app_closed)
    return -EINVAL;
  session_lock(s);
  if (s->app_fd >= 0)
    close(s->app_fd);
  if (s->hold_w >= 0)
    close(s->hold_w);
  s->app_fd = s->hold_w = -1;
  s->app_kind = APP_FD_SOCK;
  session_unlock(s);
  return async_attach(s);
}

int tether_session_setcb(tether_session *s, tether_data_cb readcb, tether_data_cb writecb,
                         tether_event_cb eventcb, void *arg) {
  if (s && !s->async) {
    int rc = adopt(s);
    if (rc < 0)
      return rc;
  }
  struct async_io *a = open_async(s);
  if (!a)
    return -EINVAL;
  a->readcb = readcb;
  a->writecb = writecb;
  a->eventcb = eventcb;
  a->arg = arg;
  return 0;
}

struct evbuffer *tether_session_input(tether_session *s) {
  struct async_io *a = open_async(s);
  return a ? a->in : NULL;
}

struct evbuffer *tether_session_output(tether_session *s) {
  struct async_io *a = open_async(s);
  return a ? a->out : NULL;
}

static int set_enabled(tether_session *s, short events, bool on) {
  struct async_io *a = open_async(s);
  if (!a || (events & ~(TETHER_EV_READ | TETHER_EV_WRITE)))
    return -EINVAL;
  a->enabled = on ? (short)(a->enabled | events) : (short)(a->enabled & ~events);
  schedule(a);
  return 0;
}

int tether_session_enable(tether_session *s, short events) { return set_enabled(s, events, true); }
int tether_session_disable(tether_session *s, short events) {
  return set_enabled(s, events, false);
}

int tether_session_setwatermark(tether_session *s, short events, size_t low, size_t high) {
  struct async_io *a = open_async(s);
  if (!a || (events & ~(TETHER_EV_READ | TETHER_EV_WRITE)) ||
      ((events & TETHER_EV_READ) && high && low > high))
    return -EINVAL;
  if (events & TETHER_EV_READ) {
    a->rd_low = low;
    a->rd_high = high;
  }
  if (events & TETHER_EV_WRITE)
    a->wr_low = low;
  schedule(a);
  return 0;
}
