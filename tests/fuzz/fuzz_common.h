/* Shared by the fuzz targets and make_corpus: the fixed control key, the
 * "field dump" layout of a core_ctl, and a check that survives NDEBUG. */
#ifndef TETHER_FUZZ_COMMON_H
#define TETHER_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"
#include "wire/crypto.h"

/* A property of the decoder did not hold: print it and crash, so libFuzzer
 * saves the input.  Not assert(): the fuzz build is RelWithDebInfo (NDEBUG). */
#define FUZZ_CHECK(cond)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                  \
    }                                                                           \
  } while (0)

/* The key every control seed is sealed with; fuzz_control opens with it. */
static const uint8_t fuzz_ctl_key[KEY_LEN] = {
    0x74, 0x65, 0x74, 0x68, 0x65, 0x72, 0x2d, 0x66, 0x75, 0x7a, 0x7a, 0x2d,
    0x6b, 0x65, 0x79, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10};

/* Structured control mode: the input read as
 *   "CTLD" | id[16] | seq[8] | delivered[8] | sent[8] | rcvbuf_max[8] | flags[1]
 * (integers big-endian; flags bit 0 write_closed, 1 read_closed,
 * 2 ack_write_closed, 3 ack_read_closed, 4 want_reply; other bits ignored).
 * The magic keeps this mode from stealing inputs meant for the raw modes. */
#define FUZZ_DUMP_MAGIC "CTLD"
#define FUZZ_DUMP_LEN (4 + SESSION_ID_LEN + 4 * 8 + 1)

static inline uint64_t fuzz_get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static inline void fuzz_put64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

/* 1 and fills id/ctl if d is a field dump, else 0. */
static inline int fuzz_dump_parse(const uint8_t *d, size_t n, uint8_t id[SESSION_ID_LEN],
                                  struct core_ctl *ctl) {
  if (n < FUZZ_DUMP_LEN || memcmp(d, FUZZ_DUMP_MAGIC, 4) != 0)
    return 0;
  d += 4;
  memcpy(id, d, SESSION_ID_LEN);
  d += SESSION_ID_LEN;
  memset(ctl, 0, sizeof(*ctl));
  ctl->seq = fuzz_get64(d);
  ctl->delivered = fuzz_get64(d + 8);
  ctl->sent = fuzz_get64(d + 16);
  ctl->rcvbuf_max = fuzz_get64(d + 24);
  uint8_t f = d[32];
  ctl->write_closed = f & 1;
  ctl->read_closed = f >> 1 & 1;
  ctl->ack_write_closed = f >> 2 & 1;
  ctl->ack_read_closed = f >> 3 & 1;
  ctl->want_reply = f >> 4 & 1;
  return 1;
}

static inline void fuzz_dump_write(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                                   uint8_t out[FUZZ_DUMP_LEN]) {
  memcpy(out, FUZZ_DUMP_MAGIC, 4);
  memcpy(out + 4, id, SESSION_ID_LEN);
  uint8_t *d = out + 4 + SESSION_ID_LEN;
  fuzz_put64(d, ctl->seq);
  fuzz_put64(d + 8, ctl->delivered);
  fuzz_put64(d + 16, ctl->sent);
  fuzz_put64(d + 24, ctl->rcvbuf_max);
  d[32] = (uint8_t)(ctl->write_closed | ctl->read_closed << 1 | ctl->ack_write_closed << 2 |
                    ctl->ack_read_closed << 3 | ctl->want_reply << 4);
}

static inline int fuzz_ctl_equal(const struct core_ctl *a, const struct core_ctl *b) {
  return a->seq == b->seq && a->delivered == b->delivered && a->sent == b->sent &&
         a->rcvbuf_max == b->rcvbuf_max && a->write_closed == b->write_closed &&
         a->read_closed == b->read_closed && a->ack_write_closed == b->ack_write_closed &&
         a->ack_read_closed == b->ack_read_closed && a->want_reply == b->want_reply;
}

#endif
