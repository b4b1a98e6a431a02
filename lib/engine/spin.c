/* The read spin's signal discipline (tether(7), Application bytes).
 *
 * A signal interrupts a blocking wait: poll, select, epoll_wait return
 * EINTR once its handler has run.  A spin sleeps in no system call, so a
 * signal that came during it would run its handler and leave the spin none
 * the wiser, and the blocking wait that follows would not return.  So a spin
 * runs with the thread's signals held back; if it ends without an answer, a
 * signal that came meanwhile and would have interrupted the wait is let in
 * and the wait ends with EINTR, as it would have without the spin.
 *
 * spin_wait lets them in and sleeps in one step (ppoll), so that none can
 * come between the two and be lost; spin_release lets them in for callers
 * that sleep on their own (the preload's poll and epoll_wait). */
#include <errno.h>
#include <poll.h>
#include <signal.h>

#include "engine.h"

void spin_hold(struct spin_hold *h) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &h->old);
}

/* Whether a pending signal is one that would have interrupted a wait: the
 * thread did not block it, and it has a handler (ignored signals, and those
 * whose default is to do nothing, interrupt nothing; the others end the
 * process when let in). */
static bool interrupts(const sigset_t *pending, const sigset_t *old) {
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sigismember(pending, sig) == 1 && sigismember(old, sig) == 0 &&
        sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)
      return true;
  }
  return false;
}

int spin_wait(struct spin_hold *h, struct tether_session *s, short events) {
  /* The kernel decides as for a plain poll: a signal with a handler ends
   * it (EINTR), an ignored one restarts it. */
  return app_wait(s, s->app_fd, events, &h->old);
}

int spin_release(struct spin_hold *h) {
  sigset_t pending;
  bool intr = sigpending(&pending) == 0 && interrupts(&pending, &h->old);
  pthread_sigmask(SIG_SETMASK, &h->old, NULL); /* the handlers run now */
  return intr ? -EINTR : 0;
}
