#!/usr/bin/env bash
# A Python asyncio echo server and client (asyncio_echo.py: epoll,
# non-blocking sockets) under tether-run.
# Expect:
#  1. only one end under tether-run (plain client against the server under
#     tether-run, then the client under tether-run against a plain server):
#     4 MiB echoed byte-exact, as over plain TCP;
#  2. both ends under tether-run: 32 MiB sent at 8 MiB/s and echoed back
#     byte-exact while the live TCP connection is killed (ss -K) three
#     times; the client exits 0 and its log shows three resumes.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
[ -n "$PY" ] || skip "python3 not installed"
export TETHER_RECONNECT_MAX_MS=200
ECHO=("$PY" "$IT_DIR/asyncio_echo.py")
BIG=$((32 * 1024 * 1024))
SMALL=$((4 * 1024 * 1024))
random_file "$TMP/big" "$BIG"
random_file "$TMP/small" "$SMALL"
port=$(free_port)

# start_server [tether-run --]
start_server() {
  TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$@" "${ECHO[@]}" server "$port"
  server=$BG_PID
  wait_listen "$server" "$port"
}

# small_echo WHO [tether-run --]
small_echo() {
  local who=$1
  shift
  rm -f "$TMP/small.back"
  "$@" "${ECHO[@]}" client "$port" "$TMP/small" "$TMP/small.back" 0 2>"$TMP/client.err" ||
    fail "$who: client failed: $(tail -n 2 "$TMP/client.err")"
  assert_same_file "$TMP/small" "$TMP/small.back" "$who: 4 MiB echoed"
}

start_server "$TETHER_RUN" --
small_echo "plain client, server under tether-run"
stop "$server"
start_server
small_echo "client under tether-run, plain server" "$TETHER_RUN" --
stop "$server"

start_server "$TETHER_RUN" --
TETHER_LOG=info spawn - "$TMP/big.out" "$TMP/big.log" "$TETHER_RUN" -- \
  "${ECHO[@]}" client "$port" "$TMP/big" "$TMP/big.back" $((8 * 1024 * 1024))
cli=$BG_PID
kill_at_progress "$TMP/big.back" "$BIG" "$port" 3 >"$TMP/kills"
kill_stream_done "asyncio echo, 32 MiB" "$cli" "$TMP/big" "$TMP/big.back" "$TMP/big.log" \
  "$TMP/kills"
alive "$server" || fail "the asyncio server died"
stop "$server"
pass
