/* Stores: where checkpoints go (see tether_store_new(3), tether(7) SNAPSHOTS).
 *
 * A store is three callbacks -- save, commit, load -- behind a lock, so that
 * one checkpoint's save and commit are never interleaved with another's and
 * a checkpoint's snapshot is stored before any later one.  The file store is
 * the built-in one; tether_snapshot_save and tether_restore_file are a file
 * store used once. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "wire/snapshot.h"

struct tether_store {
  tether_store_ops ops;
  void *arg;
  void (*dtor)(void *arg); /* the built-in stores' own arg */
  pthread_mutex_t lock;    /* held around every callback */
};

int tether_store_new(const tether_store_ops *ops, void *arg, tether_store **out) {
  if (!out)
    return -EINVAL;
  *out = NULL;
  if (!ops || !ops->save || !ops->load)
    return -EINVAL;
  tether_store *st = calloc(1, sizeof(*st));
  if (!st)
    return -ENOMEM;
  st->ops = *ops;
  st->arg = arg;
  pthread_mutex_init(&st->lock, NULL);
  *out = st;
  return 0;
}

void tether_store_free(tether_store *st) {
  if (!st)
    return;
  if (st->dtor)
    st->dtor(st->arg);
  pthread_mutex_destroy(&st->lock);
  free(st);
}

/* Store lock held.  A commit that says TETHER_STORE_PENDING is the
 * application's to report; anything else positive is a broken store. */
static int save_commit(tether_ctx *ctx, tether_store *st, const void *blob, size_t len) {
  int rc = st->ops.save(st->arg, blob, len);
  if (rc > 0)
    rc = -EINVAL;
  if (rc < 0) {
    LOG_WARN(ctx, "checkpoint: the store could not save the snapshot: %s", tether_strerror(rc));
    return rc;
  }
  rc = st->ops.commit ? st->ops.commit(st->arg) : 0;
  if (rc == TETHER_STORE_PENDING)
    return rc;
  if (rc > 0)
    rc = -EINVAL;
  if (rc < 0) {
    LOG_WARN(ctx, "checkpoint: the store could not commit the snapshot: %s", tether_strerror(rc));
    return rc;
  }
  return tether_snapshot_commit(ctx, blob, len);
}

int tether_checkpoint_blob(tether_ctx *ctx, tether_store *st, const void *blob, size_t len) {
  uint32_t capture;
  if (!ctx || !st || !blob)
    return -EINVAL;
  /* Checked before the store keeps it: the commit needs its header. */
  if (snap_capture_id(blob, len, &capture) < 0)
    return TETHER_EPROTO;
  pthread_mutex_lock(&st->lock);
  int rc = save_commit(ctx, st, blob, len);
  pthread_mutex_unlock(&st->lock);
  return rc;
}

int tether_checkpoint(tether_ctx *ctx, tether_store *st) {
  void *blob;
  size_t len;
  if (!ctx || !st)
    return -EINVAL;
  /* The snapshot is taken under the store's lock: two threads that
   * checkpoint at once store their snapshots in the order they took them. */
  pthread_mutex_lock(&st->lock);
  int rc = tether_snapshot(ctx, &blob, &len);
  if (rc == 0) {
    rc = save_commit(ctx, st, blob, len);
    wipe(blob, len);
    free(blob);
  }
  pthread_mutex_unlock(&st->lock);
  return rc;
}

int tether_restore_store(const tether_config *cfg, tether_store *st, tether_ctx **out) {
  void *blob = NULL;
  size_t len = 0;
  if (!st || !out)
    return -EINVAL;
  *out = NULL;
  pthread_mutex_lock(&st->lock);
  int rc = st->ops.load(st->arg, &blob, &len);
  pthread_mutex_unlock(&st->lock);
  if (rc > 0)
    rc = -EINVAL;
  if (rc == 0 && !blob)
    rc = TETHER_EPROTO;
  if (rc == 0)
    rc = tether_restore(cfg, blob, len, out);
  if (blob) {
    wipe(blob, len);
    free(blob);
  }
  return rc;
}

/* ---- the file store ------------------------------------------------------ */

struct file_store {
  char *path;
  char *dir;             /* path's directory, fsynced after the rename */
  char tmp[PATH_MAX];    /* the saved, not yet committed file; "" if none */
};

static void file_discard(struct file_store *f) {
  if (f->tmp[0])
    unlink(f->tmp);
  f->tmp[0] = '\0';
}

static void file_free(void *arg) {
  struct file_store *f = arg;
  file_discard(f);
  free(f->path);
  free(f->dir);
  free(f);
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* A new temporary file (mkostemp: mode 0600, O_EXCL, a name no other
 * writer uses), written and fsynced. */
static int file_save(void *arg, const void *blob, size_t len) {
  struct file_store *f = arg;
  file_discard(f); /* a save never committed */
  if (snprintf(f->tmp, sizeof(f->tmp), "%s.tmp.XXXXXX", f->path) >= (int)sizeof(f->tmp)) {
    f->tmp[0] = '\0';
    return -ENAMETOOLONG;
  }
  int fd = mkostemp(f->tmp, O_CLOEXEC);
  if (fd < 0) {
    int rc = -errno;
    f->tmp[0] = '\0';
    return rc;
  }
  int rc = write_all(fd, blob, len);
  if (rc == 0 && fsync(fd) < 0)
    rc = -errno;
  if (close(fd) < 0 && rc == 0)
    rc = -errno;
  if (rc < 0)
    file_discard(f);
  return rc;
}

/* The rename replaces path atomically; the directory's fsync makes the
 * rename itself survive a power cut. */
static int file_commit(void *arg) {
  struct file_store *f = arg;
  if (!f->tmp[0])
    return -EINVAL; /* nothing saved */
  if (rename(f->tmp, f->path) < 0) {
    int rc = -errno;
    file_discard(f);
    return rc;
  }
  f->tmp[0] = '\0';
  int dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = dfd < 0 || fsync(dfd) < 0 ? -errno : 0;
  if (dfd >= 0)
    close(dfd);
  return rc;
}

/* Reads the file, bounded by the largest snapshot there can be. */
static int file_load(void *arg, void **blob, size_t *len) {
  struct file_store *f = arg;
  struct stat sb;
  int fd = open(f->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = 0;
  uint8_t *buf = NULL;
  size_t got = 0;
  if (fstat(fd, &sb) < 0) {
    rc = -errno;
  } else if (!S_ISREG(sb.st_mode) ||
             (uint64_t)sb.st_size > SNAP_PAYLOAD_MAX + SNAP_HEADER_LEN + SNAP_TRAILER_LEN) {
    rc = TETHER_EPROTO;
  } else if (!(buf = malloc(sb.st_size ? (size_t)sb.st_size : 1))) {
    rc = -ENOMEM;
  } else {
    while (got < (size_t)sb.st_size) {
      ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0) {
        rc = r < 0 ? -errno : TETHER_EPROTO; /* shrank under us */
        break;
      }
      got += (size_t)r;
    }
  }
  close(fd);
  if (rc < 0) {
    if (buf) {
      wipe(buf, got);
      free(buf);
    }
    return rc;
  }
  *blob = buf;
  *len = got;
  return 0;
}

int tether_store_file_new(const char *path, tether_store **out) {
  static const tether_store_ops ops = {.save = file_save, .commit = file_commit,
                                       .load = file_load};
  if (!out)
    return -EINVAL;
  *out = NULL;
  if (!path || !path[0])
    return -EINVAL;
  /* Room for the temporary name's suffix. */
  if (strlen(path) + sizeof(".tmp.XXXXXX") > PATH_MAX)
    return -ENAMETOOLONG;
  struct file_store *f = calloc(1, sizeof(*f));
  if (!f)
    return -ENOMEM;
  f->path = strdup(path);
  const char *slash = strrchr(path, '/');
  if (!slash)
    f->dir = strdup(".");
  else if (slash == path)
    f->dir = strdup("/");
  else
    f->dir = strndup(path, (size_t)(slash - path));
  int rc = f->path && f->dir ? tether_store_new(&ops, f, out) : -ENOMEM;
  if (rc < 0) {
    file_free(f);
    return rc;
  }
  (*out)->dtor = file_free;
  return 0;
}

/* ---- the file store used once ------------------------------------------- */

int tether_snapshot_save(tether_ctx *ctx, const char *path) {
  tether_store *st;
  if (!ctx)
    return -EINVAL;
  int rc = tether_store_file_new(path, &st);
  if (rc < 0)
    return rc;
  rc = tether_checkpoint(ctx, st);
  tether_store_free(st);
  return rc;
}

int tether_restore_file(const tether_config *cfg, const char *path, tether_ctx **out) {
  tether_store *st;
  if (!out)
    return -EINVAL;
  *out = NULL;
  int rc = tether_store_file_new(path, &st);
  if (rc < 0)
    return rc;
  rc = tether_restore_store(cfg, st, out);
  tether_store_free(st);
  return rc;
}
