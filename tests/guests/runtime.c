/* The guest runtime (see guest.h). */
#include "guest.h"

void putc_uart(char c)
{
    while (!(mmio_read8(UART_BASE + 5) & 0x20))
        ;
    mmio_write8(UART_BASE, (uint8_t)c);
}

void puts_uart(const char *s)
{
    while (*s)
        putc_uart(*s++);
}

void print_u64(uint64_t v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_uart(buf[--i]);
}

void print_i64(int64_t v)
{
    if (v < 0) {
        putc_uart('-');
        print_u64(-(uint64_t)v);
    } else {
        print_u64((uint64_t)v);
    }
}

static void print_hex_digits(uint64_t v, int top)
{
    puts_uart("0x");
    for (int s = top; s >= 0; s -= 4)
        putc_uart("0123456789abcdef"[(v >> s) & 15]);
}

void print_hex(uint64_t v)
{
    print_hex_digits(v, 60);
}

void print_hex32(uint32_t v)
{
    print_hex_digits(v, 28);
}

void print_line_u64(const char *label, uint64_t v)
{
    puts_uart(label);
    print_u64(v);
    putc_uart('\n');
}

static volatile int output_lock;

void lock_output(void)
{
    while (__atomic_exchange_n(&output_lock, 1, __ATOMIC_ACQUIRE))
        ;
}

void unlock_output(void)
{
    __atomic_store_n(&output_lock, 0, __ATOMIC_RELEASE);
}

_Noreturn void guest_exit(int code)
{
    mmio_write32(TEST_BASE, code ? ((uint32_t)code << 16) | 0x3333 : 0x5555);
    for (;;)
        __asm__ volatile("wfi");
}

_Noreturn void fail(int code, const char *what)
{
    lock_output();
    puts_uart("FAIL (code ");
    print_u64((uint64_t)code);
    puts_uart("): ");
    puts_uart(what);
    putc_uart('\n');
    guest_exit(code ? code : 1);
}

uint64_t mtime(void)
{
    return mmio_read64(CLINT_MTIME);
}

void delay_us(uint64_t us)
{
    uint64_t end = mtime() + us * 10;
    while (mtime() < end)
        ;
}

/*
 * How many harts run is not told to a -bios none program (QEMU passes a device tree, vck-run
 * passes nothing), and waiting for arrivals to go quiet is unreliable on a loaded host (a hart's
 * thread may not run for tens of milliseconds). The CLINT tells instead: a hart's mtimecmp keeps
 * what is written to it, and the slot of a hart that does not exist reads 0 on both machines.
 * Hart 0 writes all-ones to every slot (which also leaves no timer pending, where QEMU resets
 * mtimecmp to 0) and counts the slots that kept it, then waits for that many harts to check in.
 */
static volatile unsigned arrived, harts_total;
static volatile int go;

unsigned hart_total(void)
{
    return harts_total;
}

static unsigned count_harts(void)
{
    unsigned n = 0;
    for (unsigned h = 0; h < MAX_HARTS; h++) {
        mmio_write64(clint_mtimecmp(h), ~0ull);
        if (mmio_read64(clint_mtimecmp(h)) != ~0ull)
            break;
        n++;
    }
    return n;
}

void guest_start(unsigned hart);
void guest_start(unsigned hart)
{
    __atomic_fetch_add(&arrived, 1, __ATOMIC_ACQ_REL);
    if (hart == 0) {
        unsigned n = count_harts();
        uint64_t give_up = mtime() + 5 * MTIME_HZ;
        while (__atomic_load_n(&arrived, __ATOMIC_ACQUIRE) < n)
            if (mtime_past(give_up))
                fail(90, "not every hart the CLINT has checked in within 5 s");
        harts_total = n;
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        guest_exit(main(0, n));
    }
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
        ;
    main(hart, harts_total);
    for (;;)
        __asm__ volatile("wfi");
}

/*
 * A sense-reversing barrier: the last hart to arrive resets the count and flips the sense the
 * others spin on. amoadd.w.aqrl orders each hart's earlier accesses before its arrival; the
 * release store of the sense and the waiters' acquire loads order the flip before what follows.
 */
static volatile unsigned barrier_count, barrier_sense;

void barrier(void)
{
    unsigned sense = __atomic_load_n(&barrier_sense, __ATOMIC_ACQUIRE);
    if (__atomic_fetch_add(&barrier_count, 1, __ATOMIC_ACQ_REL) == harts_total - 1) {
        __atomic_store_n(&barrier_count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&barrier_sense, sense ^ 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&barrier_sense, __ATOMIC_ACQUIRE) == sense)
        ;
}

extern char __heap[];

void *hart_heap(unsigned hart)
{
    return __heap + (uintptr_t)hart * HEAP_PER_HART;
}

/* ---- traps ------------------------------------------------------------------------------- */

static void unexpected_trap(struct trap_frame *f)
{
    lock_output();
    puts_uart("unexpected trap: hart ");
    print_u64(csr_read(mhartid));
    puts_uart(" mcause ");
    print_hex(f->mcause);
    puts_uart(" mepc ");
    print_hex(f->mepc);
    puts_uart(" mtval ");
    print_hex(f->mtval);
    putc_uart('\n');
    unlock_output();
    fail(91, "unexpected trap");
}

trap_handler_fn trap_handler = unexpected_trap;

void trap_init(trap_handler_fn handler)
{
    trap_handler = handler ? handler : unexpected_trap;
    csr_write(mtvec, (uintptr_t)trap_entry);
}

unsigned insn_length(uint64_t pc)
{
    return (*(volatile uint16_t *)(uintptr_t)pc & 3) == 3 ? 4 : 2;
}

/* One NAPOT entry over the whole address space, RWX, for U-mode (QEMU checks PMP). */
void pmp_allow_all(void)
{
    csr_write(pmpaddr0, ~0ul >> 10);
    csr_write(pmpcfg0, 0x1f);
}
