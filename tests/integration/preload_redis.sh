#!/usr/bin/env bash
# redis-server, redis-cli and redis-benchmark (epoll-based, non-blocking)
# under tether-run, with the live connections killed (ss -K) during the
# workload.  Expect: redis-cli --pipe loads 20000 keys with "errors: 0";
# redis-benchmark exits 0 without an error line; every key reads back
# exactly; the server's log shows resumed sessions.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
for t in redis-server redis-cli redis-benchmark; do
  command -v "$t" >/dev/null || skip "$t not installed"
done
export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000
KEYS=20000

port=$(free_port)
TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_RUN" -- redis-server \
  --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no
server=$BG_PID
wait_listen "$server" "$port"
[ "$("$TETHER_RUN" -- redis-cli -p "$port" PING)" = PONG ] || fail "no PONG"

# killer SECONDS: one ss -K every 0.25 s (all live connections to the port).
killer() {
  local i killed n=0
  for ((i = 0; i < $1 * 4; i++)); do
    sleep 0.25
    killed=$(kill_tcp 127.0.0.1 "$port")
    [ -n "$killed" ] && n=$((n + $(wc -l <<<"$killed")))
    echo "$n" >"$TMP/kills.$BASHPID"
  done
  return 0
}

# 1. Bulk load over one connection (RESP on stdin), killed mid-stream.
"$PY" - "$KEYS" >"$TMP/load.resp" <<'PYEOF'
import sys, hashlib
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    k = b"key:%d" % i
    v = hashlib.sha256(k).hexdigest().encode() * 4
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PYEOF
mkfifo "$TMP/load.fifo"
spawn "$TMP/load.resp" "$TMP/load.fifo" "$TMP/throttle.err" "${THROTTLE[@]}" $((1024 * 1024)) 16384
TETHER_LOG=info spawn "$TMP/load.fifo" "$TMP/load.out" "$TMP/load.log" "$TETHER_RUN" -- \
  redis-cli -p "$port" --pipe --pipe-timeout 60
loader=$BG_PID
spawn - /dev/null "$TMP/killer1.err" killer 3
k1=$BG_PID
wait_exit "$loader" 60000 || fail "redis-cli --pipe still running after 60 s"
[ "$WAIT_RC" -eq 0 ] || fail "redis-cli --pipe exited with $WAIT_RC: $(tail -n 3 "$TMP/load.out")"
wait_exit "$k1" 10000 || true
log "load: $(tail -n 1 "$TMP/load.out"); connections killed: $(cat "$TMP"/kills.* 2>/dev/null | tail -n 1)"
grep -q "errors: 0, replies: $KEYS" "$TMP/load.out" || fail "load: $(tail -n 2 "$TMP/load.out")"

# 2. redis-benchmark: 10 clients, SET and GET, killed every 0.25 s.
rm -f "$TMP"/kills.*
TETHER_LOG=info spawn - "$TMP/bench.out" "$TMP/bench.log" "$TETHER_RUN" -- \
  redis-benchmark -p "$port" -t set,get -n 200000 -c 10 -q
bench=$BG_PID
spawn - /dev/null "$TMP/killer2.err" killer 3
k2=$BG_PID
wait_exit "$bench" 90000 || fail "redis-benchmark still running after 90 s"
brc=$WAIT_RC
wait_exit "$k2" 10000 || true
bench_kills=$(cat "$TMP"/kills.* 2>/dev/null | tail -n 1)
log "benchmark: $(tr '\r' '\n' <"$TMP/bench.out" | grep -E '^(SET|GET):.*per second' | tr '\n' ' '); connections killed: ${bench_kills:-0}"
[ "$brc" -eq 0 ] || fail "redis-benchmark exited with $brc"
if tr '\r' '\n' <"$TMP/bench.out" | grep -qiE 'error|reset|refused'; then
  fail "redis-benchmark reported errors: $(tr '\r' '\n' <"$TMP/bench.out" | grep -iE 'error|reset|refused' | head -n 3)"
fi
[ "${bench_kills:-0}" -ge 3 ] || fail "only ${bench_kills:-0} connections killed during the benchmark"

# 3. Every key reads back exactly.
"$PY" - "$KEYS" >"$TMP/expect" <<'PYEOF'
import sys, hashlib
for i in range(int(sys.argv[1])):
    print(hashlib.sha256(b"key:%d" % i).hexdigest() * 4)
PYEOF
for ((i = 0; i < KEYS; i++)); do echo "GET key:$i"; done >"$TMP/get.cmds"
"$TETHER_RUN" -- redis-cli -p "$port" <"$TMP/get.cmds" >"$TMP/got" 2>"$TMP/get.err" ||
  fail "redis-cli GET failed"
assert_same_file "$TMP/expect" "$TMP/got" "$KEYS values read back"
resumes=$(state_lines "$TMP/server.log" "$RE_RESUMED" | wc -l)
log "server resumes: $resumes"
[ "$resumes" -ge 3 ] || fail "only $resumes resumes in the server's log"
alive "$server" || fail "redis-server died"
pass
