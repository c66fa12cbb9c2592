/*
 * Self-modifying code: instructions written into RAM by hand, fence.i, called, rewritten,
 * fence.i, called again. Hart 0 runs the deterministic part:
 *   - `li a0, K; ret` rewritten with a new K, once and then 300 times in a row;
 *   - the compressed `c.li a0, K; c.ret`, rewritten with 16-bit stores;
 *   - a block that patches an instruction after its own fence.i (the next block must be new);
 *   - an instruction straddling two pages, rewritten through its second half only;
 *   - patches made by sb, sd, amoswap.w, amoadd.w and lr.w/sc.w instead of sw;
 *   - a hot counted loop (a block chained to itself) whose body is patched between runs;
 *   - code sharing its page with data stored to on every call.
 * Then every hart rewrites and calls its own function in a page that all of them share, so the
 * stores of each invalidate code the others are running.
 */
#include "guest.h"

#define CONCURRENT_REWRITES 10000

static uint8_t pages[8][4096] __attribute__((aligned(4096)));
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

static void put32(void *p, uint32_t v)
{
    *(volatile uint32_t *)p = v;
}

static void put16(void *p, uint16_t v)
{
    *(volatile uint16_t *)p = v;
}

static uint64_t call(const void *code)
{
    return as_code(code)();
}

static void write_li_ret(void *p, int32_t k)
{
    put32(p, insn_li_a0(k));
    put32((uint8_t *)p + 4, INSN_RET);
}

static void test_basic(void)
{
    void *f = pages[0];
    write_li_ret(f, 1);
    fence_i();
    uint64_t r1 = call(f);
    write_li_ret(f, 2);
    fence_i();
    uint64_t r2 = call(f);
    puts_uart("li/ret: ");
    print_u64(r1);
    puts_uart(" then ");
    print_u64(r2);
    putc_uart('\n');
    check(r1 == 1 && r2 == 2, "rewritten li a0, K");

    int64_t sum = 0;
    unsigned wrong = 0;
    for (int32_t k = -150; k < 150; k++) {
        put32(f, insn_li_a0(k));
        fence_i();
        int64_t r = (int64_t)call(f);
        wrong += r != k;
        sum += r;
    }
    puts_uart("300 rewrites: sum ");
    print_i64(sum);
    puts_uart(", wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0 && sum == -150, "300 rewrites");
}

static void test_compressed(void)
{
    uint8_t *f = pages[0] + 256;
    put16(f + 2, CINSN_RET);
    unsigned wrong = 0;
    int64_t sum = 0;
    for (int32_t k = -32; k < 32; k++) {
        put16(f, cinsn_li(REG_A0, k));
        fence_i();
        int64_t r = (int64_t)call(f);
        wrong += r != k;
        sum += r;
    }
    puts_uart("c.li/c.ret: 64 rewrites, sum ");
    print_i64(sum);
    puts_uart(", wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0 && sum == -32, "compressed rewrites");
}

/* B: sw a1, 12(a0); fence.i; nop; <patched>; ret. Called with a0 = B, a1 = the new insn. */
static void test_self_patch(void)
{
    uint8_t *b = pages[1];
    put32(b + 0, insn_sw(REG_A1, REG_A0, 12));
    put32(b + 4, INSN_FENCE_I);
    put32(b + 8, INSN_NOP);
    put32(b + 12, insn_li_a0(0));
    put32(b + 16, INSN_RET);
    fence_i();
    uint64_t (*fn)(uint64_t, uint64_t) = (uint64_t(*)(uint64_t, uint64_t))opaque_addr(b);
    unsigned wrong = 0;
    for (int32_t k = 1; k <= 100; k++)
        wrong += fn((uint64_t)(uintptr_t)b, insn_li_a0(k)) != (uint64_t)k;
    puts_uart("patch after own fence.i: 100 calls, wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0, "a block patching its successor");
}

/* li a0, K at the last two bytes of a page and the first two of the next. */
static void test_straddle(void)
{
    uint8_t *p = pages[3] + 4094;
    uint32_t insn = insn_li_a0(100);
    put16(p, (uint16_t)insn);
    put16(p + 2, (uint16_t)(insn >> 16));
    put16(p + 4, (uint16_t)INSN_RET);
    put16(p + 6, (uint16_t)(INSN_RET >> 16));
    fence_i();
    uint64_t r1 = call(p);
    /* Only the upper half, on the second page, changes: imm[11:0] is insn[31:20]. */
    put16(p + 2, (uint16_t)(insn_li_a0(200) >> 16));
    fence_i();
    uint64_t r2 = call(p);
    put16(p + 2, (uint16_t)(insn_li_a0(-300) >> 16));
    fence_i();
    int64_t r3 = (int64_t)call(p);
    puts_uart("straddling two pages: ");
    print_u64(r1);
    puts_uart(", ");
    print_u64(r2);
    puts_uart(", ");
    print_i64(r3);
    putc_uart('\n');
    check(r1 == 100 && r2 == 200 && r3 == -300, "instruction across a page boundary");
}

static void test_store_kinds(void)
{
    uint8_t *f = pages[2];
    write_li_ret(f, 0x123);
    fence_i();
    uint64_t r0 = call(f);

    /* sb: insn[31:24] is imm[11:4]. */
    *(volatile uint8_t *)(f + 3) = (uint8_t)(0x456 >> 4);
    fence_i();
    uint64_t r1 = call(f);

    /* sd: both instructions at once. */
    *(volatile uint64_t *)f = (uint64_t)INSN_RET << 32 | insn_li_a0(0x321);
    fence_i();
    uint64_t r2 = call(f);

    uint32_t old;
    __asm__ volatile("amoswap.w %0, %2, (%1)"
                     : "=r"(old)
                     : "r"(f), "r"(insn_li_a0(0x654))
                     : "memory");
    fence_i();
    uint64_t r3 = call(f);

    /* amoadd.w: +0x10 to imm[11:0] */
    __asm__ volatile("amoadd.w %0, %2, (%1)" : "=r"(old) : "r"(f), "r"(0x10u << 20) : "memory");
    fence_i();
    uint64_t r4 = call(f);

    uint32_t seen, sc_failed;
    __asm__ volatile("1: lr.w %0, (%2)\n"
                     "   sc.w %1, %3, (%2)\n"
                     "   bnez %1, 1b\n"
                     : "=&r"(seen), "=&r"(sc_failed)
                     : "r"(f), "r"(insn_li_a0(0x777))
                     : "memory");
    fence_i();
    uint64_t r5 = call(f);

    puts_uart("store kinds: sw ");
    print_hex32((uint32_t)r0);
    puts_uart(" sb ");
    print_hex32((uint32_t)r1);
    puts_uart(" sd ");
    print_hex32((uint32_t)r2);
    puts_uart(" amoswap ");
    print_hex32((uint32_t)r3);
    puts_uart(" amoadd ");
    print_hex32((uint32_t)r4);
    puts_uart(" sc ");
    print_hex32((uint32_t)r5);
    putc_uart('\n');
    check(r0 == 0x123, "sw");
    check(r1 == 0x453, "sb");
    check(r2 == 0x321, "sd");
    check(r3 == 0x654, "amoswap.w");
    check(r4 == 0x664, "amoadd.w");
    check(r5 == 0x777, "sc.w");
}

/* li a0, 0; li t0, 1000; 1: addi a0, a0, STEP; addi t0, t0, -1; bnez t0, 1b; ret */
static void test_hot_loop(void)
{
    uint8_t *b = pages[4];
    put32(b + 0, insn_li_a0(0));
    put32(b + 4, insn_addi(REG_T0, REG_ZERO, 1000));
    put32(b + 8, insn_addi(REG_A0, REG_A0, 1));
    put32(b + 12, insn_addi(REG_T0, REG_T0, -1));
    put32(b + 16, insn_bne(REG_T0, REG_ZERO, -8));
    put32(b + 20, INSN_RET);
    fence_i();
    uint64_t total = 0;
    unsigned wrong = 0;
    for (int32_t step = 1; step <= 20; step++) {
        put32(b + 8, insn_addi(REG_A0, REG_A0, step));
        fence_i();
        for (int rep = 0; rep < 3; rep++) {
            uint64_t r = call(b);
            wrong += r != 1000u * (uint64_t)step;
            total += r;
        }
    }
    puts_uart("hot loop patched 20 times: total ");
    print_u64(total);
    puts_uart(", wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0 && total == 630000, "patched loop body");
}

static void test_code_and_data(void)
{
    uint8_t *p = pages[5];
    volatile uint64_t *counter = (volatile uint64_t *)(p + 4088);
    write_li_ret(p, 7);
    fence_i();
    *counter = 0;
    uint64_t sum = 0;
    for (unsigned i = 0; i < 2000; i++) {
        if (i == 1000) {
            put32(p, insn_li_a0(9));
            fence_i();
        }
        *counter = *counter + 1;
        sum += call(p);
    }
    puts_uart("code and data in one page: sum ");
    print_u64(sum);
    puts_uart(", counter ");
    print_u64(*counter);
    putc_uart('\n');
    check(sum == 16000 && *counter == 2000, "code sharing a page with data");
}

static volatile unsigned concurrent_wrong[MAX_HARTS];

/* Each hart's own 64-byte slot in one shared page. */
static void concurrent(unsigned hart)
{
    uint8_t *f = pages[6] + 64 * hart;
    put32(f + 4, INSN_RET);
    unsigned wrong = 0;
    for (unsigned i = 0; i < CONCURRENT_REWRITES; i++) {
        int32_t k = (int32_t)(hart * 16 + i % 16);
        put32(f, insn_li_a0(k));
        fence_i();
        wrong += call(f) != (uint64_t)k;
    }
    concurrent_wrong[hart] = wrong;
}

int main(unsigned hart, unsigned harts)
{
    if (hart == 0) {
        puts_uart("smc: ");
        print_u64(harts);
        puts_uart(" harts\n");
        test_basic();
        test_compressed();
        test_self_patch();
        test_straddle();
        test_store_kinds();
        test_hot_loop();
        test_code_and_data();
    }
    barrier();
    concurrent(hart);
    barrier();
    if (hart != 0)
        return 0;
    unsigned wrong = 0;
    for (unsigned h = 0; h < harts; h++)
        wrong += concurrent_wrong[h];
    puts_uart("every hart rewriting its slot of a shared page ");
    print_u64(CONCURRENT_REWRITES);
    puts_uart(" times: wrong ");
    print_u64(wrong);
    putc_uart('\n');
    check(wrong == 0, "concurrent rewrites");
    if (failures) {
        print_line_u64("smc: mismatches: ", (uint64_t)failures);
        return 1;
    }
    puts_uart("smc: PASS\n");
    return 0;
}
