#!/usr/bin/env bash
# tether in 30 seconds: an echo session survives its TCP connection being
# killed twice, losing nothing; then a file transfer survives kill -9 of the
# receiver and of the sender, each restarted from its snapshot.
#
#   bash examples/demo.sh
#
# Installs the build dependencies if missing (.ci/install-deps), builds
# tether-echo into build/, starts an echo server on 127.0.0.1, and a client
# that sends a numbered line every 0.3 s.  Twice, the live TCP connection is
# killed with `ss -K` (the kernel resets it, as a crashing middlebox or a
# flaky network would); tether reconnects and resumes the session.  At the end
# every line must have come back exactly once, in order.  Needs root for
# `ss -K` (uses sudo otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LINES=20
INTERVAL=0.3

if [ -t 1 ]; then
  B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' D=$'\033[2m' N=$'\033[0m'
else
  B='' G='' R='' D='' N=''
fi
say() { printf '%s==> %s%s\n' "$B" "$*" "$N"; }
ok() { printf '%s    %s%s\n' "$G" "$*" "$N"; }
die() {
  printf '%s    demo failed: %s%s\n' "$R" "$*" "$N" >&2
  exit 1
}

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
else
  command -v sudo >/dev/null || die "ss -K needs root: run as root or install sudo"
  as_root=(sudo)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tether-demo.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ------------------------------------------------------------------
say "installing build dependencies (if missing) and building tether-echo into build/"
bash .ci/install-deps
if ! { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build build -j2 --target tether-echo tether-cp; } >"$tmp/build.log" 2>&1; then
  tail -n 40 "$tmp/build.log" >&2
  die "build failed"
fi
echo_bin=build/examples/tether-echo
[ -x "$echo_bin" ] || die "$echo_bin was not built"

# ---- server -------------------------------------------------------------------
port=
for _ in $(seq 1 100); do
  p=$((20000 + RANDOM % 12000))
  if [ -z "$(ss -Htuan "sport = :$p")" ]; then port=$p; break; fi
done
[ -n "$port" ] || die "no free port"

TETHER_LOG=info "$echo_bin" server --listen "127.0.0.1:$port" >/dev/null 2>"$tmp/server.log" &
pids+=($!)
for _ in $(seq 1 250); do
  [ -n "$(ss -Htln "sport = :$port")" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$tmp/server.log" >&2; die "the server exited"; }
  sleep 0.02
done
[ -n "$(ss -Htln "sport = :$port")" ] || die "the server does not listen"
say "echo server listening on 127.0.0.1:$port"

# ---- client ---------------------------------------------------------------------
seq -f 'message %g' 1 "$LINES" >"$tmp/expected"
mkfifo "$tmp/in" "$tmp/echo"
( while IFS= read -r line; do
    printf '    %s%s%s  <- echoed\n' "$D" "$line" "$N"
    printf '%s\n' "$line" >>"$tmp/out"
  done <"$tmp/echo" ) &
pids+=($!)
( while IFS= read -r line; do
    printf '%s\n' "$line"
    sleep "$INTERVAL"
  done <"$tmp/expected" >"$tmp/in" ) &
pids+=($!)
TETHER_LOG=info "$echo_bin" client --connect "127.0.0.1:$port" --stats \
  <"$tmp/in" >"$tmp/echo" 2>"$tmp/client.log" &
client=$!
pids+=("$client")
say "client sends one line every ${INTERVAL}s; the server echoes it back"

count() { [ -f "$tmp/out" ] && wc -l <"$tmp/out" || echo 0; }

# kill_connection N: waits for a few more echoes, kills the live connection,
# then waits for the next echo to prove the session carries on.
kill_connection() {
  local before i killed took
  for i in $(seq 1 100); do
    [ "$(count)" -ge "$1" ] && break
    sleep 0.05
  done
  say "killing the TCP connection now… (ss -K dst 127.0.0.1 dport = :$port)"
  killed=$("${as_root[@]}" ss -K -H -tn dst 127.0.0.1 dport = ":$port" || true)
  [ -n "$killed" ] || die "no live connection to kill"
  before=$(count)
  for i in $(seq 1 200); do
    [ "$(count)" -gt "$before" ] && break
    kill -0 "$client" 2>/dev/null || die "the client exited: $(tail -n 3 "$tmp/client.log")"
    sleep 0.05
  done
  [ "$(count)" -gt "$before" ] || die "no echo within 10 s of the kill"
  took=$(grep -o 'resumed after [0-9.]* s' "$tmp/client.log" | tail -n 1 || true)
  ok "session resumed${took:+ (${took#resumed })}, nothing lost"
}
kill_connection 5
kill_connection 11

for _ in $(seq 1 600); do # the client exits after the server's EOF
  kill -0 "$client" 2>/dev/null || break
  sleep 0.05
done
kill -0 "$client" 2>/dev/null && die "the client did not finish within 30 s"
rc=0
wait "$client" || rc=$?
for _ in $(seq 1 50); do # let the display catch up with the last echo
  [ "$(count)" -ge "$LINES" ] && break
  sleep 0.05
done
[ "$rc" -eq 0 ] || die "the client exited with status $rc: $(tail -n 3 "$tmp/client.log")"

# ---- verdict --------------------------------------------------------------------
say "checking the echo"
cmp -s "$tmp/expected" "$tmp/out" ||
  die "sent $LINES lines, got back $(count): $(diff "$tmp/expected" "$tmp/out" | head -n 5 | tr '\n' ' ')"
ok "all $LINES lines came back exactly once, in order"
stats=$(grep '^{' "$tmp/client.log" | tail -n 1)
[ -n "$stats" ] || die "the client printed no --stats"
say "client --stats:"
echo "    $stats"
reconnects=$(sed -n 's/.*"reconnects":\([0-9]*\).*/\1/p' <<<"$stats")
[ "${reconnects:-0}" -ge 2 ] || die "reconnects=${reconnects:-?}, expected >= 2"
ok "the session survived $reconnects killed connections"

# ---- part 2: a file transfer survives kill -9 of each side -------------------
# tether-cp --state snapshots each side's session and progress into a state
# directory; a side killed with kill -9 and started again with the same
# arguments restores its session from the snapshot (older than what the two
# sides had exchanged) and the transfer carries on: nothing lost, nothing
# written twice, SHA-256 verified at the end.
cp_bin=build/examples/tether-cp
[ -x "$cp_bin" ] || die "$cp_bin was not built"
CP_SIZE=$((64 * 1024 * 1024))
say "part 2: copying a ${CP_SIZE}-byte random file with tether-cp --state at 16 MB/s"
head -c "$CP_SIZE" /dev/urandom >"$tmp/file.in"
cp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/rstate" "$tmp/sstate"
start_recv() {
  "$cp_bin" recv --listen "127.0.0.1:$cp_port" --out "$tmp/file.out" --state "$tmp/rstate" \
    >>"$tmp/recv.log" 2>&1 &
  recv_pid=$!
  pids+=("$recv_pid")
}
start_send() {
  "$cp_bin" send --connect "127.0.0.1:$cp_port" --state "$tmp/sstate" --limit-rate 16M \
    "$tmp/file.in" >>"$tmp/send.log" 2>&1 &
  send_pid=$!
  pids+=("$send_pid")
}
# part_size: how much the receiver has written so far.
part_size() { stat -c %s "$tmp/file.out.part" 2>/dev/null || echo 0; }
wait_for_bytes() {
  local want=$1 i
  for ((i = 0; i < 600; i++)); do
    [ "$(part_size)" -ge "$want" ] && return 0
    sleep 0.05
  done
  die "the transfer did not reach $want bytes"
}
start_recv
sleep 0.3
start_send
wait_for_bytes $((CP_SIZE / 4))
say "kill -9 of the receiver at $(part_size) bytes; starting it again from its snapshot"
kill -9 "$recv_pid"
wait "$recv_pid" 2>/dev/null || true
start_recv
wait_for_bytes $((CP_SIZE * 6 / 10))
say "kill -9 of the sender at $(part_size) bytes; starting it again from its snapshot"
kill -9 "$send_pid"
wait "$send_pid" 2>/dev/null || true
start_send
rc=0
wait "$send_pid" || rc=$?
[ "$rc" -eq 0 ] || die "tether-cp send exited with $rc: $(tail -n 3 "$tmp/send.log")"
rc=0
wait "$recv_pid" || rc=$?
[ "$rc" -eq 0 ] || die "tether-cp recv exited with $rc: $(tail -n 3 "$tmp/recv.log")"
grep -h 'resum' "$tmp/recv.log" "$tmp/send.log" | sed 's/^/    /' | head -n 4
cmp -s "$tmp/file.in" "$tmp/file.out" || die "the copy differs from the original"
ok "both sides were killed with kill -9 and restarted; the copy is byte-exact (SHA-256 verified)"
