/* libFuzzer target for the side-channel datagram decoders (lib/wire/control.c).
 *
 * Every input goes through:
 *   1. ctl_peek(): framing accepted exactly when size and magic are right.
 *   2. ctl_open() with a fixed key: seeds are sealed with it, so unmutated
 *      seeds reach the body decoder; mutated ones must fail the MAC.
 *   3. ctl_decode_body() on the input as a bare Control body; a body that
 *      decodes must survive ctl_seal() + ctl_open() unchanged.
 *   4. Structured mode, when the input is a field dump (fuzz_common.h):
 *      ctl_seal() those fields, ctl_open() must return exactly them; any one
 *      flipped bit, or another key, must be rejected.
 *
 * Seeds come from make_corpus (sealed datagrams, bodies, field dumps). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "wire/control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t other_key[KEY_LEN];

/* Seals ctl, opens it again, and checks everything that must hold of the
 * pair.  flip selects one bit of the datagram to corrupt afterwards. */
static void seal_open(const uint8_t id[SESSION_ID_LEN], const struct core_ctl *ctl,
                      uint32_t flip) {
  uint8_t dg[CTL_MAX];
  ssize_t n = ctl_seal(id, ctl, fuzz_ctl_key, dg, sizeof(dg));
  /* Nine fields cannot come near CTL_MAX. */
  FUZZ_CHECK(n >= CTL_HDR_LEN + MAC_LEN && n <= CTL_MAX);
  FUZZ_CHECK(ctl_seal(id, ctl, fuzz_ctl_key, dg, (size_t)n - 1) == -EMSGSIZE);
  FUZZ_CHECK(ctl_seal(id, ctl, fuzz_ctl_key, dg, sizeof(dg)) == n); /* untouched by the refusal */

  const uint8_t *pid;
  FUZZ_CHECK(ctl_peek(dg, (size_t)n, &pid) == 0);
  FUZZ_CHECK(memcmp(pid, id, SESSION_ID_LEN) == 0);

  struct core_ctl back;
  int rc = ctl_open(dg, (size_t)n, fuzz_ctl_key, &back);
  if (ctl->seq == 0) {
    FUZZ_CHECK(rc == -EPROTO); /* seq 0 is never valid */
  } else {
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(fuzz_ctl_equal(&back, ctl));
  }

  /* Anyone without the key is refused. */
  FUZZ_CHECK(ctl_open(dg, (size_t)n, other_key, &back) == -EBADMSG);
  /* So is every corruption: one bit anywhere. */
  size_t bit = flip % ((size_t)n * 8);
  dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  rc = ctl_open(dg, (size_t)n, fuzz_ctl_key, &back);
  FUZZ_CHECK(rc == (bit < 32 ? -EPROTO : -EBADMSG));
  /* And truncation. */
  dg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  rc = ctl_open(dg, (size_t)n - 1 - flip % 8, fuzz_ctl_key, &back);
  FUZZ_CHECK(rc == -EBADMSG || rc == -EPROTO);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (other_key[0] == 0) {
    memcpy(other_key, fuzz_ctl_key, KEY_LEN);
    other_key[0] ^= 0x80;
  }
  uint32_t flip = 0;
  for (size_t i = 0; i < size && i < 4; i++)
    flip = flip << 8 | data[size - 1 - i];

  /* 1. framing */
  const uint8_t *id = NULL;
  bool framed = size >= CTL_HDR_LEN + MAC_LEN && size <= CTL_MAX &&
                memcmp(data, CTL_MAGIC, 4) == 0;
  int rc = ctl_peek(data, size, &id);
  FUZZ_CHECK(rc == 0 || rc == -EPROTO);
  FUZZ_CHECK((rc == 0) == framed);
  if (rc == 0)
    FUZZ_CHECK(id == data + 4);

  /* 2. authenticated decode */
  struct core_ctl c, c2;
  rc = ctl_open(data, size, fuzz_ctl_key, &c);
  FUZZ_CHECK(rc == 0 || rc == -EPROTO || rc == -EBADMSG);
  if (!framed)
    FUZZ_CHECK(rc == -EPROTO);
  if (rc == 0) {
    FUZZ_CHECK(c.seq != 0);
    FUZZ_CHECK(ctl_decode_body(data + CTL_HDR_LEN, size - CTL_HDR_LEN - MAC_LEN, &c2) == 0);
    FUZZ_CHECK(fuzz_ctl_equal(&c, &c2));
    seal_open(data + 4, &c, flip);
  }
  /* ... with its path heartbeat: the same verdict; a path read is one a
   * sender could have sealed, and sealing it again gives it back. */
  static struct ctl_path path, path2;
  int prc = ctl_open_path(data, size, fuzz_ctl_key, &c2, &path);
  FUZZ_CHECK(prc == rc);
  if (prc == 0 && path.buckets) {
    FUZZ_CHECK(path.buckets <= CTL_PATH_BUCKETS_MAX && !(path.buckets & (path.buckets - 1)));
    uint8_t dg[CTL_MAX];
    ssize_t n = ctl_seal_path(data + 4, &c2, &path, fuzz_ctl_key, dg, sizeof(dg));
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(ctl_open_path(dg, (size_t)n, fuzz_ctl_key, &c, &path2) == 0);
    FUZZ_CHECK(path2.buckets == path.buckets &&
               memcmp(path2.digest, path.digest, path.buckets * sizeof(path.digest[0])) == 0);
  }

  /* 3. bare body */
  rc = ctl_decode_body(data, size, &c);
  FUZZ_CHECK(rc == 0 || rc == -EPROTO);
  if (rc == 0) {
    static const uint8_t zero_id[SESSION_ID_LEN];
    FUZZ_CHECK(c.seq != 0);
    seal_open(zero_id, &c, flip);
  }

  /* 4. structured */
  uint8_t did[SESSION_ID_LEN];
  if (fuzz_dump_parse(data, size, did, &c))
    seal_open(did, &c, flip);
  return 0;
}
