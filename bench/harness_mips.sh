#!/usr/bin/env bash
# Guest MIPS of our compute workload under vck-run beside qemu-system-riscv64 (TCG), same ELF,
# same run: 1 hart, and 2 harts each running its own copy. Medians of REPS interleaved runs.
#
#   bench/harness_mips.sh [BUILD_DIR [REPS]]      (default build/release, 3)
#
# Instructions are counted by vck-run (--stats); QEMU runs the same deterministic program, so its
# MIPS is the same instruction count over its own time. Both times have the cost of starting the
# emulator and the program's hart rendezvous taken out: the time of hello.elf, measured the same
# way, is subtracted.
set -euo pipefail
build=${1:-build/release}
reps=${2:-3}
run=$build/harness/vck-run
guests=$build/tests/guests
work=${COMPUTE_ELF:-$guests/compute-bench.elf}
hello=$guests/hello.elf
qemu=$(command -v qemu-system-riscv64) || { echo "harness_mips: qemu-system-riscv64 missing" >&2; exit 1; }
for f in "$run" "$work" "$hello"; do
    [[ -e $f ]] || { echo "harness_mips: $f missing (build the release preset first)" >&2; exit 1; }
done

now() { date +%s.%N; }
# seconds taken by a command, its output discarded
timed() {
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1 || { echo "harness_mips: failed: $*" >&2; exit 1; }
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
vck() { timed "$run" --smp "$1" --timeout 600 "$2"; }
qemu_run() {
    timed timeout 600 "$qemu" -machine virt -bios none -nographic -m 128M -smp "$1" -kernel "$2"
}
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

stats=$("$run" --smp 1 --stats --timeout 600 "$work" 2>&1 >/dev/null)
insns1=$(awk '$1 == "total" {print $2}' <<<"$stats")
stats2=$("$run" --smp 2 --stats --timeout 600 "$work" 2>&1 >/dev/null)
insns2=$(awk '$1 == "total" {print $2}' <<<"$stats2")
jc=$(awk '$1 == "total" {print $5}' <<<"$stats")
chain=$(grep -o 'chaining ([0-9.]*%)' <<<"$stats" | tr -d 'chaining ()')

declare -a v1 v2 q1 q2 h1 h2 hq1 hq2
for ((i = 0; i < reps; i++)); do
    h1+=("$(vck 1 "$hello")") v1+=("$(vck 1 "$work")")
    hq1+=("$(qemu_run 1 "$hello")") q1+=("$(qemu_run 1 "$work")")
    h2+=("$(vck 2 "$hello")") v2+=("$(vck 2 "$work")")
    hq2+=("$(qemu_run 2 "$hello")") q2+=("$(qemu_run 2 "$work")")
done
m() { printf '%s\n' "$@" | median; }
tv1=$(echo "$(m "${v1[@]}") - $(m "${h1[@]}")" | bc -l)
tq1=$(echo "$(m "${q1[@]}") - $(m "${hq1[@]}")" | bc -l)
tv2=$(echo "$(m "${v2[@]}") - $(m "${h2[@]}")" | bc -l)
tq2=$(echo "$(m "${q2[@]}") - $(m "${hq2[@]}")" | bc -l)
mips() { echo "$1 / $2 / 1000000" | bc -l; }
printf 'workload: %s, %s instructions on 1 hart, %s on 2 (each hart its own copy)\n' \
    "$(basename "$work")" "$insns1" "$insns2"
printf 'medians of %d runs, startup (hello.elf) subtracted\n' "$reps"
printf '%-24s %10s %10s\n' "" "vck-run" "qemu (TCG)"
printf '%-24s %10.1f %10.1f   vck/qemu %.2f\n' "1 hart, MIPS" "$(mips "$insns1" "$tv1")" \
    "$(mips "$insns1" "$tq1")" "$(echo "$tq1 / $tv1" | bc -l)"
printf '%-24s %10.1f %10.1f   vck/qemu %.2f\n' "2 harts, aggregate MIPS" "$(mips "$insns2" "$tv2")" \
    "$(mips "$insns2" "$tq2")" "$(echo "$tq2 / $tv2" | bc -l)"
printf '2 harts / 1 hart: vck-run %.2f, qemu %.2f\n' \
    "$(echo "($insns2 / $tv2) / ($insns1 / $tv1)" | bc -l)" \
    "$(echo "($insns2 / $tq2) / ($insns1 / $tq1)" | bc -l)"
printf 'vck-run, 1 hart: jump-cache hit rate %s, dispatches served by chaining %s\n' "$jc" "$chain"
