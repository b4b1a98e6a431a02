#!/usr/bin/env bash
# An epoll program (preload_epoll_echo.c: edge-triggered, one-shot
# registrations, three threads in epoll_wait, epoll_pwait and epoll_pwait2)
# under tether-run on both ends: three clients stream 12 MiB each through
# the echo server while every live connection is killed (ss -K) every 0.3 s.
# Expect: every byte echoed exactly; no EPOLLERR, EPOLLHUP or early
# EPOLLRDHUP ever reaches the program; no event for a one-shot registration
# that was not re-armed; at least 5 resumes.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN EPOLL_ECHO

CLIENTS=3
SIZE=$((12 * 1024 * 1024))
RATE=$((3 * 1024 * 1024))
export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000
port=$(free_port)

TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_RUN" -- \
  "$EPOLL_ECHO" server "$port" 3 "$CLIENTS"
server=$BG_PID
wait_listen "$server" "$port"
clients=()
for ((i = 1; i <= CLIENTS; i++)); do
  TETHER_LOG=info spawn - "$TMP/client$i.out" "$TMP/client$i.log" "$TETHER_RUN" -- \
    "$EPOLL_ECHO" client "$port" "$SIZE" "$i" "$RATE"
  clients+=("$BG_PID")
done

killer() {
  local i killed n=0
  for ((i = 0; i < 14; i++)); do
    sleep 0.3
    killed=$(kill_tcp 127.0.0.1 "$port")
    [ -n "$killed" ] && n=$((n + 1)) && echo "kill $n: $(wc -l <<<"$killed") connections"
  done
  return 0
}
spawn - "$TMP/killer.log" "$TMP/killer.err" killer
killer_pid=$BG_PID

for ((i = 1; i <= CLIENTS; i++)); do
  wait_exit "${clients[$((i - 1))]}" 60000 || fail "client $i still running after 60 s"
  [ "$WAIT_RC" -eq 0 ] || fail "client $i exited with $WAIT_RC: $(grep -m3 VIOLATION "$TMP/client$i.log")"
  log "$(cat "$TMP/client$i.out")"
done
wait_exit "$server" 10000 || fail "server still running 10 s after the clients ended"
[ "$WAIT_RC" -eq 0 ] || fail "server exited with $WAIT_RC: $(grep -m3 VIOLATION "$TMP/server.log")"
log "$(cat "$TMP/server.out")"
stop "$killer_pid"
kills=$(grep -c '^kill ' "$TMP/killer.log" || true)
resumes=$(state_lines "$TMP/server.log" "$RE_RESUMED" | wc -l)
log "kills: $kills; server resumes: $resumes"
[ "$resumes" -ge 5 ] || fail "only $resumes resumes ($kills kills)"
pass
