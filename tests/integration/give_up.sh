#!/usr/bin/env bash
# give_up_s: a client whose server is gone for good fails with TETHER_EGIVEUP
# ("could not reconnect within give_up_s") -- not before give_up_s, and not
# much later.  TETHER_GIVE_UP_S=2 on the client.
# 1. kill -9 the server (a reset: the client suspends at once) and never
#    restart it: exit non-zero within [2 s, 2 s + 4 s] of the kill.
# 2. kill -STOP the server (frozen, silent): the client detects it after
#    suspend_ms (default 3000) + a heartbeat at most, then gives up 2 s later;
#    it must not exit before give_up_s, nor as at an EOF (status 0).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_ECHO

export TETHER_GIVE_UP_S=2
export TETHER_RECONNECT_MAX_MS=500

# start_pair NAME: server + streaming client; sets server, client, port.
start_pair() {
  port=$(free_port)
  TETHER_LOG=info spawn - "$TMP/server-$1.out" "$TMP/server-$1.log" \
    "$TETHER_ECHO" server --listen "127.0.0.1:$port"
  server=$BG_PID
  wait_listen "$server" "$port"
  mkfifo "$TMP/lines-$1.fifo"
  spawn - "$TMP/lines-$1.fifo" "$TMP/lines-$1.err" numbered_lines 600 0.1
  TETHER_LOG=info spawn "$TMP/lines-$1.fifo" "$TMP/out-$1" "$TMP/client-$1.log" \
    "$TETHER_ECHO" client --connect "127.0.0.1:$port"
  client=$BG_PID
  wait_size "$TMP/out-$1" 40 10000 "$client"
}

# check_give_up NAME T_FAULT MIN_US MAX_US
check_give_up() {
  local name=$1 t0=$2 min=$3 max=$4 took
  wait_exit "$client" $((max / 1000 + 5000)) ||
    fail "$name: the client still runs $(us_to_s $((max + 5000000))) s after the fault (give_up_s=$TETHER_GIVE_UP_S)"
  took=$((WAIT_US - t0))
  log "$name: client exited with status $WAIT_RC $(us_to_s "$took") s after the fault: $(grep -i 'tether-echo:' "$TMP/client-$name.log" | tail -n 1 | cut -c1-200)"
  [ "$WAIT_RC" -ne 0 ] || fail "$name: the client exited 0, as at an EOF"
  grep -qi 'could not reconnect within give_up_s' "$TMP/client-$name.log" ||
    fail "$name: the client's error is not TETHER_EGIVEUP ('could not reconnect within give_up_s')"
  [ "$took" -ge "$min" ] || fail "$name: the client gave up after $(us_to_s "$took") s, before give_up_s=$TETHER_GIVE_UP_S"
  [ "$took" -le "$max" ] || fail "$name: the client gave up after $(us_to_s "$took") s, expected <= $(us_to_s "$max") s"
}

# ---- 1. server killed, never restarted ----
start_pair killed
t=$(now_us)
kill9 "$server"
check_give_up killed "$t" 2000000 6000000

# ---- 2. server frozen ----
start_pair frozen
sleep 2.5 # heartbeats have flowed: silence now means a dead peer
t=$(now_us)
kill -STOP "$server"
check_give_up frozen "$t" 2000000 $((4000000 + 2000000 + 3000000))
kill -CONT "$server" 2>/dev/null || true
pass
