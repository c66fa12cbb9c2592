/*
 * The guest programs' runtime: UART output, the test finisher, a hart rendezvous and barrier,
 * CLINT, a machine-mode trap frame, and hand encoders for the few instructions the code-patching
 * programs write. Each program defines int main(unsigned hart, unsigned harts); hart 0's result
 * ends the run (0 pass, else the fail code), the other harts' results are ignored.
 *
 * Everything here runs the same on vck-run and on qemu-system-riscv64 -machine virt -bios none.
 */
#ifndef VCK_GUEST_H
#define VCK_GUEST_H

#include <stdbool.h>
#include <stdint.h>

#define UART_BASE   0x10000000ul
#define TEST_BASE   0x100000ul
#define CLINT_BASE  0x2000000ul
#define CLINT_MTIME (CLINT_BASE + 0xbff8)
#define MAX_HARTS   64
#define MTIME_HZ    10000000ull

static inline uintptr_t clint_msip(unsigned hart)
{
    return CLINT_BASE + 4ul * hart;
}

static inline uintptr_t clint_mtimecmp(unsigned hart)
{
    return CLINT_BASE + 0x4000ul + 8ul * hart;
}

static inline uint8_t mmio_read8(uintptr_t a)
{
    return *(volatile uint8_t *)a;
}
static inline void mmio_write8(uintptr_t a, uint8_t v)
{
    *(volatile uint8_t *)a = v;
}
static inline uint32_t mmio_read32(uintptr_t a)
{
    return *(volatile uint32_t *)a;
}
static inline void mmio_write32(uintptr_t a, uint32_t v)
{
    *(volatile uint32_t *)a = v;
}
static inline uint64_t mmio_read64(uintptr_t a)
{
    return *(volatile uint64_t *)a;
}
static inline void mmio_write64(uintptr_t a, uint64_t v)
{
    *(volatile uint64_t *)a = v;
}

#define csr_read(name)                                                                             \
    ({                                                                                             \
        unsigned long v_;                                                                          \
        __asm__ volatile("csrr %0, " #name : "=r"(v_));                                            \
        v_;                                                                                        \
    })
#define csr_write(name, v) __asm__ volatile("csrw " #name ", %0" : : "r"((unsigned long)(v)))
#define csr_set(name, v)   __asm__ volatile("csrs " #name ", %0" : : "r"((unsigned long)(v)))
#define csr_clear(name, v) __asm__ volatile("csrc " #name ", %0" : : "r"((unsigned long)(v)))

#define MSTATUS_MIE  (1ul << 3)
#define MSTATUS_MPIE (1ul << 7)
#define MSTATUS_MPP  (3ul << 11)
#define MIE_MSIE     (1ul << 3)
#define MIE_MTIE     (1ul << 7)
#define MIP_MSIP     (1ul << 3)
#define MIP_MTIP     (1ul << 7)
#define MCAUSE_INT   (1ul << 63)

static inline void fence(void)
{
    __asm__ volatile("fence rw, rw" ::: "memory");
}

/* All I/O and memory: orders device accesses (the remap device) against RAM accesses. */
static inline void fence_io(void)
{
    __asm__ volatile("fence iorw, iorw" ::: "memory");
}

static inline void fence_i(void)
{
    __asm__ volatile("fence.i" ::: "memory");
}

static inline void cpu_relax(void)
{
    __asm__ volatile("nop" ::: "memory");
}

void putc_uart(char c);
void puts_uart(const char *s); /* no newline added */
void print_u64(uint64_t v);
void print_i64(int64_t v);
void print_hex(uint64_t v);
void print_hex32(uint32_t v);
/* puts_uart(label) print_u64(v) and a newline. */
void print_line_u64(const char *label, uint64_t v);
/* Serialised output: whole lines from several harts do not interleave. */
void lock_output(void);
void unlock_output(void);

_Noreturn void guest_exit(int code); /* 0: pass; any hart may call it */
/* "FAIL (code N): what\n" on the UART, then guest_exit(code). Any hart. */
_Noreturn void fail(int code, const char *what);
uint64_t mtime(void); /* 10 MHz */
void delay_us(uint64_t us);
/* mtime() is past @deadline (a value of mtime()). */
static inline bool mtime_past(uint64_t deadline)
{
    return mtime() >= deadline;
}

/* Every hart of the run waits until all have arrived (sense-reversing, on AMOs). */
void barrier(void);
/* How many harts take part: the same value main() receives. */
unsigned hart_total(void);

/* Per-hart scratch memory past the stacks: 512 KiB each, 64-byte aligned. */
#define HEAP_PER_HART (512u << 10)
void *hart_heap(unsigned hart);

/*
 * Machine-mode traps. trap_init() points this hart's mtvec at trap_entry (crt0.S), which saves
 * every register into a frame and calls @handler (one handler for the whole program; NULL
 * installs one that fails the run on any trap). The handler may change the frame: mepc to skip
 * or redirect, mstatus (MPP, MPIE), any register; x[0] is ignored on return.
 */
struct trap_frame {
    uint64_t x[32];
    uint64_t mepc, mcause, mtval, mstatus;
};
typedef void (*trap_handler_fn)(struct trap_frame *f);
void trap_init(trap_handler_fn handler);
void trap_entry(void);
/* Handler helpers: the length of the instruction at @pc (2 or 4), from its first parcel. */
unsigned insn_length(uint64_t pc);
static inline void skip_insn(struct trap_frame *f)
{
    f->mepc += insn_length(f->mepc);
}

/*
 * U-mode: run_user(fn) calls fn in U-mode (same stack, no translation); fn's return lands on an
 * ecall. The program's handler, on cause 8 (ecall from U), calls user_return_from(f), which
 * resumes M-mode in run_user, returning fn's a0. On QEMU, U-mode needs a PMP entry: call
 * pmp_allow_all() first (the handler must skip illegal CSR accesses while it runs: a machine
 * without PMP may trap on them).
 */
uint64_t run_user(uint64_t (*fn)(void));
void user_return(void);
static inline void user_return_from(struct trap_frame *f)
{
    f->mepc = (uint64_t)(uintptr_t)user_return;
    f->mstatus |= MSTATUS_MPP;
}
void pmp_allow_all(void);

/* Instruction encoders for code written at run time. */
enum { REG_ZERO = 0, REG_RA = 1, REG_T0 = 5, REG_A0 = 10, REG_A1 = 11 };
#define INSN_RET     0x00008067u /* jalr x0, 0(ra) */
#define INSN_NOP     0x00000013u /* addi x0, x0, 0 */
#define INSN_FENCE_I 0x0000100fu
#define INSN_SELF    0x00000063u /* beq x0, x0, 0: a branch to itself */
#define CINSN_RET    0x8082u     /* c.jr ra */
static inline uint32_t insn_addi(unsigned rd, unsigned rs1, int32_t imm)
{
    return ((uint32_t)imm & 0xfff) << 20 | rs1 << 15 | rd << 7 | 0x13;
}
static inline uint32_t insn_li_a0(int32_t k) /* -2048..2047 */
{
    return insn_addi(REG_A0, REG_ZERO, k);
}
static inline uint32_t insn_sw(unsigned rs2, unsigned rs1, int32_t off)
{
    uint32_t o = (uint32_t)off & 0xfff;
    return (o >> 5) << 25 | rs2 << 20 | rs1 << 15 | 2u << 12 | (o & 31) << 7 | 0x23;
}
static inline uint32_t insn_bne(unsigned rs1, unsigned rs2, int32_t off) /* even, +-4 KiB */
{
    uint32_t o = (uint32_t)off;
    return ((o >> 12) & 1) << 31 | ((o >> 5) & 0x3f) << 25 | rs2 << 20 | rs1 << 15 | 1u << 12 |
           ((o >> 1) & 0xf) << 8 | ((o >> 11) & 1) << 7 | 0x63;
}
static inline uint32_t insn_jal(unsigned rd, int32_t off) /* even, +-1 MiB */
{
    uint32_t o = (uint32_t)off;
    return ((o >> 20) & 1) << 31 | ((o >> 1) & 0x3ff) << 21 | ((o >> 11) & 1) << 20 |
           ((o >> 12) & 0xff) << 12 | rd << 7 | 0x6f;
}
static inline uint16_t cinsn_li(unsigned rd, int32_t k) /* c.li rd, k: -32..31, rd != 0 */
{
    uint32_t v = (uint32_t)k;
    return (uint16_t)(2u << 13 | ((v >> 5) & 1) << 12 | rd << 7 | (v & 31) << 2 | 1);
}

/*
 * Code written at run time is called through this type. The address is laundered through an
 * empty asm so that the call stays indirect: clang 14 turns a call to a constant address like
 * `&buf[256]` into `call buf`, dropping the offset.
 */
typedef uint64_t (*code_fn)(void);
static inline uintptr_t opaque_addr(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    __asm__("" : "+r"(a));
    return a;
}
static inline code_fn as_code(const void *p)
{
    return (code_fn)opaque_addr(p);
}

int main(unsigned hart, unsigned harts);

#endif
