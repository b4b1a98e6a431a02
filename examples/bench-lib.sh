# bench-lib.sh — sourced by bench-compare.sh and cp-bench.sh (bash): what
# both need.  The sourcing script sets $prog (its name, for messages) first.

die() {
  printf '%s: %s\n' "$prog" "$*" >&2
  exit 1
}

usage_error() {
  printf '%s: %s\nTry '\''%s --help'\''.\n' "$prog" "$*" "$prog" >&2
  exit 2
}

# need_count OPTION VALUE: VALUE must be a positive integer.
need_count() {
  case $2 in
  '' | *[!0-9]* | 0) usage_error "bad $1 '$2'" ;;
  esac
}

# median: of the numbers on stdin, one per line.
median() {
  sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) exit 1
          print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
