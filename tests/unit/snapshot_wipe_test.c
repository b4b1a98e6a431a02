/* snap_free() overwrites the session keys a snapshot decoded into before
 * it frees them (lib/wire/snapshot.c).  free() is interposed: this program
 * defines it, so protobuf-c's frees come here too, and it looks at each
 * key's block as it is freed.  Not built with sanitizers (they own free). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire/crypto.h"
#include "wire/snapshot.h"

extern void __libc_free(void *p);

static const void *watched[4];
static int freed_clean, freed_dirty;

void free(void *p) {
  for (int i = 0; p && i < 4; i++)
    if (p == watched[i]) {
      const uint8_t *b = p;
      bool zero = true;
      for (size_t k = 0; k < KEY_LEN; k++)
        zero &= b[k] == 0;
      zero ? freed_clean++ : freed_dirty++;
      watched[i] = NULL;
    }
  __libc_free(p);
}

static void test_keys_wiped(void **state) {
  (void)state;
  uint8_t keys[4][KEY_LEN], id[SESSION_ID_LEN] = {1};
  memset(keys, 0xa5, sizeof(keys));
  Tether__Snap__Session s = TETHER__SNAP__SESSION__INIT, *sp = &s;
  s.id = (ProtobufCBinaryData){SESSION_ID_LEN, id};
  s.k_ctl_c2s = (ProtobufCBinaryData){KEY_LEN, keys[0]};
  s.k_ctl_s2c = (ProtobufCBinaryData){KEY_LEN, keys[1]};
  s.k_resume_c = (ProtobufCBinaryData){KEY_LEN, keys[2]};
  s.k_resume_s = (ProtobufCBinaryData){KEY_LEN, keys[3]};
  s.listener = -1;
  s.heartbeat_ms = s.suspend_ms = s.reconnect_max_ms = 1000;
  snap_msg m = TETHER__SNAP__SNAPSHOT__INIT;
  m.n_sessions = 1;
  m.sessions = &sp;
  uint8_t *blob;
  size_t len;
  int err;
  const char *why = NULL;
  assert_int_equal(snap_seal(&m, 1, &blob, &len), 0);
  snap_msg *d = snap_open(blob, len, &err, &why);
  assert_non_null(d);
  assert_int_equal(d->n_sessions, 1);
  const Tether__Snap__Session *ds = d->sessions[0];
  assert_memory_equal(ds->k_resume_s.data, keys[3], KEY_LEN);
  watched[0] = ds->k_ctl_c2s.data;
  watched[1] = ds->k_ctl_s2c.data;
  watched[2] = ds->k_resume_c.data;
  watched[3] = ds->k_resume_s.data;
  snap_free(d);
  free(blob);
  assert_int_equal(freed_dirty, 0);
  assert_int_equal(freed_clean, 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_keys_wiped)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
