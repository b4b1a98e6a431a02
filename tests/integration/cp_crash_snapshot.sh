#!/usr/bin/env bash
# tether-cp --state: a kill -9 at the worst moments of a checkpoint, and of
# the end of a transfer, leaves a state that resumes.
#
# The crashing side runs $TETHER_CP_HOOKS (tether-cp built with crash
# points: TETHER_CP_CRASH=POINT:N sends itself SIGKILL the Nth time it
# reaches POINT), so each moment is hit exactly, not by luck:
#   state-tmp    the new state is written and fsynced as .tmp, not renamed:
#                the previous state file must be used;
#   state-saved  the new state is in place, tether not yet told
#                (tether_snapshot_commit): the peer still holds more than
#                needed;
#   verified     recv: digest checked and recorded, FILE.part not renamed;
#   verdict      recv: verdict written, the sender's end of stream not read;
#                send: verdict read and recorded, end of stream not sent;
#   acked        recv: the sender's end of stream recorded, ours not sent.
# The killed side is started again (plain $TETHER_CP, same arguments); the
# other side runs throughout.  Every case ends byte-exact with both sides
# exiting 0 and no state left.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/cp_lib.sh
source "$(dirname "$0")/cp_lib.sh"
require_tools TETHER_CP TETHER_CP_HOOKS

SIZE=$((24 * 1024 * 1024))

# crash_case SIDE POINT:N
crash_case() {
  local side=$1 spec=$2 dir state
  cp_setup "$SIZE" --snapshot-every 1M -- --snapshot-every 1M --limit-rate 16M
  if [ "$side" = recv ]; then
    dir=$CP_RSTATE
    TETHER_CP_CRASH=$spec start_recv "$TETHER_CP_HOOKS"
    start_send
    crashing=$RECV
  else
    dir=$CP_SSTATE
    start_recv
    TETHER_CP_CRASH=$spec start_send "$TETHER_CP_HOOKS"
    crashing=$SEND
  fi
  state=$dir/$side.state
  wait_exit "$crashing" 30000 || fail "$side $spec: no crash within 30 s"
  [ "$WAIT_RC" -eq 137 ] ||
    fail "$side $spec: exited $WAIT_RC instead of being killed at the crash point"
  [ -s "$state" ] || fail "$side $spec: no state file after the crash"
  case $spec in
  state-tmp:*)
    [ -s "$state.tmp" ] || fail "$side $spec: no $side.state.tmp: the crash did not hit a checkpoint"
    ;;
  esac
  log "$side killed at $spec ($(ls "$dir" | tr '\n' ' '))"
  if [ "$side" = recv ]; then
    start_recv
    assert_resumed "$RECV_LOG"
  else
    start_send
    wait_grep "$SEND_LOG" 'resuming' 10000 || true
    assert_resumed "$SEND_LOG"
  fi
  cp_finish 60000
}

crash_case recv state-tmp:5
crash_case send state-tmp:5
crash_case recv state-saved:7
crash_case send state-saved:7
crash_case recv verified:1
crash_case recv verdict:1
crash_case send verdict:1
crash_case recv acked:1
pass
