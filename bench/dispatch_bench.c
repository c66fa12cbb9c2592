/*
 * dispatch (vcpukit/dispatch.h): what translating a physical address costs a vCPU, beside the
 * obvious alternative, a binary search over the flat view's ranges (vck_flatview_find); what
 * building the page map adds to a commit; and what a 4-byte guest RAM read costs through a
 * memory-region cache and through the dispatch.
 *
 *  dispatch/translate_mru/{dispatch,bsearch}           one address over and over, one read-side
 *                                                      section per translation
 *  dispatch/translate_mru/{dispatch,bsearch}_in_section  the same inside one long section
 *  dispatch/translate_random/{dispatch,bsearch}/N      random addresses inside the N ranges
 *  dispatch/build/{with_map,view_only}/N               a commit that publishes a new view, with a
 *                                                      dispatch attached or without
 *  dispatch/read4/{mrc,dispatch,load,bsearch}          4 bytes of guest RAM: vck_mrc_read,
 *                                                      vck_dispatch_read, vck_dispatch_load, and
 *                                                      find + memcpy
 *
 * The maps are dispatch_layout.h's (a RAM and N - 1 devices of mixed kinds; the MRU benchmarks
 * and read4 use N = 1000 and 100), built once on first use and kept. The bsearch peer answers
 * what a translation answers (the range, the offset in its region, the bytes left in it, the
 * host address for RAM) from the view the address space publishes, in the same kind of
 * read-side section, so the two differ only in how they find the range. Random addresses
 * come from a table of 64 Ki, each inside a range chosen uniformly (so a hit in the MRU section
 * has probability about 1/N).
 *
 * build toggles devices in pairs (disable, then enable the same one, in a random order), so the
 * map is back to its full state every other commit and every commit publishes a view (the run
 * fails if one did not). The memmap's pending limit is off; every 256 commits the timer stops
 * for a look at the pending bytes and, past 64 MiB, a vck_rcu_barrier() (10-20 ms: liburcu's
 * callback thread polls every 10 ms), so the figure is the commit itself (render, map build,
 * publish), not reclamation waits; liburcu's callback thread frees views meanwhile on the
 * other core. with_map minus view_only is the cost of the page map build.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/rcu.h>

#include "dispatch_layout.h"
#include "suites.h"
#include "vck_bench.h"

#define MRU_SECTIONS      1000
#define READ4_SECTIONS    100
#define ORDER_LEN         4096u       /* random device indices, cycled through by build */
#define BUILD_BATCH       256         /* build: commits between looks at the pending bytes ... */
#define BUILD_PENDING_MAX (64u << 20) /* ... and above this many, an (untimed) reclamation */

static const int64_t sizes[] = {10, 16, 100, 1000, 10000};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

/* [with a page map][size]; built on first use, kept to the end of the process. */
static struct dlayout *layouts[2][N_SIZES];

static struct dlayout *get_layout(size_t n, bool with_map)
{
    for (size_t i = 0; i < N_SIZES; i++) {
        if ((size_t)sizes[i] != n)
            continue;
        if (!layouts[with_map][i])
            layouts[with_map][i] = dlayout_new(n, with_map, SIZE_MAX, 42 + n);
        return layouts[with_map][i];
    }
    abort();
}

/* What a translation answers, found by binary search over the current view's ranges. */
struct bxlat {
    const struct vck_flat_range *range;
    uint64_t offset, len;
    void *host;
};

static inline enum vck_mem_result bsearch_translate(const struct vck_as *as, uint64_t addr,
                                                    uint64_t len, struct bxlat *x)
{
    const struct vck_flat_range *r = vck_flatview_find(vck_as_view(as), addr);
    x->range = r;
    if (!r) {
        x->offset = addr;
        x->len = len;
        x->host = NULL;
        return VCK_MEM_DECODE_ERROR;
    }
    uint64_t room = r->last - addr + 1;
    x->offset = r->offset + (addr - r->start);
    x->len = room && room < len ? room : len;
    uint8_t *base = vck_mr_host(r->mr);
    x->host = base ? base + x->offset : NULL;
    return VCK_MEM_OK;
}

/*
 * The translation loops. @random: the address table, else l->mru_addr; @one_section: one
 * read-side section around the whole loop, else one per translation.
 */
static inline __attribute__((always_inline)) void
translate_loop(struct vck_bench_state *st, size_t n, bool bsearch, bool random, bool one_section)
{
    vck_rcu_register_thread();
    struct dlayout *l = get_layout(n, true);
    const uint64_t *addrs = l->addrs;
    const uint64_t mru = l->mru_addr;
    uint64_t ok = 0;
    uint64_t iters = vck_bench_begin(st);
    if (one_section)
        vck_rcu_read_lock();
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t a = random ? addrs[i & (DLAYOUT_ADDRS - 1)] : mru;
        if (!one_section)
            vck_rcu_read_lock();
        if (bsearch) {
            struct bxlat x;
            ok += bsearch_translate(l->as, a, 4, &x) == VCK_MEM_OK;
            vck_bench_keep(x.host);
            vck_bench_keep(x.len);
        } else {
            struct vck_xlat x;
            ok += vck_dispatch_translate(l->d, a, 4, false, &x) == VCK_MEM_OK;
            vck_bench_keep(x.host);
            vck_bench_keep(x.len);
        }
        if (!one_section)
            vck_rcu_read_unlock();
    }
    if (one_section)
        vck_rcu_read_unlock();
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    if (ok != iters)
        vck_bench_fail(st, "a translation of an assigned address failed");
    vck_rcu_unregister_thread();
}

static void translate_mru_dispatch(struct vck_bench_state *st)
{
    translate_loop(st, MRU_SECTIONS, false, false, false);
}

static void translate_mru_bsearch(struct vck_bench_state *st)
{
    translate_loop(st, MRU_SECTIONS, true, false, false);
}

static void translate_mru_dispatch_in_section(struct vck_bench_state *st)
{
    translate_loop(st, MRU_SECTIONS, false, false, true);
}

static void translate_mru_bsearch_in_section(struct vck_bench_state *st)
{
    translate_loop(st, MRU_SECTIONS, true, false, true);
}

static void translate_random_dispatch(struct vck_bench_state *st)
{
    translate_loop(st, (size_t)vck_bench_range(st), false, true, false);
}

static void translate_random_bsearch(struct vck_bench_state *st)
{
    translate_loop(st, (size_t)vck_bench_range(st), true, true, false);
}

static void build(struct vck_bench_state *st, bool with_map)
{
    vck_rcu_register_thread();
    size_t n = (size_t)vck_bench_range(st);
    struct dlayout *l = get_layout(n, with_map);
    uint32_t *order = malloc(ORDER_LEN * sizeof(*order));
    if (!order)
        abort();
    uint64_t seed = n;
    for (uint32_t i = 0; i < ORDER_LEN; i++)
        order[i] = (uint32_t)(vck_bench_rand(&seed) % l->n_devices);
    struct vck_memmap_stats before, after;
    vck_memmap_get_stats(l->mm, &before);
    struct vck_mr *off = NULL; /* the device disabled by the last commit, if any */
    uint64_t reclaims = 0;
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        if (off) {
            vck_mr_set_enabled(off, true);
            off = NULL;
        } else {
            off = l->devices[order[(i / 2) % ORDER_LEN]];
            vck_mr_set_enabled(off, false);
        }
        if (i % BUILD_BATCH == BUILD_BATCH - 1) {
            vck_bench_pause(st);
            struct vck_memmap_stats now;
            vck_memmap_get_stats(l->mm, &now);
            if (now.pending_bytes > BUILD_PENDING_MAX) {
                vck_rcu_barrier();
                reclaims++;
            }
            vck_bench_resume(st);
        }
    }
    vck_bench_end(st);
    if (off)
        vck_mr_set_enabled(off, true);
    vck_memmap_get_stats(l->mm, &after);
    vck_rcu_barrier();
    vck_bench_items(st, (int64_t)iters);
    vck_bench_counter(st, "reclaims", (double)reclaims, false);
    if (after.views_published - before.views_published < iters)
        vck_bench_fail(st, "a commit published no view");
    if (with_map) {
        struct vck_pagemap_stats ps;
        const struct vck_flatview *v = vck_as_view_get(l->as);
        vck_dispatch_map_stats(l->d, v, &ps);
        vck_flatview_unref(v);
        vck_bench_counter(st, "map_KiB", (double)ps.bytes / 1024.0, false);
        vck_bench_counter(st, "nodes", (double)ps.nodes, false);
        vck_bench_counter(st, "subpages", (double)ps.subpages, false);
    }
    free(order);
    vck_rcu_unregister_thread();
}

static void build_with_map(struct vck_bench_state *st)
{
    build(st, true);
}

static void build_view_only(struct vck_bench_state *st)
{
    build(st, false);
}

enum read4_kind { READ4_MRC, READ4_DISPATCH, READ4_LOAD, READ4_BSEARCH };

/* 4-byte reads walking the first 4 KiB of a small RAM (all MRU hits for the dispatch). */
static inline __attribute__((always_inline)) void read4(struct vck_bench_state *st,
                                                        enum read4_kind kind)
{
    vck_rcu_register_thread();
    struct dlayout *l = get_layout(READ4_SECTIONS, true);
    const uint64_t base = l->ram_addr;
    static const uint8_t zeros[4096];
    if (vck_dispatch_write(l->d, base, zeros, sizeof(zeros)) != VCK_MEM_OK) {
        vck_bench_fail(st, "the RAM is not writable");
        vck_rcu_unregister_thread();
        return;
    }
    struct vck_mrc c;
    vck_mrc_init(&c, l->d, base, 4096, false);
    if (!c.host) {
        vck_bench_fail(st, "the cache is not direct");
        vck_mrc_destroy(&c);
        vck_rcu_unregister_thread();
        return;
    }
    uint64_t bad = 0;
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t off = (i * 4) & 4095;
        uint32_t v32 = 0;
        uint64_t v64 = 0;
        switch (kind) {
        case READ4_MRC:
            bad += vck_mrc_read(&c, off, &v32, 4) != VCK_MEM_OK;
            break;
        case READ4_DISPATCH:
            bad += vck_dispatch_read(l->d, base + off, &v32, 4) != VCK_MEM_OK;
            break;
        case READ4_LOAD:
            bad += vck_dispatch_load(l->d, base + off, 4, &v64) != VCK_MEM_OK;
            v32 = (uint32_t)v64;
            break;
        case READ4_BSEARCH: {
            vck_rcu_read_lock();
            const struct vck_flat_range *r = vck_flatview_find(vck_as_view(l->as), base + off);
            if (r)
                memcpy(&v32, (uint8_t *)vck_mr_host(r->mr) + r->offset + (base + off - r->start),
                       4);
            bad += r == NULL;
            vck_rcu_read_unlock();
            break;
        }
        }
        vck_bench_keep(v32);
    }
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    vck_mrc_destroy(&c);
    if (bad)
        vck_bench_fail(st, "a read failed");
    vck_rcu_unregister_thread();
}

static void read4_mrc(struct vck_bench_state *st)
{
    read4(st, READ4_MRC);
}

static void read4_dispatch(struct vck_bench_state *st)
{
    read4(st, READ4_DISPATCH);
}

static void read4_load(struct vck_bench_state *st)
{
    read4(st, READ4_LOAD);
}

static void read4_bsearch(struct vck_bench_state *st)
{
    read4(st, READ4_BSEARCH);
}

void vck_bench_register_dispatch(void)
{
    static const struct {
        const char *name;
        vck_bench_fn *fn;
    } single[] = {
        {"dispatch/translate_mru/dispatch", translate_mru_dispatch},
        {"dispatch/translate_mru/bsearch", translate_mru_bsearch},
        {"dispatch/translate_mru/dispatch_in_section", translate_mru_dispatch_in_section},
        {"dispatch/translate_mru/bsearch_in_section", translate_mru_bsearch_in_section},
        {"dispatch/read4/mrc", read4_mrc},
        {"dispatch/read4/dispatch", read4_dispatch},
        {"dispatch/read4/load", read4_load},
        {"dispatch/read4/bsearch", read4_bsearch},
    };
    for (size_t i = 0; i < sizeof(single) / sizeof(single[0]); i++)
        vck_bench_register(&(struct vck_bench_def){.name = single[i].name, .fn = single[i].fn});

    struct vck_bench_def sized[] = {
        {.name = "dispatch/translate_random/dispatch", .fn = translate_random_dispatch},
        {.name = "dispatch/translate_random/bsearch", .fn = translate_random_bsearch},
        {.name = "dispatch/build/with_map", .fn = build_with_map, .real_time = true},
        {.name = "dispatch/build/view_only", .fn = build_view_only, .real_time = true},
    };
    for (size_t i = 0; i < sizeof(sized) / sizeof(sized[0]); i++) {
        for (size_t k = 0; k < N_SIZES; k++)
            sized[i].args[k] = sizes[k];
        sized[i].n_args = (int)N_SIZES;
        vck_bench_register(&sized[i]);
    }
}
