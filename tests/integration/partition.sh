#!/usr/bin/env bash
# A silent network partition: client and server in two namespaces joined by a
# veth pair; while the client streams, every packet in and out of the server
# namespace is dropped (iptables DROP) for 5 s, then the rules go away.
# PARTITION_PROTO=tcp (partition_tcp.sh) drops only TCP: heartbeats still
# flow, and TCP's own silence (unacknowledged bytes) must be noticed.
# Default timers (heartbeat 1000 ms, suspend 3000 ms, reconnect cap 1000 ms).
# Expect:
#   - the client logs "suspended" within suspend_ms + one heartbeat (4 s) of
#     the DROP (and no echo arrives during the partition);
#   - echoed data flows again within ~1 s + the reconnect cap of the healing,
#     and the client logs "resumed";
#   - byte-exact echo, client exit 0.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_root
require_netns
require_tools TETHER_ECHO

SIZE=$((3 * 1024 * 1024))
RATE=$((256 * 1024)) # ~12 s of streaming
PORT=7411
PARTITION_S=5
PROTO=(${PARTITION_PROTO:+-p "$PARTITION_PROTO"})
# Slack for a busy 2-core machine (and sanitizer builds): three processes
# and iptables must be scheduled; a broken timer would be off by seconds.
DETECT_MAX_US=$((4000000 + 1000000)) # suspend 3000 + heartbeat 1000 (+1 s of slack)
FLOW_MAX_US=$((2000000 + 1500000))   # ~1 s + reconnect cap 1000 ms (+1.5 s of slack)

netns_pair
random_file "$TMP/in" "$SIZE"

stamped_log server
TETHER_LOG=info spawn - "$TMP/server.out" "$STAMP_FIFO" \
  ip netns exec "$NS_S" "$TETHER_ECHO" server --listen "$ADDR_S:$PORT"
server=$BG_PID
wait_listen "$server" "$PORT" "$NS_S"

mkfifo "$TMP/in.fifo"
spawn "$TMP/in" "$TMP/in.fifo" "$TMP/throttle.err" "${THROTTLE[@]}" "$RATE" 8192
stamped_log client
TETHER_LOG=info spawn "$TMP/in.fifo" "$TMP/out" "$STAMP_FIFO" \
  ip netns exec "$NS_C" "$TETHER_ECHO" client --connect "$ADDR_S:$PORT" --stats
client=$BG_PID
log "streaming $SIZE bytes at $RATE B/s from $NS_C to $ADDR_S:$PORT in $NS_S"

wait_size "$TMP/out" $((384 * 1024)) 15000 "$client"

# ---- partition ----
t_drop=$(now_us)
ip netns exec "$NS_S" iptables -w -A INPUT "${PROTO[@]}" -j DROP
ip netns exec "$NS_S" iptables -w -A OUTPUT "${PROTO[@]}" -j DROP
log "partition: all ${PARTITION_PROTO:-} packets of $NS_S dropped"

wait_stamp_after "$TMP/client.log" "$RE_SUSPENDED" "$t_drop" 10000 ||
  fail "the client did not log '$RE_SUSPENDED' within 10 s of the DROP"
t_susp=$STAMP
detect=$((t_susp - t_drop))
log "client suspended $(us_to_s "$detect") s after the DROP: $(state_lines "$TMP/client.log" "$RE_SUSPENDED" | head -n 1 | cut -d" " -f2- | cut -c1-200)"
alive "$client" || fail "the client exited during the partition"

# Sleep out the rest of the partition; nothing may arrive meanwhile (after a
# grace period for bytes that were already in the client's receive buffer).
sleep 0.5
size_mid=$(file_size "$TMP/out")
now=$(now_us)
rest=$((t_drop + PARTITION_S * 1000000 - now))
[ "$rest" -gt 0 ] && sleep "$(us_to_s "$rest")"
size_heal=$(file_size "$TMP/out")
[ "$size_heal" -eq "$size_mid" ] ||
  fail "$((size_heal - size_mid)) echo bytes arrived during the partition: the DROP was not effective"

# ---- heal ----
# The heal starts with the first rule removed: a resume may complete before
# the second iptables process has even exited.
t_heal=$(now_us)
ip netns exec "$NS_S" iptables -w -D INPUT "${PROTO[@]}" -j DROP
ip netns exec "$NS_S" iptables -w -D OUTPUT "${PROTO[@]}" -j DROP
log "healed after $(us_to_s $((t_heal - t_drop))) s; echo had $size_heal bytes"

deadline=$((t_heal + 15000000))
while [ "$(file_size "$TMP/out")" -le "$size_heal" ]; do
  alive "$client" || fail "the client exited before data flowed again"
  [ "$(now_us)" -lt "$deadline" ] || fail "no echo data within 15 s of healing"
  sleep 0.02
done
t_flow=$(now_us)
flow=$((t_flow - t_heal))
log "echo data flowing again $(us_to_s "$flow") s after healing"

wait_exit "$client" 60000 || fail "client still running 60 s after healing ($(file_size "$TMP/out") of $SIZE bytes)"
rc=$WAIT_RC
t_res=
wait_stamp_after "$TMP/client.log" "$RE_RESUMED" "$t_heal" 1000 && t_res=$STAMP

[ "$rc" -eq 0 ] || fail "client exited with status $rc"
assert_same_file "$TMP/in" "$TMP/out" "echoed stream"
[ "$detect" -le "$DETECT_MAX_US" ] ||
  fail "suspension detected $(us_to_s "$detect") s after the DROP; expected <= $(us_to_s "$DETECT_MAX_US") s (suspend_ms + heartbeat)"
[ "$flow" -le "$FLOW_MAX_US" ] ||
  fail "data flowed again $(us_to_s "$flow") s after healing; expected <= $(us_to_s "$FLOW_MAX_US") s (~1 s + reconnect cap)"
[ -n "$t_res" ] || fail "the client never logged '$RE_RESUMED' after healing"
log "client resumed $(us_to_s $((t_res - t_heal))) s after healing"
reconnects=$(stats_get "$TMP/client.log" reconnects)
suspended_ms=$(stats_get "$TMP/client.log" suspended_ms)
log "client --stats: reconnects=$reconnects suspended_ms=$suspended_ms"
[ "$reconnects" -ge 1 ] || fail "--stats reconnects=$reconnects, expected >= 1"
[ "$suspended_ms" -ge 1000 ] || fail "--stats suspended_ms=$suspended_ms, expected >= 1000 after a ${PARTITION_S} s partition"
alive "$server" || fail "the server died"
pass
