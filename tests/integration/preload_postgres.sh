#!/usr/bin/env bash
# PostgreSQL under tether-run: the postmaster accepts and forks a backend
# per connection (which takes the session over through the fork's relay).
# Expect:
#  1. pgbench not under tether-run (plain TCP) runs 400 transactions, none
#     failed;
#  2. pgbench under tether-run, 4 clients, runs 4000 transactions while
#     every live connection to the server is killed (ss -K) every 0.5 s:
#     none failed, pgbench exits 0, its log shows resumes;
#  3. the server logs no FATAL or PANIC.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBIN" ] && [ -x "$PGBIN/postgres" ] && [ -x "$PGBIN/initdb" ] || skip "PostgreSQL not installed"
command -v pgbench >/dev/null || skip "pgbench not installed"
id postgres >/dev/null 2>&1 || skip "no postgres user"
export TETHER_RECONNECT_MAX_MS=200
port=$(free_port)
chmod 755 "$TMP"
mkdir "$TMP/pg"
chown postgres "$TMP/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/pg/data" -A trust -U postgres >"$TMP/initdb.log" 2>&1 ||
  fail "initdb: $(tail -n 3 "$TMP/initdb.log")"
TETHER_LOG=info spawn - /dev/null "$TMP/server.log" runuser -u postgres -- "$TETHER_RUN" -- \
  "$PGBIN/postgres" -D "$TMP/pg/data" -p "$port" -k "$TMP/pg" -c listen_addresses=127.0.0.1 \
  -c max_connections=20
server=$BG_PID
wait_listen "$server" "$port" "" 30000
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
pgbench -i -s 1 postgres >"$TMP/init.out" 2>&1 || fail "pgbench -i: $(tail -n 3 "$TMP/init.out")"

# processed OUT WANT: pgbench's report says WANT transactions, none failed.
processed() {
  grep -q "number of transactions actually processed: $2/$2" "$1" &&
    grep -q "number of failed transactions: 0 " "$1"
}

# 1. A plain client.
pgbench -c 2 -t 200 postgres >"$TMP/plain.out" 2>&1 || fail "plain pgbench: $(tail -n 3 "$TMP/plain.out")"
processed "$TMP/plain.out" 400 || fail "plain pgbench: $(grep -E 'processed|failed' "$TMP/plain.out")"
log "plain client: $(grep 'actually processed' "$TMP/plain.out")"

# 2. Under tether-run, with kills.
killer() {
  local i killed n=0
  for ((i = 0; i < 240; i++)); do
    sleep 0.5
    killed=$(kill_tcp 127.0.0.1 "$port")
    [ -n "$killed" ] && n=$((n + $(wc -l <<<"$killed"))) && echo "kills: $n"
  done
  return 0
}
TETHER_LOG=info spawn - "$TMP/bench.out" "$TMP/bench.log" "$TETHER_RUN" -- \
  pgbench -c 4 -j 2 -t 1000 postgres
cli=$BG_PID
spawn - "$TMP/killer.log" "$TMP/killer.err" killer
k=$BG_PID
wait_exit "$cli" 120000 || fail "pgbench still running after 120 s"
rc=$WAIT_RC
stop "$k"
[ "$rc" -eq 0 ] || fail "pgbench under tether-run exited with $rc: $(tail -n 3 "$TMP/bench.out")"
processed "$TMP/bench.out" 4000 || fail "pgbench under tether-run: $(grep -E 'processed|failed' "$TMP/bench.out")"
kills=$(tail -n 1 "$TMP/killer.log" | sed 's/kills: //')
resumes=$(state_lines "$TMP/bench.log" "$RE_RESUMED" | wc -l)
log "tether client: $(grep 'actually processed' "$TMP/bench.out"), $(grep 'failed transactions' "$TMP/bench.out"), connections killed: ${kills:-0}, resumes: $resumes"
[ "${kills:-0}" -ge 3 ] || fail "only ${kills:-0} connections killed during pgbench"
[ "$resumes" -ge 3 ] || fail "only $resumes resumes in pgbench's log"

# 3. The server.
if grep -E 'FATAL|PANIC' "$TMP/server.log" >"$TMP/fatal"; then
  fail "postgres: $(head -n 3 "$TMP/fatal")"
fi
kill -INT "$(head -n 1 "$TMP/pg/data/postmaster.pid")" 2>/dev/null || true
wait_exit "$server" 20000 || true
pass
