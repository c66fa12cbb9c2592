/*
 * Cross-modifying code. The harts pair up, an executor (even hart) and a patcher (the odd hart
 * after it), each pair in pages of its own:
 *   - call loop: the executor calls `li a0, OLD; ret` over and over; the patcher rewrites it to
 *     NEW and raises a flag. The executor may see NEW before the flag (any time is fine, never a
 *     third value); once it has seen the flag it runs fence.i, and from then on must see NEW.
 *   - spin loop: the executor jumps into a branch to itself (`beq x0, x0, 0`) followed by
 *     `li a0, K; ret`; the patcher overwrites the branch (a nop or a jump to the next
 *     instruction) and waits for the executor to come out, failing the run itself if it does not
 *     within 5 s. No fence.i is needed for the executor to see the store eventually here; it runs
 *     one before it reuses the buffer.
 * With one hart (or for a hart left without a partner), hart 0 plays both roles in sequence for
 * the call loop, and every run also has hart 0 release a spin loop from a timer interrupt
 * handler: the handler patches the loop it interrupted, runs fence.i, and returns into it.
 */
#include "guest.h"

#define ROUNDS    100
#define PAIR_MAX  (MAX_HARTS / 2)
#define OLD_VALUE 100
#define NEW_VALUE 200

struct pair {
    volatile unsigned ready, patched, done; /* call loop, per round (round + 1) */
    volatile unsigned spinning, escaped;    /* spin loop, per round */
    volatile unsigned errors;
    volatile uint64_t calls_before_flag; /* calls that returned OLD after the patch (info) */
} __attribute__((aligned(64)));

static struct pair pairs[PAIR_MAX];

static void put32(void *p, uint32_t v)
{
    *(volatile uint32_t *)p = v;
}

static uint64_t call(const void *code)
{
    return as_code(code)();
}

/* The pair's code pages: the first three of the executor's heap. */
static uint8_t *pair_page(unsigned pair, unsigned i)
{
    return (uint8_t *)hart_heap(2 * pair) + 4096 * i;
}

static void wait_for(volatile unsigned *flag, unsigned value, const char *what)
{
    uint64_t give_up = mtime() + 5 * MTIME_HZ;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != value)
        if (mtime_past(give_up))
            fail(3, what);
}

/* ---- the call loop ----------------------------------------------------------------------- */

static void call_loop_executor(unsigned p, unsigned round)
{
    struct pair *s = &pairs[p];
    uint8_t *f = pair_page(p, 0);
    int32_t old_k = OLD_VALUE + (int32_t)round, new_k = NEW_VALUE + (int32_t)round;
    put32(f, insn_li_a0(old_k));
    put32(f + 4, INSN_RET);
    fence_i();
    __atomic_store_n(&s->ready, round + 1, __ATOMIC_RELEASE);
    uint64_t give_up = mtime() + 5 * MTIME_HZ;
    for (;;) {
        uint64_t v = call(f);
        if (v == (uint64_t)new_k)
            break; /* seen before the flag: allowed */
        if (v != (uint64_t)old_k) {
            s->errors++;
            break;
        }
        if (__atomic_load_n(&s->patched, __ATOMIC_ACQUIRE) == round + 1) {
            s->calls_before_flag++;
            fence_i();
            if (call(f) != (uint64_t)new_k)
                s->errors++;
            break;
        }
        if (mtime_past(give_up)) {
            s->errors++;
            break;
        }
    }
    __atomic_store_n(&s->done, round + 1, __ATOMIC_RELEASE);
}

static void call_loop_patcher(unsigned p, unsigned round)
{
    struct pair *s = &pairs[p];
    uint8_t *f = pair_page(p, 0);
    wait_for(&s->ready, round + 1, "the executor never got ready (call loop)");
    if (round & 1)
        delay_us(50 * (round % 5));
    put32(f, insn_li_a0(NEW_VALUE + (int32_t)round));
    __atomic_store_n(&s->patched, round + 1, __ATOMIC_RELEASE);
    wait_for(&s->done, round + 1, "the executor never finished (call loop)");
}

/* One hart in both roles: the patch, then fence.i, then the call. */
static void call_loop_alone(unsigned round)
{
    struct pair *s = &pairs[0];
    uint8_t *f = pair_page(0, 0);
    put32(f, insn_li_a0(OLD_VALUE + (int32_t)round));
    put32(f + 4, INSN_RET);
    fence_i();
    if (call(f) != (uint64_t)(OLD_VALUE + round))
        s->errors++;
    put32(f, insn_li_a0(NEW_VALUE + (int32_t)round));
    fence_i();
    if (call(f) != (uint64_t)(NEW_VALUE + round))
        s->errors++;
}

/* ---- the spin loop ----------------------------------------------------------------------- */

static uint32_t release_insn(unsigned round)
{
    return round & 1 ? insn_jal(REG_ZERO, 4) : INSN_NOP;
}

static void spin_executor(unsigned p, unsigned round)
{
    struct pair *s = &pairs[p];
    uint8_t *f = pair_page(p, 1);
    put32(f, INSN_SELF);
    put32(f + 4, insn_li_a0(7 + (int32_t)round));
    put32(f + 8, INSN_RET);
    fence_i();
    __atomic_store_n(&s->spinning, round + 1, __ATOMIC_RELEASE);
    uint64_t v = call(f);
    fence_i(); /* the patcher's store is visible to this hart's fetches from here on */
    if (v != 7 + round)
        s->errors++;
    __atomic_store_n(&s->escaped, round + 1, __ATOMIC_RELEASE);
}

static void spin_patcher(unsigned p, unsigned round)
{
    struct pair *s = &pairs[p];
    uint8_t *f = pair_page(p, 1);
    wait_for(&s->spinning, round + 1, "the executor never reached the spin loop");
    delay_us(200 + 100 * (round % 4)); /* let it spin (and its block chain to itself) */
    put32(f, release_insn(round));
    wait_for(&s->escaped, round + 1, "the executor never left the spin loop after the patch");
}

/* ---- a spin loop released by this hart's own interrupt handler ---------------------------- */

static uint8_t *irq_spin;
static volatile unsigned irqs;

static void handler(struct trap_frame *f)
{
    if (f->mcause != (MCAUSE_INT | 7))
        fail(4, "unexpected trap");
    mmio_write64(clint_mtimecmp(0), ~0ull);
    put32(irq_spin, INSN_NOP);
    fence_i();
    irqs++;
}

static unsigned timer_released_spins(void)
{
    unsigned errors = 0;
    irq_spin = pair_page(0, 2);
    trap_init(handler);
    csr_set(mie, MIE_MTIE);
    for (unsigned round = 0; round < 5; round++) {
        put32(irq_spin, INSN_SELF);
        put32(irq_spin + 4, insn_li_a0(9 + (int32_t)round));
        put32(irq_spin + 8, INSN_RET);
        fence_i();
        mmio_write64(clint_mtimecmp(0), mtime() + 2000); /* 200 us */
        csr_set(mstatus, MSTATUS_MIE);
        uint64_t v = call(irq_spin);
        csr_clear(mstatus, MSTATUS_MIE);
        errors += v != 9 + round;
        errors += irqs != round + 1;
    }
    csr_clear(mie, MIE_MTIE);
    return errors;
}

int main(unsigned hart, unsigned harts)
{
    unsigned n_pairs = harts / 2, p = hart / 2;
    bool paired = p < n_pairs;
    if (hart == 0) {
        puts_uart("xmodify: ");
        print_u64(harts);
        puts_uart(" harts, ");
        print_u64(n_pairs);
        puts_uart(" executor/patcher pairs\n");
    }
    barrier();
    for (unsigned round = 0; round < ROUNDS; round++) {
        if (paired && hart % 2 == 0)
            call_loop_executor(p, round);
        else if (paired)
            call_loop_patcher(p, round);
        else if (hart == 0)
            call_loop_alone(round);
    }
    barrier();
    for (unsigned round = 0; round < ROUNDS && paired; round++) {
        if (hart % 2 == 0)
            spin_executor(p, round);
        else
            spin_patcher(p, round);
    }
    barrier();
    if (hart != 0)
        return 0;

    unsigned errors = 0;
    for (unsigned i = 0; i < (n_pairs ? n_pairs : 1); i++)
        errors += pairs[i].errors;
    if (n_pairs) {
        puts_uart("call loop patched by another hart: ");
        print_u64(ROUNDS);
        puts_uart(" rounds per pair\n");
        puts_uart("spin loop released by another hart: ");
        print_u64(ROUNDS);
        puts_uart(" rounds per pair\n");
    } else {
        puts_uart("call loop patched by the same hart: ");
        print_u64(ROUNDS);
        puts_uart(" rounds\n");
    }
    unsigned irq_errors = timer_released_spins();
    puts_uart("spin loop released by a timer interrupt handler: 5 rounds, ");
    print_u64(irqs);
    puts_uart(" interrupts\n");
    if (errors || irq_errors) {
        print_line_u64("xmodify: wrong results: ", errors + irq_errors);
        return 1;
    }
    puts_uart("xmodify: PASS\n");
    return 0;
}
