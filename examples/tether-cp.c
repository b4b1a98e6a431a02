/*
 * tether-cp — copies one file over a tether session and checks it end to
 * end with SHA-256; with --state, either side survives kill -9.
 *
 *   tether-cp recv --listen HOST:PORT --out FILE [--state DIR]
 *   tether-cp send --connect HOST:PORT FILE [--state DIR] [--limit-rate RATE]
 *   ... --plain: the same over a plain TCP connection (benchmarks)
 *
 * The streams (cp_format.h): the sender writes a header, the file and its
 * SHA-256; the receiver writes FILE.part, checks the digest, renames
 * FILE.part to FILE and answers with a verdict; the sender's end of stream
 * then tells the receiver that the sender has the verdict, and the
 * receiver's end of stream ends the exchange.  Both exit 0 only for a
 * verified copy.
 *
 * --state: each side is one thread doing all its session I/O, so its
 * progress (stream position, phase) and tether_snapshot() describe the same
 * moment when taken together.  A checkpoint writes both into one state file
 * (temporary file, fsync, rename, fsync of the directory) and only then
 * tells tether the snapshot is durable (tether_snapshot_commit), after which
 * the peer may drop the bytes it covers.  The receiver fsyncs FILE.part
 * before, so the file always holds at least what the state counts.  A
 * restart restores the snapshot, goes back to the recorded position (the
 * receiver truncates FILE.part there, the sender seeks its input; both hash
 * the prefix again) and carries on: tether resends what this side had not
 * received and checks what it writes again against what the peer already
 * has.
 *
 * --plain: the same program over a plain TCP socket instead of a session
 * (conn_* below), for comparing tether with TCP on identical work (reading,
 * hashing, writing the file); no --state, no recovery.
 */
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <tether/tether.h>

#include "cli.h"
#include "cp_format.h"

#define PROG "tether-cp"
#define BUF_SIZE (128 * 1024)
/* Default --snapshot-every.  The receiver's checkpoints are small (its
 * snapshot holds no data) and bound what the sender retains; the sender's
 * hold the bytes the receiver has not committed yet (about the receiver's
 * interval plus what is in flight), so it takes them less often: a
 * restarted sender sends again what followed its checkpoint, and the
 * receiver checks it with 8 bytes of hashes per KiB.  Those hashes cover
 * at most TETHER_OPT_RETAIN_MAX_BYTES (64 MiB) past the sender's last
 * commit: a checkpoint is never more than two intervals late (see
 * checkpoint_due), so 16M keeps well inside. */
#define DEFAULT_SNAPSHOT_EVERY_RECV (8u << 20)
#define DEFAULT_SNAPSHOT_EVERY_SEND (16u << 20)
/* While no data arrives for this long, the receiver checkpoints what it
 * has: the sender's retention cap can then never wait on a checkpoint that
 * only more data would trigger. */
#define IDLE_CHECKPOINT_MS 200
/* How long a side that is done waits for its last bytes and end of stream
 * to be acknowledged before it exits anyway. */
#define LINGER_MS 5000
/* Largest state file read back (the snapshot holds retained bytes). */
#define STATE_FILE_MAX ((size_t)1 << 31)

static void usage(FILE *f) {
  fputs("usage: " PROG " recv --listen HOST:PORT --out FILE [--state DIR]\n"
        "       " PROG " send --connect HOST:PORT FILE [--state DIR]\n"
        "                      [--limit-rate RATE]\n"
        "\n"
        "  recv   receive one file into FILE (written as FILE.part, renamed\n"
        "         once its SHA-256 is verified)\n"
        "  send   send FILE; exit 0 once the receiver verified it\n"
        "\n"
        "  -l, --listen HOST:PORT      (recv) address to listen on\n"
        "  -o, --out FILE              (recv) where to store the file\n"
        "  -c, --connect HOST:PORT     (send) receiver to connect to\n"
        "  -s, --state DIR             keep progress and session snapshots in "
        "DIR:\n"
        "                              run again with the same arguments "
        "after a\n"
        "                              crash or kill -9 to resume\n"
        "  -e, --snapshot-every BYTES  checkpoint at least every BYTES "
        "(default 8M\n"
        "                              for recv, 16M for send)\n"
        "  -r, --limit-rate RATE       (send) at most RATE bytes per second "
        "(50M, 512K)\n"
        "  -p, --plain                 plain TCP instead of tether, no "
        "recovery\n"
        "                              (both sides; for benchmarks)\n"
        "  -V, --version               print the library version\n"
        "  -h, --help                  print this help\n"
        "\n"
        "A progress bar is shown on stderr when it is a terminal.  Tuning "
        "comes from\n"
        "the TETHER_* environment variables; see tether-cp(1).\n",
        f);
}

struct opts {
  int is_send;
  const char *peer_arg;  /* --listen / --connect, as given */
  struct cli_hostport hp;
  const char *file;      /* send: the input; recv: --out */
  const char *state_dir; /* NULL without --state */
  uint64_t every;        /* --snapshot-every */
  uint64_t rate;         /* --limit-rate; 0 = unlimited */
  int plain;             /* --plain */
};

/* ---- crash points (test builds only) --------------------------------------- */

#ifdef TETHER_CP_CRASH_HOOKS
/* TETHER_CP_CRASH=POINT:N kills the process (SIGKILL, as kill -9 would) the
 * Nth time it reaches POINT.  Compiled only into the tests' copy of the
 * tool (tests/integration/CMakeLists.txt). */
static void crash_point(const char *point) {
  static unsigned long hits;
  const char *spec = getenv("TETHER_CP_CRASH");
  size_t n = strlen(point);

  if (spec == NULL || strncmp(spec, point, n) != 0 || spec[n] != ':')
    return;
  if (++hits == strtoul(spec + n + 1, NULL, 10))
    raise(SIGKILL);
}
#else
static void crash_point(const char *point) { (void)point; }
#endif

/* ---- messages and the progress bar ----------------------------------------- */

struct progress {
  int on;       /* stderr is a terminal */
  int drawn;    /* a bar line is on the screen, not yet ended */
  uint64_t total, base, t0, last;
};

/* The only progress bar; messages end its line first. */
static struct progress bar;

static void bar_break(void) {
  if (bar.drawn)
    fputc('\n', stderr);
  bar.drawn = 0;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;

  bar_break();
  fputs(PROG ": ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* "tether-cp: WHAT: message (NAME)"; returns -1 (the error is reported). */
static int report(const char *what, int err) {
  bar_break();
  cli_print_error(PROG, what, err);
  return -1;
}

static int report_file(const char *what, const char *path, int err) {
  char buf[CP_STATE_PATH_MAX + 64];

  snprintf(buf, sizeof(buf), "%s %s", what, path);
  return report(buf, err);
}

static const char *human(uint64_t v, char *buf, size_t len) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double d = (double)v;
  unsigned u = 0;

  while (d >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
    d /= 1024;
    u++;
  }
  snprintf(buf, len, u == 0 ? "%.0f %s" : "%.1f %s", d, units[u]);
  return buf;
}

static void progress_start(uint64_t total, uint64_t done) {
  bar.on = isatty(STDERR_FILENO);
  bar.total = total;
  bar.base = done;
  bar.t0 = bar.last = cli_now_ns();
}

static void progress_show(uint64_t done, int force) {
  char a[32], b[32], r[32], eta[32] = "--:--";
  uint64_t now = cli_now_ns();
  double secs, rate;

  if (!bar.on || (!force && now - bar.last < 250000000u))
    return;
  bar.last = now;
  secs = (double)(now - bar.t0) / 1e9;
  rate = secs > 0 ? (double)(done - bar.base) / secs : 0;
  if (rate > 0) {
    uint64_t left = (uint64_t)((double)(bar.total - done) / rate);
    snprintf(eta, sizeof(eta), "%" PRIu64 ":%02" PRIu64, left / 60, left % 60);
  }
  fprintf(stderr, "\r%s / %s  %3d%%  %s/s  ETA %s\033[K",
          human(done, a, sizeof(a)), human(bar.total, b, sizeof(b)),
          bar.total ? (int)(done * 100.0 / (double)bar.total) : 100,
          human((uint64_t)rate, r, sizeof(r)), eta);
  bar.drawn = 1;
}

/* ---- the state directory --------------------------------------------------- */

struct store {
  char *path; /* DIR/send.state or DIR/recv.state */
  char *tmp;  /* the same with .tmp */
  char *lock; /* DIR/send.lock: one process per side and directory */
  int dir_fd, lock_fd;
};

static char *join(const char *dir, const char *name, const char *ext) {
  char *s;

  if (asprintf(&s, "%s/%s%s", dir, name, ext) < 0)
    return NULL;
  return s;
}

/* Without a state file (never written, or removed at the end) the lock file
 * goes too, while still held: a process waiting on it then finds no state
 * and starts a new transfer. */
static void store_close(struct store *st) {
  struct stat sb;

  if (st->lock_fd >= 0) {
    if (stat(st->path, &sb) < 0 && errno == ENOENT)
      (void)unlink(st->lock);
    close(st->lock_fd);
  }
  if (st->dir_fd >= 0)
    close(st->dir_fd);
  free(st->path);
  free(st->tmp);
  free(st->lock);
}

/* Creates DIR if needed (mode 0700) and takes its lock for this side. */
static int store_open(struct store *st, const char *dir, const char *role) {
  *st = (struct store){.dir_fd = -1, .lock_fd = -1};
  if (mkdir(dir, 0700) < 0 && errno != EEXIST)
    return report_file("cannot create the state directory", dir, -errno);
  st->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (st->dir_fd < 0)
    return report_file("cannot open the state directory", dir, -errno);
  st->path = join(dir, role, ".state");
  st->tmp = join(dir, role, ".state.tmp");
  st->lock = join(dir, role, ".lock");
  if (st->path == NULL || st->tmp == NULL || st->lock == NULL)
    return report("out of memory", -ENOMEM);
  st->lock_fd = open(st->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (st->lock_fd < 0)
    return report_file("cannot create", st->lock, -errno);
  if (flock(st->lock_fd, LOCK_EX | LOCK_NB) < 0) {
    if (errno != EWOULDBLOCK)
      return report_file("cannot lock", st->lock, -errno);
    say("another tether-cp %s is using %s", role, dir);
    return -1;
  }
  /* A checkpoint that was cut short: the state file is still the previous
   * one, this is garbage. */
  if (unlink(st->tmp) < 0 && errno != ENOENT)
    return report_file("cannot remove", st->tmp, -errno);
  return 0;
}

/* Reads the state file: 0 with *buf (free(3)) and *len, 1 when there is
 * none, or -1 (reported). */
static int store_read(struct store *st, uint8_t **buf, size_t *len) {
  struct stat sb;
  uint8_t *b = NULL;
  size_t got = 0;
  int fd, r = -1;

  fd = open(st->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return 1;
    return report_file("cannot open", st->path, -errno);
  }
  if (fstat(fd, &sb) < 0) {
    report_file("cannot stat", st->path, -errno);
    goto out;
  }
  if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > STATE_FILE_MAX) {
    say("%s: not a tether-cp state file (not a regular file, or too large)",
        st->path);
    goto out;
  }
  b = malloc((size_t)sb.st_size + 1);
  if (b == NULL) {
    report("out of memory", -ENOMEM);
    goto out;
  }
  while (got < (size_t)sb.st_size) {
    ssize_t n = read(fd, b + got, (size_t)sb.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      report_file("cannot read", st->path, -errno);
      goto out;
    }
    if (n == 0)
      break;
    got += (size_t)n;
  }
  *buf = b;
  *len = got;
  b = NULL;
  r = 0;
out:
  free(b);
  close(fd);
  return r;
}

/* Replaces the state file atomically; 0 or -1 (reported). */
static int store_write(struct store *st, const uint8_t *buf, size_t len) {
  int fd, err;

  fd = open(st->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return report_file("cannot create", st->tmp, -errno);
  err = cli_fd_write_all(fd, buf, len);
  if (err == 0 && fsync(fd) < 0)
    err = -errno;
  if (close(fd) < 0 && err == 0)
    err = -errno;
  if (err < 0)
    return report_file("cannot write", st->tmp, err);
  crash_point("state-tmp");
  if (rename(st->tmp, st->path) < 0)
    return report_file("cannot rename to", st->path, -errno);
  if (fsync(st->dir_fd) < 0)
    return report_file("cannot fsync the directory of", st->path, -errno);
  crash_point("state-saved");
  return 0;
}

/* Removes the state file, once the transfer is over. */
static void store_remove(struct store *st) {
  if (unlink(st->path) < 0 && errno != ENOENT)
    report_file("cannot remove", st->path, -errno);
  else if (fsync(st->dir_fd) < 0)
    report_file("cannot fsync the directory of", st->path, -errno);
}

/* ---- one side of a transfer ------------------------------------------------ */

struct xfer {
  const struct opts *o;
  tether_ctx *ctx;
  tether_session *s;
  int sock;          /* --plain: the TCP connection, else -1 */
  struct store store;
  int has_store;     /* --state */
  struct writer *w;  /* --state: the checkpoint writer thread */
  struct cp_state st; /* progress; st.pos is our position in the stream */
  uint64_t snap_pos; /* st.pos at the last checkpoint */
  int fd;            /* send: the input; recv: FILE.part */
  char *part;        /* recv: FILE.part */
  EVP_MD_CTX *md;    /* SHA-256 of the file bytes up to st.pos */
  uint8_t buf[BUF_SIZE];
};

/* ---- checkpoints ------------------------------------------------------------ */

/* A checkpoint has two halves.  The first, in the transfer's thread, takes
 * the snapshot and encodes it with the progress: nothing else runs session
 * I/O meanwhile, so both describe the same moment.  The second, the slow
 * one, runs on the writer thread while the transfer goes on: fdatasync of
 * FILE.part (recv: the file must hold every byte the state counts; the
 * bytes are written before the snapshot is taken), the state file written
 * atomically, and only then tether_snapshot_commit(), after which the peer
 * may drop the bytes the snapshot covers.  One checkpoint at a time: the
 * next one waits for the previous to be durable. */
struct writer {
  pthread_t tid;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int busy;     /* a job is handed over and not finished */
  int stop;
  int err;      /* the last job failed (reported by the writer) */
  struct xfer *x;
  uint8_t *buf; /* the state file's content */
  size_t len;
  void *blob;   /* the snapshot in it, for the commit */
  size_t blob_len;
  uint64_t pos;     /* the job's stream position */
  uint64_t durable; /* the position of the last committed checkpoint */
};

static int write_job(struct writer *w) {
  struct xfer *x = w->x;
  int r;

  if (!x->o->is_send && x->fd >= 0 && fdatasync(x->fd) < 0)
    return report_file("cannot fsync", x->part, -errno);
  if (store_write(&x->store, w->buf, w->len) < 0)
    return -1;
  r = tether_snapshot_commit(x->ctx, w->blob, w->blob_len);
  if (r < 0)
    return report("cannot commit the snapshot", r);
  return 0;
}

static void *writer_main(void *arg) {
  struct writer *w = arg;

  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->busy && !w->stop)
      pthread_cond_wait(&w->cv, &w->mu);
    if (!w->busy)
      break;
    pthread_mutex_unlock(&w->mu);
    int r = write_job(w);
    free(w->buf);
    free(w->blob);
    pthread_mutex_lock(&w->mu);
    w->buf = NULL;
    w->blob = NULL;
    if (r < 0)
      w->err = 1;
    else
      w->durable = w->pos;
    w->busy = 0;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static int writer_start(struct xfer *x) {
  struct writer *w = calloc(1, sizeof(*w));
  int r;

  if (w == NULL)
    return report("out of memory", -ENOMEM);
  w->x = x;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  r = -pthread_create(&w->tid, NULL, writer_main, w);
  if (r < 0) {
    free(w);
    return report("cannot start the checkpoint thread", r);
  }
  x->w = w;
  return 0;
}

/* Waits until the checkpoint in progress, if any, is durable: 0, or -1 if
 * it failed (reported). */
static int checkpoint_wait(struct xfer *x) {
  struct writer *w = x->w;
  int err;

  if (w == NULL)
    return 0;
  pthread_mutex_lock(&w->mu);
  while (w->busy)
    pthread_cond_wait(&w->cv, &w->mu);
  err = w->err;
  pthread_mutex_unlock(&w->mu);
  return err ? -1 : 0;
}

static void writer_stop(struct xfer *x) {
  struct writer *w = x->w;

  if (w == NULL)
    return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->tid, NULL);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  free(w);
  x->w = NULL;
}

/* Takes a checkpoint and hands its slow half to the writer (after the
 * previous one is durable); 0 or -1 (reported). */
static int checkpoint_start(struct xfer *x) {
  struct writer *w = x->w;
  void *blob = NULL;
  uint8_t *buf = NULL;
  size_t blob_len, len;
  int r;

  if (!x->has_store)
    return 0;
  if (checkpoint_wait(x) < 0)
    return -1;
  /* While it streams, the sender can write everything again from its
   * file: its snapshots leave out what it retains for the receiver
   * (tether_snapshot_lean), which would make them as large as what the
   * receiver has not committed yet, and restore() goes back to where the
   * session is. */
  if (x->o->is_send && x->st.phase == CP_PHASE_STREAM)
    r = tether_snapshot_lean(x->ctx, &blob, &blob_len);
  else
    r = tether_snapshot(x->ctx, &blob, &blob_len);
  if (r < 0)
    return report("cannot snapshot the session", r);
  x->st.blob = blob;
  x->st.blob_len = blob_len;
  r = cp_state_encode(&x->st, &buf, &len);
  x->st.blob = NULL;
  x->st.blob_len = 0;
  if (r < 0) {
    free(blob);
    return report("cannot encode the state", r);
  }
  pthread_mutex_lock(&w->mu);
  w->buf = buf;
  w->len = len;
  w->blob = blob;
  w->blob_len = blob_len;
  w->pos = x->st.pos;
  w->busy = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  x->snap_pos = x->st.pos;
  return 0;
}

/* In the stream: a checkpoint is due every --snapshot-every bytes.  While
 * the previous one is still being written, it is put off rather than
 * waited for, so that checkpoints follow the disk's pace instead of
 * stalling the transfer.  On the receiver the sender's retention cap
 * bounds how far that goes (the sender waits there).  The sender's lag
 * must stay within the receiver's replay hashes, which reach back
 * TETHER_OPT_RETAIN_MAX_BYTES: once its last committed checkpoint is two
 * intervals behind, checkpoint_start waits for the writer. */
static int checkpoint_due(struct xfer *x) {
  uint64_t every = x->o->every, durable;
  int busy;

  if (!x->has_store || x->st.pos - x->snap_pos < every)
    return 0;
  pthread_mutex_lock(&x->w->mu);
  busy = x->w->busy;
  durable = x->w->durable;
  pthread_mutex_unlock(&x->w->mu);
  return !busy || (x->o->is_send && x->st.pos - durable >= 2 * every);
}

/* want, cut so that a read or write ends where the next checkpoint is due
 * (if one is not overdue already). */
static uint64_t checkpoint_bound(const struct xfer *x, uint64_t want) {
  uint64_t due = x->snap_pos + x->o->every;

  if (x->has_store && x->st.pos < due && want > due - x->st.pos)
    want = due - x->st.pos;
  return want;
}

/* A checkpoint that is durable when this returns: 0 or -1 (reported). */
static int checkpoint(struct xfer *x) {
  if (checkpoint_start(x) < 0)
    return -1;
  return checkpoint_wait(x);
}

/* Restores the context from the state file, if there is one.  Returns 1
 * when there is none (a new transfer), 0 when x->ctx, x->s and x->st come
 * from it, or -1 (reported; the state file is left alone).  The sender has
 * filled x->st with its input's size and mtime. */
static int restore(struct xfer *x, const tether_config *cfg) {
  const char *role = x->o->is_send ? "send" : "recv", *why;
  uint8_t *buf = NULL;
  struct cp_state st;
  tether_stats stats;
  tether_session *ss[2];
  size_t len = 0, n;
  int r;

  r = store_read(&x->store, &buf, &len);
  if (r != 0)
    return r;
  r = -1;
  if (cp_state_decode(buf, len, &st, &why) < 0) {
    say("%s: %s; refusing to resume (remove it to start over)",
        x->store.path, why);
    goto out;
  }
  if (st.role != (x->o->is_send ? CP_ROLE_SEND : CP_ROLE_RECV) ||
      strcmp(st.path, x->o->file) != 0 || strcmp(st.peer, x->o->peer_arg) != 0) {
    say("%s belongs to another transfer (%s %s, %s); run that again, or "
        "remove the file to start over",
        x->store.path, st.role == CP_ROLE_SEND ? "send" : "recv", st.path,
        st.peer);
    goto out;
  }
  /* send: x->st describes the input as it is now. */
  if (x->o->is_send &&
      (st.size != x->st.size || st.mtime_ns != x->st.mtime_ns)) {
    say("%s changed since the transfer began (size or modification time); "
        "remove %s to start over",
        x->o->file, x->store.path);
    goto out;
  }
  r = tether_restore(cfg, st.blob, st.blob_len, &x->ctx);
  if (r < 0) {
    char what[CP_STATE_PATH_MAX + 64];
    snprintf(what, sizeof(what), "%s: cannot restore its session snapshot",
             x->store.path);
    r = report(what, r);
    goto out;
  }
  r = -1;
  n = tether_ctx_sessions(x->ctx, ss, 2);
  if (n != 1) {
    say("%s: its snapshot holds %zu sessions, expected 1; refusing to resume",
        x->store.path, n);
    goto out;
  }
  x->s = ss[0];
  r = tether_session_stats(x->s, &stats);
  if (r < 0) {
    r = report("session", r);
    goto out;
  }
  r = -1;
  /* The sender's stream snapshots are lean (see checkpoint_start): its
   * session may be back before its progress, and it writes again from
   * there. */
  if (x->o->is_send && st.phase == CP_PHASE_STREAM && stats.bytes_sent < st.pos)
    st.pos = stats.bytes_sent;
  if ((x->o->is_send ? stats.bytes_sent : stats.bytes_received) != st.pos) {
    say("%s: its progress (%" PRIu64 " bytes) does not match its session "
        "snapshot (%" PRIu64 "); refusing to resume",
        x->store.path, st.pos,
        x->o->is_send ? stats.bytes_sent : stats.bytes_received);
    goto out;
  }
  /* From now on the strings are ours (they are equal). */
  st.path = x->o->file;
  st.peer = x->o->peer_arg;
  st.blob = NULL;
  st.blob_len = 0;
  x->st = st;
  x->snap_pos = st.pos;
  x->w->durable = st.pos; /* no writer job yet: no lock needed */
  say("resuming %s from %s at byte %" PRIu64 " of %" PRIu64, role,
      x->store.path, cp_file_offset(st.size, st.pos), st.size);
  r = 0;
out:
  free(buf);
  return r;
}

/* Hashes the first off bytes of x->fd again and leaves it at off. */
static int rehash(struct xfer *x, uint64_t off, const char *path) {
  uint64_t done = 0;

  if (EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1)
    return report("SHA-256", -ENOMEM);
  while (done < off) {
    size_t want = off - done < BUF_SIZE ? (size_t)(off - done) : BUF_SIZE;
    ssize_t n = pread(x->fd, x->buf, want, (off_t)done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return report_file("cannot read", path, -errno);
    if (n == 0) {
      say("%s: shorter than the %" PRIu64 " bytes already transferred; "
          "refusing to resume",
          path, off);
      return -1;
    }
    if (EVP_DigestUpdate(x->md, x->buf, (size_t)n) != 1)
      return report("SHA-256", -ENOMEM);
    done += (uint64_t)n;
  }
  if (lseek(x->fd, (off_t)off, SEEK_SET) < 0)
    return report_file("cannot seek in", path, -errno);
  return 0;
}

/* ---- the connection: a tether session, or (--plain) a TCP socket -------- */

static ssize_t conn_read(struct xfer *x, void *buf, size_t len) {
  ssize_t n;

  if (x->sock < 0)
    return tether_read(x->s, buf, len);
  n = read(x->sock, buf, len);
  return n < 0 ? -errno : n;
}

static int conn_fd(const struct xfer *x) {
  return x->sock >= 0 ? x->sock : tether_fd(x->s);
}

static int conn_shutdown(struct xfer *x) {
  if (x->sock < 0)
    return tether_shutdown(x->s);
  return shutdown(x->sock, SHUT_WR) < 0 ? -errno : 0;
}

/* Ends the connection (a session is closed: its peer reads no more). */
static void conn_close(struct xfer *x) {
  if (x->s != NULL)
    (void)tether_close(x->s); /* the outcome was reported already */
  x->s = NULL;
  if (x->sock >= 0)
    close(x->sock);
  x->sock = -1;
}

/* Both modes make the connection non-blocking: every wait is a poll. */
static int conn_nonblocking(struct xfer *x) {
  int fl;

  if (x->sock < 0)
    return tether_set_nonblocking(x->s, 1);
  fl = fcntl(x->sock, F_GETFL);
  if (fl < 0 || fcntl(x->sock, F_SETFL, fl | O_NONBLOCK) < 0)
    return -errno;
  return 0;
}

/* Reads up to len (>= 1) bytes, waiting as long as it takes; 0 at the
 * peer's end of stream.  With idle_checkpoint, the receiver checkpoints
 * while it waits (only where every byte read so far is counted in
 * x->st.pos). */
static ssize_t session_read(struct xfer *x, void *buf, size_t len,
                            int idle_checkpoint) {
  for (;;) {
    ssize_t n = conn_read(x, buf, len);
    struct pollfd p = {.fd = conn_fd(x), .events = POLLIN};
    int r;

    if (n >= 0)
      return n;
    if (!cli_err_is_retry((int)n))
      return report("session", (int)n);
    r = poll(&p, 1, IDLE_CHECKPOINT_MS);
    if (r < 0 && errno != EINTR)
      return report("poll", -errno);
    if (r == 0 && idle_checkpoint && x->st.pos > x->snap_pos &&
        checkpoint_start(x) < 0)
      return -1;
  }
}

/* Reads exactly len bytes; an end of stream first is an error naming what
 * was expected. */
static int read_exact(struct xfer *x, void *buf, size_t len,
                      const char *what) {
  uint8_t *p = buf;

  while (len > 0) {
    ssize_t n = session_read(x, p, len, 0);
    if (n < 0)
      return -1;
    if (n == 0) {
      say("the peer ended the session before %s", what);
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Waits for the peer's end of stream: nothing else may come. */
static int read_eof(struct xfer *x) {
  ssize_t n = session_read(x, x->buf, sizeof(x->buf), 0);

  if (n < 0)
    return -1;
  if (n > 0) {
    say("the peer sent %zd unexpected bytes at the end of the transfer", n);
    return -1;
  }
  return 0;
}

static int write_all(struct xfer *x, const void *buf, size_t len) {
  int r = x->sock >= 0 ? cli_fd_write_all(x->sock, buf, len)
                       : cli_session_write_all(x->s, buf, len);

  if (r == -EPIPE) {
    say("the %s closed the session (see its error output)",
        x->o->is_send ? "receiver" : "sender");
    return -1;
  }
  return r < 0 ? report("session", r) : 0;
}

/* Gives the session up to LINGER_MS to reach CLOSED, so that our last
 * bytes and end of stream are not lost with the process; the outcome of
 * the transfer is settled by then. */
static void linger(tether_session *s) {
  uint64_t deadline = cli_now_ns() + LINGER_MS * 1000000ull;
  struct timespec nap = {.tv_nsec = 20000000};

  while (tether_session_state(s) != TETHER_STATE_CLOSED &&
         tether_session_state(s) != TETHER_STATE_FAILED &&
         cli_now_ns() < deadline)
    nanosleep(&nap, NULL);
}

/* Frees x.  A session still open here is dropped as by a crash, not
 * closed: the state file keeps it resumable. */
static void xfer_clear(struct xfer *x) {
  writer_stop(x); /* waits for the checkpoint in progress */
  if (x->ctx != NULL)
    tether_ctx_free(x->ctx);
  if (x->fd >= 0)
    close(x->fd);
  EVP_MD_CTX_free(x->md);
  free(x->part);
  if (x->has_store)
    store_close(&x->store);
}

/* Prepares x; with --state, opens the state directory. */
static int xfer_init(struct xfer *x, const struct opts *o) {
  memset(x, 0, offsetof(struct xfer, buf));
  x->o = o;
  x->fd = -1;
  x->sock = -1;
  x->st.role = o->is_send ? CP_ROLE_SEND : CP_ROLE_RECV;
  x->st.phase = CP_PHASE_STREAM;
  x->st.path = o->file;
  x->st.peer = o->peer_arg;
  x->md = EVP_MD_CTX_new();
  if (x->md == NULL)
    return report("SHA-256", -ENOMEM);
  if (o->state_dir == NULL)
    return 0;
  x->has_store = 1;
  if (writer_start(x) < 0)
    return -1;
  return store_open(&x->store, o->state_dir, o->is_send ? "send" : "recv");
}

/* ---- send ------------------------------------------------------------------ */

struct pacer {
  uint64_t rate; /* bytes per second, 0 = unlimited */
  uint64_t t0, sent;
};

/* Sleeps until the bytes sent so far are within the rate, then counts n. */
static void pace(struct pacer *p, size_t n) {
  if (p->rate == 0)
    return;
  uint64_t due = p->t0 + (uint64_t)((double)p->sent * 1e9 / (double)p->rate);
  uint64_t now = cli_now_ns();
  if (due > now) {
    struct timespec ts = {.tv_sec = (time_t)((due - now) / 1000000000u),
                          .tv_nsec = (long)((due - now) % 1000000000u)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
      ;
  }
  p->sent += n;
}

/* Writes the rest of the stream from x->st.pos: header, file, digest. */
static int send_stream(struct xfer *x) {
  const struct opts *o = x->o;
  uint64_t size = x->st.size, off = cp_file_offset(size, x->st.pos);
  struct pacer pacer = {.rate = o->rate, .t0 = cli_now_ns()};
  size_t chunk = BUF_SIZE;
  uint8_t hdr[CP_HEADER_LEN], digest[CP_DIGEST_LEN];
  unsigned dlen;

  if (o->rate > 0 && o->rate / 16 < chunk)
    chunk = o->rate / 16 > 0 ? (size_t)(o->rate / 16) : 1;
  if (x->st.pos < CP_HEADER_LEN) {
    cp_header_encode(size, hdr);
    if (write_all(x, hdr + x->st.pos, CP_HEADER_LEN - x->st.pos) < 0)
      return -1;
    x->st.pos = CP_HEADER_LEN;
  }
  progress_start(size, off);
  while (off < size) {
    uint64_t want = size - off;
    if (want > chunk)
      want = chunk;
    want = checkpoint_bound(x, want);
    ssize_t n = read(x->fd, x->buf, (size_t)want);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return report_file("cannot read", o->file, -errno);
    if (n == 0) {
      say("%s: shrank to %" PRIu64 " bytes while being sent", o->file, off);
      return -1;
    }
    if (EVP_DigestUpdate(x->md, x->buf, (size_t)n) != 1)
      return report("SHA-256", -ENOMEM);
    pace(&pacer, (size_t)n);
    if (write_all(x, x->buf, (size_t)n) < 0)
      return -1;
    off += (uint64_t)n;
    x->st.pos += (uint64_t)n;
    progress_show(off, 0);
    if (checkpoint_due(x) && checkpoint_start(x) < 0)
      return -1;
  }
  progress_show(off, 1);
  bar_break();
  if (EVP_DigestFinal_ex(x->md, digest, &dlen) != 1 || dlen != CP_DIGEST_LEN)
    return report("SHA-256", -ENOMEM);
  uint64_t dpos = x->st.pos - CP_HEADER_LEN - size;
  if (write_all(x, digest + dpos, CP_DIGEST_LEN - dpos) < 0)
    return -1;
  x->st.pos = cp_stream_len(size);
  return checkpoint(x);
}

static int open_input(struct xfer *x) {
  const char *path = x->o->file;
  struct stat sb;

  x->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (x->fd < 0)
    return report_file("cannot open", path, -errno);
  if (fstat(x->fd, &sb) < 0)
    return report_file("cannot stat", path, -errno);
  if (!S_ISREG(sb.st_mode)) {
    say("%s: not a regular file", path);
    return -1;
  }
  if ((uint64_t)sb.st_size > CP_SIZE_MAX) {
    say("%s: too large", path);
    return -1;
  }
  x->st.size = (uint64_t)sb.st_size;
  x->st.mtime_ns =
      (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec;
  return 0;
}

static int run_send(const struct opts *o) {
  static struct xfer x;
  tether_config *cfg = NULL;
  uint8_t v[CP_VERDICT_LEN];
  int rc = CLI_EXIT_FAIL, r;

  if (xfer_init(&x, o) < 0 || open_input(&x) < 0 ||
      cli_config_new(PROG, o->state_dir != NULL, &cfg) < 0)
    goto out;
  r = x.has_store ? restore(&x, cfg) : 1;
  if (r < 0)
    goto out;
  if (r == 1 && o->plain) {
    x.sock = cli_tcp_socket(PROG, &o->hp, 0);
    if (x.sock < 0)
      goto out;
  } else if (r == 1) {
    r = tether_ctx_new(cfg, &x.ctx);
    if (r < 0) {
      report("cannot create a context", r);
      goto out;
    }
    r = tether_connect(x.ctx, o->hp.host, o->hp.port, &x.s);
    if (r < 0) {
      bar_break();
      cli_print_addr_error(PROG, "cannot connect to", &o->hp, r);
      goto out;
    }
    if (checkpoint(&x) < 0)
      goto abandon;
  }
  r = conn_nonblocking(&x);
  if (r < 0) {
    report("session", r);
    goto abandon;
  }

  if (x.st.phase == CP_PHASE_STREAM) {
    if (rehash(&x, cp_file_offset(x.st.size, x.st.pos), o->file) < 0 ||
        send_stream(&x) < 0 ||
        read_exact(&x, v, sizeof(v), "its verdict") < 0)
      goto abandon;
    if (cp_verdict_decode(v, &x.st.verdict) < 0) {
      say("the receiver answered with something that is not a verdict");
      goto abandon;
    }
    x.st.phase = CP_PHASE_VERDICT;
    if (checkpoint(&x) < 0)
      goto abandon;
  }
  /* We have the verdict (durably, with --state): our end of stream tells
   * the receiver so; its end of stream ends the exchange. */
  crash_point("verdict");
  r = conn_shutdown(&x);
  if (r < 0) {
    report("session", r);
    goto abandon;
  }
  if (read_eof(&x) < 0)
    goto abandon;
  if (x.s != NULL)
    linger(x.s);
  if (x.st.verdict == CP_VERDICT_OK) {
    say("sent %s (%" PRIu64 " bytes): %s by the receiver", o->file, x.st.size,
        cp_verdict_name(x.st.verdict));
    rc = CLI_EXIT_OK;
  } else {
    say("sent %s (%" PRIu64 " bytes), but the receiver reports: %s", o->file,
        x.st.size, cp_verdict_name(x.st.verdict));
  }
abandon:
  /* A transfer that failed for good, like one that is done, ends its
   * session and leaves no state behind (a crash, which never gets here,
   * does).  First the writer finishes, or it could write the state file
   * again after it is removed. */
  (void)checkpoint_wait(&x);
  conn_close(&x);
  if (x.has_store)
    store_remove(&x.store);
out:
  xfer_clear(&x);
  tether_config_free(cfg);
  return rc;
}

/* ---- recv ------------------------------------------------------------------ */

/* Opens FILE.part for the position x->st.pos: new and empty at 0,
 * otherwise truncated to the bytes the state counts. */
static int open_part(struct xfer *x) {
  uint64_t off = x->st.pos == 0 ? 0 : cp_file_offset(x->st.size, x->st.pos);
  struct stat sb;

  x->fd = open(x->part, O_RDWR | O_CLOEXEC | (x->st.pos == 0 ? O_CREAT : 0),
               0666);
  if (x->fd < 0)
    return report_file("cannot open", x->part, -errno);
  if (fstat(x->fd, &sb) < 0)
    return report_file("cannot stat", x->part, -errno);
  if ((uint64_t)sb.st_size < off) {
    say("%s has %" PRIu64 " bytes, fewer than the %" PRIu64
        " that %s counts; remove the state file to start over",
        x->part, (uint64_t)sb.st_size, off, x->store.path);
    return -1;
  }
  if (ftruncate(x->fd, (off_t)off) < 0)
    return report_file("cannot truncate", x->part, -errno);
  return rehash(x, off, x->part);
}

/* Reads the rest of the sender's stream from x->st.pos into FILE.part and
 * decides the verdict. */
static int recv_stream(struct xfer *x) {
  uint8_t hdr[CP_HEADER_LEN], want_digest[CP_DIGEST_LEN], digest[CP_DIGEST_LEN];
  const char *why;
  uint64_t off;
  unsigned dlen;
  char what[64];

  if (x->st.pos == 0) {
    if (read_exact(x, hdr, sizeof(hdr), "the header") < 0)
      return -1;
    if (cp_header_decode(hdr, &x->st.size, &why) < 0) {
      say("%s", why);
      return -1;
    }
    x->st.pos = CP_HEADER_LEN;
  }
  off = cp_file_offset(x->st.size, x->st.pos);
  progress_start(x->st.size, off);
  while (off < x->st.size) {
    uint64_t want = x->st.size - off;
    if (want > BUF_SIZE)
      want = BUF_SIZE;
    want = checkpoint_bound(x, want);
    ssize_t n = session_read(x, x->buf, (size_t)want, 1);
    if (n < 0)
      return -1;
    if (n == 0) {
      say("the sender ended the session after %" PRIu64 " of %" PRIu64
          " bytes",
          off, x->st.size);
      return -1;
    }
    int r = cli_fd_write_all(x->fd, x->buf, (size_t)n);
    if (r < 0)
      return report_file("cannot write", x->part, r);
    if (EVP_DigestUpdate(x->md, x->buf, (size_t)n) != 1)
      return report("SHA-256", -ENOMEM);
    off += (uint64_t)n;
    x->st.pos += (uint64_t)n;
    progress_show(off, 0);
    if (checkpoint_due(x) && checkpoint_start(x) < 0)
      return -1;
  }
  progress_show(off, 1);
  bar_break();
  snprintf(what, sizeof(what), "the SHA-256 (after all %" PRIu64 " bytes)",
           x->st.size);
  if (read_exact(x, want_digest, sizeof(want_digest), what) < 0)
    return -1;
  x->st.pos = cp_stream_len(x->st.size);
  if (EVP_DigestFinal_ex(x->md, digest, &dlen) != 1 || dlen != CP_DIGEST_LEN)
    return report("SHA-256", -ENOMEM);
  x->st.verdict = CRYPTO_memcmp(digest, want_digest, CP_DIGEST_LEN) == 0
                      ? CP_VERDICT_OK
                      : CP_VERDICT_MISMATCH;
  /* FILE.part complete on disk before the state says so (and before the
   * rename makes it FILE). */
  if (fsync(x->fd) < 0)
    return report_file("cannot fsync", x->part, -errno);
  x->st.phase = CP_PHASE_VERIFIED;
  return checkpoint(x);
}

/* fsyncs the directory that holds path; 0 or -1 (reported). */
static int fsync_parent(const char *path) {
  char *copy = strdup(path), *slash;
  const char *dir = ".";
  int fd, err = 0;

  if (copy == NULL)
    return report("out of memory", -ENOMEM);
  slash = strrchr(copy, '/');
  if (slash == copy) {
    dir = "/";
  } else if (slash != NULL) {
    *slash = '\0';
    dir = copy;
  }
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) < 0)
    err = -errno;
  if (fd >= 0)
    close(fd);
  free(copy);
  return err < 0 ? report_file("cannot fsync the directory of", path, err) : 0;
}

/* Makes FILE.part FILE (verified) or removes it (mismatch).  After a
 * restart this may have been done already. */
static int place_file(struct xfer *x) {
  const char *out = x->o->file;
  struct stat sb;

  if (x->fd >= 0) {
    close(x->fd);
    x->fd = -1;
  }
  if (x->st.verdict != CP_VERDICT_OK) {
    if (unlink(x->part) < 0 && errno != ENOENT)
      return report_file("cannot remove", x->part, -errno);
    return 0;
  }
  if (rename(x->part, out) < 0) {
    if (errno != ENOENT)
      return report_file("cannot rename to", out, -errno);
    if (stat(out, &sb) < 0 || (uint64_t)sb.st_size != x->st.size) {
      say("%s vanished before it could become %s", x->part, out);
      return -1;
    }
    return 0; /* renamed before a restart */
  }
  /* The rename must survive a power cut. */
  return fsync_parent(out);
}

/* Tells the sender about a failure on our side (best effort). */
static void send_failed_verdict(struct xfer *x) {
  uint8_t v[CP_VERDICT_LEN];

  cp_verdict_encode(CP_VERDICT_FAILED, v);
  if (x->sock >= 0 ? write(x->sock, v, sizeof(v)) == (ssize_t)sizeof(v)
                   : tether_write(x->s, v, sizeof(v)) == (ssize_t)sizeof(v))
    (void)conn_shutdown(x);
}

/* --plain: listens on --listen, takes one connection, stops listening. */
static int plain_accept(struct xfer *x) {
  int lfd = cli_tcp_socket(PROG, &x->o->hp, 1);

  if (lfd < 0)
    return -1;
  /* Scripts that listen on port 0 read the port from this line. */
  say("listening on port %d", cli_tcp_port(lfd));
  do
    x->sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  while (x->sock < 0 && (errno == EINTR || errno == ECONNABORTED));
  close(lfd);
  if (x->sock < 0)
    return report("accept", -errno);
  return 0;
}

static int run_recv(const struct opts *o) {
  static struct xfer x;
  tether_config *cfg = NULL;
  tether_listener *l = NULL;
  uint8_t v[CP_VERDICT_LEN];
  int rc = CLI_EXIT_FAIL, r, settled = 0;

  if (xfer_init(&x, o) < 0 ||
      cli_config_new(PROG, o->state_dir != NULL, &cfg) < 0)
    goto out;
  if (asprintf(&x.part, "%s.part", o->file) < 0) {
    x.part = NULL;
    report("out of memory", -ENOMEM);
    goto out;
  }
  r = x.has_store ? restore(&x, cfg) : 1;
  if (r < 0)
    goto out;
  if (r == 0) {
    if (tether_ctx_listeners(x.ctx, &l, 1) == 1)
      say("listening on port %d", tether_listener_port(l));
    if (x.st.phase == CP_PHASE_STREAM && open_part(&x) < 0)
      goto out;
  } else if (o->plain) {
    if (open_part(&x) < 0 || plain_accept(&x) < 0)
      goto abandon;
  } else {
    if (open_part(&x) < 0)
      goto out;
    r = tether_ctx_new(cfg, &x.ctx);
    if (r < 0) {
      report("cannot create a context", r);
      goto abandon;
    }
    r = tether_listen(x.ctx, o->hp.host, o->hp.port, &l);
    if (r < 0) {
      bar_break();
      cli_print_addr_error(PROG, "cannot listen on", &o->hp, r);
      goto abandon;
    }
    /* Scripts that listen on port 0 read the port from this line. */
    say("listening on port %d", tether_listener_port(l));
    r = tether_accept(l, &x.s);
    if (r < 0) {
      report("accept", r);
      goto abandon;
    }
    if (checkpoint(&x) < 0)
      goto abandon;
  }
  r = conn_nonblocking(&x);
  if (r < 0) {
    report("session", r);
    goto abandon;
  }

  if (x.st.phase == CP_PHASE_STREAM && recv_stream(&x) < 0)
    goto abandon;
  if (x.st.phase == CP_PHASE_VERIFIED) {
    crash_point("verified");
    if (place_file(&x) < 0)
      goto abandon;
    cp_verdict_encode(x.st.verdict, v);
    if (write_all(&x, v, sizeof(v)) < 0)
      goto abandon;
    crash_point("verdict");
    /* The sender's end of stream: it has the verdict. */
    if (read_eof(&x) < 0)
      goto abandon;
    x.st.phase = CP_PHASE_ACKED;
    if (checkpoint(&x) < 0)
      goto abandon;
    crash_point("acked");
  }
  r = conn_shutdown(&x);
  if (r < 0) {
    report("session", r);
    goto abandon;
  }
  if (x.s != NULL)
    linger(x.s);
  settled = 1;
  if (x.st.verdict == CP_VERDICT_OK) {
    say("received %s (%" PRIu64 " bytes): %s", o->file, x.st.size,
        cp_verdict_name(x.st.verdict));
    rc = CLI_EXIT_OK;
  } else {
    say("SHA-256 mismatch: the %" PRIu64 " bytes received for %s differ "
        "from what the sender read; nothing was kept",
        x.st.size, o->file);
  }
abandon:
  /* As in run_send; the sender also hears that we failed, and no partial
   * file stays behind. */
  (void)checkpoint_wait(&x);
  if (!settled) {
    if (x.sock >= 0 ||
        (x.s != NULL && tether_session_state(x.s) != TETHER_STATE_FAILED))
      send_failed_verdict(&x);
    if (x.fd >= 0)
      close(x.fd);
    x.fd = -1;
    if (unlink(x.part) < 0 && errno != ENOENT)
      report_file("cannot remove", x.part, -errno);
  }
  conn_close(&x);
  if (x.has_store)
    store_remove(&x.store);
out:
  xfer_clear(&x);
  tether_config_free(cfg);
  return rc;
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, NULL, 'l'},
      {"connect", required_argument, NULL, 'c'},
      {"out", required_argument, NULL, 'o'},
      {"state", required_argument, NULL, 's'},
      {"snapshot-every", required_argument, NULL, 'e'},
      {"limit-rate", required_argument, NULL, 'r'},
      {"plain", no_argument, NULL, 'p'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct opts o = {0};
  const char *listen_arg = NULL, *connect_arg = NULL, *out_arg = NULL;
  const char *every_arg = NULL, *rate_arg = NULL;
  int c;

  int first = cli_command_arg(argc, argv, PROG, usage, "missing command: send or recv");
  if (first >= 0)
    return first;
  if (strcmp(argv[1], "send") == 0)
    o.is_send = 1;
  else if (strcmp(argv[1], "recv") != 0)
    return cli_usage_error(
        PROG, "unknown command '%s' (expected send or recv)", argv[1]);
  o.every = o.is_send ? DEFAULT_SNAPSHOT_EVERY_SEND : DEFAULT_SNAPSHOT_EVERY_RECV;

  argc--;
  argv++;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":l:c:o:s:e:r:pVh", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      listen_arg = optarg;
      break;
    case 'c':
      connect_arg = optarg;
      break;
    case 'o':
      out_arg = optarg;
      break;
    case 's':
      o.state_dir = optarg;
      break;
    case 'e':
      every_arg = optarg;
      break;
    case 'r':
      rate_arg = optarg;
      break;
    case 'p':
      o.plain = 1;
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

  if (every_arg != NULL) {
    if (o.state_dir == NULL)
      return cli_usage_error(PROG, "--snapshot-every needs --state DIR");
    if (cli_parse_size(every_arg, &o.every) < 0)
      return cli_usage_error(PROG, "bad --snapshot-every '%s' (expected a "
                                   "size such as 8M)",
                             every_arg);
  }
  if (o.plain && o.state_dir != NULL)
    return cli_usage_error(PROG, "--plain cannot resume: no --state");
  if (o.state_dir != NULL && o.state_dir[0] == '\0')
    return cli_usage_error(PROG, "--state needs a directory");
  if (o.is_send) {
    if (listen_arg != NULL || out_arg != NULL)
      return cli_usage_error(PROG, "send takes --connect and FILE, not "
                                   "--listen or --out");
    if (connect_arg == NULL)
      return cli_usage_error(PROG, "send needs --connect HOST:PORT");
    if (cli_parse_hostport(connect_arg, &o.hp) < 0 || o.hp.host[0] == '\0')
      return cli_usage_error(PROG,
                             "bad --connect '%s' (expected HOST:PORT or "
                             "[IPV6]:PORT)",
                             connect_arg);
    if (optind + 1 != argc)
      return cli_usage_error(PROG, optind == argc
                                       ? "send needs the FILE to send"
                                       : "send takes exactly one FILE");
    if (rate_arg != NULL && cli_parse_size(rate_arg, &o.rate) < 0)
      return cli_usage_error(PROG, "bad --limit-rate '%s' (expected bytes "
                                   "per second such as 50M or 512K)",
                             rate_arg);
    o.peer_arg = connect_arg;
    o.file = argv[optind];
  } else {
    if (connect_arg != NULL || rate_arg != NULL)
      return cli_usage_error(PROG, "recv takes --listen and --out, not "
                                   "--connect or --limit-rate");
    if (optind < argc)
      return cli_usage_error(PROG, "unexpected argument '%s' (recv writes "
                                   "to --out FILE)",
                             argv[optind]);
    if (listen_arg == NULL || out_arg == NULL)
      return cli_usage_error(PROG, "recv needs --listen HOST:PORT and "
                                   "--out FILE");
    if (cli_parse_hostport(listen_arg, &o.hp) < 0)
      return cli_usage_error(PROG,
                             "bad --listen '%s' (expected HOST:PORT, "
                             "[IPV6]:PORT or :PORT)",
                             listen_arg);
    o.peer_arg = listen_arg;
    o.file = out_arg;
  }
  if (strlen(o.file) >= CP_STATE_PATH_MAX - 8)
    return cli_usage_error(PROG, "FILE name too long");
  if (o.file[0] == '\0')
    return cli_usage_error(PROG, "empty FILE name");

  /* A vanished peer or closed pipe is an error we report, not a signal. */
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    cli_print_error(PROG, "signal", -errno);
    return CLI_EXIT_FAIL;
  }
  return o.is_send ? run_send(&o) : run_recv(&o);
}
