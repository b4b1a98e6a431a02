#!/usr/bin/env bash
# The rsync daemon (fork per connection, no exec) and the rsync client, from
# Debian, under tether-run.
# Expect:
#  1. only one end under tether-run (a plain client against the daemon under
#     tether-run, then the client under tether-run against a plain daemon):
#     a 10 MiB file is fetched and a 10 MiB file uploaded byte-exact, as
#     over plain TCP;
#  2. both ends under tether-run: a 100 MiB file is fetched byte-exact while
#     the live TCP connection is killed (ss -K) three times, the client's
#     log shows three resumes, and a 100 MiB upload survives three kills
#     the same way (the daemon's child writes what it receives);
#  3. rsync exits 0 every time and the daemon's log shows no error.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
command -v rsync >/dev/null || skip "rsync not installed"
export TETHER_RECONNECT_MAX_MS=200
BIG=$((100 * 1024 * 1024))
SMALL=$((10 * 1024 * 1024))
mkdir -p "$TMP/src" "$TMP/up" "$TMP/dst"
random_file "$TMP/src/big.bin" "$BIG"
random_file "$TMP/src/small.bin" "$SMALL"
random_file "$TMP/big.up" "$BIG"

port=$(free_port)
cat >"$TMP/rsyncd.conf" <<EOF
use chroot = no
uid = root
gid = root
log file = $TMP/rsyncd.log
pid file = $TMP/rsyncd.pid
[src]
  path = $TMP/src
  read only = yes
[up]
  path = $TMP/up
  read only = no
EOF

# start_daemon [tether-run --]: the daemon in the foreground.
start_daemon() {
  rm -f "$TMP/rsyncd.pid"
  : >"$TMP/rsyncd.log"
  TETHER_LOG=info spawn - "$TMP/daemon.out" "$TMP/daemon.log" "$@" rsync --daemon \
    --no-detach --config="$TMP/rsyncd.conf" --address=127.0.0.1 --port="$port"
  daemon=$BG_PID
  wait_listen "$daemon" "$port"
}

daemon_clean() {
  if grep -iE 'rsync error|connection unexpectedly|broken pipe' "$TMP/rsyncd.log" >"$TMP/errors"; then
    fail "rsync daemon ($1): $(head -n 3 "$TMP/errors")"
  fi
}

# small_both_ways WHO [tether-run --]: 10 MiB down, 10 MiB up, byte-exact.
small_both_ways() {
  local who=$1
  shift
  rm -f "$TMP/dst/small.bin" "$TMP/up/small.bin"
  "$@" rsync -q "rsync://127.0.0.1:$port/src/small.bin" "$TMP/dst/" 2>"$TMP/rsync.err" ||
    fail "$who: fetch failed: $(tail -n 2 "$TMP/rsync.err")"
  assert_same_file "$TMP/src/small.bin" "$TMP/dst/small.bin" "$who: 10 MiB fetched"
  "$@" rsync -q "$TMP/src/small.bin" "rsync://127.0.0.1:$port/up/" 2>"$TMP/rsync.err" ||
    fail "$who: upload failed: $(tail -n 2 "$TMP/rsync.err")"
  assert_same_file "$TMP/src/small.bin" "$TMP/up/small.bin" "$who: 10 MiB uploaded"
}

# 1. One end under tether-run.
start_daemon "$TETHER_RUN" --
small_both_ways "plain client, daemon under tether-run"
daemon_clean "plain client"
stop "$daemon"
start_daemon
small_both_ways "client under tether-run, plain daemon" "$TETHER_RUN" --
daemon_clean "plain daemon"
stop "$daemon"

# 2. Both ends, with kills.  --inplace writes the destination file itself
# (kill_at_progress watches its size); --bwlimit (KiB/s) stretches the
# transfer to a few seconds so that every kill lands mid-stream.
start_daemon "$TETHER_RUN" --
TETHER_LOG=info spawn - "$TMP/down.out" "$TMP/down.log" "$TETHER_RUN" -- rsync -q \
  --inplace --bwlimit=40960 "rsync://127.0.0.1:$port/src/big.bin" "$TMP/dst/"
cli=$BG_PID
kill_at_progress "$TMP/dst/big.bin" "$BIG" "$port" 3 >"$TMP/kills.down"
kill_stream_done "rsync fetch, 100 MiB" "$cli" "$TMP/src/big.bin" "$TMP/dst/big.bin" \
  "$TMP/down.log" "$TMP/kills.down"

TETHER_LOG=info spawn - "$TMP/upl.out" "$TMP/upl.log" "$TETHER_RUN" -- rsync -q \
  --inplace --bwlimit=40960 "$TMP/big.up" "rsync://127.0.0.1:$port/up/"
cli=$BG_PID
kill_at_progress "$TMP/up/big.up" "$BIG" "$port" 3 >"$TMP/kills.up"
kill_stream_done "rsync upload, 100 MiB" "$cli" "$TMP/big.up" "$TMP/up/big.up" \
  "$TMP/upl.log" "$TMP/kills.up"
alive "$daemon" || fail "rsync daemon died"
daemon_clean "both ends under tether-run"
stop "$daemon"
pass
