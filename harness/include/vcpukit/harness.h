/*
 * vcpukit/harness.h - a multi-hart RV64IMAC machine (QEMU virt-compatible, -bios none) built
 * from the kit: the memory map and page maps for guest-physical accesses, the block table and
 * jump caches for dispatch, page locking for self-modifying code, RCU for everything published.
 * One host thread per hart. vck-run is its command line; an emulator author can also drive it.
 *
 * Threads: vck_machine_* are called by one controlling thread (which must be registered with
 * vcpukit/rcu.h); the harts are threads the machine starts and joins itself.
 */
#ifndef VCPUKIT_HARNESS_H
#define VCPUKIT_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The machine's memory map (QEMU virt). */
#define VCK_VIRT_TEST_BASE  0x100000ull   /* SiFive test finisher */
#define VCK_VIRT_CLINT_BASE 0x2000000ull  /* CLINT / ACLINT: msip, mtimecmp, mtime */
#define VCK_VIRT_UART_BASE  0x10000000ull /* NS16550A */
#define VCK_VIRT_RAM_BASE   0x80000000ull
/* Ours: the remap device (see harness/README.md) and the RAM window it controls. */
#define VCK_REMAP_BASE        0x11000000ull
#define VCK_REMAP_WINDOW_BASE 0x40000000ull
#define VCK_REMAP_WINDOW_SIZE 0x10000ull
#define VCK_REMAP_BANKS       4

/* vck-run's exit codes other than the guest's own. */
enum vck_exit {
    VCK_EXIT_PASS = 0,
    VCK_EXIT_INTERNAL = 1,    /* the harness failed (out of memory, thread creation...) */
    VCK_EXIT_USAGE = 2,       /* bad command line */
    VCK_EXIT_BAD_ELF = 3,     /* missing, unreadable, malformed or unloadable program */
    VCK_EXIT_GUEST_FAULT = 4, /* an exception with no handler, or a trap loop */
    VCK_EXIT_TIMEOUT = 5,     /* the guest ran past --timeout */
};

struct vck_machine_options {
    unsigned harts;    /* 1..64 */
    uint64_t ram_size; /* bytes, a multiple of 4 KiB */
    double timeout;    /* seconds of host time; 0: none */
    bool trace;        /* one line per executed block on the trace stream (chaining off) */
    FILE *trace_out;   /* default stderr */
    bool uart_stdin;   /* feed the UART's receiver from stdin (default: only if not a tty) */
    FILE *uart_out;    /* default stdout */
};

struct vck_machine;

/** vck_machine_new - build the machine (memory map, devices, harts, caches). NULL + message on
 * stderr on failure. */
struct vck_machine *vck_machine_new(const struct vck_machine_options *opts);

/**
 * vck_machine_load_elf - load a RISC-V 64-bit executable into RAM and set the harts' entry.
 * Returns 0, or VCK_EXIT_BAD_ELF with a one-line message in @err (size @err_size).
 */
int vck_machine_load_elf(struct vck_machine *m, const char *path, char *err, size_t err_size);

/**
 * vck_machine_run - start every hart at the entry (a0 = hart id, a1 = 0) and wait for the end:
 * the guest's exit (test finisher or HTIF), a guest fault, or the timeout. Returns the exit
 * code vck-run uses; a message describing a fault or timeout is printed on stderr.
 */
int vck_machine_run(struct vck_machine *m);

/** vck_machine_print_stats - per hart and total figures (see vck-run --stats). */
void vck_machine_print_stats(struct vck_machine *m, FILE *out);

void vck_machine_free(struct vck_machine *m);

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_HARNESS_H */
