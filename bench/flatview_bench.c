/*
 * The memory map (vcpukit/rcu.h, rcu/memory.c): what a commit costs the writer, what getting a
 * view and looking an address up in it cost a reader, and how much retired memory a storm of
 * commits leaves awaiting reclamation.
 *
 *  flatview/commit_one/{incremental,full}/N  one region toggled, then committed
 *  flatview/commit_all/{incremental,full}/N  the container of every device moved, then committed
 *  flatview/view/{rcu,ref}                   the current view, in a section or with a reference
 *  flatview/find/N                           vck_flatview_find() in a view of about N ranges
 *  flatview/commit_storm/{bounded,unbounded} commit_one on 1000 regions beside a reader that
 *                                            stays in long read-side sections
 *
 * incremental is the memmap's default rendering, full is VCK_MEMMAP_FULL_RENDER (every commit
 * rendered from scratch, as QEMU does): the peer that incremental rendering must beat. bounded
 * is the default pending_limit, unbounded pending_limit SIZE_MAX.
 *
 * The map (struct map) is one machine's: a root container over the whole space holding one
 * big RAM at 2 GiB, a 2 GiB "bus" container at 0 (priority 1: where it overlaps the RAM, after
 * commit_all moved it, its holes show the RAM) holding the N small devices, an alias of the RAM's
 * first MiB at 0 (a reset vector) and an alias of the first sub-container mirrored above 8 GiB. The
 * devices are MMIO, every fourth one RAM, 4 to 64 KiB each, at random page-aligned places within N
 * equal slots spread over [16 MiB, 2 GiB); every other group of CLUSTER consecutive devices sits in
 * a sub-container of its own (a device with several windows), one level deeper. No two devices
 * overlap (the boot alias covers only the bus's empty first MiB), so the view holds about N + 3
 * ranges.
 *
 * Every benchmark run builds its map in one transaction before its timer starts and tears it
 * down after it stops. Each timed commit changes something visible, so each publishes a new
 * view: the run fails if one did not. The commit benchmarks report wall-clock time, which
 * includes any wait for reclamation a commit makes once retired views pass pending_limit
 * (counted in wait_frac: the fraction of commits that waited); their CPU time is the writer's
 * own work, rendering and publishing. Each such wait took about 10 ms when first measured
 * (2026-12-01), a vck_rcu_barrier() behind liburcu's callback thread, which sleeps 10 ms
 * between batches: from about 1000 ranges on, waits were most of a commit's wall time, for
 * incremental and full alike. incr_frac is the fraction of commits the memmap says it rendered
 * incrementally; ranges, how many ranges the view had before the first timed commit.
 *
 * commit_one toggles regions in pairs (disable, then enable the same one), taken in a random
 * order, so the map is back to its full state every other commit. commit_all moves the bus by
 * 64 KiB and back: every device range changes address.
 */
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <vcpukit/rcu.h>

#include "dispatch_layout.h"
#include "suites.h"
#include "vck_bench.h"

#define PAGE        0x1000ull
#define DEV_BASE    0x01000000ull  /* devices from 16 MiB ... */
#define DEV_END     0x7f000000ull  /* ... to 16 MiB below the bus's end */
#define BUS_SIZE    0x80000000ull  /* the bus container, at 0 */
#define BUS_SHIFT   0x10000ull     /* commit_all moves the bus by this and back */
#define RAM_BASE    0x80000000ull  /* the big RAM */
#define RAM_SIZE    (1ull << 30)   /* untouched: its backing costs no memory */
#define BOOT_SIZE   (1ull << 20)   /* the alias of the RAM's start at address 0 */
#define MIRROR_BASE 0x200000000ull /* the alias of the first sub-container */
#define CLUSTER     8              /* devices per sub-container */
#define DEV_MAX     (64 * 1024)    /* largest device */

#define ORDER_LEN 4096u      /* random device indices, cycled through by the commit loops */
#define ADDRS_LEN (1u << 16) /* random addresses, cycled through by find */

#define VIEW_REGIONS  1000 /* the map of flatview/view */
#define STORM_REGIONS 1000
/* How long a commit_storm reader stays in each read-side section. */
#define STORM_SECTION_NS 20000000ull

struct variant {
    unsigned flags;
    size_t pending_limit;
};

static struct variant incremental = {.flags = 0};
static struct variant full = {.flags = VCK_MEMMAP_FULL_RENDER};
static struct variant bounded = {.pending_limit = 0};
static struct variant unbounded = {.pending_limit = SIZE_MAX};

struct map {
    struct vck_memmap *mm;
    struct vck_as *as;
    struct vck_mr *root, *bus, *ram, *boot, *mirror;
    struct vck_mr **devices; /* n: the leaves, MMIO or RAM */
    struct vck_mr **clusters;
    size_t n, n_clusters;
};

/* Host memory of every small RAM device: nothing reads it, so they may all share it. */
static unsigned char small_ram[DEV_MAX];

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "flatview_bench: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

static void *check_alloc(void *p, const char *what)
{
    if (!p) {
        fprintf(stderr, "flatview_bench: out of memory creating %s\n", what);
        abort();
    }
    return p;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the map ------------------------------------------------------------------------------ */

static struct vck_mr *new_device(struct map *m, size_t i, uint64_t size)
{
    char name[32];
    snprintf(name, sizeof(name), "dev%zu", i);
    struct vck_mr *mr = i % 4 == 3 ? vck_mr_new_ram_ptr(m->mm, name, size, small_ram)
                                   : vck_mr_new_mmio(m->mm, name, size, &dlayout_dev_ops, NULL);
    return check_alloc(mr, name);
}

/* A registered writer thread, outside read-side sections. @var NULL: the defaults. */
static struct map *map_build(size_t n, const struct variant *var)
{
    const uint64_t slot = ((DEV_END - DEV_BASE) / n) & ~(PAGE - 1);
    if (n == 0 || slot < 2 * PAGE) {
        fprintf(stderr, "flatview_bench: %zu devices do not fit\n", n);
        abort();
    }
    struct vck_memmap_options opts = {0};
    if (var) {
        opts.flags = var->flags;
        opts.pending_limit = var->pending_limit;
    }
    struct map *m = xcalloc(1, sizeof(*m));
    m->n = n;
    m->devices = xcalloc(n, sizeof(*m->devices));
    m->clusters = xcalloc(n / CLUSTER + 1, sizeof(*m->clusters));
    m->mm = check_alloc(vck_memmap_new(&opts), "the memmap");
    uint64_t rng = 0xf1a7f1e3u + n;

    vck_memmap_begin(m->mm);
    m->root = check_alloc(vck_mr_new_container(m->mm, "root", VCK_MR_SIZE_FULL), "root");
    m->ram = check_alloc(vck_mr_new_ram(m->mm, "ram", RAM_SIZE), "ram");
    vck_mr_add_subregion(m->root, RAM_BASE, m->ram, 0);
    m->bus = check_alloc(vck_mr_new_container(m->mm, "bus", BUS_SIZE), "bus");
    vck_mr_add_subregion(m->root, 0, m->bus, 1);
    for (size_t first = 0; first < n; first += CLUSTER) {
        const size_t count = n - first < CLUSTER ? n - first : CLUSTER;
        struct vck_mr *parent = m->bus;
        uint64_t parent_base = 0;
        if ((first / CLUSTER) % 2 == 1) {
            char name[32];
            snprintf(name, sizeof(name), "cluster%zu", first / CLUSTER);
            parent = check_alloc(vck_mr_new_container(m->mm, name, count * slot), name);
            parent_base = DEV_BASE + first * slot;
            vck_mr_add_subregion(m->bus, parent_base, parent, 0);
            m->clusters[m->n_clusters++] = parent;
        }
        for (size_t i = first; i < first + count; i++) {
            uint64_t size = PAGE << (vck_bench_rand(&rng) % 5); /* 4 to 64 KiB */
            while (size > slot / 2)
                size >>= 1;
            const uint64_t places = (slot - size) / PAGE + 1;
            const uint64_t addr = DEV_BASE + i * slot + (vck_bench_rand(&rng) % places) * PAGE;
            m->devices[i] = new_device(m, i, size);
            vck_mr_add_subregion(parent, addr - parent_base, m->devices[i], 0);
        }
    }
    m->boot = check_alloc(vck_mr_new_alias(m->mm, "boot", m->ram, 0, BOOT_SIZE), "boot");
    vck_mr_add_subregion(m->root, 0, m->boot, 2);
    if (m->n_clusters) {
        struct vck_mr *target = m->clusters[0];
        m->mirror = check_alloc(vck_mr_new_alias(m->mm, "mirror", target, 0, vck_mr_size(target)),
                                "mirror");
        vck_mr_add_subregion(m->root, MIRROR_BASE, m->mirror, 0);
    }
    vck_memmap_commit(m->mm);

    m->as = check_alloc(vck_as_new(m->mm, "memory", m->root), "the address space");
    return m;
}

static void unmap_destroy(struct vck_mr *mr)
{
    vck_mr_del_subregion(vck_mr_container(mr), mr);
    vck_mr_destroy(mr);
}

/* The thread that built @m, outside read-side sections. */
static void map_free(struct map *m)
{
    vck_as_destroy(m->as);
    /* Aliases before their targets, children before their containers. */
    if (m->mirror)
        unmap_destroy(m->mirror);
    unmap_destroy(m->boot);
    for (size_t i = 0; i < m->n; i++)
        unmap_destroy(m->devices[i]);
    for (size_t i = 0; i < m->n_clusters; i++)
        unmap_destroy(m->clusters[i]);
    unmap_destroy(m->bus);
    unmap_destroy(m->ram);
    vck_mr_destroy(m->root);
    vck_memmap_free(m->mm);
    free(m->clusters);
    free(m->devices);
    free(m);
}

/* ORDER_LEN random indices below @n. */
static uint32_t *random_indices(size_t n, uint64_t seed)
{
    uint32_t *v = xcalloc(ORDER_LEN, sizeof(*v));
    for (size_t i = 0; i < ORDER_LEN; i++)
        v[i] = (uint32_t)(vck_bench_rand(&seed) % n);
    return v;
}

/* ADDRS_LEN addresses, each in a range of @view picked at random. */
static uint64_t *random_addresses(const struct vck_flatview *view, uint64_t seed)
{
    size_t n_ranges;
    const struct vck_flat_range *ranges = vck_flatview_ranges(view, &n_ranges);
    if (n_ranges == 0) {
        fprintf(stderr, "flatview_bench: an empty view\n");
        abort();
    }
    uint64_t *v = xcalloc(ADDRS_LEN, sizeof(*v));
    for (size_t i = 0; i < ADDRS_LEN; i++) {
        const struct vck_flat_range *r = &ranges[vck_bench_rand(&seed) % n_ranges];
        const uint64_t span = r->last - r->start; /* bytes - 1: may be 2^64 - 1 */
        const uint64_t x = vck_bench_rand(&seed);
        v[i] = r->start + (span == UINT64_MAX ? x : x % (span + 1));
    }
    return v;
}

static size_t view_ranges(const struct map *m)
{
    const struct vck_flatview *view = vck_as_view_get(m->as);
    size_t n_ranges;
    vck_flatview_ranges(view, &n_ranges);
    vck_flatview_unref(view);
    return n_ranges;
}

/* ---- commits ------------------------------------------------------------------------------ */

/* The counters of a run of @iters timed commits, each of which must have published a view;
 * @ranges: how many the view had before the first. */
static void report_commits(struct vck_bench_state *st, size_t ranges,
                           const struct vck_memmap_stats *before,
                           const struct vck_memmap_stats *after, uint64_t iters)
{
    const double commits = iters ? (double)iters : 1;
    vck_bench_counter(st, "ranges", (double)ranges, false);
    vck_bench_counter(st, "incr_frac",
                      (double)(after->renders_incremental - before->renders_incremental) / commits,
                      false);
    vck_bench_counter(st, "wait_frac",
                      (double)(after->reclaim_waits - before->reclaim_waits) / commits, false);
    vck_bench_items(st, (int64_t)iters);
    if (after->views_published - before->views_published != iters)
        vck_bench_fail(st, "a timed commit did not publish exactly one view");
}

/* @all: move the bus, else toggle one device. Always inlined, so the choice is constant. */
static inline __attribute__((always_inline)) void commit_loop(struct vck_bench_state *st, bool all)
{
    const struct variant *var = vck_bench_arg(st);
    const size_t n = (size_t)vck_bench_range(st);
    vck_rcu_register_thread();
    struct map *m = map_build(n, var);
    uint32_t *order = random_indices(n, 0xc0ffee00u + n);
    const size_t ranges = view_ranges(m);
    struct vck_memmap_stats before, after;
    vck_memmap_get_stats(m->mm, &before);

    uint64_t iters = vck_bench_begin(st);
    for (uint64_t it = 0; it < iters; it++) {
        if (all)
            vck_mr_set_address(m->bus, it & 1 ? 0 : BUS_SHIFT);
        else
            vck_mr_set_enabled(m->devices[order[(it >> 1) % ORDER_LEN]], it & 1);
    }
    vck_bench_end(st);

    vck_memmap_get_stats(m->mm, &after);
    report_commits(st, ranges, &before, &after, iters);
    free(order);
    map_free(m);
    vck_rcu_unregister_thread();
}

static void commit_one(struct vck_bench_state *st)
{
    commit_loop(st, false);
}

static void commit_all(struct vck_bench_state *st)
{
    commit_loop(st, true);
}

/* ---- readers ------------------------------------------------------------------------------ */

/* What the threads of one multi-threaded run share: built by thread 0 before vck_bench_begin(). */
struct reader_setup {
    struct map *map;
    const struct vck_flatview *view; /* a reference, held by thread 0 for everyone */
    uint64_t *addrs;                 /* ADDRS_LEN addresses inside ranges of view */
    uint64_t generation;             /* of view */
};

static struct reader_setup *shared_setup;

static struct reader_setup *reader_setup_new(size_t n)
{
    struct reader_setup *s = xcalloc(1, sizeof(*s));
    s->map = map_build(n, NULL);
    s->view = vck_as_view_get(s->map->as);
    s->addrs = random_addresses(s->view, 0xadd0000u + n);
    s->generation = vck_flatview_generation(s->view);
    return s;
}

static void reader_setup_free(struct reader_setup *s)
{
    vck_flatview_unref(s->view);
    free(s->addrs);
    map_free(s->map);
    free(s);
}

/* @ref: vck_as_view_get() and vck_flatview_unref(), else a read-side section around
 * vck_as_view(). Nobody commits: every view seen is the same. */
static inline __attribute__((always_inline)) void view_loop(struct vck_bench_state *st, bool ref)
{
    vck_rcu_register_thread();
    if (vck_bench_thread_index(st) == 0)
        shared_setup = reader_setup_new(VIEW_REGIONS);
    uint64_t iters = vck_bench_begin(st);
    const struct reader_setup *s = shared_setup; /* begin is a barrier: thread 0 set it before */
    const struct vck_as *as = s->map->as;
    uint64_t sum = 0;
    for (uint64_t it = 0; it < iters; it++) {
        if (ref) {
            const struct vck_flatview *v = vck_as_view_get(as);
            sum += vck_flatview_generation(v);
            vck_flatview_unref(v);
        } else {
            vck_rcu_read_lock();
            sum += vck_flatview_generation(vck_as_view(as));
            vck_rcu_read_unlock();
        }
    }
    vck_bench_end(st);
    vck_bench_keep(sum);
    vck_bench_items(st, (int64_t)iters);
    if (sum != iters * s->generation)
        vck_bench_fail(st, "a reader saw another view than the current one");
    if (vck_bench_thread_index(st) == 0)
        reader_setup_free(shared_setup); /* end is a barrier too: every thread is done */
    vck_rcu_unregister_thread();
}

static void view_rcu(struct vck_bench_state *st)
{
    view_loop(st, false);
}

static void view_ref(struct vck_bench_state *st)
{
    view_loop(st, true);
}

/* Looks up random addresses, all inside some range, in a view the setup holds a reference on:
 * no read-side section needed. */
static void find(struct vck_bench_state *st)
{
    vck_rcu_register_thread();
    if (vck_bench_thread_index(st) == 0)
        shared_setup = reader_setup_new((size_t)vck_bench_range(st));
    uint64_t iters = vck_bench_begin(st);
    const struct reader_setup *s = shared_setup;
    const struct vck_flatview *view = s->view;
    const uint64_t *addrs = s->addrs;
    /* Threads start at different places in the address sequence. */
    size_t i = ADDRS_LEN / (size_t)vck_bench_threads(st) * (size_t)vck_bench_thread_index(st);
    uint64_t hits = 0;
    for (uint64_t it = 0; it < iters; it++) {
        const uint64_t addr = addrs[i];
        i = (i + 1) % ADDRS_LEN;
        const struct vck_flat_range *r = vck_flatview_find(view, addr);
        hits += r && r->start <= addr && addr <= r->last;
        vck_bench_keep(r);
    }
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    if (vck_bench_thread_index(st) == 0) {
        size_t n_ranges;
        vck_flatview_ranges(view, &n_ranges);
        vck_bench_counter(st, "ranges", (double)n_ranges, false);
    }
    if (hits != iters)
        vck_bench_fail(st, "a find missed a range that contains its address");
    if (vck_bench_thread_index(st) == 0)
        reader_setup_free(shared_setup);
    vck_rcu_unregister_thread();
}

/* ---- commit storm ------------------------------------------------------------------------- */

/*
 * A vCPU that keeps its view for long: it enters a section, takes the current view and looks
 * addresses up in it for STORM_SECTION_NS, leaves, and at once enters the next section. Every
 * grace period waits for the section it started in, so a view the writer retires is reclaimed
 * one to two sections later; the writer, meanwhile, retires one view per commit. Unbounded, what
 * awaits reclamation also grew with the run's length: the reader, the writer and liburcu's
 * callback thread share 2 cores, and the callback thread fell behind (a 0.5 s run peaked at
 * 47 MB, a 1 s run at 101 MB); bounded stays at the 4 MiB limit plus one view.
 */
struct storm_reader {
    const struct vck_as *as;
    const uint64_t *addrs;
    int stop;   /* set by the writer (relaxed: pthread_join() orders what follows) */
    int inside; /* set by the reader once in its first section (release; the writer's acquire
                 * wait pairs with it) */
    uint64_t sections, hits;
};

static void *storm_reader_main(void *arg)
{
    struct storm_reader *r = arg;
    vck_rcu_register_thread();
    size_t i = 0;
    uint64_t hits = 0, sections = 0;
    while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
        vck_rcu_read_lock();
        const struct vck_flatview *view = vck_as_view(r->as);
        __atomic_store_n(&r->inside, 1, __ATOMIC_RELEASE);
        const uint64_t deadline = now_ns() + STORM_SECTION_NS;
        do {
            for (int k = 0; k < 64; k++) {
                hits += vck_flatview_find(view, r->addrs[i]) != NULL;
                i = (i + 1) % ADDRS_LEN;
            }
        } while (now_ns() < deadline && !__atomic_load_n(&r->stop, __ATOMIC_RELAXED));
        vck_rcu_read_unlock();
        sections++;
    }
    r->hits = hits;
    r->sections = sections;
    vck_rcu_unregister_thread();
    return NULL;
}

static void commit_storm(struct vck_bench_state *st)
{
    const struct variant *var = vck_bench_arg(st);
    vck_rcu_register_thread();
    struct map *m = map_build(STORM_REGIONS, var);
    uint32_t *order = random_indices(STORM_REGIONS, 0x5707f00du);
    const struct vck_flatview *first = vck_as_view_get(m->as);
    uint64_t *addrs = random_addresses(first, 0x5707add0u);
    vck_flatview_unref(first);

    struct storm_reader reader = {.as = m->as, .addrs = addrs};
    pthread_t thread;
    if (pthread_create(&thread, NULL, storm_reader_main, &reader) != 0) {
        fprintf(stderr, "flatview_bench: pthread_create failed\n");
        abort();
    }
    while (!__atomic_load_n(&reader.inside, __ATOMIC_ACQUIRE))
        sched_yield();
    struct vck_memmap_stats before, after;
    vck_memmap_get_stats(m->mm, &before);

    uint64_t iters = vck_bench_begin(st);
    for (uint64_t it = 0; it < iters; it++)
        vck_mr_set_enabled(m->devices[order[(it >> 1) % ORDER_LEN]], it & 1);
    vck_bench_end(st);

    vck_memmap_get_stats(m->mm, &after);
    __atomic_store_n(&reader.stop, 1, __ATOMIC_RELAXED);
    pthread_join(thread, NULL);
    vck_bench_counter(st, "commits", (double)iters, true);
    vck_bench_counter(st, "peak_pending_bytes", (double)after.peak_pending_bytes, false);
    vck_bench_counter(st, "reclaim_waits", (double)(after.reclaim_waits - before.reclaim_waits),
                      false);
    vck_bench_counter(st, "reader_sections", (double)reader.sections, false);
    vck_bench_items(st, (int64_t)iters);
    if (after.views_published - before.views_published != iters)
        vck_bench_fail(st, "a timed commit did not publish exactly one view");
    free(addrs);
    free(order);
    map_free(m);
    vck_rcu_unregister_thread();
}

/* ---- registration ------------------------------------------------------------------------- */

void vck_bench_register_flatview(void)
{
    static const struct {
        const char *name;
        vck_bench_fn *fn;
        struct variant *var;
    } commits[] = {
        {"flatview/commit_one/incremental", commit_one, &incremental},
        {"flatview/commit_one/full", commit_one, &full},
        {"flatview/commit_all/incremental", commit_all, &incremental},
        {"flatview/commit_all/full", commit_all, &full},
    };
    for (size_t i = 0; i < sizeof(commits) / sizeof(commits[0]); i++)
        vck_bench_register(&(struct vck_bench_def){.name = commits[i].name,
                                                   .fn = commits[i].fn,
                                                   .arg = commits[i].var,
                                                   .args = {10, 100, 1000, 10000},
                                                   .n_args = 4,
                                                   .real_time = true});
    for (int threads = 1; threads <= 2; threads++) {
        vck_bench_register(&(struct vck_bench_def){
            .name = "flatview/view/rcu", .fn = view_rcu, .threads = threads});
        vck_bench_register(&(struct vck_bench_def){
            .name = "flatview/view/ref", .fn = view_ref, .threads = threads});
        vck_bench_register(&(struct vck_bench_def){.name = "flatview/find",
                                                   .fn = find,
                                                   .threads = threads,
                                                   .args = {10, 100, 1000, 10000},
                                                   .n_args = 4});
    }
    vck_bench_register(&(struct vck_bench_def){.name = "flatview/commit_storm/bounded",
                                               .fn = commit_storm,
                                               .arg = &bounded,
                                               .real_time = true});
    vck_bench_register(&(struct vck_bench_def){.name = "flatview/commit_storm/unbounded",
                                               .fn = commit_storm,
                                               .arg = &unbounded,
                                               .real_time = true});
}
