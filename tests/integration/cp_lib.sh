# cp_lib.sh — sourced (after lib.sh) by the tether-cp tests that use --state.
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables used by the scripts that source this
#
# One transfer at a time: cp_setup makes the input and the directories,
# start_recv / start_send start (or restart, with the very same arguments)
# one side, each process logging to its own $TMP/recv.N.log / send.N.log,
# and cp_finish waits for both to exit and checks the result.
#
#   cp_setup BYTES [RECV_OPTS...] -- [SEND_OPTS...]
#   start_recv [BINARY]     (default $TETHER_CP; env assignments pass through)
#   start_send [BINARY]
#   cp_finish TIMEOUT_MS    exit 0 on both sides, byte-exact output, no state,
#                           lock, .tmp or .part file left

# Redial quickly after a restart of the receiver.
export TETHER_RECONNECT_MAX_MS=${TETHER_RECONNECT_MAX_MS:-200}

cp_setup() {
  local bytes=$1
  shift
  CP_PORT=$(free_port)
  CP_IN=$TMP/data
  CP_OUT=$TMP/out
  CP_RSTATE=$TMP/rstate
  CP_SSTATE=$TMP/sstate
  CP_RECV_N=0
  CP_SEND_N=0
  CP_RECV_OPTS=()
  CP_SEND_OPTS=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    CP_RECV_OPTS+=("$1")
    shift
  done
  [ "$#" -gt 0 ] && shift
  CP_SEND_OPTS=("$@")
  [ -f "$CP_IN" ] && [ "$(file_size "$CP_IN")" -eq "$bytes" ] || random_file "$CP_IN" "$bytes"
  rm -rf "$CP_OUT" "$CP_OUT.part" "$CP_RSTATE" "$CP_SSTATE"
}

recv_args() {
  RECV_ARGS=(recv --listen "127.0.0.1:$CP_PORT" --out "$CP_OUT" --state "$CP_RSTATE"
    "${CP_RECV_OPTS[@]}")
}

send_args() {
  SEND_ARGS=(send --connect "127.0.0.1:$CP_PORT" "$CP_IN" --state "$CP_SSTATE"
    "${CP_SEND_OPTS[@]}")
}

# start_recv [BINARY]: sets RECV (pid) and RECV_LOG; waits for the listener,
# or for the process to exit (a receiver restarted at the very end may be
# done at once; cp_finish checks how it exited).
start_recv() {
  local bin=${1:-$TETHER_CP} deadline=$(($(now_us) + 20000000))
  recv_args
  CP_RECV_N=$((CP_RECV_N + 1))
  RECV_LOG=$TMP/recv.$CP_RECV_N.log
  spawn - /dev/null "$RECV_LOG" "$bin" "${RECV_ARGS[@]}"
  RECV=$BG_PID
  while [ -z "$(ss -Htln "sport = :$CP_PORT" 2>/dev/null)" ] && alive "$RECV"; do
    [ "$(now_us)" -lt "$deadline" ] || fail "nothing listens on port $CP_PORT 20 s after starting the receiver"
    sleep 0.02
  done
}

# start_send [BINARY]: sets SEND (pid) and SEND_LOG.
start_send() {
  local bin=${1:-$TETHER_CP}
  send_args
  CP_SEND_N=$((CP_SEND_N + 1))
  SEND_LOG=$TMP/send.$CP_SEND_N.log
  spawn - /dev/null "$SEND_LOG" "$bin" "${SEND_ARGS[@]}"
  SEND=$BG_PID
}

# kill9_both PID PID: SIGKILL to both at once, then reap them (quietly).
kill9_both() {
  kill -KILL "$1" "$2" 2>/dev/null || true
  { wait "$1" || true; wait "$2" || true; } 2>/dev/null
}

# assert_resumed LOG: the process of LOG resumed from its state file (it
# says so first thing; allow it 10 s to start).
assert_resumed() {
  local i
  for ((i = 0; i < 500; i++)); do
    grep -q 'resuming .* at byte' "$1" && break
    sleep 0.02
  done
  grep -q 'resuming .* at byte' "$1" ||
    fail "$(basename "$1"): the restarted process did not resume from its state file"
  log "$(basename "$1" .log): $(grep -o 'resuming .*' "$1" | sed "s|$TMP/||")"
}

cp_finish() {
  local timeout=$1 send_rc recv_rc f
  wait_exit "$SEND" "$timeout" || fail "the sender still runs after $((timeout / 1000)) s"
  send_rc=$WAIT_RC
  wait_exit "$RECV" 15000 || fail "the receiver still runs 15 s after the sender exited ($send_rc)"
  recv_rc=$WAIT_RC
  [ "$send_rc" -eq 0 ] && [ "$recv_rc" -eq 0 ] ||
    fail "exit codes send=$send_rc recv=$recv_rc, expected 0 0"
  assert_same_file "$CP_IN" "$CP_OUT" "copy"
  for f in "$CP_OUT.part" "$CP_RSTATE"/recv.state "$CP_RSTATE"/recv.state.tmp \
    "$CP_RSTATE"/recv.lock "$CP_SSTATE"/send.state "$CP_SSTATE"/send.state.tmp \
    "$CP_SSTATE"/send.lock; do
    [ ! -e "$f" ] || fail "$(basename "$f") is left behind after a verified copy"
  done
}
