#!/usr/bin/env bash
# tether-cp --state refuses a state file it cannot trust, clearly and at
# once, and leaves it alone.
#
# Real state files come from a transfer whose two sides are killed (-9)
# mid-stream.  Then each side is started with a damaged copy: one flipped
# byte, cut in half, empty, random bytes, a well-formed file whose session
# snapshot inside is damaged (outer checksum recomputed, so tether_restore
# itself must refuse it), and a state of another transfer (other --out);
# the sender also with its input modified since.  Each run must exit 1
# within a few seconds with a message naming the state file, and leave the
# file as it was.  Finally the genuine files resume the transfer to a
# byte-exact end.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/cp_lib.sh
source "$(dirname "$0")/cp_lib.sh"
require_tools TETHER_CP

cp_setup $((16 * 1024 * 1024)) --snapshot-every 1M -- --snapshot-every 1M --limit-rate 2M
start_recv
start_send
wait_size "$CP_OUT.part" $((3 * 1024 * 1024)) 30000 "$RECV"
kill9_both "$RECV" "$SEND"
RSTATE=$CP_RSTATE/recv.state
SSTATE=$CP_SSTATE/send.state
[ -s "$RSTATE" ] && [ -s "$SSTATE" ] || fail "no state files after the kills"
cp "$RSTATE" "$TMP/recv.state.good"
cp "$SSTATE" "$TMP/send.state.good"
cp -p "$CP_IN" "$TMP/data.good"
log "state files: recv $(file_size "$RSTATE") bytes, send $(file_size "$SSTATE") bytes"

# damage KIND GOOD OUT
damage() {
  local size
  size=$(file_size "$2")
  case $1 in
  flip)
    cp "$2" "$3"
    printf '\x5a' | dd of="$3" bs=1 seek=$((size / 2)) conv=notrunc status=none
    if cmp -s "$2" "$3"; then
      printf '\xa5' | dd of="$3" bs=1 seek=$((size / 2)) conv=notrunc status=none
    fi
    ;;
  half) head -c $((size / 2)) "$2" >"$3" ;;
  empty) : >"$3" ;;
  random) head -c 2048 /dev/urandom >"$3" ;;
  blob)
    # A byte of the tether snapshot flipped, the file's own SHA-256 redone.
    "$PY" - "$2" "$3" <<'EOF'
import hashlib, struct, sys
b = bytearray(open(sys.argv[1], "rb").read()[:-32])
p = 48                                   # magic, version, role... mtime
for _ in range(2):                       # FILE, HOST:PORT
    (n,) = struct.unpack(">I", b[p:p + 4])
    p += 4 + n
(n,) = struct.unpack(">Q", b[p:p + 8])
b[p + 8 + n // 2] ^= 0x40
open(sys.argv[2], "wb").write(bytes(b) + hashlib.sha256(b).digest())
EOF
    ;;
  esac
}

# refused SIDE WHAT REGEX [BINARY ARGS...]: runs the side with its current
# state file; it must exit 1 within 10 s printing REGEX, the file unchanged.
refused() {
  local side=$1 what=$2 re=$3 state before rc=0
  shift 3
  state=$([ "$side" = recv ] && echo "$RSTATE" || echo "$SSTATE")
  before=$(sha "$state" 2>/dev/null || echo none)
  if [ "$side" = recv ]; then recv_args; set -- "${RECV_ARGS[@]}" "$@"; else send_args; set -- "${SEND_ARGS[@]}" "$@"; fi
  spawn - /dev/null "$TMP/refused.$side.$what.log" "$TETHER_CP" "$@"
  wait_exit "$BG_PID" 10000 || fail "$side, $what state: still running after 10 s (expected a refusal)"
  rc=$WAIT_RC
  [ "$rc" -eq 1 ] || fail "$side, $what state: exit $rc, expected 1"
  grep -Eq -- "$re" "$TMP/refused.$side.$what.log" ||
    fail "$side, $what state: message does not match '$re': $(cat "$TMP/refused.$side.$what.log")"
  [ "$(sha "$state" 2>/dev/null || echo none)" = "$before" ] ||
    fail "$side, $what state: the state file was changed or removed"
  log "$side, $what state refused: $(grep -v listening "$TMP/refused.$side.$what.log" | head -n 1 | sed "s|$TMP/||g")"
}

for kind in flip half empty random blob; do
  damage "$kind" "$TMP/recv.state.good" "$RSTATE"
  refused recv "$kind" 'recv\.state'
  damage "$kind" "$TMP/send.state.good" "$SSTATE"
  refused send "$kind" 'send\.state'
done
cp "$TMP/recv.state.good" "$RSTATE"
cp "$TMP/send.state.good" "$SSTATE"

# A state that belongs to another transfer.
refused recv other-out 'belongs to another transfer' --out "$TMP/elsewhere"
[ ! -e "$TMP/elsewhere" ] && [ ! -e "$TMP/elsewhere.part" ] || fail "the refused receiver created a file"

# The sender's input changed since its state was written.
printf 'X' | dd of="$CP_IN" bs=1 seek=100 conv=notrunc status=none
refused send changed-input 'changed since the transfer began'
cp -p "$TMP/data.good" "$CP_IN"
touch -r "$TMP/data.good" "$CP_IN"

# The genuine files still resume (without the rate limit, to be quick).
CP_SEND_OPTS=(--snapshot-every 1M)
start_recv
assert_resumed "$RECV_LOG"
start_send
wait_grep "$SEND_LOG" 'resuming' 10000 || true
assert_resumed "$SEND_LOG"
cp_finish 60000
pass
