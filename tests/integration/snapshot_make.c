/* snapshot_make OUTDIR -- real snapshot files for the tether-snapshot test.
 *
 * Over loopback, in one process: a server context listening on 127.0.0.1,
 * a client context with two sessions to it, a few bytes each way, then
 * tether_snapshot_save of both contexts.  Right after the exchange, before
 * the heartbeats acknowledge anything, so the snapshots hold retained bytes.
 * Writes to OUTDIR:
 *   client.snap, server.snap   the snapshots
 *   ids                        the two session ids, in hex, one per line
 *   keys                       every key in both snapshots, in hex, one per
 *                              line (read back with the library's decoder:
 *                              the public API never shows keys), so that the
 *                              test can check that no output contains them
 *   payload                    a string every session wrote: it must not
 *                              appear in any output either
 * Exits 0, or 1 with a message on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tether/tether.h>

#include "wire/snapshot.h"

#define N_SESSIONS 2
#define WAIT_MS 10000
#define PAYLOAD "payload-3f9c1e-not-for-your-eyes"

static int fail(const char *what, int err) {
  fprintf(stderr, "snapshot_make: %s: %s\n", what, tether_strerror(err));
  return 1;
}

static int write_all(tether_session *s, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = tether_write(s, p, n);
    if (w < 0)
      return (int)w;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads exactly n bytes (blocking session, bounded by poll). */
static int read_n(tether_session *s, size_t n) {
  char buf[256];
  while (n > 0) {
    struct pollfd p = {.fd = tether_fd(s), .events = POLLIN};
    if (poll(&p, 1, WAIT_MS) <= 0)
      return -ETIMEDOUT;
    ssize_t r = tether_read(s, buf, n < sizeof(buf) ? n : sizeof(buf));
    if (r == 0)
      return -EPIPE;
    if (r < 0)
      return (int)r;
    n -= (size_t)r;
  }
  return 0;
}

/* Appends every k_* field of every session in the snapshot file to f. */
static int dump_keys(const char *path, FILE *f) {
  static uint8_t buf[1 << 20];
  const char *why;
  int err, fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  ssize_t n = read(fd, buf, sizeof(buf));
  close(fd);
  if (n < 0)
    return -errno;
  snap_msg *m = snap_open(buf, (size_t)n, &err, &why);
  if (!m)
    return err;
  for (size_t i = 0; i < m->n_sessions; i++) {
    const ProtobufCMessage *s = &m->sessions[i]->base;
    const ProtobufCMessageDescriptor *d = s->descriptor;
    for (unsigned k = 0; k < d->n_fields; k++) {
      if (strncmp(d->fields[k].name, "k_", 2) != 0)
        continue;
      const ProtobufCBinaryData *b =
          (const void *)((const char *)s + d->fields[k].offset);
      for (size_t j = 0; j < b->len; j++)
        fprintf(f, "%02x", b->data[j]);
      fputc('\n', f);
    }
  }
  snap_free(m);
  return 0;
}

int main(int argc, char **argv) {
  tether_ctx *sctx = NULL, *cctx = NULL;
  tether_listener *l;
  tether_session *cli[N_SESSIONS], *srv[N_SESSIONS];
  char port[16], path[4096];
  uint8_t id[16];
  FILE *f;
  int r;

  if (argc != 2) {
    fprintf(stderr, "usage: snapshot_make OUTDIR\n");
    return 2;
  }
  if ((r = tether_ctx_new(NULL, &sctx)) < 0 || (r = tether_ctx_new(NULL, &cctx)) < 0)
    return fail("context", r);
  if ((r = tether_listen(sctx, "127.0.0.1", "0", &l)) < 0)
    return fail("listen", r);
  snprintf(port, sizeof(port), "%d", tether_listener_port(l));
  for (int i = 0; i < N_SESSIONS; i++) {
    if ((r = tether_connect(cctx, "127.0.0.1", port, &cli[i])) < 0)
      return fail("connect", r);
    if ((r = tether_accept(l, &srv[i])) < 0)
      return fail("accept", r);
    if ((r = write_all(cli[i], PAYLOAD, strlen(PAYLOAD))) < 0 ||
        (r = read_n(srv[i], strlen(PAYLOAD))) < 0 ||
        (r = write_all(srv[i], PAYLOAD "!", strlen(PAYLOAD) + 1)) < 0 ||
        (r = read_n(cli[i], strlen(PAYLOAD) + 1)) < 0)
      return fail("exchange", r);
  }
  snprintf(path, sizeof(path), "%s/client.snap", argv[1]);
  if ((r = tether_snapshot_save(cctx, path)) < 0)
    return fail("save client.snap", r);
  snprintf(path, sizeof(path), "%s/server.snap", argv[1]);
  if ((r = tether_snapshot_save(sctx, path)) < 0)
    return fail("save server.snap", r);

  snprintf(path, sizeof(path), "%s/ids", argv[1]);
  if (!(f = fopen(path, "w")))
    return fail(path, -errno);
  for (int i = 0; i < N_SESSIONS; i++) {
    tether_session_id(cli[i], id);
    for (int j = 0; j < 16; j++)
      fprintf(f, "%02x", id[j]);
    fputc('\n', f);
  }
  if (fclose(f) != 0)
    return fail(path, -errno);

  snprintf(path, sizeof(path), "%s/keys", argv[1]);
  if (!(f = fopen(path, "w")))
    return fail(path, -errno);
  const char *snaps[] = {"client.snap", "server.snap"};
  for (int i = 0; i < 2; i++) {
    char snap[4096];
    snprintf(snap, sizeof(snap), "%s/%s", argv[1], snaps[i]);
    if ((r = dump_keys(snap, f)) < 0)
      return fail(snap, r);
  }
  if (fclose(f) != 0)
    return fail(path, -errno);

  snprintf(path, sizeof(path), "%s/payload", argv[1]);
  if (!(f = fopen(path, "w")) || fputs(PAYLOAD, f) < 0 || fclose(f) != 0)
    return fail(path, -errno);

  tether_ctx_free(cctx);
  tether_ctx_free(sctx);
  return 0;
}
