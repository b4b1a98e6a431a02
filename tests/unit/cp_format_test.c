/* Unit tests for tether-cp's formats (examples/cp_format.c): the stream
 * header and verdict, the mapping from stream positions to file offsets,
 * and the state file -- with sizes and positions past 4 GiB, where 32-bit
 * arithmetic would wrap, and every truncation and bit flip refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cp_format.h"

#define GiB ((uint64_t)1 << 30)

static void test_header(void **state) {
  static const uint64_t sizes[] = {0, 1, 4 * GiB - 1, 4 * GiB, 4 * GiB + 1,
                                   5 * GiB + 7, CP_SIZE_MAX};
  uint8_t h[CP_HEADER_LEN];
  const char *why = NULL;
  uint64_t got;

  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    cp_header_encode(sizes[i], h);
    assert_int_equal(cp_header_decode(h, &got, &why), 0);
    assert_true(got == sizes[i]);
  }
  cp_header_encode(CP_SIZE_MAX + 1, h);
  assert_int_equal(cp_header_decode(h, &got, &why), -1);
  assert_non_null(why);
  cp_header_encode(1, h);
  h[0] ^= 1; /* magic */
  assert_int_equal(cp_header_decode(h, &got, &why), -1);
  h[0] ^= 1;
  h[11] = 2; /* version */
  assert_int_equal(cp_header_decode(h, &got, &why), -1);
}

static void test_verdict(void **state) {
  uint8_t v[CP_VERDICT_LEN];
  uint32_t code = 99;

  for (uint32_t c = CP_VERDICT_OK; c <= CP_VERDICT_FAILED; c++) {
    cp_verdict_encode(c, v);
    assert_int_equal(cp_verdict_decode(v, &code), 0);
    assert_int_equal(code, c);
    assert_non_null(cp_verdict_name(c));
  }
  cp_verdict_encode(3, v);
  assert_int_equal(cp_verdict_decode(v, &code), -1);
  memcpy(v, "HTTP", 4);
  assert_int_equal(cp_verdict_decode(v, &code), -1);
}

/* A resumed sender seeks its input to cp_file_offset(pos); a resumed
 * receiver truncates FILE.part to it. */
static void test_offsets_past_4gib(void **state) {
  uint64_t size = 5 * GiB + 7;

  assert_true(cp_stream_len(size) == 5 * GiB + 7 + 24 + 32);
  assert_true(cp_file_offset(size, 0) == 0);
  assert_true(cp_file_offset(size, 10) == 0);
  assert_true(cp_file_offset(size, CP_HEADER_LEN) == 0);
  assert_true(cp_file_offset(size, CP_HEADER_LEN + 1) == 1);
  /* around 2^32 in the file and in the stream */
  assert_true(cp_file_offset(size, 4 * GiB) == 4 * GiB - CP_HEADER_LEN);
  assert_true(cp_file_offset(size, 4 * GiB + CP_HEADER_LEN) == 4 * GiB);
  assert_true(cp_file_offset(size, 4 * GiB + CP_HEADER_LEN + 1) ==
              4 * GiB + 1);
  assert_true(cp_file_offset(size, CP_HEADER_LEN + size) == size);
  /* inside and after the digest: the whole file */
  assert_true(cp_file_offset(size, CP_HEADER_LEN + size + 5) == size);
  assert_true(cp_file_offset(size, cp_stream_len(size)) == size);
  assert_true(cp_stream_len(CP_SIZE_MAX) > CP_SIZE_MAX);
}

static struct cp_state sample(void) {
  static const uint8_t blob[] = "a tether snapshot stands here";
  return (struct cp_state){
      .role = CP_ROLE_RECV,
      .phase = CP_PHASE_STREAM,
      .verdict = CP_VERDICT_OK,
      .pos = 4 * GiB + 123456789,
      .size = 6 * GiB + 3,
      .mtime_ns = 1700000000123456789ull,
      .path = "out/big.iso",
      .peer = "[::1]:7000",
      .blob = blob,
      .blob_len = sizeof(blob),
  };
}

static void test_state_roundtrip(void **state) {
  struct cp_state in = sample(), out;
  const char *why = NULL;
  uint8_t *buf;
  size_t len;

  assert_int_equal(cp_state_encode(&in, &buf, &len), 0);
  assert_int_equal(cp_state_decode(buf, len, &out, &why), 0);
  assert_int_equal(out.role, in.role);
  assert_int_equal(out.phase, in.phase);
  assert_int_equal(out.verdict, in.verdict);
  assert_true(out.pos == in.pos);
  assert_true(out.size == in.size);
  assert_true(out.mtime_ns == in.mtime_ns);
  assert_string_equal(out.path, in.path);
  assert_string_equal(out.peer, in.peer);
  assert_int_equal(out.blob_len, in.blob_len);
  assert_memory_equal(out.blob, in.blob, in.blob_len);
  free(buf);

  in.role = CP_ROLE_SEND;
  in.phase = CP_PHASE_VERDICT;
  in.verdict = CP_VERDICT_MISMATCH;
  in.pos = cp_stream_len(in.size);
  assert_int_equal(cp_state_encode(&in, &buf, &len), 0);
  assert_int_equal(cp_state_decode(buf, len, &out, &why), 0);
  assert_true(out.pos == cp_stream_len(6 * GiB + 3));
  assert_int_equal(out.verdict, CP_VERDICT_MISMATCH);
  free(buf);
}

static void test_state_damage_refused(void **state) {
  struct cp_state in = sample(), out;
  const char *why;
  uint8_t *buf;
  size_t len;

  assert_int_equal(cp_state_encode(&in, &buf, &len), 0);
  for (size_t cut = 0; cut < len; cut++) {
    why = NULL;
    assert_int_equal(cp_state_decode(buf, cut, &out, &why), -1);
    assert_non_null(why);
  }
  for (size_t i = 0; i < len; i++) {
    buf[i] ^= 0x10;
    why = NULL;
    assert_int_equal(cp_state_decode(buf, len, &out, &why), -1);
    assert_non_null(why);
    buf[i] ^= 0x10;
  }
  assert_int_equal(cp_state_decode(buf, len, &out, &why), 0);
  free(buf);
}

/* Well-formed files whose fields do not hold together. */
static void test_state_inconsistent_refused(void **state) {
  struct cp_state bad[6], out;
  const char *why;
  uint8_t *buf;
  size_t len;

  for (size_t i = 0; i < 6; i++)
    bad[i] = sample();
  bad[0].phase = CP_PHASE_VERDICT;                 /* a sender's phase */
  bad[1].pos = cp_stream_len(bad[1].size) + 1;     /* past the end */
  bad[2].pos = 10;                                 /* inside the header */
  bad[3].phase = CP_PHASE_VERIFIED;                /* verified, not at end */
  bad[4].role = 3;
  bad[5].size = CP_SIZE_MAX + 1;
  for (size_t i = 0; i < 6; i++) {
    assert_int_equal(cp_state_encode(&bad[i], &buf, &len), 0);
    why = NULL;
    assert_int_equal(cp_state_decode(buf, len, &out, &why), -1);
    assert_string_equal(why, "inconsistent fields");
    free(buf);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_header),
      cmocka_unit_test(test_verdict),
      cmocka_unit_test(test_offsets_past_4gib),
      cmocka_unit_test(test_state_roundtrip),
      cmocka_unit_test(test_state_damage_refused),
      cmocka_unit_test(test_state_inconsistent_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
