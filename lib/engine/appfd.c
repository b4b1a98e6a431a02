/* The application's descriptor of a session (tether_fd): one stable number
 * that names the live socket while connected, a never-ready placeholder
 * while suspended, and an always-ready one in final states (see APP_FD_* in
 * engine.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"

/* Both locks held.  Points app_fd at `fd` (consumed) of the given kind, and
 * wakes pollers of a WAIT pipe by closing its write end. */
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

static int app_fd_wanted(const struct tether_session *s) {
  switch (s->core.state) {
  case CORE_CONNECTED: return s->sock >= 0 ? APP_FD_SOCK : APP_FD_READY;
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
      int p[2];
      if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
        app_fd_install(s, p[0], APP_FD_WAIT);
        s->hold_w = p[1];
      } else {
        LOG_ERR(s->ctx, "cannot create a placeholder descriptor: %s", strerror(errno));
      }
    } else {
      app_fd_ready(s);
    }
  }
  session_unlock(s);
}
