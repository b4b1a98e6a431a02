/* The application's descriptor of a session (tether_fd): one stable number
 * that names the live socket while connected, a never-ready placeholder
 * while suspended, and an always-ready one in final states (see APP_FD_* in
 * engine.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine.h"

/* Both locks held.  Points app_fd at `fd` (consumed) of the given kind, and
 * wakes pollers of a WAIT or HELD pipe by closing its write end (POLLHUP
 * wakes a poller whatever it waits for), and the library's own waits. */
static void app_fd_install(struct tether_session *s, int fd, int kind) {
  if (s->app_fd >= 0 && s->app_fd_hook)
    s->app_fd_hook(s, fd, kind);
  else if (s->app_fd >= 0 && dup3(fd, s->app_fd, O_CLOEXEC) < 0)
    LOG_ERR(s->ctx, "dup3 onto the session descriptor failed: %s", strerror(errno));
  if (fd != s->sock)
    close(fd);
  if (s->hold_w >= 0)
    close(s->hold_w);
  s->hold_w = -1;
  __atomic_store_n(&s->app_kind, kind, __ATOMIC_RELEASE);
  app_waiters_wake(s);
}

/* Both locks held: any transition.  Pollers return; see APP_FD_READY. */
void app_fd_ready(struct tether_session *s) {
  if (s->app_fd < 0 || s->app_kind == APP_FD_READY)
    return;
  int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    LOG_ERR(s->ctx, "cannot create a placeholder descriptor: %s", strerror(errno));
    return;
  }
  app_fd_install(s, fd, APP_FD_READY);
}

/* Both locks held: installs a fresh pipe of kind `kind` (WAIT or HELD). */
static int install_pipe(struct tether_session *s, int kind) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
    LOG_ERR(s->ctx, "cannot create a placeholder descriptor: %s", strerror(errno));
    return -1;
  }
  app_fd_install(s, p[0], kind);
  s->hold_w = p[1];
  return 0;
}

static int app_fd_wanted(const struct tether_session *s) {
  switch (s->core.state) {
  case CORE_CONNECTED:
    if (s->sock < 0)
      return APP_FD_READY;
    return s->app_kind == APP_FD_HELD && core_write_room(&s->core) == 0 ? APP_FD_HELD
                                                                        : APP_FD_SOCK;
  case CORE_SUSPENDED: return APP_FD_WAIT;
  default: return APP_FD_READY;
  }
}

/* Application thread, at the start of every data-path call: installs the
 * file the current state calls for.  Two loads in the common case. */
void app_fd_fixup(struct tether_session *s) {
  if (__atomic_load_n(&s->app_kind, __ATOMIC_ACQUIRE) == APP_FD_SOCK &&
      __atomic_load_n(&s->core.state, __ATOMIC_RELAXED) == CORE_CONNECTED)
    return;
  session_lock(s);
  int want = app_fd_wanted(s);
  if (s->app_fd >= 0 && want != s->app_kind) {
    if (want == APP_FD_SOCK) {
      app_fd_install(s, s->sock, APP_FD_SOCK);
    } else if (want == APP_FD_WAIT) {
      (void)install_pipe(s, APP_FD_WAIT);
    } else {
      app_fd_ready(s);
    }
  }
  session_unlock(s);
}

void app_fd_hold(struct tether_session *s) {
  if (s->app_fd < 0 || s->sock < 0 || s->core.state != CORE_CONNECTED ||
      s->app_kind == APP_FD_HELD || install_pipe(s, APP_FD_HELD) < 0)
    return;
  s->held_marked = false;
  app_fd_held_sync(s);
  session_kick(s); /* the engine watches the socket's reads for us */
}

void app_fd_held_sync(struct tether_session *s) {
  int unread = 0;
  uint8_t b = 'r';
  if (s->app_kind != APP_FD_HELD || s->app_fd < 0)
    return;
  if (s->sock >= 0 && ioctl(s->sock, FIONREAD, &unread) < 0)
    unread = 1; /* an error is news for a reader too */
  if (unread > 0 && !s->held_marked)
    s->held_marked = write(s->hold_w, &b, 1) == 1;
  else if (unread == 0 && s->held_marked)
    s->held_marked = read(s->app_fd, &b, 1) != 1;
}

void app_fd_release(struct tether_session *s) {
  if (s->app_kind == APP_FD_HELD &&
      (s->core.state != CORE_CONNECTED || core_write_room(&s->core) > 0))
    app_fd_ready(s);
}
