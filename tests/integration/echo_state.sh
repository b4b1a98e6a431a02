#!/usr/bin/env bash
# tether-echo server --state survives kill -9: its clients carry on.
#
# Two clients stream 40 MiB of random bytes each through a durable echo
# server, at a limited rate so that every fault lands mid-stream; the
# second reads its echo slower than it writes (backpressure).  The
# server is killed with kill -9 five times (at random points, by the size
# of the first client's output), twice more the moment it has restored
# (so the same snapshot is restored twice in a row, and the clients redial
# while the restored server is still starting), and stopped once with
# SIGTERM; each time it starts again with the same --state after a random
# pause (often none, so the clients' redials race the restore): it must
# restore its listener and both sessions ("restored 2 sessions").  At the
# end both clients exit 0 and their echoed streams are byte-exact, although
# every restart rolled the server back to a checkpoint older than what the
# clients had received (the re-echoed bytes are checked and dropped by
# tether's verified replay).
#
# TETHER_IT_SEED=N replays a run (the seed is printed).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_ECHO TETHER_SNAPSHOT

SIZE=$((40 * 1024 * 1024))
RATE=$((5 * 1024 * 1024))
seed=${TETHER_IT_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$((seed % 32768))
log "seed $seed (TETHER_IT_SEED=$seed replays this run)"
# Redial quickly after each restart.
export TETHER_RECONNECT_MAX_MS=200

port=$(free_port)
state=$TMP/state
CLIENT=()
SINK=()
SERVER_N=0

# start_server: (re)starts the server with the very same arguments.
start_server() {
  SERVER_N=$((SERVER_N + 1))
  SERVER_LOG=$TMP/server.$SERVER_N.log
  spawn - /dev/null "$SERVER_LOG" "$TETHER_ECHO" server \
    --listen "127.0.0.1:$port" --state "$state" --snapshot-ms 100
  SERVER=$BG_PID
  wait_listen "$SERVER" "$port"
}

# start_client N [SINK_RATE]: streams $TMP/inN through the throttle into a
# client; with SINK_RATE, its output goes through a slower throttle too, so
# that the server's session thread mostly holds bytes it cannot echo yet
# (its checkpoints must wait until it has none).
start_client() {
  local out=$TMP/out$1
  random_file "$TMP/in$1" "$SIZE"
  mkfifo "$TMP/src$1.fifo"
  spawn "$TMP/in$1" "$TMP/src$1.fifo" /dev/null "${THROTTLE[@]}" "$RATE"
  if [ -n "${2:-}" ]; then
    out=$TMP/sink$1.fifo
    mkfifo "$out"
    spawn "$out" "$TMP/out$1" /dev/null "${THROTTLE[@]}" "$2"
    SINK[$1]=$BG_PID
  fi
  spawn "$TMP/src$1.fifo" "$out" "$TMP/client$1.log" \
    "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
  CLIENT[$1]=$BG_PID
}

start_server
grep -q 'restored' "$SERVER_LOG" && fail "a new state directory restored something"
start_client 1
start_client 2 $((RATE / 3))

# The faults begin once a checkpoint holds both sessions: a server killed
# before would rightly restore only the first (checkpoints wait while a
# session thread holds bytes its slow client has not taken yet, which can
# last seconds on a loaded machine or under a sanitizer).
deadline=$(($(now_us) + 60000000))
until "$TETHER_SNAPSHOT" inspect "$state/server.snap" 2>/dev/null | grep -Eq '^sessions +2$'; do
  [ "$(now_us)" -lt "$deadline" ] || fail "no checkpoint held both sessions within 60 s"
  sleep 0.05
done
log "a checkpoint holds both sessions"

faults=(kill kill relapse kill kill relapse kill term)
mapfile -t points < <(for _ in "${faults[@]}"; do
  echo $((SIZE / 10 + (RANDOM * 32768 + RANDOM) % (SIZE * 60 / 100)))
done | sort -n)
for ((k = 0; k < ${#faults[@]}; k++)); do
  wait_size "$TMP/out1" "${points[k]}" 60000 "${CLIENT[1]}"
  have=$(file_size "$TMP/out1")
  case ${faults[k]} in
  kill) kill9 "$SERVER" ;;
  relapse) # killed, restarted at once, killed again the moment it restored
    kill9 "$SERVER"
    start_server
    wait_grep "$SERVER_LOG" 'restored' 5000 || fail "the restarted server did not restore its state"
    kill9 "$SERVER"
    ;;
  term)
    kill -TERM "$SERVER"
    wait_exit "$SERVER" 10000 || fail "the server still runs 10 s after SIGTERM"
    [ "$WAIT_RC" -eq 0 ] || fail "the server exited with $WAIT_RC after SIGTERM"
    grep -q 'state kept' "$SERVER_LOG" || fail "SIGTERM: the server did not keep its state"
    ;;
  esac
  gap=0
  [ $((RANDOM % 2)) -eq 0 ] && gap=$(printf '0.%03d' $((RANDOM % 300)))
  log "fault $((k + 1))/${#faults[@]}: ${faults[k]} at out1 = $have bytes ($((have * 100 / SIZE))%), restart after ${gap} s"
  # A SIGTERM'd server echoes on until its last checkpoint is stored (a
  # session thread may hold bytes it read: it must echo them first), which
  # on a loaded machine or under a sanitizer can outlast client 1's stream;
  # client 2, whose output drains a third as fast, is still mid-stream.
  if [ "${faults[k]}" = term ]; then
    alive "${CLIENT[2]}" || fail "client 2 exited while the server was down"
  else
    alive "${CLIENT[1]}" || fail "client 1 exited while the server was down"
  fi
  sleep "$gap"
  start_server
  wait_grep "$SERVER_LOG" 'restored' 20000 || fail "the restarted server did not restore its state"
  # Both sessions, or only client 2's once client 1 has its whole echo (its
  # session may have ended before the checkpoint, its process not yet).
  done1=
  [ "$(file_size "$TMP/out1")" -eq "$SIZE" ] && done1=1
  grep -Eq "restored (2 sessions${done1:+|1 session})" "$SERVER_LOG" ||
    fail "the restarted server did not restore both sessions: $(grep restored "$SERVER_LOG")"
done

for n in 1 2; do
  wait_exit "${CLIENT[n]}" 120000 || fail "client $n still runs after 120 s"
  [ "$WAIT_RC" -eq 0 ] || fail "client $n exited with $WAIT_RC"
  if [ -n "${SINK[n]:-}" ]; then
    wait_exit "${SINK[n]}" 30000 || fail "client $n's output throttle still runs 30 s after the client exited"
  fi
  assert_same_file "$TMP/in$n" "$TMP/out$n" "client $n's echo"
  # Two restarts close together may cost a client a single resume.
  reconnects=$(stats_get "$TMP/client$n.log" reconnects)
  [ "$reconnects" -ge 1 ] || fail "client $n never resumed"
  log "client $n: $reconnects resumes, $(stats_get "$TMP/client$n.log" bytes_resent) bytes resent"
done
[ "$(stat -c %a "$state/server.snap")" = 600 ] || fail "server.snap is not mode 0600"
pass
