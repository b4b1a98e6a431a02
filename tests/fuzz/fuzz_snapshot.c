/* libFuzzer target for the snapshot decoder (lib/wire/snapshot.c).
 *
 * Every input goes through snap_open() twice:
 *   1. as it is: a whole container (most mutations fail the checksum);
 *   2. as the payload of a container framed and checksummed here, so that
 *      mutations reach protobuf-c and the field checks.
 * An accepted snapshot must survive snap_seal() + snap_open() unchanged
 * (compared as encoded bytes).  Seeds are payloads from make_corpus. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "wire/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *buf, size_t len) {
  int err;
  const char *why = NULL;
  snap_msg *m = snap_open(buf, len, &err, &why);
  if (!m) {
    FUZZ_CHECK(err != 0 && why != NULL);
    return;
  }
  uint8_t *again;
  size_t again_len;
  FUZZ_CHECK(snap_seal(m, 0, &again, &again_len) == 0);
  snap_msg *m2 = snap_open(again, again_len, &err, &why);
  FUZZ_CHECK(m2 != NULL);
  size_t n1 = tether__snap__snapshot__get_packed_size(m);
  size_t n2 = tether__snap__snapshot__get_packed_size(m2);
  FUZZ_CHECK(n1 == n2);
  uint8_t *p1 = malloc(n1 ? n1 : 1), *p2 = malloc(n2 ? n2 : 1);
  FUZZ_CHECK(p1 && p2);
  tether__snap__snapshot__pack(m, p1);
  tether__snap__snapshot__pack(m2, p2);
  FUZZ_CHECK(memcmp(p1, p2, n1) == 0);
  free(p1);
  free(p2);
  free(again);
  snap_free(m2);
  snap_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check(data, size);
  uint8_t *framed = malloc(SNAP_HEADER_LEN + size + SNAP_TRAILER_LEN);
  FUZZ_CHECK(framed != NULL);
  memcpy(framed, SNAP_MAGIC, 8);
  memset(framed + 8, 0, 16);
  framed[11] = SNAP_FORMAT_VERSION;
  for (int i = 0; i < 8; i++)
    framed[16 + i] = (uint8_t)((uint64_t)size >> (56 - 8 * i));
  if (size)
    memcpy(framed + SNAP_HEADER_LEN, data, size);
  struct buf_part part = {framed, SNAP_HEADER_LEN + size};
  FUZZ_CHECK(sha256_parts(&part, 1, framed + SNAP_HEADER_LEN + size) == 0);
  check(framed, SNAP_HEADER_LEN + size + SNAP_TRAILER_LEN);
  free(framed);
  return 0;
}
