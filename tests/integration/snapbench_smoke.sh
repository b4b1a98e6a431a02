#!/usr/bin/env bash
# Smoke test of tether-snapbench (label bench): one small run (3 sessions,
# 2 runs).  Checks that it exits 0 and prints one JSON line with every
# figure, and that the sizes are plausible.  Not a performance assertion.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_SNAPBENCH

rc=0
timeout -k 5 30 "$TETHER_SNAPBENCH" --sessions 3 --runs 2 >"$TMP/snapbench.json" \
  2>"$TMP/snapbench.err" || rc=$?
[ "$rc" -eq 0 ] || fail "tether-snapbench exited with status $rc"
"$PY" - "$TMP/snapbench.json" <<'PYEOF' || fail "bad JSON from tether-snapbench: $(head -c 600 "$TMP/snapbench.json")"
import json, numbers, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
if len(lines) != 1:
    sys.exit("expected one line, got %d" % len(lines))
o = json.loads(lines[0])
assert o["test"] == "snapshot" and o["sessions"] == 3 and o["runs"] == 2, o
for side in ("client", "server"):
    one, n = o["bytes_1_session_" + side], o["bytes_n_sessions_" + side]
    per = o["bytes_per_session_" + side]
    # A container (56 bytes) plus one session: keys alone are 128 bytes.
    assert 56 + 128 < one < n, (side, one, n)
    assert abs(one + 2 * per - n) < 1e-6, (side, one, per, n)
    for k in ("snapshot_ms_", "restore_ms_"):
        runs, med = o[k + side], o[k + side + "_median"]
        assert len(runs) == 2 and all(isinstance(v, numbers.Real) and v > 0 for v in runs), runs
        assert isinstance(med, numbers.Real) and med > 0, med
PYEOF
log "$(cut -c1-300 "$TMP/snapbench.json")"
pass
