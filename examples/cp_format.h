/*
 * cp_format — what tether-cp puts on the wire and on disk, as plain
 * encode/decode functions without I/O (unit-tested on their own, including
 * sizes and offsets past 4 GiB, in tests/unit/cp_format_test.c).
 *
 * The sender's stream (sender -> receiver):
 *
 *   header "TTHRCP\r\n" | u32 version (1) | u32 flags (0) | u64 file size
 *   | the file's bytes | SHA-256 of the file's bytes (32)
 *   | end of stream (after the verdict was read, see below)
 *
 * The receiver's stream (receiver -> sender):
 *
 *   verdict "TCPV" | u32 code (enum cp_verdict) | end of stream
 *
 * Integers are big-endian.  Both streams are a pure function of the file
 * (and the verdict), so a side restored from a snapshot at stream position
 * POS can always produce, or expect, the stream again from POS.
 *
 * The state file (tether-cp --state DIR) holds one side's progress and its
 * tether snapshot, written as one unit:
 *
 *   "TCPSTATE" | u32 format version (1) | u32 role | u32 phase
 *   | u32 verdict | u64 pos | u64 size | u64 mtime_ns
 *   | u32 len + FILE + NUL | u32 len + HOST:PORT + NUL
 *   | u64 len + tether snapshot | SHA-256 of everything before it
 *
 * (each len counts the NUL).
 */
#ifndef TETHER_EXAMPLES_CP_FORMAT_H
#define TETHER_EXAMPLES_CP_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define CP_HEADER_LEN 24u
#define CP_DIGEST_LEN 32u
#define CP_VERDICT_LEN 8u
#define CP_VERSION 1u
/* Files up to 2^62 bytes: every stream position fits an off_t and a
 * uint64_t with room to spare. */
#define CP_SIZE_MAX ((uint64_t)1 << 62)

enum cp_verdict {
  CP_VERDICT_OK = 0,       /* SHA-256 matched; FILE is in place */
  CP_VERDICT_MISMATCH = 1, /* SHA-256 did not match; nothing kept */
  CP_VERDICT_FAILED = 2,   /* the receiver failed (I/O error, bad header) */
};

/* ---- the streams ---------------------------------------------------------- */

void cp_header_encode(uint64_t size, uint8_t out[CP_HEADER_LEN]);
/* 0, or -1 with *why set: not a tether-cp stream, another version, a size
 * over CP_SIZE_MAX. */
int cp_header_decode(const uint8_t in[CP_HEADER_LEN], uint64_t *size,
                     const char **why);

void cp_verdict_encode(uint32_t code, uint8_t out[CP_VERDICT_LEN]);
/* 0, or -1 when the bytes are not a verdict. */
int cp_verdict_decode(const uint8_t in[CP_VERDICT_LEN], uint32_t *code);
/* "verified", "SHA-256 mismatch", ... (never NULL). */
const char *cp_verdict_name(uint32_t code);

/* Length of the sender's stream for a file of size bytes (size must be at
 * most CP_SIZE_MAX). */
uint64_t cp_stream_len(uint64_t size);
/* Which bytes of the file the first pos bytes of the sender's stream carry:
 * the offset in the file at which the stream continues (0 inside the
 * header, size inside or after the digest). */
uint64_t cp_file_offset(uint64_t size, uint64_t pos);

/* ---- the state file ------------------------------------------------------- */

enum cp_role { CP_ROLE_SEND = 1, CP_ROLE_RECV = 2 };

enum cp_phase {
  CP_PHASE_STREAM = 1,   /* sending / receiving header, data and digest */
  CP_PHASE_VERIFIED = 2, /* recv: digest read and checked, verdict decided */
  CP_PHASE_ACKED = 3,    /* recv: verdict sent and the sender's end of
                            stream read (the sender has the verdict) */
  CP_PHASE_VERDICT = 4,  /* send: verdict read */
};

#define CP_STATE_PATH_MAX 4096u
#define CP_STATE_PEER_MAX 512u

struct cp_state {
  uint32_t role;     /* enum cp_role */
  uint32_t phase;    /* enum cp_phase */
  uint32_t verdict;  /* enum cp_verdict, once known */
  uint64_t pos;      /* send: bytes of our stream written; recv: bytes of the
                        sender's stream read.  Equal to the snapshot's
                        bytes_sent / bytes_received. */
  uint64_t size;     /* file size (recv: once the header was read) */
  uint64_t mtime_ns; /* send: the input's mtime, to notice a changed file */
  const char *path;  /* FILE (send) or --out FILE (recv), as given */
  const char *peer;  /* --connect / --listen argument, as given */
  const void *blob;  /* tether_snapshot() of the context */
  size_t blob_len;
};

/* Encodes st into a new buffer (*out, free(3)) of *len bytes; 0 or -ENOMEM
 * / -EINVAL (a string over its maximum). */
int cp_state_encode(const struct cp_state *st, uint8_t **out, size_t *len);
/* Decodes buf into st; st's strings and blob point into buf.  0, or -1
 * with *why set: truncated, not a state file, another version, damaged
 * (checksum), inconsistent fields. */
int cp_state_decode(const uint8_t *buf, size_t len, struct cp_state *st,
                    const char **why);

#endif /* TETHER_EXAMPLES_CP_FORMAT_H */
