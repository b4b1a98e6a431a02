#!/usr/bin/env bash
# The less common calls under tether-run (preload_calls.c, a program that
# knows nothing of tether, built -O2 -D_FORTIFY_SOURCE=2
# -D_FILE_OFFSET_BITS=64), against the epoll echo server under tether-run:
# MSG_PEEK, SO_RCVTIMEO, SO_SNDTIMEO, sendfile/sendfile64, the fortified
# __read_chk/__recv_chk/__recvfrom_chk/__poll_chk/__ppoll_chk, fcntl64,
# close_range/closefrom, fork, exec, vfork, sendmmsg/recvmmsg, syscall(2)
# with the data calls and io_uring_setup, poll's read spin, a non-blocking connect
# closed early, closed listeners released, sessions set up while every
# connection is reset each millisecond, a poll() woken by a resume that
# looks only after another thread's call installed the new socket, each across
# connections reset (ss -K) by the program at the moments that matter;
# and, compared with plain TCP, MSG_ERRQUEUE, MSG_TRUNC, O_ASYNC (refused),
# select with nfds > FD_SETSIZE, SIOCOUTQ and fstat during a transition.
# Expect: every test ok, the sessions resumed, no violation in the server.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN EPOLL_ECHO PRELOAD_CALLS
command -v nm >/dev/null || skip "nm not installed"

# The program must really call the variants under test.
syms=$(nm -D "$PRELOAD_CALLS")
for s in __read_chk __recv_chk __recvfrom_chk __poll_chk __ppoll_chk fcntl64 sendfile64; do
  grep -qw "$s" <<<"$syms" || fail "$PRELOAD_CALLS does not call $s (compiler flags?)"
done

export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000
# Short: the listeners test waits for its closed sessions to finish.
export TETHER_SUSPEND_MS=600 TETHER_HEARTBEAT_MS=200
port=$(free_port)
TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" "$TETHER_RUN" -- \
  "$EPOLL_ECHO" server "$port" 2 0
server=$BG_PID
wait_listen "$server" "$port"
# The longest read spin, so that the spin case tells spinning from not.
TETHER_READ_SPIN_US=1000 TETHER_LOG=info spawn - "$TMP/calls.out" "$TMP/calls.log" "$TETHER_RUN" -- \
  "$PRELOAD_CALLS" "$port"
calls=$BG_PID
wait_exit "$calls" 90000 || fail "preload_calls still running after 90 s: $(tail -n 3 "$TMP/calls.out")"
rc=$WAIT_RC
while read -r line; do log "$line"; done <"$TMP/calls.out"
[ "$rc" -eq 0 ] || fail "$rc test(s) failed: $(grep '^not ok' "$TMP/calls.out")"
[ "$(grep -c "^ok " "$TMP/calls.out")" -eq 23 ] || fail "not every test ran"
grep -q "uses io_uring, which tether cannot see" "$TMP/calls.log" ||
  fail "no warning about io_uring_setup through syscall(3)"
alive "$server" || fail "the echo server died"
stop "$server"
! grep -q VIOLATION "$TMP/server.log" || fail "server: $(grep -m3 VIOLATION "$TMP/server.log")"
resumes=$(state_lines "$TMP/calls.log" "$RE_RESUMED" | wc -l)
log "resumes in preload_calls: $resumes"
[ "$resumes" -ge 8 ] || fail "only $resumes resumes"
pass
