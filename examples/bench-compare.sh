#!/usr/bin/env bash
# bench-compare.sh — tether against plain TCP on this machine, side by side.
#
# Runs every test in three modes alternately (plain TCP, tether with the
# read spin off, tether with its default spin; round after round) so that
# drifting machine load hits all alike, and prints for each mode the median
# over rounds, the spread ((max - min) / median) and the ratio to plain
# TCP, beside the CPU time both processes used (user + sys), and the
# machine it ran on.  Both ends run over 127.0.0.1.
# Then (test "snapshot", tether only) runs tether-snapbench once: snapshot
# sizes, and the median time of tether_snapshot and tether_restore with
# many idle sessions.
set -euo pipefail

prog=${0##*/}
bench=${TETHER_BENCH:-tether-bench}
snapbench=${TETHER_SNAPBENCH:-}
snap_sessions=1000
rounds=5
bytes=1G
small_bytes=256M
latency_count=20000
setup_count=1000
run_timeout=600
tests=(throughput writes-16k writes-1k latency setup snapshot)
tests_given=0

usage() {
  cat <<EOF
usage: $prog [--bench PATH] [--snapbench PATH] [--rounds N] [--bytes N]
       [--small-bytes N] [--latency-count N] [--setup-count N]
       [--snap-sessions N] [--tests "throughput writes-16k ..."] [--timeout S]

Runs tether-bench over plain TCP, tether with the read spin off
(TETHER_READ_SPIN_US=0) and tether with its default spin, alternately, N
rounds each (default $rounds), and prints medians, spreads and ratios to
plain TCP, with the CPU time of both ends.
  --bench PATH         tether-bench to run (default \$TETHER_BENCH or
                       tether-bench from PATH)
  --snapbench PATH     tether-snapbench to run (default \$TETHER_SNAPBENCH,
                       else the one next to tether-bench, else from PATH)
  --bytes N            throughput volume per round (default $bytes)
  --small-bytes N      volume of the writes-16k and writes-1k rounds
                       (default $small_bytes)
  --latency-count N    round trips per latency round (default $latency_count)
  --setup-count N      connections per setup round (default $setup_count)
  --snap-sessions N    idle sessions for the snapshot timings (default
                       $snap_sessions); the snapshot test runs --rounds times
  --tests LIST         which tests, space separated: throughput (128 KiB
                       writes), writes-16k, writes-1k (throughput with
                       16 KiB and 1 KiB writes), latency, setup, snapshot
                       (default all; the snapshot test is skipped when
                       tether-snapbench is not found, unless asked for)
  --timeout S          fail a run that takes longer (default $run_timeout s)
Throughput: a ratio above 1 means tether is faster.  Latency, setup and
CPU: a ratio above 1 means tether is slower or costlier.  Snapshot: tether
only, no ratio.
EOF
}

# shellcheck source=examples/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

while [ $# -gt 0 ]; do
  case $1 in
  --bench | --snapbench | --rounds | --bytes | --small-bytes | --latency-count | --setup-count | \
    --snap-sessions | --tests | --timeout)
    [ $# -ge 2 ] || usage_error "$1 needs a value"
    case $1 in
    --bench) bench=$2 ;;
    --rounds) rounds=$2 ;;
    --bytes) bytes=$2 ;;
    --small-bytes) small_bytes=$2 ;;
    --latency-count) latency_count=$2 ;;
    --setup-count) setup_count=$2 ;;
    --snapbench) snapbench=$2 ;;
    --snap-sessions) snap_sessions=$2 ;;
    --tests) read -r -a tests <<<"$2"; tests_given=1 ;;
    --timeout) run_timeout=$2 ;;
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
case $snap_sessions in
'' | *[!0-9]* | 0 | 1) usage_error "bad --snap-sessions '$snap_sessions' (2 or more)" ;;
esac
run_snapshot=0
pair_tests=()
for test in "${tests[@]}"; do
  case $test in
  throughput | writes-16k | writes-1k | latency | setup) pair_tests+=("$test") ;;
  snapshot) run_snapshot=1 ;;
  *) usage_error "unknown test '$test'" ;;
  esac
done
command -v "$bench" >/dev/null 2>&1 || die "cannot run '$bench' (use --bench PATH)"
if [ "$run_snapshot" = 1 ]; then
  if [ -z "$snapbench" ]; then
    snapbench=$(dirname "$(command -v "$bench")")/tether-snapbench
    [ -x "$snapbench" ] || snapbench=tether-snapbench
  fi
  if ! command -v "$snapbench" >/dev/null 2>&1; then
    [ "$tests_given" = 1 ] && die "cannot run '$snapbench' (use --snapbench PATH)"
    printf '%s: no tether-snapbench (use --snapbench PATH): snapshot test skipped\n' "$prog" >&2
    run_snapshot=0
  fi
fi

# json_get JSON KEY: prints the value of a top-level key.
if command -v jq >/dev/null 2>&1; then
  json_get() { jq -er --arg k "$2" '.[$k]' <<<"$1"; }
elif command -v python3 >/dev/null 2>&1; then
  json_get() {
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
  }
else
  die "needs jq or python3 to read tether-bench's JSON"
fi

# run_one TEST MODE: one tether-bench run (MODE raw, spin-off or spin-on);
# prints its headline number and the CPU seconds of both ends.
run_one() {
  local test=$1 mode=$2 out key cpu k
  local args=("$test") env=()
  case $test in writes-*) args=(throughput) ;; esac
  case $mode in
  raw) args+=(--raw) ;;
  spin-off) env=(TETHER_READ_SPIN_US=0) ;;
  esac
  case $test in
  throughput) args+=(--bytes "$bytes"); key=gbit_s_median ;;
  writes-16k) args+=(--bytes "$small_bytes" --write-size 16K); key=gbit_s_median ;;
  writes-1k) args+=(--bytes "$small_bytes" --write-size 1K); key=gbit_s_median ;;
  latency) args+=(--count "$latency_count"); key=rtt_us_median ;;
  setup) args+=(--count "$setup_count"); key=setup_us_median ;;
  esac
  out=$(env "${env[@]}" timeout "$run_timeout" "$bench" "${args[@]}") ||
    die "'$bench ${args[*]}' failed or timed out"
  cpu=0
  for k in cpu_user_s_median cpu_sys_s_median server_cpu_user_s_median server_cpu_sys_s_median; do
    cpu=$(awk -v a="$cpu" -v b="$(json_get "$out" "$k")" 'BEGIN { printf "%.4f", a + b }') ||
      die "no $k in: $out"
  done
  printf '%s %s\n' "$(json_get "$out" "$key" || die "no $key in: $out")" "$cpu"
}

# stats: of the numbers on stdin: "MEDIAN SPREAD" (spread = (max - min) / median).
stats() {
  sort -g | awk '{ v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%s %s\n", m, (m > 0) ? (v[NR] - v[1]) / m : 0 }'
}

declare -A label=(
  [throughput]="Gbit/s"
  [writes-16k]="Gbit/s"
  [writes-1k]="Gbit/s"
  [latency]="RTT us, median"
  [setup]="setup us, median"
)
modes=(raw spin-off spin-on)
rows=()
# row TEST LABEL COLUMN: a table row from the values in vals_MODE (COLUMN
# 1: the figure, 2: CPU seconds).
row() {
  local line med spread raw_med="" m
  line=$(printf '%-11s %-18s' "$1" "$2")
  for m in "${modes[@]}"; do
    local -n v=vals_${m//-/_}
    read -r med spread < <(printf '%s\n' "${v[@]}" | awk -v c="$3" '{ print $c }' | stats)
    if [ "$m" = raw ]; then
      raw_med=$med
      line+=$(printf ' %11.3f %6.0f%%' "$med" "$(awk -v s="$spread" 'BEGIN { print s * 100 }')")
    else
      line+=$(printf ' %11.3f %6.0f%% %6s' "$med" "$(awk -v s="$spread" 'BEGIN { print s * 100 }')" \
        "$(awk -v t="$med" -v r="$raw_med" 'BEGIN { if (r > 0) printf "%.2f", t / r; else print "n/a" }')")
    fi
  done
  rows+=("$line")
}
for test in "${pair_tests[@]}"; do
  vals_raw=() vals_spin_off=() vals_spin_on=()
  for ((i = 1; i <= rounds; i++)); do
    printf '%s: %s round %d/%d\n' "$prog" "$test" "$i" "$rounds" >&2
    vals_raw+=("$(run_one "$test" raw)")
    vals_spin_off+=("$(run_one "$test" spin-off)")
    vals_spin_on+=("$(run_one "$test" spin-on)")
  done
  row "$test" "${label[$test]}" 1
  row "$test" "CPU s, both ends" 2
done

if [ "${#pair_tests[@]}" -gt 0 ]; then
  model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
  printf 'machine: %s CPUs (%s), %s %s; load average at the end: %s\n' "$(nproc)" \
    "${model:-unknown model}" "$(uname -s)" "$(uname -r)" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'medians of %d rounds per mode (%s); spread = (max - min) / median; ratio = mode / plain\n' \
    "$rounds" "$("$bench" --version)"
  printf '%-11s %-18s %11s %7s %11s %7s %6s %11s %7s %6s\n' test metric plain spread \
    "spin off" spread ratio "spin on" spread ratio
  printf '%s\n' "${rows[@]}"
fi

# The snapshot figures: one tether-snapbench run, its own medians.
if [ "$run_snapshot" = 1 ]; then
  printf '%s: snapshot, %d sessions, %d runs\n' "$prog" "$snap_sessions" "$rounds" >&2
  out=$(timeout "$run_timeout" "$snapbench" --sessions "$snap_sessions" --runs "$rounds") ||
    die "'$snapbench --sessions $snap_sessions --runs $rounds' failed or timed out"
  # snap_row LABEL FORMAT CLIENT-KEY SERVER-KEY TARGET
  snap_row() {
    local c s
    c=$(json_get "$out" "$3") || die "no $3 in: $out"
    s=$(json_get "$out" "$4") || die "no $4 in: $out"
    printf "%-38s $2 $2 %9s\n" "$1" "$c" "$s" "$5"
  }
  [ "${#pair_tests[@]}" -gt 0 ] && echo
  printf 'snapshot, tether only: %d idle sessions, medians of %d runs (%s)\n' \
    "$snap_sessions" "$rounds" "$("$snapbench" --version)"
  printf '%-38s %10s %10s %9s\n' figure client server target
  snap_row "size with 1 idle session (bytes)" %10.0f \
    bytes_1_session_client bytes_1_session_server "<= 4096"
  snap_row "increment per idle session (bytes)" %10.1f \
    bytes_per_session_client bytes_per_session_server -
  snap_row "tether_snapshot, $snap_sessions sessions (ms)" %10.2f \
    snapshot_ms_client_median snapshot_ms_server_median "<= 100"
  snap_row "tether_restore, $snap_sessions sessions (ms)" %10.2f \
    restore_ms_client_median restore_ms_server_median "<= 100"
fi
