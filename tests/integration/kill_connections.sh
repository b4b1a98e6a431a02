#!/usr/bin/env bash
# 32 MiB through tether-echo on loopback while the live TCP connection is
# killed (ss -K: the peer gets a reset) 14 times, spread over the stream by
# its progress (not by the clock), at least 10 of them mid-stream.
# Expect: byte-exact echo, client exit 0, --stats reconnects >= 10 and
# bytes_resent reported.
#
# The client's stdout goes through a slow sink (throttle.py, 4 MiB/s), so the
# transfer lasts ~8 s and backpressure keeps buffers on the path full: each
# kill destroys queued bytes (ss shows them) that must be resent -- mostly by
# the server, whose resends the client's --stats do not count.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_ECHO

SIZE=$((32 * 1024 * 1024))
RATE=$((4 * 1024 * 1024))
KILLS_WANTED=10
KILLS_MAX=14
export TETHER_RECONNECT_MAX_MS=200

random_file "$TMP/in" "$SIZE"
port=$(free_port)

TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port"
server=$BG_PID
wait_listen "$server" "$port"

mkfifo "$TMP/echo.fifo"
spawn "$TMP/echo.fifo" "$TMP/out" "$TMP/throttle.err" "${THROTTLE[@]}" "$RATE" 65536
throttle=$BG_PID
TETHER_LOG=info spawn "$TMP/in" "$TMP/echo.fifo" "$TMP/client.log" \
  "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
client=$BG_PID
log "transfer of $SIZE bytes started (server $server, client $client, port $port)"

wait_size "$TMP/out" $((256 * 1024)) 20000 "$client"

spawn - "$TMP/killer.log" "$TMP/killer.err" kill_at_progress "$TMP/out" "$SIZE" "$port" "$KILLS_MAX"
killer_pid=$BG_PID

wait_exit "$client" 90000 || fail "client still running after 90 s ($(file_size "$TMP/out") of $SIZE bytes echoed)"
rc=$WAIT_RC
stop "$killer_pid"
# The sink writes what the client left in the fifo at its own pace.
wait_exit "$throttle" 10000 || fail "the output sink still runs 10 s after the client exited"

kills=$(grep -c '^kill ' "$TMP/killer.log" || true)
# "kill N at ECHOED of SIZE: ESTAB RECV-Q SEND-Q ...": mid-stream = the echo
# was incomplete and the killed socket had bytes queued (lost in the reset).
midstream=$(awk -v size="$SIZE" '/^kill / && $4 < size && $8 + $9 > 0 { n++ } END { print n + 0 }' "$TMP/killer.log")
log "connections killed: $kills, of which mid-stream with bytes queued: $midstream"

[ "$rc" -eq 0 ] || fail "client exited with status $rc"
assert_same_file "$TMP/in" "$TMP/out" "echoed stream"
[ "$midstream" -ge "$KILLS_WANTED" ] ||
  fail "only $midstream connections were killed mid-stream (wanted $KILLS_WANTED): the transfer was too short to test anything"

reconnects=$(stats_get "$TMP/client.log" reconnects)
resent=$(stats_get "$TMP/client.log" bytes_resent)
sent=$(stats_get "$TMP/client.log" bytes_sent)
received=$(stats_get "$TMP/client.log" bytes_received)
log "client --stats: reconnects=$reconnects bytes_resent=$resent bytes_sent=$sent bytes_received=$received"
[ "$reconnects" -ge "$KILLS_WANTED" ] || fail "--stats reconnects=$reconnects, expected >= $KILLS_WANTED (killed $kills)"
[ "$sent" -eq "$SIZE" ] || fail "--stats bytes_sent=$sent, expected $SIZE"
[ "$received" -eq "$SIZE" ] || fail "--stats bytes_received=$received, expected $SIZE"
alive "$server" || fail "the server died"
pass
