#!/usr/bin/env bash
# A preloaded process and a plain one, in either role, behave exactly like
# plain TCP: byte-exact, no stray bytes, no wait.
#   1. plain curl       -> preloaded python3 -m http.server   (client speaks first)
#   2. preloaded curl   -> plain python3 -m http.server       (non-blocking connect)
#   3. plain nc         -> preloaded nc -l, each way           (client, server speaks first)
#   4. preloaded nc     -> plain nc -l, each way
#   5. preloaded client -> preloaded server that answers its probe too late
#      for it (TETHER_PROBE_MS=0): whatever the client decides, no hang and
#      no stray bytes, server speaking first.
# Each exchange must finish within 15 s: a fallback by timeout would take
# TETHER_ACCEPT_WAIT_MS = 30 s here, and a loaded 2-core machine takes up to
# 3 s for one.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_RUN
for t in curl nc; do command -v "$t" >/dev/null || skip "$t not installed"; done
export TETHER_ACCEPT_WAIT_MS=30000
LIMIT_US=15000000

mkdir -p "$TMP/www"
random_file "$TMP/www/file" $((3 * 1024 * 1024 + 17))
random_file "$TMP/small" 100000

# timed WHAT CMD...: runs CMD, fails if it fails or takes longer than LIMIT_US.
timed() {
  local what=$1 t0 dt
  shift
  t0=$(now_us)
  "$@" || fail "$what: exited with $?"
  dt=$(($(now_us) - t0))
  log "$what: $(us_to_s "$dt") s"
  [ "$dt" -lt "$LIMIT_US" ] || fail "$what took $(us_to_s "$dt") s"
}

http_case() { # NAME SERVER_PREFIX... :: CLIENT_PREFIX...
  local name=$1 port
  shift
  local -a srv=() cli=()
  while [ "$1" != :: ]; do srv+=("$1"); shift; done
  shift
  cli=("$@")
  port=$(free_port)
  spawn - "$TMP/$name.srv.out" "$TMP/$name.srv.log" "${srv[@]}" "$PY" -m http.server "$port" \
    --bind 127.0.0.1 --directory "$TMP/www"
  local server=$BG_PID
  wait_listen "$server" "$port"
  timed "$name" "${cli[@]}" curl -sS -o "$TMP/$name.out" "http://127.0.0.1:$port/file"
  assert_same_file "$TMP/www/file" "$TMP/$name.out" "$name"
  stop "$server"
}

nc_client() { "$@" nc -N 127.0.0.1 "$NC_PORT"; }

# nc_case NAME DIRECTION SERVER_PREFIX... :: CLIENT_PREFIX...
# DIRECTION c2s: the client sends $TMP/small; s2c: the server does.  The
# receiving side's stdin stays open (a fifo) until it has every byte: nc
# keeps running until its own input ends.
nc_case() {
  local name=$1 dir=$2 port
  shift 2
  local -a srv=() cli=()
  while [ "$1" != :: ]; do srv+=("$1"); shift; done
  shift
  cli=("$@")
  port=$(free_port)
  mkfifo "$TMP/$name.hold"
  spawn - "$TMP/$name.hold" /dev/null sleep 60
  local holder=$BG_PID s_in=$TMP/small c_in=$TMP/$name.hold recv_out=$TMP/$name.cli.out
  if [ "$dir" = c2s ]; then
    s_in=$TMP/$name.hold c_in=$TMP/small recv_out=$TMP/$name.srv.out
  fi
  spawn "$s_in" "$TMP/$name.srv.out" "$TMP/$name.srv.log" "${srv[@]}" nc -N -l 127.0.0.1 "$port"
  local server=$BG_PID t0 dt
  wait_listen "$server" "$port"
  t0=$(now_us)
  NC_PORT=$port spawn "$c_in" "$TMP/$name.cli.out" "$TMP/$name.cli.log" nc_client "${cli[@]}"
  local client=$BG_PID
  wait_size "$recv_out" 100000 "$((LIMIT_US / 1000))"
  dt=$(($(now_us) - t0))
  log "$name: $(us_to_s "$dt") s"
  stop "$holder"
  wait_exit "$client" 15000 || fail "$name: client nc still running"
  [ "$WAIT_RC" -eq 0 ] || fail "$name: client nc exited with $WAIT_RC"
  wait_exit "$server" 15000 || fail "$name: server nc still running"
  if [ "$dir" = c2s ]; then
    assert_same_file "$TMP/small" "$TMP/$name.srv.out" "$name"
    [ ! -s "$TMP/$name.cli.out" ] || fail "$name: the client received stray bytes"
  else
    assert_same_file "$TMP/small" "$TMP/$name.cli.out" "$name"
    [ ! -s "$TMP/$name.srv.out" ] || fail "$name: the server received stray bytes"
  fi
}

RUN=("$TETHER_RUN" --log info --)
http_case plain-curl-vs-preloaded-http "${RUN[@]}" :: env
http_case preloaded-curl-vs-plain-http env :: "${RUN[@]}"
nc_case plain-nc-vs-preloaded-nc-c2s c2s "${RUN[@]}" :: env
nc_case plain-nc-vs-preloaded-nc-s2c s2c "${RUN[@]}" :: env
nc_case preloaded-nc-vs-plain-nc-c2s c2s env :: "${RUN[@]}"
nc_case preloaded-nc-vs-plain-nc-s2c s2c env :: "${RUN[@]}"
nc_case late-probe-answer-s2c s2c "${RUN[@]}" :: "$TETHER_RUN" --log info --probe-ms 0 --
nc_case late-probe-answer-c2s c2s "${RUN[@]}" :: "$TETHER_RUN" --log info --probe-ms 0 --
nc_case both-preloaded-s2c s2c "${RUN[@]}" :: "${RUN[@]}"
grep -qi "accepted" "$TMP/both-preloaded-s2c.srv.log" || fail "two preloaded nc did not make a session"
# TETHER_EXCLUDE on the client (the destination), then on the server (its
# bound address): plain TCP between two preloaded programs.  A malformed
# list is reported and ignored.
nc_case excluded-client s2c "${RUN[@]}" :: "$TETHER_RUN" --log info --exclude 127.0.0.0/8 --
nc_case excluded-server c2s "$TETHER_RUN" --log info --exclude "[::1],127.0.0.1" -- :: "${RUN[@]}"
nc_case exclude-malformed s2c "${RUN[@]}" :: "$TETHER_RUN" --log info --exclude "no/such" --
for c in excluded-client excluded-server; do
  ! grep -qi "session" "$TMP/$c.srv.log" "$TMP/$c.cli.log" || fail "$c: a session despite TETHER_EXCLUDE"
done
grep -qi "TETHER_EXCLUDE is malformed" "$TMP/exclude-malformed.cli.log" ||
  fail "a malformed TETHER_EXCLUDE was not reported"
grep -qi "accepted" "$TMP/exclude-malformed.srv.log" || fail "exclude-malformed: no session"
for f in "$TMP"/plain-*.srv.log "$TMP"/preloaded-*.srv.log; do
  ! grep -qi "session" "$f" || fail "$(basename "$f"): a session against a plain peer?"
done
pass
