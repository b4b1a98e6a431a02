#!/usr/bin/env bash
# Smoke test of tether-bench (label bench): every test once, small sizes, in
# both modes (tether and --raw), plus one --listen/--connect pair.  Checks that
# each run exits 0 and prints one JSON line with the expected fields.  Not a
# performance assertion.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_BENCH

# check_json FILE TEST MODE: one JSON object line with test/mode and numeric
# summary fields.
check_json() {
  "$PY" - "$@" <<'EOF' || fail "bad JSON from tether-bench $2 ($3): $(head -c 600 "$1")"
import json, numbers, sys
path, test, mode = sys.argv[1:4]
lines = [l for l in open(path).read().splitlines() if l.strip()]
if len(lines) != 1:
    sys.exit("expected one line, got %d" % len(lines))
o = json.loads(lines[0])
want = {"throughput": ["seconds_median", "gbit_s_median"],
        "latency": ["rtt_us_median", "rtt_us_p90", "rtt_us_p99", "rtt_us_min"],
        "setup": ["setup_us_median", "setup_us_p90", "setup_us_p99", "setup_us_min"],
        "idle": ["setups_per_s_median"],
        "c10k": ["setups_per_s_median", "requests_per_s_median", "rtt_us_p50_median",
                 "rtt_us_p99_median"]}[test]
# The idle test's costs may well be 0 (plain TCP), but they are there.
for k in {"idle": ["idle_cpu_pct_median", "server_idle_cpu_pct_median",
                   "rss_bytes_per_session_median",
                   "server_rss_bytes_per_session_median"]}.get(test, []):
    if not isinstance(o.get(k), numbers.Real):
        sys.exit("%s is %r, expected a number" % (k, o.get(k)))
if o.get("test") != test or o.get("mode") != mode:
    sys.exit("test/mode are %r/%r" % (o.get("test"), o.get("mode")))
if not isinstance(o.get("runs"), list) or not o["runs"]:
    sys.exit("no runs")
for k in want:
    v = o.get(k)
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or v <= 0:
        sys.exit("%s is %r, expected a positive number" % (k, v))
EOF
}

# run_bench NAME TEST MODE ARGS...
run_bench() {
  local name=$1 test=$2 mode=$3 rc=0
  shift 3
  timeout -k 5 60 "$TETHER_BENCH" "$test" "$@" >"$TMP/$name.json" 2>"$TMP/$name.err" || rc=$?
  [ "$rc" -eq 0 ] || fail "tether-bench $test $* exited with status $rc"
  check_json "$TMP/$name.json" "$test" "$mode"
  log "$test ($mode): $(cut -c1-200 "$TMP/$name.json")"
}

for mode in tether raw; do
  raw=()
  [ "$mode" = raw ] && raw=(--raw)
  run_bench "throughput-$mode" throughput "$mode" "${raw[@]}" --bytes 16M
  run_bench "writes-1k-$mode" throughput "$mode" "${raw[@]}" --bytes 4M --write-size 1K
  grep -q '"write_size":1024' "$TMP/writes-1k-$mode.json" || fail "--write-size 1K not reported"
  run_bench "latency-$mode" latency "$mode" "${raw[@]}" --count 200
  run_bench "setup-$mode" setup "$mode" "${raw[@]}" --count 20
  run_bench "idle-$mode" idle "$mode" "${raw[@]}" --count 20 --seconds 1
  grep -q '"sessions":20,"seconds":1' "$TMP/idle-$mode.json" || fail "idle: sessions/seconds not reported"
  run_bench "c10k-$mode" c10k "$mode" "${raw[@]}" --count 50 --seconds 1
  grep -q '"sessions":50,"seconds":1' "$TMP/c10k-$mode.json" || fail "c10k: sessions/seconds not reported"
done

# Bad --write-size values are usage errors (status 2).
for bad in 0 129K x; do
  rc=0
  "$TETHER_BENCH" throughput --write-size "$bad" >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "--write-size $bad: status $rc, expected 2"
done
# --seconds belongs to idle and c10k, within 1..3600.
for args in "throughput --seconds 1" "idle --seconds 0" "idle --seconds 3601" "c10k --seconds 0"; do
  rc=0
  # shellcheck disable=SC2086
  "$TETHER_BENCH" $args >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "tether-bench $args: status $rc, expected 2"
done

# The split form: a server process and a client process.
port=$(free_port)
spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_BENCH" latency --listen "127.0.0.1:$port"
wait_listen "$BG_PID" "$port"
run_bench latency-split latency tether --count 200 --connect "127.0.0.1:$port"
pass
