#!/usr/bin/env bash
# tether-cp --state survives kill -9 of either side and of both at once.
#
# One 256 MiB random file, sent at a limited rate so that every kill lands
# mid-stream.  Nine kill -9 at random points (by the size of out.part,
# between 5% and 90% of the file): three of the receiver, three of the
# sender, three of both at once, in random order.  Each killed process is
# started again with the same arguments after a random pause, and must
# resume from its state file ("resuming ... at byte N"), not start over.
# At the end both exit 0, the copy is byte-exact (cmp), and no state, lock,
# .tmp or .part file is left.
#
# TETHER_IT_SEED=N replays a run (the seed is printed).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/cp_lib.sh
source "$(dirname "$0")/cp_lib.sh"
require_tools TETHER_CP

SIZE=$((256 * 1024 * 1024))
RATE=64M
seed=${TETHER_IT_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$((seed % 32768))
log "seed $seed (TETHER_IT_SEED=$seed replays this run)"

cp_setup "$SIZE" -- --limit-rate "$RATE"

# The plan: who is killed at which size of out.part.
targets=(recv recv recv send send send both both both)
for ((i = ${#targets[@]} - 1; i > 0; i--)); do
  j=$((RANDOM % (i + 1)))
  t=${targets[i]}
  targets[i]=${targets[j]}
  targets[j]=$t
done
mapfile -t points < <(for _ in "${targets[@]}"; do
  echo $((SIZE / 20 + (RANDOM * 32768 + RANDOM) % (SIZE * 85 / 100)))
done | sort -n)

# pause: 0 to 500 ms, as a sleep argument.
pause() { printf '0.%03d' $((RANDOM % 500)); }

start_recv
start_send
for ((k = 0; k < ${#targets[@]}; k++)); do
  target=${targets[k]}
  point=${points[k]}
  # Both must still be running: the transfer is not over before 90%.
  alive "$SEND" || fail "the sender exited before kill $((k + 1))"
  wait_size "$CP_OUT.part" "$point" 60000 "$RECV"
  have=$(file_size "$CP_OUT.part")
  case $target in
  recv) kill9 "$RECV" ;;
  send) kill9 "$SEND" ;;
  both) kill9_both "$RECV" "$SEND" ;;
  esac
  gap=$(pause)
  log "kill $((k + 1))/${#targets[@]}: $target at out.part = $have bytes ($((have * 100 / SIZE))%), restart after ${gap} s"
  sleep "$gap"
  case $target in
  recv)
    start_recv
    assert_resumed "$RECV_LOG"
    ;;
  send)
    start_send
    wait_grep "$SEND_LOG" 'resuming' 10000 || true
    assert_resumed "$SEND_LOG"
    ;;
  both)
    if ((RANDOM % 2)); then
      start_recv
      start_send
    else
      start_send
      start_recv
    fi
    wait_grep "$SEND_LOG" 'resuming' 10000 || true
    assert_resumed "$RECV_LOG"
    assert_resumed "$SEND_LOG"
    ;;
  esac
done

cp_finish 120000
log "receiver: $(tail -n 1 "$RECV_LOG")"
log "sender: $(tail -n 1 "$SEND_LOG")"
pass
