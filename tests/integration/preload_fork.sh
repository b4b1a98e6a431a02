#!/usr/bin/env bash
# Sessions handed to forked children (fork.c), with real processes under
# tether-run on both ends, while every live connection to the server's port
# is killed (ss -K) every 0.4 s:
#  1. accept -> fork -> parent closes -> child echoes (blocking), against two
#     connect -> fork clients (the child does the talking, non-blocking with
#     poll, while the parent keeps its copy open), 6 MiB each at 2 MiB/s;
#  2. the same server with a non-blocking, poll()ing child;
#  3. inetd style: the child puts the connection on fds 0 and 1 and execs
#     cat;
#  4. socat TCP-LISTEN:...,fork EXEC:cat (if socat is installed);
#  5. python3's socketserver.ForkingTCPServer (forking_echo.py), two clients;
#  6. posix_spawn of cat with the connection on its fds 0 and 1
#     (POSIX_SPAWN_DUP2);
#  7. pre-forked: two workers accept (blocking) on the listener they
#     inherited, which their parent closed, three clients at once (both
#     workers serve).
# Expect: every byte echoed exactly, every process exits 0, resumes in the
# server's log, and no warning about an unusable inherited session.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN FORK_PROG

SIZE=$((6 * 1024 * 1024))
RATE=$((2 * 1024 * 1024))
export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000

killer() {
  local port=$1 i killed n=0
  for ((i = 0; i < 40; i++)); do
    sleep 0.4
    killed=$(kill_tcp 127.0.0.1 "$port")
    [ -n "$killed" ] && n=$((n + 1)) && echo "kill $n: $(wc -l <<<"$killed") connections"
  done
  return 0
}

# run NAME CLIENTS SERVER-COMMAND...: the server on a free port (the word
# PORT in the command is replaced by it), CLIENTS forking clients.  With
# PERSISTENT=1 the server runs until stopped (else it must exit 0 by
# itself after its clients).
run() {
  local name=$1 nclients=$2
  shift 2
  local port i args=() clients=()
  port=$(free_port)
  for a in "$@"; do args+=("${a//PORT/$port}"); done
  TETHER_LOG=info spawn - "$TMP/$name.server.out" "$TMP/$name.server.log" "$TETHER_RUN" -- "${args[@]}"
  local server=$BG_PID
  wait_listen "$server" "$port"
  for ((i = 1; i <= nclients; i++)); do
    random_file "$TMP/$name.in$i" "$SIZE"
    mkfifo "$TMP/$name.fifo$i"
    spawn "$TMP/$name.in$i" "$TMP/$name.fifo$i" "$TMP/$name.throttle$i.err" "${THROTTLE[@]}" "$RATE" 65536
    TETHER_LOG=info spawn - - "$TMP/$name.client$i.log" "$TETHER_RUN" -- \
      "$FORK_PROG" client "$port" "$TMP/$name.fifo$i" "$TMP/$name.out$i"
    clients+=("$BG_PID")
  done
  spawn - "$TMP/$name.killer.log" "$TMP/$name.killer.err" killer "$port"
  local killer_pid=$BG_PID
  for ((i = 1; i <= nclients; i++)); do
    wait_exit "${clients[$((i - 1))]}" 60000 || fail "$name: client $i still running after 60 s"
    [ "$WAIT_RC" -eq 0 ] || fail "$name: client $i exited with $WAIT_RC: $(grep -m3 FAIL "$TMP/$name.client$i.log" || true)"
  done
  local src=0
  if [ "${PERSISTENT:-0}" = 1 ]; then
    stop "$server"
  else
    wait_exit "$server" 10000 || fail "$name: server still running 10 s after its clients"
    src=$WAIT_RC
  fi
  stop "$killer_pid"
  [ "$src" -eq 0 ] || fail "$name: server exited with $src: $(grep -m3 FAIL "$TMP/$name.server.log" || true)"
  for ((i = 1; i <= nclients; i++)); do
    assert_same_file "$TMP/$name.in$i" "$TMP/$name.out$i" "$name: client $i, echoed"
  done
  local kills resumes
  kills=$(grep -c '^kill ' "$TMP/$name.killer.log" || true)
  resumes=$(state_lines "$TMP/$name.server.log" "$RE_RESUMED" | wc -l)
  log "$name: kills $kills, server resumes $resumes"
  [ "$resumes" -ge 3 ] || fail "$name: only $resumes resumes ($kills kills)"
  if grep -h 'cannot be used here' "$TMP/$name".*.log; then
    fail "$name: an inherited session was not handed over"
  fi
}

run fork_blocking 2 "$FORK_PROG" server PORT 2
run fork_poll 1 "$FORK_PROG" server-poll PORT 1
run fork_exec 1 "$FORK_PROG" server-exec PORT 1 cat
if command -v socat >/dev/null; then
  PERSISTENT=1 run socat_fork 1 socat TCP-LISTEN:PORT,reuseaddr,fork EXEC:cat
else
  log "socat not installed: its case skipped"
fi
PERSISTENT=1 run python_forking 2 "$PY" "$IT_DIR/forking_echo.py" PORT
run fork_spawn 1 "$FORK_PROG" server-spawn PORT 1
run prefork 3 "$FORK_PROG" prefork PORT 2 3
served_by=$(grep -o 'worker [0-9]*: a connection' "$TMP/prefork.server.log" | sort -u | wc -l)
log "prefork: connections served by $served_by workers"
[ "$served_by" -eq 2 ] || fail "prefork: connections served by $served_by workers, not 2"
# 8. A child that dies (SIGKILL) holding the last reference: its peer gets
#    an error, never EOF (tether(7): EOF means the peer closed).
port=$(free_port)
TETHER_LOG=info spawn - - "$TMP/crash.server.log" "$TETHER_RUN" -- "$FORK_PROG" server-crash "$port"
server=$BG_PID
wait_listen "$server" "$port"
random_file "$TMP/crash.in" $((8 * 1024 * 1024))
mkfifo "$TMP/crash.fifo"
spawn "$TMP/crash.in" "$TMP/crash.fifo" "$TMP/crash.throttle.err" "${THROTTLE[@]}" "$RATE" 65536
TETHER_LOG=info spawn - - "$TMP/crash.client.log" "$TETHER_RUN" -- \
  "$FORK_PROG" client "$port" "$TMP/crash.fifo" "$TMP/crash.out"
client=$BG_PID
wait_exit "$client" 30000 || fail "crash: client still running 30 s after the server's child died"
[ "$WAIT_RC" -ne 0 ] || fail "crash: the client finished as if the transfer had completed"
grep -q 'EOF before' "$TMP/crash.client.log" && fail "crash: the client read EOF"
grep -Eq 'client (recv|send): ' "$TMP/crash.client.log" ||
  fail "crash: no read or write error in the client: $(grep -m1 FAIL "$TMP/crash.client.log" || true)"
log "crash: $(grep -m1 -o 'client \(recv\|send\): .*' "$TMP/crash.client.log")"
wait_exit "$server" 10000 || fail "crash: server still running"
[ "$WAIT_RC" -eq 0 ] || fail "crash: server exited with $WAIT_RC"
# 9. The child's last words reach the client although the parent exits
#    right after reaping it while the connection is down: the child writes
#    them and exits with the session suspended (killed, and redials refused
#    for 1.5 s), so they wait in its relay; the parent's exit waits for that
#    relay (up to TETHER_LINGER_S) instead of dropping it.
port=$(free_port)
TETHER_LOG=info spawn - - "$TMP/last.server.log" "$TETHER_RUN" -- "$FORK_PROG" server-lastword "$port"
server=$BG_PID
wait_listen "$server" "$port"
random_file "$TMP/last.in" $((1024 * 1024))
TETHER_LOG=info spawn - - "$TMP/last.client.log" "$TETHER_RUN" -- \
  "$FORK_PROG" client "$port" "$TMP/last.in" "$TMP/last.out"
client=$BG_PID
wait_size "$TMP/last.out" $((1024 * 1024)) 30000 "$client"
iptables -I INPUT -p tcp --dport "$port" --tcp-flags SYN,ACK SYN -j REJECT --reject-with tcp-reset
killed=$(kill_tcp 127.0.0.1 "$port")
sleep 1.5
iptables -D INPUT -p tcp --dport "$port" --tcp-flags SYN,ACK SYN -j REJECT --reject-with tcp-reset
[ -n "$killed" ] || fail "last words: no connection to kill"
wait_exit "$client" 30000 || fail "last words: client still running after 30 s"
[ "$WAIT_RC" -eq 0 ] || fail "last words: client exited with $WAIT_RC: $(grep -m1 FAIL "$TMP/last.client.log" || true)"
{ cat "$TMP/last.in"; printf 'BYE\n'; } >"$TMP/last.want"
assert_same_file "$TMP/last.want" "$TMP/last.out" "last words after the parent's exit"
wait_exit "$server" 10000 || fail "last words: server still running"
[ "$WAIT_RC" -eq 0 ] || fail "last words: server exited with $WAIT_RC"
pass
