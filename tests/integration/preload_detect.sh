#!/usr/bin/env bash
# Detection with its defaults (no TETHER_PROBE_MS), between two network
# namespaces joined by a veth pair, a client under tether-run making 20
# connections (each: connect, one byte each way, close) to:
#  1. a plain server whose host drops UDP to its port (no ICMP answer): only
#     the first connect waits for the probe's answer; the other 19 know the
#     destination is plain and do not wait;
#  2. a server under tether-run: every connection is a session, except that
#     the first may be plain if the server answers late on a busy machine --
#     then its late answer is still heard, and the second connect (a second
#     later) knows the destination is tether's;
#  3. a plain server on port 53, where a DNS server listens on UDP: no probe
#     datagram reaches it, unless TETHER_PROBE_PORTS names the port.
# Expect: every connection echoes; the client's debug log says so.
# And, against a server under tether-run that speaks first (a greeting):
#  4. a probe that arrives after its connection went to the program as
#     plain (it lost the race with the SYN) is not answered (the client
#     would speak tether to the program), while one for a connection to come
#     is;
#     But once the program closed that connection, a probe from the same
#     source port is a new connection's, and is answered (clients reuse
#     ports within seconds);
#  5. a plain client from an address that has an unanswered probe from
#     another port (a tether client beside it, or behind a NAT) gets the
#     greeting within 0.5 s (it waited the full TETHER_ACCEPT_WAIT_MS, 1 s,
#     before).
# And a storm of connects:
#  6. two clients under tether-run (tether-bench setup: connect, 1-byte
#     echo, close) make 600 connections each at once to one server under
#     tether-run: every probe to the known tether server is answered in time
#     (none falls back to plain TCP), and a connection made plain on first
#     contact is followed by sessions within 20 connects.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_netns
require_tools TETHER_RUN
unset TETHER_PROBE_MS
netns_pair

# server.py HOST PORT [greet]: answers "x" with "y", or greets first (and
# then keeps the connection until the client closes it).
cat >"$TMP/server.py" <<'EOF'
import socket, sys
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(64)
greet = sys.argv[3:] == ["greet"]
while True:
    c, _ = l.accept()
    if greet:
        c.sendall(b"hello\n")
        c.recv(1)
    elif c.recv(1) == b"x":
        c.sendall(b"y")
    c.close()
EOF
# client.py HOST PORT N PAUSE: N connections, PAUSE seconds after the first.
cat >"$TMP/client.py" <<'EOF'
import socket, sys, time
host, port, n, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for i in range(n):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"x")
    if s.recv(1) != b"y":
        sys.exit("connection %d: no echo" % i)
    s.close()
    if i == 0:
        time.sleep(pause)
print("ok %d" % n)
EOF
# udp_count.py HOST PORT FILE: counts datagrams to PORT into FILE.
cat >"$TMP/udp_count.py" <<'EOF'
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], int(sys.argv[2])))
n = 0
while True:
    u.recv(2048)
    n += 1
    with open(sys.argv[3], "w") as f:
        f.write("%d\n" % n)
EOF

in_c() { ip netns exec "$NS_C" "$@"; }
in_s() { ip netns exec "$NS_S" "$@"; }

# run_client NAME PORT PAUSE [ENV...]: 20 connections; the log in $TMP/NAME.log.
run_client() {
  local name=$1 port=$2 pause=$3
  shift 3
  in_c env TETHER_LOG=debug "$@" "$TETHER_RUN" -- "$PY" "$TMP/client.py" "$ADDR_S" "$port" 20 \
    "$pause" >"$TMP/$name.out" 2>"$TMP/$name.log" || fail "$name: client failed: $(tail -n 3 "$TMP/$name.log")"
  grep -q '^ok 20$' "$TMP/$name.out" || fail "$name: $(cat "$TMP/$name.out")"
}
probes() { grep -c "probe to port $2 ($3): $4" "$TMP/$1.log" || true; }

# 1. A plain server behind a host that drops UDP.
port=$(free_port)
in_s iptables -A INPUT -p udp --dport "$port" -j DROP
spawn - /dev/null "$TMP/plain.server.err" in_s "$PY" "$TMP/server.py" "$ADDR_S" "$port"
wait_listen "$BG_PID" "$port" "$NS_S"
run_client plain "$port" 0
first=$(probes plain "$port" unknown "no answer")
known=$(probes plain "$port" "known plain" "no answer")
log "plain server, UDP dropped: $first first connect waited ($(grep -m1 -o 'decided in [0-9]* us' "$TMP/plain.log" || true)), $known knew it plain"
[ "$first" -eq 1 ] && [ "$known" -eq 19 ] || fail "plain: $first unknown and $known known-plain connects, not 1 and 19"

# 2. A tether server.
port=$(free_port)
TETHER_LOG=info spawn - /dev/null "$TMP/tether.server.log" in_s "$TETHER_RUN" -- "$PY" \
  "$TMP/server.py" "$ADDR_S" "$port"
wait_listen "$BG_PID" "$port" "$NS_S"
run_client tether "$port" 1
first_yes=$(probes tether "$port" unknown tether)
first_late=$(probes tether "$port" unknown "no answer")
known=$(probes tether "$port" "known tether" "")
log "tether server: first connect $([ "$first_yes" -eq 1 ] && echo "a session" || echo "plain (late answer)"), $known later connects knew it tether's"
[ $((first_yes + first_late)) -eq 1 ] || fail "tether: the first connect's probe is not in the log"
[ "$known" -eq 19 ] || fail "tether: $known later connects knew the server was tether's, not 19"
sessions=$(grep -c 'known tether): tether' "$TMP/tether.log" || true)
log "tether server: $sessions of the 19 later connections were sessions"

# 3. No probe to a well-known UDP service's port, unless configured.
spawn - /dev/null "$TMP/dns.err" in_s "$PY" "$TMP/udp_count.py" "$ADDR_S" 53 "$TMP/dns.count"
dns=$BG_PID
spawn - /dev/null "$TMP/dns_tcp.err" in_s "$PY" "$TMP/server.py" "$ADDR_S" 53
wait_listen "$BG_PID" 53 "$NS_S"
run_client dns 53 0
sleep 0.2
[ ! -s "$TMP/dns.count" ] || fail "port 53: $(cat "$TMP/dns.count") probe datagrams reached the UDP service"
[ "$(probes dns 53 unknown "not probed")" -eq 20 ] || fail "port 53: the log does not say it was not probed"
run_client dns_probed 53 0 TETHER_PROBE_PORTS=53
wait_size "$TMP/dns.count" 1 5000
log "port 53: no probe by default; $(cat "$TMP/dns.count") with TETHER_PROBE_PORTS=53"
alive "$dns" || fail "the UDP service died"

# 4 and 5: raw probes and plain connections from the client's namespace.
# raw.py HOST PORT late|nat: probes by hand (tether(7), Detection) beside
# plain connections; prints what happened.
cat >"$TMP/raw.py" <<'EOF'
import os, socket, sys, time
host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def probe(tcp_port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((host, port))
    nonce = os.urandom(8)
    u.send(b"TTP1" + bytes([1, 0]) + tcp_port.to_bytes(2, "big") + nonce)
    u.settimeout(0.5)
    try:
        a = u.recv(64)
        return "yes" if a[4] == 2 and a[8:] == nonce else "other"
    except socket.timeout:
        return "none"
def bound():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    return s
if case == "late":
    s = bound()
    s.connect((host, port))
    if s.recv(6) != b"hello\n":
        sys.exit("no greeting")
    # The connection went to the program; now its probe "arrives".
    print("late probe:", probe(s.getsockname()[1]))
    print("probe for a connection to come:", probe(bound().getsockname()[1]))
    port_was = s.getsockname()[1]
    s.close()  # and so does the server: the port may be a new connection's
    time.sleep(0.1)
    print("probe from that port once closed:", probe(port_was))
else:
    print("probe:", probe(bound().getsockname()[1]))
    t = time.monotonic()
    s = bound()
    s.connect((host, port))
    got = s.recv(6)
    print("greeting after %.0f ms: %s" % ((time.monotonic() - t) * 1000, got == b"hello\n"))
EOF
port=$(free_port)
TETHER_LOG=debug spawn - /dev/null "$TMP/greeter.log" in_s "$TETHER_RUN" -- "$PY" \
  "$TMP/server.py" "$ADDR_S" "$port" greet
wait_listen "$BG_PID" "$port" "$NS_S"
in_c "$PY" "$TMP/raw.py" "$ADDR_S" "$port" late >"$TMP/late.out" 2>&1 || fail "late: $(cat "$TMP/late.out")"
log "$(tr '\n' ';' <"$TMP/late.out")"
grep -q '^late probe: none$' "$TMP/late.out" || fail "a late probe was answered: $(cat "$TMP/late.out")"
grep -q '^probe for a connection to come: yes$' "$TMP/late.out" || fail "$(cat "$TMP/late.out")"
grep -q '^probe from that port once closed: yes$' "$TMP/late.out" || fail "$(cat "$TMP/late.out")"
in_c "$PY" "$TMP/raw.py" "$ADDR_S" "$port" nat >"$TMP/nat.out" 2>&1 || fail "nat: $(cat "$TMP/nat.out")"
log "plain client beside a probe: $(tr '\n' ';' <"$TMP/nat.out")"
grep -q "^probe: yes$" "$TMP/nat.out" || fail "nat: $(cat "$TMP/nat.out")"
ms=$(sed -n 's/^greeting after \([0-9]*\) ms: True$/\1/p' "$TMP/nat.out")
[ -n "$ms" ] || fail "nat: no greeting: $(cat "$TMP/nat.out")"
[ "$ms" -lt 500 ] || fail "the plain client waited $ms ms for the greeting"

# 6. A storm of connects from two clients at once.
port=$(free_port)
spawn - /dev/null "$TMP/storm.server.log" in_s "$TETHER_RUN" -- "$TETHER_BENCH" setup --raw \
  --listen "$ADDR_S:$port"
wait_listen "$BG_PID" "$port" "$NS_S"
storm=()
for c in 1 2; do
  spawn - "$TMP/storm$c.out" "$TMP/storm$c.log" in_c env TETHER_LOG=debug "$TETHER_RUN" -- \
    "$TETHER_BENCH" setup --raw --count 600 --connect "$ADDR_S:$port"
  storm+=("$BG_PID")
done
for c in 1 2; do
  wait_exit "${storm[$((c - 1))]}" 100000 || fail "storm client $c still running after 100 s"
  [ "$WAIT_RC" -eq 0 ] || fail "storm client $c exited with $WAIT_RC: $(tail -n 2 "$TMP/storm$c.log")"
  grep -o "probe to port $port ([a-z ]*): [a-z ]*" "$TMP/storm$c.log" >"$TMP/storm$c.probes" || true
  sessions=$(grep -c 'tether$' "$TMP/storm$c.probes" || true)
  late=$(grep -c '(known tether): no answer' "$TMP/storm$c.probes" || true)
  plain_after=$(tail -n +21 "$TMP/storm$c.probes" | grep -c 'no answer$' || true)
  log "storm client $c: $(wc -l <"$TMP/storm$c.probes") connects, $sessions sessions, $late known-tether probes unanswered, $plain_after plain after the first 20 ($(grep -o '"setup_us_median":[0-9.]*,"setup_us_p90":[0-9.]*,"setup_us_p99":[0-9.e+]*' "$TMP/storm$c.out" | head -n 1))"
  [ "$(wc -l <"$TMP/storm$c.probes")" -eq 600 ] || fail "storm client $c: not every probe is in its log"
  [ "$late" -eq 0 ] && [ "$plain_after" -eq 0 ] ||
    fail "storm client $c: connections to a tether server fell back to plain TCP"
done
pass
