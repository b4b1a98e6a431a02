#!/usr/bin/env bash
# Smoke test of examples/cp-bench.sh (label bench): one round of each mode
# (plain, tether, state) on a small file.  Checks that it exits 0 and prints
# a positive median for every mode and the three ratios.  Not a performance
# assertion.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_CP

script=$IT_DIR/../../examples/cp-bench.sh
[ -f "$script" ] || fail "no $script"
rc=0
timeout -k 5 120 bash "$script" --cp "$TETHER_CP" --rounds 1 --size 4M --dir "$TMP/bench" \
  >"$TMP/bench.out" 2>"$TMP/bench.err" || rc=$?
[ "$rc" -eq 0 ] || fail "cp-bench.sh exited with status $rc"
for mode in plain tether state; do
  awk -v m="$mode" '$1 == m && $2 + 0 > 0 { ok = 1 } END { exit !ok }' "$TMP/bench.out" ||
    fail "no positive median for $mode in: $(cat "$TMP/bench.out")"
done
for r in tether/plain state/plain state/tether; do
  awk -v r="$r" '$1 == r && $2 + 0 > 0 { ok = 1 } END { exit !ok }' "$TMP/bench.out" ||
    fail "no ratio $r in: $(cat "$TMP/bench.out")"
done
# It cleans up after itself: only the input is left in a --dir it was given.
[ "$(ls "$TMP/bench")" = in ] || fail "cp-bench.sh left behind: $(ls "$TMP/bench" | tr '\n' ' ')"
log "$(tr '\n' ';' <"$TMP/bench.out")"
pass
