#!/usr/bin/env bash
# A killed peer never looks like EOF.
#
# 1. kill -9 a durable server (--state: it may come back from a snapshot)
#    while a client streams lines: the client must stay (suspended) for at
#    least 5 s -- exiting would mean it took the reset for an EOF.  Then a
#    new server process (no state: it cannot know the session) starts on the
#    same port: the client's resume is rejected and it must exit non-zero
#    with TETHER_ESESSIONGONE ("the peer no longer knows this session"), its
#    output a clean prefix of what it sent.
# 1b. kill -9 a server that is not durable: the client's probes meet ICMP
#    port unreachable, and it exits non-zero with TETHER_ESESSIONGONE about
#    2 s later (it can never resume) -- never 0 as at an EOF.
# 2. kill -9 a durable client (TETHER_DURABLE=1: it may come back from a
#    snapshot): the server's session must be suspended, not closed: within
#    5 s its log shows the suspension and no close, and the server keeps
#    running.
# 3. kill -9 a client that is not durable: suspended at once, then, its host
#    reporting that nothing listens on its side channel, failed with
#    TETHER_ESESSIONGONE (it can never come back) -- never closed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_ECHO

export TETHER_RECONNECT_MAX_MS=300
WINDOW_MS=5000

# echo_is_prefix FILE: FILE holds "line 1".."line N" (N >= 0), complete lines.
echo_is_prefix() {
  awk '$0 != "line " NR { bad = 1; exit } END { exit bad }' "$1" &&
    { [ ! -s "$1" ] || [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" = '\n' ]; }
}

# ---- 1. server killed ----
port=$(free_port)
stamped_log server1
TETHER_LOG=info spawn - "$TMP/server1.out" "$STAMP_FIFO" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port" --state "$TMP/state1"
server=$BG_PID
wait_listen "$server" "$port"

mkfifo "$TMP/lines.fifo"
spawn - "$TMP/lines.fifo" "$TMP/lines.err" numbered_lines 600 0.1
stamped_log client
TETHER_LOG=info spawn "$TMP/lines.fifo" "$TMP/out" "$STAMP_FIFO" \
  "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
client=$BG_PID
wait_size "$TMP/out" 60 10000 "$client" # a few lines echoed

t_kill=$(now_us)
kill9 "$server"
log "server killed (kill -9) after $(wc -l <"$TMP/out") lines were echoed"

if wait_exit "$client" "$WINDOW_MS"; then
  fail "the client exited (status $WAIT_RC) $(us_to_s $((WAIT_US - t_kill))) s after the server's kill -9: a killed peer must not end the session"
fi
wait_stamp_after "$TMP/client.log" "$RE_SUSPENDED" "$t_kill" 1000 ||
  fail "the client still runs but never logged '$RE_SUSPENDED' after the server's kill -9"
log "client suspended $(us_to_s $((STAMP - t_kill))) s after the kill and still running after $((WINDOW_MS / 1000)) s"
echo_is_prefix "$TMP/out" || fail "the client's output is not a clean prefix of its input: $(tail -n 3 "$TMP/out" | od -c | tail -n 3)"

stamped_log server2
TETHER_LOG=info spawn - "$TMP/server2.out" "$STAMP_FIFO" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port"
server2=$BG_PID
wait_listen "$server2" "$port"
t_restart=$(now_us)
log "a new server (without the session) listens on port $port"

wait_exit "$client" 15000 || fail "the client still runs 15 s after a server that cannot know its session came up"
log "client exited with status $WAIT_RC $(us_to_s $((WAIT_US - t_restart))) s after the restart: $(grep -i 'tether-echo' "$TMP/client.log" | grep -v 'listening' | tail -n 1 | cut -d' ' -f2- | cut -c1-200)"
[ "$WAIT_RC" -ne 0 ] || fail "the client exited 0 (as at an EOF) although its server was killed"
grep -qi 'no longer knows this session' "$TMP/client.log" ||
  fail "the client's error is not TETHER_ESESSIONGONE ('the peer no longer knows this session')"
echo_is_prefix "$TMP/out" || fail "the client's output is not a clean prefix of its input"
alive "$server2" || fail "the new server died"
stop "$server2"

# ---- 1b. a server that is not durable killed ----
port=$(free_port)
stamped_log server1b
TETHER_LOG=info spawn - "$TMP/server1b.out" "$STAMP_FIFO" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port"
server=$BG_PID
wait_listen "$server" "$port"
mkfifo "$TMP/lines1b.fifo"
spawn - "$TMP/lines1b.fifo" "$TMP/lines1b.err" numbered_lines 600 0.1
stamped_log client1b
TETHER_LOG=info spawn "$TMP/lines1b.fifo" "$TMP/out1b" "$STAMP_FIFO" \
  "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
client=$BG_PID
wait_size "$TMP/out1b" 60 10000 "$client"
t_kill=$(now_us)
kill9 "$server"
wait_exit "$client" 15000 || fail "1b: the client still runs 15 s after its non-durable server's kill -9"
gone_us=$((WAIT_US - t_kill))
log "1b: client exited with status $WAIT_RC $(us_to_s "$gone_us") s after the kill: $(grep 'gone:' "$TMP/client1b.log" | cut -d' ' -f2- | cut -c1-160)"
[ "$WAIT_RC" -ne 0 ] || fail "1b: the client exited 0 (as at an EOF) although its server was killed"
grep -qi 'no longer knows this session' "$TMP/client1b.log" ||
  fail "1b: the client's error is not TETHER_ESESSIONGONE ('the peer no longer knows this session')"
grep -q 'gone: its peer cannot restore' "$TMP/client1b.log" ||
  fail "1b: the client did not learn it from its probes"
# Two probes spanning two heartbeats (1 s each): not before about 2 s.
[ "$gone_us" -ge 1500000 ] || fail "1b: the client gave up $(us_to_s "$gone_us") s after the kill: sooner than its evidence can span"
echo_is_prefix "$TMP/out1b" || fail "1b: the client's output is not a clean prefix of its input"

# kill_client N DURABLE: a server and a streaming client (durable or not),
# the client killed; sets server, t_kill.
kill_client() {
  local n=$1 durable=$2 client
  port=$(free_port)
  stamped_log "server$n"
  TETHER_LOG=info spawn - "$TMP/server$n.out" "$STAMP_FIFO" \
    "$TETHER_ECHO" server --listen "127.0.0.1:$port"
  server=$BG_PID
  wait_listen "$server" "$port"
  mkfifo "$TMP/lines$n.fifo"
  spawn - "$TMP/lines$n.fifo" "$TMP/lines$n.err" numbered_lines 600 0.1
  TETHER_DURABLE=$durable spawn "$TMP/lines$n.fifo" "$TMP/out$n" "$TMP/client$n.log" \
    "$TETHER_ECHO" client --connect "127.0.0.1:$port"
  client=$BG_PID
  wait_size "$TMP/out$n" 60 10000 "$client"
  t_kill=$(now_us)
  kill9 "$client"
  log "client killed (kill -9, TETHER_DURABLE=$durable)"
  wait_stamp_after "$TMP/server$n.log" "$RE_SUSPENDED" "$t_kill" "$WINDOW_MS" ||
    fail "the server did not log '$RE_SUSPENDED' within $((WINDOW_MS / 1000)) s of the client's kill -9"
  log "server suspended the session $(us_to_s $((STAMP - t_kill))) s after the kill"
}

# ---- 2. durable client killed ----
kill_client 3 1
rest=$((t_kill + WINDOW_MS * 1000 - $(now_us)))
[ "$rest" -gt 0 ] && sleep "$(us_to_s "$rest")"
# (a "suspended (...)" line may name the cause, e.g. "EOF without a close")
closed=$(state_lines "$TMP/server3.log" "$RE_CLOSED|$RE_FAILED|tether-echo: session" | grep -vi "$RE_SUSPENDED" || true)
[ -z "$closed" ] ||
  fail "the server ended the session of a killed durable client (it must stay suspended): $(echo "$closed" | head -n 3)"
alive "$server" || fail "the server died"

# ---- 3. client that is not durable killed ----
kill_client 4 0
wait_stamp_after "$TMP/server4.log" "$RE_FAILED" "$t_kill" "$WINDOW_MS" ||
  fail "the server did not let the session of a killed non-durable client go within $((WINDOW_MS / 1000)) s"
log "server let the session go $(us_to_s $((STAMP - t_kill))) s after the kill"
grep -qi 'no longer knows this session' "$TMP/server4.log" ||
  fail "the server's session did not fail with TETHER_ESESSIONGONE"
closed=$(state_lines "$TMP/server4.log" "$RE_CLOSED" | grep -vi "$RE_SUSPENDED" || true)
[ -z "$closed" ] || fail "the server closed the session of a killed client: $(echo "$closed" | head -n 3)"
alive "$server" || fail "the server died"
pass
