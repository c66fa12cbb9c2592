/*
 * Mutual exclusion. Every hart takes a lock ITERS times, first an amoswap test-and-test-and-set
 * lock, then an LR/SC lock, and inside the critical section checks an "inside" flag (nobody
 * else may be in), does a non-atomic read-modify-write of two words tied by an invariant
 * (b == 3a + 7), spins a little with the data read to widen any race, writes both back and
 * checks the flag still holds its own mark. Hart 0 checks the totals after a barrier: any
 * overlap, a broken invariant or a lost update fails the run.
 *
 * -DMUTEX_BROKEN builds the checker's broken twin: the locks do nothing, and the run must fail
 * with "exclusion violated" on more than one hart (it repeats rounds until the checker sees it).
 */
#include "guest.h"

#define ITERS  30000
#define ROUNDS 50 /* broken twin only: rounds to try before giving up */

struct shared {
    volatile uint64_t inside; /* 0, or the hart inside + 1 */
    volatile uint64_t a, b;
};

static struct shared s __attribute__((aligned(64)));
static volatile uint32_t lock __attribute__((aligned(64)));
static volatile unsigned overlaps[MAX_HARTS], torn[MAX_HARTS];
#ifdef MUTEX_BROKEN
static volatile int stop;
#endif

static void amoswap_lock(volatile uint32_t *l)
{
#ifndef MUTEX_BROKEN
    for (;;) {
        uint32_t old;
        __asm__ volatile("amoswap.w.aq %0, %2, (%1)" : "=r"(old) : "r"(l), "r"(1) : "memory");
        if (!old)
            return;
        while (*l)
            cpu_relax();
    }
#else
    (void)l;
#endif
}

static void amoswap_unlock(volatile uint32_t *l)
{
#ifndef MUTEX_BROKEN
    __asm__ volatile("amoswap.w.rl zero, zero, (%0)" : : "r"(l) : "memory");
#else
    (void)l;
#endif
}

static void lrsc_lock(volatile uint32_t *l)
{
#ifndef MUTEX_BROKEN
    uint32_t seen, sc_failed;
    __asm__ volatile("1: lr.w.aq %0, (%2)\n"
                     "   bnez %0, 1b\n"
                     "   sc.w %1, %3, (%2)\n"
                     "   bnez %1, 1b\n"
                     : "=&r"(seen), "=&r"(sc_failed)
                     : "r"(l), "r"(1)
                     : "memory");
#else
    (void)l;
#endif
}

static void lrsc_unlock(volatile uint32_t *l)
{
#ifndef MUTEX_BROKEN
    __asm__ volatile("fence rw, w\n sw zero, 0(%0)" : : "r"(l) : "memory");
#else
    (void)l;
#endif
}

static void critical_section(unsigned hart)
{
    if (s.inside != 0)
        overlaps[hart]++;
    s.inside = hart + 1;
    uint64_t a = s.a, b = s.b;
    if (b != 3 * a + 7)
        torn[hart]++;
    for (volatile unsigned i = 0; i < 4; i++)
        ;
    s.a = a + 1;
    s.b = 3 * (a + 1) + 7;
    if (s.inside != hart + 1)
        overlaps[hart]++;
    s.inside = 0;
}

static void run(unsigned hart, int kind)
{
    for (unsigned i = 0; i < ITERS; i++) {
        if (kind == 0) {
            amoswap_lock(&lock);
            critical_section(hart);
            amoswap_unlock(&lock);
        } else {
            lrsc_lock(&lock);
            critical_section(hart);
            lrsc_unlock(&lock);
        }
    }
}

/* Hart 0, after a round: 0 if everything adds up. */
static unsigned check_round(unsigned harts, uint64_t expect_a, const char *name, bool quiet)
{
    unsigned bad_overlaps = 0, bad_torn = 0;
    for (unsigned h = 0; h < harts; h++) {
        bad_overlaps += overlaps[h];
        bad_torn += torn[h];
    }
    bool ok = !bad_overlaps && !bad_torn && s.a == expect_a && s.b == 3 * expect_a + 7;
    if (!quiet || !ok) {
        puts_uart(name);
        puts_uart(": count ");
        print_u64(s.a);
        puts_uart(" of ");
        print_u64(expect_a);
        puts_uart(", overlaps ");
        print_u64(bad_overlaps);
        puts_uart(", broken invariants ");
        print_u64(bad_torn);
        puts_uart(ok ? ", ok\n" : ", exclusion violated\n");
    }
    return !ok;
}

int main(unsigned hart, unsigned harts)
{
    if (hart == 0) {
        puts_uart("mutex: ");
        print_u64(harts);
        puts_uart(" harts x ");
        print_u64(ITERS);
        puts_uart(" critical sections per lock\n");
        s.b = 7;
    }
    unsigned bad = 0;
#ifndef MUTEX_BROKEN
    static const char *const names[] = {"amoswap lock", "lr/sc lock"};
    for (int kind = 0; kind < 2; kind++) {
        barrier();
        run(hart, kind);
        barrier();
        if (hart == 0)
            bad += check_round(harts, (uint64_t)ITERS * harts * (kind + 1), names[kind], false);
    }
#else
    for (unsigned round = 0; round < ROUNDS; round++) {
        barrier();
        if (stop)
            break;
        run(hart, 0);
        barrier();
        if (hart == 0) {
            bad = check_round(harts, (uint64_t)ITERS * harts * (round + 1), "no lock", true);
            if (bad)
                stop = 1;
            else if (round == ROUNDS - 1)
                puts_uart("no lock: the checker saw no violation\n");
            /* Start the next round from a consistent state. */
            s.a = (uint64_t)ITERS * harts * (round + 1);
            s.b = 3 * s.a + 7;
        }
    }
    if (hart == 0 && !bad)
        return 2;
#endif
    if (hart != 0)
        return 0;
    if (bad)
        return 1;
    puts_uart("mutex: PASS\n");
    return 0;
}
