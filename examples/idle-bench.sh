#!/usr/bin/env bash
# idle-bench.sh — what idle tether sessions cost, per process, on this machine.
#
# For each session count, runs `tether-bench idle` (one client process, one
# server process, over 127.0.0.1) for the given number of rounds and prints
# the medians: CPU of each process over the idle window (percent of one
# core, user + sys), resident memory per session on each side, and the rate
# of the opening connects; then the machine it ran on.  Plain TCP costs no
# CPU while idle, so there is no ratio to print: the figure is the cost.
set -euo pipefail

prog=${0##*/}
bench=${TETHER_BENCH:-tether-bench}
counts="1000 5000"
rounds=3
seconds=10

usage() {
  cat <<EOF
usage: $prog [--bench PATH] [--counts "N ..."] [--rounds N] [--seconds S]

Runs tether-bench idle for each session count (default "$counts"), N rounds
each (default $rounds), measuring S seconds per round (default $seconds),
and prints medians.  Both ends run their sessions on one event loop (the
async API), one descriptor per session per side: the open files limit
(ulimit -n) bounds the count.
EOF
}

# shellcheck source=examples/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

while [ $# -gt 0 ]; do
  case $1 in
  --bench) bench=${2:?}; shift 2 ;;
  --counts) counts=${2:?}; shift 2 ;;
  --rounds) need_count "$1" "${2:-}"; rounds=$2; shift 2 ;;
  --seconds) need_count "$1" "${2:-}"; seconds=$2; shift 2 ;;
  -h | --help) usage; exit 0 ;;
  *) usage_error "unknown argument '$1'" ;;
  esac
done
for n in $counts; do need_count --counts "$n"; done
command -v "$bench" >/dev/null 2>&1 || [ -x "$bench" ] || die "cannot run '$bench' (--bench)"

# field JSON KEY: a number from one JSON line.
field() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"; }

printf '%-9s | %-14s | %-14s | %-17s | %-17s | %-10s\n' sessions "client CPU %" "server CPU %" \
  "client B/session" "server B/session" "setups/s"
printf '%s\n' "----------|----------------|----------------|-------------------|-------------------|-----------"
for n in $counts; do
  declare -a c s rc rs su
  c=() s=() rc=() rs=() su=()
  for ((r = 0; r < rounds; r++)); do
    out=$("$bench" idle --count "$n" --seconds "$seconds") || die "tether-bench idle --count $n failed"
    c+=("$(field "$out" idle_cpu_pct_median)")
    s+=("$(field "$out" server_idle_cpu_pct_median)")
    rc+=("$(field "$out" rss_bytes_per_session_median)")
    rs+=("$(field "$out" server_rss_bytes_per_session_median)")
    su+=("$(field "$out" setups_per_s_median)")
  done
  printf '%-9s | %-14.2f | %-14.2f | %-17.0f | %-17.0f | %-10.0f\n' "$n" \
    "$(printf '%s\n' "${c[@]}" | median)" "$(printf '%s\n' "${s[@]}" | median)" \
    "$(printf '%s\n' "${rc[@]}" | median)" "$(printf '%s\n' "${rs[@]}" | median)" \
    "$(printf '%s\n' "${su[@]}" | median)"
done
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
printf 'machine: %s CPUs (%s), %s %s; %s rounds of %s s; load average at the end: %s\n' \
  "$(nproc)" "${model:-unknown model}" "$(uname -s)" "$(uname -r)" "$rounds" "$seconds" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
