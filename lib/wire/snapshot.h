/* The snapshot container: a protobuf-c tether.snap.Snapshot inside a frame
 * that says what it is and proves it is whole.
 *
 *   magic "TTHRSNAP" | u32 format version | u32 capture | u64 payload length
 *   | payload | SHA-256 of everything before it
 *
 * `capture` numbers the context's snapshots, so that a commit can name the
 * one that became durable without decoding it.  All integers big-endian.  snap_open trusts nothing: it checks the frame,
 * then every field the restore will use. */
#ifndef TETHER_WIRE_SNAPSHOT_H
#define TETHER_WIRE_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "core/session.h"
#include "snapshot.pb-c.h"

#define SNAP_MAGIC "TTHRSNAP"
#define SNAP_FORMAT_VERSION 1
#define SNAP_HEADER_LEN 24
#define SNAP_TRAILER_LEN 32
/* The largest payload accepted (about 16 sessions at the largest retention). */
#define SNAP_PAYLOAD_MAX ((uint64_t)1 << 30)
/* Restores a session may go through: its control sequence numbers start at
 * epoch << SNAP_EPOCH_SHIFT, so no number is ever used twice. */
#define SNAP_EPOCH_SHIFT CORE_EPOCH_SHIFT
#define SNAP_EPOCH_MAX CORE_EPOCH_MAX

typedef Tether__Snap__Snapshot snap_msg;

/* Encodes and frames m into a malloc'd buffer.  0, -ENOMEM or -EMSGSIZE. */
int snap_seal(const snap_msg *m, uint32_t capture, uint8_t **out, size_t *out_len)
    __attribute__((warn_unused_result));
/* Checks and decodes a container.  NULL on any defect, with *err set to
 * TETHER_EVERSION (another format version) or TETHER_EPROTO (not a
 * snapshot, truncated, corrupt or inconsistent) and *why to a sentence. */
snap_msg *snap_open(const uint8_t *buf, size_t len, int *err, const char **why);
void snap_free(snap_msg *m);
/* The capture number in a container's header (nothing else is checked):
 * 0, or TETHER_EPROTO when it is not a snapshot header. */
int snap_capture_id(const uint8_t *buf, size_t len, uint32_t *capture);

#endif
