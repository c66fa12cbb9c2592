/*
 * Translation (vck_dispatch_translate) against a peer that cannot share the page map's bugs: the
 * flat view itself, searched with vck_flatview_find() and with this file's own binary search over
 * vck_flatview_ranges(). Thousands of random layouts are built with the memory-map API (RAM and
 * MMIO leaves at random places, sections far smaller than a page, sections straddling page
 * boundaries, runs of adjacent tiny sections sharing a page, partly unassigned pages, huge aligned
 * RAM, overlaps resolved by priority, aliases, sub-containers, regions ending at 2^64 - 1), then
 * changed a few times, and every view is checked through twelve dispatches at once: the default
 * geometry, 3 bits per level (deep trees), 16, 1 and 24 page bits, each with and without path
 * compression, which must not change a single answer.
 *
 * Each view is probed at every range's start and last, one byte either side, the page boundaries
 * around them for the dispatch's own page size, the middle, and random addresses anywhere and
 * near ranges, with random lengths, for reads and for writes. Every field of the result is
 * compared: the section's identity (region, offset, kind, read-only, host, ops, bounds),
 * xlat.offset, xlat.host, xlat.len and the result code.
 *
 * RAM here is "fake": a made-up host pointer that nothing dereferences (translation only computes
 * pointers), so a region may be 1 GiB or 2^40 bytes.
 *
 * Failures name the seed, the run and the step; VCK_SEED=<n> replays a seed, VCK_RUN=<i> only
 * its run i, VCK_SCALE=<x> multiplies the number of runs.
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

TestSuite(dispatch_reference, .init = suite_init, .fini = suite_fini, .timeout = 300);

/* ---- configurations ------------------------------------------------------------------------ */

struct config {
    unsigned page_bits, level_bits;
    bool no_compress;
};

/* Four per address space (VCK_FLATVIEW_DERIVED_MAX), three address spaces on the one root. */
static const struct config configs[] = {
    {0, 0, false},  {0, 0, true},  {12, 3, false}, {12, 3, true}, {16, 0, false}, {16, 0, true},
    {16, 3, false}, {16, 3, true}, {1, 5, false},  {1, 5, true},  {24, 7, false}, {24, 7, true},
};
#define N_CONFIGS (sizeof(configs) / sizeof(configs[0]))

static unsigned config_page_bits(const struct config *c)
{
    return c->page_bits ? c->page_bits : 12;
}

static void config_name(char *buf, size_t cap, const struct config *c)
{
    snprintf(buf, cap, "page_bits %u level_bits %u%s", config_page_bits(c),
             c->level_bits ? c->level_bits : 9, c->no_compress ? " no_compress" : "");
}

/* ---- failure context ----------------------------------------------------------------------- */

struct ctx {
    uint64_t seed;
    long run;
    int step;
    const char *what; /* the change that made this view */
    const struct vck_flat_range *ranges;
    size_t n;
    long checks;
    const struct config *cfgs; /* of dispatch i, which is on address space i / 4 */
    /* What the layouts held, summed over views (the summary line shows the mix is as meant). */
    long views, n_ranges, subpages, bypassed, at_top, huge, tiny;
};

static void ctx_fail(const struct ctx *cx, const struct config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ctx_fail(const struct ctx *cx, const struct config *cfg, const char *fmt, ...)
{
    char what[1024], cfgname[64];
    static char layout[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (cfg)
        config_name(cfgname, sizeof(cfgname), cfg);
    else
        snprintf(cfgname, sizeof(cfgname), "-");
    ranges_format(layout, sizeof(layout), cx->ranges, cx->n);
    cr_assert_fail("seed %" PRIu64 " run %ld (VCK_SEED=%" PRIu64 " VCK_RUN=%ld) step %d after %s, "
                   "%s: %s\n  view:%s",
                   cx->seed, cx->run, cx->seed, cx->run, cx->step, cx->what, cfgname, what, layout);
}

/* ---- the peer ------------------------------------------------------------------------------ */

/* Index of the first range starting after @addr (n when none). */
static size_t first_after(const struct vck_flat_range *r, size_t n, uint64_t addr)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r[mid].start > addr)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The range containing @addr, or NULL. */
static const struct vck_flat_range *peer_find(const struct vck_flat_range *r, size_t n,
                                              uint64_t addr)
{
    size_t i = first_after(r, n, addr);
    if (i == 0 || r[i - 1].last < addr)
        return NULL;
    return &r[i - 1];
}

typedef unsigned __int128 u128;

static uint64_t min_len(uint64_t asked, u128 room)
{
    return room < asked ? (uint64_t)room : asked;
}

static void check_point(const struct ctx *cx, const struct config *cfg,
                        const struct vck_dispatch *d, const struct vck_flatview *view,
                        uint64_t addr, uint64_t len, bool is_write)
{
    const struct vck_flat_range *r = peer_find(cx->ranges, cx->n, addr);
    const struct vck_flat_range *found = vck_flatview_find(view, addr);
    const struct vck_flat_range *base = vck_flatview_ranges(view, &(size_t){0});
    if ((found == NULL) != (r == NULL) || (r && found - base != r - cx->ranges))
        ctx_fail(cx, NULL, "the peers disagree at %#" PRIx64 ": vck_flatview_find %s", addr,
                 found ? "finds a range" : "finds nothing");

    struct vck_xlat x;
    memset(&x, 0x5a, sizeof(x));
    enum vck_mem_result res = vck_dispatch_translate(d, addr, len, is_write, &x);
    const struct vck_section *s = x.section;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ctx_fail(cx, cfg, "translate(%#" PRIx64 ", len %#" PRIx64 ", %s): " __VA_ARGS__);      \
    } while (0)
#define ARGS addr, len, is_write ? "write" : "read"

    EXPECT(s != NULL, "no section", ARGS);
    if (!r) {
        size_t next = first_after(cx->ranges, cx->n, addr);
        u128 room = (next < cx->n ? (u128)cx->ranges[next].start : (u128)1 << 64) - addr;
        EXPECT(s->kind == VCK_SECTION_UNASSIGNED, "unassigned space gave a section of kind %d",
               ARGS, s->kind);
        EXPECT(s->mr == NULL && s->host == NULL, "unassigned section with a region or host", ARGS);
        EXPECT(s->start == 0 && s->last == UINT64_MAX,
               "unassigned section spans [%#" PRIx64 ", %#" PRIx64 "], not the whole space", ARGS,
               s->start, s->last);
        EXPECT(res == VCK_MEM_DECODE_ERROR, "unassigned: result %d, want decode error", ARGS, res);
        EXPECT(x.offset == addr, "unassigned: offset %#" PRIx64 ", want the address", ARGS,
               x.offset);
        EXPECT(x.host == NULL, "unassigned: host %p", ARGS, x.host);
        EXPECT(x.len == min_len(len, room),
               "unassigned: len %#" PRIx64 ", want %#" PRIx64 " (next range %s)", ARGS, x.len,
               min_len(len, room), next < cx->n ? "exists" : "none: up to 2^64");
        return;
    }
    enum vck_mr_kind kind = vck_mr_kind(r->mr);
    uint64_t off = r->offset + (addr - r->start);
    u128 room = (u128)r->last - addr + 1;
    EXPECT(s->mr == r->mr, "section region %s, want %s", ARGS, s->mr ? vck_mr_name(s->mr) : "NULL",
           vck_mr_name(r->mr));
    EXPECT(s->start == r->start && s->last == r->last,
           "section [%#" PRIx64 ", %#" PRIx64 "], want [%#" PRIx64 ", %#" PRIx64 "]", ARGS,
           s->start, s->last, r->start, r->last);
    EXPECT(s->offset == r->offset, "section offset %#" PRIx64 ", want %#" PRIx64, ARGS, s->offset,
           r->offset);
    EXPECT(s->readonly == r->readonly, "section readonly %d, want %d", ARGS, s->readonly,
           r->readonly);
    EXPECT(x.offset == off, "offset %#" PRIx64 ", want %#" PRIx64, ARGS, x.offset, off);
    EXPECT(x.len == min_len(len, room), "len %#" PRIx64 ", want %#" PRIx64, ARGS, x.len,
           min_len(len, room));
    enum vck_mem_result want = is_write && r->readonly ? VCK_MEM_DECODE_ERROR : VCK_MEM_OK;
    EXPECT(res == want, "result %d, want %d", ARGS, res, want);
    if (kind == VCK_MR_RAM) {
        uint8_t *host = (uint8_t *)vck_mr_host(r->mr);
        EXPECT(s->kind == VCK_SECTION_RAM, "kind %d, want RAM", ARGS, s->kind);
        EXPECT(s->host == host + r->offset, "section host %p, want %p", ARGS, (void *)s->host,
               (void *)(host + r->offset));
        EXPECT(x.host == host + off, "host %p, want %p", ARGS, x.host, (void *)(host + off));
    } else {
        EXPECT(s->kind == VCK_SECTION_MMIO, "kind %d, want MMIO", ARGS, s->kind);
        EXPECT(s->host == NULL && x.host == NULL, "MMIO with a host pointer", ARGS);
        EXPECT(s->ops == vck_mr_ops(r->mr) && s->opaque == vck_mr_opaque(r->mr),
               "MMIO section's ops/opaque are not the region's", ARGS);
    }
#undef ARGS
#undef EXPECT
}

/* A length to ask for: mostly small, sometimes huge. */
static uint64_t pick_len(uint64_t *rng)
{
    switch (rnd(rng, 6)) {
    case 0:
        return 1;
    case 1:
        return 1 + rnd(rng, 8);
    case 2:
        return 1 + rnd(rng, 5000);
    case 3:
        return UINT64_MAX;
    case 4:
        return 1 + rnd(rng, (uint64_t)1 << 34);
    default:
        return 1 + (vck_rand(rng) >> rnd(rng, 64));
    }
}

static void probe(const struct ctx *cx, const struct config *cfg, const struct vck_dispatch *d,
                  const struct vck_flatview *view, uint64_t *rng, uint64_t addr)
{
    check_point(cx, cfg, d, view, addr, pick_len(rng), false);
    check_point(cx, cfg, d, view, addr, pick_len(rng), true);
}

static void probe_around(const struct ctx *cx, const struct config *cfg,
                         const struct vck_dispatch *d, const struct vck_flatview *view,
                         uint64_t *rng, uint64_t a, uint64_t page)
{
    uint64_t p = a & ~(page - 1);
    const uint64_t pts[] = {a, a - 1, a + 1, p, p - 1, p + page, p + page - 1};
    for (size_t i = 0; i < sizeof(pts) / sizeof(pts[0]); i++)
        probe(cx, cfg, d, view, rng, pts[i]);
}

static void check_view(struct ctx *cx, struct world *w, uint64_t *rng, bool sparse)
{
    for (int a = 0; a < w->n_as; a++) {
        vck_rcu_read_lock();
        const struct vck_flatview *view = vck_as_view(w->as[a]);
        cx->ranges = vck_flatview_ranges(view, &cx->n);
        for (int di = a * 4; di < w->n_d && di < a * 4 + 4; di++) {
            const struct config *cfg = &cx->cfgs[di];
            const struct vck_dispatch *d = w->d[di];
            uint64_t page = (uint64_t)1 << config_page_bits(cfg);

            struct vck_pagemap_stats st;
            memset(&st, 0xa5, sizeof(st));
            vck_dispatch_map_stats(d, view, &st);
            if (st.sections != cx->n + 1)
                ctx_fail(cx, cfg, "stats: %zu sections for %zu ranges", st.sections, cx->n);
            if (cfg->no_compress && st.bypassed != 0)
                ctx_fail(cx, cfg, "stats: %zu nodes bypassed without compression", st.bypassed);
            if (sparse && !cfg->no_compress && st.bypassed == 0)
                ctx_fail(cx, cfg, "stats: no node bypassed in a sparse layout");
            if (di == 0) {
                cx->views++;
                cx->n_ranges += (long)cx->n;
                cx->subpages += (long)st.subpages;
                cx->bypassed += (long)st.bypassed;
                for (size_t i = 0; i < cx->n; i++) {
                    uint64_t size_m1 = cx->ranges[i].last - cx->ranges[i].start;
                    cx->at_top += cx->ranges[i].last == UINT64_MAX;
                    cx->huge += size_m1 >= ((uint64_t)1 << 30) - 1;
                    cx->tiny += size_m1 < 64;
                }
            }

            for (size_t i = 0; i < cx->n; i++) {
                const struct vck_flat_range *r = &cx->ranges[i];
                probe_around(cx, cfg, d, view, rng, r->start, page);
                probe_around(cx, cfg, d, view, rng, r->last, page);
                probe(cx, cfg, d, view, rng, r->start + (r->last - r->start) / 2);
                probe(cx, cfg, d, view, rng, r->start + rnd(rng, r->last - r->start + 1));
                cx->checks += 32;
            }
            for (int j = 0; j < 16; j++) {
                probe(cx, cfg, d, view, rng, vck_rand(rng));
                if (cx->n) {
                    const struct vck_flat_range *r = &cx->ranges[rnd(rng, cx->n)];
                    probe(cx, cfg, d, view, rng, r->start - page + rnd(rng, 3 * page));
                }
                cx->checks += 4;
            }
        }
        vck_rcu_read_unlock();
    }
    cx->ranges = NULL;
    cx->n = 0;
}

/* ---- random sparse layouts ----------------------------------------------------------------- */

static uint64_t cluster_base(uint64_t *rng)
{
    switch (rnd(rng, 8)) {
    case 0:
        return 0;
    case 1:
        return rnd(rng, (uint64_t)1 << 34) << 30; /* a 1 GiB boundary */
    case 2:
        return rnd(rng, (uint64_t)1 << 24) << 40;
    case 3:
        return (uint64_t)0 - ((1 + rnd(rng, 64)) << 16); /* just below the top */
    case 4:
        return (uint64_t)0 - (1 + rnd(rng, (uint64_t)1 << 20));
    case 5:
        return vck_rand(rng) & ~(uint64_t)0xfff;
    case 6:
        return vck_rand(rng) & ~(uint64_t)0xffff;
    default:
        return vck_rand(rng);
    }
}

/* An offset at, or just off, a boundary of one of the page sizes under test. */
static uint64_t near_boundary(uint64_t *rng)
{
    static const unsigned shifts[] = {1, 12, 12, 16, 24};
    uint64_t g = (uint64_t)1 << shifts[rnd(rng, 5)];
    uint64_t off = g * rnd(rng, 6);
    switch (rnd(rng, 6)) {
    case 0:
        return off;
    case 1:
        return off + 1;
    case 2:
        return off ? off - 1 : off;
    case 3:
        return off + rnd(rng, 64);
    case 4:
        return off ? off - 1 - rnd(rng, 64 < off ? 64 : off) : off;
    default:
        return off + rnd(rng, g);
    }
}

static uint64_t region_size(uint64_t *rng, uint64_t addr)
{
    switch (rnd(rng, 13)) {
    case 0:
    case 1:
    case 2:
        return 1 + rnd(rng, 64);
    case 3:
        return 1 + rnd(rng, 4096);
    case 4:
        return (4096 << rnd(rng, 3)) * (1 + rnd(rng, 3)) + rnd(rng, 3) - 1;
    case 5:
        return 65536 * (1 + rnd(rng, 4)) + rnd(rng, 3) - 1;
    case 6:
        return 1 + rnd(rng, (uint64_t)1 << 20);
    case 7:
        return (uint64_t)1 << 30;
    case 8:
        return (uint64_t)1 << (24 + rnd(rng, 18));
    case 9:
        return addr ? (uint64_t)0 - addr : VCK_MR_SIZE_FULL; /* up to 2^64 - 1 */
    case 10:
        return 2 + 2 * rnd(rng, 100);
    case 11:
        return 1 + rnd(rng, (uint64_t)1 << 26);
    default:
        return 1 + rnd(rng, 1 + (vck_rand(rng) >> rnd(rng, 64)));
    }
}

static const struct vck_mr_ops dummy_ops; /* never called: translation only */

#define FAKE_RAM_MAX ((uint64_t)1 << 62)

static struct vck_mr *sparse_leaf(struct world *w, uint64_t *rng, uint64_t size)
{
    if (size <= FAKE_RAM_MAX && chance(rng, 55))
        return world_ram_fake(w, size);
    return world_mmio(w, size, &dummy_ops, 0, 0);
}

static int sparse_priority(uint64_t *rng)
{
    return (int)rnd(rng, 4) - 1;
}

static void sparse_map(uint64_t *rng, struct vck_mr *parent, uint64_t addr, struct vck_mr *mr,
                       int prio)
{
    if (chance(rng, 12))
        vck_mr_set_readonly(mr, true);
    if (chance(rng, 4))
        vck_mr_set_enabled(mr, false);
    vck_mr_add_subregion(parent, addr, mr, prio);
}

static struct vck_mr *random_target(struct world *w, uint64_t *rng)
{
    /* Any region but the root: a leaf, an alias or a container. */
    return w->mrs[1 + rnd(rng, (uint64_t)w->n_mrs - 1)];
}

static void gen_cluster(struct world *w, uint64_t *rng)
{
    uint64_t base = cluster_base(rng);
    unsigned kind = (unsigned)rnd(rng, 100);
    if (kind < 35) { /* scattered regions, overlapping where offsets collide */
        int k = 1 + (int)rnd(rng, 8);
        for (int i = 0; i < k; i++) {
            uint64_t addr = base + near_boundary(rng);
            sparse_map(rng, w->root, addr, sparse_leaf(w, rng, region_size(rng, addr)),
                       sparse_priority(rng));
        }
    } else if (kind < 55) { /* a run of tiny adjacent sections, three or more to a page */
        uint64_t addr = base + near_boundary(rng);
        int k = 3 + (int)rnd(rng, 8);
        for (int i = 0; i < k; i++) {
            uint64_t size = 1 + rnd(rng, 40);
            sparse_map(rng, w->root, addr, sparse_leaf(w, rng, size), sparse_priority(rng));
            addr += size + (chance(rng, 70) ? 0 : rnd(rng, 4));
        }
    } else if (kind < 65) { /* huge aligned RAM, with a device punched into it */
        uint64_t size = (uint64_t)1 << (30 + rnd(rng, 11));
        uint64_t addr = rnd(rng, (uint64_t)1 << 20) * size;
        sparse_map(rng, w->root, addr, world_ram_fake(w, size), 0);
        if (chance(rng, 70)) {
            uint64_t hole = addr + near_boundary(rng) * (1 + rnd(rng, 1000));
            sparse_map(rng, w->root, hole, sparse_leaf(w, rng, region_size(rng, hole)), 1);
        }
    } else if (kind < 80) { /* a container with children, maybe overlapping its siblings */
        uint64_t addr = base + near_boundary(rng);
        uint64_t csize = region_size(rng, addr);
        if (csize < 64)
            csize = 64 + csize;
        struct vck_mr *c = world_container(w, csize);
        int k = 1 + (int)rnd(rng, 6);
        for (int i = 0; i < k; i++) {
            uint64_t at = chance(rng, 50) ? near_boundary(rng) : rnd(rng, csize);
            sparse_map(rng, c, at, sparse_leaf(w, rng, region_size(rng, at)), sparse_priority(rng));
        }
        sparse_map(rng, w->root, addr, c, sparse_priority(rng));
    } else if (kind < 90 && w->n_mrs > 1) { /* an alias of something already made */
        struct vck_mr *t = random_target(w, rng);
        uint64_t tsize = vck_mr_size(t);
        uint64_t off = chance(rng, 50) ? 0 : rnd(rng, tsize);
        uint64_t size = chance(rng, 30) ? tsize - off : 1 + rnd(rng, tsize - off);
        uint64_t addr = base + near_boundary(rng);
        sparse_map(rng, w->root, addr, world_alias(w, t, off, size), sparse_priority(rng));
    } else { /* at the very top of the space: ending at 2^64 - 1, or clipped there */
        uint64_t size = chance(rng, 50) ? 1 + rnd(rng, 100) : region_size(rng, 1);
        uint64_t addr = (uint64_t)0 - size;
        if (chance(rng, 30))
            addr += rnd(rng, size); /* sticks out past 2^64: clipped */
        sparse_map(rng, w->root, addr, sparse_leaf(w, rng, size), sparse_priority(rng));
    }
}

/* Any region mapped somewhere, or NULL. */
static struct vck_mr *random_mapped(struct world *w, uint64_t *rng)
{
    for (int tries = 0; tries < 16 && w->n_mrs > 1; tries++) {
        struct vck_mr *mr = random_target(w, rng);
        if (vck_mr_container(mr))
            return mr;
    }
    return NULL;
}

/* One change to the tree, committed at once; returns its description. */
static const char *mutate(struct world *w, uint64_t *rng)
{
    struct vck_mr *mr = random_mapped(w, rng);
    if (!mr)
        return "nothing";
    switch (rnd(rng, 7)) {
    case 0:
        vck_mr_set_address(mr, chance(rng, 50) ? vck_mr_address(mr) + near_boundary(rng)
                                               : cluster_base(rng) + near_boundary(rng));
        return "set_address";
    case 1:
        vck_mr_set_priority(mr, sparse_priority(rng) * 2);
        return "set_priority";
    case 2:
        vck_mr_set_enabled(mr, !vck_mr_enabled(mr));
        return "set_enabled";
    case 3:
        vck_mr_set_readonly(mr, !vck_mr_readonly(mr));
        return "set_readonly";
    case 4:
        vck_mr_del_subregion(vck_mr_container(mr), mr);
        return "del_subregion";
    case 5:
        if (vck_mr_kind(mr) == VCK_MR_RAM) {
            vck_mr_set_size(mr, 1 + rnd(rng, vck_mr_size(mr))); /* RAM only shrinks */
            return "set_size (RAM)";
        }
        if (vck_mr_kind(mr) != VCK_MR_ALIAS) {
            vck_mr_set_size(mr, region_size(rng, vck_mr_address(mr)));
            return "set_size";
        }
        return "nothing";
    default: {
        /* A whole new cluster in one transaction. */
        vck_memmap_begin(w->mm);
        gen_cluster(w, rng);
        vck_memmap_commit(w->mm);
        return "a new cluster";
    }
    }
}

/* Dispatch i on address space i / 4, made unless it exists. */
static void world_add_configs(struct world *w, const struct config *cfgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((size_t)w->n_as <= i / 4)
            world_as(w);
        struct vck_dispatch_options o = {
            .page_bits = cfgs[i].page_bits,
            .level_bits = cfgs[i].level_bits,
            .no_compress = cfgs[i].no_compress,
        };
        world_dispatch(w, w->as[i / 4], &o);
    }
}

enum { RUNS = 3000, MAX_CHANGES = 4 };

static void reference_run(struct world *w, uint64_t seed, long run, struct ctx *sum)
{
    uint64_t rng = run_seed(seed, run);
    struct ctx cx = {.seed = seed, .run = run, .what = "the initial build", .cfgs = configs};

    vck_memmap_begin(w->mm);
    int clusters = 1 + (int)rnd(&rng, 5);
    for (int i = 0; i < clusters && w->n_mrs + 40 < WORLD_MAX_MRS; i++)
        gen_cluster(w, &rng);
    vck_memmap_commit(w->mm);
    check_view(&cx, w, &rng, false);

    int changes = (int)rnd(&rng, MAX_CHANGES + 1);
    for (cx.step = 1; cx.step <= changes && w->n_mrs + 40 < WORLD_MAX_MRS; cx.step++) {
        cx.what = mutate(w, &rng);
        check_view(&cx, w, &rng, false);
    }
    sum->checks += cx.checks;
    sum->views += cx.views;
    sum->n_ranges += cx.n_ranges;
    sum->subpages += cx.subpages;
    sum->bypassed += cx.bypassed;
    sum->at_top += cx.at_top;
    sum->huge += cx.huge;
    sum->tiny += cx.tiny;
    world_reset(w);
}

Test(dispatch_reference, translate_matches_the_flat_view_on_random_layouts)
{
    uint64_t seed = test_seed("dispatch.reference", 1);
    long only = test_only_run(), runs = (long)(RUNS * test_scale());
    struct ctx sum = {0};
    double t0 = vck_now();
    struct world w;
    world_init(&w);
    world_add_configs(&w, configs, N_CONFIGS);
    /* The empty layout first: everything unassigned. */
    struct ctx cx = {.seed = seed, .run = -1, .what = "nothing (an empty root)", .cfgs = configs};
    uint64_t rng = seed;
    check_view(&cx, &w, &rng, false);
    for (long run = 0; run < runs; run++)
        if (only < 0 || run == only)
            reference_run(&w, seed, run, &sum);
    world_free(&w);
    fprintf(stderr,
            "dispatch.reference: %ld runs, %ld views (%ld ranges: %ld under 64 bytes, %ld of "
            "1 GiB or more, %ld ending at 2^64 - 1; %ld subpages, %ld nodes bypassed in the "
            "default maps), %ld translations checked, %.1f s\n",
            only < 0 ? runs : 1, sum.views, sum.n_ranges, sum.tiny, sum.huge, sum.at_top,
            sum.subpages, sum.bypassed, sum.checks, vck_now() - t0);
}

/*
 * Sparse layouts: a few small regions at random 64-bit addresses. Every compressed map has
 * single-child chains to bypass; an uncompressed one bypasses nothing; answers are the same.
 */
Test(dispatch_reference, sparse_layouts_are_compressed_and_answer_the_same)
{
    uint64_t seed = test_seed("dispatch.reference sparse", 2);
    long only = test_only_run();
    struct world w;
    world_init(&w);
    world_add_configs(&w, configs, N_CONFIGS);
    for (long run = 0; run < 1000; run++) {
        if (only >= 0 && run != only)
            continue;
        uint64_t rng = run_seed(seed, run);
        struct ctx cx = {.seed = seed, .run = run, .what = "a sparse build", .cfgs = configs};
        vck_memmap_begin(w.mm);
        int k = 1 + (int)rnd(&rng, 4);
        for (int i = 0; i < k; i++) {
            uint64_t size = 1 + rnd(&rng, (uint64_t)1 << (1 + rnd(&rng, 16)));
            uint64_t addr = vck_rand(&rng) >> 1; /* stays clear of the top */
            vck_mr_add_subregion(w.root, addr, sparse_leaf(&w, &rng, size), 0);
        }
        vck_memmap_commit(w.mm);
        check_view(&cx, &w, &rng, true);
        world_reset(&w);
    }
    world_free(&w);
}

/* ---- edge cases ---------------------------------------------------------------------------- */

/* The extremes of the options: 16 bits per level, 1 bit per level (63 levels), 2-byte pages. */
static const struct config extreme_configs[] = {
    {1, 16, false}, {1, 16, true},  {1, 1, false},  {1, 1, true},
    {30, 1, false}, {30, 16, true}, {2, 16, false}, {30, 16, false},
};
#define N_EXTREME (sizeof(extreme_configs) / sizeof(extreme_configs[0]))

Test(dispatch_reference, extreme_geometries_answer_like_the_flat_view)
{
    uint64_t seed = test_seed("dispatch.reference extremes", 3);
    long only = test_only_run();
    struct world w;
    world_init(&w);
    world_add_configs(&w, extreme_configs, N_EXTREME);
    for (long run = 0; run < 60; run++) {
        if (only >= 0 && run != only)
            continue;
        uint64_t rng = run_seed(seed, run);
        struct ctx cx = {.seed = seed, .run = run, .what = "the build", .cfgs = extreme_configs};
        vck_memmap_begin(w.mm);
        int clusters = 1 + (int)rnd(&rng, 3);
        for (int i = 0; i < clusters; i++)
            gen_cluster(&w, &rng);
        vck_memmap_commit(w.mm);
        check_view(&cx, &w, &rng, false);
        world_reset(&w);
    }
    world_free(&w);
}

/* A dispatch attached to an address space whose layout exists maps it at once, and follows. */
Test(dispatch_reference, a_dispatch_attached_late_maps_the_current_view)
{
    uint64_t seed = test_seed("dispatch.reference late", 4);
    long only = test_only_run();
    for (long run = 0; run < 40; run++) {
        if (only >= 0 && run != only)
            continue;
        uint64_t rng = run_seed(seed, run);
        struct ctx cx = {.seed = seed, .run = run, .what = "attaching", .cfgs = configs};
        struct world w;
        world_init(&w);
        for (int i = 0; i < 3; i++)
            world_as(&w);
        vck_memmap_begin(w.mm);
        int clusters = 1 + (int)rnd(&rng, 4);
        for (int i = 0; i < clusters; i++)
            gen_cluster(&w, &rng);
        vck_memmap_commit(w.mm);
        world_add_configs(&w, configs, N_CONFIGS);
        check_view(&cx, &w, &rng, false);
        cx.what = mutate(&w, &rng);
        check_view(&cx, &w, &rng, false);
        world_free(&w);
    }
}

/* translate() with the section's region, offset and length checked against hand values. */
static void expect_xlat(const struct vck_dispatch *d, uint64_t addr, uint64_t len, bool is_write,
                        enum vck_mem_result res, const struct vck_mr *mr, uint64_t offset,
                        uint64_t xlen)
{
    struct vck_xlat x;
    vck_rcu_read_lock();
    enum vck_mem_result r = vck_dispatch_translate(d, addr, len, is_write, &x);
    cr_expect_eq(r, res, "translate(%#" PRIx64 ", %#" PRIx64 "): result %d, want %d", addr, len, r,
                 res);
    cr_expect_eq(x.section->mr, mr, "translate(%#" PRIx64 "): region %s, want %s", addr,
                 x.section->mr ? vck_mr_name(x.section->mr) : "none",
                 mr ? vck_mr_name(mr) : "none");
    cr_expect_eq(x.offset, offset, "translate(%#" PRIx64 "): offset %#" PRIx64 ", want %#" PRIx64,
                 addr, x.offset, offset);
    cr_expect_eq(x.len, xlen,
                 "translate(%#" PRIx64 ", %#" PRIx64 "): len %#" PRIx64 ", want %#" PRIx64, addr,
                 len, x.len, xlen);
    vck_rcu_read_unlock();
}

Test(dispatch_reference, lengths_at_the_ends_of_the_space)
{
    struct world w;
    world_init(&w);
    world_add_configs(&w, configs, N_CONFIGS);
    struct ctx cx = {.seed = 0, .run = -1, .cfgs = configs};
    uint64_t rng = 5;

    /* One device over the whole space: lengths up to 2^64 - addr. */
    struct vck_mr *all = world_mmio(&w, VCK_MR_SIZE_FULL, &dummy_ops, 0, 0);
    vck_mr_add_subregion(w.root, 0, all, 0);
    cx.what = "a device over the whole space";
    check_view(&cx, &w, &rng, false);
    for (int i = 0; i < w.n_d; i++) {
        expect_xlat(w.d[i], 0, UINT64_MAX, false, VCK_MEM_OK, all, 0, UINT64_MAX);
        expect_xlat(w.d[i], 5, UINT64_MAX, true, VCK_MEM_OK, all, 5, UINT64_MAX - 4);
        expect_xlat(w.d[i], UINT64_MAX, 10, false, VCK_MEM_OK, all, UINT64_MAX, 1);
    }
    vck_mr_del_subregion(w.root, all);

    /* RAM low, a byte at the very top, and unassigned space between. */
    struct vck_mr *low = world_ram_fake(&w, 0x1000), *byte = world_ram_fake(&w, 1);
    vck_mr_add_subregion(w.root, 0x1000, low, 0);
    vck_mr_add_subregion(w.root, UINT64_MAX, byte, 0);
    cx.what = "RAM low and a byte at the top";
    check_view(&cx, &w, &rng, false);
    for (int i = 0; i < w.n_d; i++) {
        expect_xlat(w.d[i], 0, 0x10000, false, VCK_MEM_DECODE_ERROR, NULL, 0, 0x1000);
        expect_xlat(w.d[i], 0x1ffe, 100, false, VCK_MEM_OK, low, 0xffe, 2);
        expect_xlat(w.d[i], 0x2000, UINT64_MAX, false, VCK_MEM_DECODE_ERROR, NULL, 0x2000,
                    UINT64_MAX - 0x2000);
        expect_xlat(w.d[i], UINT64_MAX - 4, 100, false, VCK_MEM_DECODE_ERROR, NULL, UINT64_MAX - 4,
                    4);
        expect_xlat(w.d[i], UINT64_MAX, UINT64_MAX, true, VCK_MEM_OK, byte, 0, 1);
    }
    vck_mr_del_subregion(w.root, byte);
    cx.what = "RAM low only";
    check_view(&cx, &w, &rng, false);
    for (int i = 0; i < w.n_d; i++)
        expect_xlat(w.d[i], UINT64_MAX - 4, 100, false, VCK_MEM_DECODE_ERROR, NULL, UINT64_MAX - 4,
                    5);
    world_free(&w);
}

Test(dispatch_reference, zero_size_regions_map_nothing)
{
    struct world w;
    world_init(&w);
    world_add_configs(&w, configs, N_CONFIGS);
    struct ctx cx = {.seed = 0, .run = -1, .what = "zero-size regions", .cfgs = configs};
    uint64_t rng = 6;
    vck_memmap_begin(w.mm);
    vck_mr_add_subregion(w.root, 0x1000, world_ram_fake(&w, 0), 5);
    vck_mr_add_subregion(w.root, 0x2000, world_mmio(&w, 0, &dummy_ops, 0, 0), 5);
    struct vck_mr *c = world_container(&w, 0);
    vck_mr_add_subregion(c, 0, world_ram_fake(&w, 0x100), 0);
    vck_mr_add_subregion(w.root, 0x3000, c, 5);
    struct vck_mr *big = world_ram_fake(&w, 0x10000);
    vck_mr_add_subregion(w.root, 0x10000, big, 0);
    vck_mr_add_subregion(w.root, 0x10800, world_alias(&w, big, 0, 0), 9);
    vck_mr_add_subregion(w.root, 0x10900, world_mmio(&w, 0, &dummy_ops, 0, 0), 9);
    vck_memmap_commit(w.mm);
    check_view(&cx, &w, &rng, false);
    size_t n;
    vck_rcu_read_lock();
    vck_flatview_ranges(vck_as_view(w.as[0]), &n);
    vck_rcu_read_unlock();
    cr_assert_eq(n, 1, "zero-size regions made ranges");
    for (int i = 0; i < w.n_d; i++) {
        expect_xlat(w.d[i], 0x1000, 1, false, VCK_MEM_DECODE_ERROR, NULL, 0x1000, 1);
        expect_xlat(w.d[i], 0x2000, 0x100, false, VCK_MEM_DECODE_ERROR, NULL, 0x2000, 0x100);
        expect_xlat(w.d[i], 0x3000, 0x100, false, VCK_MEM_DECODE_ERROR, NULL, 0x3000, 0x100);
        expect_xlat(w.d[i], 0x10800, 0x100, false, VCK_MEM_OK, big, 0x800, 0x100);
        expect_xlat(w.d[i], 0x10900, 0x100000, false, VCK_MEM_OK, big, 0x900, 0xf700);
    }
    world_free(&w);
}
