/* The interposer's process-wide state: start-up (setuid check, settings,
 * the fd table), the context made on first use, threads, fork and exit, and
 * the hook through which a session's app fd follows the program's numbers. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "engine.h"
#include "preload.h"

bool tp_disabled;
static pid_t tp_pid; /* this process (set at start and after fork) */

bool tp_vforked(void) { return tp_pid != 0 && getpid() != tp_pid; }
int tp_probe_ms = -1; /* unset: see answer_wait_ns() */
int tp_accept_wait_ms = 1000;

static struct tether_ctx *g_ctx;
static bool g_ctx_failed;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;

uint64_t tp_now_ms(void) { return now_ns() / 1000000; }

void tp_warn(const char *msg) {
  char line[256];
  int n = snprintf(line, sizeof(line), "tether[%d] warn: %s\n", (int)getpid(), msg);
  if (n > 0)
    (void)!real.write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static int env_int(const char *name, int def, int lo, int hi) {
  const char *v = getenv(name);
  if (!v || !*v)
    return def;
  char *end;
  long x = strtol(v, &end, 10);
  if (*end || x < lo || x > hi) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s=%s is invalid; using %d", name, v, def);
    tp_warn(msg);
    return def;
  }
  return (int)x;
}

struct tether_ctx *tp_ctx(void) {
  struct tether_ctx *c = __atomic_load_n(&g_ctx, __ATOMIC_ACQUIRE);
  if (c || tp_disabled)
    return c;
  pthread_mutex_lock(&ctx_lock);
  if (!g_ctx && !g_ctx_failed) {
    TP_ENTER();
    int rc = tether_ctx_new(NULL, &c);
    if (rc < 0) {
      g_ctx_failed = true;
      tp_warn("cannot start tether (bad TETHER_* setting?): connections stay plain TCP");
    } else {
      c->redial_hook = pl_redial_hook;
      c->exit_by_front_end = true; /* tp_fini */
      __atomic_store_n(&g_ctx, c, __ATOMIC_RELEASE);
    }
    TP_LEAVE();
  }
  c = g_ctx;
  pthread_mutex_unlock(&ctx_lock);
  return c;
}

/* ---- threads ---- */

struct tstart {
  void *(*fn)(void *);
  void *arg;
};

static void *inside_start(void *p) {
  struct tstart t = *(struct tstart *)p;
  free(p);
  tp_inside = 1; /* a thread tether started: tether's own, for good */
  return t.fn(t.arg);
}

__attribute__((visibility("default"))) int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
  real_init();
  if (!tp_inside)
    return real.pthread_create(th, attr, fn, arg);
  struct tstart *t = malloc(sizeof(*t));
  if (!t)
    return EAGAIN;
  t->fn = fn;
  t->arg = arg;
  /* Tether's threads take none of the program's signals (signals.c would
   * defer them for good): it starts with all blocked. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = real.pthread_create(th, attr, inside_start, t);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0)
    free(t);
  return rc;
}

/* ---- sessions' app fds ---- */

static void apply_opts(struct psock *ps, int sock) {
  for (int i = 0; i < ps->nopts; i++)
    (void)real.setsockopt(sock, ps->opts[i].level, ps->opts[i].name, ps->opts[i].val,
                          ps->opts[i].len);
  ps->opts_sock = sock;
}

/* Both session locks held (engine.h: app_fd_hook). */
static void on_install(struct tether_session *s, int fd, int kind) {
  struct psock *ps = s->hook_arg;
  pthread_mutex_lock(&ps->lock);
  ps_swap(ps, fd);
  if (kind == APP_FD_SOCK && fd != ps->opts_sock)
    apply_opts(ps, fd);
  pthread_mutex_unlock(&ps->lock);
}

void tp_session_attach_hooks(struct psock *ps, struct tether_session *s) {
  s->hook_arg = ps;
  s->app_fd_hook = on_install;
  s->nonblocking = true; /* the interposer waits itself: EINTR, timeouts */
  if (s->sock >= 0)
    apply_opts(ps, s->sock);
}

/* ---- waiting ---- */

int tp_wait(int fd, short events, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = events};
  int n = real.poll(&p, 1, timeout_ms);
  if (n < 0)
    return errno == EINTR ? -EINTR : 0;
  return n == 0 ? -EAGAIN : 0;
}

static bool shut_for(const struct psock *ps, short events) {
  return ((events & POLLIN) && ps->rd_shut) || ((events & POLLOUT) && ps->wr_shut);
}

int tp_wait_shut(struct psock *ps, int fd, short events, int timeout_ms) {
  struct tether_session *s = ps->s;
  struct app_waiter w;
  app_waiter_add(s, &w); /* before the look at the flags: shutdown wakes after setting them */
  pthread_mutex_lock(&ps->lock);
  bool shut = shut_for(ps, events);
  if (!ps_has_alias(ps, fd) && ps->own_fd >= 0)
    fd = ps->own_fd; /* the program closed its number during the call */
  pthread_mutex_unlock(&ps->lock);
  if (shut) {
    app_waiter_remove(s, &w);
    return 0;
  }
  return app_waiter_wait(s, &w, fd, events, timeout_ms, NULL);
}

bool tp_restart_after_eintr(void) {
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) < 0)
      continue;
    if (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN && !(sa.sa_flags & SA_RESTART))
      return false;
  }
  return true;
}

/* ---- fork and exit ---- */

/* Held across fork(), in preload.h's order (fork.c's f_lock last, by
 * fork_lock_relays). */
static pthread_mutex_t *const fork_held[] = {&sp_lock, &g_lock, &pool_lock, &pl_lock,
                                             &dest_lock, &records_lock};
#define NFORK_HELD (sizeof(fork_held) / sizeof(fork_held[0]))
static bool fork_locked; /* by before_fork: not when tether itself forks */

static void before_fork(void) {
  fork_prepare();
  if (tp_disabled || tp_inside)
    return;
  for (size_t i = 0; i < NFORK_HELD; i++)
    pthread_mutex_lock(fork_held[i]);
  fork_lock_relays();
  fork_locked = true;
}

/* In both processes: this thread took them before the fork. */
static void release_fork_locks(void) {
  if (!fork_locked)
    return;
  fork_locked = false;
  fork_unlock_relays();
  for (size_t i = NFORK_HELD; i-- > 0;)
    pthread_mutex_unlock(fork_held[i]);
}

static void after_fork_parent(void) {
  release_fork_locks();
  fork_parent();
}

static void after_fork_child(void) {
  tp_pid = getpid();
  release_fork_locks();
  app_waiters_after_fork_child();
  signals_after_fork_child();
  pthread_mutex_init(&ctx_lock, NULL);
  g_ctx = NULL; /* the parent's engine thread is not here; a new one on demand */
  g_ctx_failed = false;
  fdt_after_fork_child();
  pl_after_fork_child();
  dest_after_fork_child();
  fork_child();
}

struct owned {
  struct tether_session **s;
  int n, cap;
};

static void collect(struct psock *ps, void *arg) {
  struct owned *o = arg;
  pthread_mutex_lock(&ps->lock);
  /* A session a forked child holds is left alone: it dies with this
   * process (the child's relay then reports ECONNRESET, the peer an error
   * after give_up_s), but it is never closed as if everyone were done. */
  if (ps->kind == PS_SESSION && ps->s && !ps_shared(ps) && o->n < o->cap) {
    o->s[o->n++] = ps->s;
    ps->kind = PS_PLAIN;
    ps->s = NULL;
  }
  pthread_mutex_unlock(&ps->lock);
}

/* At exit the kernel would close every socket with a FIN: close the
 * sessions the same way, and let them deliver what is still queued and
 * their close notices (ctx_linger, as tether_ctx_free does), through a
 * resume if their connection was just lost.  The library's own exit
 * handler leaves this context to us (exit_by_front_end). */
__attribute__((destructor)) static void tp_fini(void) {
  struct tether_ctx *ctx = __atomic_load_n(&g_ctx, __ATOMIC_ACQUIRE);
  fork_at_exit(ctx ? ctx->cfg.linger_s : 0);
  if (!ctx || tp_inside)
    return;
  TP_ENTER();
  struct owned o = {.cap = 4096};
  o.s = calloc((size_t)o.cap, sizeof(*o.s));
  if (o.s) {
    fdt_each(collect, &o);
    for (int i = 0; i < o.n; i++) {
      session_lock(o.s[i]);
      o.s[i]->app_fd = -1; /* the program's numbers die with the process */
      o.s[i]->app_fd_hook = NULL;
      session_unlock(o.s[i]);
      tether_close(o.s[i]);
    }
    free(o.s);
  }
  ctx_linger(ctx);
  /* The engine stops here: nothing of tether runs while the process's
   * libraries tear down. */
  ctx_stop_engine(ctx);
  TP_LEAVE();
}

__attribute__((constructor)) static void tp_init(void) {
  real_init();
  tp_pid = getpid();
  /* OpenSSL's own atexit cleanup would pull the rug from under the engine
   * thread, which runs until tp_fini. */
  (void)OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
  /* Never inside setuid/setgid programs (the loader also ignores
   * LD_PRELOAD there, except from system directories). */
  if (getauxval(AT_SECURE)) {
    tp_disabled = true;
    return;
  }
  const char *off = getenv("TETHER_DISABLE");
  if (off && *off && strcmp(off, "0") != 0) {
    tp_disabled = true;
    return;
  }
  if (fdt_init() < 0) {
    tp_disabled = true;
    return;
  }
  relays_adopt();
  if (exclude_parse(getenv("TETHER_EXCLUDE")) < 0)
    tp_warn("TETHER_EXCLUDE is malformed: ignored");
  if (dest_parse_probe_ports(getenv("TETHER_PROBE_PORTS")) < 0)
    tp_warn("TETHER_PROBE_PORTS is malformed: ignored");
  tp_probe_ms = env_int("TETHER_PROBE_MS", tp_probe_ms, 0, 60000);
  tp_accept_wait_ms = env_int("TETHER_ACCEPT_WAIT_MS", tp_accept_wait_ms, 1, 60000);
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
