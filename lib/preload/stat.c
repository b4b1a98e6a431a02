/* fstat and its variants on a session's number.  The file behind the
 * number is not always a socket (a placeholder while a connect or a resume
 * is in progress, or while a writer is held back: see wait.c), but the
 * program must see one, as it would for a TCP socket: S_IFSOCK, the live
 * socket's identity when there is one, else a socket's mode, device and
 * sizes (st_ino is then the placeholder's).  A listener's number (an epoll
 * instance, listen.c) shows its listening socket. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

/* libc's own: resolved on first use (older libcs lack fstat and fstatat as
 * symbols: their programs call the __fxstat family). */
static int (*real_fstat)(int, struct stat *);
static int (*real_fxstat)(int, int, struct stat *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fxstatat)(int, int, const char *, struct stat *, int);
static int (*real_statx)(int, const char *, int, unsigned, struct statx *);

static void *next(const char *name) {
  return dlsym(RTLD_NEXT, name);
}

#define RESOLVE(var, name) \
  do { \
    if (!__atomic_load_n(&(var), __ATOMIC_ACQUIRE)) \
      __atomic_store_n((void **)&(var), next(name), __ATOMIC_RELEASE); \
  } while (0)

/* libc's fstat, whatever it is called here. */
static int libc_fstat(int fd, struct stat *st) {
  RESOLVE(real_fstat, "fstat");
  if (real_fstat)
    return real_fstat(fd, st);
  RESOLVE(real_fxstat, "__fxstat");
  if (real_fxstat)
    return real_fxstat(1, fd, st); /* _STAT_VER_LINUX */
  errno = ENOSYS;
  return -1;
}

/* The psock whose number fd must look like a socket, or NULL. */
static struct psock *socket_like(int fd) {
  if (tp_inside)
    return NULL;
  struct psock *ps = fdt_get(fd);
  if (!ps || tp_vforked())
    return NULL;
  int k = ps->kind;
  return k == PS_SESSION || k == PS_CONNECTING || k == PS_LISTEN || ps_orphan_session(ps) ? ps
                                                                                          : NULL;
}

/* The device number of the kernel's socket file system (the same for every
 * socket), learnt once from a socket of our own; 0 if none can be made. */
static dev_t sockfs_dev(void) {
  static dev_t dev;
  static int known;
  if (__atomic_load_n(&known, __ATOMIC_ACQUIRE))
    return dev;
  struct stat st;
  TP_ENTER();
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s >= 0 && libc_fstat(s, &st) == 0) {
    dev = st.st_dev;
    __atomic_store_n(&known, 1, __ATOMIC_RELEASE);
  }
  if (s >= 0)
    close(s);
  TP_LEAVE();
  return dev;
}

/* st (libc's answer for fd) made a socket's, if it is not one.  A session
 * with a live socket behind a placeholder answers with that socket. */
static void as_socket(struct psock *ps, struct stat *st) {
  if (S_ISSOCK(st->st_mode))
    return;
  int done = -1;
  TP_ENTER();
  if (ps->kind == PS_LISTEN && ps->pl) {
    done = libc_fstat(pl_socket(ps->pl), st);
  } else if (ps->kind == PS_SESSION && ps->s) {
    struct tether_session *s = ps->s;
    pthread_mutex_lock(&s->rx_lock);
    if (s->sock >= 0)
      done = libc_fstat(s->sock, st);
    pthread_mutex_unlock(&s->rx_lock);
  }
  TP_LEAVE();
  if (done == 0 && S_ISSOCK(st->st_mode))
    return;
  st->st_mode = S_IFSOCK | S_IRWXU | S_IRWXG | S_IRWXO;
  st->st_dev = sockfs_dev();
  st->st_rdev = 0;
  st->st_nlink = 1;
  st->st_size = 0;
  st->st_blocks = 0;
  st->st_blksize = 4096;
}

static void as_socket_x(struct psock *ps, struct statx *sx) {
  if ((sx->stx_mask & STATX_TYPE) && S_ISSOCK(sx->stx_mode))
    return;
  struct stat st;
  memset(&st, 0, sizeof(st));
  st.st_ino = sx->stx_ino;
  as_socket(ps, &st);
  sx->stx_mode = (uint16_t)st.st_mode;
  sx->stx_ino = st.st_ino;
  sx->stx_dev_major = major(st.st_dev);
  sx->stx_dev_minor = minor(st.st_dev);
  sx->stx_rdev_major = 0;
  sx->stx_rdev_minor = 0;
  sx->stx_nlink = (uint32_t)st.st_nlink;
  sx->stx_size = 0;
  sx->stx_blocks = 0;
  sx->stx_blksize = (uint32_t)st.st_blksize;
  sx->stx_mask |= STATX_TYPE | STATX_MODE | STATX_INO | STATX_NLINK | STATX_SIZE | STATX_BLOCKS;
}

int fstat64(int fd, struct stat64 *st);
int __fxstat(int ver, int fd, struct stat *st);
int __fxstat64(int ver, int fd, struct stat64 *st);
int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);

EXPORT int fstat(int fd, struct stat *st) {
  READY();
  int rc = libc_fstat(fd, st);
  struct psock *ps = rc == 0 ? socket_like(fd) : NULL;
  if (ps)
    as_socket(ps, st);
  return rc;
}

/* 64-bit Linux: struct stat64 is struct stat. */
_Static_assert(sizeof(struct stat64) == sizeof(struct stat), "stat64 differs from stat");

EXPORT int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }

EXPORT int __fxstat(int ver, int fd, struct stat *st) {
  READY();
  RESOLVE(real_fxstat, "__fxstat");
  if (!real_fxstat) {
    errno = ENOSYS;
    return -1;
  }
  int rc = real_fxstat(ver, fd, st);
  struct psock *ps = rc == 0 ? socket_like(fd) : NULL;
  if (ps)
    as_socket(ps, st);
  return rc;
}

EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) {
  return __fxstat(ver, fd, (struct stat *)st);
}

/* fstatat(fd, "", st, AT_EMPTY_PATH) is fstat(fd). */
static bool names_fd(const char *path, int flags) {
  return (flags & AT_EMPTY_PATH) && path && path[0] == '\0';
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags) {
  READY();
  RESOLVE(real_fstatat, "fstatat");
  if (!real_fstatat) {
    errno = ENOSYS;
    return -1;
  }
  int rc = real_fstatat(dirfd, path, st, flags);
  struct psock *ps = rc == 0 && names_fd(path, flags) ? socket_like(dirfd) : NULL;
  if (ps)
    as_socket(ps, st);
  return rc;
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
  return fstatat(dirfd, path, (struct stat *)st, flags);
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags) {
  READY();
  RESOLVE(real_fxstatat, "__fxstatat");
  if (!real_fxstatat) {
    errno = ENOSYS;
    return -1;
  }
  int rc = real_fxstatat(ver, dirfd, path, st, flags);
  struct psock *ps = rc == 0 && names_fd(path, flags) ? socket_like(dirfd) : NULL;
  if (ps)
    as_socket(ps, st);
  return rc;
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags) {
  return __fxstatat(ver, dirfd, path, (struct stat *)st, flags);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *sx) {
  READY();
  RESOLVE(real_statx, "statx");
  if (!real_statx) {
    errno = ENOSYS;
    return -1;
  }
  int rc = real_statx(dirfd, path, flags, mask, sx);
  struct psock *ps = rc == 0 && names_fd(path, flags) ? socket_like(dirfd) : NULL;
  if (ps)
    as_socket_x(ps, sx);
  return rc;
}
