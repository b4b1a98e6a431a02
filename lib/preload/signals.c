/* The program's signal handlers: sigaction, signal, bsd_signal,
 * sysv_signal, __sysv_signal.
 *
 * A handler is program code: its calls on sessions must go through tether
 * like any others.  But a signal can interrupt the program's thread while
 * it runs tether's code (tp_inside), holding a session's or a psock's lock
 * halfway through an update: a handler's call on the same session then
 * would deadlock or see half a state, and with tp_inside still set it would
 * even bypass tether and write to the raw socket (the stream then cannot
 * be reconciled at the next resume).
 *
 * So every handler the program installs runs through trampoline(): outside
 * tether's code it calls the handler at once, as program code (tp_inside
 * 0); inside, or while the thread holds any lock of tether's, it records
 * the signal, and the handler runs as soon as the thread leaves tether's
 * code (TP_LEAVE) and holds no lock (the last unlock), with the mask the
 * program asked for.  Locks are counted per thread by wrapping
 * pthread_mutex_lock, _trylock and _unlock for every object of the
 * interposer, the engine's included (the linker's --wrap): no lock is
 * missed, however a path takes it.  Tether's code on a program's thread
 * never sleeps in such a section for long (waits happen outside, where
 * handlers run at once) except a blocking connect: there handlers run at
 * once whenever no lock is held (tp_signals_now).
 *
 * Synchronous signals (a fault in tether's code, abort) are never deferred:
 * their handler runs at once, as it did without tether.  A deferred
 * handler gets its siginfo, and the context of the place it runs at, not
 * of the interrupted one.  The kernel's view of each disposition is the
 * program's except for the handler's address; sigaction() answers with the
 * program's. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>

#include "preload.h"

/* Pending deferred signals of this thread: at most this many distinct
 * ones at a time (a ninth would be lost, but it would take nine signals
 * within one short section of tether's code); a signal already pending is
 * coalesced, as the kernel does with standard signals. */
#define DEFER_MAX 8

__thread int tp_deferred __attribute__((tls_model("initial-exec")));
__thread int tp_signals_now __attribute__((tls_model("initial-exec")));
static __thread int locks_held __attribute__((tls_model("initial-exec")));
__thread bool tp_handler_ran __attribute__((tls_model("initial-exec")));
static __thread struct {
  int sig;
  void *handler; /* as at delivery (SA_RESETHAND resets the table's) */
  int flags;
  siginfo_t info;
} deferred[DEFER_MAX];

/* The program's disposition of each signal, as it set it (known) or as the
 * kernel had it when we first looked. */
static struct {
  void *handler; /* sa_handler or sa_sigaction, as the program gave it */
  int flags;
  sigset_t mask;
  bool known;
} prog[NSIG];
static pthread_mutex_t act_lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void resolve(void) {
  if (!__atomic_load_n(&real_sigaction, __ATOMIC_ACQUIRE)) {
    void *p = tp_next("sigaction");
    __atomic_store_n((void **)&real_sigaction, p, __ATOMIC_RELEASE);
  }
}

static bool synchronous(int sig) {
  return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP ||
         sig == SIGSYS || sig == SIGABRT;
}

static void call_handler(int sig, siginfo_t *info, void *uc, void *handler, int flags) {
  int saved = tp_inside;
  tp_inside = 0; /* the handler is the program's code */
  if (flags & SA_SIGINFO)
    ((void (*)(int, siginfo_t *, void *))handler)(sig, info, uc);
  else
    ((void (*)(int))handler)(sig);
  tp_inside = saved;
  if (!(flags & SA_RESTART))
    tp_handler_ran = true;
}

static void trampoline(int sig, siginfo_t *info, void *uc) {
  void *handler = __atomic_load_n(&prog[sig].handler, __ATOMIC_ACQUIRE);
  int flags = __atomic_load_n(&prog[sig].flags, __ATOMIC_RELAXED);
  if (flags & SA_RESETHAND) /* the kernel has reset it: so has the program's view */
    __atomic_store_n(&prog[sig].handler, (void *)SIG_DFL, __ATOMIC_RELEASE);
  if (handler == (void *)SIG_DFL || handler == (void *)SIG_IGN)
    return; /* changed meanwhile; the kernel has the new disposition for the next */
  if ((!locks_held && (!tp_inside || tp_signals_now)) || synchronous(sig)) {
    int err = errno;
    call_handler(sig, info, uc, handler, flags);
    errno = err;
    return;
  }
  for (int i = 0; i < tp_deferred; i++)
    if (deferred[i].sig == sig)
      return; /* already pending: coalesced */
  if (tp_deferred < DEFER_MAX) {
    deferred[tp_deferred].sig = sig;
    deferred[tp_deferred].handler = handler;
    deferred[tp_deferred].flags = flags;
    deferred[tp_deferred].info = *info;
    tp_deferred++;
  }
}

void tp_run_deferred(void) {
  sigset_t all, old;
  sigfillset(&all);
  while (tp_deferred && !tp_inside && !locks_held) {
    pthread_sigmask(SIG_BLOCK, &all, &old); /* the list is the trampoline's too */
    int sig = deferred[0].sig;
    void *handler = deferred[0].handler;
    int flags = deferred[0].flags;
    siginfo_t info = deferred[0].info;
    memmove(&deferred[0], &deferred[1], (size_t)(tp_deferred - 1) * sizeof(deferred[0]));
    tp_deferred--;
    /* The mask the kernel would have set for the handler. */
    sigset_t during = old;
    sigorset(&during, &during, &prog[sig].mask);
    if (!(flags & SA_NODEFER))
      sigaddset(&during, sig);
    pthread_sigmask(SIG_SETMASK, &during, NULL);
    int err = errno;
    ucontext_t uc;
    getcontext(&uc);
    call_handler(sig, &info, &uc, handler, flags);
    errno = err;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
}

/* Every lock of tether's taken on this thread is counted (see the top). */
int __real_pthread_mutex_lock(pthread_mutex_t *m);
int __real_pthread_mutex_trylock(pthread_mutex_t *m);
int __real_pthread_mutex_unlock(pthread_mutex_t *m);
int __wrap_pthread_mutex_lock(pthread_mutex_t *m);
int __wrap_pthread_mutex_trylock(pthread_mutex_t *m);
int __wrap_pthread_mutex_unlock(pthread_mutex_t *m);

static inline void unlocked(void) {
  if (--locks_held == 0 && __builtin_expect(tp_deferred != 0, 0) && !tp_inside)
    tp_run_deferred();
}

int __wrap_pthread_mutex_lock(pthread_mutex_t *m) {
  locks_held++; /* first: a signal while it waits for the lock is deferred too */
  int rc = __real_pthread_mutex_lock(m);
  if (rc)
    unlocked();
  return rc;
}

int __wrap_pthread_mutex_trylock(pthread_mutex_t *m) {
  locks_held++;
  int rc = __real_pthread_mutex_trylock(m);
  if (rc)
    unlocked();
  return rc;
}

int __wrap_pthread_mutex_unlock(pthread_mutex_t *m) {
  int rc = __real_pthread_mutex_unlock(m);
  unlocked();
  return rc;
}

/* act_lock held: what the kernel has for sig, once, as the program's. */
static void learn(int sig) {
  if (prog[sig].known)
    return;
  struct sigaction k;
  if (real_sigaction(sig, NULL, &k) != 0)
    return;
  prog[sig].handler = (k.sa_flags & SA_SIGINFO) ? (void *)k.sa_sigaction : (void *)k.sa_handler;
  prog[sig].flags = k.sa_flags;
  prog[sig].mask = k.sa_mask;
  prog[sig].known = true;
}

EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  READY();
  resolve();
  if (tp_inside || tp_disabled || sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP)
    return real_sigaction(sig, act, old);
  sigset_t all, saved;
  sigfillset(&all);
  if (act) /* a handler of ours must not run between the table and the kernel */
    pthread_sigmask(SIG_BLOCK, &all, &saved);
  pthread_mutex_lock(&act_lock);
  learn(sig);
  struct sigaction was = {0};
  if (prog[sig].flags & SA_SIGINFO)
    was.sa_sigaction = (void (*)(int, siginfo_t *, void *))prog[sig].handler;
  else
    was.sa_handler = (void (*)(int))prog[sig].handler;
  was.sa_flags = prog[sig].flags;
  was.sa_mask = prog[sig].mask;
  int rc = 0;
  if (act) {
    void *h = (act->sa_flags & SA_SIGINFO) ? (void *)act->sa_sigaction : (void *)act->sa_handler;
    struct sigaction k = *act;
    if (h != (void *)SIG_DFL && h != (void *)SIG_IGN) {
      k.sa_sigaction = trampoline;
      k.sa_flags |= SA_SIGINFO;
    }
    /* The table first: a signal that comes as the kernel takes the new
     * disposition finds the handler it will call. */
    void *prev_h = prog[sig].handler;
    int prev_f = prog[sig].flags;
    __atomic_store_n(&prog[sig].flags, act->sa_flags, __ATOMIC_RELAXED);
    __atomic_store_n(&prog[sig].handler, h, __ATOMIC_RELEASE);
    prog[sig].mask = act->sa_mask;
    rc = real_sigaction(sig, &k, NULL);
    if (rc != 0) {
      int err = errno;
      __atomic_store_n(&prog[sig].flags, prev_f, __ATOMIC_RELAXED);
      __atomic_store_n(&prog[sig].handler, prev_h, __ATOMIC_RELEASE);
      prog[sig].mask = was.sa_mask;
      errno = err;
    }
  }
  pthread_mutex_unlock(&act_lock);
  if (act)
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
  if (rc == 0 && old)
    *old = was;
  return rc;
}

/* signal() as glibc makes it (BSD semantics: restarting, the signal held
 * during its handler), and System V's (reset on delivery, not held). */
static sighandler_t set_handler(int sig, sighandler_t h, int flags) {
  struct sigaction act = {0}, old;
  act.sa_handler = h;
  act.sa_flags = flags;
  sigemptyset(&act.sa_mask);
  if (sig > 0 && sig < NSIG && !(flags & SA_NODEFER))
    sigaddset(&act.sa_mask, sig);
  if (sigaction(sig, &act, &old) < 0)
    return SIG_ERR;
  return old.sa_handler;
}

EXPORT sighandler_t signal(int sig, sighandler_t h) { return set_handler(sig, h, SA_RESTART); }
sighandler_t bsd_signal(int sig, sighandler_t h);
sighandler_t sysv_signal(int sig, sighandler_t h);
EXPORT sighandler_t bsd_signal(int sig, sighandler_t h) { return set_handler(sig, h, SA_RESTART); }
EXPORT sighandler_t sysv_signal(int sig, sighandler_t h) {
  return set_handler(sig, h, SA_RESETHAND | SA_NODEFER);
}
sighandler_t __sysv_signal(int sig, sighandler_t h);
EXPORT sighandler_t __sysv_signal(int sig, sighandler_t h) { return sysv_signal(sig, h); }

void signals_after_fork_child(void) {
  /* The forking thread held none of it (sigaction blocks signals and is
   * not called inside tether), but another thread may have. */
  pthread_mutex_init(&act_lock, NULL);
}
