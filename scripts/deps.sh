#!/usr/bin/env bash
# Installs the Debian packages vcpukit needs, and only those that are missing.
# Fast and silent when everything is present. Exit 0 when all are installed, 1 when some are
# missing and could not be installed (the message says which, and the command to install them).
set -euo pipefail

packages=(
    # build
    gcc g++ make cmake ninja-build pkg-config
    # the kit's libraries and their peers in benchmarks
    liburcu-dev libjemalloc-dev libck-dev libxxhash-dev
    # tests and benchmarks
    libcriterion-dev libbenchmark-dev
    # clang for the asan preset, and (with lld) for RISC-V guest programs
    clang lld libclang-rt-14-dev
    # the harness: ELF loading, and QEMU as the reference for guest programs' output
    libelf-dev qemu-system-misc
)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "deps: missing Debian packages: ${missing[*]}"
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "deps: cannot install them here (not root, or no apt-get). Run:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >/tmp/vcpukit-deps.log 2>&1; then
    tail -n 20 /tmp/vcpukit-deps.log >&2
    echo "deps: apt-get failed (log: /tmp/vcpukit-deps.log). Install by hand:" >&2
    echo "    apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "deps: installed ${missing[*]}"
