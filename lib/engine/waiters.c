/* Threads blocked in a session's data path, and how they are woken.
 *
 * A transition replaces the file behind the application's number and wakes
 * pollers of the old one (engine.h, APP_FD_*).  A woken poll() looks at the
 * number again, but only its first pass attaches it to the files it finds:
 * if another thread has meanwhile installed a file that is not ready yet
 * (the new socket after a resume, before its first bytes), the woken thread
 * finds nothing and sleeps on the old file, which nothing will wake again.
 * So a thread that waits inside tether also polls an eventfd of its own,
 * and every installation writes to the eventfds of the threads waiting. */
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

int (*engine_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *) = ppoll;

/* Each thread that ever waits gets one eventfd, closed when the thread
 * ends.  A program may close any number, ours too (closefrom), and reuse
 * it: before our number is read or closed, it must still name our file. */
static __thread int t_efd __attribute__((tls_model("initial-exec"))) = -1;
static __thread dev_t t_dev __attribute__((tls_model("initial-exec")));
static __thread ino_t t_ino __attribute__((tls_model("initial-exec")));
static pthread_key_t efd_key;
static pthread_once_t efd_once = PTHREAD_ONCE_INIT;

static bool efd_ours(void) {
  struct stat st;
  return t_efd >= 0 && fstat(t_efd, &st) == 0 && st.st_dev == t_dev && st.st_ino == t_ino;
}

static void efd_forget(void) {
  t_efd = -1;
  (void)pthread_setspecific(efd_key, NULL);
}

static void efd_free(void *v) {
  (void)v;
  if (efd_ours())
    (void)close(t_efd);
  t_efd = -1;
}

static void efd_key_init(void) { (void)pthread_key_create(&efd_key, efd_free); }

/* The calling thread's wake eventfd, or -1 (out of descriptors). */
static int thread_efd(void) {
  if (t_efd >= 0)
    return t_efd;
  struct stat st;
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0)
    return -1;
  /* Any non-NULL value: the destructor runs only for those. */
  if (fstat(efd, &st) != 0 || pthread_once(&efd_once, efd_key_init) != 0 ||
      pthread_setspecific(efd_key, &t_efd) != 0) {
    (void)close(efd);
    return -1;
  }
  t_dev = st.st_dev;
  t_ino = st.st_ino;
  return t_efd = efd;
}

void app_waiters_after_fork_child(void) {
  if (efd_ours())
    (void)close(t_efd); /* the parent's: its wake-ups would come here */
  efd_forget();
}

void app_waiter_add(struct tether_session *s, struct app_waiter *w) {
  w->efd = thread_efd();
  w->woken = false;
  if (w->efd < 0)
    return; /* waits without: as good as a plain poll */
  pthread_mutex_lock(&s->waiters_lock);
  w->next = s->waiters;
  s->waiters = w;
  pthread_mutex_unlock(&s->waiters_lock);
}

/* Unregisters w; whether it was woken (its eventfd then holds a count). */
static bool waiter_unlink(struct tether_session *s, struct app_waiter *w) {
  if (w->efd < 0)
    return false;
  pthread_mutex_lock(&s->waiters_lock);
  for (struct app_waiter **pp = &s->waiters; *pp; pp = &(*pp)->next)
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  bool woken = w->woken;
  pthread_mutex_unlock(&s->waiters_lock);
  return woken;
}

void app_waiter_remove(struct tether_session *s, struct app_waiter *w) {
  uint64_t v;
  if (waiter_unlink(s, w))
    (void)!read(w->efd, &v, sizeof(v));
}

bool app_waiter_rearm(struct tether_session *s, struct app_waiter *w, short efd_revents) {
  uint64_t v;
  if (w->efd < 0)
    return false;
  pthread_mutex_lock(&s->waiters_lock);
  bool woken = w->woken;
  w->woken = false;
  pthread_mutex_unlock(&s->waiters_lock);
  if (woken) {
    (void)!read(w->efd, &v, sizeof(v)); /* another waiter of ours may have drained it */
    return true;
  }
  if (efd_revents && ((efd_revents & POLLNVAL) || !efd_ours())) {
    /* The program closed our number (see app_waiter_wait): no more wakes
     * through it, for this wait or any later one. */
    (void)waiter_unlink(s, w);
    w->efd = -1;
    efd_forget();
    return true;
  }
  return false;
}

int app_waiter_wait(struct tether_session *s, struct app_waiter *w, int fd, short events,
                    int timeout_ms, const sigset_t *mask) {
  struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = w->efd, .events = POLLIN}};
  struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
  int n = engine_ppoll(p, w->efd >= 0 ? 2 : 1, timeout_ms >= 0 ? &ts : NULL, mask);
  int err = errno;
  uint64_t v;
  if (waiter_unlink(s, w)) {
    (void)!read(w->efd, &v, sizeof(v)); /* written under waiters_lock: there */
    return 0;
  }
  if (n > 0 && w->efd >= 0 && p[1].revents) {
    /* Not woken, yet our number is ready or invalid: the program closed it
     * (and may have reused it).  Not ours to read or close any more. */
    if ((p[1].revents & POLLNVAL) || !efd_ours())
      efd_forget();
    return 0;
  }
  if (n < 0)
    return err == EINTR ? -EINTR : 0;
  return n == 0 ? -EAGAIN : 0;
}

int app_wait(struct tether_session *s, int fd, short events, const sigset_t *mask) {
  struct app_waiter w;
  app_waiter_add(s, &w);
  int rc = app_waiter_wait(s, &w, fd, events, -1, mask);
  return rc == -EINTR ? -EINTR : 0;
}

void app_waiters_wake(struct tether_session *s) {
  uint64_t one = 1;
  pthread_mutex_lock(&s->waiters_lock);
  for (struct app_waiter *w = s->waiters; w; w = w->next)
    if (!w->woken) {
      w->woken = true;
      (void)!write(w->efd, &one, sizeof(one));
    }
  pthread_mutex_unlock(&s->waiters_lock);
}
