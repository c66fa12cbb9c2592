/*
 * vck-run's remap device (harness/machine.c): BANK at 0x11000000, ENABLE at +4, ID at +8; a
 * 64 KiB window at 0x40000000 showing bank BANK of four; the banks always at 0x42000000 +
 * N * 0x10000. Word i of bank N holds 0xB0000000 | N << 24 | i, filled through the direct
 * mappings, so any word read through the window names the bank it came from.
 *
 * Hart 0 alone: the registers; every bank through the window after each switch, including a
 * load in the same block as the switch (after a fence); a store through the window lands in the
 * selected bank; with ENABLE clear the window faults on load and store; code in the banks run
 * through the window follows the switches, and code written through one mapping of a bank
 * (window or direct) then fence.i runs the new instructions through the other.
 * Every hart: hart 0 switches banks as fast as it can while the others read through the window
 * (each word, and each half of a doubleword, must come from some bank). Then in lock-step with
 * hart 1 (the other harts sleep in wfi: with more busy harts than host cores, every round would
 * wait for the scheduler), hart 0 switches, publishes the switch in a flag after a fence, waits
 * for hart 1 to echo it, and hart 1, once it sees the flag, must read only the selected bank.
 *
 * Not for QEMU: it has no such device.
 */
#include "guest.h"

#define REMAP_BANK    0x11000000ul
#define REMAP_ENABLE  0x11000004ul
#define REMAP_ID      0x11000008ul
#define WINDOW        0x40000000ul
#define BANKS_DIRECT  0x42000000ul
#define BANK_SIZE     0x10000ul
#define WORDS         (BANK_SIZE / 4)
#define N_BANKS       4
#define FREE_SWITCHES 1000
#define LOCKSTEP      300

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        puts_uart("  MISMATCH: ");
        puts_uart(what);
        putc_uart('\n');
        failures++;
    }
}

static uint32_t pattern(unsigned bank, unsigned i)
{
    return 0xb0000000u | bank << 24 | i;
}

/* The bank word @v at word offset @i came from, or -1 if it is no bank's. */
static int bank_of(uint32_t v, unsigned i)
{
    unsigned b = (v >> 24) & 0xf;
    return (v & 0xf0ffffffu) == pattern(0, i) && b < N_BANKS ? (int)b : -1;
}

static volatile uint32_t *window(void)
{
    return (volatile uint32_t *)WINDOW;
}

static volatile uint32_t *direct(unsigned bank)
{
    return (volatile uint32_t *)(BANKS_DIRECT + bank * BANK_SIZE);
}

static void select_bank(unsigned b)
{
    mmio_write32(REMAP_BANK, b);
    fence_io();
}

static unsigned next_bank(uint32_t *state)
{
    *state = *state * 1103515245u + 12345u;
    return (*state >> 16) % N_BANKS;
}

/* ---- traps for the disabled window ------------------------------------------------------- */

static volatile unsigned n_traps;
static volatile uint64_t last_cause, last_tval;

static void handler(struct trap_frame *f)
{
    n_traps++;
    last_cause = f->mcause;
    last_tval = f->mtval;
    if (f->mcause != 5 && f->mcause != 7)
        fail(9, "unexpected trap");
    skip_insn(f);
}

static __attribute__((noinline)) uint32_t load_word(uintptr_t a)
{
    return *(volatile uint32_t *)a;
}

static __attribute__((noinline)) void store_word(uintptr_t a, uint32_t v)
{
    *(volatile uint32_t *)a = v;
}

/* ---- hart 0 alone ------------------------------------------------------------------------ */

static void registers(void)
{
    uint32_t id = mmio_read32(REMAP_ID), bank = mmio_read32(REMAP_BANK),
             en = mmio_read32(REMAP_ENABLE);
    puts_uart("remap: id ");
    print_hex32(id);
    puts_uart(", bank ");
    print_u64(bank);
    puts_uart(", enable ");
    print_u64(en);
    putc_uart('\n');
    check(bank == 0 && en == 1, "registers after reset");
}

static void fill_banks(void)
{
    for (unsigned b = 0; b < N_BANKS; b++)
        for (unsigned i = 0; i < WORDS; i++)
            direct(b)[i] = pattern(b, i);
}

static unsigned scan_window(unsigned b)
{
    unsigned wrong = 0;
    for (unsigned i = 0; i < WORDS; i++)
        wrong += window()[i] != pattern(b, i);
    return wrong;
}

static void switching(void)
{
    static const unsigned seq[] = {0, 1, 2, 3, 2, 0, 3, 1, 1, 0};
    unsigned wrong = 0, wrong_first = 0, wrong_reg = 0;
    for (unsigned k = 0; k < sizeof(seq) / sizeof(seq[0]); k++) {
        unsigned b = seq[k];
        mmio_write32(REMAP_BANK, b);
        fence_io();
        uint32_t first = window()[5]; /* straight after the fence, no branch between */
        wrong_first += first != pattern(b, 5);
        wrong_reg += mmio_read32(REMAP_BANK) != b;
        wrong += scan_window(b);
    }
    puts_uart("10 switches, whole window read after each: wrong words ");
    print_u64(wrong);
    puts_uart(", wrong first loads after the switch ");
    print_u64(wrong_first);
    puts_uart(", wrong BANK reads ");
    print_u64(wrong_reg);
    putc_uart('\n');
    check(wrong == 0, "window contents after a switch");
    check(wrong_first == 0, "a load right after switch + fence (same block) saw the old bank");
    check(wrong_reg == 0, "BANK register");
}

static void store_through_window(void)
{
    select_bank(2);
    window()[100] = 0x12345678u;
    fence();
    bool ok = direct(2)[100] == 0x12345678u;
    for (unsigned b = 0; b < N_BANKS; b++)
        if (b != 2)
            ok &= direct(b)[100] == pattern(b, 100);
    direct(2)[100] = pattern(2, 100);
    puts_uart("a store through the window lands in the selected bank only: ");
    puts_uart(ok ? "yes\n" : "no\n");
    check(ok, "store through the window");
}

static void disabled_window(void)
{
    select_bank(3);
    mmio_write32(REMAP_ENABLE, 0);
    fence_io();
    unsigned en = mmio_read32(REMAP_ENABLE);
    n_traps = 0;
    (void)load_word(WINDOW + 0x40);
    bool load_fault = n_traps == 1 && last_cause == 5 && last_tval == WINDOW + 0x40;
    store_word(WINDOW + 0x80, 1);
    bool store_fault = n_traps == 2 && last_cause == 7 && last_tval == WINDOW + 0x80;
    bool direct_ok = load_word(BANKS_DIRECT + 3 * BANK_SIZE + 0x40) == pattern(3, 0x10);
    mmio_write32(REMAP_ENABLE, 1);
    fence_io();
    bool back = load_word(WINDOW + 0x40) == pattern(3, 0x10) && n_traps == 2;
    puts_uart("window disabled: ENABLE reads ");
    print_u64(en);
    puts_uart(", load faults ");
    puts_uart(load_fault ? "yes" : "no");
    puts_uart(", store faults ");
    puts_uart(store_fault ? "yes" : "no");
    puts_uart(", banks still there ");
    puts_uart(direct_ok ? "yes" : "no");
    puts_uart(", enabled again ");
    puts_uart(back ? "yes\n" : "no\n");
    check(en == 0 && load_fault && store_fault && direct_ok && back, "ENABLE");
}

static uint64_t call(uintptr_t code)
{
    return as_code((const void *)code)();
}

static void code_in_banks(void)
{
    const unsigned off = 0x8000;
    for (unsigned b = 0; b < N_BANKS; b++) {
        direct(b)[off / 4] = insn_li_a0(10 + (int32_t)b);
        direct(b)[off / 4 + 1] = INSN_RET;
    }
    fence_i();
    static const unsigned seq[] = {0, 1, 2, 3, 1, 3, 0, 2};
    unsigned wrong = 0;
    for (unsigned k = 0; k < sizeof(seq) / sizeof(seq[0]); k++) {
        select_bank(seq[k]);
        fence_i();
        wrong += call(WINDOW + off) != 10 + seq[k];
    }
    puts_uart("code through the window follows 8 switches: wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0, "code in the window after a switch");

    /* Bank 2 is selected. Run it through the window, rewrite it through the direct mapping. */
    uint64_t before = call(WINDOW + off);
    direct(2)[off / 4] = insn_li_a0(50);
    fence_i();
    uint64_t via_direct = call(WINDOW + off);
    /* And the other way round: run it at the direct mapping, rewrite it through the window. */
    uint64_t direct_before = call(BANKS_DIRECT + 2 * BANK_SIZE + off);
    window()[off / 4] = insn_li_a0(60);
    fence_i();
    uint64_t via_window = call(BANKS_DIRECT + 2 * BANK_SIZE + off);
    puts_uart("code rewritten through the other mapping of its bank: ");
    print_u64(before);
    puts_uart(" -> ");
    print_u64(via_direct);
    puts_uart(" (window), ");
    print_u64(direct_before);
    puts_uart(" -> ");
    print_u64(via_window);
    puts_uart(" (direct)\n");
    check(before == 12 && via_direct == 50, "code run through the window, rewritten directly");
    check(direct_before == 50 && via_window == 60,
          "code run directly, rewritten through the window");
    for (unsigned b = 0; b < N_BANKS; b++) {
        direct(b)[off / 4] = pattern(b, off / 4);
        direct(b)[off / 4 + 1] = pattern(b, off / 4 + 1);
    }
}

/* ---- every hart -------------------------------------------------------------------------- */

static volatile int free_running_done;
static volatile unsigned ack;
static volatile unsigned seen[MAX_HARTS];
static volatile uint64_t reads[MAX_HARTS], bad[MAX_HARTS], stale[MAX_HARTS];

static void free_reader(unsigned hart)
{
    uint32_t rnd = hart * 2654435761u;
    uint64_t n = 0, wrong = 0;
    while (!__atomic_load_n(&free_running_done, __ATOMIC_ACQUIRE)) {
        rnd = rnd * 1664525u + 1013904223u;
        unsigned i = (rnd >> 8) % (WORDS - 1) & ~1u;
        uint32_t w = window()[i + 1];
        uint64_t d = *(volatile uint64_t *)(WINDOW + 4 * i);
        int b0 = bank_of((uint32_t)d, i), b1 = bank_of((uint32_t)(d >> 32), i + 1);
        wrong += bank_of(w, i + 1) < 0 || b0 < 0 || b0 != b1;
        n += 2;
    }
    reads[hart] = n;
    bad[hart] = wrong;
}

static void free_switcher(void)
{
    uint32_t state = 1;
    for (unsigned k = 0; k < FREE_SWITCHES; k++)
        mmio_write32(REMAP_BANK, next_bank(&state));
    __atomic_store_n(&free_running_done, 1, __ATOMIC_RELEASE);
}

/*
 * One pass of the reader's wait: a straight line (one block on vck-run) of 16 mtime reads, which
 * keep the reader busy for a while inside the block, then the flag with acquire ordering, then
 * a word of the window. Returns the flag; *@v the word.
 */
static uint32_t read_flag_then_window(uintptr_t window_word, uint32_t *v)
{
    uint32_t a, w;
    uint64_t scratch;
    __asm__ volatile(".rept 16\n"
                     " ld %2, 0(%4)\n"
                     ".endr\n"
                     " lw %0, 0(%3)\n"
                     " fence r, rw\n"
                     " lw %1, 0(%5)\n"
                     : "=&r"(a), "=&r"(w), "=&r"(scratch)
                     : "r"(&ack), "r"(CLINT_MTIME), "r"(window_word)
                     : "memory");
    *v = w;
    return a;
}

static void lockstep_reader(unsigned hart)
{
    uint32_t state = 7, rnd = hart * 40503u + 1;
    uint64_t wrong = 0, old = 0;
    for (unsigned r = 0; r < LOCKSTEP; r++) {
        unsigned b = next_bank(&state);
        unsigned i = (rnd = rnd * 1664525u + 1013904223u) >> 8 & (WORDS - 1);
        uint32_t v;
        uint64_t give_up = mtime() + 5 * MTIME_HZ;
        while (read_flag_then_window(WINDOW + 4 * i, &v) != r + 1)
            if (mtime_past(give_up))
                fail(10, "the switcher did not publish a switch within 5 s");
        wrong += v != pattern(b, i);
        for (unsigned k = 0; k < 8; k++) {
            unsigned j = (i + 97 * k + 1) & (WORDS - 1);
            uint32_t x = window()[j];
            wrong += x != pattern(b, j);
            old += bank_of(x, j) >= 0 && x != pattern(b, j);
        }
        __atomic_store_n(&seen[hart], r + 1, __ATOMIC_RELEASE);
    }
    bad[hart] = wrong;
    stale[hart] = old;
}

static void lockstep_switcher(void)
{
    uint32_t state = 7;
    for (unsigned r = 0; r < LOCKSTEP; r++) {
        mmio_write32(REMAP_BANK, next_bank(&state));
        fence_io();
        __atomic_store_n(&ack, r + 1, __ATOMIC_RELEASE);
        uint64_t give_up = mtime() + 5 * MTIME_HZ;
        while (__atomic_load_n(&seen[1], __ATOMIC_ACQUIRE) != r + 1)
            if (mtime_past(give_up))
                fail(11, "the reader did not acknowledge a switch within 5 s");
    }
}

/* Sleep until hart 0's IPI: enabled in mie, masked in mstatus, so wfi wakes without a trap. */
static void park(unsigned hart)
{
    csr_set(mie, MIE_MSIE);
    while (!(csr_read(mip) & MIP_MSIP))
        __asm__ volatile("wfi");
    mmio_write32(clint_msip(hart), 0);
    csr_clear(mie, MIE_MSIE);
}

int main(unsigned hart, unsigned harts)
{
    if (hart == 0) {
        trap_init(handler);
        if (load_word(REMAP_ID) != 0x76636b52u || n_traps)
            fail(2, "no remap device at 0x11000000 (this program is for vck-run)");
        registers();
        fill_banks();
        switching();
        store_through_window();
        disabled_window();
        code_in_banks();
        select_bank(0);
    }
    barrier();
    if (harts > 1) {
        if (hart == 0)
            free_switcher();
        else
            free_reader(hart);
        barrier();
        if (hart == 0) {
            uint64_t n = 0, wrong = 0;
            for (unsigned h = 1; h < harts; h++)
                n += reads[h], wrong += bad[h];
            puts_uart("free-running: ");
            print_u64(FREE_SWITCHES);
            puts_uart(" switches under ");
            print_u64(harts - 1);
            puts_uart(" readers: words from no bank or mixed doublewords ");
            print_u64(wrong);
            putc_uart('\n');
            check(wrong == 0, "a read through the window that no bank holds");
            check(n > 0, "the readers read nothing");
            for (unsigned h = 1; h < harts; h++)
                bad[h] = 0;
        }
        barrier();
        if (hart == 0) {
            lockstep_switcher();
            for (unsigned h = 2; h < harts; h++)
                mmio_write32(clint_msip(h), 1);
        } else if (hart == 1) {
            lockstep_reader(hart);
        } else {
            park(hart);
        }
        barrier();
        if (hart == 0) {
            uint64_t wrong = bad[1], old = stale[1];
            puts_uart("lock-step: ");
            print_u64(LOCKSTEP);
            puts_uart(" acknowledged switches: reads not from the selected bank ");
            print_u64(wrong);
            puts_uart(" (");
            print_u64(old);
            puts_uart(" after a branch)\n");
            check(wrong == 0, "a read after the acknowledged switch saw another bank");
        }
    }
    if (hart != 0)
        return 0;
    if (failures) {
        print_line_u64("remap: mismatches: ", (uint64_t)failures);
        return 1;
    }
    puts_uart("remap: PASS\n");
    return 0;
}
