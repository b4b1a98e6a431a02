#!/usr/bin/env bash
# tether-cp without --state: copies, and the errors it must report.
#
# 1. A random file and an empty one arrive byte-exact; both sides exit 0,
#    no FILE.part is left.
# 2. A byte flipped on the wire (flip_proxy.py, after tether's handshake) is
#    caught by the SHA-256: both sides exit 1 naming the mismatch, and the
#    receiver keeps neither FILE nor FILE.part.
# 3. A peer that is not tether-cp (tether-echo's client sending garbage):
#    the receiver refuses the header, exits 1, keeps nothing.
# 4. Nothing listening: the sender exits 1 at once with the connect error;
#    a missing input file and bad usage are errors too (1 and 2).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_CP TETHER_ECHO

# copy NAME FILE: one recv + send over loopback; sets RECV_RC, SEND_RC.
copy() {
  local name=$1 file=$2 port
  port=$(free_port)
  spawn - /dev/null "$TMP/$name-recv.log" \
    "$TETHER_CP" recv --listen "127.0.0.1:$port" --out "$TMP/$name.out"
  local recv=$BG_PID
  wait_listen "$recv" "$port"
  spawn - /dev/null "$TMP/$name-send.log" \
    "$TETHER_CP" send --connect "127.0.0.1:$port" "$file"
  local send=$BG_PID
  wait_exit "$send" 30000 || fail "$name: the sender still runs after 30 s"
  SEND_RC=$WAIT_RC
  wait_exit "$recv" 10000 || fail "$name: the receiver still runs 10 s after the sender exited"
  RECV_RC=$WAIT_RC
}

# ---- 1. copies ----
random_file "$TMP/data" $((24 * 1024 * 1024 + 17))
copy plain "$TMP/data"
[ "$SEND_RC" -eq 0 ] && [ "$RECV_RC" -eq 0 ] ||
  fail "plain copy: exit codes send=$SEND_RC recv=$RECV_RC, expected 0 0"
assert_same_file "$TMP/data" "$TMP/plain.out" "plain copy"
[ ! -e "$TMP/plain.out.part" ] || fail "plain copy left plain.out.part behind"
grep -q 'verified' "$TMP/plain-send.log" || fail "the sender did not report the verification"

: >"$TMP/empty"
copy empty "$TMP/empty"
[ "$SEND_RC" -eq 0 ] && [ "$RECV_RC" -eq 0 ] ||
  fail "empty file: exit codes send=$SEND_RC recv=$RECV_RC, expected 0 0"
assert_same_file "$TMP/empty" "$TMP/empty.out" "empty file"

# ---- 2. a corrupted byte ----
port=$(free_port)
proxy_port=$(free_port)
spawn - /dev/null "$TMP/flip-recv.log" \
  "$TETHER_CP" recv --listen "127.0.0.1:$port" --out "$TMP/flip.out"
recv=$BG_PID
wait_listen "$recv" "$port"
spawn - /dev/null "$TMP/proxy.log" "$PY" "$IT_DIR/flip_proxy.py" "$proxy_port" "$port" 1000000
proxy=$BG_PID
wait_listen "$proxy" "$proxy_port"
spawn - /dev/null "$TMP/flip-send.log" \
  "$TETHER_CP" send --connect "127.0.0.1:$proxy_port" "$TMP/data"
send=$BG_PID
wait_exit "$send" 30000 || fail "corrupted copy: the sender still runs after 30 s"
send_rc=$WAIT_RC
wait_exit "$recv" 10000 || fail "corrupted copy: the receiver still runs 10 s after the sender"
recv_rc=$WAIT_RC
log "corrupted copy: send exit $send_rc: $(tail -n 1 "$TMP/flip-send.log")"
log "corrupted copy: recv exit $recv_rc: $(tail -n 1 "$TMP/flip-recv.log")"
[ "$send_rc" -eq 1 ] && [ "$recv_rc" -eq 1 ] ||
  fail "corrupted copy: exit codes send=$send_rc recv=$recv_rc, expected 1 1"
grep -q 'SHA-256 mismatch' "$TMP/flip-send.log" || fail "the sender did not report the SHA-256 mismatch"
grep -q 'SHA-256 mismatch' "$TMP/flip-recv.log" || fail "the receiver did not report the SHA-256 mismatch"
[ ! -e "$TMP/flip.out" ] && [ ! -e "$TMP/flip.out.part" ] ||
  fail "corrupted copy: the receiver kept a file"
stop "$proxy"

# ---- 3. not tether-cp on the other end ----
port=$(free_port)
spawn - /dev/null "$TMP/garbage-recv.log" \
  "$TETHER_CP" recv --listen "127.0.0.1:$port" --out "$TMP/garbage.out"
recv=$BG_PID
wait_listen "$recv" "$port"
head -c 4096 /dev/urandom >"$TMP/garbage.in"
spawn "$TMP/garbage.in" "$TMP/garbage.echo" "$TMP/garbage-echo.log" \
  "$TETHER_ECHO" client --connect "127.0.0.1:$port"
echo_client=$BG_PID
wait_exit "$recv" 10000 || fail "the receiver still runs 10 s after a garbage header"
[ "$WAIT_RC" -eq 1 ] || fail "garbage header: the receiver exited $WAIT_RC, expected 1"
grep -q 'not a tether-cp stream' "$TMP/garbage-recv.log" ||
  fail "garbage header: no 'not a tether-cp stream' error"
[ ! -e "$TMP/garbage.out" ] && [ ! -e "$TMP/garbage.out.part" ] ||
  fail "garbage header: the receiver kept a file"
wait_exit "$echo_client" 10000 || fail "the echo client still runs after the receiver refused it"
log "garbage header refused: $(tail -n 1 "$TMP/garbage-recv.log")"

# ---- 4. errors before any transfer ----
port=$(free_port)
t0=$(now_us)
rc=0
"$TETHER_CP" send --connect "127.0.0.1:$port" "$TMP/data" 2>"$TMP/refused.log" || rc=$?
[ "$rc" -eq 1 ] || fail "send to a closed port exited $rc, expected 1"
grep -q 'cannot connect to 127.0.0.1:'"$port"': Connection refused' "$TMP/refused.log" ||
  fail "send to a closed port: unexpected message: $(cat "$TMP/refused.log")"
log "nothing listening: exit 1 after $(us_to_s $(($(now_us) - t0))) s: $(cat "$TMP/refused.log")"

rc=0
"$TETHER_CP" send --connect "127.0.0.1:$port" "$TMP/missing" 2>"$TMP/missing.log" || rc=$?
[ "$rc" -eq 1 ] && grep -q 'No such file' "$TMP/missing.log" ||
  fail "a missing input: exit $rc, $(cat "$TMP/missing.log")"
rc=0
"$TETHER_CP" send "$TMP/data" 2>"$TMP/usage.log" || rc=$?
[ "$rc" -eq 2 ] || fail "send without --connect exited $rc, expected 2"
rc=0
"$TETHER_CP" recv --listen ":$port" 2>>"$TMP/usage.log" || rc=$?
[ "$rc" -eq 2 ] || fail "recv without --out exited $rc, expected 2"
rc=0
"$TETHER_CP" send --connect "127.0.0.1:$port" --snapshot-every 1M "$TMP/data" 2>>"$TMP/usage.log" || rc=$?
[ "$rc" -eq 2 ] || fail "--snapshot-every without --state exited $rc, expected 2"
pass
