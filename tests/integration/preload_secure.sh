#!/usr/bin/env bash
# tether does nothing inside setuid/setgid programs.  The loader ignores
# LD_PRELOAD there, so preload_secure (a program linked against
# libtether-preload.so) stands in; run setgid (AT_SECURE=1), it must make a
# plain connection to a tether server (no engine thread, and the server
# sees a plain connection); run normally, the same program gets a session
# (the control).  tether-run warns about setgid programs.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN EPOLL_ECHO PRELOAD_SECURE
getent group nogroup >/dev/null || skip "no group nogroup"

port=$(free_port)
TETHER_LOG=debug spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_RUN" -- \
  "$EPOLL_ECHO" server "$port" 1 0
server=$BG_PID
wait_listen "$server" "$port"

cp "$PRELOAD_SECURE" "$TMP/secure"
chgrp nogroup "$TMP/secure"
chmod 2755 "$TMP/secure"
out=$(TETHER_LOG=debug "$TMP/secure" "$port" 2>"$TMP/secure.err") || fail "setgid run failed: $(cat "$TMP/secure.err")"
log "setgid: $out"
[ "$out" = "secure 1 threads 1" ] || fail "setgid: expected 'secure 1 threads 1', got '$out'"
wait_grep "$TMP/server.log" 'connection from .*: plain' 5000 || fail "the server did not see a plain connection"
[ ! -s "$TMP/secure.err" ] || fail "the setgid program printed: $(head -n 3 "$TMP/secure.err")"

cp "$PRELOAD_SECURE" "$TMP/normal"
out=$("$TMP/normal" "$port" 2>"$TMP/normal.err") || fail "normal run failed: $(cat "$TMP/normal.err")"
log "normal: $out"
[ "$out" = "secure 0 threads 2" ] || fail "normal: expected 'secure 0 threads 2' (a session), got '$out'"
wait_grep "$TMP/server.log" 'connection from .*: announced' 5000 || fail "the server saw no tether connection"

"$TETHER_RUN" -- "$TMP/secure" "$port" >/dev/null 2>"$TMP/run.err" || true
grep -q 'setuid/setgid' "$TMP/run.err" || fail "tether-run gave no warning: $(cat "$TMP/run.err")"
stop "$server"
pass
