/*
 * Machine interrupts from the CLINT.
 *   - Timer: every hart at once takes N_TICKS timer interrupts, sleeping in wfi between them,
 *     each handler moving its own mtimecmp on; none may come before its deadline.
 *   - Masking (hart 0): with mstatus.MIE clear a due timer shows in mip.MTIP and traps nowhere;
 *     setting MIE takes it at once. wfi with MIE clear still wakes on an enabled pending
 *     interrupt, without a trap. Moving mtimecmp past mtime clears MTIP.
 *   - Software interrupts: a self-IPI (msip reads back 1 while masked, 0 after the handler);
 *     then hart 0 sends IPI_ROUNDS IPIs to every other hart, each asleep in wfi and
 *     acknowledging from its handler, and hart 1 sends as many back to hart 0, asleep likewise.
 *   - Vectored mtvec (hart 0): exceptions go to the base, MSI to base + 12, MTI to base + 28.
 */
#include "guest.h"

#define N_TICKS    20
#define PERIOD     5000 /* 500 us */
#define IPI_ROUNDS 20

struct hart_state {
    volatile unsigned ticks, early, ipis, vector, ecalls;
    volatile uint64_t deadline;
} __attribute__((aligned(64)));

static struct hart_state st[MAX_HARTS];
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

static void handler(struct trap_frame *f)
{
    unsigned h = (unsigned)csr_read(mhartid);
    struct hart_state *s = &st[h];
    s->vector = (unsigned)csr_read(mscratch);
    if (f->mcause == (MCAUSE_INT | 7)) {
        if (mtime() < s->deadline)
            s->early++;
        s->ticks++;
        if (s->ticks < N_TICKS) {
            s->deadline += PERIOD;
            mmio_write64(clint_mtimecmp(h), s->deadline);
        } else {
            mmio_write64(clint_mtimecmp(h), ~0ull);
        }
    } else if (f->mcause == (MCAUSE_INT | 3)) {
        mmio_write32(clint_msip(h), 0);
        s->ipis++;
    } else if (f->mcause == 11) {
        s->ecalls++;
        skip_insn(f);
    } else {
        fail(5, "unexpected trap");
    }
}

/*
 * wfi until *@counter (bumped by the handler) reaches @n; fails the run after 5 s. Called with
 * mstatus.MIE set, returns with it set. The check and the wfi happen with MIE clear: an
 * interrupt taken between a check and the wfi would leave the hart asleep with nothing more to
 * come. wfi wakes on an interrupt that is pending and enabled in mie whatever MIE says; setting
 * MIE then takes it.
 */
static void sleep_until(volatile unsigned *counter, unsigned n, const char *what)
{
    uint64_t give_up = mtime() + 5 * MTIME_HZ;
    csr_clear(mstatus, MSTATUS_MIE);
    while (*counter < n) {
        __asm__ volatile("wfi");
        csr_set(mstatus, MSTATUS_MIE);
        csr_clear(mstatus, MSTATUS_MIE);
        if (mtime_past(give_up))
            fail(6, what);
    }
    csr_set(mstatus, MSTATUS_MIE);
}

static void ticks_all_harts(unsigned hart)
{
    struct hart_state *s = &st[hart];
    uint64_t start = mtime();
    s->deadline = start + PERIOD;
    mmio_write64(clint_mtimecmp(hart), s->deadline);
    csr_set(mie, MIE_MTIE);
    csr_set(mstatus, MSTATUS_MIE);
    sleep_until(&s->ticks, N_TICKS, "a hart did not get its timer interrupts within 5 s");
    csr_clear(mstatus, MSTATUS_MIE);
    csr_clear(mie, MIE_MTIE);
    if (mtime() - start < (uint64_t)N_TICKS * PERIOD)
        s->early++;
}

static bool poll_mip(unsigned long bit, bool want)
{
    uint64_t give_up = mtime() + MTIME_HZ;
    while (!!(csr_read(mip) & bit) != want)
        if (mtime_past(give_up))
            return false;
    return true;
}

static void masking(void)
{
    struct hart_state *s = &st[0];
    unsigned before = s->ticks;
    csr_set(mie, MIE_MTIE);
    s->deadline = mtime();
    mmio_write64(clint_mtimecmp(0), s->deadline);
    bool pending = poll_mip(MIP_MTIP, true);
    delay_us(1000);
    bool no_trap = s->ticks == before;
    csr_set(mstatus, MSTATUS_MIE);
    bool taken = s->ticks == before + 1; /* read right after the csrs, with no wfi between */
    csr_clear(mstatus, MSTATUS_MIE);
    bool cleared = poll_mip(MIP_MTIP, false); /* the handler wrote mtimecmp = ~0 */
    puts_uart("masked timer: pending in mip ");
    puts_uart(pending ? "yes" : "no");
    puts_uart(", trapped while masked ");
    puts_uart(no_trap ? "no" : "yes");
    puts_uart(", taken on enable ");
    puts_uart(taken ? "yes" : "no");
    puts_uart(", MTIP cleared by mtimecmp ");
    puts_uart(cleared ? "yes\n" : "no\n");
    check(pending && no_trap && taken && cleared, "masked timer interrupt");

    /* wfi with MIE clear: wakes on MTIP (enabled in mie), no trap. */
    uint64_t due = mtime() + 2000;
    mmio_write64(clint_mtimecmp(0), due);
    unsigned wakeups = 0;
    while (!(csr_read(mip) & MIP_MTIP) && wakeups < 1000000) {
        __asm__ volatile("wfi");
        wakeups++;
    }
    bool woke = (csr_read(mip) & MIP_MTIP) && mtime() >= due && s->ticks == before + 1;
    mmio_write64(clint_mtimecmp(0), ~0ull);
    csr_clear(mie, MIE_MTIE);
    puts_uart("wfi with MIE clear: woke on MTIP without a trap ");
    puts_uart(woke ? "yes\n" : "no\n");
    check(woke, "wfi wake-up with interrupts masked");
}

static void self_ipi(void)
{
    struct hart_state *s = &st[0];
    csr_set(mie, MIE_MSIE);
    mmio_write32(clint_msip(0), 1);
    bool reads_one = mmio_read32(clint_msip(0)) == 1 && poll_mip(MIP_MSIP, true);
    bool no_trap = s->ipis == 0;
    csr_set(mstatus, MSTATUS_MIE);
    sleep_until(&s->ipis, 1, "the self-IPI was not taken");
    csr_clear(mstatus, MSTATUS_MIE);
    bool cleared = mmio_read32(clint_msip(0)) == 0 && !(csr_read(mip) & MIP_MSIP);
    puts_uart("self-IPI: msip reads 1 while masked ");
    puts_uart(reads_one && no_trap ? "yes" : "no");
    puts_uart(", taken and cleared ");
    puts_uart(cleared ? "yes\n" : "no\n");
    check(reads_one && no_trap && cleared, "self-IPI");
    s->ipis = 0;
}

/* Hart 0 to every other hart, then hart 1 back to hart 0; everyone asleep in wfi meanwhile. */
static void ipis_between_harts(unsigned hart, unsigned harts)
{
    struct hart_state *s = &st[hart];
    csr_set(mie, MIE_MSIE);
    csr_set(mstatus, MSTATUS_MIE);
    barrier();
    if (hart == 0) {
        for (unsigned r = 0; r < IPI_ROUNDS; r++) {
            for (unsigned h = 1; h < harts; h++) {
                mmio_write32(clint_msip(h), 1);
                uint64_t give_up = mtime() + 5 * MTIME_HZ;
                while (st[h].ipis != r + 1)
                    if (mtime_past(give_up))
                        fail(7, "a hart asleep in wfi did not take an IPI within 5 s");
            }
        }
        sleep_until(&s->ipis, IPI_ROUNDS, "hart 0 asleep in wfi did not take hart 1's IPIs");
    } else {
        sleep_until(&s->ipis, IPI_ROUNDS, "a hart asleep in wfi missed IPIs");
        if (hart == 1) {
            for (unsigned r = 0; r < IPI_ROUNDS; r++) {
                mmio_write32(clint_msip(0), 1);
                uint64_t give_up = mtime() + 5 * MTIME_HZ;
                while (st[0].ipis != r + 1)
                    if (mtime_past(give_up))
                        fail(8, "hart 0 did not take an IPI from hart 1 within 5 s");
            }
        }
    }
    csr_clear(mstatus, MSTATUS_MIE);
    csr_clear(mie, MIE_MSIE);
    barrier();
}

/* The vector table: each entry notes its number in mscratch and goes to trap_entry. */
__asm__(".text\n"
        ".option push\n"
        ".option norvc\n"
        ".option norelax\n"
        ".balign 256\n"
        ".globl vec_table\n"
        "vec_table:\n"
        " j vec_exc\n"
        " j vec_other\n"
        " j vec_other\n"
        " j vec_msi\n"
        " j vec_other\n"
        " j vec_other\n"
        " j vec_other\n"
        " j vec_mti\n"
        " j vec_other\n"
        " j vec_other\n"
        " j vec_other\n"
        " j vec_other\n"
        "vec_exc: csrwi mscratch, 16\n"
        " j trap_entry\n"
        "vec_msi: csrwi mscratch, 3\n"
        " j trap_entry\n"
        "vec_mti: csrwi mscratch, 7\n"
        " j trap_entry\n"
        "vec_other: csrwi mscratch, 31\n"
        " j trap_entry\n"
        ".option pop\n");
extern char vec_table[];

static void vectored(void)
{
    struct hart_state *s = &st[0];
    csr_write(mtvec, (uintptr_t)vec_table | 1);
    __asm__ volatile("ecall");
    unsigned exc = s->vector;

    csr_set(mie, MIE_MSIE);
    csr_set(mstatus, MSTATUS_MIE);
    mmio_write32(clint_msip(0), 1);
    sleep_until(&s->ipis, 1, "the self-IPI was not taken (vectored)");
    unsigned msi = s->vector;
    csr_clear(mie, MIE_MSIE);

    unsigned ticks = s->ticks;
    s->deadline = mtime() + 100;
    csr_set(mie, MIE_MTIE);
    mmio_write64(clint_mtimecmp(0), s->deadline);
    sleep_until(&s->ticks, ticks + 1, "the timer interrupt was not taken (vectored)");
    unsigned mti = s->vector;
    csr_clear(mstatus, MSTATUS_MIE);
    csr_clear(mie, MIE_MTIE);
    csr_write(mtvec, (uintptr_t)trap_entry);

    puts_uart("vectored mtvec: ecall at entry ");
    print_u64(exc == 16 ? 0 : exc);
    puts_uart(", MSI at entry ");
    print_u64(msi);
    puts_uart(", MTI at entry ");
    print_u64(mti);
    putc_uart('\n');
    check(exc == 16 && msi == 3 && mti == 7 && s->ecalls == 1, "vectored mtvec");
}

int main(unsigned hart, unsigned harts)
{
    trap_init(handler);
    csr_write(mscratch, 0);
    barrier();
    ticks_all_harts(hart);
    barrier();
    if (hart == 0) {
        unsigned bad = 0;
        for (unsigned h = 0; h < harts; h++)
            bad += st[h].ticks != N_TICKS || st[h].early;
        puts_uart("timer: ");
        print_u64(harts);
        puts_uart(" harts x ");
        print_u64(N_TICKS);
        puts_uart(" interrupts, harts with early or missing ones: ");
        print_u64(bad);
        putc_uart('\n');
        check(bad == 0, "periodic timer interrupts");
        masking();
        self_ipi();
    }
    barrier();
    if (harts > 1) {
        ipis_between_harts(hart, harts);
        if (hart == 0) {
            puts_uart("IPIs: ");
            print_u64(IPI_ROUNDS);
            puts_uart(" rounds from hart 0 to ");
            print_u64(harts - 1);
            puts_uart(" sleeping harts, and from hart 1 back to hart 0\n");
        }
    }
    if (hart != 0)
        return 0;
    vectored();
    if (failures) {
        print_line_u64("timer: mismatches: ", (uint64_t)failures);
        return 1;
    }
    puts_uart("timer: PASS\n");
    return 0;
}
