#!/usr/bin/env bash
# cp-bench.sh — tether-cp with and without --state, and over plain TCP,
# side by side.
#
# Copies one file over 127.0.0.1 with tether-cp in three modes, alternately
# in every round (plain, tether, state, plain, tether, state, ...) so that
# drifting machine load hits all alike:
#   plain   tether-cp --plain: the same program (reading, SHA-256 on both
#           sides, writing FILE.part, verdict) over a plain TCP socket
#   tether  tether-cp over a tether session
#   state   tether-cp --state DIR on both sides (durable sessions,
#           checkpoints every --snapshot-every, default 8M, each fsynced)
# Each run is timed from the sender's start to both sides' exit (a verified
# copy: both exit 0 and the output is compared with the input).  Prints the
# median throughput of each mode and the ratios.
set -euo pipefail

prog=${0##*/}
cp_bin=${TETHER_CP:-tether-cp}
rounds=5
size=1G
dir=
run_timeout=600
modes=(plain tether state)

usage() {
  cat <<EOF
usage: $prog [--cp PATH] [--rounds N] [--size N] [--dir DIR] [--timeout S]
       [--modes "plain tether state"]

Runs tether-cp in plain, tether and state mode alternately, N rounds each
(default $rounds), on a file of --size bytes (default $size; suffixes K, M,
G), and prints the median throughput of each mode and the ratios
tether/plain, state/plain and state/tether.
  --cp PATH     tether-cp to run (default \$TETHER_CP or tether-cp from PATH)
  --dir DIR     where the input, output and state directories go (default:
                a new directory under \${TMPDIR:-/tmp}); the output and the
                state are fsynced there, so its disk matters for "state"
  --modes LIST  which modes, space separated (default all three)
  --timeout S   fail a run that takes longer (default $run_timeout s)
A ratio above 1 means the first mode is faster.
EOF
}

# shellcheck source=examples/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

while [ $# -gt 0 ]; do
  case $1 in
  --cp | --rounds | --size | --dir | --timeout | --modes)
    [ $# -ge 2 ] || usage_error "$1 needs a value"
    case $1 in
    --cp) cp_bin=$2 ;;
    --rounds) rounds=$2 ;;
    --size) size=$2 ;;
    --dir) dir=$2 ;;
    --timeout) run_timeout=$2 ;;
    --modes) read -r -a modes <<<"$2" ;;
    esac
    shift 2
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) usage_error "unknown argument '$1'" ;;
  esac
done
need_count --rounds "$rounds"
need_count --timeout "$run_timeout"
bytes=$(numfmt --from=iec "$size" 2>/dev/null) || usage_error "bad --size '$size'"
[ "$bytes" -gt 0 ] || usage_error "bad --size '$size'"
[ "${#modes[@]}" -gt 0 ] || usage_error "no --modes"
for m in "${modes[@]}"; do
  case $m in
  plain | tether | state) ;;
  *) usage_error "unknown mode '$m'" ;;
  esac
done
command -v "$cp_bin" >/dev/null 2>&1 || die "cannot run '$cp_bin' (use --cp PATH)"

if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/cp-bench.XXXXXX")
  own_dir=1
else
  mkdir -p "$dir"
  own_dir=0
fi
recv_pid=
cleanup() {
  [ -n "$recv_pid" ] && kill -KILL "$recv_pid" 2>/dev/null
  rm -rf "$dir/out" "$dir/out.part" "$dir/rstate" "$dir/sstate" "$dir/recv.log" \
    "$dir/send.log"
  if [ "$own_dir" = 1 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

in=$dir/in
if [ "$(stat -c %s "$in" 2>/dev/null || echo 0)" != "$bytes" ]; then
  printf '%s: writing %s random bytes to %s\n' "$prog" "$bytes" "$in" >&2
  head -c "$bytes" /dev/urandom >"$in"
fi

now_ns() { date +%s%N; }

# run_one MODE: one verified copy; prints its throughput in MB/s (10^6).
run_one() {
  local mode=$1 port t0 t1 rc=0 i
  local -a ropts=() sopts=()
  # run_one runs in a subshell: it stops its own receiver on the way out.
  trap '[ -n "$recv_pid" ] && kill -KILL "$recv_pid" 2>/dev/null' EXIT
  rm -rf "$dir/out" "$dir/out.part" "$dir/rstate" "$dir/sstate" "$dir/recv.log"
  case $mode in
  plain) ropts=(--plain) sopts=(--plain) ;;
  state) ropts=(--state "$dir/rstate") sopts=(--state "$dir/sstate") ;;
  esac
  timeout "$run_timeout" "$cp_bin" recv --listen 127.0.0.1:0 --out "$dir/out" "${ropts[@]}" \
    2>"$dir/recv.log" &
  recv_pid=$!
  port=
  for ((i = 0; i < 500; i++)); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$dir/recv.log" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 "$recv_pid" 2>/dev/null || die "receiver ($mode) exited: $(cat "$dir/recv.log")"
    sleep 0.01
  done
  [ -n "$port" ] || die "receiver ($mode) did not listen: $(cat "$dir/recv.log")"
  t0=$(now_ns)
  timeout "$run_timeout" "$cp_bin" send --connect "127.0.0.1:$port" "$in" "${sopts[@]}" \
    2>"$dir/send.log" || rc=$?
  # A failed sender may leave the receiver waiting for it.
  [ "$rc" -eq 0 ] || kill -TERM "$recv_pid" 2>/dev/null || true
  wait "$recv_pid" || rc=$((rc ? rc : $?))
  t1=$(now_ns)
  recv_pid=
  [ "$rc" -eq 0 ] || die "$mode copy failed ($rc): $(cat "$dir/send.log" "$dir/recv.log")"
  cmp -s "$in" "$dir/out" || die "$mode copy differs from the input"
  awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f\n", b / (ns / 1e3) }'
}

declare -A vals
for ((r = 1; r <= rounds; r++)); do
  for m in "${modes[@]}"; do
    printf '%s: round %d/%d, %s\n' "$prog" "$r" "$rounds" "$m" >&2
    v=$(run_one "$m") # run_one's die ends the script too
    vals[$m]+="$v "
  done
done

declare -A med
printf 'tether-cp, %s bytes over 127.0.0.1, medians of %d rounds (%s)\n' "$bytes" \
  "$rounds" "$("$cp_bin" --version)"
printf '%-8s %10s   %s\n' mode MB/s "runs (MB/s)"
for m in "${modes[@]}"; do
  med[$m]=$(printf '%s\n' ${vals[$m]} | median)
  printf '%-8s %10.1f   %s\n' "$m" "${med[$m]}" "${vals[$m]}"
done
ratio() {
  [ -n "${med[$1]:-}" ] && [ -n "${med[$2]:-}" ] || return 0
  awk -v a="${med[$1]}" -v b="${med[$2]}" -v n="$1/$2" \
    'BEGIN { if (b > 0) printf "%-14s %6.3f\n", n, a / b }'
}
ratio tether plain
ratio state plain
ratio state tether
