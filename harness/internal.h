/*
 * The harness's private declarations: the machine, its harts, decoded blocks.
 */
#ifndef VCK_HARNESS_INTERNAL_H
#define VCK_HARNESS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/harness.h>
#include <vcpukit/rcu.h>
#include <vcpukit/tbcache.h>

#define PAGE_BITS 12
#define PAGE_SIZE ((uint64_t)1 << PAGE_BITS)
#define PAGE_MASK (~(PAGE_SIZE - 1))

#define TLB_ENTRIES     256
#define JC_BITS         12 /* 4096 jump-cache slots per hart */
#define MAX_BLOCK_INSNS 64

/* Trap causes (privileged spec). */
enum {
    EXC_INSN_MISALIGNED = 0,
    EXC_INSN_ACCESS = 1,
    EXC_ILLEGAL = 2,
    EXC_BREAKPOINT = 3,
    EXC_LOAD_MISALIGNED = 4,
    EXC_LOAD_ACCESS = 5,
    EXC_STORE_MISALIGNED = 6,
    EXC_STORE_ACCESS = 7,
    EXC_ECALL_U = 8,
    EXC_ECALL_M = 11,
};
#define IRQ_MSI         3
#define IRQ_MTI         7
#define MIP_MSIP        (1ull << IRQ_MSI)
#define MIP_MTIP        (1ull << IRQ_MTI)
#define CAUSE_INTERRUPT (1ull << 63)

#define PRIV_U 0
#define PRIV_M 3

/* Events another thread asks a hart to handle at its next block boundary. */
enum {
    EV_STOP = 1u << 0,  /* the machine is ending */
    EV_IRQ = 1u << 2,   /* mip changed */
    EV_YIELD = 1u << 3, /* this hart changed the memory map: end the batch (and its section) */
};

/* A pre-decoded instruction. Writes to x0 go to x[32], so no op tests rd. */
struct op {
    uint16_t kind;
    uint8_t rd, rs1, rs2;
    uint8_t len;     /* 2 or 4 bytes */
    uint16_t pc_off; /* from the block's pc */
    uint32_t insn;   /* the raw instruction, for mtval on illegal ones */
    int64_t imm;
};

struct block {
    struct vck_tb tb;
    uint64_t map_gen; /* machine.map_gen before translating: checked by the add (validate) */
    uint32_t n_ops;
    uint32_t n_insns;
    struct op ops[];
};

struct tlb_entry {
    /* page number + 1, or 0; atomic because other harts clear write tags of code pages */
    _Atomic uint64_t read_tag, write_tag;
    uintptr_t addend; /* host address = guest address + addend */
};

struct hart_stats {
    uint64_t insns, blocks_executed, blocks_translated, chained, lookups, traps, interrupts;
    uint64_t smc_stores, retranslations;
};

struct machine;

struct hart {
    struct machine *m;
    unsigned id;
    uint64_t x[33];
    uint64_t pc;
    unsigned priv;
    /* CSRs */
    uint64_t mstatus, mtvec, mepc, mcause, mtval, mie, mscratch, mcounteren;
    uint64_t mcycle_base, minstret; /* mcycle = minstret here */
    /* LR/SC */
    uint64_t resv_addr, resv_value;
    bool resv_valid;
    /* Trap-loop detection: the last exception taken at its handler's own address. */
    uint64_t loop_cause, loop_minstret, loop_since; /* loop_since: mtime of its first round */
    unsigned loop_count;

    /* Written by other threads: a line of their own, apart from the registers and stats. */
    _Alignas(64) _Atomic unsigned events;
    _Atomic uint64_t mip; /* MSIP and MTIP: the CLINT's and the timer thread's */
    uint64_t fence_word;  /* ThreadSanitizer builds: what full_fence() operates on */
    struct tlb_entry tlb[TLB_ENTRIES];
    struct vck_tb_cpu *tbcpu;

    /* Code arena: blocks are bump-allocated here (a registered code region). */
    uint8_t *arena;
    size_t arena_used, arena_size;

    pthread_t thread;
    pthread_mutex_t sleep_lock;
    pthread_cond_t sleep_cond;
    bool sleeping;

    struct hart_stats st;
} __attribute__((aligned(64))); /* harts never share a cache line (their stats and registers) */

struct uart {
    pthread_mutex_t lock;
    FILE *out;
    uint8_t ier, lcr, mcr, scr, dll, dlm;
    int in_fd; /* -1: no receiver */
    bool eof;
    int peeked; /* a byte read ahead, or -1 */
};

struct remap {
    struct machine *m;
    struct vck_mr *window;
    struct vck_mr *banks[VCK_REMAP_BANKS];
    /* Registers change only once their mapping is published; reads take it too. */
    pthread_mutex_t lock;
    _Atomic uint32_t selected, enabled;
};

struct machine {
    struct vck_machine_options opts;
    struct vck_memmap *mm;
    struct vck_mr *root, *ram;
    struct vck_mr *owned[32];
    size_t n_owned;
    struct vck_as *as;
    struct vck_dispatch *dispatch;
    struct vck_tb_cache *tbc;
    struct vck_mem_listener listener;
    /* Host ranges of RAM the current commit unmapped: their blocks go at its end (writer lock). */
    struct host_range {
        uintptr_t start, last;
    } * gone;
    size_t n_gone, cap_gone;
    bool gone_all; /* a range could not be noted: the commit invalidates every block */

    uint8_t *ram_host;
    uint64_t ram_size;
    /* Bumped (seq_cst) by every memory-map change before the harts' TLBs are cleared. */
    _Atomic uint64_t map_gen;
    /* One bit per RAM page: stores to it take the slow path (code, or HTIF's tohost). */
    _Atomic uint64_t *write_trap;
    /* One bit per RAM page: write_trap set *and* the grace period after it passed. */
    _Atomic uint64_t *write_protected;

    struct hart *harts;
    unsigned n_harts;
    uint64_t entry;
    uint64_t tohost, fromhost; /* 0 when the program has none */

    /* The ELF's loadable segments, kept for a reset. */
    struct segment {
        uint64_t addr, memsz, filesz;
        uint8_t *data;
    } * segments;
    size_t n_segments;

    /* CLINT */
    _Atomic uint64_t *mtimecmp;
    uint64_t time_base_ns;
    pthread_t timer_thread;
    pthread_mutex_t timer_lock;
    pthread_cond_t timer_cond;

    struct uart uart;
    struct remap remap;

    /* The end of the run. */
    pthread_mutex_t end_lock;
    pthread_cond_t end_cond;
    bool ended, reset_requested;
    int exit_code;
    char fault[256];

    pthread_mutex_t trace_lock;
    uint64_t flushes;
};

/* cpu.c */
void hart_reset(struct hart *h, uint64_t entry);
void *hart_main(void *arg);
void hart_kick(struct hart *h, unsigned events);
void hart_end_batch_soon(void);

/* machine.c */
uint64_t machine_mtime(struct machine *m);
void machine_end(struct machine *m, int code, const char *fault_fmt, ...)
    __attribute__((format(printf, 3, 4)));
void machine_request_reset(struct machine *m);
bool machine_store_trapped(struct machine *m, uint64_t addr);
void machine_protect_page(struct machine *m, uint64_t page_addr);
bool machine_page_protected(struct machine *m, uint64_t addr);
void machine_tohost_write(struct machine *m, struct hart *h, uint64_t value);

#endif
