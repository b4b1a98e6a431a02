#!/usr/bin/env bash
# Hostile input: while a healthy session streams 8 MiB through the echo server,
# garbage.py throws malformed TCP handshakes and garbage UDP datagrams at the
# server's port (TCP and the UDP side channel share the number).
# Expect: each malformed connection closed (with Reject VERSION /
# UNKNOWN_SESSION where the protocol says so), the server stays up and logs
# rejections, the healthy session loses nothing, and a new session afterwards
# works.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_ECHO

SIZE=$((8 * 1024 * 1024))
RATE=$((1024 * 1024)) # ~8 s

port=$(free_port)
TETHER_LOG=debug spawn - "$TMP/server.out" "$TMP/server.log" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port"
server=$BG_PID
wait_listen "$server" "$port"

random_file "$TMP/in" "$SIZE"
mkfifo "$TMP/in.fifo"
spawn "$TMP/in" "$TMP/in.fifo" "$TMP/throttle.err" "${THROTTLE[@]}" "$RATE" 16384
TETHER_LOG=info spawn "$TMP/in.fifo" "$TMP/out" "$TMP/client.log" \
  "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
client=$BG_PID
wait_size "$TMP/out" $((256 * 1024)) 10000 "$client"
log "healthy session streaming; sending garbage to TCP and UDP port $port"

rc=0
timeout -k 5 90 "$PY" "$IT_DIR/garbage.py" 127.0.0.1 "$port" >"$TMP/garbage.txt" 2>&1 || rc=$?
sed 's/^/  /' "$TMP/garbage.txt"
alive "$server" || fail "the server died under garbage input"
[ "$rc" -eq 0 ] || fail "garbage.py: the server broke a promise (status $rc, see above)"
if alive "$client"; then
  log "the healthy session was still streaming when the garbage ended (good)"
else
  log "warning: the healthy session ended before the garbage did"
fi

wait_exit "$client" 60000 || fail "the healthy client still runs after 60 s ($(file_size "$TMP/out") of $SIZE bytes)"
[ "$WAIT_RC" -eq 0 ] || fail "the healthy client exited with status $WAIT_RC"
assert_same_file "$TMP/in" "$TMP/out" "healthy session's echo"
reconnects=$(stats_get "$TMP/client.log" reconnects)
[ "$reconnects" -eq 0 ] || fail "the healthy session reconnected $reconnects times: garbage disturbed it"

# A fresh session still works.
printf 'still alive\n' >"$TMP/in2"
spawn "$TMP/in2" "$TMP/out2" "$TMP/client2.log" "$TETHER_ECHO" client --connect "127.0.0.1:$port"
wait_exit "$BG_PID" 15000 || fail "a new client still runs after 15 s"
[ "$WAIT_RC" -eq 0 ] || fail "a new client after the garbage exited with status $WAIT_RC"
assert_same_file "$TMP/in2" "$TMP/out2" "new session's echo"

rejections=$(grep -Eic 'reject|malformed|invalid|bad|unknown|unsupported|drop|oversiz|refus' "$TMP/server.log" || true)
log "server log: $rejections lines about rejected input; kinds (count, message):"
grep -Ei 'reject|malformed|invalid|bad|unknown|unsupported|drop|oversiz|refus' "$TMP/server.log" |
  sed -E 's/^tether\[[0-9]+\] //; s/[0-9a-f]{16}/<id>/g; s/[0-9.]+:[0-9]+/<addr>/g' |
  sort | uniq -c | sort -rn | head -n 12 | cut -c1-160 | sed 's/^/  /' || true
[ "$rejections" -ge 5 ] || fail "the server logged only $rejections lines about rejected input (expected >= 5 at TETHER_LOG=debug)"
alive "$server" || fail "the server died"
pass
