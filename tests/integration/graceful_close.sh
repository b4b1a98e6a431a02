#!/usr/bin/env bash
# Normal end of a session: the client sends its input, half-closes at stdin's
# EOF (tether_shutdown), reads the echo until the server's EOF and exits 0.
# Cases: 4 MiB of random data, empty input, a line without a newline.
# Expect: exit 0, byte-exact output; on the server every one of
# these sessions ends as closed (the library's state log), none as failed, and
# the tool reports no session error.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_ECHO

port=$(free_port)
TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" \
  "$TETHER_ECHO" server --listen "127.0.0.1:$port"
server=$BG_PID
wait_listen "$server" "$port"

random_file "$TMP/in.big" $((4 * 1024 * 1024))
: >"$TMP/in.empty"
printf 'no newline at the end' >"$TMP/in.line"

n=0
for c in big empty line; do
  n=$((n + 1))
  TETHER_LOG=info spawn "$TMP/in.$c" "$TMP/out.$c" "$TMP/client-$c.log" \
    "$TETHER_ECHO" client --connect "127.0.0.1:$port" --stats
  wait_exit "$BG_PID" 30000 || fail "client ($c) still running after 30 s"
  [ "$WAIT_RC" -eq 0 ] || fail "client ($c) exited with status $WAIT_RC"
  assert_same_file "$TMP/in.$c" "$TMP/out.$c" "echo of $c input"
  # (A FIN that overtakes the close notice is confirmed by a resume, by
  # design, so a reconnect here is allowed; a failure is not.)
  reconnects=$(stats_get "$TMP/client-$c.log" reconnects)
  log "client ($c): reconnects=$reconnects"
  if [ -n "$(state_lines "$TMP/client-$c.log" "$RE_FAILED")" ]; then
    fail "client ($c) logged a failure: $(state_lines "$TMP/client-$c.log" "$RE_FAILED" | head -n 3)"
  fi
done

# The server side: each of the $n sessions ends as closed, none as failed.
deadline=$(($(now_us) + 10000000))
while [ "$(state_lines "$TMP/server.log" "$RE_CLOSED" | wc -l)" -lt "$n" ]; do
  [ "$(now_us)" -lt "$deadline" ] ||
    fail "the server logged $(state_lines "$TMP/server.log" "$RE_CLOSED" | wc -l) '$RE_CLOSED' lines within 10 s, expected >= $n (one per session)"
  sleep 0.05
done
log "server: $(state_lines "$TMP/server.log" "$RE_CLOSED" | head -n 1 | cut -c1-200)"
bad=$(state_lines "$TMP/server.log" "$RE_FAILED|tether-echo: session")
[ -z "$bad" ] || fail "the server reported failures for sessions whose peer closed normally: $(echo "$bad" | head -n 5)"
alive "$server" || fail "the server died"
pass
