/* Side-channel datagrams: "TTD1" | session id | Control protobuf | HMAC.
 * The MAC is checked before the body is parsed; the body is bounded. */
#ifndef TETHER_WIRE_CONTROL_H
#define TETHER_WIRE_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/session.h"
#include "crypto.h"

#define CTL_MAGIC "TTD1"
#define CTL_HDR_LEN (4 + SESSION_ID_LEN)
#define CTL_MAX 1200

/* A path heartbeat's part of a control datagram (tether(7), "Path
 * heartbeats"): per bucket, the XOR of its members' path tags. */
#define CTL_PATH_BUCKETS_MAX 128
struct ctl_path {
  uint32_t buckets; /* 0: none; else a power of two <= CTL_PATH_BUCKETS_MAX */
  uint32_t digest[CTL_PATH_BUCKETS_MAX];
};

/* ctl_seal with a path heartbeat (path may be NULL); ctl_open that also
 * returns one (path->buckets 0: none; path may be NULL). */
ssize_t ctl_seal_path(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                      const struct ctl_path *path, const uint8_t key[KEY_LEN], uint8_t *out,
                      size_t cap);
int ctl_open_path(const uint8_t *dg, size_t len, const uint8_t key[KEY_LEN], struct core_ctl *out,
                  struct ctl_path *path);

/* Returns the datagram length, or -EMSGSIZE / -EIO. */
ssize_t ctl_seal(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                 const uint8_t key[KEY_LEN], uint8_t *out, size_t cap);
/* Checks framing (size, magic) and points *id at the session id; nothing is
 * authenticated yet.  0 or -EPROTO. */
int ctl_peek(const uint8_t *dg, size_t len, const uint8_t **id);
/* Authenticates (-EBADMSG when the MAC fails) and decodes (-EPROTO). */
int ctl_open(const uint8_t *dg, size_t len, const uint8_t key[KEY_LEN], struct core_ctl *out);
/* Decodes an authenticated body (exposed for fuzzing). */
int ctl_decode_body(const uint8_t *body, size_t len, struct core_ctl *out);

#endif
