#!/bin/sh
# The sans-IO rule, checked: lib/core may not use sockets, the event loop,
# OpenSSL, clocks or threads.  Two checks:
#   1. no undefined symbol of the core objects names such a function;
#   2. no core source includes such a header.
# usage: core_deps.sh CORE_SOURCE_DIR OBJECT...   (objects may also arrive as
# one ;-separated argument, as $<TARGET_OBJECTS:...> expands)
set -u
NM=${NM:-nm}
src=${1:?usage: core_deps.sh CORE_SOURCE_DIR OBJECT...}
shift
fail=0

forbidden_syms='socket|connect|send|recv|read|write|poll|epoll|event_|EVP_|RAND_|clock_gettime|time|pthread_|gettimeofday'
forbidden_incl='^[[:space:]]*#[[:space:]]*include[[:space:]]*<(sys/socket\.h|event2/[^>]*|openssl/[^>]*|pthread\.h|time\.h)>'

nobj=0
oldifs=$IFS
for arg in "$@"; do
  IFS=';'
  for obj in $arg; do
    IFS=$oldifs
    [ -n "$obj" ] || continue
    if [ ! -f "$obj" ]; then
      echo "core_deps: missing object $obj" >&2
      fail=1
      continue
    fi
    nobj=$((nobj + 1))
    syms=$("$NM" -u "$obj") || { echo "core_deps: nm failed on $obj" >&2; fail=1; continue; }
    bad=$(printf '%s\n' "$syms" | awk '{print $NF}' | grep -E "$forbidden_syms")
    if [ -n "$bad" ]; then
      echo "core_deps: $(basename "$obj") references forbidden symbols:" >&2
      printf '  %s\n' $bad >&2
      fail=1
    fi
  done
  IFS=$oldifs
done
if [ "$nobj" -eq 0 ]; then
  echo "core_deps: no object files given" >&2
  exit 1
fi

nsrc=0
for f in "$src"/*.c "$src"/*.h; do
  [ -f "$f" ] || continue
  nsrc=$((nsrc + 1))
  hits=$(grep -nE "$forbidden_incl" "$f")
  if [ -n "$hits" ]; then
    echo "core_deps: $(basename "$f") includes a forbidden header:" >&2
    printf '%s\n' "$hits" | sed 's/^/  /' >&2
    fail=1
  fi
done
if [ "$nsrc" -eq 0 ]; then
  echo "core_deps: no sources in $src" >&2
  exit 1
fi

if [ "$fail" -eq 0 ]; then
  echo "core_deps: $nobj objects, $nsrc sources: sans-IO"
fi
exit $fail
