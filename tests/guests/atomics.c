/*
 * The A extension. First, on hart 0 alone, every AMO at both widths against a reference
 * computed in C (old value and new memory), and LR/SC's rules: SC succeeds after LR, fails
 * without a reservation and on another address. Then every hart at once: a 32-bit and a 64-bit
 * counter incremented with amoadd (the old values each hart gets back must be distinct, so
 * their sum is known), a counter incremented under an LR/SC spinlock (lr.w/sc.w written here in
 * inline assembly), and a mask built with amoor. Hart 0 waits for all harts at a barrier and
 * checks every total exactly.
 */
#include "guest.h"

#define N_AMO  200000 /* amoadd per hart */
#define N_LOCK 50000  /* lock-protected increments per hart */

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

/* ---- every AMO against a reference ------------------------------------------------------- */

enum amo_op { SWAP, ADD, XOR, AND, OR, MIN, MAX, MINU, MAXU };
static const char *const amo_names[] = {"swap", "add", "xor",  "and", "or",
                                        "min",  "max", "minu", "maxu"};

static uint64_t ref_apply(enum amo_op op, uint64_t old, uint64_t src, bool word)
{
    if (word) {
        old = (uint64_t)(int64_t)(int32_t)old;
        src = (uint64_t)(int64_t)(int32_t)src;
    }
    uint64_t uo = word ? (uint32_t)old : old, us = word ? (uint32_t)src : src;
    switch (op) {
    case SWAP:
        return src;
    case ADD:
        return old + src;
    case XOR:
        return old ^ src;
    case AND:
        return old & src;
    case OR:
        return old | src;
    case MIN:
        return (int64_t)old < (int64_t)src ? old : src;
    case MAX:
        return (int64_t)old > (int64_t)src ? old : src;
    case MINU:
        return uo < us ? old : src;
    default:
        return uo > us ? old : src;
    }
}

#define AMO_W(insn, mem, src, old)                                                                 \
    __asm__ volatile(insn ".w %0, %2, (%1)" : "=&r"(old) : "r"(mem), "r"(src) : "memory")
#define AMO_D(insn, mem, src, old)                                                                 \
    __asm__ volatile(insn ".d %0, %2, (%1)" : "=&r"(old) : "r"(mem), "r"(src) : "memory")

static uint64_t do_amo(enum amo_op op, bool word, volatile uint64_t *mem, uint64_t src)
{
    uint64_t old;
    if (word) {
        switch (op) {
        case SWAP:
            AMO_W("amoswap", mem, src, old);
            break;
        case ADD:
            AMO_W("amoadd", mem, src, old);
            break;
        case XOR:
            AMO_W("amoxor", mem, src, old);
            break;
        case AND:
            AMO_W("amoand", mem, src, old);
            break;
        case OR:
            AMO_W("amoor", mem, src, old);
            break;
        case MIN:
            AMO_W("amomin", mem, src, old);
            break;
        case MAX:
            AMO_W("amomax", mem, src, old);
            break;
        case MINU:
            AMO_W("amominu", mem, src, old);
            break;
        default:
            AMO_W("amomaxu", mem, src, old);
            break;
        }
    } else {
        switch (op) {
        case SWAP:
            AMO_D("amoswap", mem, src, old);
            break;
        case ADD:
            AMO_D("amoadd", mem, src, old);
            break;
        case XOR:
            AMO_D("amoxor", mem, src, old);
            break;
        case AND:
            AMO_D("amoand", mem, src, old);
            break;
        case OR:
            AMO_D("amoor", mem, src, old);
            break;
        case MIN:
            AMO_D("amomin", mem, src, old);
            break;
        case MAX:
            AMO_D("amomax", mem, src, old);
            break;
        case MINU:
            AMO_D("amominu", mem, src, old);
            break;
        default:
            AMO_D("amomaxu", mem, src, old);
            break;
        }
    }
    return old;
}

static volatile uint64_t amo_cell;

static void test_amo_table(void)
{
    static const uint64_t mems[] = {0x80000000fffffff0ull, 0x000000017fffffffull,
                                    0xffffffff00000005ull};
    static const uint64_t srcs[] = {0x7fffffff00000011ull, 0xfffffffffffffffeull,
                                    0x0000000080000000ull};
    uint64_t digest = 0;
    for (unsigned op = SWAP; op <= MAXU; op++) {
        for (int word = 1; word >= 0; word--) {
            puts_uart("amo");
            puts_uart(amo_names[op]);
            puts_uart(word ? ".w" : ".d");
            for (unsigned k = 0; k < 3; k++) {
                uint64_t m0 = mems[k], src = srcs[(k + op) % 3];
                amo_cell = m0;
                uint64_t old = do_amo((enum amo_op)op, word, &amo_cell, src);
                uint64_t now = amo_cell;
                uint64_t want_old = word ? (uint64_t)(int64_t)(int32_t)m0 : m0;
                uint64_t want_new = ref_apply((enum amo_op)op, m0, src, word);
                if (word) /* a .w AMO leaves the upper word of the doubleword alone */
                    want_new = (m0 & ~0xffffffffull) | (uint32_t)want_new;
                check(old == want_old, "AMO old value");
                check(now == want_new, "AMO result in memory");
                putc_uart(' ');
                print_hex(now);
                digest = digest * 1000003 + old * 31 + now;
            }
            putc_uart('\n');
        }
    }
    puts_uart("amo table digest ");
    print_hex(digest);
    putc_uart('\n');
}

/* ---- LR/SC ------------------------------------------------------------------------------- */

/* Apart by more than any reservation set: an SC to lr_other must fail after an LR of lr_cell. */
static volatile uint32_t lr_cell __attribute__((aligned(256)));
static volatile uint32_t lr_other __attribute__((aligned(256)));
static volatile uint64_t lr_cell_d;

static void test_lrsc_rules(void)
{
    uint32_t v;
    unsigned long first, second, other;
    lr_cell = 41;
    __asm__ volatile("lr.w %0, (%3)\n"
                     "addi %0, %0, 1\n"
                     "sc.w %1, %0, (%3)\n"
                     "sc.w %2, %0, (%3)\n"
                     : "=&r"(v), "=&r"(first), "=&r"(second)
                     : "r"(&lr_cell)
                     : "memory");
    __asm__ volatile("lr.w %0, (%2)\n"
                     "sc.w %1, %0, (%3)\n"
                     : "=&r"(v), "=&r"(other)
                     : "r"(&lr_cell), "r"(&lr_other)
                     : "memory");
    puts_uart("lr/sc: sc after lr ");
    print_u64(first);
    puts_uart(", again ");
    print_u64(second != 0);
    puts_uart(", other address ");
    print_u64(other != 0);
    puts_uart(", value ");
    print_u64(lr_cell);
    putc_uart('\n');
    check(first == 0 && lr_cell == 42, "sc.w after lr.w succeeds");
    check(second != 0, "a second sc.w fails");
    check(other != 0, "sc.w to another address fails");
    check(lr_other == 0, "a failed sc.w does not store");

    uint64_t d;
    unsigned long okd;
    lr_cell_d = 0xfffffffffffffffeull;
    __asm__ volatile("lr.d %0, (%2)\n"
                     "addi %0, %0, 3\n"
                     "sc.d %1, %0, (%2)\n"
                     : "=&r"(d), "=&r"(okd)
                     : "r"(&lr_cell_d)
                     : "memory");
    puts_uart("lr.d/sc.d: ");
    print_u64(okd);
    puts_uart(" value ");
    print_hex(lr_cell_d);
    putc_uart('\n');
    check(okd == 0 && lr_cell_d == 1, "lr.d/sc.d");
}

/* ---- every hart at once ------------------------------------------------------------------ */

static volatile uint32_t counter_w;
static volatile uint64_t counter_d;
static volatile uint64_t mask;
static volatile uint32_t lock;
static volatile uint64_t locked_counter; /* plain loads and stores, under the lock */
static volatile uint64_t old_sums[MAX_HARTS];

static void lrsc_lock(volatile uint32_t *l)
{
    uint32_t seen, fail_flag;
    __asm__ volatile("1: lr.w.aq %0, (%2)\n"
                     "   bnez %0, 1b\n"
                     "   sc.w %1, %3, (%2)\n"
                     "   bnez %1, 1b\n"
                     : "=&r"(seen), "=&r"(fail_flag)
                     : "r"(l), "r"(1)
                     : "memory");
}

static void lrsc_unlock(volatile uint32_t *l)
{
    __asm__ volatile("fence rw, w\n sw zero, 0(%0)" : : "r"(l) : "memory");
}

static void parallel_part(unsigned hart)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < N_AMO; i++) {
        uint32_t old;
        uint64_t oldd;
        __asm__ volatile("amoadd.w %0, %2, (%1)" : "=r"(old) : "r"(&counter_w), "r"(1) : "memory");
        __asm__ volatile("amoadd.d.aqrl %0, %2, (%1)"
                         : "=r"(oldd)
                         : "r"(&counter_d), "r"(3ull)
                         : "memory");
        sum += old;
        (void)oldd;
    }
    old_sums[hart] = sum;
    for (unsigned i = 0; i < N_LOCK; i++) {
        lrsc_lock(&lock);
        locked_counter = locked_counter + 1;
        lrsc_unlock(&lock);
    }
    uint64_t prev;
    __asm__ volatile("amoor.d %0, %2, (%1)"
                     : "=r"(prev)
                     : "r"(&mask), "r"(1ull << hart)
                     : "memory");
    (void)prev;
}

int main(unsigned hart, unsigned harts)
{
    if (hart == 0) {
        puts_uart("atomics: ");
        print_u64(harts);
        puts_uart(" harts\n");
        test_amo_table();
        test_lrsc_rules();
    }
    barrier();
    parallel_part(hart);
    barrier();
    if (hart != 0)
        return 0;

    uint64_t total = (uint64_t)N_AMO * harts, sum = 0;
    for (unsigned h = 0; h < harts; h++)
        sum += old_sums[h];
    print_line_u64("amoadd.w counter ", counter_w);
    print_line_u64("amoadd.d counter ", counter_d);
    print_line_u64("amoadd.w old-value sum ", sum);
    print_line_u64("lr/sc lock counter ", locked_counter);
    puts_uart("amoor.d mask ");
    print_hex(mask);
    putc_uart('\n');
    check(counter_w == total, "amoadd.w total");
    check(counter_d == 3 * total, "amoadd.d total");
    check(sum == total * (total - 1) / 2, "amoadd.w old values not distinct");
    check(locked_counter == (uint64_t)N_LOCK * harts, "lock-protected total");
    check(mask == (harts == 64 ? ~0ull : (1ull << harts) - 1), "amoor mask");
    if (failures) {
        print_line_u64("atomics: mismatches: ", (uint64_t)failures);
        return 1;
    }
    puts_uart("atomics: PASS\n");
    return 0;
}
