#!/usr/bin/env bash
# preload-bench.sh: iperf3, redis-benchmark and nginx (master and two
# workers, 1 MiB files fetched by ab over keep-alive), plain and under
# tether-run (both ends), and connections to a plain server (tether-bench setup --raw:
# connect, 1-byte echo, close; a client under tether-run pays for detection
# there; as root also with UDP to the server's port dropped, so no ICMP
# answers the probe), side by side in one run: rounds alternate plain / tether
# (which goes first alternates too), and the report gives the medians and
# their ratio (tether / plain; the issue's target is >= 0.90 for both),
# with the noise: each mode's spread ((max - min) / median) and the ratios
# of the rounds' pairs.  A benchmark, not a test: it asserts nothing and
# should run on an otherwise idle machine.
#
#   bash examples/preload-bench.sh [--rounds N] [--iperf-seconds S | --iperf-bytes SIZE]
#                                  [--redis-requests N] [--redis-clients N]
#                                  [--nginx-requests N]
#                                  [--tether-run PATH] [--quick]
#
# --quick: one round, 20 MB of iperf3, 2000 redis requests, 200 connects, 200
# nginx requests (checks that
# the script works; the figures mean nothing).  Loopback only.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=5
iperf_len=(-t 5)
redis_n=200000
redis_c=50
connects=2000
nginx_n=2000
tether_run=
while [ $# -gt 0 ]; do
  case $1 in
  --rounds) rounds=$2; shift 2 ;;
  --iperf-seconds) iperf_len=(-t "$2"); shift 2 ;;
  --iperf-bytes) iperf_len=(-n "$2"); shift 2 ;;
  --redis-requests) redis_n=$2; shift 2 ;;
  --redis-clients) redis_c=$2; shift 2 ;;
  --nginx-requests) nginx_n=$2; shift 2 ;;
  --tether-run) tether_run=$2; shift 2 ;;
  --quick) rounds=1; iperf_len=(-n 20M); redis_n=2000; connects=200; nginx_n=200; shift ;;
  -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "preload-bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$tether_run" ]; then
  for d in build build-preload build-h; do
    [ -x "$here/$d/lib/preload/tether-run" ] && tether_run=$here/$d/lib/preload/tether-run && break
  done
fi
[ -x "${tether_run:-}" ] || { echo "preload-bench: tether-run not found (--tether-run PATH)" >&2; exit 2; }
bench=$(dirname "$tether_run")/../../examples/tether-bench
[ -x "$bench" ] || { echo "preload-bench: $bench not found" >&2; exit 2; }
for t in iperf3 redis-server redis-benchmark python3 nginx ab; do
  command -v "$t" >/dev/null || { echo "preload-bench: $t missing (.ci/install-deps)" >&2; exit 2; }
done

tmp=$(mktemp -d)
pids=()
dropped=
cleanup() {
  local p
  [ -n "$dropped" ] && iptables -D INPUT -i lo -p udp --dport "$dropped" -j DROP 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [ -z "$(ss -Htuan "sport = :$p")" ] && echo "$p" && return
  done
}

wait_listen() {
  local i
  for ((i = 0; i < 250; i++)); do
    [ -n "$(ss -Htln "sport = :$1")" ] && return 0
    sleep 0.02
  done
  echo "preload-bench: nothing listens on $1" >&2
  exit 1
}

# One server of each kind per mode, for the whole run.
declare -A iperf_port redis_port nginx_port
mkdir -p "$tmp/html"
head -c $((1024 * 1024)) /dev/urandom >"$tmp/html/1m.bin"
chmod a+rx "$tmp" "$tmp/html" && chmod a+r "$tmp/html/1m.bin" # workers run as www-data
for mode in plain tether; do
  prefix=()
  [ "$mode" = tether ] && prefix=("$tether_run" --log info --)
  iperf_port[$mode]=$(free_port)
  "${prefix[@]}" iperf3 -s -p "${iperf_port[$mode]}" >"$tmp/iperf-$mode.log" 2>&1 &
  pids+=($!)
  redis_port[$mode]=$(free_port)
  "${prefix[@]}" redis-server --port "${redis_port[$mode]}" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no >"$tmp/redis-$mode.log" 2>&1 &
  pids+=($!)
  nginx_port[$mode]=$(free_port)
  mkdir -p "$tmp/nginx-$mode"
  cat >"$tmp/nginx-$mode/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $tmp/nginx-$mode/nginx.pid;
error_log $tmp/nginx-$mode/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $tmp/nginx-$mode/body;
  proxy_temp_path $tmp/nginx-$mode/proxy;
  fastcgi_temp_path $tmp/nginx-$mode/fastcgi;
  uwsgi_temp_path $tmp/nginx-$mode/uwsgi;
  scgi_temp_path $tmp/nginx-$mode/scgi;
  server { listen 127.0.0.1:${nginx_port[$mode]}; root $tmp/html; }
}
EOF
  "${prefix[@]}" nginx -p "$tmp/nginx-$mode" -c "$tmp/nginx-$mode/nginx.conf" \
    >"$tmp/nginx-$mode.log" 2>&1 &
  pids+=($!)
  wait_listen "${iperf_port[$mode]}"
  wait_listen "${redis_port[$mode]}"
  wait_listen "${nginx_port[$mode]}"
done

# Plain servers for the connect workload: one whose host answers the probe
# with ICMP port unreachable (nothing on that UDP port), and, as root, one
# whose host drops UDP to its port.
connect_kinds=(icmp)
declare -A setup_port
setup_port[icmp]=$(free_port)
"$bench" setup --raw --listen "127.0.0.1:${setup_port[icmp]}" >/dev/null 2>&1 &
pids+=($!)
wait_listen "${setup_port[icmp]}"
if [ "$(id -u)" -eq 0 ] && command -v iptables >/dev/null; then
  setup_port[drop]=$(free_port)
  "$bench" setup --raw --listen "127.0.0.1:${setup_port[drop]}" >/dev/null 2>&1 &
  pids+=($!)
  wait_listen "${setup_port[drop]}"
  iptables -I INPUT -i lo -p udp --dport "${setup_port[drop]}" -j DROP && dropped=${setup_port[drop]}
  [ -n "$dropped" ] && connect_kinds+=(drop)
fi

for ((r = 1; r <= rounds; r++)); do
  order=(plain tether)
  [ $((r % 2)) -eq 0 ] && order=(tether plain)
  for mode in "${order[@]}"; do
    prefix=()
    [ "$mode" = tether ] && prefix=("$tether_run" --)
    "${prefix[@]}" iperf3 -c 127.0.0.1 -p "${iperf_port[$mode]}" "${iperf_len[@]}" -J \
      >"$tmp/iperf-$mode-$r.json"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9)' \
      "$tmp/iperf-$mode-$r.json" >>"$tmp/iperf-$mode.gbit"
    "${prefix[@]}" redis-benchmark -p "${redis_port[$mode]}" -t set,get -n "$redis_n" \
      -c "$redis_c" -q --csv >"$tmp/redis-$mode-$r.csv"
    for op in SET GET; do
      grep "^\"$op\"" "$tmp/redis-$mode-$r.csv" | cut -d, -f2 | tr -d '"' >>"$tmp/redis-$mode.$op"
    done
    "${prefix[@]}" ab -q -k -n "$nginx_n" -c 8 "http://127.0.0.1:${nginx_port[$mode]}/1m.bin" \
      >"$tmp/ab-$mode-$r.out" 2>&1
    grep -q "^Failed requests: *0$" "$tmp/ab-$mode-$r.out" ||
      { echo "preload-bench: ab ($mode) failed: $(tail -n 3 "$tmp/ab-$mode-$r.out")" >&2; exit 1; }
    sed -n 's/^Requests per second: *\([0-9.]*\).*/\1/p' "$tmp/ab-$mode-$r.out" >>"$tmp/nginx-$mode.rps"
    for k in "${connect_kinds[@]}"; do
      "${prefix[@]}" "$bench" setup --raw --count "$connects" \
        --connect "127.0.0.1:${setup_port[$k]}" >"$tmp/connect-$k-$mode-$r.json"
      python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["setup_us_median"])' \
        "$tmp/connect-$k-$mode-$r.json" >>"$tmp/connect-$k-$mode.us"
    done
    echo "round $r/$rounds $mode: iperf3 $(tail -n 1 "$tmp/iperf-$mode.gbit") Gbit/s," \
      "SET $(tail -n 1 "$tmp/redis-$mode.SET")/s, GET $(tail -n 1 "$tmp/redis-$mode.GET")/s," \
      "nginx $(tail -n 1 "$tmp/nginx-$mode.rps")/s" >&2
  done
done

python3 - "$tmp" "$rounds" "${connect_kinds[@]}" <<'PYEOF'
import json, statistics, sys
tmp, rounds, kinds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def vals(name):
    return [float(x) for x in open(f"{tmp}/{name}").read().split()]
def spread(v):
    m = statistics.median(v)
    return (max(v) - min(v)) / m if m else 0.0
rows = [("iperf3 (Gbit/s)", "iperf-%s.gbit", "iperf3"), ("redis SET (req/s)", "redis-%s.SET", "redis_set"),
        ("redis GET (req/s)", "redis-%s.GET", "redis_get"),
        ("nginx 1 MiB (req/s)", "nginx-%s.rps", "nginx")]
names = {"icmp": "connect, ICMP (us)", "drop": "connect, no ICMP (us)"}
rows += [(names[k], "connect-" + k + "-%s.us", "connect_" + k) for k in kinds]
out = {"rounds": rounds}
print(f"{'workload':<18} {'plain':>11} {'tether-run':>11} {'ratio':>6}   "
      f"{'spread plain':>12} {'spread tether':>13}   per-round ratios (min..max)")
for label, pat, key in rows:
    p, t = vals(pat % "plain"), vals(pat % "tether")
    mp, mt = statistics.median(p), statistics.median(t)
    ratio = mt / mp if mp else 0.0
    pairs = [b / a for a, b in zip(p, t) if a]
    print(f"{label:<18} {mp:>11.2f} {mt:>11.2f} {ratio:>6.3f}   {spread(p):>11.1%} {spread(t):>13.1%}"
          f"   {min(pairs):.3f}..{max(pairs):.3f} (median {statistics.median(pairs):.3f})")
    out[key] = {"plain": mp, "tether": mt, "ratio": ratio, "plain_all": p, "tether_all": t,
                "spread_plain": spread(p), "spread_tether": spread(t), "pair_ratios": pairs}
print(f"(medians of {rounds} rounds; spread = (max - min) / median; connect: median time of a "
      f"connect, 1-byte echo and close to a plain server, lower is better)")
print(json.dumps(out))
PYEOF
# Evidence that the tether rounds used sessions (not a plain fallback).
echo "tether sessions accepted: iperf3 $(grep -c accepted "$tmp/iperf-tether.log" || true)," \
  "redis $(grep -c accepted "$tmp/redis-tether.log" || true)," \
  "nginx $(cat "$tmp/nginx-tether.log" "$tmp/nginx-tether/error.log" | grep -c accepted || true)" >&2
