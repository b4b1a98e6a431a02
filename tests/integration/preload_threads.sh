#!/usr/bin/env bash
# Threads of one program under tether-run (preload_threads.c): a thread
# blocked in recv/read/send (or poll, epoll_wait) while another shuts the
# socket down must return as on plain TCP (0 for a read, EPIPE for a send;
# poll and epoll report POLLIN after SHUT_RD), a close by another
# thread lets a send in progress go on to its end, as on TCP, and forks
# while another thread spawns and connects leave children that work.  The same
# program runs first without tether against plain servers: the
# expectations are plain TCP's.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_RUN EPOLL_ECHO PRELOAD_THREADS

NTESTS=7
run_case() { # NAME PRELOAD(0|1)
  local name=$1 wrap=()
  [ "$2" = 1 ] && wrap=("$TETHER_RUN" --)
  local port
  port=$(free_port)
  TETHER_LOG=info spawn - "$TMP/$name.server.out" "$TMP/$name.server.log" "${wrap[@]}" \
    "$EPOLL_ECHO" server "$port" 2 0
  local server=$BG_PID
  wait_listen "$server" "$port"
  local sport
  sport=$(free_port)
  TETHER_LOG=info spawn - "$TMP/$name.sink.out" "$TMP/$name.sink.log" "${wrap[@]}" \
    "$PRELOAD_THREADS" sink "$sport"
  local sink=$BG_PID
  wait_listen "$sink" "$sport"
  TETHER_LOG=info spawn - "$TMP/$name.out" "$TMP/$name.log" "${wrap[@]}" "$PRELOAD_THREADS" \
    "$port" "$sport"
  local prog=$BG_PID
  wait_exit "$prog" 60000 || fail "$name: preload_threads still running after 60 s: $(tail -n 3 "$TMP/$name.out")"
  local rc=$WAIT_RC
  while read -r line; do log "$name: $line"; done <"$TMP/$name.out"
  [ "$rc" -eq 0 ] || fail "$name: $rc test(s) failed: $(grep '^not ok' "$TMP/$name.out")"
  [ "$(grep -c "^ok " "$TMP/$name.out")" -eq "$NTESTS" ] || fail "$name: not every test ran"
  # The server is not judged: shut_wr closes with unread echo, a reset
  # that it counts as a fault, on plain TCP as under tether.
  stop "$server"
  # The sink got every byte of the send that the close did not cut short.
  wait_grep "$TMP/$name.sink.out" "sink: $((8 << 20)) bytes" 10000 ||
    fail "$name: the sink did not get the 8 MiB: $(cat "$TMP/$name.sink.out")"
  stop "$sink"
}
run_case plain 0
run_case tether 1
pass
