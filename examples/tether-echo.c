/*
 * tether-echo — an echo server and a stdin/stdout client over tether sessions.
 *
 *   tether-echo server --listen HOST:PORT [--state DIR [--snapshot-ms MS]
 *                      [--snapshot-every BYTES]]
 *   tether-echo client --connect HOST:PORT [--stats]
 *
 * The server runs one thread per session; every thread sleeps in poll() on its
 * session and on a shared "stop" eventfd, so SIGINT/SIGTERM (taken from a
 * signalfd, not a handler) can end them all and the context is freed only
 * after the last one closed its session.  The client is one poll() loop with
 * the session non-blocking, so it reads the echo while it is still writing:
 * a blocking write-then-read client would deadlock on large inputs once both
 * directions' buffers fill.
 *
 * --state: the server is durable and checkpoints its context into
 * DIR/server.snap (tether_checkpoint_blob through the file store); started
 * again with the same DIR after a crash, it restores its listener and its
 * sessions, and its clients carry on.  The echo's own state is the bytes a
 * session thread has read and not yet written back: a snapshot must not
 * catch a thread holding any, or the restored server would never echo
 * them.  So each thread holds a read lock on `gate` from a read that
 * returned bytes until they are all written, and the checkpoint takes the
 * snapshot under the write lock (in memory, quickly), then stores it
 * without the lock.  After a restore the threads echo again, from the
 * snapshot's position, bytes the client may already have: tether checks
 * they are the same and drops them.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <tether/tether.h>

#include "cli.h"

#define PROG "tether-echo"
#define BUF_SIZE (128 * 1024)
#define DEFAULT_SNAPSHOT_MS 200
#define DEFAULT_SNAPSHOT_EVERY (8u << 20)
/* How long a checkpoint waits for every session thread to have echoed what
 * it read; a thread that cannot write (its client does not read) makes it
 * give up until the next one. */
#define QUIESCE_MS 100

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

/* ---- server ------------------------------------------------------------ */

struct server_opts {
  struct cli_hostport hp;
  const char *state_dir; /* NULL without --state */
  uint64_t snapshot_ms, every;
};

struct server {
  int stop_fd; /* eventfd, readable (forever) once the server is stopping */
  pthread_mutex_t mu;
  pthread_cond_t idle; /* signalled when active drops to 0 */
  unsigned active;     /* session threads still running */
  uint64_t next_id;    /* for log lines only */
  /* --state only: */
  int has_state;
  pthread_rwlock_t gate;    /* read: bytes held; write: a snapshot */
  int ckpt_fd;              /* eventfd: --snapshot-every bytes echoed */
  uint64_t every;
  atomic_uint_fast64_t activity; /* bytes echoed + sessions started/ended */
  atomic_uint_fast64_t unsaved;  /* bytes echoed since the last checkpoint */
};

struct job {
  struct server *srv;
  tether_session *s;
  uint64_t id;
};

enum { WAIT_READY = 0, WAIT_STOP = 1 };

/* Sleeps until the session may make progress or the server stops.  Any
 * revents counts as "retry": after a resume the fd's file was replaced and
 * the old one reports POLLHUP, which only means "look again". */
static int wait_session(tether_session *s, short events, int stop_fd) {
  struct pollfd pfd[2] = {
      {.fd = tether_fd(s), .events = events},
      {.fd = stop_fd, .events = POLLIN},
  };

  if (poll(pfd, 2, -1) < 0)
    return errno == EINTR ? WAIT_READY : -errno;
  return pfd[1].revents ? WAIT_STOP : WAIT_READY;
}

static void gate_enter(struct server *srv) {
  if (srv->has_state)
    pthread_rwlock_rdlock(&srv->gate);
}

static void gate_leave(struct server *srv) {
  if (srv->has_state)
    pthread_rwlock_unlock(&srv->gate);
}

/* n bytes echoed: a checkpoint is due after --snapshot-every of them. */
static void count_echoed(struct server *srv, uint64_t n) {
  uint64_t one = 1;

  if (!srv->has_state)
    return;
  atomic_fetch_add(&srv->activity, n);
  uint64_t before = atomic_fetch_add(&srv->unsaved, n);
  if (before < srv->every && before + n >= srv->every &&
      write(srv->ckpt_fd, &one, sizeof(one)) < 0) {
    /* An eventfd write fails only at its maximum: one is pending anyway. */
  }
}

/* Echoes until EOF (0), until the server stops (WAIT_STOP), or an error.
 * From a read that returned bytes until they are all written, the thread
 * is inside the gate (see the top of the file). */
static int echo_session(tether_session *s, struct server *srv) {
  char *buf = malloc(BUF_SIZE);
  size_t off = 0, len = 0;
  int r, inside = 0;

  if (buf == NULL)
    return -ENOMEM;
  for (;;) {
    ssize_t n;
    short want;

    if (len == 0) {
      gate_enter(srv);
      n = tether_read(s, buf, BUF_SIZE);
      if (n > 0) {
        inside = 1;
        off = 0;
        len = (size_t)n;
        continue;
      }
      gate_leave(srv);
      if (n == 0) {
        r = 0;
        goto out;
      }
      want = POLLIN;
    } else {
      n = tether_write(s, buf + off, len);
      if (n >= 0) {
        off += (size_t)n;
        len -= (size_t)n;
        if (len == 0) {
          inside = 0;
          gate_leave(srv);
          count_echoed(srv, off);
        }
        continue;
      }
      want = POLLOUT;
    }
    if (!cli_err_is_retry((int)n)) {
      r = (int)n;
      goto out;
    }
    r = wait_session(s, want, srv->stop_fd);
    if (r != WAIT_READY)
      goto out;
  }
out:
  if (inside)
    gate_leave(srv);
  free(buf);
  return r;
}

static void *session_thread(void *arg) {
  struct job *job = arg;
  struct server *srv = job->srv;
  char what[64];
  int r;

  snprintf(what, sizeof(what), "session %" PRIu64, job->id);
  r = tether_set_nonblocking(job->s, 1);
  if (r == 0)
    r = echo_session(job->s, srv);
  if (r == 0) {
    /* Every byte read was echoed: now the client may see our EOF. */
    r = tether_shutdown(job->s);
  }
  if (r < 0)
    cli_print_error(PROG, what, r);
  /* Stopping with --state: the session stays open in the checkpoint (the
   * context is freed without closing it, as a crash would). */
  if (r != WAIT_STOP || !srv->has_state) {
    /* After a logged failure, close's own code would only repeat it. */
    int cr = tether_close(job->s);
    if (cr < 0 && r >= 0)
      cli_print_error(PROG, what, cr);
  }
  if (srv->has_state)
    atomic_fetch_add(&srv->activity, 1);
  free(job);

  pthread_mutex_lock(&srv->mu);
  if (--srv->active == 0)
    pthread_cond_broadcast(&srv->idle);
  pthread_mutex_unlock(&srv->mu);
  return NULL;
}

/* Hands the session to a new detached thread; closes it on failure. */
static int start_session(struct server *srv, tether_session *s) {
  struct job *job = malloc(sizeof(*job));
  pthread_attr_t attr;
  pthread_t tid;
  int r;

  if (job == NULL) {
    r = -ENOMEM;
    goto fail;
  }
  job->srv = srv;
  job->s = s;
  r = -pthread_attr_init(&attr);
  if (r < 0)
    goto fail;
  r = -pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_mutex_lock(&srv->mu);
  job->id = ++srv->next_id;
  if (r == 0)
    r = -pthread_create(&tid, &attr, session_thread, job);
  if (r == 0)
    srv->active++;
  pthread_mutex_unlock(&srv->mu);
  pthread_attr_destroy(&attr);
  if (r < 0)
    goto fail;
  if (srv->has_state)
    atomic_fetch_add(&srv->activity, 1);
  return 0;
fail:
  free(job);
  (void)tether_close(s); /* the caller reports r */
  return r;
}

/* Tells every session thread to stop, and waits for them. */
static int stop_sessions(struct server *srv) {
  uint64_t one = 1;

  if (srv->stop_fd < 0)
    return 0; /* failed before any session could start */
  if (write(srv->stop_fd, &one, sizeof(one)) != sizeof(one)) {
    int err = -errno;
    cli_print_error(PROG, "cannot stop the sessions", err);
    return err;
  }
  pthread_mutex_lock(&srv->mu);
  while (srv->active > 0)
    pthread_cond_wait(&srv->idle, &srv->mu);
  pthread_mutex_unlock(&srv->mu);
  return 0;
}

/* Accepts every session that is ready (the listener is non-blocking). */
static int accept_ready(struct server *srv, tether_listener *l) {
  for (;;) {
    tether_session *s;
    int r = tether_accept(l, &s);

    if (r < 0)
      return cli_err_is_retry(r) ? 0 : r;
    r = start_session(srv, s);
    if (r < 0)
      cli_print_error(PROG, "cannot start a session thread", r);
  }
}

/* ---- server: the state directory --------------------------------------- */

struct state {
  tether_store *store; /* DIR/server.snap */
  char *path;
  int lock_fd;         /* DIR/server.lock, flock()ed: one server per DIR */
  uint64_t saved;      /* server.activity at the last checkpoint */
  uint64_t skipped;    /* checkpoints given up in a row (QUIESCE_MS) */
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

static struct timespec realtime_in_ms(unsigned ms) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += (long)(ms % 1000) * 1000000;
  ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000;
  ts.tv_nsec %= 1000000000;
  return ts;
}

/* A snapshot taken while no session thread holds bytes it has not echoed,
 * then stored and committed.  Returns 0 (also when there was nothing new,
 * or the threads could not be quiesced in time: the previous checkpoint
 * stands), or a negative code (reported). */
static int checkpoint(struct server *srv, struct state *st, tether_ctx *ctx,
                      int force) {
  struct timespec until = realtime_in_ms(QUIESCE_MS);
  uint64_t activity;
  void *blob;
  size_t len;
  int r;

  if (!force && atomic_load(&srv->activity) == st->saved)
    return 0;
  r = pthread_rwlock_timedwrlock(&srv->gate, &until);
  if (r == ETIMEDOUT) {
    if (++st->skipped % 50 == 1)
      fprintf(stderr, PROG ": checkpoint postponed: a session cannot echo "
                      "what it read (its client does not read)\n");
    return 0;
  }
  if (r != 0) {
    cli_print_error(PROG, "checkpoint", -r);
    return -r;
  }
  activity = atomic_load(&srv->activity);
  atomic_store(&srv->unsaved, 0);
  r = tether_snapshot(ctx, &blob, &len);
  pthread_rwlock_unlock(&srv->gate);
  if (r < 0) {
    cli_print_error(PROG, "snapshot", r);
    return r;
  }
  st->skipped = 0;
  r = tether_checkpoint_blob(ctx, st->store, blob, len);
  free(blob);
  if (r < 0) {
    fprintf(stderr, PROG ": cannot checkpoint into %s: %s\n", st->path,
            tether_strerror(r));
    return r;
  }
  st->saved = activity;
  return 0;
}

/* With --state: the context from the state directory if it holds one
 * (*restored = 1), else a new one.  Then the listener: the restored one,
 * or a new one on hp. */
static int server_ctx(const struct server_opts *o, struct state *st,
                      tether_ctx **ctx, tether_listener **l, int *restored) {
  tether_config *cfg;
  int r = cli_config_new(PROG, o->state_dir != NULL, &cfg);

  *restored = 0;
  if (r < 0)
    return r;
  r = o->state_dir ? tether_restore_store(cfg, st->store, ctx) : -ENOENT;
  if (r == -ENOENT) {
    r = tether_ctx_new(cfg, ctx);
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
    r = tether_listen(*ctx, o->hp.host, o->hp.port, l);
    if (r < 0)
      cli_print_addr_error(PROG, "cannot listen on", &o->hp, r);
    return r;
  }
  if (tether_ctx_listeners(*ctx, l, 1) != 1) {
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

/* Starts a thread for every session of a restored context. */
static int resume_sessions(struct server *srv, tether_ctx *ctx,
                           const struct state *st) {
  size_t n = tether_ctx_sessions(ctx, NULL, 0), i;
  tether_session **ss = calloc(n ? n : 1, sizeof(*ss));

  if (ss == NULL) {
    cli_print_error(PROG, "out of memory", -ENOMEM);
    return -ENOMEM;
  }
  n = tether_ctx_sessions(ctx, ss, n); /* no thread runs yet: same n */
  for (i = 0; i < n; i++) {
    int r = start_session(srv, ss[i]);
    if (r < 0)
      cli_print_error(PROG, "cannot start a session thread", r);
  }
  free(ss);
  fprintf(stderr, PROG ": restored %zu session%s from %s\n", n,
          n == 1 ? "" : "s", st->path);
  return 0;
}

static int run_server(const struct server_opts *o) {
  struct server srv = {.stop_fd = -1,
                       .ckpt_fd = -1,
                       .mu = PTHREAD_MUTEX_INITIALIZER,
                       .idle = PTHREAD_COND_INITIALIZER,
                       .every = o->every};
  struct state st = {.lock_fd = -1};
  pthread_rwlockattr_t ga;
  tether_ctx *ctx = NULL;
  tether_listener *l = NULL;
  sigset_t sigs;
  int sig_fd = -1, rc = CLI_EXIT_FAIL, r, restored;
  uint64_t next_ckpt = 0;

  /* Writers first: a waiting checkpoint holds back new reads, so the
   * threads quiesce instead of starving it. */
  pthread_rwlockattr_init(&ga);
  pthread_rwlockattr_setkind_np(&ga,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&srv.gate, &ga);
  pthread_rwlockattr_destroy(&ga);
  /* Block the signals before any thread exists (the engine thread too), so
   * they are only ever delivered through sig_fd. */
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  r = -pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  if (r < 0) {
    cli_print_error(PROG, "pthread_sigmask", r);
    goto out;
  }
  /* A peer that vanishes must cost one session, never the process. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR ||
      (sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC)) < 0 ||
      (srv.stop_fd = eventfd(0, EFD_CLOEXEC)) < 0 ||
      (srv.ckpt_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
    cli_print_error(PROG, "signal setup", -errno);
    goto out;
  }
  if (o->state_dir != NULL) {
    srv.has_state = 1;
    if (state_open(&st, o->state_dir) < 0)
      goto out;
  }
  if (server_ctx(o, &st, &ctx, &l, &restored) < 0)
    goto out;
  r = tether_listener_set_nonblocking(l, 1);
  if (r < 0) {
    cli_print_error(PROG, "listener", r);
    goto out;
  }
  if (restored && resume_sessions(&srv, ctx, &st) < 0)
    goto out;
  /* The listener is in the state before anyone can connect to it. */
  if (srv.has_state && !restored && checkpoint(&srv, &st, ctx, 1) < 0)
    goto out;
  /* Scripts that listen on port 0 read the port from this line. */
  fprintf(stderr, PROG ": listening on port %d\n", tether_listener_port(l));

  for (;;) {
    struct pollfd pfd[3] = {
        {.fd = tether_listener_fd(l), .events = POLLIN},
        {.fd = sig_fd, .events = POLLIN},
        {.fd = srv.has_state ? srv.ckpt_fd : -1, .events = POLLIN},
    };
    int timeout = -1;
    uint64_t now = cli_now_ns();

    if (srv.has_state) {
      if (next_ckpt == 0)
        next_ckpt = now + o->snapshot_ms * 1000000u;
      timeout = now >= next_ckpt ? 0 : (int)((next_ckpt - now) / 1000000u) + 1;
    }
    if (poll(pfd, 3, timeout) < 0) {
      if (errno == EINTR)
        continue;
      cli_print_error(PROG, "poll", -errno);
      goto out;
    }
    if (pfd[1].revents)
      break;
    if (pfd[0].revents) {
      r = accept_ready(&srv, l);
      if (r < 0) {
        cli_print_error(PROG, "accept", r);
        goto out;
      }
    }
    if (srv.has_state &&
        (pfd[2].revents || cli_now_ns() >= next_ckpt)) {
      uint64_t v;
      if (read(srv.ckpt_fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        cli_print_error(PROG, "eventfd", -errno);
        goto out;
      }
      /* A failed checkpoint was reported; the previous one stands. */
      (void)checkpoint(&srv, &st, ctx, 0);
      next_ckpt = cli_now_ns() + o->snapshot_ms * 1000000u;
    }
  }
  if (srv.has_state) {
    /* Keep the sessions for the next start: a last checkpoint, then the
     * threads stop without closing them. */
    if (checkpoint(&srv, &st, ctx, 1) == 0)
      fprintf(stderr, PROG ": state kept in %s; start again with the same "
                      "--state to resume\n", o->state_dir);
  }
  rc = CLI_EXIT_OK;
out:
  if (l != NULL && !srv.has_state)
    tether_listener_close(l);
  /* The session threads use ctx: free it only once they are all gone (if
   * they cannot be stopped, exiting frees it anyway). */
  if (stop_sessions(&srv) == 0 && ctx != NULL)
    tether_ctx_free(ctx);
  if (srv.has_state)
    state_close(&st);
  if (srv.stop_fd >= 0)
    close(srv.stop_fd);
  if (srv.ckpt_fd >= 0)
    close(srv.ckpt_fd);
  if (sig_fd >= 0)
    close(sig_fd);
  pthread_rwlock_destroy(&srv.gate);
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
