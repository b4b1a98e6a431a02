#!/usr/bin/env bash
# bench-compare.sh — tether against plain TCP on this machine, side by side.
#
# Runs every test in both modes alternately (raw, tether, raw, tether, ...)
# so that drifting machine load hits both alike, takes the median of each
# mode and prints the ratio tether/raw.  Both ends run over 127.0.0.1.
set -euo pipefail

prog=${0##*/}
bench=${TETHER_BENCH:-tether-bench}
rounds=5
bytes=1G
latency_count=20000
setup_count=1000
run_timeout=600
tests=(throughput latency setup)

usage() {
  cat <<EOF
usage: $prog [--bench PATH] [--rounds N] [--bytes N] [--latency-count N]
       [--setup-count N] [--tests "throughput latency setup"] [--timeout S]

Runs tether-bench in raw and tether mode alternately, N rounds each
(default $rounds), and prints the medians and the ratios tether/raw.
  --bench PATH         tether-bench to run (default \$TETHER_BENCH or
                       tether-bench from PATH)
  --bytes N            throughput volume per round (default $bytes)
  --latency-count N    round trips per latency round (default $latency_count)
  --setup-count N      connections per setup round (default $setup_count)
  --tests LIST         which tests, space separated (default all three)
  --timeout S          fail a run that takes longer (default $run_timeout s)
Throughput: a ratio above 1 means tether is faster.  Latency and setup:
a ratio above 1 means tether is slower.
EOF
}

die() {
  printf '%s: %s\n' "$prog" "$*" >&2
  exit 1
}

usage_error() {
  printf '%s: %s\nTry '\''%s --help'\''.\n' "$prog" "$*" "$prog" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
  --bench | --rounds | --bytes | --latency-count | --setup-count | --tests | --timeout)
    [ $# -ge 2 ] || usage_error "$1 needs a value"
    case $1 in
    --bench) bench=$2 ;;
    --rounds) rounds=$2 ;;
    --bytes) bytes=$2 ;;
    --latency-count) latency_count=$2 ;;
    --setup-count) setup_count=$2 ;;
    --tests) read -r -a tests <<<"$2" ;;
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
case $rounds in
'' | *[!0-9]* | 0) usage_error "bad --rounds '$rounds'" ;;
esac
case $run_timeout in
'' | *[!0-9]* | 0) usage_error "bad --timeout '$run_timeout'" ;;
esac
for test in "${tests[@]}"; do
  case $test in
  throughput | latency | setup) ;;
  *) usage_error "unknown test '$test'" ;;
  esac
done
command -v "$bench" >/dev/null 2>&1 || die "cannot run '$bench' (use --bench PATH)"

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

# median: of the numbers on stdin, one per line.
median() {
  sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) exit 1
          print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run_one TEST MODE: one tether-bench run; prints its headline number.
run_one() {
  local test=$1 mode=$2 out key
  local args=("$test")
  [ "$mode" = raw ] && args+=(--raw)
  case $test in
  throughput) args+=(--bytes "$bytes"); key=gbit_s_median ;;
  latency) args+=(--count "$latency_count"); key=rtt_us_median ;;
  setup) args+=(--count "$setup_count"); key=setup_us_median ;;
  esac
  out=$(timeout "$run_timeout" "$bench" "${args[@]}") ||
    die "'$bench ${args[*]}' failed or timed out"
  json_get "$out" "$key" || die "no $key in: $out"
}

declare -A label=(
  [throughput]="Gbit/s"
  [latency]="RTT us, median"
  [setup]="setup us, median"
)
rows=()
for test in "${tests[@]}"; do
  raw_vals=() tether_vals=()
  for ((i = 1; i <= rounds; i++)); do
    printf '%s: %s round %d/%d\n' "$prog" "$test" "$i" "$rounds" >&2
    raw_vals+=("$(run_one "$test" raw)")
    tether_vals+=("$(run_one "$test" tether)")
  done
  raw_med=$(printf '%s\n' "${raw_vals[@]}" | median)
  tether_med=$(printf '%s\n' "${tether_vals[@]}" | median)
  ratio=$(awk -v t="$tether_med" -v r="$raw_med" \
    'BEGIN { if (r > 0) printf "%.3f", t / r; else print "n/a" }')
  rows+=("$(printf '%-11s %-17s %12.3f %12.3f %11s' \
    "$test" "${label[$test]}" "$raw_med" "$tether_med" "$ratio")")
done

printf 'medians of %d rounds per mode (%s)\n' "$rounds" "$("$bench" --version)"
printf '%-11s %-17s %12s %12s %11s\n' test metric raw tether tether/raw
printf '%s\n' "${rows[@]}"
