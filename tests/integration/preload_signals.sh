#!/usr/bin/env bash
# A program whose SIGALRM handler (every 300 us) writes records to the TCP
# connection that its threads also write and read (preload_signals.c), with
# an echo server: first plain, then both ends under tether-run while the
# live connection is killed (ss -K) every 0.3 s.
# Expect both times: the echo is made of whole records, each writer's in
# order and complete (the handler's included), and the program exits 0;
# under tether-run the client's log shows resumes and no failed session (a
# handler that bypassed the session while its thread was inside tether's
# code put bytes on the wire that the session never counted, and the next
# resume could not reconcile the streams).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN EPOLL_ECHO PRELOAD_SIGNALS
export TETHER_RECONNECT_MAX_MS=200
RECORDS=150000

# run_case NAME PRELOAD(0|1) KILL(0|1)
run_case() {
  local name=$1 wrap=() port
  [ "$2" = 1 ] && wrap=("$TETHER_RUN" --)
  port=$(free_port)
  TETHER_LOG=info spawn - "$TMP/$name.server.out" "$TMP/$name.server.log" "${wrap[@]}" \
    "$EPOLL_ECHO" server "$port" 1 1
  local server=$BG_PID
  wait_listen "$server" "$port"
  TETHER_LOG=info spawn - "$TMP/$name.out" "$TMP/$name.log" "${wrap[@]}" \
    "$PRELOAD_SIGNALS" "$port" "$RECORDS"
  local prog=$BG_PID kills=0 killed
  if [ "$3" = 1 ]; then
    while alive "$prog"; do
      sleep 0.3
      killed=$(kill_tcp 127.0.0.1 "$port")
      [ -n "$killed" ] && kills=$((kills + 1))
    done
  fi
  wait_exit "$prog" 120000 || fail "$name: still running after 120 s"
  local rc=$WAIT_RC
  log "$name: $(tail -n 2 "$TMP/$name.out" | tr '\n' ' ')(kills: $kills)"
  [ "$rc" -eq 0 ] || fail "$name: exited with $rc: $(tail -n 1 "$TMP/$name.out")"
  if [ "$2" = 1 ]; then
    local resumes failed
    resumes=$(state_lines "$TMP/$name.log" "$RE_RESUMED" | wc -l)
    failed=$(state_lines "$TMP/$name.log" "$RE_FAILED" | wc -l)
    log "$name: client resumes: $resumes, failed: $failed"
    [ "$failed" -eq 0 ] || fail "$name: a session failed: $(state_lines "$TMP/$name.log" "$RE_FAILED" | head -n 1)"
    [ "$kills" -lt 2 ] || [ "$resumes" -ge 2 ] || fail "$name: $kills kills but $resumes resumes"
  fi
  stop "$server"
}
run_case plain 0 0
run_case tether 1 1
pass
