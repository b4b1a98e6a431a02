/*
 * tether-echo — an echo server and a stdin/stdout client over tether sessions.
 *
 *   tether-echo server --listen HOST:PORT [--state DIR [--snapshot-ms MS]
 *                      [--snapshot-every BYTES]]
 *   tether-echo client --connect HOST:PORT [--stats]
 *
 * The server is one libevent loop on which tether runs too (the async API,
 * tether_config_set_event_base): no thread per session, one descriptor per
 * session (its TCP socket), and whatever arrives goes straight back from
 * the session's input buffer to its output buffer.  SIGINT/SIGTERM end the
 * loop.  The client is one poll() loop with the session non-blocking, so
 * it reads the echo while it is still writing: a blocking write-then-read
 * client would deadlock on large inputs once both directions' buffers fill.
 *
 * --state: the server is durable and checkpoints its context into
 * DIR/server.snap (tether_checkpoint_blob through the file store); started
 * again with the same DIR after a crash, it restores its listener and its
 * sessions, and its clients carry on.  The echo's own state is the bytes a
 * session has read and not yet written back: a snapshot must not catch any,
 * or the restored server would never echo them -- tether_snapshot() says
 * so (-EBUSY) while a session's buffers hold bytes.  So a checkpoint that
 * finds some stops every session's reading until the echoes are out (at
 * most QUIESCE_MS), takes the snapshot, and lets them read again.  After a
 * restore the server echoes again, from the snapshot's position, bytes the
 * client may already have: tether checks they are the same and drops them.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <tether/tether.h>

#include "cli.h"

#define PROG "tether-echo"
#define BUF_SIZE (128 * 1024)
#define DEFAULT_SNAPSHOT_MS 200
#define DEFAULT_SNAPSHOT_EVERY (8u << 20)
/* How long a checkpoint waits for every session to have echoed what it
 * read; a session that cannot write (its client does not read) makes it
 * give up until the next one. */
#define QUIESCE_MS 100
#define STOP_QUIESCE_MS 2000
/* The most echo a session holds before it stops reading (see
 * update_reading). */
#define ECHO_HIGH (128 * 1024)

static void usage(FILE *f) {
  fputs("usage: " PROG " server --listen HOST:PORT [--state DIR]\n"
        "                          [--snapshot-ms MS] [--snapshot-every BYTES]\n"
        "       " PROG " client --connect HOST:PORT [--stats]\n"
        "\n"
        "  server   echo every byte of every session until SIGINT/SIGTERM\n"
        "  client   send stdin to the server and write the echo to stdout\n"
        "\n"
        "  -l, --listen HOST:PORT    address to listen on (\":PORT\" = all,\n"
        "                            \"[::1]:PORT\" for IPv6, port 0 = any)\n"
        "  -S, --state DIR           (server) checkpoint into DIR; started "
        "again\n"
        "                            with the same DIR after a crash, resume "
        "the\n"
        "                            listener and every session from it\n"
        "  -m, --snapshot-ms MS      (server) checkpoint every MS ms while "
        "busy\n"
        "                            (default 200)\n"
        "  -e, --snapshot-every N    (server) and after N bytes echoed "
        "(default 8M)\n"
        "  -c, --connect HOST:PORT   server to connect to\n"
        "  -s, --stats               print session statistics as JSON on "
        "stderr\n"
        "  -V, --version             print the library version\n"
        "  -h, --help                print this help\n"
        "\n"
        "Tuning comes from TETHER_HEARTBEAT_MS, TETHER_SUSPEND_MS,\n"
        "TETHER_RECONNECT_MAX_MS, TETHER_GIVE_UP_S and TETHER_LOG; see "
        "tether-echo(1).\n",
        f);
}

/* ---- server: the state directory --------------------------------------- */

struct state {
  tether_store *store; /* DIR/server.snap */
  char *path;
  int lock_fd;         /* DIR/server.lock, flock()ed: one server per DIR */
  uint64_t saved;      /* server.activity at the last checkpoint */
  uint64_t skipped;    /* checkpoints given up in a row (QUIESCE_MS) */
  uint64_t snapshot_ms;
};

static void state_close(struct state *st) {
  tether_store_free(st->store);
  free(st->path);
  if (st->lock_fd >= 0)
    close(st->lock_fd);
}

/* Creates DIR if needed (mode 0700), takes its lock, opens the store. */
static int state_open(struct state *st, const char *dir) {
  char *lock = NULL;
  int r;

  *st = (struct state){.lock_fd = -1};
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
    r = -errno;
    fprintf(stderr, PROG ": cannot create the state directory %s: %s\n", dir,
            tether_strerror(r));
    return r;
  }
  if (asprintf(&st->path, "%s/server.snap", dir) < 0 ||
      asprintf(&lock, "%s/server.lock", dir) < 0) {
    st->path = NULL;
    cli_print_error(PROG, "out of memory", -ENOMEM);
    return -ENOMEM;
  }
  st->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (st->lock_fd < 0 || flock(st->lock_fd, LOCK_EX | LOCK_NB) < 0) {
    r = -errno;
    if (r == -EWOULDBLOCK)
      fprintf(stderr, PROG ": another " PROG " server is using %s\n", dir);
    else
      fprintf(stderr, PROG ": cannot lock %s: %s\n", lock, tether_strerror(r));
    free(lock);
    return r;
  }
  free(lock);
  r = tether_store_file_new(st->path, &st->store);
  if (r < 0)
    cli_print_error(PROG, "state store", r);
  return r;
}

/* ---- server ------------------------------------------------------------ */

struct server_opts {
  struct cli_hostport hp;
  const char *state_dir; /* NULL without --state */
  uint64_t snapshot_ms, every;
};

/* A checkpoint quiesces the sessions first (see the top of the file). */
enum ckpt_phase { CKPT_IDLE, CKPT_QUIESCING };

struct server {
  struct event_base *base;
  tether_ctx *ctx;
  uint64_t next_id; /* for log lines only */
  /* --state only: */
  int has_state;
  struct state *st;
  uint64_t every;
  uint64_t activity; /* bytes echoed + sessions started/ended */
  uint64_t unsaved;  /* bytes echoed since the last checkpoint */
  enum ckpt_phase ckpt;
  uint64_t quiesce_until; /* CKPT_QUIESCING: give up then */
  struct event *ckpt_ev;  /* every --snapshot-ms, and while quiescing */
  struct conn *conns;     /* the sessions it holds */
};

/* What the server knows of one session. */
struct conn {
  struct server *srv;
  struct conn *prev, *next;
  tether_session *s;
  uint64_t id;
  int held; /* its output holds ECHO_HIGH bytes or more: not reading */
};

/* Reading goes on while the echo can leave: not while the session's output
 * holds ECHO_HIGH bytes (a client that does not read its echo is held back
 * by TCP, not buffered here), nor while a checkpoint quiesces. */
static void update_reading(struct conn *c) {
  int on = !c->held && c->srv->ckpt != CKPT_QUIESCING;
  (void)(on ? tether_session_enable(c->s, TETHER_EV_READ)
            : tether_session_disable(c->s, TETHER_EV_READ));
}

/* Lets go of c: its session is closed (close) or left open in the
 * checkpoint (stopping with --state). */
static void drop_conn(struct conn *c, int close) {
  struct server *srv = c->srv;

  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  if (close)
    (void)tether_close(c->s);
  free(c);
}

static void end_conn(struct conn *c, int err) {
  char what[64];

  if (err < 0) {
    snprintf(what, sizeof(what), "session %" PRIu64, c->id);
    cli_print_error(PROG, what, err);
  }
  if (c->srv->has_state)
    c->srv->activity++;
  drop_conn(c, 1); /* after a logged failure, close has nothing new to say */
}

/* Everything that arrived goes back: the input buffer moves, uncopied, to
 * the output buffer.  The input's high watermark and TCP's flow control
 * hold back a client that does not read its echo. */
static void echo_read(tether_session *s, void *arg) {
  struct conn *c = arg;
  struct evbuffer *in = tether_session_input(s);
  size_t n = evbuffer_get_length(in);
  struct server *srv = c->srv;

  struct evbuffer *out = tether_session_output(s);

  if (evbuffer_add_buffer(out, in) < 0) {
    end_conn(c, -ENOMEM);
    return;
  }
  if (evbuffer_get_length(out) >= ECHO_HIGH && !c->held) {
    c->held = 1;
    update_reading(c);
  }
  if (!srv->has_state)
    return;
  srv->activity += n;
  srv->unsaved += n;
  if (srv->unsaved >= srv->every && srv->ckpt == CKPT_IDLE)
    event_active(srv->ckpt_ev, EV_TIMEOUT, 0); /* --snapshot-every */
}

/* The output drained to ECHO_HIGH / 2 (its write low watermark). */
static void echo_written(tether_session *s, void *arg) {
  struct conn *c = arg;

  (void)s;
  if (c->held) {
    c->held = 0;
    update_reading(c);
  }
}

static void echo_event(tether_session *s, tether_event ev, int err, void *arg) {
  struct conn *c = arg;

  switch (ev) {
  case TETHER_EVENT_EOF:
    /* Every byte read is echoed (or buffered): the client may see our EOF
     * after them. */
    err = tether_shutdown(s);
    if (err < 0)
      end_conn(c, err);
    break;
  case TETHER_EVENT_CLOSED:
    end_conn(c, 0);
    break;
  case TETHER_EVENT_FAILED:
  case TETHER_EVENT_WRITE_FAILED:
    end_conn(c, err);
    break;
  case TETHER_EVENT_SUSPENDED:
  case TETHER_EVENT_CONNECTED:
    break; /* the session carries on by itself */
  }
}

/* Takes a session (new, or restored); closes it on failure. */
static int start_session(struct server *srv, tether_session *s) {
  struct conn *c = malloc(sizeof(*c));
  int r = c ? 0 : -ENOMEM;

  if (c) {
    *c = (struct conn){.srv = srv, .s = s, .id = ++srv->next_id, .next = srv->conns};
    r = tether_session_setcb(s, echo_read, echo_written, echo_event, c);
  }
  if (r == 0)
    r = tether_session_setwatermark(s, TETHER_EV_WRITE, ECHO_HIGH / 2, 0);
  if (r == 0)
    update_reading(c);
  if (r < 0) {
    free(c);
    (void)tether_close(s);
    return r;
  }
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  if (srv->has_state)
    srv->activity++;
  return 0;
}

static void on_accept(tether_listener *l, tether_session *s, void *arg) {
  int r = start_session(arg, s);

  (void)l;
  if (r < 0)
    cli_print_error(PROG, "cannot take a session", r);
}

/* The sessions the application holds; NULL (reported) when out of memory. */
static tether_session **all_sessions(tether_ctx *ctx, size_t *n) {
  size_t cap = tether_ctx_sessions(ctx, NULL, 0);
  tether_session **ss = calloc(cap ? cap : 1, sizeof(*ss));

  if (ss == NULL) {
    cli_print_error(PROG, "out of memory", -ENOMEM);
    return NULL;
  }
  *n = tether_ctx_sessions(ctx, ss, cap); /* one thread: the same count */
  return ss;
}

/* A checkpoint starts quiescing (reading stops everywhere), or ends. */
static void set_quiescing(struct server *srv, int on) {
  srv->ckpt = on ? CKPT_QUIESCING : CKPT_IDLE;
  for (struct conn *c = srv->conns; c; c = c->next)
    update_reading(c);
}

/* A snapshot, stored and committed.  Returns 0, -EBUSY while a session
 * still holds bytes it read and has not echoed (tether_snapshot), or
 * another negative code (reported). */
static int checkpoint_now(struct server *srv) {
  struct state *st = srv->st;
  uint64_t activity = srv->activity;
  void *blob;
  size_t len;
  int r = tether_snapshot(srv->ctx, &blob, &len);

  if (r == -EBUSY)
    return r;
  if (r < 0) {
    cli_print_error(PROG, "snapshot", r);
    return r;
  }
  srv->unsaved = 0;
  r = tether_checkpoint_blob(srv->ctx, st->store, blob, len);
  free(blob);
  if (r < 0) {
    fprintf(stderr, PROG ": cannot checkpoint into %s: %s\n", st->path,
            tether_strerror(r));
    return r;
  }
  st->saved = activity;
  st->skipped = 0;
  return 0;
}

static void arm_ckpt(struct server *srv, uint64_t ms) {
  struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                       .tv_usec = (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(srv->ckpt_ev, &tv);
}

/* The checkpoint timer: every --snapshot-ms (or at once, --snapshot-every)
 * a checkpoint if anything changed.  A snapshot must not catch bytes a
 * session read and has not echoed: the first attempt that finds some
 * stops every session's reading and looks again every millisecond until
 * the echoes are out, for up to QUIESCE_MS (a client that does not read its
 * echo holds them); then reading goes on either way. */
static void on_ckpt(evutil_socket_t fd, short what, void *arg) {
  struct server *srv = arg;
  int r;

  (void)fd;
  (void)what;
  if (srv->ckpt == CKPT_IDLE && srv->activity == srv->st->saved) {
    arm_ckpt(srv, srv->st->snapshot_ms);
    return;
  }
  r = checkpoint_now(srv);
  if (r == -EBUSY && srv->ckpt == CKPT_IDLE) {
    srv->quiesce_until = cli_now_ns() + QUIESCE_MS * 1000000ull;
    set_quiescing(srv, 1);
    arm_ckpt(srv, 1);
    return;
  }
  if (r == -EBUSY && cli_now_ns() < srv->quiesce_until) {
    arm_ckpt(srv, 1);
    return;
  }
  if (r == -EBUSY && ++srv->st->skipped % 50 == 1)
    fprintf(stderr, PROG ": checkpoint postponed: a session cannot echo what "
                    "it read (its client does not read)\n");
  if (srv->ckpt == CKPT_QUIESCING)
    set_quiescing(srv, 0);
  arm_ckpt(srv, srv->st->snapshot_ms); /* a failure was reported: the
                                          previous checkpoint stands */
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

/* Runs the loop until a checkpoint succeeds, or gives up after ms.  For
 * the first one (the listener) and the last one (stopping: the sessions
 * echo what they read first, STOP_QUIESCE_MS at most). */
static int checkpoint_sync(struct server *srv, unsigned ms) {
  uint64_t until = cli_now_ns() + ms * 1000000ull;
  int r;

  struct timeval ms1 = {0, 1000};
  struct event *tick = evtimer_new(srv->base, on_tick, NULL);

  set_quiescing(srv, 1);
  /* Between attempts, the loop runs once: a millisecond at most. */
  while ((r = checkpoint_now(srv)) == -EBUSY && cli_now_ns() < until && tick &&
         evtimer_add(tick, &ms1) == 0 && event_base_loop(srv->base, EVLOOP_ONCE) >= 0)
    ;
  if (tick)
    event_free(tick);
  set_quiescing(srv, 0);
  if (r == -EBUSY)
    fprintf(stderr, PROG ": checkpoint given up: a session cannot echo what "
                    "it read (its client does not read)\n");
  return r;
}

/* With --state: the context from the state directory if it holds one
 * (*restored = 1), else a new one, on the server's loop.  Then the
 * listener: the restored one, or a new one on hp. */
static int server_ctx(const struct server_opts *o, struct server *srv,
                      tether_listener **l, int *restored) {
  struct state *st = srv->st;
  tether_config *cfg;
  int r = cli_config_new(PROG, o->state_dir != NULL, &cfg);

  *restored = 0;
  if (r < 0)
    return r;
  tether_config_set_event_base(cfg, srv->base);
  r = o->state_dir ? tether_restore_store(cfg, st->store, &srv->ctx) : -ENOENT;
  if (r == -ENOENT) {
    r = tether_ctx_new(cfg, &srv->ctx);
    if (r < 0)
      cli_print_error(PROG, "cannot create a context", r);
  } else if (r < 0) {
    fprintf(stderr, PROG ": cannot restore from %s: %s (remove it to start "
                    "afresh)\n", st->path, tether_strerror(r));
  } else {
    *restored = 1;
  }
  tether_config_free(cfg);
  if (r < 0)
    return r;
  if (!*restored) {
    r = tether_listen(srv->ctx, o->hp.host, o->hp.port, l);
    if (r < 0)
      cli_print_addr_error(PROG, "cannot listen on", &o->hp, r);
    return r;
  }
  if (tether_ctx_listeners(srv->ctx, l, 1) != 1) {
    fprintf(stderr, PROG ": %s holds no listener\n", st->path);
    return -EINVAL;
  }
  if (atoi(o->hp.port) != 0 && atoi(o->hp.port) != tether_listener_port(*l)) {
    fprintf(stderr, PROG ": %s belongs to a server on port %d, not %s\n",
            st->path, tether_listener_port(*l), o->hp.port);
    return -EINVAL;
  }
  return 0;
}

/* Takes every session of a restored context. */
static int resume_sessions(struct server *srv) {
  size_t n, i;
  tether_session **ss = all_sessions(srv->ctx, &n);

  if (ss == NULL)
    return -ENOMEM;
  for (i = 0; i < n; i++) {
    int r = start_session(srv, ss[i]);
    if (r < 0)
      cli_print_error(PROG, "cannot take a restored session", r);
  }
  free(ss);
  fprintf(stderr, PROG ": restored %zu session%s from %s\n", n,
          n == 1 ? "" : "s", srv->st->path);
  return 0;
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  event_base_loopbreak(arg);
}

static int run_server(const struct server_opts *o) {
  struct state st = {.lock_fd = -1};
  struct server srv = {.every = o->every, .st = &st};
  struct event *sigint = NULL, *sigterm = NULL;
  tether_listener *l = NULL;
  int rc = CLI_EXIT_FAIL, r, restored;

  /* A peer that vanishes must cost one session, never the process. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR || !(srv.base = cli_event_base()) ||
      !(sigint = evsignal_new(srv.base, SIGINT, on_stop_signal, srv.base)) ||
      !(sigterm = evsignal_new(srv.base, SIGTERM, on_stop_signal, srv.base)) ||
      evsignal_add(sigint, NULL) < 0 || evsignal_add(sigterm, NULL) < 0) {
    cli_print_error(PROG, "event loop setup", -ENOMEM);
    goto out;
  }
  if (o->state_dir != NULL) {
    srv.has_state = 1;
    if (state_open(&st, o->state_dir) < 0)
      goto out;
    st.snapshot_ms = o->snapshot_ms;
    if (!(srv.ckpt_ev = evtimer_new(srv.base, on_ckpt, &srv))) {
      cli_print_error(PROG, "event loop setup", -ENOMEM);
      goto out;
    }
  }
  if (server_ctx(o, &srv, &l, &restored) < 0)
    goto out;
  r = tether_listener_set_accept_cb(l, on_accept, &srv);
  if (r < 0) {
    cli_print_error(PROG, "listener", r);
    goto out;
  }
  if (restored && resume_sessions(&srv) < 0)
    goto out;
  if (srv.has_state) {
    /* The listener is in the state before anyone can connect to it. */
    if (!restored && checkpoint_sync(&srv, QUIESCE_MS) < 0)
      goto out;
    arm_ckpt(&srv, o->snapshot_ms);
  }
  /* Scripts that listen on port 0 read the port from this line. */
  fprintf(stderr, PROG ": listening on port %d\n", tether_listener_port(l));
  if (event_base_dispatch(srv.base) < 0) {
    cli_print_error(PROG, "event loop", -EIO);
    goto out;
  }
  /* With --state, a last checkpoint keeps the sessions for the next start:
   * the context is freed without closing them (as a crash would).  Without,
   * each delivers what it echoed, then ends (tether_ctx_free runs the loop
   * while they linger). */
  if (srv.has_state && checkpoint_sync(&srv, STOP_QUIESCE_MS) == 0)
    fprintf(stderr, PROG ": state kept in %s; start again with the same "
                    "--state to resume\n", o->state_dir);
  if (!srv.has_state)
    tether_listener_close(l);
  rc = CLI_EXIT_OK;
out:
  while (srv.conns)
    drop_conn(srv.conns, !srv.has_state);
  if (srv.ctx != NULL)
    tether_ctx_free(srv.ctx);
  if (srv.ckpt_ev)
    event_free(srv.ckpt_ev);
  if (sigint)
    event_free(sigint);
  if (sigterm)
    event_free(sigterm);
  if (srv.base)
    event_base_free(srv.base);
  if (srv.has_state)
    state_close(&st);
  return rc;
}

/* ---- client ------------------------------------------------------------ */

/* One direction of the copy: bytes read from one side, not yet written out. */
struct pipe_buf {
  char *data;
  size_t off, len;
  int eof; /* the source side reached EOF */
};

/* Which descriptor an error came from, for the message. */
enum side { SIDE_STDIN, SIDE_SESSION, SIDE_STDOUT };

static ssize_t read_stdin(struct pipe_buf *b) {
  ssize_t n = read(STDIN_FILENO, b->data, BUF_SIZE);

  return n < 0 ? -errno : n;
}

static ssize_t write_stdout(struct pipe_buf *b) {
  ssize_t n = write(STDOUT_FILENO, b->data + b->off, b->len);

  return n < 0 ? -errno : n;
}

/* Copies stdin to the session and the session to stdout until the server's
 * EOF has been written out.  Returns 0, or a negative code and sets *side. */
static int copy_loop(tether_session *s, struct pipe_buf *up,
                     struct pipe_buf *down, enum side *side) {
  int shut = 0, r;

  while (!(down->eof && down->len == 0)) {
    if (up->eof && up->len == 0 && !shut) {
      *side = SIDE_SESSION;
      r = tether_shutdown(s);
      if (r < 0)
        return r;
      shut = 1;
    }

    struct pollfd pfd[3];
    int in = -1, ses, out = -1, nfds = 0;
    if (!up->eof && up->len == 0) {
      in = nfds++;
      pfd[in] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
    }
    /* With nothing to ask of the session, leave it out (fd -1): a socket
     * that reports POLLHUP would otherwise wake us in a busy loop. */
    short events = (short)((!down->eof && down->len == 0 ? POLLIN : 0) |
                           (up->len > 0 ? POLLOUT : 0));
    ses = nfds++;
    pfd[ses] =
        (struct pollfd){.fd = events ? tether_fd(s) : -1, .events = events};
    if (down->len > 0) {
      out = nfds++;
      pfd[out] = (struct pollfd){.fd = STDOUT_FILENO, .events = POLLOUT};
    }
    if (poll(pfd, (nfds_t)nfds, -1) < 0) {
      if (errno == EINTR)
        continue;
      *side = SIDE_SESSION;
      return -errno;
    }

    ssize_t n;
    if (in >= 0 && pfd[in].revents) {
      *side = SIDE_STDIN;
      n = read_stdin(up);
      if (n < 0 && !cli_err_is_retry((int)n))
        return (int)n;
      if (n >= 0) {
        up->off = 0;
        up->len = (size_t)n;
        up->eof = n == 0;
      }
    }
    /* Session: try whatever is pending on any wake-up (see tether_fd()). */
    if (pfd[ses].revents) {
      *side = SIDE_SESSION;
      if (!down->eof && down->len == 0) {
        n = tether_read(s, down->data, BUF_SIZE);
        if (n < 0 && !cli_err_is_retry((int)n))
          return (int)n;
        if (n >= 0) {
          down->off = 0;
          down->len = (size_t)n;
          down->eof = n == 0;
        }
      }
      if (up->len > 0) {
        n = tether_write(s, up->data + up->off, up->len);
        if (n < 0 && !cli_err_is_retry((int)n))
          return (int)n;
        if (n > 0) {
          up->off += (size_t)n;
          up->len -= (size_t)n;
        }
      }
    }
    if (out >= 0 && pfd[out].revents) {
      *side = SIDE_STDOUT;
      n = write_stdout(down);
      if (n < 0 && !cli_err_is_retry((int)n))
        return (int)n;
      if (n > 0) {
        down->off += (size_t)n;
        down->len -= (size_t)n;
      }
    }
  }
  return 0;
}

static int run_client(const struct cli_hostport *hp, int want_stats) {
  static const char *const side_what[] = {
      [SIDE_STDIN] = "read stdin",
      [SIDE_SESSION] = "session failed",
      [SIDE_STDOUT] = "write stdout",
  };
  struct pipe_buf up = {0}, down = {0};
  tether_ctx *ctx = NULL;
  tether_session *s = NULL;
  enum side side = SIDE_SESSION;
  int rc = CLI_EXIT_FAIL, r;

  /* A closed stdout must be an EPIPE error we report, not a silent death. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    cli_print_error(PROG, "signal", -errno);
    goto out;
  }
  up.data = malloc(BUF_SIZE);
  down.data = malloc(BUF_SIZE);
  if (up.data == NULL || down.data == NULL) {
    cli_print_error(PROG, "malloc", -ENOMEM);
    goto out;
  }
  if (cli_ctx_new(PROG, &ctx) < 0)
    goto out;
  r = tether_connect(ctx, hp->host, hp->port, &s);
  if (r < 0) {
    cli_print_addr_error(PROG, "cannot connect to", hp, r);
    goto out;
  }
  r = tether_set_nonblocking(s, 1);
  if (r < 0) {
    cli_print_error(PROG, "session", r);
    goto out;
  }
  r = copy_loop(s, &up, &down, &side);
  if (r < 0) {
    cli_print_error(PROG, side_what[side], r);
    goto out;
  }
  /* An echo server ends only after our EOF: anything else (say, it was
   * stopped) means the output is short, which exit status 0 would hide. */
  if (!up.eof || up.len > 0) {
    fprintf(stderr, PROG ": the server ended the session before the end "
                         "of the input\n");
    goto out;
  }
  rc = CLI_EXIT_OK;
out:
  if (s != NULL) {
    if (want_stats) {
      tether_stats st;
      r = tether_session_stats(s, &st);
      if (r < 0)
        cli_print_error(PROG, "stats", r);
      else
        cli_print_stats_json(stderr, &st);
    }
    r = tether_close(s);
    if (r < 0 && rc == CLI_EXIT_OK) {
      cli_print_error(PROG, "close", r);
      rc = CLI_EXIT_FAIL;
    }
  }
  if (ctx != NULL)
    tether_ctx_free(ctx);
  free(up.data);
  free(down.data);
  return rc;
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, NULL, 'l'},
      {"state", required_argument, NULL, 'S'},
      {"snapshot-ms", required_argument, NULL, 'm'},
      {"snapshot-every", required_argument, NULL, 'e'},
      {"connect", required_argument, NULL, 'c'},
      {"stats", no_argument, NULL, 's'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *listen_arg = NULL, *connect_arg = NULL;
  const char *ms_arg = NULL, *every_arg = NULL;
  struct server_opts so = {.snapshot_ms = DEFAULT_SNAPSHOT_MS,
                           .every = DEFAULT_SNAPSHOT_EVERY};
  struct cli_hostport hp;
  int is_server, want_stats = 0, c;

  int first = cli_command_arg(argc, argv, PROG, usage, "missing command: server or client");
  if (first >= 0)
    return first;
  if (strcmp(argv[1], "server") == 0)
    is_server = 1;
  else if (strcmp(argv[1], "client") == 0)
    is_server = 0;
  else
    return cli_usage_error(
        PROG, "unknown command '%s' (expected server or client)", argv[1]);

  /* Options follow the command: parse from there, reporting errors
   * ourselves (getopt would name the command as the program). */
  argc--;
  argv++;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":l:S:m:e:c:sVh", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      listen_arg = optarg;
      break;
    case 'S':
      so.state_dir = optarg;
      break;
    case 'm':
      ms_arg = optarg;
      break;
    case 'e':
      every_arg = optarg;
      break;
    case 'c':
      connect_arg = optarg;
      break;
    case 's':
      want_stats = 1;
      break;
    case 'V':
      printf(PROG " %s\n", tether_version());
      return CLI_EXIT_OK;
    case 'h':
      usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_getopt_error(PROG, c, argv);
    }
  }
  if (optind < argc)
    return cli_usage_error(PROG, "unexpected argument '%s'", argv[optind]);

  if (is_server) {
    if (connect_arg != NULL || want_stats)
      return cli_usage_error(PROG, "server takes --listen and --state, not "
                                   "--connect or --stats");
    if ((ms_arg != NULL || every_arg != NULL) && so.state_dir == NULL)
      return cli_usage_error(PROG, "--snapshot-ms and --snapshot-every need "
                                   "--state DIR");
    if (so.state_dir != NULL && so.state_dir[0] == '\0')
      return cli_usage_error(PROG, "--state needs a directory");
    if (ms_arg != NULL && cli_parse_uint(ms_arg, 1, 3600000, &so.snapshot_ms) < 0)
      return cli_usage_error(PROG, "bad --snapshot-ms '%s' (1 to 3600000)",
                             ms_arg);
    if (every_arg != NULL && cli_parse_size(every_arg, &so.every) < 0)
      return cli_usage_error(PROG, "bad --snapshot-every '%s' (expected a "
                                   "size such as 8M)",
                             every_arg);
    if (listen_arg == NULL)
      return cli_usage_error(PROG, "server needs --listen HOST:PORT");
    if (cli_parse_hostport(listen_arg, &so.hp) < 0)
      return cli_usage_error(PROG,
                             "bad --listen '%s' (expected HOST:PORT, "
                             "[IPV6]:PORT or :PORT)",
                             listen_arg);
    return run_server(&so);
  }
  if (listen_arg != NULL || so.state_dir != NULL || ms_arg != NULL ||
      every_arg != NULL)
    return cli_usage_error(PROG, "client takes --connect and --stats only");
  if (connect_arg == NULL)
    return cli_usage_error(PROG, "client needs --connect HOST:PORT");
  if (cli_parse_hostport(connect_arg, &hp) < 0 || hp.host[0] == '\0')
    return cli_usage_error(PROG,
                           "bad --connect '%s' (expected HOST:PORT or "
                           "[IPV6]:PORT)",
                           connect_arg);
  return run_client(&hp, want_stats);
}
