/* The context: configuration, the engine thread and its event loop, and the
 * registry of sessions by id. */
#include <errno.h>
#include <sched.h>
#include <sys/epoll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "engine.h"

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

void engine_event_prio(const struct tether_ctx *ctx, struct event *ev, enum engine_prio prio) {
  int n = ctx->own_base ? 1 : event_base_get_npriorities(ctx->base);
  if (ev && n > 1)
    event_priority_set(ev, prio == ENGINE_PRIO_LIVE ? 0 : n - 1);
}

struct event *engine_event_new(struct tether_ctx *ctx, enum engine_prio prio, int fd, short what,
                               void (*cb)(int, short, void *), void *arg) {
  struct event *ev = event_new(ctx->base, fd, what, cb, arg);
  engine_event_prio(ctx, ev, prio);
  return ev;
}

/* Jitter only (timers): no secret depends on it, so a per-thread xorshift
 * seeded once from OpenSSL, rather than a RAND_bytes() per timer, whose
 * fork check is a getpid() system call. */
uint32_t random_u32(void) {
  static __thread uint64_t state __attribute__((tls_model("initial-exec")));
  if (state == 0 && (RAND_bytes((unsigned char *)&state, sizeof(state)) != 1 || state == 0))
    state = now_ns() | 1;
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return (uint32_t)(state >> 32);
}

/* Engine thread: makes the successor of the current key. */
static void on_refill(evutil_socket_t fd, short what, void *arg) {
  struct tether_ctx *ctx = arg;
  struct x25519_key *k = x25519_new();
  pthread_mutex_lock(&ctx->lock);
  if (!ctx->next_key) {
    ctx->next_key = k;
    k = NULL;
  }
  ctx->refill_pending = false;
  pthread_mutex_unlock(&ctx->lock);
  x25519_free(k);
}

/* Engine thread: connections that ended (see struct tether_ctx, hup_ep). */
static void on_hup(evutil_socket_t fd, short what, void *arg) {
  struct epoll_event evs[64];
  int n = epoll_wait(fd, evs, 64, 0);
  for (int i = 0; i < n; i++)
    session_on_hangup(evs[i].data.ptr);
}

/* Key generation costs a scalar multiplication, as much as the key agreement
 * itself, so an ephemeral key serves up to KEY_REUSE_MAX handshakes within
 * KEY_REUSE_NS.  Session keys stay unique: both sides' fresh nonces enter
 * the HKDF.  What reuse costs is forward secrecy within that window: whoever
 * reads the private key from this process's memory before it expires can
 * derive the keys of the sessions made with it -- keys the process holds in
 * memory anyway for as long as those sessions live. */
struct x25519_key *ctx_take_key(struct tether_ctx *ctx) {
  struct x25519_key *k = NULL, *old = NULL;
  bool refill = false;
  uint64_t now = now_ns();
  pthread_mutex_lock(&ctx->lock);
  if (ctx->key && (ctx->key_uses >= KEY_REUSE_MAX || now - ctx->key_born_ns >= KEY_REUSE_NS)) {
    old = ctx->key;
    ctx->key = NULL;
  }
  if (!ctx->key && ctx->next_key) {
    ctx->key = ctx->next_key;
    ctx->next_key = NULL;
    ctx->key_uses = 0;
    ctx->key_born_ns = now;
  }
  if (ctx->key) {
    ctx->key_uses++;
    k = x25519_ref(ctx->key);
  }
  if (!ctx->next_key && !ctx->refill_pending)
    refill = ctx->refill_pending = true;
  pthread_mutex_unlock(&ctx->lock);
  x25519_free(old);
  if (refill)
    event_active(ctx->refill_ev, EV_READ, 0);
  if (k)
    return k;
  /* None ready (a fresh context): make one now and share it from now on. */
  if (!(k = x25519_new()))
    return NULL;
  pthread_mutex_lock(&ctx->lock);
  if (!ctx->key) {
    ctx->key = x25519_ref(k);
    ctx->key_uses = 1;
    ctx->key_born_ns = now;
  }
  pthread_mutex_unlock(&ctx->lock);
  return k;
}

/* Session ids are random: any of their bytes hash them. */
static unsigned bucket(const uint8_t id[SESSION_ID_LEN], unsigned n_buckets) {
  return ((unsigned)id[0] | (unsigned)id[1] << 8 | (unsigned)id[2] << 16 |
          (unsigned)id[3] << 24) & (n_buckets - 1);
}

/* ctx->lock held: twice the buckets, if memory allows (else the chains
 * just grow longer). */
static void registry_grow(struct tether_ctx *ctx) {
  unsigned n = ctx->n_buckets * 2;
  struct tether_session **b = n > ctx->n_buckets ? calloc(n, sizeof(*b)) : NULL;
  if (!b)
    return;
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    while (ctx->buckets[i]) {
      struct tether_session *s = ctx->buckets[i];
      ctx->buckets[i] = s->hash_next;
      s->hash_next = b[bucket(s->id, n)];
      b[bucket(s->id, n)] = s;
    }
  free(ctx->buckets);
  ctx->buckets = b;
  ctx->n_buckets = n;
}

void registry_add(struct tether_ctx *ctx, struct tether_session *s) {
  pthread_mutex_lock(&ctx->lock);
  if (ctx->n_sessions >= ctx->n_buckets)
    registry_grow(ctx);
  struct tether_session **b = &ctx->buckets[bucket(s->id, ctx->n_buckets)];
  s->hash_next = *b;
  *b = s;
  ctx->n_sessions++;
  pthread_mutex_unlock(&ctx->lock);
}

void registry_remove(struct tether_ctx *ctx, struct tether_session *s) {
  pthread_mutex_lock(&ctx->lock);
  for (struct tether_session **pp = &ctx->buckets[bucket(s->id, ctx->n_buckets)]; *pp;
       pp = &(*pp)->hash_next)
    if (*pp == s) {
      *pp = s->hash_next;
      ctx->n_sessions--;
      break;
    }
  pthread_mutex_unlock(&ctx->lock);
}

struct tether_session *registry_find(struct tether_ctx *ctx, const uint8_t id[SESSION_ID_LEN]) {
  for (struct tether_session *s = ctx->buckets[bucket(id, ctx->n_buckets)]; s; s = s->hash_next)
    if (memcmp(s->id, id, SESSION_ID_LEN) == 0)
      return s;
  return NULL;
}

/* Whether a session the application closed has not finished yet: it
 * delivers its last bytes and close notices, or has bytes to deliver and
 * waits for a resume to do so (one with nothing left to say does not keep
 * the process: its peer learns the rest from its own resume). */
static bool closing_sessions(struct tether_ctx *ctx) {
  bool any = false;
  pthread_mutex_lock(&ctx->lock);
  for (unsigned i = 0; i < ctx->n_buckets && !any; i++)
    for (struct tether_session *s = ctx->buckets[i]; s && !any; s = s->hash_next) {
      if (async_closing(s)) {
        any = true; /* still writing its output */
        break;
      }
      if (!__atomic_load_n(&s->app_closed, __ATOMIC_RELAXED))
        continue;
      session_lock(s);
      const struct core_session *c = &s->core;
      any = c->state == CORE_CONNECTED || (c->state == CORE_SUSPENDED && c->peer_acked < c->sent);
      session_unlock(s);
    }
  pthread_mutex_unlock(&ctx->lock);
  return any;
}

/* Closed sessions that did not finish within the linger time fail, and
 * say so to their peers at once (twice: a datagram may be lost), so that
 * they do not wait give_up_s for bytes that will never come. */
static void abort_closing(struct tether_ctx *ctx) {
  char tag[17];
  pthread_mutex_lock(&ctx->lock);
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    for (struct tether_session *s = ctx->buckets[i]; s; s = s->hash_next) {
      session_lock(s);
      if ((s->app_closed || async_closing(s)) &&
          (s->core.state == CORE_CONNECTED ||
           (s->core.state == CORE_SUSPENDED && s->core.peer_acked < s->core.sent))) {
        LOG_WARN(ctx, "session %s: linger time over with %llu bytes undelivered: aborted",
                 session_tag(s->id, tag),
                 (unsigned long long)(s->core.sent - s->core.peer_acked));
        core_fail(&s->core, TETHER_EABORTED);
        udp_send_ctl(s, now_ns());
        udp_send_ctl(s, now_ns());
        session_kick(s);
      }
      session_unlock(s);
    }
  pthread_mutex_unlock(&ctx->lock);
}

static void on_linger_tick(evutil_socket_t fd, short what, void *arg) {}

void ctx_linger(struct tether_ctx *ctx) {
  if (ctx->own_base && !ctx->thread_started)
    return;
  uint64_t end = now_ns() + (uint64_t)ctx->cfg.linger_s * 1000000000;
  /* The application's loop: nobody else runs it meanwhile. */
  struct event *tick = ctx->own_base ? NULL : evtimer_new(ctx->base, on_linger_tick, NULL);
  while (closing_sessions(ctx) && now_ns() < end) {
    struct timeval tv = {0, 5000};
    if (!tick) {
      struct timespec ts = {0, 5 * 1000000};
      nanosleep(&ts, NULL);
    } else if (evtimer_add(tick, &tv) < 0 || event_base_loop(ctx->base, EVLOOP_ONCE) < 0) {
      break; /* called from inside the loop: it cannot run again */
    }
  }
  if (tick)
    event_free(tick);
  abort_closing(ctx);
}

void ctx_stop_engine(struct tether_ctx *ctx) {
  if (!ctx->thread_started || pthread_equal(pthread_self(), ctx->thread))
    return;
  event_active(ctx->stop_ev, EV_READ, 0);
  pthread_join(ctx->thread, NULL);
  ctx->thread_started = false;
}

/* ---- process exit ----------------------------------------------------------
 * A process that returns from main or calls exit() with contexts alive ends
 * them the way the kernel ends its sockets: the sessions of a context that
 * is not durable close (their peers read end of stream, after every byte),
 * and every closed session lingers; a durable context's open sessions stay
 * as they are (the process may come back from its snapshot: its peers see
 * a crash and wait).  Then the engine threads stop, before the libraries
 * they use (OpenSSL) tear down. */

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tether_ctx *live_head;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void close_open_sessions(struct tether_ctx *ctx) {
  pthread_mutex_lock(&ctx->lock);
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    for (struct tether_session *s = ctx->buckets[i]; s; s = s->hash_next)
      if (!__atomic_load_n(&s->app_closed, __ATOMIC_RELAXED))
        (void)tether_close(s);
  pthread_mutex_unlock(&ctx->lock);
}

static void at_exit(void) {
  pid_t me = getpid();
  pthread_mutex_lock(&live_lock);
  for (struct tether_ctx *ctx = live_head; ctx; ctx = ctx->live_next) {
    /* A forked child has the parent's contexts in memory, not their
     * engine threads: they are the parent's to end. */
    if (ctx->pid != me || ctx->exit_by_front_end || !ctx->thread_started)
      continue;
    if (!ctx->cfg.durable)
      close_open_sessions(ctx);
    ctx_linger(ctx);
    ctx_stop_engine(ctx);
  }
  pthread_mutex_unlock(&live_lock);
}

/* A forked child finds the list whole (a thread of the parent's may hold
 * the lock at the fork; the child does not have that thread). */
static void live_fork_prepare(void) { pthread_mutex_lock(&live_lock); }
static void live_fork_parent(void) { pthread_mutex_unlock(&live_lock); }
static void live_fork_child(void) { pthread_mutex_unlock(&live_lock); }

static void exit_init(void) {
  /* Handlers run last registered first: OpenSSL's cleanup (registered by
   * its initialisation, here if nobody did it before) must run after ours,
   * which stops the engine threads that use it.  (With no option asked for,
   * OPENSSL_init_crypto returns at once without initialising anything.) */
  (void)OPENSSL_init_crypto(OPENSSL_INIT_ADD_ALL_DIGESTS, NULL);
  (void)atexit(at_exit);
  (void)pthread_atfork(live_fork_prepare, live_fork_parent, live_fork_child);
}

static void live_add(struct tether_ctx *ctx) {
  pthread_once(&exit_once, exit_init);
  ctx->pid = getpid();
  pthread_mutex_lock(&live_lock);
  ctx->live_next = live_head;
  live_head = ctx;
  pthread_mutex_unlock(&live_lock);
}

static void live_remove(struct tether_ctx *ctx) {
  pthread_mutex_lock(&live_lock);
  for (struct tether_ctx **pp = &live_head; *pp; pp = &(*pp)->live_next)
    if (*pp == ctx) {
      *pp = ctx->live_next;
      break;
    }
  pthread_mutex_unlock(&live_lock);
}

static void *engine_main(void *arg) {
  struct tether_ctx *ctx = arg;
  sigset_t all;
  /* The application's signals are the application's: never run its
   * handlers on this thread. */
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  event_base_loop(ctx->base, EVLOOP_NO_EXIT_ON_EMPTY);
  return NULL;
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
  event_base_loopbreak(((struct tether_ctx *)arg)->base);
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static int evthread_rc;
static void evthread_init(void) { evthread_rc = evthread_use_pthreads(); }

int tether_ctx_new(const tether_config *cfg, tether_ctx **out) {
  int rc;
  if (!out)
    return -EINVAL;
  *out = NULL;
  pthread_once(&evthread_once, evthread_init);
  if (evthread_rc < 0)
    return -ENOMEM;
  struct tether_ctx *ctx = calloc(1, sizeof(*ctx));
  if (!ctx)
    return -ENOMEM;
  if (cfg) {
    ctx->cfg = *cfg;
  } else {
    config_defaults(&ctx->cfg);
    if (tether_config_load_env(&ctx->cfg) < 0) {
      free(ctx);
      return -EINVAL;
    }
  }
  /* Spinning pays only where the bytes come from another CPU. */
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 1)
    ctx->read_spin_ns = (uint64_t)ctx->cfg.read_spin_us * 1000;
  pthread_mutex_init(&ctx->lock, NULL);
  ctx->n_buckets = SESSION_BUCKETS_MIN;
  ctx->buckets = calloc(ctx->n_buckets, sizeof(*ctx->buckets));
  /* The application's loop (tether_config_set_event_base), or an engine
   * thread's own. */
  struct event_base *base = ctx->cfg.base;
  ctx->own_base = !base;
  ctx->base = !ctx->buckets ? NULL : base ? base : event_base_new();
  ctx->stop_ev = ctx->base ? engine_event_new(ctx, ENGINE_PRIO_LIVE, -1, 0, on_stop, ctx) : NULL;
  ctx->refill_ev =
      ctx->base ? engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, on_refill, ctx) : NULL;
  ctx->suspended.recheck =
      ctx->base ? engine_event_new(ctx, ENGINE_PRIO_BULK, -1, 0, suspended_recheck, ctx) : NULL;
  ctx->hup_ep = epoll_create1(EPOLL_CLOEXEC);
  ctx->hup_ev = ctx->base && ctx->hup_ep >= 0
                    ? engine_event_new(ctx, ENGINE_PRIO_LIVE, ctx->hup_ep, EV_READ | EV_PERSIST,
                                       on_hup, ctx)
                    : NULL;
  if (!ctx->stop_ev || !ctx->refill_ev || !ctx->suspended.recheck || !ctx->hup_ev ||
      event_add(ctx->hup_ev, NULL) < 0 || hs_table_init(ctx) < 0) {
    rc = ctx->hup_ep < 0 ? -errno : -ENOMEM;
    goto fail;
  }
  if (ctx->own_base) {
    if ((rc = -pthread_create(&ctx->thread, NULL, engine_main, ctx)) < 0)
      goto fail;
    ctx->thread_started = true;
  }
  ctx->refill_pending = true;
  event_active(ctx->refill_ev, EV_READ, 0);
  live_add(ctx);
  *out = ctx;
  return 0;
fail:
  hs_table_clear(ctx);
  if (ctx->hup_ev)
    event_free(ctx->hup_ev);
  if (ctx->hup_ep >= 0)
    close(ctx->hup_ep);
  if (ctx->refill_ev)
    event_free(ctx->refill_ev);
  if (ctx->suspended.recheck)
    event_free(ctx->suspended.recheck);
  if (ctx->stop_ev)
    event_free(ctx->stop_ev);
  if (ctx->base && ctx->own_base)
    event_base_free(ctx->base);
  pthread_mutex_destroy(&ctx->lock);
  free(ctx->buckets);
  free(ctx);
  return rc;
}

void tether_ctx_free(tether_ctx *ctx) {
  if (!ctx)
    return;
  live_remove(ctx);
  /* Sessions the application closed may still be delivering their last
   * bytes and close notices: their peers would otherwise see a failure
   * (and wait give_up_s) instead of a clean close. */
  ctx_linger(ctx);
  ctx_stop_engine(ctx);
  /* Finished sessions still in TIME_WAIT: repeat their final state once, so
   * a peer that missed it need not wait for a resume. */
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    for (struct tether_session *s = ctx->buckets[i]; s; s = s->hash_next)
      if (s->core.state == CORE_CLOSED)
        udp_send_ctl(s, now_ns());
  /* The engine is stopped: everything below runs single-threaded. */
  while (ctx->handshakes) {
    struct hs_conn *h = ctx->handshakes;
    ctx->handshakes = h->next;
    client_connect_drop(h);
    hs_conn_free(h);
  }
  for (unsigned i = 0; i < ctx->n_buckets; i++)
    while (ctx->buckets[i]) {
      struct tether_session *s = ctx->buckets[i];
      s->redials[0] = s->redials[1] = NULL; /* freed with the handshakes */
      session_destroy(s);
    }
  while (ctx->listeners) {
    struct tether_listener *l = ctx->listeners;
    ctx->listeners = l->next;
    listener_free(l);
  }
  hs_table_clear(ctx);
  udp_close(ctx->udp4);
  udp_close(ctx->udp6);
  x25519_free(ctx->key);
  x25519_free(ctx->next_key);
  event_free(ctx->hup_ev);
  close(ctx->hup_ep);
  event_free(ctx->refill_ev);
  event_free(ctx->suspended.recheck);
  event_free(ctx->stop_ev);
  if (ctx->own_base)
    event_base_free(ctx->base);
  pthread_mutex_destroy(&ctx->lock);
  free(ctx->buckets);
  wipe(&ctx->cfg, sizeof(ctx->cfg));
  free(ctx);
}
