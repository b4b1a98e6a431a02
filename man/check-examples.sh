#!/usr/bin/env bash
# Extracts the EXAMPLE of every man page and compiles it against include/.
#
#   bash man/check-examples.sh [PAGE...]     (default: man/man3/*.3 man/man7/*.7)
#
# An example is the text between the lines
#     .\" EXAMPLE-BEGIN
#     .\" EXAMPLE-END
# (inside .EX/.EE).  It must be a complete translation unit: its own
# #includes, no main() needed.  The roff escapes allowed in examples are
# undone first: \e -> \   \- -> -   \& -> (nothing)   \(aq -> '   \(dq -> "
# \(ti -> ~   \(ha -> ^ ; any other backslash escape is an error, because the
# page would not show the code the compiler saw.
#
# Each example is compiled with $CC (default cc) -fsyntax-only -std=c11
# -Wall -Wextra -Werror -Iinclude.  Pages that are .so links are skipped.
# Every page in man3 except .so links must have exactly one example.
# Also checks that every page renders with groff -ww without a warning and
# that every function declared in include/tether/tether.h has a
# man3 page of its own (a real page or a .so link).
# Exits non-zero on any failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
cc=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "$#" -gt 0 ]; then
  pages=("$@")
else
  pages=(man/man3/*.3 man/man7/*.7)
fi

failed=0
checked=0

# extract PAGE INDEX -> writes example INDEX (1-based) of PAGE to stdout;
# exits 3 if a line holds an escape we do not translate.
extract() {
  perl -ne '
    BEGIN { $want = shift @ARGV; $n = 0; $in = 0; $bad = 0; }
    if (/^\.\\" EXAMPLE-BEGIN\s*$/) { $n++; $in = 1; next; }
    if (/^\.\\" EXAMPLE-END\s*$/)   { $in = 0; next; }
    next unless $in && $n == $want;
    my %map = ("e" => "\\", "-" => "-", "&" => "", "(aq" => "\x27",
               "(dq" => "\"", "(ti" => "~", "(ha" => "^");
    s{\\(e|-|&|\(aq|\(dq|\(ti|\(ha|.)}{
      exists $map{$1} ? $map{$1}
                      : do { print STDERR "  line $.: unsupported escape \\$1\n"; $bad = 1; "" }
    }ge;
    print;
    END { exit 3 if $bad; }
  ' "$2" "$1"
}

for page in "${pages[@]}"; do
  [ -f "$page" ] || { echo "FAIL $page: no such file"; failed=$((failed + 1)); continue; }
  if head -n 1 "$page" | grep -q '^\.so '; then
    continue
  fi
  begins=$(grep -c '^\.\\" EXAMPLE-BEGIN[[:space:]]*$' "$page")
  ends=$(grep -c '^\.\\" EXAMPLE-END[[:space:]]*$' "$page")
  if [ "$begins" -ne "$ends" ]; then
    echo "FAIL $page: $begins EXAMPLE-BEGIN but $ends EXAMPLE-END"
    failed=$((failed + 1))
    continue
  fi
  case $page in
  */man3/*)
    if [ "$begins" -ne 1 ]; then
      echo "FAIL $page: has $begins examples, want exactly 1"
      failed=$((failed + 1))
      continue
    fi
    ;;
  esac
  for ((i = 1; i <= begins; i++)); do
    src="$tmp/$(basename "$page")-$i.c"
    if ! extract "$page" "$i" >"$src"; then
      echo "FAIL $page example $i: unsupported roff escape (see above)"
      failed=$((failed + 1))
      continue
    fi
    checked=$((checked + 1))
    if ! out=$("$cc" -fsyntax-only -std=c11 -Wall -Wextra -Werror -Iinclude \
        -x c "$src" 2>&1); then
      echo "FAIL $page example $i:"
      echo "$out" | sed 's/^/    /'
      echo "    --- extracted source:"
      nl -ba "$src" | sed 's/^/    /'
      failed=$((failed + 1))
    fi
  done
done

# Every public function has a page of its own.
if [ "$#" -eq 0 ]; then
  funcs=$(sed -n 's/^TETHER_API[^(]*[ *]\(tether_[a-z0-9_]*\)(.*/\1/p' include/tether/tether.h)
  [ -n "$funcs" ] || { echo "FAIL: found no TETHER_API functions in tether.h"; failed=$((failed + 1)); }
  for f in $funcs; do
    if [ ! -f "man/man3/$f.3" ]; then
      echo "FAIL: no man page man/man3/$f.3 for $f()"
      failed=$((failed + 1))
    elif ! grep -q "^\.so man3/" "man/man3/$f.3" &&
         ! sed -n '/^\.SH NAME/,/^\.SH/p' "man/man3/$f.3" | grep -q "\\b$f\\b"; then
      echo "FAIL: man/man3/$f.3 does not name $f in its NAME section"
      failed=$((failed + 1))
    fi
    if ! grep -qw "$f" man/man3/libtether.3 2>/dev/null; then
      echo "FAIL: libtether(3) does not list $f"
      failed=$((failed + 1))
    fi
  done
  # .so links must point at a page whose NAME section names the function.
  for link in man/man3/*.3; do
    target=$(sed -n '1s/^\.so \(.*\)$/\1/p' "$link")
    [ -n "$target" ] || continue
    f=$(basename "$link" .3)
    if [ ! -f "man/$target" ]; then
      echo "FAIL: $link points at missing man/$target"
      failed=$((failed + 1))
    elif ! sed -n '/^\.SH NAME/,/^\.SH/p' "man/$target" | grep -q "\\b$f\\b"; then
      echo "FAIL: $link -> $target, whose NAME section does not name $f"
      failed=$((failed + 1))
    fi
  done
fi

# Every page renders without groff warnings (.so links resolve from man/).
if command -v groff >/dev/null 2>&1; then
  for page in "${pages[@]}"; do
    [ -f "$page" ] || continue
    abs=$(realpath "$page")
    if ! out=$(cd man && groff -man -Tutf8 -ww -z "$abs" 2>&1) || [ -n "$out" ]; then
      echo "FAIL $page: groff warnings:"
      echo "$out" | sed 's/^/    /'
      failed=$((failed + 1))
    fi
  done
else
  echo "check-examples: groff not installed, rendering not checked"
fi

echo "check-examples: $checked examples compiled, $failed failures"
[ "$failed" -eq 0 ]
