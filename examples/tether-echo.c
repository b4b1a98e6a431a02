/*
 * tether-echo — an echo server and a stdin/stdout client over tether sessions.
 *
 *   tether-echo server --listen HOST:PORT
 *   tether-echo client --connect HOST:PORT [--stats]
 *
 * The server runs one thread per session; every thread sleeps in poll() on its
 * session and on a shared "stop" eventfd, so SIGINT/SIGTERM (taken from a
 * signalfd, not a handler) can end them all and the context is freed only
 * after the last one closed its session.  The client is one poll() loop with
 * the session non-blocking, so it reads the echo while it is still writing:
 * a blocking write-then-read client would deadlock on large inputs once both
 * directions' buffers fill.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <tether/tether.h>

#include "cli.h"

#define PROG "tether-echo"
#define BUF_SIZE (128 * 1024)

static void usage(FILE *f) {
  fputs("usage: " PROG " server --listen HOST:PORT\n"
        "       " PROG " client --connect HOST:PORT [--stats]\n"
        "\n"
        "  server   echo every byte of every session until SIGINT/SIGTERM\n"
        "  client   send stdin to the server and write the echo to stdout\n"
        "\n"
        "  -l, --listen HOST:PORT    address to listen on (\":PORT\" = all,\n"
        "                            \"[::1]:PORT\" for IPv6, port 0 = any)\n"
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

struct server {
  int stop_fd; /* eventfd, readable (forever) once the server is stopping */
  pthread_mutex_t mu;
  pthread_cond_t idle; /* signalled when active drops to 0 */
  unsigned active;     /* session threads still running */
  uint64_t next_id;    /* for log lines only */
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

/* Echoes until EOF (0), until the server stops (WAIT_STOP), or an error. */
static int echo_session(tether_session *s, int stop_fd) {
  char *buf = malloc(BUF_SIZE);
  size_t off = 0, len = 0;
  int r;

  if (buf == NULL)
    return -ENOMEM;
  for (;;) {
    ssize_t n;
    short want;

    if (len == 0) {
      n = tether_read(s, buf, BUF_SIZE);
      if (n == 0) {
        r = 0;
        goto out;
      }
      if (n > 0) {
        off = 0;
        len = (size_t)n;
        continue;
      }
      want = POLLIN;
    } else {
      n = tether_write(s, buf + off, len);
      if (n >= 0) {
        off += (size_t)n;
        len -= (size_t)n;
        continue;
      }
      want = POLLOUT;
    }
    if (!cli_err_is_retry((int)n)) {
      r = (int)n;
      goto out;
    }
    r = wait_session(s, want, stop_fd);
    if (r != WAIT_READY)
      goto out;
  }
out:
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
    r = echo_session(job->s, srv->stop_fd);
  if (r == 0) {
    /* Every byte read was echoed: now the client may see our EOF. */
    r = tether_shutdown(job->s);
  }
  if (r < 0)
    cli_print_error(PROG, what, r);
  /* After a logged failure, close's own code would only repeat it. */
  int cr = tether_close(job->s);
  if (cr < 0 && r >= 0)
    cli_print_error(PROG, what, cr);
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
  return 0;
fail:
  free(job);
  (void)tether_close(s); /* the caller reports r */
  return r;
}

/* Tells every session thread to close its session, and waits for them. */
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

static int run_server(const struct cli_hostport *hp) {
  struct server srv = {.stop_fd = -1,
                       .mu = PTHREAD_MUTEX_INITIALIZER,
                       .idle = PTHREAD_COND_INITIALIZER};
  tether_ctx *ctx = NULL;
  tether_listener *l = NULL;
  sigset_t sigs;
  int sig_fd = -1, rc = CLI_EXIT_FAIL, r;

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
      (srv.stop_fd = eventfd(0, EFD_CLOEXEC)) < 0) {
    cli_print_error(PROG, "signal setup", -errno);
    goto out;
  }
  if (cli_ctx_new(PROG, &ctx) < 0)
    goto out;
  r = tether_listen(ctx, hp->host, hp->port, &l);
  if (r < 0) {
    cli_print_addr_error(PROG, "cannot listen on", hp, r);
    goto out;
  }
  r = tether_listener_set_nonblocking(l, 1);
  if (r < 0) {
    cli_print_error(PROG, "listener", r);
    goto out;
  }
  /* Scripts that listen on port 0 read the port from this line. */
  fprintf(stderr, PROG ": listening on port %d\n", tether_listener_port(l));

  for (;;) {
    struct pollfd pfd[2] = {
        {.fd = tether_listener_fd(l), .events = POLLIN},
        {.fd = sig_fd, .events = POLLIN},
    };
    if (poll(pfd, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      cli_print_error(PROG, "poll", -errno);
      goto out;
    }
    if (pfd[1].revents)
      break;
    r = accept_ready(&srv, l);
    if (r < 0) {
      cli_print_error(PROG, "accept", r);
      goto out;
    }
  }
  rc = CLI_EXIT_OK;
out:
  if (l != NULL)
    tether_listener_close(l);
  /* The session threads use ctx: free it only once they are all gone (if
   * they cannot be stopped, exiting frees it anyway). */
  if (stop_sessions(&srv) == 0 && ctx != NULL)
    tether_ctx_free(ctx);
  if (srv.stop_fd >= 0)
    close(srv.stop_fd);
  if (sig_fd >= 0)
    close(sig_fd);
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
      {"connect", required_argument, NULL, 'c'},
      {"stats", no_argument, NULL, 's'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *listen_arg = NULL, *connect_arg = NULL;
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
  while ((c = getopt_long(argc, argv, ":l:c:sVh", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      listen_arg = optarg;
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
      return cli_usage_error(PROG, "server takes only --listen");
    if (listen_arg == NULL)
      return cli_usage_error(PROG, "server needs --listen HOST:PORT");
    if (cli_parse_hostport(listen_arg, &hp) < 0)
      return cli_usage_error(PROG,
                             "bad --listen '%s' (expected HOST:PORT, "
                             "[IPV6]:PORT or :PORT)",
                             listen_arg);
    return run_server(&hp);
  }
  if (listen_arg != NULL)
    return cli_usage_error(PROG, "client takes --connect, not --listen");
  if (connect_arg == NULL)
    return cli_usage_error(PROG, "client needs --connect HOST:PORT");
  if (cli_parse_hostport(connect_arg, &hp) < 0 || hp.host[0] == '\0')
    return cli_usage_error(PROG,
                           "bad --connect '%s' (expected HOST:PORT or "
                           "[IPV6]:PORT)",
                           connect_arg);
  return run_client(&hp, want_stats);
}
