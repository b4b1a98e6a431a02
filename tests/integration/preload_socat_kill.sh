#!/usr/bin/env bash
# socat under tether-run on both ends, streaming 8 MiB of random bytes in
# each direction at once while the live TCP connection is killed every 0.4 s
# (see duplex_kill_test in lib.sh).  socat closes its listening socket after
# the first accept: resumes must get through anyway.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
command -v socat >/dev/null || skip "socat not installed"

mkfifo "$TMP/c_fifo" "$TMP/s_fifo"
port=$(free_port)
# shellcheck disable=SC2034 # both arrays are passed by name
server_cmd=("$TETHER_RUN" -- socat -t 100 "TCP-LISTEN:$port,reuseaddr"
  "OPEN:$TMP/s_fifo,rdonly!!OPEN:$TMP/s_out,wronly,creat,trunc")
# shellcheck disable=SC2034
client_cmd=("$TETHER_RUN" -- socat -t 100
  "OPEN:$TMP/c_fifo,rdonly!!OPEN:$TMP/c_out,wronly,creat,trunc" "TCP:127.0.0.1:$port")
duplex_kill_test socat - /dev/null server_cmd - /dev/null client_cmd
