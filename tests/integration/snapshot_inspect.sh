#!/usr/bin/env bash
# tether-snapshot inspect on real snapshot files, and on damaged ones.
#
# snapshot_make writes the snapshots of a client and a server context (two
# sessions over loopback, retained bytes not yet acknowledged), the session
# ids, every key the files hold and the payload the sessions wrote.  Checks:
# the text and --json output (parsed with python3) show the header, the
# listener, both sessions with their ids in hex, addresses as HOST:PORT,
# counters; keys appear only as "<redacted 32 bytes>" and neither a key nor
# the payload appears in any output, in any encoding.  Truncated,
# bit-flipped, foreign, empty and wrong-version files each fail with their
# documented exit status and one line on stderr; missing files and bad usage
# too.  Under valgrind as well when it is installed (not in sanitizer
# builds).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
require_tools TETHER_SNAPSHOT TETHER_SNAPSHOT_MAKE

"$TETHER_SNAPSHOT_MAKE" "$TMP" >"$TMP/make.log" 2>&1 || fail "snapshot_make failed"
[ "$(wc -l <"$TMP/ids")" -eq 2 ] || fail "snapshot_make wrote no ids"
[ "$(wc -l <"$TMP/keys")" -eq 16 ] || fail "expected 16 keys (2 files x 2 sessions x 4)"

# inspect NAME ARGS...: runs tether-snapshot inspect ARGS; output in
# $TMP/NAME.out and $TMP/NAME.err, exit status in RC.
inspect() {
  local name=$1
  shift
  RC=0
  timeout -k 5 30 "$TETHER_SNAPSHOT" inspect "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" || RC=$?
}

# ---- good files ----------------------------------------------------------------
for side in client server; do
  inspect "$side-text" "$TMP/$side.snap"
  [ "$RC" -eq 0 ] || fail "inspect $side.snap: exit $RC: $(cat "$TMP/$side-text.err")"
  inspect "$side-json" --json "$TMP/$side.snap"
  [ "$RC" -eq 0 ] || fail "inspect --json $side.snap: exit $RC: $(cat "$TMP/$side-json.err")"
  if [ -s "$TMP/$side-text.err" ] || [ -s "$TMP/$side-json.err" ]; then
    fail "inspect $side.snap wrote on stderr"
  fi
done
log "inspect client.snap:"
sed 's/^/    /' "$TMP/client-text.out" | head -n 24

# Text: the lines a human looks for.
for want in '^format version +1$' '^checksum +SHA-256 ok, [0-9a-f]{64}$' \
  '^created_unix_ms +[0-9]+ \(20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9:.]+ UTC\)$' \
  '^listeners +0$' '^sessions +2$' '^ +is_client +true$' \
  '^ +dial +127\.0\.0\.1:[0-9]+$' '^ +sent +[0-9]+$' \
  '^ +retained +<[0-9]+ bytes, not shown>$'; do
  grep -Eq -- "$want" "$TMP/client-text.out" || fail "client text output has no line /$want/"
done
for want in '^listeners +1$' '^ +addr +127\.0\.0\.1:[0-9]+$' '^ +dial +\(none\)$' \
  '^ +is_client +false$' '^ +listener +0$'; do
  grep -Eq -- "$want" "$TMP/server-text.out" || fail "server text output has no line /$want/"
done
while read -r id; do
  for side in client server; do
    grep -Eq "^ +id +$id\$" "$TMP/$side-text.out" || fail "$side text output lacks session id $id"
  done
done <"$TMP/ids"
[ "$(grep -Ec '^ +k_[a-z0-9_]+ +<redacted 32 bytes>$' "$TMP/client-text.out")" -eq 8 ] ||
  fail "expected 8 redacted keys in the client's text output"

# JSON: parses, and holds what the files hold.
"$PY" - "$TMP" <<'EOF' || fail "JSON output check failed"
import json, os, re, sys
tmp = sys.argv[1]
ids = sorted(open(os.path.join(tmp, "ids")).read().split())
out = {}
for side in ("client", "server"):
    with open(os.path.join(tmp, side + "-json.out")) as f:
        out[side] = json.load(f)
for side, o in out.items():
    size = os.path.getsize(os.path.join(tmp, side + ".snap"))
    assert o["format_version"] == 1, o["format_version"]
    assert o["checksum_ok"] is True and re.fullmatch("[0-9a-f]{64}", o["sha256"])
    assert o["file_length"] == size and o["payload_length"] == size - 56, (size, o)
    snap = o["snapshot"]
    assert isinstance(snap["created_unix_ms"], int) and snap["created_unix_ms"] > 0
    sessions = snap["sessions"]
    assert len(sessions) == 2, "%s: %d sessions" % (side, len(sessions))
    assert sorted(s["id"] for s in sessions) == ids, (side, ids)
    for s in sessions:
        assert re.fullmatch("[0-9a-f]{32}", s["id"]), s["id"]
        assert s["is_client"] is (side == "client")
        assert s["epoch"] == 0
        keys = [k for k in s if k.startswith("k_")]
        assert len(keys) == 4, keys
        for k in keys:
            assert s[k] == {"redacted": True, "length": 32}, (k, s[k])
        assert s["retained"] == {"length": s["sent"] - s["retained_from"]}, s["retained"]
        assert s["sent"] > 0 and s["delivered"] > 0
        assert s["heartbeat_ms"] > 0 and s["give_up_s"] > 0
        assert re.fullmatch(r"127\.0\.0\.1:\d+", s["udp_peer"]["sockaddr"]), s["udp_peer"]
lst = out["server"]["snapshot"]["listeners"]
assert len(lst) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", lst[0]["addr"]["sockaddr"]), lst
assert out["client"]["snapshot"]["listeners"] == []
for s in out["client"]["snapshot"]["sessions"]:
    assert s["dial"] == lst[0]["addr"], (s["dial"], lst)
    assert s["listener"] == -1
for s in out["server"]["snapshot"]["sessions"]:
    assert s["dial"] is None and s["listener"] == 0
EOF

# No key, and no byte the application wrote, in any output: raw, hex (either
# case) or base64.
"$PY" - "$TMP" <<'EOF' || fail "secret material in the output"
import base64, glob, os, sys
tmp = sys.argv[1]
keys = [bytes.fromhex(k) for k in open(os.path.join(tmp, "keys")).read().split()]
payload = open(os.path.join(tmp, "payload"), "rb").read()
secrets = keys + [payload]
for path in glob.glob(os.path.join(tmp, "*-text.out")) + glob.glob(os.path.join(tmp, "*-json.out")):
    data = open(path, "rb").read()
    low = data.lower()
    for s in secrets:
        for form in (s, s.hex().encode(), base64.b64encode(s).rstrip(b"=")):
            assert form.lower() not in low, "%s holds %r" % (os.path.basename(path), form[:16])
        # Nor a fair part of one (a key printed in pieces).
        assert s[:12].hex().encode() not in low, os.path.basename(path)
print("none of %d keys nor the payload in any output" % len(keys))
EOF

# Standard input.
RC=0
"$TETHER_SNAPSHOT" inspect --json - <"$TMP/client.snap" >"$TMP/stdin.out" 2>"$TMP/stdin.err" || RC=$?
[ "$RC" -eq 0 ] || fail "inspect - < client.snap: exit $RC"
"$PY" -c 'import json,sys; o = json.load(sys.stdin); assert len(o["snapshot"]["sessions"]) == 2' \
  <"$TMP/stdin.out" || fail "inspect - gave bad JSON"

# ---- bad files -------------------------------------------------------------------
"$PY" - "$TMP" <<'EOF'
import os, sys
tmp = sys.argv[1]
good = open(os.path.join(tmp, "client.snap"), "rb").read()
def put(name, data):
    with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
put("trunc-last", good[:-1])
put("trunc-half", good[: len(good) // 2])
put("trunc-header", good[:20])
put("trunc-magic", good[:5])
flip = bytearray(good); flip[len(good) // 2] ^= 0x10; put("flip-payload", flip)
flip = bytearray(good); flip[-1] ^= 0x01; put("flip-checksum", flip)
flip = bytearray(good); flip[20] ^= 0x01; put("flip-length", flip)
put("foreign-text", b"hello, world; not a snapshot at all\n" * 3)
put("foreign-binary", bytes(range(256)) * 4)
put("empty", b"")
v = bytearray(good); v[8:12] = (9).to_bytes(4, "big"); put("version-9", v)
v = bytearray(good); v[8:12] = (0).to_bytes(4, "big"); put("version-0", v)
put("trailing", good + b"\0")
EOF

# expect_fail FILE STATUS REGEX: inspect FILE (text and --json) exits with
# STATUS, prints nothing on stdout and one line matching REGEX on stderr.
expect_fail() {
  local file=$1 status=$2 re=$3 name json
  name=bad-$(basename "$file")
  for json in "" --json; do
    inspect "$name" $json "$file"
    [ "$RC" -eq "$status" ] ||
      fail "inspect $json $(basename "$file"): exit $RC, expected $status ($(head -c 300 "$TMP/$name.err"))"
    [ ! -s "$TMP/$name.out" ] || fail "inspect $(basename "$file") printed on stdout"
    [ "$(wc -l <"$TMP/$name.err")" -eq 1 ] ||
      fail "inspect $(basename "$file"): expected one line on stderr, got: $(cat "$TMP/$name.err")"
    grep -Eq -- "^tether-snapshot: .*$re" "$TMP/$name.err" ||
      fail "inspect $(basename "$file"): message '$(cat "$TMP/$name.err")' does not match /$re/"
  done
  log "$(basename "$file"): exit $status, $(cat "$TMP/$name.err")"
}

expect_fail "$TMP/trunc-last" 4 'damaged snapshot: truncated'
expect_fail "$TMP/trunc-half" 4 'damaged snapshot: truncated'
expect_fail "$TMP/trunc-header" 4 'damaged snapshot: truncated'
expect_fail "$TMP/trunc-magic" 4 'damaged snapshot: truncated header'
expect_fail "$TMP/flip-payload" 4 'damaged snapshot: checksum mismatch'
expect_fail "$TMP/flip-checksum" 4 'damaged snapshot: checksum mismatch'
expect_fail "$TMP/flip-length" 4 'damaged snapshot: '
expect_fail "$TMP/trailing" 4 'damaged snapshot: '
expect_fail "$TMP/foreign-text" 4 'not a tether snapshot'
expect_fail "$TMP/foreign-binary" 4 'not a tether snapshot'
expect_fail "$TMP/empty" 4 'empty file, not a tether snapshot'
expect_fail "$TMP/version-9" 5 'unsupported snapshot format version 9 '
expect_fail "$TMP/version-0" 5 'unsupported snapshot format version 0 '
expect_fail "$TMP/no-such-file" 3 'cannot open: No such file or directory'
expect_fail "$TMP" 3 'cannot read: Is a directory'
if [ "$(id -u)" -ne 0 ]; then # root reads anything
  cp "$TMP/client.snap" "$TMP/unreadable"
  chmod 000 "$TMP/unreadable"
  expect_fail "$TMP/unreadable" 3 'cannot open: Permission denied'
fi

# Usage errors: status 2, as with every tether tool.
for args in "" "inspect" "dump $TMP/client.snap" "inspect --bogus $TMP/client.snap" \
  "inspect $TMP/client.snap $TMP/server.snap"; do
  RC=0
  # shellcheck disable=SC2086 # word splitting wanted
  "$TETHER_SNAPSHOT" $args >"$TMP/usage.out" 2>"$TMP/usage.err" || RC=$?
  [ "$RC" -eq 2 ] || fail "tether-snapshot $args: exit $RC, expected 2"
  grep -q "Try 'tether-snapshot --help'" "$TMP/usage.err" || fail "tether-snapshot $args: no usage hint"
done
"$TETHER_SNAPSHOT" --help | grep -q 'inspect FILE' || fail "--help"

# ---- valgrind ----------------------------------------------------------------------
if [ "${TETHER_SANITIZED:-0}" = 1 ]; then
  log "sanitizer build: valgrind runs skipped"
elif ! command -v valgrind >/dev/null; then
  log "valgrind not installed: valgrind runs skipped"
else
  for args in "$TMP/server.snap" "--json $TMP/client.snap" "$TMP/flip-payload" \
    "$TMP/trunc-half" "$TMP/version-9" "$TMP/empty"; do
    RC=0
    # shellcheck disable=SC2086 # word splitting wanted
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=all \
      --log-file="$TMP/valgrind.log" "$TETHER_SNAPSHOT" inspect $args >/dev/null 2>&1 || RC=$?
    if [ "$RC" -eq 99 ] || [ -s "$TMP/valgrind.log" ]; then
      fail "valgrind on inspect $args: $(head -c 2000 "$TMP/valgrind.log")"
    fi
  done
  log "valgrind: clean on 6 runs (good, damaged and wrong-version files)"
fi
pass
