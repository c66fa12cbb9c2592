/*
 * The memory-region cache (vck_mrc_*): that it answers exactly as vck_dispatch_read/write do,
 * that it is direct (c.host set, a memcpy) exactly when the header says (the whole range RAM,
 * host-contiguous across adjacent RAM ranges, writable when initialised for writing), that the
 * RAM write hook fires on direct writes, and that it stays safe and keeps answering as its own
 * view did after the memory map changes: the regions it reaches are kept alive until it is
 * destroyed (ASan proves no use after free; the release callbacks prove the order), and a device
 * that re-initialises its cache from a listener's commit callback sees the new layout.
 *
 * The random test builds the same layout twice, in two memory maps, from one seed: world A is
 * accessed through caches, world B through plain dispatch reads and writes, and the results,
 * bytes, device callbacks, write hook calls and final memory of the two must be identical. Then
 * A's layout is changed under its caches while B's is not: A's caches must go on answering
 * as B does.
 *
 * VCK_SEED=<n> replays a seed, VCK_RUN=<i> only its run i, VCK_SCALE=<x> scales the runs.
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

TestSuite(dispatch_cache, .init = suite_init, .fini = suite_fini, .timeout = 300);

typedef unsigned __int128 u128;

/*
 * What the header says c->host must be for [addr, addr + len) in @as's current view: the host
 * address of addr when every byte is RAM (writable if @is_write) and each range's host memory
 * continues the previous one's; NULL otherwise.
 */
static uint8_t *expected_host(const struct vck_as *as, uint64_t addr, uint64_t len, bool is_write)
{
    uint8_t *first = NULL, *next = NULL;
    u128 a = addr, end = (u128)addr + len;
    vck_rcu_read_lock();
    const struct vck_flatview *view = vck_as_view(as);
    while (a < end) {
        const struct vck_flat_range *r = vck_flatview_find(view, (uint64_t)a);
        if (!r || vck_mr_kind(r->mr) != VCK_MR_RAM || (is_write && r->readonly)) {
            first = NULL;
            break;
        }
        uint8_t *host = (uint8_t *)vck_mr_host(r->mr) + r->offset + ((uint64_t)a - r->start);
        if (!first)
            first = host;
        else if (host != next) {
            first = NULL;
            break;
        }
        next = host + (r->last - (uint64_t)a + 1);
        a = (u128)r->last + 1;
    }
    vck_rcu_read_unlock();
    return first;
}

/* ---- random: caches on world A against plain dispatch on world B ------------------------- */

enum { CACHES = 6 };

struct pair {
    uint64_t seed;
    long run;
    int op;
    const char *phase;
    struct world a, b;
    struct vck_dispatch *da, *db;
    uint64_t rng, base, window;
    struct vck_mrc c[CACHES];
    long ops, direct, slow, calls;
};

static void pair_fail(const struct pair *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void pair_fail(const struct pair *p, const char *fmt, ...)
{
    static char what[8192], layout[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    struct vck_flat_range *r;
    size_t n = world_snapshot(p->b.as[0], &r);
    ranges_format(layout, sizeof(layout), r, n);
    free(r);
    cr_assert_fail("seed %" PRIu64 " run %ld (VCK_SEED=%" PRIu64 " VCK_RUN=%ld) op %d (%s): %s\n"
                   "  view of the cache (world B):%s",
                   p->seed, p->run, p->seed, p->run, p->op, p->phase, what, layout);
}

static void merge_touching(struct hook_log *l)
{
    size_t out = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (out && l->v[out - 1].addr + l->v[out - 1].len == l->v[i].addr)
            l->v[out - 1].len += l->v[i].len;
        else
            l->v[out++] = l->v[i];
    }
    l->n = out;
}

static void compare_logs(struct pair *p, const char *op)
{
    const struct call_log *la = &p->a.log, *lb = &p->b.log;
    bool same = la->n == lb->n;
    for (size_t i = 0; same && i < la->n; i++) {
        const struct call *x = &la->v[i], *y = &lb->v[i];
        same = x->dev == y->dev && x->write == y->write && x->size == y->size &&
               x->offset == y->offset && x->value == y->value && x->result == y->result;
    }
    if (!same) {
        static char ga[4096], gb[4096];
        call_log_format(ga, sizeof(ga), la, 0);
        call_log_format(gb, sizeof(gb), lb, 0);
        pair_fail(p, "%s: device calls differ\n    cache:%s\n    dispatch:%s", op, ga, gb);
    }
    /*
     * A direct cache reports one write over adjacent RAM ranges where the dispatch reports one
     * per range: compare the bytes reported, in order, with touching calls merged.
     */
    struct hook_log *ha = &p->a.hooks, *hb = &p->b.hooks;
    merge_touching(ha);
    merge_touching(hb);
    same = ha->n == hb->n;
    for (size_t i = 0; same && i < ha->n; i++)
        same = ha->v[i].addr == hb->v[i].addr && ha->v[i].len == hb->v[i].len;
    if (!same) {
        static char ga[2048], gb[2048];
        hook_log_format(ga, sizeof(ga), ha, 0);
        hook_log_format(gb, sizeof(gb), hb, 0);
        pair_fail(p, "%s: RAM write hook calls differ\n    cache:   %s\n    dispatch:%s", op, ga,
                  gb);
    }
}

static void compare_state(const struct pair *p)
{
    for (int i = p->a.first_ram; i < p->a.n_rams; i++)
        if (memcmp(p->a.rams[i]->buf, p->b.rams[i]->buf, p->a.rams[i]->size) != 0)
            pair_fail(p, "RAM buffer %d differs between the worlds", i);
    for (int i = p->a.first_dev; i < p->a.n_devs; i++)
        if (memcmp(p->a.devs[i]->st.regs, p->b.devs[i]->st.regs, p->a.devs[i]->st.n_regs) != 0)
            pair_fail(p, "device %d's registers differ between the worlds", i);
}

static void cache_init_checked(struct pair *p, struct vck_mrc *c, uint64_t addr, uint64_t len,
                               bool is_write)
{
    uint8_t *want = expected_host(p->a.as[0], addr, len, is_write);
    memset(c, 0x5a, sizeof(*c));
    vck_mrc_init(c, p->da, addr, len, is_write);
    if (c->host != want)
        pair_fail(p, "vck_mrc_init(%#" PRIx64 ", %" PRIu64 ", %s): host %p, want %p", addr, len,
                  is_write ? "write" : "read", (void *)c->host, (void *)want);
    if (c->addr != addr || c->len != len || c->is_write != is_write)
        pair_fail(p,
                  "vck_mrc_init(%#" PRIx64 ", %" PRIu64 "): fields addr %#" PRIx64 " len %" PRIu64
                  " is_write %d",
                  addr, len, c->addr, c->len, c->is_write);
    if (want)
        p->direct++;
    else
        p->slow++;
}

static void cache_op(struct pair *p, const struct vck_mrc *c)
{
    uint64_t *rng = &p->rng;
    uint64_t off = rnd(rng, c->len);
    uint64_t n = 1 + rnd(rng, c->len - off < 64 ? c->len - off : 64);
    bool write = c->is_write && chance(rng, 50);
    uint8_t ga[64], gb[64], data[64];
    for (uint64_t i = 0; i < n; i++)
        data[i] = (uint8_t)vck_rand(rng);
    memset(ga, 0xcc, sizeof(ga));
    memset(gb, 0x33, sizeof(gb));
    char op[160];
    snprintf(op, sizeof(op),
             "%s cache [%#" PRIx64 " +%" PRIu64 "]%s at offset %" PRIu64 ", %" PRIu64 " bytes",
             write ? "write" : "read", c->addr, c->len, c->host ? " (direct)" : "", off, n);
    p->a.log.n = p->b.log.n = 0;
    p->a.hooks.n = p->b.hooks.n = 0;
    enum vck_mem_result ra, rb;
    if (write) {
        ra = vck_mrc_write(c, off, data, n);
        rb = vck_dispatch_write(p->db, c->addr + off, data, n);
    } else {
        ra = vck_mrc_read(c, off, ga, n);
        rb = vck_dispatch_read(p->db, c->addr + off, gb, n);
    }
    if (ra != rb)
        pair_fail(p, "%s: cache result %d, dispatch %d", op, ra, rb);
    if (!write && memcmp(ga, gb, n) != 0)
        pair_fail(p, "%s: the cache read other bytes than the dispatch", op);
    compare_logs(p, op);
    p->ops++;
    p->calls += (long)p->a.log.n;
}

/* A cache's start: often a range's start (so RAM caches are common), else anywhere near. */
static uint64_t pick_start(struct pair *p, const struct vck_flat_range *r, size_t n)
{
    uint64_t *rng = &p->rng;
    unsigned k = (unsigned)rnd(rng, 100);
    if (k < 50 && n)
        return r[rnd(rng, n)].start + (chance(rng, 50) ? 0 : rnd(rng, 8));
    if (k < 70 && n)
        return r[rnd(rng, n)].start - 1 - rnd(rng, 8);
    return p->base - 16 + rnd(rng, p->window + 32);
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

/* A change to world A only: its caches must not notice. */
static void mutate_a(struct pair *p)
{
    uint64_t *rng = &p->rng;
    struct vck_mr *mr = random_mapped(&p->a, rng);
    if (!mr)
        return;
    switch (rnd(rng, 4)) {
    case 0:
        vck_mr_set_address(mr, vck_mr_address(mr) + 1 + rnd(rng, 64));
        break;
    case 1:
        vck_mr_set_readonly(mr, !vck_mr_readonly(mr));
        break;
    case 2:
        vck_mr_set_enabled(mr, !vck_mr_enabled(mr));
        break;
    default:
        vck_mr_del_subregion(vck_mr_container(mr), mr);
        break;
    }
}

static void pair_run(struct pair *p, long run)
{
    p->run = run;
    p->op = 0;
    p->phase = "the initial layout";
    uint64_t rl = run_seed(p->seed, run);
    p->window = 64 + rnd(&rl, chance(&rl, 50) ? 512 : 2048);
    unsigned where = (unsigned)rnd(&rl, 10);
    if (where < 2)
        p->base = 0;
    else if (where < 4)
        p->base = (uint64_t)0 - p->window;
    else
        p->base = vck_rand(&rl) >> 1 & ~(uint64_t)0xff;
    int leaves = 2 + (int)rnd(&rl, 30);
    p->rng = vck_rand(&rl);
    uint64_t ga = rl, gb = rl; /* the same choices in both worlds */
    world_gen_dense(&p->a, &ga, p->base, p->window, leaves);
    world_gen_dense(&p->b, &gb, p->base, p->window, leaves);

    struct vck_flat_range *r;
    size_t n = world_snapshot(p->a.as[0], &r);
    for (int i = 0; i < CACHES; i++) {
        uint64_t addr = pick_start(p, r, n);
        uint64_t len = 1 + rnd(&p->rng, chance(&p->rng, 70) ? 64 : 512);
        if (addr + len < addr) /* stay below 2^64 */
            len = (uint64_t)0 - addr;
        cache_init_checked(p, &p->c[i], addr, len, chance(&p->rng, 60));
    }
    free(r);
    int ops = 50 + (int)rnd(&p->rng, 200);
    for (int i = 0; i < ops; i++, p->op++)
        cache_op(p, &p->c[rnd(&p->rng, CACHES)]);
    compare_state(p);

    p->phase = "world A changed under its caches";
    int changes = 1 + (int)rnd(&p->rng, 3);
    for (int i = 0; i < changes; i++)
        mutate_a(p);
    for (int i = 0; i < ops; i++, p->op++)
        cache_op(p, &p->c[rnd(&p->rng, CACHES)]);
    compare_state(p);

    for (int i = 0; i < CACHES; i++)
        vck_mrc_destroy(&p->c[i]);
    world_reset(&p->a);
    world_reset(&p->b);
}

enum { RUNS = 3000 };

Test(dispatch_cache, caches_answer_as_dispatch_does_and_keep_their_view)
{
    static struct pair p;
    p.seed = test_seed("dispatch.cache", 1);
    long only = test_only_run(), runs = (long)(RUNS * test_scale());
    double t0 = vck_now();
    world_init(&p.a);
    world_init(&p.b);
    p.da = world_dispatch(&p.a, world_as(&p.a), NULL);
    p.db = world_dispatch(&p.b, world_as(&p.b), NULL);
    for (long run = 0; run < runs; run++)
        if (only < 0 || run == only)
            pair_run(&p, run);
    world_free(&p.a);
    world_free(&p.b);
    fprintf(stderr,
            "dispatch.cache: %ld runs, %ld caches (%ld direct), %ld accesses, %ld device calls, "
            "%.1f s\n",
            only < 0 ? runs : 1, p.direct + p.slow, p.direct, p.ops, p.calls, vck_now() - t0);
    cr_expect(only >= 0 || (p.direct > 1000 && p.slow > 1000 && p.calls > 10000),
              "the random layouts exercised too little");
}

/* ---- hand-built cases ---------------------------------------------------------------------- */

/* A world with one address space and a default dispatch. */
static struct vck_dispatch *small_world(struct world *w)
{
    world_init(w);
    return world_dispatch(w, world_as(w), NULL);
}

/* Reads @n bytes at @addr through @c and through @d; they must agree, and are returned. */
static enum vck_mem_result read_both(const struct vck_mrc *c, const struct vck_dispatch *d,
                                     uint64_t off, uint8_t *buf, uint64_t n)
{
    uint8_t other[256];
    cr_assert_leq(n, sizeof(other));
    memset(buf, 0xcc, n);
    memset(other, 0x33, n);
    enum vck_mem_result rc = vck_mrc_read(c, off, buf, n);
    enum vck_mem_result rd = vck_dispatch_read(d, c->addr + off, other, n);
    cr_assert_eq(rc, rd, "cache read at +%" PRIu64 " returned %d, dispatch %d", off, rc, rd);
    cr_assert_arr_eq(buf, other, n, "cache and dispatch read different bytes at +%" PRIu64, off);
    return rc;
}

Test(dispatch_cache, adjacent_ram_regions_with_contiguous_host_memory_are_direct)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *a, *b;
    world_ram_pair(&w, 0x100, 0x200, &a, &b);
    vck_mr_add_subregion(w.root, 0x1000, a, 0);
    vck_mr_add_subregion(w.root, 0x1100, b, 0);
    uint8_t *buf = vck_mr_host(a);
    cr_assert_eq(vck_mr_host(b), buf + 0x100, "the pair is one buffer");

    struct vck_mrc c;
    vck_mrc_init(&c, d, 0x10f0, 0x40, true); /* 16 bytes of a, 48 of b */
    cr_assert_eq(c.host, buf + 0xf0, "contiguous RAM across two ranges must be direct");
    uint8_t data[0x40], got[0x40];
    for (int i = 0; i < 0x40; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    w.hooks.n = 0;
    cr_assert_eq(vck_mrc_write(&c, 0, data, 0x40), VCK_MEM_OK);
    cr_assert_arr_eq(buf + 0xf0, data, 0x40, "a direct write lands in the host buffer");
    cr_assert_eq(w.hooks.n, 1, "a direct write calls the write hook once, not %zu times",
                 w.hooks.n);
    cr_assert(w.hooks.v[0].addr == 0x10f0 && w.hooks.v[0].len == 0x40,
              "hook got [%#" PRIx64 " +%#" PRIx64 "], want [0x10f0 +0x40]", w.hooks.v[0].addr,
              w.hooks.v[0].len);
    w.hooks.n = 0;
    cr_assert_eq(vck_mrc_write(&c, 0x13, data, 5), VCK_MEM_OK);
    cr_assert(w.hooks.n == 1 && w.hooks.v[0].addr == 0x1103 && w.hooks.v[0].len == 5,
              "hook of a partial write: the guest address of the bytes written");
    read_both(&c, d, 0, got, 0x40);
    vck_mrc_destroy(&c);

    /* The whole of both, exactly. */
    vck_mrc_init(&c, d, 0x1000, 0x300, false);
    cr_assert_eq(c.host, buf);
    vck_mrc_destroy(&c);
    /* One byte more is unassigned: not direct, and the slow path reads zeros there. */
    vck_mrc_init(&c, d, 0x1000, 0x301, false);
    cr_assert_null(c.host, "a range reaching unassigned space must not be direct");
    cr_assert_eq(read_both(&c, d, 0x2f0, got, 0x11), VCK_MEM_DECODE_ERROR);
    cr_assert_eq(got[0x10], 0);
    vck_mrc_destroy(&c);
    world_free(&w);
}

Test(dispatch_cache, adjacent_ram_regions_without_contiguous_host_memory_are_not_direct)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *a, *b, *e, *f;
    world_ram_pair(&w, 0x100, 0x100, &a, &b);
    /* Swapped: adjacent in the guest, b's buffer does not follow a's... */
    vck_mr_add_subregion(w.root, 0x2000, b, 0);
    vck_mr_add_subregion(w.root, 0x2100, a, 0);
    /* ...and two separate buffers. */
    e = world_ram(&w, 0x100);
    f = world_ram(&w, 0x100);
    vck_mr_add_subregion(w.root, 0x3000, e, 0);
    vck_mr_add_subregion(w.root, 0x3100, f, 0);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t at = pass ? 0x30f0 : 0x20f0;
        struct vck_mrc c;
        vck_mrc_init(&c, d, at, 0x20, true);
        cr_assert_null(c.host, "non-contiguous host memory behind %#" PRIx64 " must not be direct",
                       at);
        uint8_t data[0x20], got[0x20];
        for (int i = 0; i < 0x20; i++)
            data[i] = (uint8_t)(0x80 + i);
        w.hooks.n = 0;
        cr_assert_eq(vck_mrc_write(&c, 0, data, 0x20), VCK_MEM_OK);
        cr_assert_eq(w.hooks.n, 2, "one hook call per RAM range on the slow path");
        cr_assert_eq(read_both(&c, d, 0, got, 0x20), VCK_MEM_OK);
        cr_assert_arr_eq(got, data, 0x20);
        /* A part inside one range is still right, through the slow path. */
        cr_assert_eq(read_both(&c, d, 2, got, 4), VCK_MEM_OK);
        vck_mrc_destroy(&c);
        /* Within one region it is direct. */
        vck_mrc_init(&c, d, at - 0x10, 0x10, true);
        cr_assert_not_null(c.host);
        vck_mrc_destroy(&c);
    }
    world_free(&w);
}

Test(dispatch_cache, ram_into_mmio_is_not_direct_and_reads_as_dispatch)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *ram = world_ram(&w, 0x100);
    struct vck_mr_ops ops = world_any_ops;
    ops.min_access = 4;
    struct vck_mr *dev = world_mmio(&w, 0x100, &ops, 0, 42);
    vck_mr_add_subregion(w.root, 0x4000, ram, 0);
    vck_mr_add_subregion(w.root, 0x4100, dev, 0);
    struct vck_mrc c;
    vck_mrc_init(&c, d, 0x40f8, 0x10, true);
    cr_assert_null(c.host);
    uint8_t got[16], data[16];
    w.log.n = 0;
    cr_assert_eq(read_both(&c, d, 0, got, 16), VCK_MEM_OK);
    cr_assert_gt(w.log.n, 0, "the device was not called");
    cr_assert_arr_eq(got, (uint8_t *)vck_mr_host(ram) + 0xf8, 8);
    memset(data, 0xab, sizeof(data));
    w.hooks.n = 0;
    w.log.n = 0;
    cr_assert_eq(vck_mrc_write(&c, 4, data, 8), VCK_MEM_OK);
    cr_assert(w.hooks.n == 1 && w.hooks.v[0].addr == 0x40fc && w.hooks.v[0].len == 4,
              "the hook covers the RAM part only");
    cr_assert_eq(w.log.n, 1, "one 4-byte device write, got %zu calls", w.log.n);
    cr_assert(w.log.v[0].write && w.log.v[0].offset == 0 && w.log.v[0].size == 4 &&
              w.log.v[0].value == 0xabababab);
    vck_mrc_destroy(&c);
    /* All MMIO. */
    vck_mrc_init(&c, d, 0x4100, 0x20, false);
    cr_assert_null(c.host);
    read_both(&c, d, 1, got, 9);
    vck_mrc_destroy(&c);
    world_free(&w);
}

Test(dispatch_cache, read_only_ram_is_direct_for_reads_only)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *rom = world_ram(&w, 0x1000);
    vck_mr_set_readonly(rom, true);
    vck_mr_add_subregion(w.root, 0x10000, rom, 0);
    uint8_t *host = vck_mr_host(rom);
    uint8_t before[0x40], data[0x40], got[0x40];
    memcpy(before, host + 0x100, sizeof(before));
    memset(data, 0x77, sizeof(data));

    struct vck_mrc c;
    vck_mrc_init(&c, d, 0x10100, 0x40, true);
    cr_assert_null(c.host, "a write cache over read-only RAM must not be direct");
    w.hooks.n = 0;
    cr_assert_eq(vck_mrc_write(&c, 0, data, 0x40), VCK_MEM_DECODE_ERROR,
                 "a write to read-only RAM through a cache must be refused");
    cr_assert_arr_eq(host + 0x100, before, 0x40, "a refused write changed read-only RAM");
    cr_assert_eq(w.hooks.n, 0, "the hook ran for a refused write");
    cr_assert_eq(read_both(&c, d, 0, got, 0x40), VCK_MEM_OK);
    cr_assert_arr_eq(got, before, 0x40);
    vck_mrc_destroy(&c);

    vck_mrc_init(&c, d, 0x10100, 0x40, false);
    cr_assert_eq(c.host, host + 0x100, "a read cache over read-only RAM is direct");
    cr_assert_eq(read_both(&c, d, 3, got, 0x20), VCK_MEM_OK);
    vck_mrc_destroy(&c);

    /* Writable RAM followed by ROM from the same buffer: direct for reads, not for writes. */
    struct vck_mr *a, *b;
    world_ram_pair(&w, 0x80, 0x80, &a, &b);
    vck_mr_set_readonly(b, true);
    vck_mr_add_subregion(w.root, 0x20000, a, 0);
    vck_mr_add_subregion(w.root, 0x20080, b, 0);
    vck_mrc_init(&c, d, 0x20040, 0x80, false);
    cr_assert_eq(c.host, (uint8_t *)vck_mr_host(a) + 0x40);
    vck_mrc_destroy(&c);
    vck_mrc_init(&c, d, 0x20040, 0x80, true);
    cr_assert_null(c.host);
    cr_assert_eq(vck_mrc_write(&c, 0x30, data, 0x20), VCK_MEM_DECODE_ERROR);
    vck_mrc_destroy(&c);
    world_free(&w);
}

Test(dispatch_cache, a_cache_at_the_top_of_the_space)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *top = world_ram(&w, 0x100);
    vck_mr_add_subregion(w.root, (uint64_t)0 - 0x100, top, 0);
    struct vck_mrc c;
    vck_mrc_init(&c, d, (uint64_t)0 - 0x40, 0x40, true);
    cr_assert_eq(c.host, (uint8_t *)vck_mr_host(top) + 0xc0, "RAM ending at 2^64 - 1 is direct");
    uint8_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8}, got[8];
    w.hooks.n = 0;
    cr_assert_eq(vck_mrc_write(&c, 0x38, data, 8), VCK_MEM_OK);
    cr_assert(w.hooks.n == 1 && w.hooks.v[0].addr == UINT64_MAX - 7 && w.hooks.v[0].len == 8);
    cr_assert_eq(read_both(&c, d, 0x38, got, 8), VCK_MEM_OK);
    cr_assert_arr_eq(got, data, 8);
    vck_mrc_destroy(&c);
    world_free(&w);
}

/* ---- topology changes ---------------------------------------------------------------------- */

Test(dispatch_cache, a_cache_keeps_its_regions_alive_until_destroyed)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *ram = world_ram(&w, 0x1000);
    struct vck_mr_ops ops = world_any_ops;
    struct vck_mr *dev = world_mmio(&w, 0x100, &ops, 0, 7);
    vck_mr_add_subregion(w.root, 0x10000, ram, 0);
    vck_mr_add_subregion(w.root, 0x11000, dev, 0);
    const struct leaf *leaf = world_leaf(&w, ram);
    struct ram_buf *rb = leaf->ram;
    uint8_t *host = vck_mr_host(ram);

    struct vck_mrc direct, slow;
    vck_mrc_init(&direct, d, 0x10100, 0x100, true);
    vck_mrc_init(&slow, d, 0x10f00, 0x200, true); /* RAM into the device */
    cr_assert_not_null(direct.host);
    cr_assert_null(slow.host);
    uint8_t data[0x100], got[0x100];
    for (int i = 0; i < 0x100; i++)
        data[i] = (uint8_t)(i ^ 0x5c);
    cr_assert_eq(vck_mrc_write(&direct, 0, data, 0x100), VCK_MEM_OK);

    /* Unmap and destroy the RAM, and make more changes: new RAM where it was. */
    vck_mr_del_subregion(w.root, ram);
    world_forget(&w, ram);
    vck_mr_destroy(ram);
    struct vck_mr *other = world_ram(&w, 0x2000);
    vck_mr_add_subregion(w.root, 0x10000, other, 0);
    vck_mr_set_address(dev, 0x30000);
    vck_rcu_barrier();
    cr_assert_eq(__atomic_load_n(&rb->released, __ATOMIC_SEQ_CST), 0,
                 "a destroyed region a cache still reaches was released");

    /* The dispatch sees the new layout... */
    uint8_t now[0x100];
    cr_assert_eq(vck_dispatch_read(d, 0x10100, now, 0x100), VCK_MEM_OK);
    cr_assert_arr_eq(now, (uint8_t *)vck_mr_host(other) + 0x100, 0x100);
    /* ...the caches the old one, and they still work: under ASan, no use after free. */
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(vck_mrc_read(&direct, 0, got, 0x100), VCK_MEM_OK);
        cr_assert_arr_eq(got, data, 0x100, "the cache lost the destroyed region's bytes");
        data[round] ^= 0xff;
        cr_assert_eq(vck_mrc_write(&direct, 0, data, 0x100), VCK_MEM_OK);
        cr_assert_arr_eq(host + 0x100, data, 0x100);
        w.log.n = 0;
        cr_assert_eq(vck_mrc_read(&slow, 0xf0, got, 0x20), VCK_MEM_OK);
        cr_assert_arr_eq(got, host + 0xff0, 0x10, "the slow path lost the destroyed region");
        cr_assert_gt(w.log.n, 0, "the slow path no longer reaches the device it was made over");
        cr_assert_eq(vck_mrc_write(&slow, 0x80, data, 0x10), VCK_MEM_OK);
        cr_assert_arr_eq(host + 0xf80, data, 0x10);
        vck_memmap_begin(w.mm);
        vck_mr_set_priority(other, round + 1); /* one more view, to be sure */
        vck_memmap_commit(w.mm);
    }
    vck_rcu_barrier();
    cr_assert_eq(__atomic_load_n(&rb->released, __ATOMIC_SEQ_CST), 0);

    vck_mrc_destroy(&direct);
    vck_rcu_barrier();
    cr_assert_eq(__atomic_load_n(&rb->released, __ATOMIC_SEQ_CST), 0,
                 "released while the second cache still reaches it");
    vck_mrc_destroy(&slow);
    vck_rcu_barrier();
    cr_assert_eq(__atomic_load_n(&rb->released, __ATOMIC_SEQ_CST), 1,
                 "not released after the last cache was destroyed and a barrier");
    world_free(&w);
}

/* A device with a ring in guest memory, re-initialising its cache on every commit. */
struct dma_dev {
    struct vck_mem_listener l;
    const struct vck_dispatch *d;
    uint64_t ring, len;
    struct vck_mrc cache;
    bool have;
    int commits;
};

static void dma_commit(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    struct dma_dev *dev = (struct dma_dev *)l;
    (void)view;
    /* Single-threaded here; a real device would publish the new cache to its threads. */
    if (dev->have)
        vck_mrc_destroy(&dev->cache);
    vck_mrc_init(&dev->cache, dev->d, dev->ring, dev->len, true);
    dev->have = true;
    dev->commits++;
}

Test(dispatch_cache, a_listener_reinitialises_its_cache_and_sees_the_new_layout)
{
    struct world w;
    struct vck_dispatch *d = small_world(&w);
    struct vck_mr *a = world_ram(&w, 0x1000), *b = world_ram(&w, 0x1000);
    uint8_t *ha = vck_mr_host(a), *hb = vck_mr_host(b);
    vck_mr_add_subregion(w.root, 0x20000, a, 0);

    struct dma_dev dev = {.l = {.commit = dma_commit}, .d = d, .ring = 0x20100, .len = 0x100};
    vck_as_listener_register(w.as[0], &dev.l);
    cr_assert_eq(dev.commits, 1, "registration replays the view and commits");
    cr_assert_eq(dev.cache.host, ha + 0x100);
    struct vck_mrc stale;
    vck_mrc_init(&stale, d, dev.ring, dev.len, false);

    uint8_t got[0x100];
    /* Move a away and put b where it was. */
    vck_memmap_begin(w.mm);
    vck_mr_set_address(a, 0x80000);
    vck_mr_add_subregion(w.root, 0x20000, b, 0);
    vck_memmap_commit(w.mm);
    cr_assert_eq(dev.commits, 2);
    cr_assert_eq(dev.cache.host, hb + 0x100, "the re-initialised cache is not over the new RAM");
    cr_assert_eq(vck_mrc_read(&dev.cache, 0, got, 0x100), VCK_MEM_OK);
    cr_assert_arr_eq(got, hb + 0x100, 0x100);
    cr_assert_eq(vck_mrc_write(&dev.cache, 0, "ring", 4), VCK_MEM_OK);
    cr_assert_arr_eq(hb + 0x100, "ring", 4);
    /* A cache nobody re-initialised goes on answering as the old view did. */
    cr_assert_eq(stale.host, ha + 0x100);
    cr_assert_eq(vck_mrc_read(&stale, 0, got, 0x100), VCK_MEM_OK);
    cr_assert_arr_eq(got, ha + 0x100, 0x100);

    /* Move a back over the second half of the ring: two buffers, so the slow path. */
    vck_mr_set_priority(b, 0);
    vck_memmap_begin(w.mm);
    vck_mr_set_address(a, 0x20180);
    vck_mr_set_priority(a, 1);
    vck_memmap_commit(w.mm);
    cr_assert_null(dev.cache.host, "a ring over two buffers cannot be direct");
    cr_assert_eq(vck_mrc_read(&dev.cache, 0, got, 0x100), VCK_MEM_OK);
    cr_assert_arr_eq(got, hb + 0x100, 0x80);
    cr_assert_arr_eq(got + 0x80, ha, 0x80);

    /* Unmapped: the ring reads as zeros with a decode error. */
    vck_memmap_begin(w.mm);
    vck_mr_del_subregion(w.root, a);
    vck_mr_del_subregion(w.root, b);
    vck_memmap_commit(w.mm);
    cr_assert_null(dev.cache.host);
    memset(got, 0xee, sizeof(got));
    cr_assert_eq(vck_mrc_read(&dev.cache, 0, got, 0x100), VCK_MEM_DECODE_ERROR);
    for (int i = 0; i < 0x100; i++)
        cr_assert_eq(got[i], 0, "byte %d of an unmapped ring is %#x", i, got[i]);

    vck_as_listener_unregister(&dev.l);
    vck_mrc_destroy(&dev.cache);
    vck_mrc_destroy(&stale);
    world_free(&w);
}
