/*
 * async-echo — tether on the application's own libevent loop: an echo
 * server and a load client, each one thread and one event_base.
 *
 *   async-echo server HOST PORT
 *   async-echo load HOST PORT SESSIONS BYTES
 *
 * The server echoes every byte of every session until SIGINT/SIGTERM.  The
 * load client opens SESSIONS sessions at once, sends BYTES pseudo-random
 * bytes on each, checks that every byte comes back in order, shuts each
 * session down and waits for the server's end of stream.  It prints one
 * line per second while it runs, and exits 0 only if every session echoed
 * byte-exact; connections may break meanwhile (ss -K, a restarting
 * server): the sessions resume, and the line counts the resumes.
 *
 * The whole API is here: tether_config_set_event_base() puts a context on
 * the loop; tether_listener_set_accept_cb() and tether_connect_async()
 * hand out sessions; tether_session_setcb() and the two evbuffers move the
 * bytes, as with a bufferevent.  Each session holds one descriptor (its
 * TCP socket) and no thread.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <tether/tether.h>

#define PROG "async-echo"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The byte at offset i of session k's stream. */
static uint8_t pattern(unsigned k, uint64_t i) {
  uint64_t x = (i / 8) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(k + 1) * 0xc2b2ae3d27d4eb4full;
  x ^= x >> 29;
  return (uint8_t)(x >> (8 * (i % 8)));
}

/* ---- server ------------------------------------------------------------ */

static unsigned live_sessions;

/* Everything that arrived goes back: the input buffer moves, uncopied, to
 * the output buffer.  The input's high watermark (256 KiB by default) and
 * TCP's flow control hold back a client that does not read its echo. */
static void echo_read(tether_session *s, void *arg) {
  (void)arg;
  evbuffer_add_buffer(tether_session_output(s), tether_session_input(s));
}

static void echo_event(tether_session *s, tether_event ev, int err, void *arg) {
  (void)arg;
  switch (ev) {
  case TETHER_EVENT_EOF:
    tether_shutdown(s); /* after the echo still buffered */
    break;
  case TETHER_EVENT_CLOSED:
  case TETHER_EVENT_FAILED:
  case TETHER_EVENT_WRITE_FAILED:
    if (ev != TETHER_EVENT_CLOSED)
      fprintf(stderr, PROG ": session ended: %s\n", tether_strerror(err));
    tether_close(s);
    live_sessions--;
    break;
  case TETHER_EVENT_SUSPENDED:
  case TETHER_EVENT_CONNECTED:
    break; /* the session carries on by itself */
  }
}

static void on_accept(tether_listener *l, tether_session *s, void *arg) {
  (void)l;
  (void)arg;
  live_sessions++;
  tether_session_setcb(s, echo_read, NULL, echo_event, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  event_base_loopbreak(arg);
}

static int run_server(struct event_base *base, tether_ctx *ctx, const char *host,
                      const char *port) {
  tether_listener *l;
  int rc = tether_listen(ctx, host, port, &l);
  if (rc < 0) {
    fprintf(stderr, PROG ": cannot listen on %s:%s: %s\n", host, port, tether_strerror(rc));
    return 1;
  }
  tether_listener_set_accept_cb(l, on_accept, NULL);
  struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
  struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
  evsignal_add(sigint, NULL);
  evsignal_add(sigterm, NULL);
  fprintf(stderr, PROG ": listening on port %d\n", tether_listener_port(l));
  event_base_dispatch(base);
  fprintf(stderr, PROG ": stopping with %u sessions open\n", live_sessions);
  event_free(sigint);
  event_free(sigterm);
  return 0;
}

/* ---- load client -------------------------------------------------------- */

struct load;

struct stream {
  struct load *ld;
  unsigned k;
  tether_session *s;
  uint64_t sent, echoed;
  bool done; /* ended: byte-exact to the server's EOF, or failed */
};

struct load {
  struct event_base *base;
  uint64_t bytes;
  unsigned sessions, ended, failed, resumes;
  struct stream *st;
};

static void end_stream(struct stream *t, bool ok) {
  if (t->done)
    return;
  t->done = true;
  t->ld->ended++;
  t->ld->failed += !ok;
  if (t->s)
    tether_close(t->s);
  t->s = NULL;
  if (t->ld->ended == t->ld->sessions)
    event_base_loopbreak(t->ld->base);
}

/* Keeps 64 KiB queued until the stream is all written, then shuts down. */
static void fill(struct stream *t) {
  struct evbuffer *out = tether_session_output(t->s);
  uint8_t chunk[16384];
  while (t->sent < t->ld->bytes && evbuffer_get_length(out) < 65536) {
    size_t n = t->ld->bytes - t->sent < sizeof(chunk) ? (size_t)(t->ld->bytes - t->sent)
                                                      : sizeof(chunk);
    for (size_t i = 0; i < n; i++)
      chunk[i] = pattern(t->k, t->sent + i);
    evbuffer_add(out, chunk, n);
    t->sent += n;
    if (t->sent == t->ld->bytes)
      tether_shutdown(t->s); /* takes effect after the buffered bytes */
  }
}

static void load_write(tether_session *s, void *arg) {
  (void)s;
  fill(arg);
}

static void load_read(tether_session *s, void *arg) {
  struct stream *t = arg;
  struct evbuffer *in = tether_session_input(s);
  uint8_t buf[16384];
  int n;
  while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0)
    for (int i = 0; i < n; i++, t->echoed++)
      if (buf[i] != pattern(t->k, t->echoed)) {
        fprintf(stderr, PROG ": session %u: byte %llu differs\n", t->k,
                (unsigned long long)t->echoed);
        end_stream(t, false);
        return;
      }
}

static void load_event(tether_session *s, tether_event ev, int err, void *arg) {
  struct stream *t = arg;
  (void)s;
  if (ev == TETHER_EVENT_CONNECTED)
    t->ld->resumes++;
  else if (ev == TETHER_EVENT_EOF)
    end_stream(t, t->echoed == t->ld->bytes);
  else if (ev == TETHER_EVENT_FAILED || ev == TETHER_EVENT_WRITE_FAILED) {
    fprintf(stderr, PROG ": session %u: %s\n", t->k, tether_strerror(err));
    end_stream(t, false);
  }
}

static void on_connected(tether_session *s, int err, void *arg) {
  struct stream *t = arg;
  if (err < 0) {
    fprintf(stderr, PROG ": session %u: cannot connect: %s\n", t->k, tether_strerror(err));
    end_stream(t, false);
    return;
  }
  t->s = s;
  tether_session_setcb(s, load_read, load_write, load_event, t);
  /* writecb once the output is down to 16 KiB: refill before it runs dry. */
  tether_session_setwatermark(s, TETHER_EV_WRITE, 16384, 0);
  fill(t);
}

static void on_second(evutil_socket_t fd, short what, void *arg) {
  struct load *ld = arg;

  uint64_t echoed = 0;
  (void)fd;
  (void)what;
  for (unsigned k = 0; k < ld->sessions; k++)
    echoed += ld->st[k].echoed;
  fprintf(stderr, PROG ": %u of %u sessions done, %.1f MiB echoed, %u resumes\n", ld->ended,
          ld->sessions, (double)echoed / 1048576.0, ld->resumes);
}

static int run_load(struct event_base *base, tether_ctx *ctx, const char *host, const char *port,
                    unsigned sessions, uint64_t bytes) {
  struct load ld = {.base = base, .bytes = bytes, .sessions = sessions};
  if (!(ld.st = calloc(sessions, sizeof(*ld.st))))
    return 1;
  double t0 = now_s();
  for (unsigned k = 0; k < sessions; k++) {
    ld.st[k] = (struct stream){.ld = &ld, .k = k};
    int rc = tether_connect_async(ctx, host, port, on_connected, &ld.st[k]);
    if (rc < 0) {
      fprintf(stderr, PROG ": cannot connect to %s:%s: %s\n", host, port, tether_strerror(rc));
      end_stream(&ld.st[k], false);
    }
  }
  struct event *tick = event_new(base, -1, EV_PERSIST, on_second, &ld);
  struct timeval second = {1, 0};
  event_add(tick, &second);
  if (ld.ended < ld.sessions)
    event_base_dispatch(base);
  event_free(tick);
  double secs = now_s() - t0;
  printf("sessions=%u bytes_each=%llu seconds=%.3f failed=%u resumes=%u mib_per_s=%.1f\n",
         sessions, (unsigned long long)bytes, secs, ld.failed, ld.resumes,
         (double)bytes * 2 * sessions / 1048576.0 / secs);
  for (unsigned k = 0; k < sessions; k++)
    if (ld.st[k].s)
      tether_close(ld.st[k].s);
  free(ld.st);
  return ld.failed ? 1 : 0;
}

/* A loop with two priorities -- tether's side channel and the ends of
 * connections take the higher, everything else (timers, handshakes, the
 * sessions' bytes) the lower -- which looks for new events after 50 ms of
 * lower-priority callbacks: with thousands of busy sessions, heartbeats
 * are read in time. */
static struct event_base *new_loop(void) {
  struct event_config *ec = event_config_new();
  struct timeval slice = {0, 50000};
  struct event_base *base = NULL;
  if (ec && event_config_set_max_dispatch_interval(ec, &slice, -1, 1) == 0)
    base = event_base_new_with_config(ec);
  event_config_free(ec);
  if (base && event_base_priority_init(base, 2) < 0) {
    event_base_free(base);
    base = NULL;
  }
  return base;
}

int main(int argc, char **argv) {
  bool server = argc == 4 && strcmp(argv[1], "server") == 0;
  bool load = argc == 6 && strcmp(argv[1], "load") == 0;
  if (!server && !load) {
    fprintf(stderr, "usage: " PROG " server HOST PORT\n"
                    "       " PROG " load HOST PORT SESSIONS BYTES\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct event_base *base = new_loop();
  tether_config *cfg = tether_config_new();
  tether_ctx *ctx = NULL;
  int rc = base && cfg ? tether_config_load_env(cfg) : -ENOMEM;
  if (rc == 0) {
    tether_config_set_event_base(cfg, base);
    rc = tether_ctx_new(cfg, &ctx);
  }
  tether_config_free(cfg);
  if (rc < 0) {
    fprintf(stderr, PROG ": %s\n", tether_strerror(rc));
    return 1;
  }
  int status = server ? run_server(base, ctx, argv[2], argv[3])
                      : run_load(base, ctx, argv[2], argv[3], (unsigned)strtoul(argv[4], NULL, 10),
                                 strtoull(argv[5], NULL, 10));
  tether_ctx_free(ctx); /* runs the loop while closed sessions finish */
  event_base_free(base);
  return status;
}
