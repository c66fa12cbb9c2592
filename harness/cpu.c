/*
 * The RV64IMAC hart: decoding into op arrays, the interpreter, memory access through a software
 * TLB, CSRs, traps, and the hart thread's loop.
 *
 * Blocks. Guest code is decoded into blocks of up to 64 pre-decoded ops ending at a control
 * transfer or a system instruction, spanning at most two guest pages. A block lives in the
 * TB cache (vcpukit/tbcache.h); its ops are bump-allocated in the hart's code arena, which is a
 * registered code region, so a fault inside a block finds the block from the op's address.
 * Direct branches and jumps leave through exit 0 (taken) or 1 (fall through), which the
 * dispatcher chains to the next block; indirect jumps and system instructions return to it.
 *
 * Memory. Each hart has a direct-mapped TLB of host addends for RAM pages, read and write tags
 * apart. Everything else (MMIO, unassigned space, accesses crossing a page) goes through
 * vcpukit/dispatch.h. Stores to pages that hold code (or HTIF's tohost) never get a write entry:
 * they take the slow path, which stores and then invalidates the overlapping blocks. A hart
 * that is about to translate from a page first makes it trap writes on every hart (see
 * machine_protect_page), then reads the page's invalidation generation, then the code.
 *
 * Guest RAM is shared by host threads, so every guest access to it is a host atomic (relaxed
 * for plain loads and stores, which compiles to plain moves on x86-64 and arm64): guest races
 * are not host data races.
 *
 * RCU. The hart runs blocks inside one read-side section per batch (at most 1024 blocks, or
 * until another thread posts an event), leaves it to handle events (TLB flushes, interrupts,
 * stop) and to sleep in WFI, so grace periods never wait for long on a busy guest.
 */
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum opk {
    OP_ILLEGAL,
    OP_LUI,
    OP_AUIPC,
    OP_ADDI,
    OP_SLTI,
    OP_SLTIU,
    OP_XORI,
    OP_ORI,
    OP_ANDI,
    OP_SLLI,
    OP_SRLI,
    OP_SRAI,
    OP_ADD,
    OP_SUB,
    OP_SLL,
    OP_SLT,
    OP_SLTU,
    OP_XOR,
    OP_SRL,
    OP_SRA,
    OP_OR,
    OP_AND,
    OP_ADDIW,
    OP_SLLIW,
    OP_SRLIW,
    OP_SRAIW,
    OP_ADDW,
    OP_SUBW,
    OP_SLLW,
    OP_SRLW,
    OP_SRAW,
    OP_MUL,
    OP_MULH,
    OP_MULHSU,
    OP_MULHU,
    OP_DIV,
    OP_DIVU,
    OP_REM,
    OP_REMU,
    OP_MULW,
    OP_DIVW,
    OP_DIVUW,
    OP_REMW,
    OP_REMUW,
    OP_LB,
    OP_LH,
    OP_LW,
    OP_LD,
    OP_LBU,
    OP_LHU,
    OP_LWU,
    OP_SB,
    OP_SH,
    OP_SW,
    OP_SD,
    OP_LR_W,
    OP_LR_D,
    OP_SC_W,
    OP_SC_D,
    OP_AMO_W, /* imm = the AMO's funct5 */
    OP_AMO_D,
    OP_FENCE,
    /* Block enders. */
    OP_JAL,
    OP_JALR,
    OP_BEQ,
    OP_BNE,
    OP_BLT,
    OP_BGE,
    OP_BLTU,
    OP_BGEU,
    OP_FENCE_I,
    OP_ECALL,
    OP_EBREAK,
    OP_MRET,
    OP_WFI,
    OP_CSRRW, /* imm = csr; rs1 or, for the I forms, the zimm in rs1 */
    OP_CSRRS,
    OP_CSRRC,
    OP_CSRRWI,
    OP_CSRRSI,
    OP_CSRRCI,
    OP_FALLTHROUGH, /* synthetic: a block cut at its size limit continues at imm */
};

static bool ends_block(unsigned kind)
{
    return kind >= OP_JAL || kind == OP_ILLEGAL;
}

/* ---- decoding ---------------------------------------------------------------------------- */

static int64_t sext(uint64_t v, unsigned bits)
{
    return (int64_t)(v << (64 - bits)) >> (64 - bits);
}

static void set_op(struct op *o, unsigned kind, unsigned rd, unsigned rs1, unsigned rs2,
                   int64_t imm)
{
    o->kind = (uint16_t)kind;
    o->rd = (uint8_t)(rd ? rd : 32); /* writes to x0 land in the scratch x[32] */
    o->rs1 = (uint8_t)rs1;
    o->rs2 = (uint8_t)rs2;
    o->imm = imm;
}

static void decode32(uint32_t in, struct op *o)
{
    unsigned opcode = in & 0x7f, rd = (in >> 7) & 31, f3 = (in >> 12) & 7;
    unsigned rs1 = (in >> 15) & 31, rs2 = (in >> 20) & 31, f7 = in >> 25;
    int64_t imm_i = sext(in >> 20, 12);
    int64_t imm_s = sext(((in >> 25) << 5) | ((in >> 7) & 0x1f), 12);
    int64_t imm_b = sext(((in >> 31) << 12) | (((in >> 7) & 1) << 11) | (((in >> 25) & 0x3f) << 5) |
                             (((in >> 8) & 0xf) << 1),
                         13);
    int64_t imm_u = sext(in & 0xfffff000u, 32);
    int64_t imm_j = sext(((in >> 31) << 20) | (((in >> 12) & 0xff) << 12) |
                             (((in >> 20) & 1) << 11) | (((in >> 21) & 0x3ff) << 1),
                         21);
    set_op(o, OP_ILLEGAL, 0, 0, 0, 0);
    switch (opcode) {
    case 0x37:
        set_op(o, OP_LUI, rd, 0, 0, imm_u);
        return;
    case 0x17:
        set_op(o, OP_AUIPC, rd, 0, 0, imm_u);
        return;
    case 0x6f:
        set_op(o, OP_JAL, rd, 0, 0, imm_j);
        return;
    case 0x67:
        if (f3 == 0)
            set_op(o, OP_JALR, rd, rs1, 0, imm_i);
        return;
    case 0x63: {
        static const uint16_t br[8] = {OP_BEQ, OP_BNE, 0, 0, OP_BLT, OP_BGE, OP_BLTU, OP_BGEU};
        if (br[f3])
            set_op(o, br[f3], 0, rs1, rs2, imm_b);
        return;
    }
    case 0x03: {
        static const uint16_t ld[8] = {OP_LB, OP_LH, OP_LW, OP_LD, OP_LBU, OP_LHU, OP_LWU, 0};
        if (ld[f3])
            set_op(o, ld[f3], rd, rs1, 0, imm_i);
        return;
    }
    case 0x23: {
        static const uint16_t st[8] = {OP_SB, OP_SH, OP_SW, OP_SD, 0, 0, 0, 0};
        if (st[f3])
            set_op(o, st[f3], 0, rs1, rs2, imm_s);
        return;
    }
    case 0x13: {
        unsigned shamt = (in >> 20) & 63, f6 = in >> 26;
        switch (f3) {
        case 0:
            set_op(o, OP_ADDI, rd, rs1, 0, imm_i);
            return;
        case 2:
            set_op(o, OP_SLTI, rd, rs1, 0, imm_i);
            return;
        case 3:
            set_op(o, OP_SLTIU, rd, rs1, 0, imm_i);
            return;
        case 4:
            set_op(o, OP_XORI, rd, rs1, 0, imm_i);
            return;
        case 6:
            set_op(o, OP_ORI, rd, rs1, 0, imm_i);
            return;
        case 7:
            set_op(o, OP_ANDI, rd, rs1, 0, imm_i);
            return;
        case 1:
            if (f6 == 0)
                set_op(o, OP_SLLI, rd, rs1, 0, shamt);
            return;
        case 5:
            if (f6 == 0)
                set_op(o, OP_SRLI, rd, rs1, 0, shamt);
            else if (f6 == 0x10)
                set_op(o, OP_SRAI, rd, rs1, 0, shamt);
            return;
        }
        return;
    }
    case 0x1b: {
        unsigned shamt = (in >> 20) & 31;
        if (f3 == 0)
            set_op(o, OP_ADDIW, rd, rs1, 0, imm_i);
        else if (f3 == 1 && f7 == 0)
            set_op(o, OP_SLLIW, rd, rs1, 0, shamt);
        else if (f3 == 5 && f7 == 0)
            set_op(o, OP_SRLIW, rd, rs1, 0, shamt);
        else if (f3 == 5 && f7 == 0x20)
            set_op(o, OP_SRAIW, rd, rs1, 0, shamt);
        return;
    }
    case 0x33: {
        static const uint16_t base[8] = {OP_ADD, OP_SLL, OP_SLT, OP_SLTU,
                                         OP_XOR, OP_SRL, OP_OR,  OP_AND};
        static const uint16_t mul[8] = {OP_MUL, OP_MULH, OP_MULHSU, OP_MULHU,
                                        OP_DIV, OP_DIVU, OP_REM,    OP_REMU};
        if (f7 == 0)
            set_op(o, base[f3], rd, rs1, rs2, 0);
        else if (f7 == 1)
            set_op(o, mul[f3], rd, rs1, rs2, 0);
        else if (f7 == 0x20 && f3 == 0)
            set_op(o, OP_SUB, rd, rs1, rs2, 0);
        else if (f7 == 0x20 && f3 == 5)
            set_op(o, OP_SRA, rd, rs1, rs2, 0);
        return;
    }
    case 0x3b: {
        unsigned k = 0;
        if (f7 == 0)
            k = f3 == 0 ? OP_ADDW : f3 == 1 ? OP_SLLW : f3 == 5 ? OP_SRLW : 0;
        else if (f7 == 0x20)
            k = f3 == 0 ? OP_SUBW : f3 == 5 ? OP_SRAW : 0;
        else if (f7 == 1)
            k = f3 == 0   ? OP_MULW
                : f3 == 4 ? OP_DIVW
                : f3 == 5 ? OP_DIVUW
                : f3 == 6 ? OP_REMW
                : f3 == 7 ? OP_REMUW
                          : 0;
        if (k)
            set_op(o, k, rd, rs1, rs2, 0);
        return;
    }
    case 0x0f:
        if (f3 == 0)
            set_op(o, OP_FENCE, 0, 0, 0, 0);
        else if (f3 == 1)
            set_op(o, OP_FENCE_I, 0, 0, 0, 0);
        return;
    case 0x2f: {
        if (f3 != 2 && f3 != 3)
            return;
        unsigned f5 = in >> 27;
        bool d = f3 == 3;
        if (f5 == 0x02) {
            if (rs2 == 0)
                set_op(o, d ? OP_LR_D : OP_LR_W, rd, rs1, 0, 0);
        } else if (f5 == 0x03) {
            set_op(o, d ? OP_SC_D : OP_SC_W, rd, rs1, rs2, 0);
        } else if (f5 == 0x00 || f5 == 0x01 || f5 == 0x04 || f5 == 0x08 || f5 == 0x0c ||
                   f5 == 0x10 || f5 == 0x14 || f5 == 0x18 || f5 == 0x1c) {
            set_op(o, d ? OP_AMO_D : OP_AMO_W, rd, rs1, rs2, f5);
        }
        return;
    }
    case 0x73:
        if (f3 == 0) {
            if (in == 0x00000073)
                set_op(o, OP_ECALL, 0, 0, 0, 0);
            else if (in == 0x00100073)
                set_op(o, OP_EBREAK, 0, 0, 0, 0);
            else if (in == 0x30200073)
                set_op(o, OP_MRET, 0, 0, 0, 0);
            else if (in == 0x10500073)
                set_op(o, OP_WFI, 0, 0, 0, 0);
            return;
        }
        if (f3 != 4) {
            static const uint16_t csr[8] = {0, OP_CSRRW,  OP_CSRRS,  OP_CSRRC,
                                            0, OP_CSRRWI, OP_CSRRSI, OP_CSRRCI};
            set_op(o, csr[f3], rd, rs1, 0, in >> 20);
        }
        return;
    }
}

static void decode16(uint32_t in, struct op *o)
{
    unsigned q = in & 3, f3 = (in >> 13) & 7;
    unsigned rd = (in >> 7) & 31, rs2 = (in >> 2) & 31;
    unsigned rdp = 8 + ((in >> 2) & 7), rs1p = 8 + ((in >> 7) & 7);
    int64_t imm6 = sext(((in >> 7) & 0x20) | ((in >> 2) & 0x1f), 6);
    set_op(o, OP_ILLEGAL, 0, 0, 0, 0);
    if (q == 0) {
        switch (f3) {
        case 0: {
            unsigned imm =
                ((in >> 7) & 0x30) | ((in >> 1) & 0x3c0) | ((in >> 4) & 4) | ((in >> 2) & 8);
            if (imm)
                set_op(o, OP_ADDI, rdp, 2, 0, imm);
            return;
        }
        case 2:
            set_op(o, OP_LW, rdp, rs1p, 0,
                   ((in >> 7) & 0x38) | ((in << 1) & 0x40) | ((in >> 4) & 4));
            return;
        case 3:
            set_op(o, OP_LD, rdp, rs1p, 0, ((in >> 7) & 0x38) | ((in << 1) & 0xc0));
            return;
        case 6:
            set_op(o, OP_SW, 0, rs1p, rdp,
                   ((in >> 7) & 0x38) | ((in << 1) & 0x40) | ((in >> 4) & 4));
            return;
        case 7:
            set_op(o, OP_SD, 0, rs1p, rdp, ((in >> 7) & 0x38) | ((in << 1) & 0xc0));
            return;
        }
        return;
    }
    if (q == 1) {
        switch (f3) {
        case 0:
            set_op(o, OP_ADDI, rd, rd, 0, imm6);
            return;
        case 1:
            if (rd)
                set_op(o, OP_ADDIW, rd, rd, 0, imm6);
            return;
        case 2:
            set_op(o, OP_ADDI, rd, 0, 0, imm6);
            return;
        case 3:
            if (rd == 2) {
                int64_t imm = sext(((in >> 3) & 0x200) | ((in >> 2) & 0x10) | ((in << 1) & 0x40) |
                                       ((in << 4) & 0x180) | ((in << 3) & 0x20),
                                   10);
                if (imm)
                    set_op(o, OP_ADDI, 2, 2, 0, imm);
            } else {
                int64_t imm = sext((((in >> 12) & 1) << 17) | (((in >> 2) & 0x1f) << 12), 18);
                if (imm) /* rd = x0 is a HINT: it runs, writing nowhere (set_op) */
                    set_op(o, OP_LUI, rd, 0, 0, imm);
            }
            return;
        case 4: {
            unsigned f2 = (in >> 10) & 3, shamt = ((in >> 7) & 0x20) | ((in >> 2) & 0x1f);
            if (f2 == 0) {
                set_op(o, OP_SRLI, rs1p, rs1p, 0, shamt);
            } else if (f2 == 1) {
                set_op(o, OP_SRAI, rs1p, rs1p, 0, shamt);
            } else if (f2 == 2) {
                set_op(o, OP_ANDI, rs1p, rs1p, 0, imm6);
            } else {
                static const uint16_t ops[8] = {OP_SUB,  OP_XOR,  OP_OR, OP_AND,
                                                OP_SUBW, OP_ADDW, 0,     0};
                unsigned k = ops[((in >> 10) & 4) | ((in >> 5) & 3)];
                if (k)
                    set_op(o, k, rs1p, rs1p, rdp, 0);
            }
            return;
        }
        case 5: {
            int64_t imm = sext(((in >> 1) & 0x800) | ((in >> 7) & 0x10) | ((in >> 1) & 0x300) |
                                   ((in << 2) & 0x400) | ((in >> 1) & 0x40) | ((in << 1) & 0x80) |
                                   ((in >> 2) & 0xe) | ((in << 3) & 0x20),
                               12);
            set_op(o, OP_JAL, 0, 0, 0, imm);
            return;
        }
        case 6:
        case 7: {
            int64_t imm = sext(((in >> 4) & 0x100) | ((in >> 7) & 0x18) | ((in << 1) & 0xc0) |
                                   ((in >> 2) & 6) | ((in << 3) & 0x20),
                               9);
            set_op(o, f3 == 6 ? OP_BEQ : OP_BNE, 0, rs1p, 0, imm);
            return;
        }
        }
        return;
    }
    /* q == 2 */
    switch (f3) {
    case 0:
        set_op(o, OP_SLLI, rd, rd, 0, ((in >> 7) & 0x20) | ((in >> 2) & 0x1f));
        return;
    case 2:
        if (rd)
            set_op(o, OP_LW, rd, 2, 0,
                   ((in >> 7) & 0x20) | ((in >> 2) & 0x1c) | ((in << 4) & 0xc0));
        return;
    case 3:
        if (rd)
            set_op(o, OP_LD, rd, 2, 0,
                   ((in >> 7) & 0x20) | ((in >> 2) & 0x18) | ((in << 4) & 0x1c0));
        return;
    case 4:
        if (!((in >> 12) & 1)) {
            if (rs2 == 0) {
                if (rd)
                    set_op(o, OP_JALR, 0, rd, 0, 0);
            } else {
                set_op(o, OP_ADD, rd, 0, rs2, 0);
            }
        } else {
            if (rs2 == 0 && rd == 0)
                set_op(o, OP_EBREAK, 0, 0, 0, 0);
            else if (rs2 == 0)
                set_op(o, OP_JALR, 1, rd, 0, 0);
            else
                set_op(o, OP_ADD, rd, rd, rs2, 0);
        }
        return;
    case 6:
        set_op(o, OP_SW, 0, 2, rs2, ((in >> 7) & 0x3c) | ((in >> 1) & 0xc0));
        return;
    case 7:
        set_op(o, OP_SD, 0, 2, rs2, ((in >> 7) & 0x38) | ((in >> 1) & 0x1c0));
        return;
    }
}

/* ---- guest memory ------------------------------------------------------------------------ */

/*
 * A full fence for the guest's fence and fence.i. ThreadSanitizer does not model fences (gcc
 * refuses them under -fsanitize=thread); there a sequentially consistent read-modify-write,
 * which it does model, stands in: the guest accesses it orders are atomics too.
 */
static void full_fence(struct hart *h)
{
#ifdef VCK_TSAN
    __atomic_fetch_add(&h->fence_word, 0, __ATOMIC_SEQ_CST);
#else
    (void)h;
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

enum access { ACC_READ, ACC_WRITE };

/* Relaxed host atomics on guest RAM; byte by byte when not naturally aligned. */
static uint64_t host_load(const uint8_t *p, unsigned size)
{
    if (((uintptr_t)p & (size - 1)) == 0) {
        switch (size) {
        case 1:
            return __atomic_load_n(p, __ATOMIC_RELAXED);
        case 2:
            return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
        case 4:
            return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
        default:
            return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
        }
    }
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)__atomic_load_n(p + i, __ATOMIC_RELAXED) << (8 * i);
    return v;
}

static void host_store(uint8_t *p, unsigned size, uint64_t v)
{
    if (((uintptr_t)p & (size - 1)) == 0) {
        switch (size) {
        case 1:
            __atomic_store_n(p, (uint8_t)v, __ATOMIC_RELAXED);
            return;
        case 2:
            __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED);
            return;
        case 4:
            __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED);
            return;
        default:
            __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
            return;
        }
    }
    for (unsigned i = 0; i < size; i++)
        __atomic_store_n(p + i, (uint8_t)(v >> (8 * i)), __ATOMIC_RELAXED);
}

static void tlb_flush(struct hart *h)
{
    for (unsigned i = 0; i < TLB_ENTRIES; i++) {
        atomic_store_explicit(&h->tlb[i].read_tag, 0, memory_order_relaxed);
        atomic_store_explicit(&h->tlb[i].write_tag, 0, memory_order_relaxed);
    }
}

/*
 * Host address of RAM at @addr for a whole-page entry, or NULL (MMIO, unassigned, partial RAM
 * page). Inside the hart's read-side section.
 */
static uint8_t *ram_page_host(struct hart *h, uint64_t page_addr, bool *readonly)
{
    struct vck_xlat x;
    if (vck_dispatch_translate(h->m->dispatch, page_addr, PAGE_SIZE, false, &x) != VCK_MEM_OK ||
        !x.host || x.len < PAGE_SIZE)
        return NULL;
    *readonly = x.section->readonly;
    return x.host;
}

/* Fill the TLB entry of @addr's page; false if it is not plain RAM. */
static bool tlb_fill(struct hart *h, uint64_t addr)
{
    struct machine *m = h->m;
    uint64_t page = addr >> PAGE_BITS;
    bool readonly = false;
    /* The map generation before translating: see the re-check below. */
    uint64_t gen = atomic_load_explicit(&m->map_gen, memory_order_seq_cst);
    uint8_t *host = ram_page_host(h, page << PAGE_BITS, &readonly);
    if (!host)
        return false;
    struct tlb_entry *e = &h->tlb[page % TLB_ENTRIES];
    atomic_store_explicit(&e->read_tag, 0, memory_order_relaxed);
    atomic_store_explicit(&e->write_tag, 0, memory_order_relaxed);
    e->addend = (uintptr_t)host - (page << PAGE_BITS);
    atomic_store_explicit(&e->read_tag, page + 1, memory_order_seq_cst);
    if (!readonly && !machine_store_trapped(m, page << PAGE_BITS)) {
        /* seq_cst store then re-check: pairs with machine_protect_page's set-then-clear. */
        atomic_store_explicit(&e->write_tag, page + 1, memory_order_seq_cst);
        if (machine_store_trapped(m, page << PAGE_BITS))
            atomic_store_explicit(&e->write_tag, 0, memory_order_seq_cst);
    }
    /*
     * The memory map changed while we translated (machine_shoot_down bumps the generation and
     * then clears every hart's entries): this entry may come from the old map, drop it.
     */
    if (atomic_load_explicit(&m->map_gen, memory_order_seq_cst) != gen) {
        atomic_store_explicit(&e->read_tag, 0, memory_order_seq_cst);
        atomic_store_explicit(&e->write_tag, 0, memory_order_seq_cst);
    }
    return true;
}

/*
 * The slow load: MMIO, page crossings, RAM whose TLB entry could not be kept. RAM is still read
 * with host atomics (never dispatch's memcpy: other harts store to it concurrently).
 */
static int load_slow(struct hart *h, uint64_t addr, unsigned size, uint64_t *v)
{
    if ((addr & (PAGE_SIZE - 1)) + size > PAGE_SIZE) {
        uint64_t value = 0, byte;
        for (unsigned i = 0; i < size; i++) {
            int cause = load_slow(h, addr + i, 1, &byte);
            if (cause)
                return cause;
            value |= byte << (8 * i);
        }
        *v = value;
        return 0;
    }
    struct vck_xlat x;
    if (vck_dispatch_translate(h->m->dispatch, addr, size, false, &x) == VCK_MEM_OK && x.host &&
        x.len >= size) {
        *v = host_load(x.host, size);
        return 0;
    }
    if (vck_dispatch_load(h->m->dispatch, addr, size, v) != VCK_MEM_OK)
        return EXC_LOAD_ACCESS;
    return 0;
}

/* A load; returns 0 or the exception cause. */
static inline int load(struct hart *h, uint64_t addr, unsigned size, uint64_t *v)
{
    uint64_t page = addr >> PAGE_BITS;
    struct tlb_entry *e = &h->tlb[page % TLB_ENTRIES];
    if (__builtin_expect(atomic_load_explicit(&e->read_tag, memory_order_relaxed) == page + 1 &&
                             (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE,
                         1)) {
        *v = host_load((const uint8_t *)(uintptr_t)(addr + e->addend), size);
        return 0;
    }
    if ((addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE && tlb_fill(h, addr) &&
        atomic_load_explicit(&e->read_tag, memory_order_relaxed) == page + 1) {
        *v = host_load((const uint8_t *)(uintptr_t)(addr + e->addend), size);
        return 0;
    }
    return load_slow(h, addr, size, v);
}

/* The slow store: MMIO, pages that trap writes, page crossings. */
static int store_slow(struct hart *h, uint64_t addr, unsigned size, uint64_t v)
{
    struct machine *m = h->m;
    if ((addr & (PAGE_SIZE - 1)) + size > PAGE_SIZE) {
        /* Crossing into the next page: byte by byte, each on its own page's rules. */
        for (unsigned i = 0; i < size; i++) {
            int cause = store_slow(h, addr + i, 1, v >> (8 * i));
            if (cause)
                return cause;
        }
        return 0;
    }
    struct vck_xlat x;
    enum vck_mem_result r = vck_dispatch_translate(m->dispatch, addr, size, true, &x);
    if (r == VCK_MEM_OK && x.host && x.len >= size) {
        host_store(x.host, size, v);
        if (machine_store_trapped(m, addr)) {
            if (m->tohost && addr <= m->tohost + 7 && m->tohost <= addr + size - 1)
                machine_tohost_write(m, h,
                                     host_load(m->ram_host + (m->tohost - VCK_VIRT_RAM_BASE), 8));
            /* Blocks are keyed by host address: one key per RAM byte, whatever maps it. */
            if (vck_tb_invalidate_range(m->tbc, (uintptr_t)x.host, (uintptr_t)x.host + size - 1))
                h->st.smc_stores++;
        }
        return 0;
    }
    if (vck_dispatch_store(m->dispatch, addr, size, v) != VCK_MEM_OK)
        return EXC_STORE_ACCESS;
    return 0;
}

static inline int store(struct hart *h, uint64_t addr, unsigned size, uint64_t v)
{
    uint64_t page = addr >> PAGE_BITS;
    struct tlb_entry *e = &h->tlb[page % TLB_ENTRIES];
    if (__builtin_expect(atomic_load_explicit(&e->write_tag, memory_order_relaxed) == page + 1 &&
                             (addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE,
                         1)) {
        host_store((uint8_t *)(uintptr_t)(addr + e->addend), size, v);
        return 0;
    }
    if ((addr & (PAGE_SIZE - 1)) + size <= PAGE_SIZE && tlb_fill(h, addr) &&
        atomic_load_explicit(&e->write_tag, memory_order_relaxed) == page + 1) {
        host_store((uint8_t *)(uintptr_t)(addr + e->addend), size, v);
        return 0;
    }
    return store_slow(h, addr, size, v);
}

/*
 * A host pointer for an atomic access of @size at @addr (aligned RAM), or NULL with *@cause set.
 * *@trapped: the page traps writes (invalidate after the access).
 */
static uint8_t *atomic_host(struct hart *h, uint64_t addr, unsigned size, bool write, int *cause,
                            bool *trapped)
{
    if (addr & (size - 1)) {
        *cause = write ? EXC_STORE_MISALIGNED : EXC_LOAD_MISALIGNED;
        return NULL;
    }
    bool readonly = false;
    uint8_t *host = ram_page_host(h, addr & PAGE_MASK, &readonly);
    if (!host || (write && readonly)) {
        *cause = write ? EXC_STORE_ACCESS : EXC_LOAD_ACCESS;
        return NULL;
    }
    *trapped = write && machine_store_trapped(h->m, addr);
    return host + (addr & (PAGE_SIZE - 1));
}

static uint64_t amo_apply(unsigned f5, uint64_t old, uint64_t src, bool word)
{
    int64_t so = word ? (int32_t)old : (int64_t)old, ss = word ? (int32_t)src : (int64_t)src;
    uint64_t uo = word ? (uint32_t)old : old, us = word ? (uint32_t)src : src;
    switch (f5) {
    case 0x01:
        return src;
    case 0x00:
        return old + src;
    case 0x04:
        return old ^ src;
    case 0x0c:
        return old & src;
    case 0x08:
        return old | src;
    case 0x10:
        return so < ss ? old : src;
    case 0x14:
        return so > ss ? old : src;
    case 0x18:
        return uo < us ? old : src;
    default:
        return uo > us ? old : src;
    }
}

/* AMOs by compare-and-swap: one code path for every operation and both widths. */
static int amo(struct hart *h, const struct op *o, bool word)
{
    uint64_t addr = h->x[o->rs1];
    int cause = 0;
    bool trapped = false;
    uint8_t *p = atomic_host(h, addr, word ? 4 : 8, true, &cause, &trapped);
    if (!p)
        return cause;
    uint64_t src = h->x[o->rs2], old;
    if (word) {
        uint32_t cur = __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED), next;
        do {
            next = (uint32_t)amo_apply((unsigned)o->imm, cur, src, true);
        } while (!__atomic_compare_exchange_n((uint32_t *)p, &cur, next, true, __ATOMIC_SEQ_CST,
                                              __ATOMIC_RELAXED));
        old = (uint64_t)(int64_t)(int32_t)cur;
    } else {
        uint64_t cur = __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED), next;
        do {
            next = amo_apply((unsigned)o->imm, cur, src, false);
        } while (!__atomic_compare_exchange_n((uint64_t *)p, &cur, next, true, __ATOMIC_SEQ_CST,
                                              __ATOMIC_RELAXED));
        old = cur;
    }
    if (trapped)
        vck_tb_invalidate_range(h->m->tbc, (uintptr_t)p, (uintptr_t)p + (word ? 3 : 7));
    h->x[o->rd] = old;
    return 0;
}

static int load_reserved(struct hart *h, const struct op *o, bool word)
{
    uint64_t addr = h->x[o->rs1];
    int cause = 0;
    bool trapped = false;
    uint8_t *p = atomic_host(h, addr, word ? 4 : 8, false, &cause, &trapped);
    if (!p)
        return cause;
    uint64_t v = word ? __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST)
                      : __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
    h->resv_addr = addr;
    h->resv_value = v;
    h->resv_valid = true;
    h->x[o->rd] = word ? (uint64_t)(int64_t)(int32_t)v : v;
    return 0;
}

/*
 * SC succeeds if memory still holds what LR read, by compare-and-swap: a store by another hart
 * that changed the value makes it fail, which is what a guest lock can observe (QEMU does the
 * same; an A-B-A between LR and SC goes unseen).
 */
static int store_conditional(struct hart *h, const struct op *o, bool word)
{
    uint64_t addr = h->x[o->rs1];
    int cause = 0;
    bool trapped = false;
    uint8_t *p = atomic_host(h, addr, word ? 4 : 8, true, &cause, &trapped);
    if (!p)
        return cause;
    bool ok = false;
    if (h->resv_valid && h->resv_addr == addr) {
        if (word) {
            uint32_t expected = (uint32_t)h->resv_value;
            ok = __atomic_compare_exchange_n((uint32_t *)p, &expected, (uint32_t)h->x[o->rs2],
                                             false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        } else {
            uint64_t expected = h->resv_value;
            ok = __atomic_compare_exchange_n((uint64_t *)p, &expected, h->x[o->rs2], false,
                                             __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        }
    }
    h->resv_valid = false;
    if (ok && trapped)
        vck_tb_invalidate_range(h->m->tbc, (uintptr_t)p, (uintptr_t)p + (word ? 3 : 7));
    h->x[o->rd] = !ok;
    return 0;
}

/* ---- CSRs and traps ---------------------------------------------------------------------- */

#define MSTATUS_MIE  (1ull << 3)
#define MSTATUS_MPIE (1ull << 7)
#define MSTATUS_MPP  (3ull << 11)
#define MISA_VALUE                                                                                 \
    ((2ull << 62) | (1ull << ('I' - 'A')) | (1ull << ('M' - 'A')) | (1ull << ('A' - 'A')) |        \
     (1ull << ('C' - 'A')) | (1ull << ('U' - 'A')))

static uint64_t instret_now(const struct hart *h, unsigned done_in_block)
{
    return h->minstret + done_in_block;
}

/* Read CSR @csr; false if it does not exist or may not be accessed (illegal instruction). */
static bool csr_read(struct hart *h, unsigned csr, unsigned done, uint64_t *v)
{
    if (((csr >> 8) & 3) > h->priv)
        return false;
    switch (csr) {
    case 0x300:
        *v = h->mstatus;
        return true;
    case 0x301:
        *v = MISA_VALUE;
        return true;
    case 0x304:
        *v = h->mie;
        return true;
    case 0x305:
        *v = h->mtvec;
        return true;
    case 0x306:
        *v = h->mcounteren;
        return true;
    case 0x340:
        *v = h->mscratch;
        return true;
    case 0x341:
        *v = h->mepc;
        return true;
    case 0x342:
        *v = h->mcause;
        return true;
    case 0x343:
        *v = h->mtval;
        return true;
    case 0x344:
        *v = atomic_load_explicit(&h->mip, memory_order_acquire);
        return true;
    case 0xb00: /* mcycle: one cycle per instruction */
    case 0xb02:
        *v = instret_now(h, done);
        return true;
    case 0xf11: /* mvendorid, marchid, mimpid: read-only zero */
    case 0xf12:
    case 0xf13:
        *v = 0;
        return true;
    case 0xf14:
        *v = h->id;
        return true;
    case 0x3a0 ... 0x3ef: /* PMP with no entries: reads zero, writes ignored */
        *v = 0;
        return true;
    case 0xc00:
    case 0xc01:
    case 0xc02:
        if (h->priv < PRIV_M && !((h->mcounteren >> (csr - 0xc00)) & 1))
            return false;
        *v = csr == 0xc01 ? machine_mtime(h->m) : instret_now(h, done);
        return true;
    }
    return false;
}

static bool csr_write(struct hart *h, unsigned csr, uint64_t v)
{
    if (((csr >> 10) & 3) == 3 || ((csr >> 8) & 3) > h->priv)
        return false;
    switch (csr) {
    case 0x300: {
        uint64_t mpp = (v & MSTATUS_MPP) == MSTATUS_MPP ? MSTATUS_MPP : 0; /* M or U only */
        h->mstatus = (v & (MSTATUS_MIE | MSTATUS_MPIE)) | mpp;
        return true;
    }
    case 0x301: /* misa: WARL, fixed */
        return true;
    case 0x304:
        h->mie = v & (MIP_MSIP | MIP_MTIP | (1ull << 11));
        return true;
    case 0x305:
        if ((v & 3) < 2) /* direct or vectored; reserved modes keep the old value */
            h->mtvec = v & ~2ull;
        return true;
    case 0x306:
        h->mcounteren = v & 7;
        return true;
    case 0x340:
        h->mscratch = v;
        return true;
    case 0x341:
        h->mepc = v & ~1ull;
        return true;
    case 0x342:
        h->mcause = v;
        return true;
    case 0x343:
        h->mtval = v;
        return true;
    case 0x344: /* MSIP and MTIP are the CLINT's */
        return true;
    case 0x3a0 ... 0x3ef:
        return true;
    case 0xb00:
    case 0xb02:
        h->minstret = v;
        return true;
    }
    return false;
}

static const char *cause_name(uint64_t cause)
{
    static const char *const names[] = {
        [EXC_INSN_MISALIGNED] = "instruction address misaligned",
        [EXC_INSN_ACCESS] = "instruction access fault",
        [EXC_ILLEGAL] = "illegal instruction",
        [EXC_BREAKPOINT] = "breakpoint",
        [EXC_LOAD_MISALIGNED] = "load address misaligned",
        [EXC_LOAD_ACCESS] = "load access fault",
        [EXC_STORE_MISALIGNED] = "store address misaligned",
        [EXC_STORE_ACCESS] = "store access fault",
        [EXC_ECALL_U] = "environment call from U-mode",
        [EXC_ECALL_M] = "environment call from M-mode",
    };
    if (cause & CAUSE_INTERRUPT)
        return "interrupt";
    if (cause < sizeof(names) / sizeof(names[0]) && names[cause])
        return names[cause];
    return "unknown";
}

/* Enter the trap handler for @cause at @pc. False: no handler (the machine ends). */
static bool take_trap(struct hart *h, uint64_t cause, uint64_t tval, uint64_t pc)
{
    if ((h->mtvec & ~3ull) == 0) {
        machine_end(h->m, VCK_EXIT_GUEST_FAULT,
                    "hart %u: %s (cause %" PRIu64 ") at pc %#" PRIx64 ", tval %#" PRIx64
                    ", and no trap handler (mtvec is 0)",
                    h->id, cause_name(cause), (uint64_t)(cause & ~CAUSE_INTERRUPT), pc, tval);
        return false;
    }
    uint64_t base = h->mtvec & ~3ull;
    uint64_t target = (h->mtvec & 1) && (cause & CAUSE_INTERRUPT) ? base + 4 * (cause & 63) : base;
    if (!(cause & CAUSE_INTERRUPT) && pc == target && h->minstret == h->loop_minstret &&
        cause == h->loop_cause) {
        /*
         * The handler's first instruction raises the same exception again, with nothing retired
         * in between: the hart goes round forever unless another hart rewrites that code or
         * remaps it. So a loop is declared only after a full second of host time (checked, with
         * a yield to the other harts, every 1024 rounds), not after a count a few milliseconds
         * long.
         */
        if (h->loop_count++ == 0)
            h->loop_since = machine_mtime(h->m);
        else if ((h->loop_count & 1023) == 0) {
            sched_yield();
            if (machine_mtime(h->m) - h->loop_since >= 10000000u) { /* 1 s at 10 MHz */
                machine_end(h->m, VCK_EXIT_GUEST_FAULT,
                            "hart %u: trap loop: %s (cause %" PRIu64 ") at pc %#" PRIx64
                            ", the trap handler's own address (mtvec %#" PRIx64 ")",
                            h->id, cause_name(cause), cause, pc, h->mtvec);
                return false;
            }
        }
    } else {
        h->loop_count = 0;
        h->loop_cause = cause;
        h->loop_minstret = h->minstret;
    }
    h->st.traps++;
    h->mepc = pc;
    h->mcause = cause;
    h->mtval = tval;
    uint64_t s = h->mstatus;
    s = (s & ~MSTATUS_MPIE) | ((s & MSTATUS_MIE) ? MSTATUS_MPIE : 0);
    s = (s & ~(MSTATUS_MIE | MSTATUS_MPP)) | ((uint64_t)h->priv << 11);
    h->mstatus = s;
    h->priv = PRIV_M;
    h->pc = target;
    h->resv_valid = false;
    return true;
}

/* ---- translation ------------------------------------------------------------------------- */

/* TR_RETRY: the code changed while it was read (the add was refused); look it up again. */
enum translate_result { TR_OK, TR_FAULT, TR_PROTECT, TR_ARENA_FULL, TR_RETRY };

static void *arena_alloc(struct hart *h, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (h->arena_used + size > h->arena_size)
        return NULL;
    void *p = h->arena + h->arena_used;
    h->arena_used += size;
    return p;
}

/*
 * The block key's "physical" address is the host address of the guest RAM byte: unique per byte
 * of RAM however many guest addresses show it (a RAM bank seen both directly and through the
 * remap window), as QEMU keys blocks by RAM offset rather than by guest physical address.
 * M and U mode have no translation: virtual = guest physical. Inside a read-side section.
 */
static bool phys_host(void *opaque, uint64_t vaddr, uint64_t *phys)
{
    bool readonly;
    uint8_t *host = ram_page_host(opaque, vaddr & PAGE_MASK, &readonly);
    if (!host)
        return false;
    *phys = (uintptr_t)host + (vaddr & (PAGE_SIZE - 1));
    return true;
}

enum code_page { CODE_PAGE_OK, CODE_PAGE_NOT_RAM, CODE_PAGE_PROTECT };

/*
 * May the block read code from @page? It must be RAM (*@host: its host address) and already
 * trap writes on every hart (else *@protect = @page: the caller protects it outside its section
 * and retries); then *@gen is its invalidation generation, read before any code from it.
 */
static enum code_page code_page(struct hart *h, uint64_t page, uint8_t **host, uint32_t *gen,
                                uint64_t *protect)
{
    bool readonly;
    *host = ram_page_host(h, page, &readonly);
    if (!*host)
        return CODE_PAGE_NOT_RAM;
    if (!machine_page_protected(h->m, page)) {
        *protect = page;
        return CODE_PAGE_PROTECT;
    }
    *gen = vck_tb_page_gen(h->m->tbc, (uintptr_t)*host);
    return CODE_PAGE_OK;
}

/*
 * Translate the block at h->pc into *@out. Inside the hart's read-side section. TR_PROTECT:
 * page *@protect must first be made to trap writes (outside the section).
 */
static enum translate_result translate(struct hart *h, struct block **out, uint64_t *protect)
{
    struct machine *m = h->m;
    /* seq_cst: pairs with on_commit()'s bump (see block_map_current()). */
    uint64_t map_gen = atomic_load_explicit(&m->map_gen, memory_order_seq_cst);
    uint64_t pc = h->pc, page0 = pc & PAGE_MASK, page1 = VCK_TB_NO_PAGE2;
    uint8_t *host0, *host1 = NULL;
    uint32_t gen0 = 0, gen1 = 0;
    switch (code_page(h, page0, &host0, &gen0, protect)) {
    case CODE_PAGE_NOT_RAM:
        goto fault;
    case CODE_PAGE_PROTECT:
        return TR_PROTECT;
    case CODE_PAGE_OK:
        break;
    }
    struct op ops[MAX_BLOCK_INSNS + 1];
    unsigned n = 0;
    uint64_t a = pc;
    for (;;) {
        uint64_t page = a & PAGE_MASK;
        if (page != page0 && page != page1) {
            if (page1 != VCK_TB_NO_PAGE2)
                break; /* never a third page */
            enum code_page r = code_page(h, page, &host1, &gen1, protect);
            if (r == CODE_PAGE_PROTECT)
                return TR_PROTECT;
            if (r == CODE_PAGE_NOT_RAM)
                break; /* end the block before it; running there faults then */
            page1 = page;
        }
        /* Both pages were checked to be RAM: parcels come straight from their host memory. */
        uint16_t lo = (uint16_t)host_load((page == page0 ? host0 : host1) + (a & ~PAGE_MASK), 2);
        struct op *o = &ops[n];
        memset(o, 0, sizeof(*o));
        if ((lo & 3) == 3) {
            uint64_t next = (a + 2) & PAGE_MASK;
            if (next != page && page1 != VCK_TB_NO_PAGE2 && next != page1)
                break;
            if (next != page && page1 == VCK_TB_NO_PAGE2) {
                /* The instruction straddles into the next page: make it part of the block. */
                enum code_page r = code_page(h, next, &host1, &gen1, protect);
                if (r == CODE_PAGE_PROTECT)
                    return TR_PROTECT;
                if (r == CODE_PAGE_NOT_RAM) {
                    if (n == 0)
                        goto fault_at_next;
                    break;
                }
                page1 = next;
            }
            uint16_t hi =
                (uint16_t)host_load((next == page0 ? host0 : host1) + ((a + 2) & ~PAGE_MASK), 2);
            uint32_t insn = lo | (uint32_t)hi << 16;
            decode32(insn, o);
            o->insn = insn;
            o->len = 4;
        } else {
            decode16(lo, o);
            o->insn = lo;
            o->len = 2;
        }
        o->pc_off = (uint16_t)(a - pc);
        n++;
        a += o->len;
        if (ends_block(o->kind) || n == MAX_BLOCK_INSNS)
            break;
    }
    unsigned n_insns = n, n_ops = n;
    if (!ends_block(ops[n - 1].kind)) {
        /* Cut at the size limit, before a third page or before non-RAM: fall through to @a. */
        struct op *f = &ops[n_ops++];
        memset(f, 0, sizeof(*f));
        f->kind = OP_FALLTHROUGH;
        f->rd = 32;
        f->pc_off = (uint16_t)(a - pc);
        f->imm = (int64_t)a;
    }
    size_t bytes = sizeof(struct block) + n_ops * sizeof(struct op);
    size_t mark = h->arena_used;
    struct block *b = arena_alloc(h, bytes);
    if (!b)
        return TR_ARENA_FULL;
    memset(&b->tb, 0, sizeof(b->tb));
    b->n_ops = n_ops;
    b->n_insns = n_insns;
    memcpy(b->ops, ops, n_ops * sizeof(struct op));
    b->tb.pc = pc;
    b->tb.phys_pc = (uintptr_t)host0 + (pc & (PAGE_SIZE - 1));
    b->tb.phys_page2 = page1 != VCK_TB_NO_PAGE2 ? (uintptr_t)host1 : VCK_TB_NO_PAGE2;
    b->tb.flags = h->priv;
    b->tb.size = (uint32_t)(a - pc);
    b->tb.page_gen[0] = gen0;
    b->tb.page_gen[1] = gen1;
    b->tb.code = b->ops;
    b->tb.code_size = n_ops * sizeof(struct op);
    b->map_gen = map_gen; /* the add refuses the block if the map changed since (validate) */
    struct vck_tb *got = vck_tb_add(m->tbc, h->tbcpu, &b->tb);
    if (got != &b->tb)
        h->arena_used = mark; /* ours was never published */
    if (!got) {
        /*
         * The code changed under us. Back to the batch loop rather than straight into another
         * translation: another hart storing to this page in a loop can refuse thousands of adds
         * in a row, and the loop checks events and ends its read-side section in bounded time.
         */
        h->st.retranslations++;
        return TR_RETRY;
    }

    h->st.blocks_translated += got == &b->tb;
    *out = (struct block *)got;
    return TR_OK;
fault_at_next:
    take_trap(h, EXC_INSN_ACCESS, (a + 2) & PAGE_MASK, pc);
    return TR_FAULT;
fault:
    take_trap(h, EXC_INSN_ACCESS, pc, pc);
    return TR_FAULT;
}

/* ---- execution --------------------------------------------------------------------------- */

enum block_exit {
    EXIT_JUMP0, /* direct, taken: chainable through exit 0 */
    EXIT_JUMP1, /* direct, fall-through: chainable through exit 1 */
    EXIT_INDIRECT,
    EXIT_TRAP,
    EXIT_SYSTEM, /* CSR, mret, fence.i...: back to the loop, which re-checks interrupts */
    EXIT_WFI,
    EXIT_END,
};

/* Run @b from its first op; h->pc is the next pc on return, *@done the instructions retired. */
static enum block_exit run_block(struct hart *h, const struct block *b, unsigned *done)
{
    uint64_t *x = h->x;
    const uint64_t pc0 = b->tb.pc;
    int cause = 0;
    uint64_t tval = 0, v;
    const struct op *o = b->ops;
    for (;; o++) {
        switch (o->kind) {
        case OP_LUI:
            x[o->rd] = (uint64_t)o->imm;
            break;
        case OP_AUIPC:
            x[o->rd] = pc0 + o->pc_off + (uint64_t)o->imm;
            break;
        case OP_ADDI:
            x[o->rd] = x[o->rs1] + (uint64_t)o->imm;
            break;
        case OP_SLTI:
            x[o->rd] = (int64_t)x[o->rs1] < o->imm;
            break;
        case OP_SLTIU:
            x[o->rd] = x[o->rs1] < (uint64_t)o->imm;
            break;
        case OP_XORI:
            x[o->rd] = x[o->rs1] ^ (uint64_t)o->imm;
            break;
        case OP_ORI:
            x[o->rd] = x[o->rs1] | (uint64_t)o->imm;
            break;
        case OP_ANDI:
            x[o->rd] = x[o->rs1] & (uint64_t)o->imm;
            break;
        case OP_SLLI:
            x[o->rd] = x[o->rs1] << o->imm;
            break;
        case OP_SRLI:
            x[o->rd] = x[o->rs1] >> o->imm;
            break;
        case OP_SRAI:
            x[o->rd] = (uint64_t)((int64_t)x[o->rs1] >> o->imm);
            break;
        case OP_ADD:
            x[o->rd] = x[o->rs1] + x[o->rs2];
            break;
        case OP_SUB:
            x[o->rd] = x[o->rs1] - x[o->rs2];
            break;
        case OP_SLL:
            x[o->rd] = x[o->rs1] << (x[o->rs2] & 63);
            break;
        case OP_SLT:
            x[o->rd] = (int64_t)x[o->rs1] < (int64_t)x[o->rs2];
            break;
        case OP_SLTU:
            x[o->rd] = x[o->rs1] < x[o->rs2];
            break;
        case OP_XOR:
            x[o->rd] = x[o->rs1] ^ x[o->rs2];
            break;
        case OP_SRL:
            x[o->rd] = x[o->rs1] >> (x[o->rs2] & 63);
            break;
        case OP_SRA:
            x[o->rd] = (uint64_t)((int64_t)x[o->rs1] >> (x[o->rs2] & 63));
            break;
        case OP_OR:
            x[o->rd] = x[o->rs1] | x[o->rs2];
            break;
        case OP_AND:
            x[o->rd] = x[o->rs1] & x[o->rs2];
            break;
        case OP_ADDIW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)(x[o->rs1] + (uint64_t)o->imm);
            break;
        case OP_SLLIW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)((uint32_t)x[o->rs1] << o->imm);
            break;
        case OP_SRLIW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)((uint32_t)x[o->rs1] >> o->imm);
            break;
        case OP_SRAIW:
            x[o->rd] = (uint64_t)(int64_t)((int32_t)x[o->rs1] >> o->imm);
            break;
        case OP_ADDW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)(x[o->rs1] + x[o->rs2]);
            break;
        case OP_SUBW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)(x[o->rs1] - x[o->rs2]);
            break;
        case OP_SLLW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)((uint32_t)x[o->rs1] << (x[o->rs2] & 31));
            break;
        case OP_SRLW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)((uint32_t)x[o->rs1] >> (x[o->rs2] & 31));
            break;
        case OP_SRAW:
            x[o->rd] = (uint64_t)(int64_t)((int32_t)x[o->rs1] >> (x[o->rs2] & 31));
            break;
        case OP_MUL:
            x[o->rd] = x[o->rs1] * x[o->rs2];
            break;
        case OP_MULH:
            x[o->rd] = (uint64_t)(((__int128)(int64_t)x[o->rs1] * (int64_t)x[o->rs2]) >> 64);
            break;
        case OP_MULHSU:
            x[o->rd] = (uint64_t)(((__int128)(int64_t)x[o->rs1] *
                                   (__int128)(unsigned __int128)x[o->rs2]) >>
                                  64);
            break;
        case OP_MULHU:
            x[o->rd] = (uint64_t)(((unsigned __int128)x[o->rs1] * x[o->rs2]) >> 64);
            break;
        case OP_DIV: {
            int64_t a = (int64_t)x[o->rs1], d = (int64_t)x[o->rs2];
            x[o->rd] = d == 0                        ? UINT64_MAX
                       : (a == INT64_MIN && d == -1) ? (uint64_t)a
                                                     : (uint64_t)(a / d);
            break;
        }
        case OP_DIVU:
            x[o->rd] = x[o->rs2] ? x[o->rs1] / x[o->rs2] : UINT64_MAX;
            break;
        case OP_REM: {
            int64_t a = (int64_t)x[o->rs1], d = (int64_t)x[o->rs2];
            x[o->rd] = d == 0 ? (uint64_t)a : (a == INT64_MIN && d == -1) ? 0 : (uint64_t)(a % d);
            break;
        }
        case OP_REMU:
            x[o->rd] = x[o->rs2] ? x[o->rs1] % x[o->rs2] : x[o->rs1];
            break;
        case OP_MULW:
            x[o->rd] = (uint64_t)(int64_t)(int32_t)((uint32_t)x[o->rs1] * (uint32_t)x[o->rs2]);
            break;
        case OP_DIVW: {
            int32_t a = (int32_t)x[o->rs1], d = (int32_t)x[o->rs2];
            int32_t r = d == 0 ? -1 : (a == INT32_MIN && d == -1) ? a : a / d;
            x[o->rd] = (uint64_t)(int64_t)r;
            break;
        }
        case OP_DIVUW: {
            uint32_t a = (uint32_t)x[o->rs1], d = (uint32_t)x[o->rs2];
            x[o->rd] = (uint64_t)(int64_t)(int32_t)(d ? a / d : UINT32_MAX);
            break;
        }
        case OP_REMW: {
            int32_t a = (int32_t)x[o->rs1], d = (int32_t)x[o->rs2];
            int32_t r = d == 0 ? a : (a == INT32_MIN && d == -1) ? 0 : a % d;
            x[o->rd] = (uint64_t)(int64_t)r;
            break;
        }
        case OP_REMUW: {
            uint32_t a = (uint32_t)x[o->rs1], d = (uint32_t)x[o->rs2];
            x[o->rd] = (uint64_t)(int64_t)(int32_t)(d ? a % d : a);
            break;
        }
#define LOAD(size, conv)                                                                           \
    do {                                                                                           \
        uint64_t addr_ = x[o->rs1] + (uint64_t)o->imm;                                             \
        if ((cause = load(h, addr_, size, &v))) {                                                  \
            tval = addr_;                                                                          \
            goto trap;                                                                             \
        }                                                                                          \
        x[o->rd] = conv;                                                                           \
    } while (0)
        case OP_LB:
            LOAD(1, (uint64_t)(int64_t)(int8_t)v);
            break;
        case OP_LH:
            LOAD(2, (uint64_t)(int64_t)(int16_t)v);
            break;
        case OP_LW:
            LOAD(4, (uint64_t)(int64_t)(int32_t)v);
            break;
        case OP_LD:
            LOAD(8, v);
            break;
        case OP_LBU:
            LOAD(1, v);
            break;
        case OP_LHU:
            LOAD(2, v);
            break;
        case OP_LWU:
            LOAD(4, v);
            break;
#undef LOAD
#define STORE(size)                                                                                \
    do {                                                                                           \
        uint64_t addr_ = x[o->rs1] + (uint64_t)o->imm;                                             \
        if ((cause = store(h, addr_, size, x[o->rs2]))) {                                          \
            tval = addr_;                                                                          \
            goto trap;                                                                             \
        }                                                                                          \
    } while (0)
        case OP_SB:
            STORE(1);
            break;
        case OP_SH:
            STORE(2);
            break;
        case OP_SW:
            STORE(4);
            break;
        case OP_SD:
            STORE(8);
            break;
#undef STORE
        case OP_LR_W:
        case OP_LR_D:
            if ((cause = load_reserved(h, o, o->kind == OP_LR_W))) {
                tval = x[o->rs1];
                goto trap;
            }
            break;
        case OP_SC_W:
        case OP_SC_D:
            if ((cause = store_conditional(h, o, o->kind == OP_SC_W))) {
                tval = x[o->rs1];
                goto trap;
            }
            break;
        case OP_AMO_W:
        case OP_AMO_D:
            if ((cause = amo(h, o, o->kind == OP_AMO_W))) {
                tval = x[o->rs1];
                goto trap;
            }
            break;
        case OP_FENCE:
            full_fence(h);
            break;
        case OP_JAL:
            x[o->rd] = pc0 + o->pc_off + o->len;
            h->pc = pc0 + o->pc_off + (uint64_t)o->imm;
            *done = (unsigned)(o - b->ops) + 1;
            return EXIT_JUMP0;
        case OP_JALR: {
            uint64_t target = (x[o->rs1] + (uint64_t)o->imm) & ~1ull;
            x[o->rd] = pc0 + o->pc_off + o->len;
            h->pc = target;
            *done = (unsigned)(o - b->ops) + 1;
            return EXIT_INDIRECT;
        }
#define BRANCH(cond)                                                                               \
    do {                                                                                           \
        *done = (unsigned)(o - b->ops) + 1;                                                        \
        if (cond) {                                                                                \
            h->pc = pc0 + o->pc_off + (uint64_t)o->imm;                                            \
            return EXIT_JUMP0;                                                                     \
        }                                                                                          \
        h->pc = pc0 + o->pc_off + o->len;                                                          \
        return EXIT_JUMP1;                                                                         \
    } while (0)
        case OP_BEQ:
            BRANCH(x[o->rs1] == x[o->rs2]);
        case OP_BNE:
            BRANCH(x[o->rs1] != x[o->rs2]);
        case OP_BLT:
            BRANCH((int64_t)x[o->rs1] < (int64_t)x[o->rs2]);
        case OP_BGE:
            BRANCH((int64_t)x[o->rs1] >= (int64_t)x[o->rs2]);
        case OP_BLTU:
            BRANCH(x[o->rs1] < x[o->rs2]);
        case OP_BGEU:
            BRANCH(x[o->rs1] >= x[o->rs2]);
#undef BRANCH
        case OP_FALLTHROUGH:
            h->pc = (uint64_t)o->imm;
            *done = (unsigned)(o - b->ops);
            return EXIT_JUMP1;
        case OP_FENCE_I:
            /* Stores to code already invalidated what they overwrote: resume at a lookup. */
            full_fence(h);
            h->pc = pc0 + o->pc_off + o->len;
            *done = (unsigned)(o - b->ops) + 1;
            return EXIT_SYSTEM;
        case OP_ECALL:
            cause = h->priv == PRIV_M ? EXC_ECALL_M : EXC_ECALL_U;
            tval = 0;
            goto trap;
        case OP_EBREAK:
            cause = EXC_BREAKPOINT;
            tval = pc0 + o->pc_off;
            goto trap;
        case OP_MRET: {
            if (h->priv != PRIV_M) {
                cause = EXC_ILLEGAL;
                tval = o->insn;
                goto trap;
            }
            uint64_t s = h->mstatus;
            h->priv = (unsigned)((s & MSTATUS_MPP) >> 11);
            s = (s & ~MSTATUS_MIE) | ((s & MSTATUS_MPIE) ? MSTATUS_MIE : 0);
            s = (s | MSTATUS_MPIE) & ~MSTATUS_MPP;
            h->mstatus = s;
            h->pc = h->mepc;
            h->resv_valid = false;
            *done = (unsigned)(o - b->ops) + 1;
            return EXIT_SYSTEM;
        }
        case OP_WFI:
            h->pc = pc0 + o->pc_off + o->len;
            *done = (unsigned)(o - b->ops) + 1;
            return EXIT_WFI;
        case OP_CSRRW:
        case OP_CSRRS:
        case OP_CSRRC:
        case OP_CSRRWI:
        case OP_CSRRSI:
        case OP_CSRRCI: {
            unsigned csr = (unsigned)o->imm, k = o->kind, done_here = (unsigned)(o - b->ops);
            bool imm_form = k >= OP_CSRRWI;
            uint64_t src = imm_form ? o->rs1 : x[o->rs1], old = 0;
            bool writes = k == OP_CSRRW || k == OP_CSRRWI || o->rs1 != 0;
            bool reads = !((k == OP_CSRRW || k == OP_CSRRWI) && o->rd == 32);
            if (reads && !csr_read(h, csr, done_here, &old)) {
                cause = EXC_ILLEGAL;
                tval = o->insn;
                goto trap;
            }
            if (writes) {
                uint64_t nv = k == OP_CSRRW || k == OP_CSRRWI   ? src
                              : k == OP_CSRRS || k == OP_CSRRSI ? old | src
                                                                : old & ~src;
                if (!reads && !csr_read(h, csr, done_here, &old)) {
                    cause = EXC_ILLEGAL;
                    tval = o->insn;
                    goto trap;
                }
                if (!csr_write(h, csr, nv)) {
                    cause = EXC_ILLEGAL;
                    tval = o->insn;
                    goto trap;
                }
            }
            x[o->rd] = old;
            h->pc = pc0 + o->pc_off + o->len;
            *done = done_here + 1;
            return EXIT_SYSTEM;
        }
        default: /* OP_ILLEGAL */
            cause = EXC_ILLEGAL;
            tval = o->insn;
            goto trap;
        }
    }
trap : {
    /* Precise: the faulting op's block, found from the op's address as a fault handler would. */
    const struct block *owner = (const struct block *)vck_tb_find_by_host(h->m->tbc, o);
    uint64_t pc = (owner ? owner->tb.pc : pc0) + o->pc_off;
    *done = (unsigned)(o - b->ops);
    if (!take_trap(h, (uint64_t)cause, tval, pc))
        return EXIT_END;
    return EXIT_TRAP;
}
}

/* ---- the hart's loop --------------------------------------------------------------------- */

void hart_reset(struct hart *h, uint64_t entry)
{
    memset(h->x, 0, sizeof(h->x));
    h->x[10] = h->id; /* a0 */
    h->x[11] = 0;     /* a1: no device tree */
    h->pc = entry;
    h->priv = PRIV_M;
    h->mstatus = 0;
    h->mtvec = h->mepc = h->mcause = h->mtval = h->mie = h->mscratch = h->mcounteren = 0;
    h->minstret = 0;
    h->resv_valid = false;
    h->loop_count = 0;
    h->loop_cause = UINT64_MAX;
    atomic_store(&h->mip, 0);
    /* Before the threads start: a stop posted to the run that ended must not end this one. */
    atomic_store(&h->events, 0);
    tlb_flush(h);
}

/* The hart this thread runs, for devices that act on their caller (NULL off hart threads). */
static _Thread_local struct hart *current_hart;

/*
 * Called by a memory-map commit: if it runs on a hart (an MMIO write that remapped), that hart
 * ends its batch after the current block, so its read-side section, which every grace period
 * waits for, does not stay open across a run of remapping writes.
 */
void hart_end_batch_soon(void)
{
    if (current_hart)
        atomic_fetch_or_explicit(&current_hart->events, EV_YIELD, memory_order_relaxed);
}

void hart_kick(struct hart *h, unsigned events)
{
    atomic_fetch_or_explicit(&h->events, events, memory_order_release);
    pthread_mutex_lock(&h->sleep_lock);
    if (h->sleeping)
        pthread_cond_signal(&h->sleep_cond);
    pthread_mutex_unlock(&h->sleep_lock);
}

static bool interrupt_pending(struct hart *h)
{
    return atomic_load_explicit(&h->mip, memory_order_acquire) & h->mie;
}

/* Take a pending, enabled interrupt (outside blocks). MSI before MTI, as the spec orders them. */
static bool check_interrupts(struct hart *h)
{
    uint64_t pending = atomic_load_explicit(&h->mip, memory_order_acquire) & h->mie;
    if (!pending || (h->priv == PRIV_M && !(h->mstatus & MSTATUS_MIE)))
        return true;
    unsigned irq = (pending & MIP_MSIP) ? IRQ_MSI : IRQ_MTI;
    h->st.interrupts++;
    return take_trap(h, CAUSE_INTERRUPT | irq, 0, h->pc);
}

static void trace_block(struct hart *h, const struct block *b)
{
    struct machine *m = h->m;
    pthread_mutex_lock(&m->trace_lock);
    fprintf(m->opts.trace_out, "B %u %016" PRIx64 " %u\n", h->id, b->tb.pc, b->n_insns);
    pthread_mutex_unlock(&m->trace_lock);
}

enum batch_end { BATCH_EVENTS, BATCH_WFI, BATCH_PROTECT, BATCH_ARENA, BATCH_END };

/* Run blocks inside one read-side section until an event, WFI or a budget runs out. */
static enum batch_end run_batch(struct hart *h, uint64_t *protect)
{
    bool chain = !h->m->opts.trace;
    struct block *b = NULL, *prev = NULL;
    int prev_exit = 0;
    for (unsigned n = 0; n < 1024; n++) {
        if (atomic_load_explicit(&h->events, memory_order_relaxed))
            return BATCH_EVENTS;
        if (!b) {
            h->st.lookups++;
            b = (struct block *)vck_tb_lookup_fixed(h->tbcpu, h->pc, h->priv, 0, phys_host, h,
                                                    PAGE_BITS, JC_BITS, 1);
            if (!b) {
                switch (translate(h, &b, protect)) {
                case TR_OK:
                    break;
                case TR_FAULT:
                    if (__atomic_load_n(&h->m->ended, __ATOMIC_RELAXED))
                        return BATCH_END;
                    prev = NULL;
                    continue;
                case TR_PROTECT:
                    return BATCH_PROTECT;
                case TR_ARENA_FULL:
                    return BATCH_ARENA;
                case TR_RETRY:
                    continue;
                }
            }
            if (prev && chain)
                vck_tb_link(&prev->tb, prev_exit, &b->tb);
        }
        if (h->m->opts.trace)
            trace_block(h, b);
        unsigned done = 0;
        enum block_exit ex = run_block(h, b, &done);
        h->minstret += done;
        h->st.insns += done;
        h->st.blocks_executed++;
        switch (ex) {
        case EXIT_JUMP0:
        case EXIT_JUMP1: {
            struct block *next =
                chain ? (struct block *)vck_tb_jump_target(&b->tb, ex == EXIT_JUMP1) : NULL;
            if (next && next->tb.pc == h->pc && next->tb.flags == h->priv) {
                h->st.chained++;
                prev = NULL;
                b = next;
            } else {
                prev = b;
                prev_exit = ex == EXIT_JUMP1;
                b = NULL;
            }
            break;
        }
        case EXIT_INDIRECT:
        case EXIT_TRAP:
            prev = NULL;
            b = NULL;
            break;
        case EXIT_SYSTEM:
            return BATCH_EVENTS; /* a CSR or mret may have enabled an interrupt */
        case EXIT_WFI:
            return BATCH_WFI;
        case EXIT_END:
            return BATCH_END;
        }
    }
    return BATCH_EVENTS;
}

static void wait_for_interrupt(struct hart *h)
{
    pthread_mutex_lock(&h->sleep_lock);
    h->sleeping = true;
    while (!interrupt_pending(h) && !atomic_load_explicit(&h->events, memory_order_acquire))
        pthread_cond_wait(&h->sleep_cond, &h->sleep_lock);
    h->sleeping = false;
    pthread_mutex_unlock(&h->sleep_lock);
}

void *hart_main(void *arg)
{
    struct hart *h = arg;
    struct machine *m = h->m;
    current_hart = h;
    vck_rcu_register_thread();
    for (;;) {
        unsigned ev = atomic_exchange_explicit(&h->events, 0, memory_order_acquire);
        if (ev & EV_STOP)
            break;
        if (!check_interrupts(h))
            break;
        vck_tb_assert_no_page_locks();
        uint64_t protect = 0;
        vck_rcu_read_lock();
        enum batch_end end = run_batch(h, &protect);
        vck_rcu_read_unlock();
        switch (end) {
        case BATCH_EVENTS:
            break;
        case BATCH_WFI:
            if (!interrupt_pending(h))
                wait_for_interrupt(h);
            break;
        case BATCH_PROTECT:
            machine_protect_page(m, protect);
            break;
        case BATCH_ARENA:
            /* Out of code space: drop every block, then reuse this hart's arena. */
            vck_tb_flush(m->tbc);
            vck_rcu_barrier();
            h->arena_used = 0;
            __atomic_fetch_add(&m->flushes, 1, __ATOMIC_RELAXED);
            break;
        case BATCH_END:
            goto out;
        }
    }
out:
    vck_rcu_unregister_thread();
    return NULL;
}
