/*
 * Address-space access (vck_dispatch_read, _write, _load, _store) against a reference model
 * written from the rules in <vcpukit/dispatch.h>, byte by byte, on random dense layouts: RAM,
 * split RAM, devices with every combination of access sizes, alignment rules, missing callbacks
 * and failing accesses, aliases, overlaps, read-only ranges, unassigned holes, and windows at the
 * very top of the space so that accesses run past 2^64 - 1.
 *
 * The model keeps its own copy of every RAM buffer and device register file, walks the flat
 * view's ranges (the peer for "which range answers here"), cuts each MMIO range into the pieces
 * the header describes, widens them to min_access, and runs its copy of the device. After every
 * access the test compares the result code, every byte read (the buffers are prefilled with
 * different garbage), the exact sequence of device callbacks (offset, size, value, result) and of
 * RAM write hook calls; at the end of each run and after each change of the layout it compares
 * every RAM byte and device register.
 *
 * Failures name the seed, the run and the operation; VCK_SEED=<n> replays a seed, VCK_RUN=<i>
 * only its run i, VCK_SCALE=<x> multiplies the number of runs.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_world.h"

static void suite_init(void)
{
    vck_rcu_register_thread();
}

static void suite_fini(void)
{
    vck_rcu_unregister_thread();
}

TestSuite(dispatch_access, .init = suite_init, .fini = suite_fini, .timeout = 300);

typedef unsigned __int128 u128;

/* ---- the reference model ------------------------------------------------------------------- */

struct model {
    struct world *w;
    struct vck_flat_range *ranges; /* a copy of the current view's */
    size_t n;
    struct dev_state *dev; /* by device id; copies of this run's devices */
    uint8_t **ram;         /* by buffer id; copies of this run's buffers */
    struct call_log log;
    struct hook_log hooks;
};

static void model_init(struct model *m, struct world *w)
{
    memset(m, 0, sizeof(*m));
    m->w = w;
    m->dev = calloc((size_t)w->n_devs + 1, sizeof(*m->dev));
    m->ram = calloc((size_t)w->n_rams + 1, sizeof(*m->ram));
    cr_assert(m->dev && m->ram);
    for (int i = w->first_dev; i < w->n_devs; i++)
        dev_state_copy(&m->dev[i], &w->devs[i]->st);
    for (int i = w->first_ram; i < w->n_rams; i++) {
        m->ram[i] = malloc(w->rams[i]->size + 1);
        cr_assert_not_null(m->ram[i]);
        memcpy(m->ram[i], w->rams[i]->buf, w->rams[i]->size);
    }
    m->n = world_snapshot(w->as[0], &m->ranges);
}

static void model_refresh_view(struct model *m)
{
    free(m->ranges);
    m->n = world_snapshot(m->w->as[0], &m->ranges);
}

static void model_free(struct model *m)
{
    for (int i = m->w->first_dev; i < m->w->n_devs; i++)
        dev_state_free(&m->dev[i]);
    for (int i = m->w->first_ram; i < m->w->n_rams; i++)
        free(m->ram[i]);
    free(m->dev);
    free(m->ram);
    free(m->ranges);
    free(m->log.v);
    free(m->hooks.v);
}

static void first_error(enum vck_mem_result *res, enum vck_mem_result r)
{
    if (*res == VCK_MEM_OK)
        *res = r;
}

/*
 * The piece the header's rule gives at region offset @off with @left bytes to go: the largest
 * power of two that fits @left and max_access and, for a region that wants aligned offsets,
 * divides @off.
 */
static unsigned model_piece(const struct vck_mr_ops *o, uint64_t off, uint64_t left)
{
    unsigned max = o->max_access ? o->max_access : 8;
    unsigned size = 8;
    while (size > left || size > max || (!o->unaligned && off % size != 0))
        size /= 2;
    return size;
}

/* Where a piece goes once widened to min_access: the callback's offset, width and byte shift. */
static void model_widen(const struct vck_mr_ops *o, uint64_t off, unsigned size, uint64_t *at,
                        unsigned *width, unsigned *shift)
{
    unsigned min = o->min_access ? o->min_access : 1;
    *at = off;
    *width = size;
    *shift = 0;
    if (size < min) {
        *width = min;
        if (!o->unaligned) {
            *at = off - off % min;
            *shift = (unsigned)(off - *at);
        }
    }
}

static void model_mmio(struct model *m, const struct device *dev, uint64_t off, uint8_t *buf,
                       uint64_t len, bool write, enum vck_mem_result *res)
{
    struct dev_state *st = &m->dev[dev->id];
    while (len) {
        unsigned size = model_piece(&dev->ops, off, len), width, shift;
        uint64_t at;
        model_widen(&dev->ops, off, size, &at, &width, &shift);
        if (!write) {
            uint64_t v = 0;
            enum vck_mem_result r = VCK_MEM_DEVICE_ERROR;
            if (dev->ops.read) {
                r = dev_state_read(st, at, width, &v);
                if (r != VCK_MEM_OK)
                    v = 0;
                call_log_push(&m->log, &(struct call){.dev = dev->id,
                                                      .write = false,
                                                      .size = width,
                                                      .offset = at,
                                                      .value = v,
                                                      .result = r});
            }
            if (r != VCK_MEM_OK)
                first_error(res, r);
            for (unsigned i = 0; i < size; i++)
                buf[i] = (uint8_t)(v >> (8 * (shift + i)));
        } else {
            uint64_t v = 0;
            for (unsigned i = 0; i < size; i++)
                v |= (uint64_t)buf[i] << (8 * (shift + i));
            enum vck_mem_result r = VCK_MEM_DEVICE_ERROR;
            if (dev->ops.write) {
                r = dev_state_write(st, at, width, v);
                call_log_push(&m->log, &(struct call){.dev = dev->id,
                                                      .write = true,
                                                      .size = width,
                                                      .offset = at,
                                                      .value = v,
                                                      .result = r});
            }
            if (r != VCK_MEM_OK)
                first_error(res, r);
        }
        off += size;
        buf += size;
        len -= size;
    }
}

/* The range holding @addr (NULL if none); *@next: where the next range starts (2^64 if none). */
static const struct vck_flat_range *model_range(const struct model *m, uint64_t addr, u128 *next)
{
    size_t lo = 0, hi = m->n; /* first range starting after addr */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->ranges[mid].start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    *next = lo < m->n ? m->ranges[lo].start : (u128)1 << 64;
    if (lo > 0 && m->ranges[lo - 1].last >= addr)
        return &m->ranges[lo - 1];
    return NULL;
}

static enum vck_mem_result model_access(struct model *m, uint64_t addr, uint8_t *buf, uint64_t len,
                                        bool write)
{
    enum vck_mem_result res = VCK_MEM_OK;
    u128 pos = addr;
    uint64_t done = 0;
    while (done < len) {
        if (pos >> 64) { /* past 2^64 - 1 */
            if (!write)
                memset(buf + done, 0, len - done);
            first_error(&res, VCK_MEM_DECODE_ERROR);
            break;
        }
        uint64_t a = (uint64_t)pos, left = len - done, l;
        u128 next;
        const struct vck_flat_range *r = model_range(m, a, &next);
        if (!r) {
            l = next - a < left ? (uint64_t)(next - a) : left;
            if (!write)
                memset(buf + done, 0, l);
            first_error(&res, VCK_MEM_DECODE_ERROR);
        } else {
            u128 room = (u128)r->last - a + 1;
            l = room < left ? (uint64_t)room : left;
            const struct leaf *leaf = world_leaf(m->w, r->mr);
            uint64_t off = r->offset + (a - r->start);
            if (write && r->readonly) {
                first_error(&res, VCK_MEM_DECODE_ERROR);
            } else if (leaf->kind == VCK_MR_RAM) {
                uint8_t *mem = m->ram[leaf->ram->id] + leaf->buf_offset + off;
                if (write) {
                    memcpy(mem, buf + done, l);
                    hook_log_push(&m->hooks, a, l);
                } else {
                    memcpy(buf + done, mem, l);
                }
            } else {
                model_mmio(m, leaf->dev, off, buf + done, l, write, &res);
            }
        }
        done += l;
        pos += l;
    }
    return res;
}

/* ---- a run: one layout, accesses through several dispatches, a few changes ----------------- */

struct config {
    unsigned page_bits, level_bits;
    bool no_compress;
};

static const struct config configs[] = {
    {0, 0, false},
    {4, 3, false},
    {1, 2, true},
    {6, 4, false},
};
#define N_CONFIGS ((int)(sizeof(configs) / sizeof(configs[0])))

enum op_kind { OP_READ, OP_WRITE, OP_LOAD, OP_STORE };
static const char *const op_names[] = {"read", "write", "load", "store"};

struct run {
    uint64_t seed;
    long run;
    int op;
    const char *what;
    struct world *w;
    struct model m;
    uint64_t rng, base, window;
    long accesses, calls, hooks, errors;
};

static void layout_format(char *buf, size_t cap, const struct run *rs)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < rs->m.n && used + 1 < cap; i++) {
        const struct vck_flat_range *r = &rs->m.ranges[i];
        const struct leaf *l = world_leaf(rs->w, r->mr);
        used += (size_t)snprintf(buf + used, cap - used,
                                 "\n    [%#" PRIx64 ", %#" PRIx64 "] %s +%#" PRIx64 "%s", r->start,
                                 r->last, vck_mr_name(r->mr), r->offset, r->readonly ? " ro" : "");
        if (l->kind == VCK_MR_MMIO && used + 1 < cap) {
            const struct device *d = l->dev;
            used += (size_t)snprintf(
                buf + used, cap - used, " dev%d min %u max %u%s%s%s fail_every %u", d->id,
                d->ops.min_access, d->ops.max_access, d->ops.unaligned ? " unaligned" : "",
                d->ops.read ? "" : " no-read", d->ops.write ? "" : " no-write", d->st.fail_every);
        } else if (used + 1 < cap) {
            used += (size_t)snprintf(buf + used, cap - used, " ram buf%d+%#" PRIx64, l->ram->id,
                                     l->buf_offset);
        }
    }
    if (rs->m.n == 0)
        snprintf(buf, cap, " (no ranges)");
}

static void run_fail(const struct run *rs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void run_fail(const struct run *rs, const char *fmt, ...)
{
    static char what[8192], layout[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    layout_format(layout, sizeof(layout), rs);
    cr_assert_fail("seed %" PRIu64 " run %ld (VCK_SEED=%" PRIu64 " VCK_RUN=%ld) op %d, after %s: "
                   "%s\n  view:%s",
                   rs->seed, rs->run, rs->seed, rs->run, rs->op, rs->what, what, layout);
}

static void compare_logs(const struct run *rs, const char *op)
{
    const struct call_log *got = &rs->w->log, *want = &rs->m.log;
    bool same = got->n == want->n;
    for (size_t i = 0; same && i < got->n; i++) {
        const struct call *a = &got->v[i], *b = &want->v[i];
        same = a->dev == b->dev && a->write == b->write && a->size == b->size &&
               a->offset == b->offset && a->value == b->value && a->result == b->result;
    }
    if (!same) {
        static char g[4096], x[4096];
        call_log_format(g, sizeof(g), got, 0);
        call_log_format(x, sizeof(x), want, 0);
        run_fail(rs, "%s: device calls differ\n    got:%s\n    want:%s", op, g, x);
    }
    const struct hook_log *hg = &rs->w->hooks, *hw = &rs->m.hooks;
    same = hg->n == hw->n;
    for (size_t i = 0; same && i < hg->n; i++)
        same = hg->v[i].addr == hw->v[i].addr && hg->v[i].len == hw->v[i].len;
    if (!same) {
        static char g[2048], x[2048];
        hook_log_format(g, sizeof(g), hg, 0);
        hook_log_format(x, sizeof(x), hw, 0);
        run_fail(rs, "%s: RAM write hook calls differ\n    got: %s\n    want:%s", op, g, x);
    }
}

static void compare_state(const struct run *rs)
{
    const struct world *w = rs->w;
    for (int i = w->first_ram; i < w->n_rams; i++)
        for (uint64_t b = 0; b < w->rams[i]->size; b++)
            if (w->rams[i]->buf[b] != rs->m.ram[i][b])
                run_fail(rs, "RAM buf%d byte %#" PRIx64 " is %#x, model %#x", i, b,
                         w->rams[i]->buf[b], rs->m.ram[i][b]);
    for (int i = w->first_dev; i < w->n_devs; i++)
        for (uint64_t b = 0; b < w->devs[i]->st.n_regs; b++)
            if (w->devs[i]->st.regs[b] != rs->m.dev[i].regs[b])
                run_fail(rs, "dev%d register byte %#" PRIx64 " is %#x, model %#x", i, b,
                         w->devs[i]->st.regs[b], rs->m.dev[i].regs[b]);
}

static void bytes_format(char *buf, size_t cap, const uint8_t *p, uint64_t n)
{
    size_t used = 0;
    buf[0] = 0;
    for (uint64_t i = 0; i < n && used + 1 < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%02x", i % 8 || !i ? "" : " ", p[i]);
}

static uint64_t pick_addr(struct run *rs)
{
    uint64_t *rng = &rs->rng;
    unsigned k = (unsigned)rnd(rng, 100);
    if (k < 45 && rs->m.n) {
        const struct vck_flat_range *r = &rs->m.ranges[rnd(rng, rs->m.n)];
        uint64_t edge = chance(rng, 50) ? r->start : r->last + 1;
        return edge - rnd(rng, 12) + rnd(rng, 12);
    }
    if (k < 90)
        return rs->base - 32 + rnd(rng, rs->window + 64);
    return (uint64_t)0 - 1 - rnd(rng, 80); /* the top of the space, whatever is there */
}

static const struct vck_dispatch *pick_dispatch(struct run *rs, int *which)
{
    *which = (int)rnd(&rs->rng, (uint64_t)rs->w->n_d);
    return rs->w->d[*which];
}

static void one_access(struct run *rs)
{
    uint64_t *rng = &rs->rng;
    enum op_kind kind = (enum op_kind)rnd(rng, 4);
    uint64_t addr = pick_addr(rs);
    static const unsigned sizes[] = {1, 2, 4, 8};
    uint64_t len = kind == OP_LOAD || kind == OP_STORE ? sizes[rnd(rng, 4)] : 1 + rnd(rng, 64);
    int di;
    const struct vck_dispatch *d = pick_dispatch(rs, &di);
    uint8_t got[64], want[64], data[64];
    for (uint64_t i = 0; i < len; i++)
        data[i] = (uint8_t)vck_rand(rng);
    char op[160];
    snprintf(op, sizeof(op), "%s(%#" PRIx64 ", %" PRIu64 ") via dispatch %d", op_names[kind], addr,
             len, di);

    rs->w->log.n = 0;
    rs->w->hooks.n = 0;
    rs->m.log.n = 0;
    rs->m.hooks.n = 0;
    enum vck_mem_result r = VCK_MEM_OK;
    uint64_t value = 0x6666666666666666ULL;
    memset(got, 0xcc, sizeof(got));
    memset(want, 0x33, sizeof(want));
    switch (kind) {
    case OP_READ:
        r = vck_dispatch_read(d, addr, got, len);
        break;
    case OP_WRITE:
        r = vck_dispatch_write(d, addr, data, len);
        break;
    case OP_LOAD:
        r = vck_dispatch_load(d, addr, (unsigned)len, &value);
        break;
    case OP_STORE:
        memcpy(&value, data, 8);
        r = vck_dispatch_store(d, addr, (unsigned)len, value);
        break;
    }
    bool write = kind == OP_WRITE || kind == OP_STORE;
    if (write)
        memcpy(want, data, len);
    enum vck_mem_result mr = model_access(&rs->m, addr, want, len, write);

    if (r != mr)
        run_fail(rs, "%s returned %d, model %d", op, r, mr);
    if (kind == OP_READ && memcmp(got, want, len) != 0) {
        char g[256], x[256];
        bytes_format(g, sizeof(g), got, len);
        bytes_format(x, sizeof(x), want, len);
        run_fail(rs, "%s read\n    got  %s\n    want %s", op, g, x);
    }
    if (kind == OP_LOAD) {
        uint64_t v = 0;
        for (uint64_t i = 0; i < len; i++)
            v |= (uint64_t)want[i] << (8 * i);
        if (value != v)
            run_fail(rs, "%s loaded %#" PRIx64 ", model %#" PRIx64, op, value, v);
    }
    compare_logs(rs, op);
    rs->accesses++;
    rs->calls += (long)rs->w->log.n;
    rs->hooks += (long)rs->w->hooks.n;
    rs->errors += r != VCK_MEM_OK;
}

static struct vck_mr *random_mapped(struct world *w, uint64_t *rng)
{
    for (int tries = 0; tries < 16 && w->n_mrs > 1; tries++) {
        struct vck_mr *mr = w->mrs[1 + rnd(rng, (uint64_t)w->n_mrs - 1)];
        if (vck_mr_container(mr))
            return mr;
    }
    return NULL;
}

static const char *mutate(struct run *rs)
{
    uint64_t *rng = &rs->rng;
    struct vck_mr *mr = random_mapped(rs->w, rng);
    if (!mr)
        return "nothing";
    switch (rnd(rng, 5)) {
    case 0:
        if (vck_mr_container(mr) == rs->w->root)
            vck_mr_set_address(mr, rs->base + rnd(rng, rs->window));
        else
            vck_mr_set_address(mr, rnd(rng, 64));
        return "set_address";
    case 1:
        vck_mr_set_readonly(mr, !vck_mr_readonly(mr));
        return "set_readonly";
    case 2:
        vck_mr_set_priority(mr, (int)rnd(rng, 6) - 2);
        return "set_priority";
    case 3:
        vck_mr_set_enabled(mr, !vck_mr_enabled(mr));
        return "set_enabled";
    default:
        if (vck_mr_kind(mr) == VCK_MR_RAM || vck_mr_kind(mr) == VCK_MR_MMIO) {
            vck_mr_set_size(mr, rnd(rng, vck_mr_size(mr) + 1)); /* shrink, maybe to nothing */
            return "set_size";
        }
        return "nothing";
    }
}

static void access_run(struct world *w, uint64_t seed, long run, struct run *sum)
{
    struct run rs = {.seed = seed, .run = run, .w = w, .what = "the initial build"};
    rs.rng = run_seed(seed, run);
    uint64_t *rng = &rs.rng;
    rs.window = 64 + rnd(rng, chance(rng, 50) ? 512 : 4096);
    unsigned where = (unsigned)rnd(rng, 10);
    if (where < 2)
        rs.base = 0;
    else if (where < 4)
        rs.base = (uint64_t)0 - rs.window; /* accesses run past 2^64 - 1 */
    else
        rs.base = vck_rand(rng) >> 1 & ~(uint64_t)0xff;
    int leaves = 2 + (int)rnd(rng, chance(rng, 50) ? 12 : 40);
    world_gen_dense(w, rng, rs.base, rs.window, leaves);
    model_init(&rs.m, w);

    int batches = 1 + (int)rnd(rng, 4);
    for (int b = 0; b < batches; b++) {
        int n = 20 + (int)rnd(rng, 200);
        for (int i = 0; i < n; i++, rs.op++)
            one_access(&rs);
        compare_state(&rs);
        rs.what = mutate(&rs);
        model_refresh_view(&rs.m);
    }
    sum->accesses += rs.accesses;
    sum->calls += rs.calls;
    sum->hooks += rs.hooks;
    sum->errors += rs.errors;
    model_free(&rs.m);
    world_reset(w);
}

static void world_add_configs(struct world *w)
{
    struct vck_as *as = world_as(w);
    for (int i = 0; i < N_CONFIGS; i++) {
        struct vck_dispatch_options o = {
            .page_bits = configs[i].page_bits,
            .level_bits = configs[i].level_bits,
            .no_compress = configs[i].no_compress,
        };
        world_dispatch(w, as, &o);
    }
}

enum { RUNS = 10000 };

Test(dispatch_access, reads_and_writes_match_the_reference_model)
{
    uint64_t seed = test_seed("dispatch.access", 1);
    long only = test_only_run(), runs = (long)(RUNS * test_scale());
    double t0 = vck_now();
    struct world w;
    world_init(&w);
    world_add_configs(&w);
    struct run sum = {0};
    for (long run = 0; run < runs; run++)
        if (only < 0 || run == only)
            access_run(&w, seed, run, &sum);
    world_free(&w);
    fprintf(stderr,
            "dispatch.access: %ld runs, %ld accesses (%ld with an error), %ld device calls, "
            "%ld RAM write hook calls, %.1f s\n",
            only < 0 ? runs : 1, sum.accesses, sum.errors, sum.calls, sum.hooks, vck_now() - t0);
    cr_expect(only >= 0 || (sum.calls > 100000 && sum.hooks > 10000 && sum.errors > 10000),
              "the random layouts exercised too little");
}

/* ---- hand-written cases (independent of the model above) ----------------------------------- */

static struct vck_dispatch *small_world(struct world *w)
{
    world_init(w);
    return world_dispatch(w, world_as(w), NULL);
}

/* Expect the calls since the last clear to be exactly @want (n of them). */
static void expect_calls(const struct world *w, const struct call *want, size_t n, const char *what)
{
    char got[4096];
    call_log_format(got, sizeof(got), &w->log, 0);
    cr_assert_eq(w->log.n, n, "%s: %zu device calls, want %zu:%s", what, w->log.n, n, got);
    for (size_t i = 0; i < n; i++) {
        const struct call *a = &w->log.v[i], *b = &want[i];
        cr_assert(a->write == b->write && a->offset == b->offset && a->size == b->size &&
                      (!b->write || a->value == b->value),
                  "%s: call %zu differs:%s", what, i, got);
    }
}

static uint64_t le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

Test(dispatch_access, pieces_follow_the_header_rules)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr_ops o4 = world_any_ops, o8 = world_any_ops, un = world_any_ops,
                      o2u = world_any_ops, m2 = world_any_ops;
    o4.min_access = o4.max_access = 4;   /* 32-bit registers, aligned */
    o8.min_access = 8;                   /* 64-bit only */
    un.unaligned = true;                 /* bytes to quadwords, any offset */
    o2u.min_access = o2u.max_access = 2; /* 16-bit, unaligned offsets allowed */
    o2u.unaligned = true;
    m2.max_access = 2;
    struct vck_mr *r4 = world_mmio(&w, 0x100, &o4, 0, 1), *r8 = world_mmio(&w, 0x100, &o8, 0, 2),
                  *ru = world_mmio(&w, 0x100, &un, 0, 3), *r2 = world_mmio(&w, 0x100, &o2u, 0, 4),
                  *rm = world_mmio(&w, 0x100, &m2, 0, 5);
    vck_memmap_begin(w.mm);
    vck_mr_add_subregion(w.root, 0x1000, r4, 0);
    vck_mr_add_subregion(w.root, 0x2000, r8, 0);
    vck_mr_add_subregion(w.root, 0x3000, ru, 0);
    vck_mr_add_subregion(w.root, 0x4000, r2, 0);
    vck_mr_add_subregion(w.root, 0x5000, rm, 0);
    vck_memmap_commit(w.mm);
    const struct device *d4 = w.devs[0], *d8 = w.devs[1], *du = w.devs[2];
    uint8_t buf[16];

    /* 3 bytes at offset 1 of a 32-bit aligned device: a byte, then two, each widened to 0..3. */
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, 0x1001, buf, 3), VCK_MEM_OK);
    expect_calls(&w, (struct call[]){{.offset = 0, .size = 4}, {.offset = 0, .size = 4}}, 2,
                 "read 3 at +1, min=max=4");
    cr_assert_eq(buf[0], d4->st.regs[1]);
    cr_assert_eq(buf[1], d4->st.regs[2]);
    cr_assert_eq(buf[2], d4->st.regs[3]);

    /* A byte written into a 64-bit-only device: in place, other bytes zero. */
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_store(d, 0x2005, 1, 0xab), VCK_MEM_OK);
    expect_calls(&w,
                 (struct call[]){{.write = true, .offset = 0, .size = 8, .value = 0xabULL << 40}},
                 1, "store 1 at +5, min 8");

    /* 7 bytes at offset 3, unaligned allowed: 4, 2, 1 at 3, 7, 9. */
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, 0x3003, buf, 7), VCK_MEM_OK);
    expect_calls(&w,
                 (struct call[]){
                     {.offset = 3, .size = 4}, {.offset = 7, .size = 2}, {.offset = 9, .size = 1}},
                 3, "read 7 at +3, unaligned");
    cr_assert_arr_eq(buf, du->st.regs + 3, 7);

    /* Aligned, 64-bit only: pieces of 1 at 3, 4 at 4 and 2 at 8, each widened to 8 aligned. */
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, 0x2003, buf, 7), VCK_MEM_OK);
    expect_calls(&w,
                 (struct call[]){
                     {.offset = 0, .size = 8}, {.offset = 0, .size = 8}, {.offset = 8, .size = 8}},
                 3, "read 7 at +3, min 8 aligned");
    cr_assert_eq(buf[0], d8->st.regs[3]);
    cr_assert_arr_eq(buf + 1, d8->st.regs + 4, 4);
    cr_assert_arr_eq(buf + 5, d8->st.regs + 8, 2);

    /* 16-bit unaligned: 3 bytes at 1 are a pair at 1 and a byte widened in place at 3. */
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_write(d, 0x4001, (uint8_t[]){0x11, 0x22, 0x33}, 3), VCK_MEM_OK);
    expect_calls(&w,
                 (struct call[]){{.write = true, .offset = 1, .size = 2, .value = 0x2211},
                                 {.write = true, .offset = 3, .size = 2, .value = 0x33}},
                 2, "write 3 at +1, min=max=2 unaligned");

    /* max 2: a quadword is four halfwords. */
    w.log.n = 0;
    uint64_t v;
    cr_assert_eq(vck_dispatch_load(d, 0x5008, 8, &v), VCK_MEM_OK);
    expect_calls(&w,
                 (struct call[]){{.offset = 8, .size = 2},
                                 {.offset = 10, .size = 2},
                                 {.offset = 12, .size = 2},
                                 {.offset = 14, .size = 2}},
                 4, "load 8, max 2");
    cr_assert_eq(v, le(w.devs[4]->st.regs + 8, 8));
    world_free(&w);
}

Test(dispatch_access, errors_zero_bytes_and_the_first_one_is_reported)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *bad = world_mmio(&w, 0x10, &world_any_ops, 1, 9); /* fails every access */
    struct vck_mr_ops noread = world_any_ops;
    noread.read = NULL;
    struct vck_mr *wo = world_mmio(&w, 0x10, &noread, 0, 10);
    struct vck_mr *ram = world_ram(&w, 0x10), *rom = world_ram(&w, 0x10);
    vck_mr_set_readonly(rom, true);
    vck_memmap_begin(w.mm);
    vck_mr_add_subregion(w.root, 0x100, bad, 0); /* [0x100, 0x110) device error */
    vck_mr_add_subregion(w.root, 0x120, ram, 0); /* [0x110, 0x120) unassigned, then RAM */
    vck_mr_add_subregion(w.root, 0x130, rom, 0); /* [0x130, 0x140) read-only */
    vck_mr_add_subregion(w.root, 0x140, wo, 0);  /* [0x140, 0x150) write-only device */
    vck_memmap_commit(w.mm);
    uint8_t *hram = vck_mr_host(ram), *hrom = vck_mr_host(rom);
    uint8_t buf[0x50];

    memset(buf, 0xee, sizeof(buf));
    cr_assert_eq(vck_dispatch_read(d, 0x100, buf, 0x30), VCK_MEM_DEVICE_ERROR,
                 "device error first, then unassigned: the device error is reported");
    for (int i = 0; i < 0x20; i++)
        cr_assert_eq(buf[i], 0, "byte %#x of a failed read is %#x", i, buf[i]);
    cr_assert_arr_eq(buf + 0x20, hram, 0x10, "the rest of the access is still performed");

    memset(buf, 0xee, sizeof(buf));
    cr_assert_eq(vck_dispatch_read(d, 0x110, buf, 0x40), VCK_MEM_DECODE_ERROR,
                 "unassigned first, then a failing device: the decode error is reported");
    cr_assert_arr_eq(buf + 0x10, hram, 0x10);
    cr_assert_arr_eq(buf + 0x20, hrom, 0x10);
    for (int i = 0x30; i < 0x40; i++)
        cr_assert_eq(buf[i], 0, "a device without a read callback left byte %#x", i);

    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, 0x140, buf, 4), VCK_MEM_DEVICE_ERROR);
    cr_assert_eq(w.log.n, 0);

    /* Writes: read-only first, then a working device; then RAM and the read-only range. */
    uint8_t data[0x40], before[0x10];
    memset(data, 0x42, sizeof(data));
    memcpy(before, hrom, 0x10);
    w.log.n = 0;
    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_write(d, 0x130, data, 0x20), VCK_MEM_DECODE_ERROR);
    cr_assert_arr_eq(hrom, before, 0x10, "a write to read-only RAM changed it");
    cr_assert_eq(w.hooks.n, 0, "the hook ran for read-only RAM");
    cr_assert_gt(w.log.n, 0, "the rest of the write was not performed");
    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_write(d, 0x118, data, 0x20), VCK_MEM_DECODE_ERROR);
    cr_assert_arr_eq(hram, data, 0x10);
    cr_assert_eq(w.hooks.n, 1);
    cr_assert(w.hooks.v[0].addr == 0x120 && w.hooks.v[0].len == 0x10,
              "the hook must name exactly the RAM bytes written");
    world_free(&w);
}

Test(dispatch_access, accesses_past_2_64_read_zeros_and_report_decode_error)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *top = world_ram(&w, 0x10);
    vck_mr_add_subregion(w.root, (uint64_t)0 - 0x10, top, 0);
    uint8_t *h = vck_mr_host(top);
    uint8_t buf[0x20], data[0x20];
    for (int i = 0; i < 0x20; i++)
        data[i] = (uint8_t)(0xa0 + i);

    memset(buf, 0xee, sizeof(buf));
    cr_assert_eq(vck_dispatch_read(d, (uint64_t)0 - 0x10, buf, 0x20), VCK_MEM_DECODE_ERROR);
    cr_assert_arr_eq(buf, h, 0x10);
    for (int i = 0x10; i < 0x20; i++)
        cr_assert_eq(buf[i], 0, "byte %#x past 2^64 is %#x", i, buf[i]);
    memset(buf, 0xee, sizeof(buf));
    cr_assert_eq(vck_dispatch_read(d, UINT64_MAX, buf, 8), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(buf[0], h[0xf]);
    for (int i = 1; i < 8; i++)
        cr_assert_eq(buf[i], 0);

    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_write(d, (uint64_t)0 - 8, data, 0x20), VCK_MEM_DECODE_ERROR);
    cr_assert_arr_eq(h + 8, data, 8);
    cr_assert(w.hooks.n == 1 && w.hooks.v[0].addr == (uint64_t)0 - 8 && w.hooks.v[0].len == 8);

    uint64_t v = 0x1234;
    cr_assert_eq(vck_dispatch_load(d, UINT64_MAX - 3, 8, &v), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(v, le(h + 0xc, 4), "load across 2^64: %#" PRIx64, v);
    cr_assert_eq(vck_dispatch_store(d, UINT64_MAX - 1, 4, 0x44332211), VCK_MEM_DECODE_ERROR);
    cr_assert(h[0xe] == 0x11 && h[0xf] == 0x22);

    /* Nothing at the top: all zeros. */
    vck_mr_del_subregion(w.root, top);
    memset(buf, 0xee, sizeof(buf));
    cr_assert_eq(vck_dispatch_read(d, (uint64_t)0 - 4, buf, 0x20), VCK_MEM_DECODE_ERROR);
    for (int i = 0; i < 0x20; i++)
        cr_assert_eq(buf[i], 0);
    cr_assert_eq(vck_dispatch_load(d, UINT64_MAX, 2, &v), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(v, 0);

    /* A device at the top: called for its bytes only. */
    struct vck_mr *dev = world_mmio(&w, 8, &world_any_ops, 0, 11);
    vck_mr_add_subregion(w.root, (uint64_t)0 - 8, dev, 0);
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, (uint64_t)0 - 8, buf, 16), VCK_MEM_DECODE_ERROR);
    expect_calls(&w, (struct call[]){{.offset = 0, .size = 8}}, 1, "read 16 over the top");
    cr_assert_arr_eq(buf, w.devs[0]->st.regs, 8);
    world_free(&w);
}

Test(dispatch_access, zero_size_regions_are_not_there)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    vck_mr_add_subregion(w.root, 0x1000, world_ram(&w, 0), 1);
    vck_mr_add_subregion(w.root, 0x1000, world_mmio(&w, 0, &world_any_ops, 0, 12), 2);
    struct vck_mr *ram = world_ram(&w, 0x100);
    vck_mr_add_subregion(w.root, 0x2000, ram, 0);
    vck_mr_add_subregion(w.root, 0x2080, world_mmio(&w, 0, &world_any_ops, 0, 13), 5);
    uint8_t buf[8];
    w.log.n = 0;
    cr_assert_eq(vck_dispatch_read(d, 0x1000, buf, 8), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(vck_dispatch_write(d, 0x1000, buf, 8), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(vck_dispatch_read(d, 0x207c, buf, 8), VCK_MEM_OK);
    cr_assert_arr_eq(buf, (uint8_t *)vck_mr_host(ram) + 0x7c, 8);
    cr_assert_eq(w.log.n, 0, "a zero-size device was called");
    world_free(&w);
}

Test(dispatch_access, the_write_hook_names_each_ram_range_written)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *a, *b;
    world_ram_pair(&w, 0x10, 0x10, &a, &b);
    struct vck_mr *dev = world_mmio(&w, 0x10, &world_any_ops, 0, 14);
    vck_memmap_begin(w.mm);
    vck_mr_add_subregion(w.root, 0x100, a, 0);
    vck_mr_add_subregion(w.root, 0x110, b, 0);
    vck_mr_add_subregion(w.root, 0x120, dev, 0);
    vck_mr_add_subregion(w.root, 0x130, world_alias(&w, a, 4, 8), 0);
    vck_memmap_commit(w.mm);
    uint8_t data[0x40] = {0};
    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_write(d, 0x108, data, 0x30), VCK_MEM_OK);
    struct hook_call want[] = {{0x108, 8}, {0x110, 0x10}, {0x130, 8}};
    char got[512];
    hook_log_format(got, sizeof(got), &w.hooks, 0);
    cr_assert_eq(w.hooks.n, 3, "hook calls:%s", got);
    for (int i = 0; i < 3; i++)
        cr_assert(w.hooks.v[i].addr == want[i].addr && w.hooks.v[i].len == want[i].len,
                  "hook calls:%s", got);
    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_store(d, 0x10e, 4, 0), VCK_MEM_OK);
    cr_assert(w.hooks.n == 2 && w.hooks.v[0].addr == 0x10e && w.hooks.v[0].len == 2 &&
              w.hooks.v[1].addr == 0x110 && w.hooks.v[1].len == 2);
    w.hooks.n = 0;
    cr_assert_eq(vck_dispatch_store(d, 0x124, 8, 0), VCK_MEM_OK);
    cr_assert_eq(w.hooks.n, 0, "the hook ran for an MMIO write");
    world_free(&w);
}
