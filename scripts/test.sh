#!/usr/bin/env bash
# The whole default test suite, as `make test` and CI run it:
#   release  unit + stress + bench-smoke
#   asan     unit + stress   (AddressSanitizer + UndefinedBehaviorSanitizer, clang)
#   tsan     stress          (ThreadSanitizer, gcc; criterion cannot run under TSan)
# Stops at the first preset that fails. Extra arguments are passed to every ctest run
# (e.g. -R '^rcu' or -L stress).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

# gcc 12 / clang 14 TSan runtimes abort with "unexpected memory mapping" when the kernel
# randomises mmap with more than 28 bits. Fix it where we may, otherwise fail and say so.
tsan_ready() {
    local bits
    bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)
    if (( bits > 28 )); then
        echo "test: vm.mmap_rnd_bits=$bits breaks this ThreadSanitizer runtime; setting it to 28"
        if ! sysctl -qw vm.mmap_rnd_bits=28 2>/dev/null; then
            echo "test: FAILED: cannot lower vm.mmap_rnd_bits (need root: sysctl -w vm.mmap_rnd_bits=28);" \
                 "the tsan suite cannot run on this machine" >&2
            return 1
        fi
    fi
}

run_preset() {
    local preset=$1
    shift
    echo "=== $preset: configure and build"
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset" -j "$jobs"
    echo "=== $preset: ctest"
    ctest --preset "$preset" -j "$jobs" "$@"
}

run_preset release "$@"
run_preset asan "$@"
tsan_ready
run_preset tsan "$@"
