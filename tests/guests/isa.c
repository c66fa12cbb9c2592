/*
 * The instruction set, one instruction at a time: every RV64I and M register-register and
 * immediate operation over edge-case operands (0, ±1, the 8-, 16-, 32- and 64-bit boundaries,
 * shift amounts around 31/32/63/64, bit patterns), loads and stores of every width at negative,
 * zero and positive offsets, lui/auipc with both signs, branches taken and not in both
 * directions, jal/jalr (with bit 0 of the target set), CSR read-modify-writes, and the
 * compressed forms, with each instruction written explicitly in assembly. Each group prints a
 * hash of its results; QEMU is the reference (harness.qemu-diff.isa names the group that
 * differs), and the run also checks the combined hash against the value QEMU gave, so that
 * vck-run checks itself in every preset. Hart 0 runs it; other harts park.
 */
#include "guest.h"

static const uint64_t vals[] = {
    0,
    1,
    2,
    7,
    31,
    32,
    33,
    63,
    64,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fffffff,
    0x80000000,
    0xffffffff,
    0x100000000,
    0x7fffffffffffffff,
    0x8000000000000000,
    0xffffffffffffffff,
    0xfffffffffffffffe,
    0xfffffffffffffff9, /* -7 */
    0xffffffff80000000,
    0x123456789abcdef0,
    0xfedcba9876543210,
    0x5555555555555555,
};
#define N_VALS (sizeof(vals) / sizeof(vals[0]))

static uint64_t hash_step(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t total;

static void report(const char *name, uint64_t h)
{
    puts_uart(name);
    putc_uart(' ');
    print_hex(h);
    putc_uart('\n');
    total = hash_step(total, h);
}

/* ---- register-register ------------------------------------------------------------------- */

#define RR(op)                                                                                     \
    static uint64_t rr_##op(uint64_t a, uint64_t b)                                                \
    {                                                                                              \
        uint64_t r;                                                                                \
        __asm__ volatile(#op " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));                            \
        return r;                                                                                  \
    }
RR(add)
RR(sub)
RR(sll)
RR(slt)
RR(sltu)
RR(xor)
RR(srl)
RR(sra)
RR(or)
RR(and)
RR(addw)
RR(subw)
RR(sllw)
RR(srlw)
RR(sraw)
RR(mul)
RR(mulh)
RR(mulhsu)
RR(mulhu)
RR(div)
RR(divu)
RR(rem)
RR(remu)
RR(mulw)
RR(divw)
RR(divuw)
RR(remw)
RR(remuw)

struct rr_op {
    const char *name;
    uint64_t (*fn)(uint64_t, uint64_t);
};

/* clang-format off */
#define RR_ENTRY(op) {#op, rr_##op}
/* clang-format on */
static const struct rr_op rr_ops[] = {
    RR_ENTRY(add),   RR_ENTRY(sub),  RR_ENTRY(sll),    RR_ENTRY(slt),   RR_ENTRY(sltu),
    RR_ENTRY(xor),   RR_ENTRY(srl),  RR_ENTRY(sra),    RR_ENTRY(or),    RR_ENTRY(and),
    RR_ENTRY(addw),  RR_ENTRY(subw), RR_ENTRY(sllw),   RR_ENTRY(srlw),  RR_ENTRY(sraw),
    RR_ENTRY(mul),   RR_ENTRY(mulh), RR_ENTRY(mulhsu), RR_ENTRY(mulhu), RR_ENTRY(div),
    RR_ENTRY(divu),  RR_ENTRY(rem),  RR_ENTRY(remu),   RR_ENTRY(mulw),  RR_ENTRY(divw),
    RR_ENTRY(divuw), RR_ENTRY(remw), RR_ENTRY(remuw),
};

static void test_rr(void)
{
    for (unsigned k = 0; k < sizeof(rr_ops) / sizeof(rr_ops[0]); k++) {
        uint64_t h = 0;
        for (unsigned i = 0; i < N_VALS; i++)
            for (unsigned j = 0; j < N_VALS; j++)
                h = hash_step(h, rr_ops[k].fn(vals[i], vals[j]));
        report(rr_ops[k].name, h);
    }
}

/* ---- register-immediate ------------------------------------------------------------------ */

/* Each immediate is its own instruction: one function per (op, imm). */
#define RI(op, tag, imm)                                                                           \
    static uint64_t ri_##op##_##tag(uint64_t a)                                                    \
    {                                                                                              \
        uint64_t r;                                                                                \
        __asm__ volatile(#op " %0, %1, " #imm : "=r"(r) : "r"(a));                                 \
        return r;                                                                                  \
    }
#define RI_ARITH(op)                                                                               \
    RI(op, m2048, -2048)                                                                           \
    RI(op, m1, -1) RI(op, 0, 0) RI(op, 1, 1) RI(op, 0x555, 0x555) RI(op, 2047, 2047)
RI_ARITH(addi)
RI_ARITH(slti)
RI_ARITH(sltiu)
RI_ARITH(xori)
RI_ARITH(ori)
RI_ARITH(andi)
RI_ARITH(addiw)
#define RI_SHIFT64(op) RI(op, 0, 0) RI(op, 1, 1) RI(op, 31, 31) RI(op, 32, 32) RI(op, 63, 63)
RI_SHIFT64(slli)
RI_SHIFT64(srli)
RI_SHIFT64(srai)
#define RI_SHIFT32(op) RI(op, 0, 0) RI(op, 1, 1) RI(op, 15, 15) RI(op, 31, 31)
RI_SHIFT32(slliw)
RI_SHIFT32(srliw)
RI_SHIFT32(sraiw)

struct ri_op {
    const char *name;
    uint64_t (*fn[6])(uint64_t);
};

/* clang-format off */
#define ARITH_FNS(op)                                                                              \
    {ri_##op##_m2048, ri_##op##_m1, ri_##op##_0, ri_##op##_1, ri_##op##_0x555, ri_##op##_2047}
#define SHIFT64_FNS(op) {ri_##op##_0, ri_##op##_1, ri_##op##_31, ri_##op##_32, ri_##op##_63}
#define SHIFT32_FNS(op) {ri_##op##_0, ri_##op##_1, ri_##op##_15, ri_##op##_31}
/* clang-format on */
static const struct ri_op ri_ops[] = {
    {"addi", ARITH_FNS(addi)},     {"slti", ARITH_FNS(slti)},     {"sltiu", ARITH_FNS(sltiu)},
    {"xori", ARITH_FNS(xori)},     {"ori", ARITH_FNS(ori)},       {"andi", ARITH_FNS(andi)},
    {"addiw", ARITH_FNS(addiw)},   {"slli", SHIFT64_FNS(slli)},   {"srli", SHIFT64_FNS(srli)},
    {"srai", SHIFT64_FNS(srai)},   {"slliw", SHIFT32_FNS(slliw)}, {"srliw", SHIFT32_FNS(srliw)},
    {"sraiw", SHIFT32_FNS(sraiw)},
};

static void test_ri(void)
{
    for (unsigned k = 0; k < sizeof(ri_ops) / sizeof(ri_ops[0]); k++) {
        uint64_t h = 0;
        for (unsigned f = 0; f < 6 && ri_ops[k].fn[f]; f++)
            for (unsigned i = 0; i < N_VALS; i++)
                h = hash_step(h, ri_ops[k].fn[f](vals[i]));
        report(ri_ops[k].name, h);
    }
}

/* ---- loads and stores -------------------------------------------------------------------- */

static uint8_t mem[8192] __attribute__((aligned(4096)));

/* Store @v with @st at @off from the middle of mem, then read it back with every load. */
#define LS(st, tag, off)                                                                           \
    static uint64_t ls_##st##_##tag(uint64_t v)                                                    \
    {                                                                                              \
        uint8_t *p = mem + 4096;                                                                   \
        uint64_t lb, lbu, lh, lhu, lw, lwu, ld;                                                    \
        for (int i = -8; i < 8; i++)                                                               \
            ((volatile uint8_t *)p)[(off) + i] = 0xa5;                                             \
        __asm__ volatile(#st " %1, " #off "(%0)" : : "r"(p), "r"(v) : "memory");                   \
        __asm__ volatile("lb %0, " #off "(%7)\n lbu %1, " #off "(%7)\n"                            \
                         "lh %2, " #off "(%7)\n lhu %3, " #off "(%7)\n"                            \
                         "lw %4, " #off "(%7)\n lwu %5, " #off "(%7)\n"                            \
                         "ld %6, " #off "(%7)"                                                     \
                         : "=&r"(lb), "=&r"(lbu), "=&r"(lh), "=&r"(lhu), "=&r"(lw), "=&r"(lwu),    \
                           "=&r"(ld)                                                               \
                         : "r"(p)                                                                  \
                         : "memory");                                                              \
        uint64_t h = hash_step(lb, lbu);                                                           \
        h = hash_step(h, lh);                                                                      \
        h = hash_step(h, lhu);                                                                     \
        h = hash_step(h, lw);                                                                      \
        h = hash_step(h, lwu);                                                                     \
        return hash_step(h, ld);                                                                   \
    }
#define LS_OFFS(st) LS(st, m2048, -2048) LS(st, m8, -8) LS(st, 0, 0) LS(st, 8, 8) LS(st, 2040, 2040)
LS_OFFS(sb)
LS_OFFS(sh)
LS_OFFS(sw)
LS_OFFS(sd)
/* clang-format off */
#define LS_FNS(st) {ls_##st##_m2048, ls_##st##_m8, ls_##st##_0, ls_##st##_8, ls_##st##_2040}
/* clang-format on */
static const struct {
    const char *name;
    uint64_t (*fn[5])(uint64_t);
} ls_ops[] = {{"sb+loads", LS_FNS(sb)},
              {"sh+loads", LS_FNS(sh)},
              {"sw+loads", LS_FNS(sw)},
              {"sd+loads", LS_FNS(sd)}};

static void test_ls(void)
{
    for (unsigned k = 0; k < sizeof(ls_ops) / sizeof(ls_ops[0]); k++) {
        uint64_t h = 0;
        for (unsigned f = 0; f < 5; f++)
            for (unsigned i = 0; i < N_VALS; i++)
                h = hash_step(h, ls_ops[k].fn[f](vals[i]));
        report(ls_ops[k].name, h);
    }
}

/* ---- upper immediates, jumps, branches --------------------------------------------------- */

static void test_upper_and_jumps(void)
{
    uint64_t r[8], base;
    __asm__ volatile("lui %0, 0xfffff\n"
                     "lui %1, 0x80000\n"
                     "lui %2, 0x7ffff\n"
                     "1: auipc %3, 0x80000\n"
                     "auipc %4, 0x7ffff\n"
                     "auipc %5, 0\n"
                     "la %6, 1b\n"
                     : "=&r"(r[0]), "=&r"(r[1]), "=&r"(r[2]), "=&r"(r[3]), "=&r"(r[4]), "=&r"(r[5]),
                       "=&r"(base));
    uint64_t h = hash_step(hash_step(r[0], r[1]), r[2]);
    h = hash_step(h, r[3] - base);
    h = hash_step(h, r[4] - base);
    h = hash_step(h, r[5] - base);
    report("lui/auipc", h);

    /* jal forward and backward, jalr with bit 0 set, link registers relative to a label. */
    uint64_t l1, l2, l3, at;
    __asm__ volatile(".option push\n"
                     ".option norvc\n"
                     "la %3, 5f\n"
                     "jal %0, 2f\n"
                     "1: jal zero, 4f\n"
                     "2: jal %1, 3f\n"
                     "3: la t0, 1b\n"
                     "addi t0, t0, 1\n"
                     "jalr %2, 0(t0)\n"
                     "4: nop\n"
                     "5:\n"
                     ".option pop\n"
                     : "=&r"(l1), "=&r"(l2), "=&r"(l3), "=&r"(at)
                     :
                     : "t0");
    h = hash_step(hash_step(at - l1, at - l2), at - l3);
    report("jal/jalr", h);
}

#define BR(op)                                                                                     \
    static uint64_t br_##op(uint64_t a, uint64_t b)                                                \
    {                                                                                              \
        uint64_t fwd, back;                                                                        \
        __asm__ volatile("li %0, 1\n " #op " %2, %3, 1f\n li %0, 0\n1:\n"                          \
                         "j 3f\n2: li %1, 1\n j 4f\n3: " #op " %2, %3, 2b\n li %1, 0\n4:\n"        \
                         : "=&r"(fwd), "=&r"(back)                                                 \
                         : "r"(a), "r"(b));                                                        \
        return fwd << 1 | back;                                                                    \
    }
BR(beq)
BR(bne)
BR(blt)
BR(bge)
BR(bltu)
BR(bgeu)
static const struct rr_op br_ops[] = {{"beq", br_beq}, {"bne", br_bne},   {"blt", br_blt},
                                      {"bge", br_bge}, {"bltu", br_bltu}, {"bgeu", br_bgeu}};

static void test_branches(void)
{
    for (unsigned k = 0; k < sizeof(br_ops) / sizeof(br_ops[0]); k++) {
        uint64_t h = 0;
        for (unsigned i = 0; i < N_VALS; i++)
            for (unsigned j = 0; j < N_VALS; j++)
                h = hash_step(h, br_ops[k].fn(vals[i], vals[j]));
        report(br_ops[k].name, h);
    }
}

/* ---- CSRs (mscratch: a plain read-write register on both machines) ----------------------- */

static void test_csr(void)
{
    uint64_t h = 0, r;
    for (unsigned i = 0; i < N_VALS; i++) {
        csr_write(mscratch, vals[i]);
        __asm__ volatile("csrrw %0, mscratch, %1" : "=r"(r) : "r"(vals[(i + 3) % N_VALS]));
        h = hash_step(h, r);
        __asm__ volatile("csrrs %0, mscratch, %1" : "=r"(r) : "r"(vals[(i + 5) % N_VALS]));
        h = hash_step(h, r);
        __asm__ volatile("csrrc %0, mscratch, %1" : "=r"(r) : "r"(vals[(i + 7) % N_VALS]));
        h = hash_step(h, r);
        __asm__ volatile("csrrwi %0, mscratch, 21" : "=r"(r));
        h = hash_step(h, r);
        __asm__ volatile("csrrsi %0, mscratch, 10" : "=r"(r));
        h = hash_step(h, r);
        __asm__ volatile("csrrci %0, mscratch, 3" : "=r"(r));
        h = hash_step(h, r);
        h = hash_step(h, csr_read(mscratch));
    }
    report("csr", h);
}

/* ---- compressed instructions ------------------------------------------------------------- */

/* Operands in x8..x15 (s0, s1, a0..a5) for the forms that only reach those. */
static uint64_t c_alu(uint64_t a, uint64_t b)
{
    register uint64_t x asm("a0") = a, y asm("a1") = b;
    register uint64_t r1 asm("a2"), r2 asm("a3"), r3 asm("a4"), r4 asm("a5"), r5 asm("s1");
    __asm__ volatile("mv a2, a0\n c.sub a2, a1\n"
                     "mv a3, a0\n c.xor a3, a1\n"
                     "mv a4, a0\n c.or a4, a1\n c.and a4, a1\n"
                     "mv a5, a0\n c.subw a5, a1\n c.addw a5, a1\n c.addw a5, a1\n"
                     "mv s1, a0\n c.srli s1, 13\n c.srai s1, 1\n c.andi s1, -3\n c.slli s1, 7\n"
                     : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(r5)
                     : "r"(x), "r"(y));
    uint64_t h = hash_step(r1, r2);
    h = hash_step(h, r3);
    h = hash_step(h, r4);
    return hash_step(h, r5);
}

static uint64_t c_imm(uint64_t a, uint64_t b)
{
    uint64_t r1, r2, r3, r4, r5;
    (void)b;
    __asm__ volatile(".option push\n"
                     ".option rvc\n"
                     "mv %0, %5\n c.addi %0, -32\n c.addi %0, 31\n"
                     "mv %1, %5\n c.addiw %1, -1\n"
                     "c.li %2, -32\n c.add %2, %5\n"
                     "c.lui %3, 0xfffe1\n c.add %3, %5\n"
                     "c.mv %4, %5\n c.slli %4, 63\n"
                     ".option pop\n"
                     : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(r5)
                     : "r"(a));
    uint64_t h = hash_step(r1, r2);
    h = hash_step(h, r3);
    h = hash_step(h, r4);
    return hash_step(h, r5);
}

static uint64_t c_mem(uint64_t a, uint64_t b)
{
    register uint64_t p asm("a0") = (uint64_t)(uintptr_t)(mem + 256);
    register uint64_t v asm("a1") = a, w asm("a2") = b;
    register uint64_t r1 asm("a3"), r2 asm("a4"), r3 asm("a5"), r4 asm("s0"), r5 asm("s1");
    __asm__ volatile("c.sd a1, 8(a0)\n c.sw a2, 124(a0)\n"
                     "c.ld a3, 8(a0)\n c.lw a4, 124(a0)\n c.lw a5, 12(a0)\n"
                     "addi sp, sp, -64\n"
                     "c.sdsp a1, 8(sp)\n c.swsp a2, 20(sp)\n"
                     "c.ldsp s0, 8(sp)\n c.lwsp s1, 20(sp)\n"
                     "addi sp, sp, 64\n"
                     : "=&r"(r1), "=&r"(r2), "=&r"(r3), "=&r"(r4), "=&r"(r5)
                     : "r"(p), "r"(v), "r"(w)
                     : "memory");
    uint64_t h = hash_step(r1, r2);
    h = hash_step(h, r3);
    h = hash_step(h, r4);
    return hash_step(h, r5);
}

static uint64_t c_branches(uint64_t a, uint64_t b)
{
    register uint64_t x asm("a0") = a;
    uint64_t z, nz, jr, spd, spn;
    (void)b;
    __asm__ volatile("li %0, 1\n c.beqz a0, 1f\n li %0, 0\n1:\n"
                     "li %1, 1\n c.bnez a0, 2f\n li %1, 0\n2:\n"
                     "la t0, 3f\n li %2, 0\n c.jr t0\n li %2, 1\n3:\n"
                     "mv t1, sp\n c.addi16sp sp, -64\n sub %3, t1, sp\n c.addi16sp sp, 64\n"
                     "c.addi4spn a1, sp, 40\n sub %4, a1, sp\n"
                     : "=&r"(z), "=&r"(nz), "=&r"(jr), "=&r"(spd), "=&r"(spn)
                     : "r"(x)
                     : "t0", "t1", "a1");
    uint64_t h = hash_step(z, nz);
    h = hash_step(h, jr);
    h = hash_step(h, spd);
    return hash_step(h, spn);
}

static const struct rr_op c_ops[] = {
    {"c.alu", c_alu}, {"c.imm", c_imm}, {"c.mem", c_mem}, {"c.branch", c_branches}};

static void test_compressed(void)
{
    for (unsigned k = 0; k < sizeof(c_ops) / sizeof(c_ops[0]); k++) {
        uint64_t h = 0;
        for (unsigned i = 0; i < N_VALS; i++)
            for (unsigned j = 0; j < N_VALS; j += 3)
                h = hash_step(h, c_ops[k].fn(vals[i], vals[j]));
        report(c_ops[k].name, h);
    }
}

/* The combined hash under QEMU (qemu-system-riscv64 7.2). */
#define EXPECTED_TOTAL 0x60da46f2418a6c6bull

int main(unsigned hart, unsigned harts)
{
    (void)harts;
    if (hart != 0)
        return 0;
    puts_uart("isa: one instruction at a time\n");
    test_rr();
    test_ri();
    test_ls();
    test_upper_and_jumps();
    test_branches();
    test_csr();
    test_compressed();
    puts_uart("isa: combined ");
    print_hex(total);
    if (total != EXPECTED_TOTAL) {
        puts_uart(", QEMU's is ");
        print_hex(EXPECTED_TOTAL);
        putc_uart('\n');
        return 1;
    }
    puts_uart("\nisa: PASS\n");
    return 0;
}
