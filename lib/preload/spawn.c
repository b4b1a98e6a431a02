/* posix_spawn(3) file actions that put a session's number in a new program.
 *
 * The C library performs file actions in a child of its own (clone with
 * CLONE_VFORK), beyond the reach of our dup2: a POSIX_SPAWN_DUP2 of a
 * session's number would hand the new program the live TCP socket, whose
 * bytes bypass the session.  So such an action names a stand-in number of
 * ours instead (kept with the file actions, /dev/null between spawns), and
 * at each posix_spawn the stand-in is made one end of a fresh relay of the
 * session (fork.c), as a child's exec gets: the new program holds an
 * ordinary stream socket, the parent's relay thread passes its bytes to and
 * from the session, and its close is a close. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <unistd.h>

#include "preload.h"

struct standin {
  struct standin *next;
  const posix_spawn_file_actions_t *fa;
  int fd;           /* ours: /dev/null, or a relay's end during a spawn */
  struct psock *ps; /* the session (its psock memory stays a psock's) */
  uint64_t serial;  /* ... as long as this is its serial */
};

pthread_mutex_t sp_lock = PTHREAD_MUTEX_INITIALIZER;
static struct standin *standins;

static int (*real_adddup2)(posix_spawn_file_actions_t *, int, int);
static int (*real_fa_destroy)(posix_spawn_file_actions_t *);
static int (*real_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                         const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                          const posix_spawnattr_t *, char *const[], char *const[]);

static void resolve(void) {
  if (__atomic_load_n(&real_spawnp, __ATOMIC_ACQUIRE))
    return;
  real_init();
  *(void **)&real_adddup2 = tp_next("posix_spawn_file_actions_adddup2");
  *(void **)&real_fa_destroy = tp_next("posix_spawn_file_actions_destroy");
  *(void **)&real_spawn = tp_next("posix_spawn");
  void *p = tp_next("posix_spawnp");
  __atomic_store_n((void **)&real_spawnp, p, __ATOMIC_RELEASE);
}

static int devnull(void) { return open("/dev/null", O_RDWR | O_CLOEXEC); }

EXPORT int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd) {
  resolve();
  struct psock *ps = tp_inside || tp_disabled ? NULL : fdt_get(fd);
  if (ps && ps_orphan_session(ps))
    (void)fork_claim(ps); /* a child's inherited session: its relay is a socket */
  if (!ps || ps->kind != PS_SESSION)
    return real_adddup2(fa, fd, newfd);
  struct standin *st = calloc(1, sizeof(*st));
  if (!st)
    return ENOMEM;
  st->fa = fa;
  st->ps = ps;
  st->serial = ps->serial;
  st->fd = devnull();
  int rc = st->fd < 0 ? errno : real_adddup2(fa, st->fd, newfd);
  if (rc) {
    if (st->fd >= 0)
      real.close(st->fd);
    free(st);
    return rc;
  }
  pthread_mutex_lock(&sp_lock);
  st->next = standins;
  standins = st;
  pthread_mutex_unlock(&sp_lock);
  return 0;
}

EXPORT int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa) {
  resolve();
  pthread_mutex_lock(&sp_lock);
  for (struct standin **pp = &standins; *pp;) {
    struct standin *st = *pp;
    if (st->fa == fa) {
      *pp = st->next;
      real.close(st->fd);
      free(st);
    } else {
      pp = &st->next;
    }
  }
  pthread_mutex_unlock(&sp_lock);
  return real_fa_destroy(fa);
}

/* Before a spawn with fa: every stand-in becomes a new relay's end (0), or
 * a positive errno (no spawn: the new program would get nothing).  One
 * relay per session: stand-ins of the same session (dup2 onto 0 and onto
 * 1) share it, as the numbers share one socket -- two relays would each
 * take some of the session's bytes. */
static int arm(const posix_spawn_file_actions_t *fa) {
  int rc = 0;
  for (struct standin *st = standins; st && !rc; st = st->next) {
    if (st->fa != fa)
      continue;
    if (st->ps->serial != st->serial) { /* closed since: as dup2 of a closed number */
      rc = EBADF;
      break;
    }
    struct standin *same = NULL;
    for (struct standin *o = standins; o != st && !same; o = o->next)
      if (o->fa == fa && o->ps == st->ps)
        same = o; /* armed already, in this loop */
    if (same) {
      if (real.dup3(same->fd, st->fd, O_CLOEXEC) < 0)
        rc = errno;
      continue;
    }
    int end = fork_spawn_relay(st->ps);
    if (end < 0)
      rc = -end;
    else if (real.dup3(end, st->fd, O_CLOEXEC) < 0)
      rc = errno;
    if (end >= 0)
      real.close(end);
  }
  return rc;
}

/* After it: the stand-ins let go of their relays (the new program holds
 * them now, and its close must be the last). */
static void disarm(const posix_spawn_file_actions_t *fa) {
  for (struct standin *st = standins; st; st = st->next)
    if (st->fa == fa) {
      int nul = devnull();
      if (nul >= 0) {
        (void)real.dup3(nul, st->fd, O_CLOEXEC);
        real.close(nul);
      }
    }
}

static int spawn(bool path, pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
  resolve();
  int (*fn)(pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *,
            char *const[], char *const[]) = path ? real_spawnp : real_spawn;
  if (!fa || tp_inside || tp_disabled)
    return fn(pid, file, fa, attr, argv, envp);
  /* sp_lock for the length of the spawn: two threads spawning with the
   * same file actions take turns, each with relays of its own. */
  pthread_mutex_lock(&sp_lock);
  int rc = arm(fa);
  if (!rc)
    rc = fn(pid, file, fa, attr, argv, envp);
  disarm(fa);
  pthread_mutex_unlock(&sp_lock);
  return rc;
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
  return spawn(false, pid, path, fa, attr, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
  return spawn(true, pid, file, fa, attr, argv, envp);
}
