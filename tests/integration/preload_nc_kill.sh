#!/usr/bin/env bash
# nc (netcat-openbsd, poll-based) under tether-run on both ends, streaming
# 8 MiB of random bytes in each direction at once (throttled to 2 MiB/s so
# the transfer lasts ~4 s) while the live TCP connection is killed (ss -K)
# every 0.4 s.  -N: each side shuts down writing at the end of its input and
# exits at the end of the peer's.  Expect: both directions byte-exact, both
# exit 0, at least 5 resumes.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
command -v nc >/dev/null || skip "nc not installed"
nc -h 2>&1 | grep -q -- '-N' || skip "nc is not netcat-openbsd"

SIZE=$((8 * 1024 * 1024))
RATE=$((2 * 1024 * 1024))
KILLS_WANTED=5
export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000

random_file "$TMP/c_in" "$SIZE"
random_file "$TMP/s_in" "$SIZE"
mkfifo "$TMP/c_fifo" "$TMP/s_fifo"
port=$(free_port)

spawn "$TMP/s_in" "$TMP/s_fifo" "$TMP/s_throttle.err" "${THROTTLE[@]}" "$RATE" 65536
TETHER_LOG=info spawn "$TMP/s_fifo" "$TMP/s_out" "$TMP/server.log" "$TETHER_RUN" -- nc -N -l 127.0.0.1 "$port"
server=$BG_PID
wait_listen "$server" "$port"
spawn "$TMP/c_in" "$TMP/c_fifo" "$TMP/c_throttle.err" "${THROTTLE[@]}" "$RATE" 65536
TETHER_LOG=info spawn "$TMP/c_fifo" "$TMP/c_out" "$TMP/client.log" "$TETHER_RUN" -- nc -N 127.0.0.1 "$port"
client=$BG_PID
log "transfer of 2 x $SIZE bytes started (server $server, client $client, port $port)"
wait_size "$TMP/c_out" $((128 * 1024)) 20000 "$client"

killer() {
  local i killed n=0
  for ((i = 0; i < 40; i++)); do
    sleep 0.4
    killed=$(kill_tcp 127.0.0.1 "$port")
    if [ -n "$killed" ]; then
      n=$((n + 1))
      echo "kill $n at $(file_size "$TMP/c_out") / $(file_size "$TMP/s_out"): $killed"
    fi
    [ "$(file_size "$TMP/c_out")" -ge "$SIZE" ] && [ "$(file_size "$TMP/s_out")" -ge "$SIZE" ] && break
  done
  return 0
}
spawn - "$TMP/killer.log" "$TMP/killer.err" killer
killer_pid=$BG_PID

wait_exit "$client" 60000 || fail "client nc still running after 60 s"
crc=$WAIT_RC
wait_exit "$server" 10000 || fail "server nc still running 10 s after the client ended"
src=$WAIT_RC
stop "$killer_pid"
kills=$(grep -c '^kill ' "$TMP/killer.log" || true)
resumes=$(state_lines "$TMP/server.log" "$RE_RESUMED" | wc -l)
log "connections killed: $kills; server resumes: $resumes"
[ "$crc" -eq 0 ] || fail "client nc exited with $crc"
[ "$src" -eq 0 ] || fail "server nc exited with $src"
assert_same_file "$TMP/c_in" "$TMP/s_out" "client -> server"
assert_same_file "$TMP/s_in" "$TMP/c_out" "server -> client"
[ "$resumes" -ge "$KILLS_WANTED" ] || fail "only $resumes resumes (wanted $KILLS_WANTED; $kills kills)"
pass
