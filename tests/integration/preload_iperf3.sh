#!/usr/bin/env bash
# iperf3 under tether-run on both ends (a control and a data connection,
# select-based, over the server's dual-stack IPv6 listener), rate-limited to
# 200 Mbit/s for 3 s so as not to load the machine, with every connection
# killed (ss -K) twice.  Expect: both exit 0, the client reports the test
# done, and both of the server's sessions resumed after each kill.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
command -v iperf3 >/dev/null || skip "iperf3 not installed"
export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000

port=$(free_port)
TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_RUN" -- iperf3 -s -p "$port" -1
server=$BG_PID
wait_listen "$server" "$port"
TETHER_LOG=info spawn - "$TMP/client.out" "$TMP/client.log" "$TETHER_RUN" -- \
  iperf3 -c 127.0.0.1 -p "$port" -t 3 -b 200M
client=$BG_PID
kills=0
for t in 1.2 0.8; do
  sleep "$t"
  n=$(kill_tcp 127.0.0.1 "$port" | wc -l)
  kills=$((kills + n))
done
wait_exit "$client" 30000 || fail "iperf3 client still running after 30 s"
crc=$WAIT_RC
wait_exit "$server" 10000 || fail "iperf3 server still running"
src=$WAIT_RC
log "client: $(grep -E 'sender|receiver' "$TMP/client.out" | tr -s ' ' | tr '\n' ';')"
resumes=$(state_lines "$TMP/server.log" "$RE_RESUMED" | wc -l)
log "connections killed: $kills; server resumes: $resumes"
[ "$crc" -eq 0 ] || fail "iperf3 client exited with $crc"
[ "$src" -eq 0 ] || fail "iperf3 server exited with $src"
grep -q "iperf Done" "$TMP/client.out" || fail "the client did not finish its test"
[ "$(state_lines "$TMP/server.log" accepted | wc -l)" -ge 2 ] || fail "fewer than 2 sessions"
[ "$kills" -ge 4 ] || fail "only $kills connections killed"
[ "$resumes" -ge 4 ] || fail "only $resumes resumes"
pass
