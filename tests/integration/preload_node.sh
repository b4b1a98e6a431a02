#!/usr/bin/env bash
# A Node.js HTTP server and client (node_http.js: libuv's epoll loop and
# thread pool) under tether-run.
# Expect:
#  1. only one end under tether-run (plain client against the server under
#     tether-run, then the client under tether-run against a plain server):
#     5 fetches of 4 MiB over one keep-alive connection, byte-exact, as over
#     plain TCP;
#  2. both ends under tether-run: a 64 MiB body served at 16 MiB/s arrives
#     byte-exact while the live TCP connection is killed (ss -K) three
#     times; the client exits 0 and its log shows three resumes.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
NODE=$(command -v node || command -v nodejs || true)
[ -n "$NODE" ] || skip "node not installed"
export TETHER_RECONNECT_MAX_MS=200
JS="$IT_DIR/node_http.js"
BIG=$((64 * 1024 * 1024))
SMALL=$((4 * 1024 * 1024))
random_file "$TMP/big" "$BIG"
random_file "$TMP/small" "$SMALL"
port=$(free_port)

# start_server FILE RATE [tether-run --]
start_server() {
  local file=$1 rate=$2
  shift 2
  TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$@" "$NODE" "$JS" server \
    "$port" "$file" "$rate"
  server=$BG_PID
  wait_listen "$server" "$port" "" 20000
}

# small_fetches WHO [tether-run --]
small_fetches() {
  local who=$1
  shift
  rm -f "$TMP/small.got"
  "$@" "$NODE" "$JS" client "http://127.0.0.1:$port/small" "$TMP/small.got" 5 \
    2>"$TMP/client.err" || fail "$who: client failed: $(tail -n 2 "$TMP/client.err")"
  assert_same_file "$TMP/small" "$TMP/small.got" "$who: 5 fetches of 4 MiB, the last"
}

start_server "$TMP/small" 0 "$TETHER_RUN" --
small_fetches "plain client, server under tether-run"
stop "$server"
start_server "$TMP/small" 0
small_fetches "client under tether-run, plain server" "$TETHER_RUN" --
stop "$server"

start_server "$TMP/big" $((16 * 1024 * 1024)) "$TETHER_RUN" --
TETHER_LOG=info spawn - "$TMP/big.out" "$TMP/big.log" "$TETHER_RUN" -- \
  "$NODE" "$JS" client "http://127.0.0.1:$port/big" "$TMP/big.got"
cli=$BG_PID
kill_at_progress "$TMP/big.got" "$BIG" "$port" 3 >"$TMP/kills"
kill_stream_done "node http, 64 MiB" "$cli" "$TMP/big" "$TMP/big.got" "$TMP/big.log" \
  "$TMP/kills"
alive "$server" || fail "the node server died"
stop "$server"
pass
