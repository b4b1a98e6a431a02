#!/usr/bin/env bash
# nc (netcat-openbsd, poll-based) under tether-run on both ends, streaming
# 8 MiB of random bytes in each direction at once while the live TCP
# connection is killed every 0.4 s (see duplex_kill_test in lib.sh).  -N:
# each side shuts down writing at the end of its input and exits at the end
# of the peer's.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
command -v nc >/dev/null || skip "nc not installed"
nc -h 2>&1 | grep -q -- '-N' || skip "nc is not netcat-openbsd"

mkfifo "$TMP/c_fifo" "$TMP/s_fifo"
port=$(free_port)
# shellcheck disable=SC2034 # both arrays are passed by name
server_cmd=("$TETHER_RUN" -- nc -N -l 127.0.0.1 "$port")
# shellcheck disable=SC2034
client_cmd=("$TETHER_RUN" -- nc -N 127.0.0.1 "$port")
duplex_kill_test nc "$TMP/s_fifo" "$TMP/s_out" server_cmd "$TMP/c_fifo" "$TMP/c_out" client_cmd
