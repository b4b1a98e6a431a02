#!/usr/bin/env bash
# The test suite, as the README documents it:   bash tests/run.sh
#
#   1. .ci/install-deps (apt-get; does nothing when everything is present)
#   2. build/       RelWithDebInfo, -Werror        -> ctest, every label but
#                   known-issue (tests of open bugs, run by hand: ctest -L known-issue)
#   3. build-asan/  ASan + UBSan                   -> ctest -L unit|sim|integration
#   4. build-tsan/  ThreadSanitizer                -> ctest -L tsan (the engine's
#                   threads: the in-process integration tests and some tool-based ones)
#   5. build-fuzz/  clang, libFuzzer targets       -> ctest -L fuzz (short runs)
#
# No test is retried: each must pass the first time on a busy 2-core machine
# (work bounded by counts and seeds, timing bounds with wide margins).
# Integration and bench tests use real processes and timing bounds, so they run
# one at a time; unit/sim/fuzz tests run in parallel.  A stage whose configure
# or build fails counts as one failure and the next stage still runs.  Exits
# non-zero on any failure; the last line is "N passed, N failed".  Each stage
# prints how long it took.
#
# Environment: TETHER_JOBS (default 2) parallel build/test jobs;
# TETHER_STAGES (default "build asan tsan fuzz") to run a subset.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
jobs=${TETHER_JOBS:-2}
stages=${TETHER_STAGES:-build asan tsan fuzz}

passed=0
failed=0
skipped=0
problems=()
t_start=$SECONDS

say() { printf '\n=== %s\n' "$*"; }

# configure_build DIR CMAKE-ARGS... : quiet configure + build; prints the log
# on failure.  Returns non-zero (and records the failure) if either fails.
configure_build() {
  local dir=$1 t0=$SECONDS
  shift
  mkdir -p "$dir"
  local log="$dir/build.log"
  if ! cmake -S . -B "$dir" "$@" >"$log" 2>&1 ||
     ! cmake --build "$dir" -j "$jobs" >>"$log" 2>&1; then
    tail -n 80 "$log"
    echo "!!! configure/build of $dir FAILED (full log: $log)"
    failed=$((failed + 1))
    problems+=("build of $dir")
    return 1
  fi
  echo "built $dir in $((SECONDS - t0)) s"
}

# run_ctest DIR CTEST-ARGS... : runs ctest and adds its counts to the totals.
run_ctest() {
  local dir=$1
  shift
  local log rc total nfail nskip
  log=$(mktemp)
  ctest --test-dir "$dir" --output-on-failure --no-tests=ignore "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  total=$(sed -n 's/.*tests passed, [0-9]* tests\{0,1\} failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
  nfail=$(sed -n 's/.*tests passed, \([0-9]*\) tests\{0,1\} failed out of.*/\1/p' "$log" | tail -n 1)
  nskip=$(grep -c '^[[:space:]]*[0-9]* - .* (Skipped)$' "$log")
  total=${total:-0}
  nfail=${nfail:-0}
  if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
    nfail=1 # ctest itself failed (bad arguments, crash, ...)
  fi
  passed=$((passed + total - nfail - nskip))
  failed=$((failed + nfail))
  skipped=$((skipped + nskip))
  [ "$nfail" -ne 0 ] && problems+=("ctest in $dir ($*): $nfail failed")
  rm -f "$log"
  return 0
}

say "dependencies"
if ! bash .ci/install-deps; then
  echo "0 passed, 1 failed"
  exit 1
fi
echo "ok"

for stage in $stages; do
  t_stage=$SECONDS
  case $stage in
  build)
    say "build/ (RelWithDebInfo, -Werror): every test"
    if configure_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTETHER_WERROR=ON; then
      run_ctest build -j "$jobs" -LE '^(integration|bench|known-issue)$'
      run_ctest build -L '^(integration|bench)$'
    fi
    ;;
  asan)
    say "build-asan/ (ASan + UBSan): unit, sim, integration"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    # Sanitized simulation seeds cost about 20 times more: counts sized so
    # that each sim test stays under a third of its timeout on a busy
    # 2-core machine (tests/sim/CMakeLists.txt; given here too, so that an
    # older build-asan/ cache does not keep other counts).
    if configure_build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTETHER_WERROR=ON \
        -DTETHER_ASAN=ON -DTETHER_SIM_SEEDS=300 -DTETHER_SIM_RESTORE_SEEDS=60 \
        -DTETHER_SIM_DIVERGE_SEEDS=30; then
      run_ctest build-asan -j "$jobs" -L '^(unit|sim)$'
      run_ctest build-asan -L '^integration$'
    fi
    ;;
  tsan)
    say "build-tsan/ (ThreadSanitizer): tsan"
    # Reports go to files, also those of the tool-based tests' background
    # processes, whose stderr a test may not show: any report file is a
    # failure, printed here.  No suppressions: nothing in libevent or
    # OpenSSL has needed one.
    reports=$PWD/build-tsan/tsan-reports
    if configure_build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTETHER_WERROR=ON \
        -DTETHER_TSAN=ON; then
      rm -rf "$reports"
      mkdir -p "$reports"
      TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:log_path=$reports/report} \
        run_ctest build-tsan -L '^tsan$'
      for r in "$reports"/report*; do
        [ -e "$r" ] || continue
        cat "$r"
        failed=$((failed + 1))
        problems+=("ThreadSanitizer report: $r")
      done
    fi
    ;;
  fuzz)
    say "build-fuzz/ (clang, libFuzzer): fuzz"
    if CC=clang configure_build build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTETHER_FUZZ=ON; then
      run_ctest build-fuzz -j "$jobs" -L '^fuzz$'
    fi
    ;;
  *)
    echo "unknown stage '$stage' (known: build asan tsan fuzz)"
    failed=$((failed + 1))
    ;;
  esac
  echo "stage $stage: $(( (SECONDS - t_stage) / 60 )) min $(( (SECONDS - t_stage) % 60 )) s"
done

say "summary ($(( (SECONDS - t_start) / 60 )) min $(( (SECONDS - t_start) % 60 )) s)"
for p in "${problems[@]}"; do
  echo "FAILED: $p"
done
[ "$skipped" -ne 0 ] && echo "($skipped skipped)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
