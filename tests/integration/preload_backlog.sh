#!/usr/bin/env bash
# A server under tether-run that stops calling accept() (under ulimit -n 80,
# listen backlog 8) while plain clients keep connecting, as TCP's backlog
# would have it:
#   - the engine holds at most 4 of them for the program (its bound, below
#     backlog + 1 here), the rest wait in the kernel's queue: the server's
#     descriptors grow by no more than that, its CPU stays idle, and its own
#     open() still works;
#   - a tether client's session on that server survives a connection kill
#     meanwhile: its resume gets through the full listener (the engine then
#     holds the plain connections ahead of it for the program, up to twice
#     backlog + 1);
#   - once the program accepts again, it gets the waiting connections.
# At first the engine took every connection: 201 descriptors under ulimit
# -n 200, the program's own open() failing with EMFILE; then it held up to
# backlog + 1 of them (4,097 for listen(fd, -1)).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
[ -n "$PY" ] || skip "python3 not installed"
BACKLOG=8
FLOOD=100

cat >"$TMP/server.py" <<'EOF'
# server.py PORT BACKLOG DIR: accepts one connection and echoes it in a
# thread; opens 20 files once DIR/open exists; accepts again once
# DIR/accept exists, and prints how many it got within 20 s.
import os, socket, sys, threading, time
port, backlog, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(backlog)
c, _ = ls.accept()
def echo():
    while True:
        b = c.recv(65536)
        if not b:
            return
        c.sendall(b)
threading.Thread(target=echo, daemon=True).start()
print("accepted the session", flush=True)
def wait_for(name):
    while not os.path.exists(os.path.join(d, name)):
        time.sleep(0.02)
wait_for("open")
try:
    files = [open("/dev/null") for _ in range(20)]
    print("opened 20 files", flush=True)
except OSError as e:
    print("open failed:", e, flush=True)
wait_for("accept")
ls.settimeout(1.0)
got, end = 0, time.monotonic() + 20
while time.monotonic() < end and got < backlog + 1:
    try:
        ls.accept()
        got += 1
    except socket.timeout:
        pass
print("accepted", got, flush=True)
time.sleep(3600)
EOF

cat >"$TMP/client.py" <<'EOF'
# client.py PORT ROUNDS: line round trips, each checked, 20 ms apart;
# prints the round count as it goes.
import socket, sys, time
port, rounds = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
for i in range(rounds):
    line = ("round %d " % i + "x" * (i % 50) + "\n").encode()
    s.sendall(line)
    back = f.readline()
    if back != line:
        print("round", i, "came back as", back, flush=True)
        sys.exit(1)
    print("round", i + 1, flush=True)
    time.sleep(0.02)
print("all rounds ok", flush=True)
EOF

cat >"$TMP/flood.py" <<'EOF'
# flood.py PORT N: N plain connects, held open.
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
    except BlockingIOError:
        pass
    socks.append(s)
print("dialled", len(socks), flush=True)
time.sleep(3600)
EOF

fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
cpu_ms() { # utime + stime of PID, in ms
  awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"
}

port=$(free_port)
server_run() { ulimit -n 80; exec "$TETHER_RUN" -- "$PY" "$TMP/server.py" "$port" "$BACKLOG" "$TMP"; }
TETHER_LOG=info spawn - "$TMP/server.out" "$TMP/server.log" server_run
server=$BG_PID
wait_listen "$server" "$port"
TETHER_LOG=info spawn - "$TMP/client.out" "$TMP/client.log" "$TETHER_RUN" -- \
  "$PY" "$TMP/client.py" "$port" 600
client=$BG_PID
wait_grep "$TMP/server.out" "accepted the session" 10000 || fail "the server never accepted the session"
wait_grep "$TMP/client.out" "^round 20$" 15000 || fail "the session's rounds do not start"
base=$(fds "$server")

spawn - "$TMP/flood.out" "$TMP/flood.err" "$PY" "$TMP/flood.py" "$port" "$FLOOD"
wait_grep "$TMP/flood.out" "dialled" 10000 || fail "the plain clients did not dial"
sleep 1.5 # the engine takes what it will
held=$(fds "$server")
cpu0=$(cpu_ms "$server")
sleep 2
cpu=$(($(cpu_ms "$server") - cpu0))
log "server: $base descriptors before $FLOOD plain connects, $held after; ${cpu} ms of CPU in 2 s"
[ "$held" -le $((base + 4 + 1)) ] ||
  fail "the server holds $held descriptors ($base before): more than 4 connections taken"
[ "$cpu" -le 400 ] || fail "the server used $cpu ms of CPU in 2 s with nobody accepting"

touch "$TMP/open"
wait_grep "$TMP/server.out" "opened 20 files|open failed" 10000 || fail "the server did not try to open files"
grep -q "opened 20 files" "$TMP/server.out" || fail "server: $(grep 'open failed' "$TMP/server.out")"

# The session's connection dies; its resume must pass the full listener.
cport=$(ss -Htnp dst 127.0.0.1 dport = ":$port" | grep "pid=$client," | awk '{print $4}' | sed 's/.*://' | head -1)
[ -n "$cport" ] || fail "no TCP connection of the client's found"
before=$(grep -c '^round' "$TMP/client.out")
ss -K -H -tn src 127.0.0.1 sport = ":$cport" dst 127.0.0.1 dport = ":$port" >/dev/null
wait_exit "$client" 60000 || fail "the client is still running after 60 s: $(tail -n 1 "$TMP/client.out")"
[ "$WAIT_RC" -eq 0 ] || fail "the client failed ($WAIT_RC): $(tail -n 2 "$TMP/client.out")"
grep -q "all rounds ok" "$TMP/client.out" || fail "the client did not finish its rounds"
resumes=$(state_lines "$TMP/client.log" "$RE_RESUMED" | wc -l)
log "client: killed after $before rounds, resumed $resumes time(s), all 600 rounds byte-exact"
[ "$resumes" -ge 1 ] || fail "the client never resumed"
after=$(fds "$server")
log "server: $after descriptors after the resume"
[ "$after" -le $((base + 20 + 2 * (BACKLOG + 1) + 2)) ] ||
  fail "the server holds $after descriptors ($base before the flood, 20 files since)"

touch "$TMP/accept"
wait_grep "$TMP/server.out" "^accepted [0-9]" 30000 || fail "the server's accepts did not end"
got=$(grep "^accepted [0-9]" "$TMP/server.out" | awk '{print $2}')
log "server: accepted $got waiting connections"
[ "$got" -ge $((BACKLOG + 1)) ] || fail "the server accepted only $got connections"
alive "$server" || fail "the server died"
pass
