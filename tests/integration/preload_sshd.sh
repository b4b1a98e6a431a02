#!/usr/bin/env bash
# OpenSSH's sshd under tether-run: it accepts, forks, and re-executes itself
# for each connection with the connection on descriptors 0 and 1 (a relay
# of the session the master keeps).  The client's key is restricted with
# from="127.0.0.1" in authorized_keys.
# Expect:
#  1. a plain ssh (not under tether-run) logs in as with plain TCP;
#  2. ssh under tether-run logs in too: the re-executed sshd sees the TCP
#     connection (getpeername: "Connection from 127.0.0.1 port N", the
#     from= check passes, SSH_CONNECTION names both TCP endpoints);
#  3. 50 MiB echoed through ssh under tether-run (cat on the server)
#     byte-exact while the live TCP connection is killed (ss -K) 3 times.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_tools TETHER_RUN
for t in /usr/sbin/sshd ssh ssh-keygen; do
  command -v "$t" >/dev/null || skip "$t not installed"
done
id sshd >/dev/null 2>&1 || skip "no sshd privilege separation user"
export TETHER_RECONNECT_MAX_MS=200
SIZE=$((50 * 1024 * 1024))
RATE=$((8 * 1024 * 1024))
port=$(free_port)
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$TMP/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/userkey"
echo "from=\"127.0.0.1\" $(cat "$TMP/userkey.pub")" >"$TMP/authorized_keys"
cat >"$TMP/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $TMP/hostkey
AuthorizedKeysFile $TMP/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $TMP/sshd.pid
LogLevel VERBOSE
EOF
TETHER_LOG=info spawn - /dev/null "$TMP/sshd.log" "$TETHER_RUN" -- /usr/sbin/sshd -D -e \
  -f "$TMP/sshd_config"
server=$BG_PID
wait_listen "$server" "$port"
SSH=(ssh -T -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
  -o LogLevel=ERROR -i "$TMP/userkey" -p "$port" root@127.0.0.1)

# 1 and 2: one login each way.
"${SSH[@]}" 'echo "$SSH_CONNECTION"' >"$TMP/plain.out" 2>"$TMP/plain.err" ||
  fail "plain ssh: $(tail -n 3 "$TMP/plain.err")"
TETHER_LOG=info "$TETHER_RUN" -- "${SSH[@]}" 'echo "$SSH_CONNECTION"' >"$TMP/tether.out" \
  2>"$TMP/tether.err" || fail "ssh under tether-run: $(tail -n 3 "$TMP/tether.err"); sshd: $(grep -E 'from|Connection' "$TMP/sshd.log" | tail -n 3)"
for who in plain tether; do
  read -r caddr cport saddr sport <"$TMP/$who.out" || true
  log "$who ssh: SSH_CONNECTION=$(cat "$TMP/$who.out")"
  [ "$caddr" = 127.0.0.1 ] && [ "$saddr" = 127.0.0.1 ] && [ "$sport" = "$port" ] &&
    [ "${cport:-0}" -gt 0 ] || fail "$who ssh: SSH_CONNECTION is '$(cat "$TMP/$who.out")'"
  grep -q "Connection from 127.0.0.1 port $cport on 127.0.0.1 port $port" "$TMP/sshd.log" ||
    fail "$who ssh: sshd did not log the TCP connection: $(grep 'Connection from' "$TMP/sshd.log" | tail -n 2)"
done
grep -q "accepted from" "$TMP/sshd.log" || fail "ssh under tether-run was not a session"
if grep -q "not from a permitted host" "$TMP/sshd.log"; then
  fail "sshd refused the from= key: $(grep 'permitted host' "$TMP/sshd.log" | head -n 1)"
fi

# 3. Streaming, with kills.
random_file "$TMP/in" "$SIZE"
mkfifo "$TMP/fifo"
spawn "$TMP/in" "$TMP/fifo" "$TMP/throttle.err" "${THROTTLE[@]}" "$RATE" 65536
TETHER_LOG=info spawn "$TMP/fifo" "$TMP/out" "$TMP/stream.log" "$TETHER_RUN" -- "${SSH[@]}" cat
cli=$BG_PID
kill_at_progress "$TMP/out" "$SIZE" "$port" 3 >"$TMP/kills"
kill_stream_done "ssh, 50 MiB echoed" "$cli" "$TMP/in" "$TMP/out" "$TMP/stream.log" "$TMP/kills"
alive "$server" || fail "sshd died"
pass
