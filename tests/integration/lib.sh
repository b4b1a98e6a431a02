# lib.sh — sourced by every integration test (bash).
# shellcheck disable=SC2034 # variables used by the scripts that source this
#
# Gives a test: a private temp dir ($TMP), tracked background processes that
# are always killed on exit, network namespaces that are always deleted,
# bounded waits, free-port picking, SHA-256 comparison, --stats parsing and
# fail/skip/pass helpers.  Exit codes: 0 pass, 1 fail, 77 skip (ctest's
# SKIP_RETURN_CODE).
#
# Conventions: every wait is bounded in time; every process a test starts goes
# through spawn (so cleanup can end it by pid); namespaces come from
# netns_pair (so cleanup deletes them); addresses 10.x exist only inside those
# namespaces.
#
# Environment: TETHER_ECHO, TETHER_BENCH (paths of the tools, set by ctest);
# TETHER_IT_KEEP=1 keeps $TMP after the test; TETHER_IT_VERBOSE=1 dumps every
# log on success too.

set -Eeuo pipefail
export LC_ALL=C
# Tests start from the library's defaults; each sets what it needs.
unset TETHER_HEARTBEAT_MS TETHER_SUSPEND_MS TETHER_RECONNECT_MAX_MS \
  TETHER_GIVE_UP_S TETHER_LOG TETHER_PROBE_PORTS
# Except one: programs under tether-run wait a full second for a probe's
# answer on first contact (by default, half a connect time: on a busy
# machine a preloaded server can answer later, and the connection would be
# plain where a test means a session).  preload_detect tests the default.
export TETHER_PROBE_MS=1000

IT_NAME=$(basename "$0" .sh)
IT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=$(command -v /usr/bin/python3 || command -v python3 || true)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-it.$IT_NAME.XXXXXX")
PIDS=()
NETNS=()
IT_T0=${EPOCHREALTIME/./}

# The library logs session state changes at TETHER_LOG=info as lines that
# contain these words (matched case-insensitively, JSON lines excluded).
RE_SUSPENDED='suspended'
RE_RESUMED='resumed'
RE_CLOSED='closed'
RE_FAILED='failed'

# ---- time and messages -------------------------------------------------------

# Microseconds since the epoch.
now_us() { echo "${EPOCHREALTIME/./}"; }

# us_to_s MICROSECONDS -> "1.234"
us_to_s() {
  local us=$1 sign=''
  if [ "$us" -lt 0 ]; then sign=-; us=$((-us)); fi
  printf '%s%d.%03d' "$sign" $((us / 1000000)) $(((us % 1000000) / 1000))
}

log() {
  printf '[%s +%ss] %s\n' "$IT_NAME" "$(us_to_s $(($(now_us) - IT_T0)))" "$*"
}

# dump_logs: prints the tail of every log/output file of the test.
dump_logs() {
  local f
  for f in "$TMP"/*.log "$TMP"/*.err; do
    [ -s "$f" ] || continue
    echo "----- $(basename "$f") (last 40 lines of $(wc -l <"$f")) -----"
    tail -n 40 "$f" | cut -c1-400
  done
  echo "----- end of logs -----"
}

fail() {
  trap - ERR
  echo "FAIL: $IT_NAME: $*" >&2
  dump_logs >&2
  exit 1
}

skip() {
  trap - ERR
  echo "SKIP: $IT_NAME: $*"
  exit 77
}

# pass: stops every process gracefully (so sanitizers get to report leaks),
# checks the logs for sanitizer reports, and exits 0.
pass() {
  trap - ERR
  stop_all
  check_sanitizers
  [ "${TETHER_IT_VERBOSE:-0}" = 1 ] && dump_logs
  log "PASS"
  exit 0
}

on_err() {
  local rc=$? line=$1 cmd=$2
  fail "unexpected failure (exit $rc) at line $line: $cmd"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

# ---- prerequisites -----------------------------------------------------------

require_root() {
  [ "$(id -u)" -eq 0 ] || skip "needs root (ss -K, ip netns, iptables)"
}

require_tools() {
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || fail "\$$v is not set (run through ctest, or export it)"
    [ -x "${!v}" ] || fail "\$$v=${!v} is not an executable"
  done
  [ -n "$PY" ] || fail "python3 not found"
}

require_netns() {
  local probe="tether-probe$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    skip "ip netns unavailable"
  fi
  ip netns del "$probe" 2>/dev/null || true
}

# ---- processes -----------------------------------------------------------------

# spawn IN OUT ERR CMD ARGS...: runs CMD in the background with stdin from IN,
# stdout to OUT, stderr to ERR ("-" keeps the test's own, which only makes
# sense for stdin: ctest waits for every holder of the test's stdout).  The
# child opens the files itself, so fifos never block the test.  CMD may be a
# shell function.  The pid is left in BG_PID and tracked for cleanup.
# Environment assignments before spawn reach CMD: TETHER_LOG=info spawn ...
spawn() {
  local in=$1 out=$2 err=$3
  shift 3
  (
    if [ "$in" != - ]; then exec <"$in"; fi
    if [ "$out" != - ]; then exec >"$out"; fi
    if [ "$err" != - ]; then exec 2>"$err"; fi
    if declare -F "$1" >/dev/null; then
      "$@"
      exit
    fi
    exec "$@"
  ) &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

alive() { kill -0 "$1" 2>/dev/null; }

# kill9 PID: SIGKILL and reap (quietly: no "Killed" job message).
kill9() {
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# wait_exit PID TIMEOUT_MS: waits until PID exits (sets WAIT_RC to its exit
# status and WAIT_US to the time it was seen exiting) or the timeout passes
# (returns 1, PID still running).
wait_exit() {
  local pid=$1 deadline=$(($(now_us) + $2 * 1000))
  WAIT_RC=
  WAIT_US=
  while alive "$pid"; do
    [ "$(now_us)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
  WAIT_US=$(now_us)
  WAIT_RC=0
  wait "$pid" 2>/dev/null || WAIT_RC=$?
  return 0
}

# stop PID: SIGTERM, then SIGKILL after 2 s.
stop() {
  local pid=$1 i
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.02
  done
  if alive "$pid"; then
    log "note: pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) still running 2 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_all: stop every tracked process (children first: reverse order).
stop_all() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop "${PIDS[i]}"
  done
}

cleanup() {
  local rc=$? i ns pid p
  trap - ERR
  disown -a 2>/dev/null || true # no "Killed" job notices
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -KILL "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    pid=
    for p in "${PIDS[@]}"; do alive "$p" && pid=$p; done
    [ -z "$pid" ] && break
    sleep 0.02
  done
  for ns in "${NETNS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ "${TETHER_IT_KEEP:-0}" = 1 ]; then
    echo "$IT_NAME: files kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted (SIGINT)"' INT
trap 'fail "terminated (SIGTERM) after $(us_to_s $(($(now_us) - IT_T0))) s; deadline ${TETHER_IT_TIMEOUT:-300} s"' TERM

# The watchdog: SIGTERM to the test after $TETHER_IT_TIMEOUT s (ctest's own
# timeout would SIGKILL it, leaving processes and namespaces behind).
watchdog() {
  local i
  for ((i = 0; i < $1; i++)); do
    sleep 1
  done
  kill -TERM "$2"
}

spawn - /dev/null /dev/null watchdog "${TETHER_IT_TIMEOUT:-300}" "$$"

# check_sanitizers: fails if any log of this test holds an ASan/UBSan/LSan/TSan
# report.
check_sanitizers() {
  local hits
  hits=$(grep -l -E 'ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error: ' \
    "$TMP"/*.log "$TMP"/*.err 2>/dev/null || true)
  [ -z "$hits" ] || fail "sanitizer report in: $hits"
}

# ---- ports and readiness ---------------------------------------------------------

# free_port: prints a port free for TCP and UDP on this host, below the
# ephemeral range so no client connection can be using it.
free_port() {
  local i p
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Htuan "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return 0
    fi
  done
  fail "no free port found"
}

# wait_listen PID PORT [NETNS] [TIMEOUT_MS]: waits until a TCP listener on
# PORT exists (in NETNS if given); fails early if PID dies.
wait_listen() {
  local pid=$1 port=$2 ns=${3:-} deadline=$(($(now_us) + ${4:-10000} * 1000))
  local -a in_ns=()
  [ -n "$ns" ] && in_ns=(ip netns exec "$ns")
  while [ -z "$("${in_ns[@]}" ss -Htln "sport = :$port" 2>/dev/null)" ]; do
    alive "$pid" || fail "process $pid exited before listening on port $port"
    [ "$(now_us)" -lt "$deadline" ] || fail "nothing listens on port $port after ${4:-10000} ms"
    sleep 0.02
  done
}

# file_size FILE: bytes (0 if missing).
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# wait_size FILE BYTES TIMEOUT_MS [PID]: waits until FILE holds >= BYTES;
# fails on timeout, or if PID (the writer) exits first.
wait_size() {
  local f=$1 want=$2 deadline=$(($(now_us) + $3 * 1000)) pid=${4:-}
  while [ "$(file_size "$f")" -lt "$want" ]; do
    if [ -n "$pid" ] && ! alive "$pid"; then
      [ "$(file_size "$f")" -ge "$want" ] && return 0
      fail "process $pid exited while waiting for $(basename "$f") to reach $want bytes (has $(file_size "$f"))"
    fi
    if [ "$(now_us)" -ge "$deadline" ]; then
      [ "$(file_size "$f")" -ge "$want" ] && return 0 # it grew since the loop's check
      fail "$(basename "$f") has $(file_size "$f") bytes after $3 ms, expected >= $want"
    fi
    sleep 0.02
  done
}

# wait_grep FILE REGEX TIMEOUT_MS: waits until FILE has a line matching the
# extended REGEX (case-insensitive); returns 1 on timeout.
wait_grep() {
  local f=$1 re=$2 deadline=$(($(now_us) + $3 * 1000))
  until grep -Eqi -- "$re" "$f" 2>/dev/null; do
    [ "$(now_us)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
}

# ---- logs with timestamps --------------------------------------------------------

# stamp: copies stdin lines to stdout, each prefixed with the microsecond
# timestamp at which it was read.
stamp() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s %s\n' "${EPOCHREALTIME/./}" "$line"
  done
}

# stamped_log NAME: creates the fifo $STAMP_FIFO and a reader that copies it,
# timestamped, to $TMP/NAME.log.  Then: spawn IN OUT "$STAMP_FIFO" CMD...
stamped_log() {
  STAMP_FIFO="$TMP/$1.fifo"
  mkfifo "$STAMP_FIFO"
  spawn "$STAMP_FIFO" "$TMP/$1.log" /dev/null stamp
}

# state_lines LOG REGEX: the log's lines matching REGEX (case-insensitive),
# without JSON lines (the --stats object names fields like suspended_ms).
state_lines() {
  grep -Ei -- "$2" "$1" 2>/dev/null | grep -v '^[0-9]* *{' | grep -v '^{' || true
}

# first_stamp_after LOG REGEX T_US: timestamp (us) of the first line of a
# stamped LOG matching REGEX at or after T_US; empty if none.
first_stamp_after() {
  state_lines "$1" "$2" | awk -v t="$3" '$1 >= t { print $1; exit }'
}

# wait_stamp_after LOG REGEX T_US TIMEOUT_MS: waits for a line of a stamped
# LOG matching REGEX at or after T_US; sets STAMP to its timestamp, or
# returns 1 on timeout.
wait_stamp_after() {
  local deadline=$(($(now_us) + $4 * 1000))
  STAMP=
  while :; do
    STAMP=$(first_stamp_after "$1" "$2" "$3")
    [ -n "$STAMP" ] && return 0
    [ "$(now_us)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
}

# ---- data ------------------------------------------------------------------------

sha() { sha256sum "$1" | cut -d' ' -f1; }

# random_file FILE BYTES
random_file() {
  head -c "$2" /dev/urandom >"$1"
  [ "$(file_size "$1")" -eq "$2" ] || fail "could not create $1"
}

# assert_same_file EXPECTED ACTUAL WHAT
assert_same_file() {
  local a=$1 b=$2 what=$3
  if cmp -s "$a" "$b"; then
    log "$what: byte-exact ($(file_size "$b") bytes, sha256 $(sha "$b" | cut -c1-16)…)"
    return 0
  fi
  fail "$what differs: expected $(file_size "$a") bytes sha256 $(sha "$a"),
  got $(file_size "$b") bytes sha256 $(sha "$b");
  first difference: $(cmp "$a" "$b" 2>&1 | head -n 1)"
}

# stats_get FILE KEY: the KEY field of the last JSON object in FILE (the
# --stats line; a timestamp prefix is tolerated).  Fails if there is none.
stats_get() {
  local v
  v=$("$PY" - "$1" "$2" <<'EOF'
import json, sys
obj = None
for line in open(sys.argv[1], errors="replace"):
    i = line.find("{")
    if i < 0:
        continue
    try:
        o = json.loads(line[i:])
    except ValueError:
        continue
    if isinstance(o, dict):
        obj = o
if obj is None:
    sys.exit("no JSON --stats object in " + sys.argv[1])
if sys.argv[2] not in obj:
    sys.exit("--stats object has no %r: %s" % (sys.argv[2], json.dumps(obj)))
v = obj[sys.argv[2]]
if not isinstance(v, int) or isinstance(v, bool) or v < 0:
    sys.exit("--stats %r is not a non-negative integer: %r" % (sys.argv[2], v))
print(v)
EOF
  ) || fail "$(basename "$1"): cannot read --stats field $2"
  echo "$v"
}

# ---- generators --------------------------------------------------------------------

# "${THROTTLE[@]}" BYTES_PER_S [CHUNK]: copies stdin to stdout at about that
# rate (an array, not a function, so that spawn execs it: one pid).
THROTTLE=("$PY" "$IT_DIR/throttle.py")

# numbered_lines COUNT INTERVAL_S: "line 1" .. "line COUNT", one per interval.
numbered_lines() {
  local i
  for ((i = 1; i <= $1; i++)); do
    echo "line $i" || return 0
    sleep "$2"
  done
}

# ---- network namespaces ------------------------------------------------------------

# netns_pair: namespaces $NS_C and $NS_S joined by a veth pair, client end
# $ADDR_C, server end $ADDR_S (10.x, existing only inside the namespaces).
netns_pair() {
  NS_C="tether-c$$"
  NS_S="tether-s$$"
  ADDR_C=10.237.0.1
  ADDR_S=10.237.0.2
  ip netns add "$NS_C"
  NETNS+=("$NS_C")
  ip netns add "$NS_S"
  NETNS+=("$NS_S")
  ip link add "tvc$$" netns "$NS_C" type veth peer name "tvs$$" netns "$NS_S"
  ip -n "$NS_C" addr add "$ADDR_C/24" dev "tvc$$"
  ip -n "$NS_S" addr add "$ADDR_S/24" dev "tvs$$"
  ip -n "$NS_C" link set lo up
  ip -n "$NS_S" link set lo up
  ip -n "$NS_C" link set "tvc$$" up
  ip -n "$NS_S" link set "tvs$$" up
}

# kill_tcp DST PORT: kills the live TCP connections to DST:PORT (the peer gets
# a reset); prints what was killed (nothing if there was no connection).
kill_tcp() {
  ss -K -H -tn dst "$1" dport = ":$2" 2>/dev/null || true
}

# kill_at_progress FILE SIZE PORT N [FILE2]: kills the TCP connections to
# 127.0.0.1:PORT N times, the k-th once FILE (and FILE2, if given) holds
# k/(N+2) of SIZE bytes -- by progress, not by the clock, so that a slow
# machine gets as many kills mid-stream as a fast one.  A kill that finds
# no connection (a resume in progress) is tried again every 20 ms.  Logs
# "kill K at BYTES [/ BYTES2]: <ss line>" for each real kill on stdout.
kill_at_progress() {
  local f=$1 size=$2 port=$3 n=$4 f2=${5:-} k try killed target
  for ((k = 1; k <= n; k++)); do
    target=$((size / (n + 2) * k))
    until [ "$(file_size "$f")" -ge "$target" ] &&
          { [ -z "$f2" ] || [ "$(file_size "$f2")" -ge "$target" ]; }; do
      sleep 0.02
    done
    killed=
    for ((try = 0; try < 500; try++)); do
      killed=$(kill_tcp 127.0.0.1 "$port")
      [ -n "$killed" ] && break
      sleep 0.02
    done
    [ -n "$killed" ] &&
      echo "kill $k at $(file_size "$f")${f2:+ / $(file_size "$f2")} of $size: $killed"
  done
  return 0
}

# kill_stream_done WHAT PID EXPECTED ACTUAL LOG KILLS: the end of a one-way
# stream through a program under tether-run whose connection
# kill_at_progress killed (its output in KILLS): PID exits 0 within 120 s,
# at least 3 kills, ACTUAL byte-exact, at least 3 resumes in LOG.
kill_stream_done() {
  local what=$1 pid=$2 expected=$3 actual=$4 log=$5 kills_file=$6 kills resumes
  wait_exit "$pid" 120000 || fail "$what: still running after 120 s"
  [ "$WAIT_RC" -eq 0 ] || fail "$what: exited with $WAIT_RC: $(tail -n 3 "$log")"
  kills=$(grep -c '^kill' "$kills_file" || true)
  [ "$kills" -ge 3 ] || fail "$what: only $kills connections killed during the stream"
  assert_same_file "$expected" "$actual" "$what, $kills kills"
  resumes=$(state_lines "$log" "$RE_RESUMED" | wc -l)
  log "$what: client resumes: $resumes"
  [ "$resumes" -ge 3 ] || fail "$what: only $resumes resumes in the client's log"
}

# duplex_kill_test NAME SRV_IN SRV_OUT SRV_CMD_ARRAY CLI_IN CLI_OUT CLI_CMD_ARRAY:
# the preload's streaming test for a program NAME that copies its input to a
# TCP peer and the peer's bytes to its output.  Both ends run under
# tether-run (the commands, given as names of arrays, include it), on $port
# (set by the caller before building the commands), and stream 8 MiB of
# random bytes each way at once, throttled to 2 MiB/s so the transfer lasts
# ~4 s, while the live TCP connection is killed (ss -K) 8 times, spread
# over the transfer by its progress (kill_at_progress).  The
# server reads $TMP/s_fifo and writes $TMP/s_out, the client $TMP/c_fifo and
# $TMP/c_out: through the spawn's stdin/stdout (SRV_IN, SRV_OUT, ...) or its
# own options (then "-" and /dev/null).  Expect: both directions byte-exact,
# both ends exit 0, the server's log shows at least 5 resumes.
duplex_kill_test() {
  local name=$1 srv_in=$2 srv_out=$3 cli_in=$5 cli_out=$6
  local -n srv_cmd=$4 cli_cmd=$7
  local size=$((8 * 1024 * 1024)) rate=$((2 * 1024 * 1024)) kills_wanted=5
  export TETHER_RECONNECT_MAX_MS=200 TETHER_PROBE_MS=1000

  random_file "$TMP/c_in" "$size"
  random_file "$TMP/s_in" "$size"
  spawn "$TMP/s_in" "$TMP/s_fifo" "$TMP/s_throttle.err" "${THROTTLE[@]}" "$rate" 65536
  TETHER_LOG=info spawn "$srv_in" "$srv_out" "$TMP/server.log" "${srv_cmd[@]}"
  local server=$BG_PID
  wait_listen "$server" "$port"
  spawn "$TMP/c_in" "$TMP/c_fifo" "$TMP/c_throttle.err" "${THROTTLE[@]}" "$rate" 65536
  TETHER_LOG=info spawn "$cli_in" "$cli_out" "$TMP/client.log" "${cli_cmd[@]}"
  local client=$BG_PID
  log "transfer of 2 x $size bytes started (server $server, client $client, port $port)"
  wait_size "$TMP/c_out" $((128 * 1024)) 20000 "$client"

  spawn - "$TMP/killer.log" "$TMP/killer.err" \
    kill_at_progress "$TMP/c_out" "$size" "$port" 8 "$TMP/s_out"
  local killer_pid=$BG_PID

  wait_exit "$client" 60000 || fail "client $name still running after 60 s"
  local crc=$WAIT_RC
  wait_exit "$server" 10000 || fail "server $name still running 10 s after the client ended"
  local src=$WAIT_RC
  stop "$killer_pid"
  local kills resumes
  kills=$(grep -c '^kill ' "$TMP/killer.log" || true)
  resumes=$(state_lines "$TMP/server.log" "$RE_RESUMED" | wc -l)
  log "connections killed: $kills; server resumes: $resumes"
  [ "$crc" -eq 0 ] || fail "client $name exited with $crc"
  [ "$src" -eq 0 ] || fail "server $name exited with $src"
  assert_same_file "$TMP/c_in" "$TMP/s_out" "client -> server"
  assert_same_file "$TMP/s_in" "$TMP/c_out" "server -> client"
  [ "$resumes" -ge "$kills_wanted" ] || fail "only $resumes resumes (wanted $kills_wanted; $kills kills)"
  pass
}
