#!/usr/bin/env bash
# nginx as it is usually run -- a master process and workers that share the
# master's listener (EPOLLEXCLUSIVE, accept() in every worker) -- under
# tether-run, with two workers and then with one.
# Expect, each time: curl not under tether-run (a plain client) fetches
# files byte-exact over keep-alive and fresh connections, as from plain TCP;
# curl under tether-run does the same over sessions; nginx logs no alert.
# With two workers, curl under tether-run also downloads 200 MiB byte-exact
# while its live TCP connection is killed (ss -K) three times, and its log
# shows the session resumed each time.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
for t in nginx curl; do
  command -v "$t" >/dev/null || skip "$t not installed"
done
export TETHER_RECONNECT_MAX_MS=200
BIG=$((200 * 1024 * 1024))
port=$(free_port)
mkdir -p "$TMP/html" "$TMP/logs"
random_file "$TMP/html/1m.bin" $((1024 * 1024))
random_file "$TMP/html/big.bin" "$BIG"
chmod a+rx "$TMP" "$TMP/html" && chmod a+r "$TMP"/html/* # workers run as www-data

# start_nginx WORKERS: nginx in the foreground (its master), under tether-run.
start_nginx() {
  cat >"$TMP/nginx.conf" <<EOF
worker_processes $1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/logs/error.log info;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $TMP/body;
  proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fastcgi;
  uwsgi_temp_path $TMP/uwsgi;
  scgi_temp_path $TMP/scgi;
  server { listen 127.0.0.1:$port; root $TMP/html; }
}
EOF
  : >"$TMP/logs/error.log"
  TETHER_LOG=info spawn - "$TMP/nginx.out" "$TMP/nginx.log" "$TETHER_RUN" -- \
    nginx -p "$TMP" -c "$TMP/nginx.conf"
  server=$BG_PID
  wait_listen "$server" "$port"
}

# fetch_small WHO [tether-run]: ten files over one keep-alive connection,
# then ten over fresh connections, each byte-exact.
fetch_small() {
  local who=$1 i
  shift
  local -a urls=() outs=()
  for ((i = 0; i < 10; i++)); do
    urls+=("http://127.0.0.1:$port/1m.bin")
    outs+=(-o "$TMP/ka.$i")
  done
  "$@" curl -sSf --max-time 30 "${outs[@]}" "${urls[@]}" 2>"$TMP/curl.err" ||
    fail "$who curl (keep-alive) failed: $(tail -n 2 "$TMP/curl.err")"
  for ((i = 0; i < 10; i++)); do
    cmp -s "$TMP/html/1m.bin" "$TMP/ka.$i" || fail "$who keep-alive file $i differs"
    "$@" curl -sSf --max-time 30 -o "$TMP/fresh.$i" "http://127.0.0.1:$port/1m.bin" \
      2>"$TMP/curl.err" || fail "$who curl (connection $i) failed: $(tail -n 2 "$TMP/curl.err")"
    cmp -s "$TMP/html/1m.bin" "$TMP/fresh.$i" || fail "$who file $i differs"
  done
  log "$who: 20 files of 1 MiB byte-exact"
}

no_alert() {
  if grep -E '\[(alert|emerg|crit)\]' "$TMP/logs/error.log" >"$TMP/alerts"; then
    fail "nginx ($1): $(head -n 3 "$TMP/alerts")"
  fi
}

for workers in 2 1; do
  start_nginx "$workers"
  fetch_small "plain client, $workers worker(s)"
  fetch_small "tether client, $workers worker(s)" "$TETHER_RUN" --
  if [ "$workers" -eq 2 ]; then
    TETHER_LOG=info spawn - "$TMP/big.out" "$TMP/big.log" "$TETHER_RUN" -- curl -sSf \
      --max-time 120 --limit-rate 40M -o "$TMP/big" "http://127.0.0.1:$port/big.bin"
    cli=$BG_PID
    kill_at_progress "$TMP/big" "$BIG" "$port" 3 >"$TMP/kills"
    kill_stream_done "curl, 200 MiB through a worker" "$cli" "$TMP/html/big.bin" "$TMP/big" \
      "$TMP/big.log" "$TMP/kills"
  fi
  alive "$server" || fail "nginx ($workers workers) died"
  no_alert "$workers workers"
  pids=$(pgrep -P "$server" | tr '\n' ' ')
  n=$(wc -w <<<"$pids")
  [ "$n" -eq "$workers" ] || fail "nginx runs $n workers, not $workers"
  PIDS+=($pids) # killed at the end too, should the master not end them
  stop "$server"
done
pass
