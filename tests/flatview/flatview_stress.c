/*
 * flatview-stress: readers look addresses up in RCU-published flat views while one writer keeps
 * changing the memory map under them, and every answer is checked against a log of what each
 * view said when it was built.
 *
 * The log. A view builder (vck_as_add_builder) runs on the writer for every new view before it is
 * published and copies its ranges into a log entry, which becomes the view's derived data. So a
 * reader that holds a view of generation g reaches, through vck_flatview_derived(), the log of
 * exactly g: each vck_flatview_find() answer must be the range that log names for the address,
 * field by field, and a reader never mixes two generations in one check. The builder also checks
 * the rendering on the writer (sorted, disjoint, merged, naming live RAM or MMIO regions within
 * their size), generations count up by one, and a listener checks that the region_del /
 * region_add / region_nop calls of each commit transform the old view into the new one.
 *
 * Lifetimes. The memmap runs with VCK_MEMMAP_QUARANTINE, so a reclaimed view is filled with
 * VCK_FLATVIEW_POISON and kept a while before it is freed. Every region carries a tag (for MMIO
 * it is the device, the region's opaque) with {magic, id, ~id, region}; the region's release
 * callback poisons the tag, and RAM backed by the test's own buffers has those poisoned too. Tags,
 * buffers and log entries come from static pools and sit in a quarantine before reuse, so a reader
 * that comes late finds poison rather than freed memory, and every pointer a reader follows is
 * checked to lie in its pool first. Readers check, inside each read-side section, that the view's
 * header is plausible (generation within what the writer built and not older than the last one
 * this reader saw) and stays the same to the end, and that the regions named are alive: a region
 * must outlive every view naming it. Some readers hold a view with vck_as_view_get() across
 * several sections and a short sleep. Each release callback also checks that no view still alive
 * names its region, and at teardown every region must have been released and every log entry
 * freed.
 *
 * Memory. pending_limit is small, the writer commits outside read-side sections, so the memmap's
 * pending bytes must stay below that limit plus a few views' worth of slack (see pending_bound).
 *
 * The writer. One thread applies random changes to a tree of a few dozen regions under a
 * full-size root: RAM (owned backing, and test-owned buffers), MMIO devices, aliases (of terminals,
 * containers and other aliases) and three nested containers; it adds, deletes, moves,
 * re-prioritises, resizes, enables, write-protects and retargets, creates and destroys regions,
 * alone or in transactions (sometimes nested, sometimes unmapping and destroying a region in the
 * same one). Regions sit both near 0 and near 2^64, where ranges end at the last address.
 *
 * The run stops at the first error (the reports say what and where; the seed replays the writer's
 * choices, not the timing). With a memmap that frees views too early a reader may also fault
 * inside vck_flatview_find() before any check sees the poison; outside sanitizer builds a handler
 * then still prints the FAIL line.
 *
 * Exit status: 0 pass, 1 wrong answers or too little progress, 2 bad command line.
 */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vcpukit/rcu.h>

#include "stress.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STRESS_SANITIZED 1
#endif
#endif

enum {
    MAX_READERS = 64,
    MAX_NODES = 48,   /* live regions, root and containers included */
    N_CONTAINERS = 3, /* nodes 1..3, never destroyed (node 0 is the root) */
    INITIAL_REGIONS = 26,

    TAG_POOL = 1024, /* region tags (devices for MMIO) */
    TAG_QUARANTINE = 256,
    RAM_POOL = 96, /* test-owned RAM buffers, each with its tag */
    RAM_QUARANTINE = 32,
    RAM_SLOT = 0x4000,
    LOG_POOL = 8192, /* log entries: one per view not yet reclaimed */
    LOG_QUARANTINE = 1024,

    PENDING_LIMIT = 32 * 1024,
    MAX_REPORTS = 20, /* error messages printed; all are counted */
};

/* Where regions go in the root: the first and the last LOW_SPAN bytes of the 64-bit space. */
static const uint64_t LOW_SPAN = 0x100000;
static const uint64_t CONTAINER_SIZE = 0x40000;

static const uint64_t TAG_LIVE = 0x7a6c17e0c0ffee11ULL;
static const uint64_t TAG_DEAD = 0xdeadbeefdeadbeefULL;
static const uint64_t LOG_LIVE = 0x10610610feedf00dULL;
static const uint64_t LOG_DEAD = 0xdeaddeadfeedf00dULL;

/* ---------------------------------------------------------------------------------------------
 * Errors. Counters are atomics (relaxed: they are only summed, at the end or by the fault
 * handler) so that any thread, the RCU callback thread included, may count.
 */
enum err_kind {
    ERR_VIEW,    /* a view's header implausible, or changed while a reader held it */
    ERR_ANSWER,  /* find / ranges disagree with the log of the same generation */
    ERR_REGION,  /* a region named by a live view is dead or not what it was */
    ERR_WRITER,  /* a rendering, builder or listener contract broken, seen by the writer */
    ERR_MEMORY,  /* pending bytes past the bound, or a pool exhausted by unreclaimed views */
    ERR_RELEASE, /* a release callback too early, twice, or missing */
    ERR_KINDS,
};

static const char *const err_names[ERR_KINDS] = {"view",   "answer", "region",
                                                 "writer", "memory", "release"};

static atomic_uint_fast64_t errors[ERR_KINDS];
static atomic_uint reports;
static uint64_t run_seed; /* for the fault handler */

/*
 * Set at the end of the run, or at the first error: once an invariant has failed the run has
 * failed, and readers that went on would follow more and more poisoned pointers.
 */
static atomic_bool stop;

static void report(enum err_kind kind, const char *fmt, ...)
{
    atomic_fetch_add_explicit(&errors[kind], 1, memory_order_relaxed);
    atomic_store_explicit(&stop, true, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&reports, 1, memory_order_relaxed) >= MAX_REPORTS)
        return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "flatview-stress: %s error: %s\n", err_names[kind], msg);
}

static uint64_t errors_total(void)
{
    uint64_t sum = 0;
    for (int k = 0; k < ERR_KINDS; k++)
        sum += atomic_load_explicit(&errors[k], memory_order_relaxed);
    return sum;
}

/* ---------------------------------------------------------------------------------------------
 * Pools: fixed arrays of slots, a free list and a FIFO quarantine. A released slot is reused
 * only after @quarantine later releases. The caller holds the pool's lock, so that what it writes
 * into the slot is ordered with the pool's other users.
 */
struct pool {
    pthread_mutex_t lock;
    uint32_t quarantine;
    uint32_t *free_list, n_free;
    uint32_t *fifo, fifo_head, fifo_count; /* fifo has quarantine + 1 places */
};

static void pool_init(struct pool *p, uint32_t size, uint32_t quarantine, uint32_t *free_buf,
                      uint32_t *fifo_buf)
{
    pthread_mutex_init(&p->lock, NULL);
    p->quarantine = quarantine;
    p->free_list = free_buf;
    p->fifo = fifo_buf;
    p->n_free = size;
    for (uint32_t i = 0; i < size; i++)
        free_buf[i] = size - 1 - i;
}

static int64_t pool_get__locked(struct pool *p)
{
    return p->n_free ? (int64_t)p->free_list[--p->n_free] : -1;
}

/* Quarantine slot @i; returns the slot that left quarantine (now free), or -1. */
static int64_t pool_put__locked(struct pool *p, uint32_t i)
{
    uint32_t cap = p->quarantine + 1;
    p->fifo[(p->fifo_head + p->fifo_count) % cap] = i;
    if (++p->fifo_count <= p->quarantine)
        return -1;
    uint32_t out = p->fifo[p->fifo_head];
    p->fifo_head = (p->fifo_head + 1) % cap;
    p->fifo_count--;
    p->free_list[p->n_free++] = out;
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * Region tags and devices.
 */
enum node_kind { N_CONTAINER, N_RAM, N_RAM_PTR, N_MMIO, N_ALIAS };

/* Plain fields: under ThreadSanitizer, the memmap's reclamation must order their poisoning after
 * every reader that used them (the same trick as rcu-torture's magic). */
struct tag {
    uint64_t magic;
    uint64_t id;
    uint64_t check; /* ~id while live */
    struct vck_mr *mr;
    enum node_kind kind;
    bool destroyed; /* set by the writer just before vck_mr_destroy() */
};

static struct tag tags[TAG_POOL];
static uint32_t tag_free[TAG_POOL], tag_fifo[TAG_QUARANTINE + 1];
static struct pool tag_pool;

static struct tag ram_tags[RAM_POOL];
static uint64_t ram_bufs[RAM_POOL][RAM_SLOT / 8];
static uint32_t ram_free[RAM_POOL], ram_fifo[RAM_QUARANTINE + 1];
static struct pool ram_pool;

static atomic_uint_fast64_t regions_released;

static bool tag_in_pool(const void *p, const struct tag *base, size_t n)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)base;
    return (uintptr_t)p >= (uintptr_t)base && off < n * sizeof(*base) && off % sizeof(*base) == 0;
}

static bool tag_alive(const struct tag *t, const struct vck_mr *mr)
{
    return t->magic == TAG_LIVE && t->check == ~t->id && t->mr == mr;
}

static uint64_t device_value(uint64_t id, uint64_t offset)
{
    return (id * 0x9e3779b97f4a7c15ULL) ^ offset;
}

static uint64_t ram_word(uint64_t id, uint64_t word)
{
    return (id << 24) ^ word ^ 0xa5a5a5a500000000ULL;
}

static enum vck_mem_result device_read(void *opaque, uint64_t offset, uint64_t *value,
                                       unsigned size)
{
    const struct tag *t = opaque;
    if (size != 8 || t->magic != TAG_LIVE || t->check != ~t->id)
        return VCK_MEM_DEVICE_ERROR;
    *value = device_value(t->id, offset);
    return VCK_MEM_OK;
}

static const struct vck_mr_ops device_ops = {
    .read = device_read,
    .min_access = 1,
    .max_access = 8,
};

/* ---------------------------------------------------------------------------------------------
 * The log: one entry per view, written by the builder under log_pool.lock, poisoned by the
 * builder's free (when the memmap reclaims the view) under the same lock.
 */
struct log_entry {
    uint64_t magic;
    uint64_t gen;
    uint64_t check; /* ~gen while live */
    const struct vck_flatview *view;
    size_t n;
    struct vck_flat_range *ranges; /* malloc'd; freed when the entry leaves quarantine */
};

static struct log_entry log_entries[LOG_POOL];
static uint32_t log_free[LOG_POOL], log_fifo[LOG_QUARANTINE + 1];
static struct pool log_pool;
static atomic_uint_fast64_t log_live;   /* entries built and not yet freed */
static atomic_uint_fast64_t latest_gen; /* release: stored before the view is published */
static atomic_size_t max_ranges;        /* most ranges in any view, for the memory bound */
static size_t log_used;                 /* under log_pool.lock: slots below were ever used */

static bool log_in_pool(const void *p)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)log_entries;
    return (uintptr_t)p >= (uintptr_t)log_entries && off < sizeof(log_entries) &&
           off % sizeof(log_entries[0]) == 0;
}

static bool range_equal(const struct vck_flat_range *a, const struct vck_flat_range *b)
{
    return a->start == b->start && a->last == b->last && a->mr == b->mr && a->offset == b->offset &&
           a->readonly == b->readonly;
}

static const struct vck_flat_range *log_find(const struct log_entry *e, uint64_t addr)
{
    size_t lo = 0, hi = e->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct vck_flat_range *r = &e->ranges[mid];
        if (addr < r->start)
            hi = mid;
        else if (addr > r->last)
            lo = mid + 1;
        else
            return r;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * The writer's model of the tree. Writer state: touched only by the writer thread, and by the
 * main thread before the writer starts and after it has been joined.
 */
struct node {
    struct vck_mr *mr; /* NULL: free slot */
    enum node_kind kind;
    struct tag *tag;
    uint64_t max;   /* RAM: the backing's size */
    int parent;     /* container node, -1 when unmapped */
    int target;     /* N_ALIAS: the aliased node */
    int n_aliasers; /* aliases whose target this is */
};

struct range_vec {
    struct vck_flat_range *v;
    bool *nop; /* only for the listener's new ranges */
    size_t n, cap;
};

struct writer {
    struct vck_memmap *mm;
    struct vck_as *as;
    struct node nodes[MAX_NODES];
    uint64_t rng;
    uint64_t next_id;
    int slot; /* the builder's derived-data slot */

    /* Builder state: the last view built and its entry. */
    const struct vck_flatview *last_view;
    struct log_entry *last_entry;
    uint64_t last_gen;
    bool in_add_builder;

    /* Listener state: the view as the listener has been told it, and this commit's calls. */
    struct vck_mem_listener listener;
    bool unregistering;
    struct range_vec told, dels, news;

    uint64_t ops, transactions, created, destroyed, builds;
    uint64_t builds_unheard, listener_commits; /* views built before the listener; its commits */
};

struct reader {
    pthread_t thread;
    int id;
    uint64_t rng;
    uint64_t last_gen;
    uint64_t sections, lookups, walks, held;
};

struct shared {
    struct writer w;
    struct vck_as *as;
    int slot;
    int threads;
    struct reader readers[MAX_READERS];
};

static struct shared S;

static void vec_push(struct range_vec *v, const struct vck_flat_range *r, bool nop)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->v = realloc(v->v, v->cap * sizeof(*v->v));
        v->nop = realloc(v->nop, v->cap * sizeof(*v->nop));
        if (!v->v || !v->nop) {
            fprintf(stderr, "flatview-stress: out of memory\n");
            exit(1);
        }
    }
    v->nop[v->n] = nop;
    v->v[v->n++] = *r;
}

static void vec_free(struct range_vec *v)
{
    free(v->v);
    free(v->nop);
    memset(v, 0, sizeof(*v));
}

/*
 * Bytes of retired views the memmap may hold: the limit, plus the view whose retirement crossed
 * it, the views readers hold references to (which no barrier can reclaim), and the one being
 * retired, each with its derived log entry. A view's own bytes are taken generously (a header and
 * twice its ranges), since the memmap's layout is its own business.
 */
static size_t pending_bound(int threads)
{
    size_t n = atomic_load_explicit(&max_ranges, memory_order_relaxed);
    size_t view = 1024 + 2 * n * sizeof(struct vck_flat_range);
    size_t derived = sizeof(struct log_entry) + n * sizeof(struct vck_flat_range);
    return PENDING_LIMIT + (size_t)(threads + 2) * (view + derived);
}

static void check_pending(struct vck_memmap *mm, int threads)
{
    struct vck_memmap_stats st;
    vck_memmap_get_stats(mm, &st);
    size_t bound = pending_bound(threads);
    if (st.pending_bytes > bound)
        report(ERR_MEMORY, "pending_bytes %zu > bound %zu (limit %d)", st.pending_bytes, bound,
               PENDING_LIMIT);
}

/* ---------------------------------------------------------------------------------------------
 * Release callbacks and the builder's free. Any thread: the RCU callback thread or a writer.
 */
static bool log_names_region__locked(const struct vck_mr *mr, uint64_t *gen)
{
    for (size_t i = 0; i < log_used; i++) {
        const struct log_entry *e = &log_entries[i];
        if (e->magic != LOG_LIVE)
            continue;
        for (size_t j = 0; j < e->n; j++)
            if (e->ranges[j].mr == mr) {
                *gen = e->gen;
                return true;
            }
    }
    return false;
}

static void region_released(void *opaque)
{
    struct tag *t = opaque;
    bool ram = tag_in_pool(t, ram_tags, RAM_POOL);
    if (!ram && !tag_in_pool(t, tags, TAG_POOL)) {
        report(ERR_RELEASE, "release callback called with an opaque that is no tag");
        return;
    }
    if (t->magic != TAG_LIVE || !t->destroyed) {
        report(ERR_RELEASE, "region %llu released %s", (unsigned long long)t->id,
               t->magic != TAG_LIVE ? "twice" : "before it was destroyed");
        return;
    }
    uint64_t gen;
    pthread_mutex_lock(&log_pool.lock);
    bool named = log_names_region__locked(t->mr, &gen);
    pthread_mutex_unlock(&log_pool.lock);
    if (named)
        report(ERR_RELEASE, "region %llu released while the view of generation %llu names it",
               (unsigned long long)t->id, (unsigned long long)gen);

    struct pool *p = ram ? &ram_pool : &tag_pool;
    pthread_mutex_lock(&p->lock);
    t->magic = TAG_DEAD;
    t->check = 0;
    if (ram)
        memset(ram_bufs[t - ram_tags], VCK_FLATVIEW_POISON, RAM_SLOT);
    pool_put__locked(p, (uint32_t)(ram ? t - ram_tags : t - tags));
    pthread_mutex_unlock(&p->lock);
    atomic_fetch_add_explicit(&regions_released, 1, memory_order_relaxed);
}

static void log_free_entry(void *opaque, void *data)
{
    (void)opaque;
    struct log_entry *e = data;
    if (!log_in_pool(e)) {
        report(ERR_WRITER, "builder free called with foreign data");
        return;
    }
    pthread_mutex_lock(&log_pool.lock);
    if (e->magic != LOG_LIVE) {
        pthread_mutex_unlock(&log_pool.lock);
        report(ERR_WRITER, "builder free called twice for gen %llu", (unsigned long long)e->gen);
        return;
    }
    e->magic = LOG_DEAD;
    e->check = 0;
    memset(e->ranges, VCK_FLATVIEW_POISON, e->n * sizeof(*e->ranges));
    int64_t out = pool_put__locked(&log_pool, (uint32_t)(e - log_entries));
    if (out >= 0) {
        free(log_entries[out].ranges);
        log_entries[out].ranges = NULL;
        log_entries[out].n = 0;
    }
    pthread_mutex_unlock(&log_pool.lock);
    atomic_fetch_sub_explicit(&log_live, 1, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------------------------
 * The builder: the writer's checks of each rendering, and the log entry.
 */
static int node_of(const struct writer *w, const struct vck_mr *mr)
{
    for (int i = 0; i < MAX_NODES; i++)
        if (w->nodes[i].mr && w->nodes[i].mr == mr)
            return i;
    return -1;
}

static void check_rendering(const struct writer *w, uint64_t gen, const struct vck_flat_range *r,
                            size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct vck_flat_range *x = &r[i];
        if (x->start > x->last) {
            report(ERR_WRITER, "gen %llu range %zu: start > last", (unsigned long long)gen, i);
            continue;
        }
        if (i > 0 && r[i - 1].last >= x->start)
            report(ERR_WRITER, "gen %llu ranges %zu and %zu overlap or are unsorted",
                   (unsigned long long)gen, i - 1, i);
        if (i > 0 && r[i - 1].last + 1 == x->start && r[i - 1].mr == x->mr &&
            r[i - 1].readonly == x->readonly &&
            r[i - 1].offset + (r[i - 1].last - r[i - 1].start) + 1 == x->offset)
            report(ERR_WRITER, "gen %llu ranges %zu and %zu are compatible but not merged",
                   (unsigned long long)gen, i - 1, i);
        int k = node_of(w, x->mr);
        if (k < 0) {
            report(ERR_WRITER, "gen %llu range %zu names a region that is not alive",
                   (unsigned long long)gen, i);
            continue;
        }
        enum node_kind kind = w->nodes[k].kind;
        if (kind != N_RAM && kind != N_RAM_PTR && kind != N_MMIO) {
            report(ERR_WRITER, "gen %llu range %zu names a container or an alias",
                   (unsigned long long)gen, i);
            continue;
        }
        uint64_t size = vck_mr_size(x->mr);
        if (x->offset >= size || x->last - x->start > size - 1 - x->offset)
            report(ERR_WRITER, "gen %llu range %zu runs past the end of its region",
                   (unsigned long long)gen, i);
    }
}

static bool ranges_same(const struct vck_flat_range *a, size_t na, const struct vck_flat_range *b,
                        size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!range_equal(&a[i], &b[i]))
            return false;
    return true;
}

static void *log_build(void *opaque, const struct vck_flatview *view,
                       const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    struct writer *w = opaque;
    uint64_t gen = vck_flatview_generation(view);
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(view, &n);

    if (w->last_entry) {
        if (gen != w->last_gen + 1)
            report(ERR_WRITER, "generation %llu follows %llu", (unsigned long long)gen,
                   (unsigned long long)w->last_gen);
        if (old != w->last_view || old_data != w->last_entry)
            report(ERR_WRITER, "builder of gen %llu not given the previous view and its data",
                   (unsigned long long)gen);
        if (!w->in_add_builder && ranges_same(r, n, w->last_entry->ranges, w->last_entry->n))
            report(ERR_WRITER, "gen %llu published though nothing visible changed",
                   (unsigned long long)gen);
    }
    check_rendering(w, gen, r, n);

    struct vck_flat_range *copy = malloc((n ? n : 1) * sizeof(*copy));
    if (!copy) {
        fprintf(stderr, "flatview-stress: out of memory\n");
        exit(1);
    }
    memcpy(copy, r, n * sizeof(*copy));
    pthread_mutex_lock(&log_pool.lock);
    int64_t i = pool_get__locked(&log_pool);
    struct log_entry *e = i >= 0 ? &log_entries[i] : NULL;
    if (e) {
        if ((size_t)i >= log_used)
            log_used = (size_t)i + 1;
        e->gen = gen;
        e->check = ~gen;
        e->view = view;
        e->n = n;
        e->ranges = copy;
        e->magic = LOG_LIVE;
    }
    pthread_mutex_unlock(&log_pool.lock);
    if (!e) {
        free(copy);
        report(ERR_MEMORY, "%d views built and not reclaimed", LOG_POOL);
        return NULL;
    }
    atomic_fetch_add_explicit(&log_live, 1, memory_order_relaxed);
    /* Pairs with the acquire in view_header(); the memmap publishes the view after us. */
    atomic_store_explicit(&latest_gen, gen, memory_order_release);
    if (n > atomic_load_explicit(&max_ranges, memory_order_relaxed))
        atomic_store_explicit(&max_ranges, n, memory_order_relaxed);

    w->last_view = view;
    w->last_entry = e;
    w->last_gen = gen;
    w->builds++;
    *bytes = sizeof(*e) + n * sizeof(*copy);
    return e;
}

/* ---------------------------------------------------------------------------------------------
 * The listener: dels, then adds and nops interleaved, must turn what it was told into the view.
 */
static struct writer *listener_writer(struct vck_mem_listener *l)
{
    return caa_container_of(l, struct writer, listener);
}

static void listener_begin(struct vck_mem_listener *l)
{
    struct writer *w = listener_writer(l);
    w->dels.n = 0;
    w->news.n = 0;
}

static void listener_del(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    struct writer *w = listener_writer(l);
    if (w->dels.n && w->dels.v[w->dels.n - 1].last >= r->start)
        report(ERR_WRITER, "region_del calls not in ascending address order");
    vec_push(&w->dels, r, false);
}

static void listener_new(struct writer *w, const struct vck_flat_range *r, bool nop)
{
    if (w->news.n && w->news.v[w->news.n - 1].last >= r->start)
        report(ERR_WRITER, "region_add / region_nop calls not in ascending address order");
    vec_push(&w->news, r, nop);
}

static void listener_add(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    listener_new(listener_writer(l), r, false);
}

static void listener_nop(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    listener_new(listener_writer(l), r, true);
}

static bool vec_contains(const struct range_vec *v, const struct vck_flat_range *r)
{
    for (size_t i = 0; i < v->n; i++)
        if (range_equal(&v->v[i], r))
            return true;
    return false;
}

static void listener_commit(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    struct writer *w = listener_writer(l);
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(view, &n);
    uint64_t gen = vck_flatview_generation(view);
    w->listener_commits++;

    if (w->last_entry && gen != w->last_gen)
        report(ERR_WRITER, "listener commit with gen %llu, last built %llu",
               (unsigned long long)gen, (unsigned long long)w->last_gen);
    if (w->unregistering) {
        if (w->news.n || !ranges_same(w->dels.v, w->dels.n, w->told.v, w->told.n))
            report(ERR_WRITER, "unregistering did not delete exactly every range");
        w->told.n = 0;
        return;
    }
    bool same = w->news.n == n;
    for (size_t i = 0; same && i < n; i++)
        same = range_equal(&w->news.v[i], &r[i]);
    if (!same)
        report(ERR_WRITER, "gen %llu: region_add + region_nop calls are not the new view",
               (unsigned long long)gen);
    /* Every old range was either deleted or kept as a nop, in order; adds are new. */
    size_t j = 0, k = 0;
    bool consistent = true;
    for (size_t i = 0; i < w->told.n && consistent; i++) {
        const struct vck_flat_range *o = &w->told.v[i];
        while (k < w->news.n && !w->news.nop[k])
            k++;
        if (j < w->dels.n && range_equal(o, &w->dels.v[j]))
            j++;
        else if (k < w->news.n && range_equal(o, &w->news.v[k]))
            k++;
        else
            consistent = false;
    }
    while (k < w->news.n && !w->news.nop[k])
        k++;
    if (!consistent || j != w->dels.n || k != w->news.n)
        report(ERR_WRITER, "gen %llu: old view minus region_del is not the region_nop calls",
               (unsigned long long)gen);
    for (size_t i = 0; i < w->news.n; i++)
        if (!w->news.nop[i] && vec_contains(&w->told, &w->news.v[i]))
            report(ERR_WRITER, "gen %llu: region_add for a range already in the old view",
                   (unsigned long long)gen);
    w->told.n = 0;
    for (size_t i = 0; i < n; i++)
        vec_push(&w->told, &r[i], false);
}

/* ---------------------------------------------------------------------------------------------
 * The writer's changes.
 */
static uint64_t wrand(struct writer *w, uint64_t bound)
{
    return vck_rand_below(&w->rng, bound);
}

static bool is_root(int i)
{
    return i == 0;
}

static bool is_fixed(int i)
{
    return i <= N_CONTAINERS;
}

/* True when rendering @from reaches node @to (through children and alias targets). */
static bool reaches(const struct writer *w, int from, int to)
{
    /* Each node is pushed once by its container and at most once per alias: 2N + 1 pushes. */
    int stack[MAX_NODES * 2 + 1], top = 0;
    bool seen[MAX_NODES] = {false};
    stack[top++] = from;
    while (top) {
        int x = stack[--top];
        if (x == to)
            return true;
        if (seen[x])
            continue;
        seen[x] = true;
        const struct node *nx = &w->nodes[x];
        if (nx->kind == N_ALIAS && nx->target >= 0)
            stack[top++] = nx->target;
        if (nx->kind == N_CONTAINER)
            for (int c = 0; c < MAX_NODES; c++)
                if (w->nodes[c].mr && w->nodes[c].parent == x && !seen[c])
                    stack[top++] = c;
    }
    return false;
}

typedef bool node_pred(const struct writer *w, int i);

/* A random node satisfying @pred, or -1. */
static int pick(struct writer *w, node_pred *pred)
{
    int chosen = -1, seen = 0;
    for (int i = 0; i < MAX_NODES; i++)
        if (w->nodes[i].mr && pred(w, i) && wrand(w, (uint64_t)++seen) == 0)
            chosen = i;
    return chosen;
}

static bool p_mapped(const struct writer *w, int i)
{
    return w->nodes[i].parent >= 0;
}

static bool p_unmapped(const struct writer *w, int i)
{
    return !is_root(i) && w->nodes[i].parent < 0;
}

static bool p_not_root(const struct writer *w, int i)
{
    (void)w;
    return !is_root(i);
}

static bool p_alias(const struct writer *w, int i)
{
    return w->nodes[i].kind == N_ALIAS;
}

static bool p_destroyable(const struct writer *w, int i)
{
    return !is_fixed(i) && w->nodes[i].n_aliasers == 0;
}

static uint64_t rand_size(struct writer *w, const struct node *nd)
{
    switch (nd->kind) {
    case N_CONTAINER:
        return 0x10000 + 0x1000 * wrand(w, 0x70);
    case N_RAM:
    case N_RAM_PTR:
        return 0x100 * (1 + wrand(w, nd->max / 0x100));
    default:
        return 0x100 * (1 + wrand(w, 0x100));
    }
}

/* An address for a child of container node @c: mostly page-aligned, sometimes not. */
static uint64_t rand_addr(struct writer *w, int c)
{
    uint64_t align = wrand(w, 4) ? 0x1000 : 0x100;
    uint64_t span = is_root(c) ? LOW_SPAN : vck_mr_size(w->nodes[c].mr) * 9 / 8;
    uint64_t a = wrand(w, span / align) * align;
    /* Near 2^64 in the root: a child there may run past the end and be clipped. */
    return is_root(c) && (wrand(w, 2) == 0) ? UINT64_MAX - LOW_SPAN + 1 + a : a;
}

static int rand_priority(struct writer *w)
{
    return (int)wrand(w, 5) - 2;
}

static void expect(bool ok, const char *what, int node)
{
    if (!ok)
        report(ERR_WRITER, "%s (node %d)", what, node);
}

/* Maps unmapped node @s in a random container that does not make a cycle. */
static bool map_node(struct writer *w, int s)
{
    int c = -1, seen = 0;
    for (int i = 0; i < MAX_NODES; i++)
        if (w->nodes[i].mr && w->nodes[i].kind == N_CONTAINER && !reaches(w, s, i) &&
            wrand(w, (uint64_t)++seen) == 0)
            c = i;
    if (c < 0)
        return false;
    uint64_t addr = rand_addr(w, c);
    int prio = rand_priority(w);
    vck_mr_add_subregion(w->nodes[c].mr, addr, w->nodes[s].mr, prio);
    w->nodes[s].parent = c;
    expect(vck_mr_container(w->nodes[s].mr) == w->nodes[c].mr, "vck_mr_container after add", s);
    expect(vck_mr_address(w->nodes[s].mr) == addr, "vck_mr_address after add", s);
    expect(vck_mr_priority(w->nodes[s].mr) == prio, "vck_mr_priority after add", s);
    return true;
}

static bool op_add(struct writer *w)
{
    int s = pick(w, p_unmapped);
    return s >= 0 && map_node(w, s);
}

static void unmap(struct writer *w, int s)
{
    vck_mr_del_subregion(w->nodes[w->nodes[s].parent].mr, w->nodes[s].mr);
    w->nodes[s].parent = -1;
    expect(vck_mr_container(w->nodes[s].mr) == NULL, "vck_mr_container after del", s);
}

static bool op_del(struct writer *w)
{
    int s = pick(w, p_mapped);
    if (s < 0)
        return false;
    unmap(w, s);
    return true;
}

static bool op_move(struct writer *w)
{
    int s = pick(w, p_mapped);
    if (s < 0)
        return false;
    uint64_t addr = rand_addr(w, w->nodes[s].parent);
    vck_mr_set_address(w->nodes[s].mr, addr);
    expect(vck_mr_address(w->nodes[s].mr) == addr, "vck_mr_address after move", s);
    return true;
}

static bool op_priority(struct writer *w)
{
    int s = pick(w, p_mapped);
    if (s < 0)
        return false;
    int prio = rand_priority(w);
    vck_mr_set_priority(w->nodes[s].mr, prio);
    expect(vck_mr_priority(w->nodes[s].mr) == prio, "vck_mr_priority after set", s);
    return true;
}

static bool op_resize(struct writer *w)
{
    int s = pick(w, p_not_root);
    if (s < 0)
        return false;
    uint64_t size = rand_size(w, &w->nodes[s]);
    vck_mr_set_size(w->nodes[s].mr, size);
    expect(vck_mr_size(w->nodes[s].mr) == size, "vck_mr_size after resize", s);
    return true;
}

static bool op_enable(struct writer *w)
{
    int s = pick(w, p_not_root);
    if (s < 0)
        return false;
    bool on = wrand(w, 4) != 0;
    vck_mr_set_enabled(w->nodes[s].mr, on);
    expect(vck_mr_enabled(w->nodes[s].mr) == on, "vck_mr_enabled after set", s);
    return true;
}

static bool op_readonly(struct writer *w)
{
    int s = pick(w, p_not_root);
    if (s < 0)
        return false;
    bool ro = wrand(w, 3) == 0;
    vck_mr_set_readonly(w->nodes[s].mr, ro);
    expect(vck_mr_readonly(w->nodes[s].mr) == ro, "vck_mr_readonly after set", s);
    return true;
}

/* A target for alias @a: any non-root region whose rendering does not reach @a. */
static int pick_target(struct writer *w, int a)
{
    int t = -1, seen = 0;
    for (int i = 1; i < MAX_NODES; i++)
        if (w->nodes[i].mr && i != a && !reaches(w, i, a) && wrand(w, (uint64_t)++seen) == 0)
            t = i;
    return t;
}

static uint64_t rand_alias_offset(struct writer *w, int t)
{
    return 0x100 * wrand(w, vck_mr_size(w->nodes[t].mr) / 0x100);
}

static bool op_retarget(struct writer *w)
{
    int a = pick(w, p_alias);
    if (a < 0)
        return false;
    int t = pick_target(w, a);
    if (t < 0)
        return false;
    vck_mr_set_alias_target(w->nodes[a].mr, w->nodes[t].mr, rand_alias_offset(w, t));
    w->nodes[w->nodes[a].target].n_aliasers--;
    w->nodes[a].target = t;
    w->nodes[t].n_aliasers++;
    return true;
}

static bool op_destroy(struct writer *w)
{
    int s = pick(w, p_destroyable);
    if (s < 0)
        return false;
    struct node *nd = &w->nodes[s];
    if (nd->parent >= 0)
        unmap(w, s);
    if (nd->kind == N_ALIAS)
        w->nodes[nd->target].n_aliasers--;
    nd->tag->destroyed = true;
    vck_mr_destroy(nd->mr);
    memset(nd, 0, sizeof(*nd));
    w->destroyed++;
    return true;
}

static struct tag *tag_take(struct pool *p, struct tag *base, int64_t *index)
{
    pthread_mutex_lock(&p->lock);
    *index = pool_get__locked(p);
    pthread_mutex_unlock(&p->lock);
    return *index >= 0 ? &base[*index] : NULL;
}

/* Creates node @i of @kind (unmapped); false when a pool is empty or no alias target fits. */
static bool node_create(struct writer *w, int i, enum node_kind kind, uint64_t size)
{
    struct node *nd = &w->nodes[i];
    int64_t index;
    bool ram_ptr = kind == N_RAM_PTR;
    struct tag *t =
        ram_ptr ? tag_take(&ram_pool, ram_tags, &index) : tag_take(&tag_pool, tags, &index);
    if (!t)
        return false;
    int target = -1;
    if (kind == N_ALIAS && (target = pick_target(w, i)) < 0) {
        /* Give the tag back unused: straight to the free list. */
        struct pool *p = &tag_pool;
        pthread_mutex_lock(&p->lock);
        p->free_list[p->n_free++] = (uint32_t)index;
        pthread_mutex_unlock(&p->lock);
        return false;
    }
    uint64_t id = ++w->next_id;
    t->id = id;
    t->check = ~id;
    t->kind = kind;
    t->destroyed = false;
    t->magic = TAG_LIVE;

    char name[32];
    snprintf(name, sizeof(name), "r%llu", (unsigned long long)id);
    struct vck_mr *mr = NULL;
    memset(nd, 0, sizeof(*nd));
    nd->max = size;
    switch (kind) {
    case N_CONTAINER:
        mr = vck_mr_new_container(w->mm, name, size);
        break;
    case N_RAM:
        mr = vck_mr_new_ram(w->mm, name, size);
        break;
    case N_RAM_PTR:
        nd->max = size = RAM_SLOT;
        for (uint64_t k = 0; k < RAM_SLOT / 8; k++)
            ram_bufs[index][k] = ram_word(id, k);
        mr = vck_mr_new_ram_ptr(w->mm, name, size, ram_bufs[index]);
        break;
    case N_MMIO:
        mr = vck_mr_new_mmio(w->mm, name, size, &device_ops, t);
        break;
    case N_ALIAS:
        mr = vck_mr_new_alias(w->mm, name, w->nodes[target].mr, rand_alias_offset(w, target), size);
        break;
    }
    if (!mr) {
        fprintf(stderr, "flatview-stress: out of memory creating a region\n");
        exit(1);
    }
    t->mr = mr;
    vck_mr_set_release(mr, region_released, t);
    nd->mr = mr;
    nd->kind = kind;
    nd->tag = t;
    nd->parent = -1;
    nd->target = target;
    if (target >= 0)
        w->nodes[target].n_aliasers++;
    expect(vck_mr_kind(mr) == (kind == N_CONTAINER ? VCK_MR_CONTAINER
                               : kind == N_MMIO    ? VCK_MR_MMIO
                               : kind == N_ALIAS   ? VCK_MR_ALIAS
                                                   : VCK_MR_RAM),
           "vck_mr_kind of a new region", i);
    expect(kind != N_MMIO || vck_mr_opaque(mr) == t, "vck_mr_opaque of a new device", i);
    expect(!ram_ptr || vck_mr_host(mr) == ram_bufs[index], "vck_mr_host of RAM given memory", i);
    w->created++;
    return true;
}

static bool op_create(struct writer *w)
{
    int i = 0;
    while (i < MAX_NODES && w->nodes[i].mr)
        i++;
    if (i == MAX_NODES)
        return false;
    static const enum node_kind kinds[] = {N_RAM, N_RAM, N_RAM_PTR, N_MMIO, N_MMIO, N_ALIAS};
    enum node_kind kind = kinds[wrand(w, sizeof(kinds) / sizeof(kinds[0]))];
    struct node probe = {.kind = kind, .max = 0x10000};
    if (!node_create(w, i, kind, rand_size(w, &probe)))
        return false;
    if (wrand(w, 8))
        map_node(w, i); /* and sometimes leaves it for an alias to show */
    return true;
}

typedef bool writer_op(struct writer *w);

static const struct {
    writer_op *fn;
    unsigned weight;
} ops[] = {
    {op_add, 16},   {op_del, 8},      {op_move, 16},    {op_priority, 8}, {op_resize, 10},
    {op_enable, 8}, {op_readonly, 8}, {op_retarget, 8}, {op_destroy, 8},  {op_create, 9},
};

static void writer_random_op(struct writer *w)
{
    unsigned total = 0;
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        total += ops[i].weight;
    unsigned r = (unsigned)wrand(w, total);
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (r < ops[i].weight) {
            ops[i].fn(w);
            return;
        }
        r -= ops[i].weight;
    }
}

/* One outermost step: a single change, or a transaction (sometimes nested). */
static void writer_step(struct writer *w)
{
    uint64_t r = wrand(w, 10);
    if (r < 5) {
        writer_random_op(w);
    } else {
        unsigned n = 2 + (unsigned)wrand(w, 6);
        vck_memmap_begin(w->mm);
        for (unsigned i = 0; i < n; i++) {
            if (wrand(w, 8) == 0) {
                vck_memmap_begin(w->mm);
                writer_random_op(w);
                writer_random_op(w);
                vck_memmap_commit(w->mm);
            } else if (wrand(w, 8) == 0) {
                op_destroy(w); /* a mapped one is unmapped and destroyed in this transaction */
            } else {
                writer_random_op(w);
            }
        }
        vck_memmap_commit(w->mm);
        w->transactions++;
    }
    w->ops++;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    vck_rcu_register_thread();
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        writer_step(w);
        vck_rcu_quiescent_state();
        if ((w->ops & 15) == 0)
            check_pending(w->mm, S.threads);
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Readers.
 */
static uint64_t rrand(struct reader *r, uint64_t bound)
{
    return vck_rand_below(&r->rng, bound);
}

/*
 * Checks what a view's header says; returns its log entry, or NULL (counted) when the view is
 * not to be trusted any further. Reads only the view's own fields: a poisoned or freed view is
 * caught here before anything follows its pointers. @fresh: just obtained from the address
 * space, so not older than anything this reader saw before.
 */
static const struct log_entry *view_header(struct reader *r, const struct vck_flatview *v,
                                           bool fresh)
{
    uint64_t gen = vck_flatview_generation(v);
    /* Pairs with the release in log_build(): the view we hold was built before we loaded it. */
    uint64_t latest = atomic_load_explicit(&latest_gen, memory_order_acquire);
    if (gen == 0 || gen > latest || (fresh && gen < r->last_gen)) {
        report(ERR_VIEW, "reader %d: view generation %llu, last seen %llu, latest built %llu",
               r->id, (unsigned long long)gen, (unsigned long long)r->last_gen,
               (unsigned long long)latest);
        return NULL;
    }
    const struct log_entry *e = vck_flatview_derived(v, S.slot);
    if (!log_in_pool(e)) {
        report(ERR_VIEW, "reader %d: view of gen %llu has no log entry", r->id,
               (unsigned long long)gen);
        return NULL;
    }
    size_t n;
    vck_flatview_ranges(v, &n);
    if (e->magic != LOG_LIVE || e->gen != gen || e->check != ~gen || e->view != v || e->n != n) {
        report(ERR_VIEW, "reader %d: view of gen %llu is reclaimed or not the one logged", r->id,
               (unsigned long long)gen);
        return NULL;
    }
    if (fresh)
        r->last_gen = gen;
    return e;
}

/* The header is unchanged since view_header() returned @e. */
static bool view_same(struct reader *r, const struct vck_flatview *v, const struct log_entry *e)
{
    uint64_t gen = vck_flatview_generation(v);
    size_t n;
    vck_flatview_ranges(v, &n);
    if (gen == e->gen && vck_flatview_derived(v, S.slot) == e && e->magic == LOG_LIVE &&
        e->check == ~gen && n == e->n)
        return true;
    if (gen != e->gen)
        report(ERR_VIEW, "reader %d: view of gen %llu changed while held (gen now %llu)", r->id,
               (unsigned long long)e->gen, (unsigned long long)gen);
    else
        report(ERR_VIEW, "reader %d: view of gen %llu reclaimed while held (its log is freed)",
               r->id, (unsigned long long)gen);
    return false;
}

/* The region a live view names at @offset in it must be alive and what it was created as. */
static void check_region(struct reader *r, const struct vck_mr *mr, uint64_t offset)
{
    enum vck_mr_kind kind = vck_mr_kind(mr);
    if (kind == VCK_MR_MMIO) {
        struct tag *t = vck_mr_opaque(mr);
        if (!tag_in_pool(t, tags, TAG_POOL) || !tag_alive(t, mr) || t->kind != N_MMIO) {
            report(ERR_REGION, "reader %d: device of a region in a live view is dead", r->id);
            return;
        }
        const struct vck_mr_ops *o = vck_mr_ops(mr);
        uint64_t value = 0, at = offset & ~7ULL;
        if (!o || o->read != device_read || o->read(t, at, &value, 8) != VCK_MEM_OK ||
            value != device_value(t->id, at))
            report(ERR_REGION, "reader %d: device %llu answers wrongly", r->id,
                   (unsigned long long)t->id);
    } else if (kind == VCK_MR_RAM) {
        const uint64_t *host = vck_mr_host(mr);
        if (!host) {
            report(ERR_REGION, "reader %d: RAM region without host memory", r->id);
            return;
        }
        uintptr_t off = (uintptr_t)host - (uintptr_t)ram_bufs;
        if ((uintptr_t)host < (uintptr_t)ram_bufs || off >= sizeof(ram_bufs))
            return; /* backing the region owns: nothing of ours to check */
        size_t slot = off / RAM_SLOT;
        const struct tag *t = &ram_tags[slot];
        if (off % RAM_SLOT || !tag_alive(t, mr) || offset >= RAM_SLOT) {
            report(ERR_REGION, "reader %d: RAM region in a live view is dead", r->id);
            return;
        }
        if (host[offset / 8] != ram_word(t->id, offset / 8))
            report(ERR_REGION, "reader %d: RAM of region %llu poisoned at offset %#llx", r->id,
                   (unsigned long long)t->id, (unsigned long long)offset);
    } else {
        report(ERR_REGION, "reader %d: a live view names a region of kind %d", r->id, (int)kind);
    }
}

static uint64_t reader_addr(struct reader *r, const struct log_entry *e)
{
    uint64_t x = rrand(r, 100);
    if (x < 40)
        return rrand(r, LOW_SPAN + 0x10000);
    if (x < 75)
        return UINT64_MAX - rrand(r, LOW_SPAN + 0x10000);
    if (x < 80 || e->n == 0)
        return vck_rand(&r->rng);
    /* The edges of a range, where off-by-one mistakes live. */
    const struct vck_flat_range *g = &e->ranges[rrand(r, e->n)];
    switch (rrand(r, 4)) {
    case 0:
        return g->start;
    case 1:
        return g->last;
    case 2:
        return g->last + 1;
    default:
        return g->start - 1;
    }
}

/*
 * One find in view @v (whose log is @e), checked against the log; false when the view changed.
 * The header is checked just before the find, so that a reclaimed view is seen as such rather
 * than searched, and just after, so that a view reclaimed during the find is reported as that
 * and not as a wrong answer.
 */
static bool lookup_one(struct reader *r, const struct vck_flatview *v, const struct log_entry *e)
{
    uint64_t addr = reader_addr(r, e);
    if (!view_same(r, v, e))
        return false;
    const struct vck_flat_range *got = vck_flatview_find(v, addr);
    r->lookups++;
    if (!view_same(r, v, e))
        return false;
    const struct vck_flat_range *want = log_find(e, addr);
    if (!want) {
        if (got)
            report(ERR_ANSWER, "reader %d: gen %llu has nothing at %#llx, find found a range",
                   r->id, (unsigned long long)e->gen, (unsigned long long)addr);
        return true;
    }
    size_t n;
    const struct vck_flat_range *base = vck_flatview_ranges(v, &n);
    if (!got || got < base || got >= base + n) {
        report(ERR_ANSWER, "reader %d: gen %llu find(%#llx) returned %s", r->id,
               (unsigned long long)e->gen, (unsigned long long)addr,
               got ? "a range outside the view" : "nothing");
        return true;
    }
    if (!range_equal(got, want)) {
        report(ERR_ANSWER,
               "reader %d: gen %llu find(%#llx) = [%#llx, %#llx], log says [%#llx, %#llx]", r->id,
               (unsigned long long)e->gen, (unsigned long long)addr, (unsigned long long)got->start,
               (unsigned long long)got->last, (unsigned long long)want->start,
               (unsigned long long)want->last);
        return true;
    }
    check_region(r, want->mr, want->offset + (addr - want->start));
    return true;
}

/* Every range of @v against the log, and every region it names. */
static void walk(struct reader *r, const struct vck_flatview *v, const struct log_entry *e)
{
    size_t n;
    const struct vck_flat_range *x = vck_flatview_ranges(v, &n);
    r->walks++;
    for (size_t i = 0; i < n && i < e->n; i++) {
        if (!range_equal(&x[i], &e->ranges[i]) || x[i].start > x[i].last ||
            (i > 0 && x[i - 1].last >= x[i].start)) {
            report(ERR_ANSWER, "reader %d: gen %llu range %zu is not what was logged", r->id,
                   (unsigned long long)e->gen, i);
            return;
        }
        check_region(r, e->ranges[i].mr, e->ranges[i].offset);
    }
}

static void linger(struct reader *r)
{
    uint64_t x = vck_rand(&r->rng);
    if ((x & 7) == 0)
        for (uint64_t spin = (x >> 8) & 1023; spin; spin--)
            __asm__ volatile("" ::: "memory");
}

/* Lookups in the current view, inside one read-side section. */
static void section_round(struct reader *r)
{
    vck_rcu_read_lock();
    const struct vck_flatview *v = vck_as_view(S.as);
    const struct log_entry *e = view_header(r, v, true);
    if (e) {
        unsigned n = 4 + (unsigned)rrand(r, 9);
        bool ok = true;
        for (unsigned i = 0; i < n && ok; i++)
            ok = lookup_one(r, v, e);
        if (ok && rrand(r, 16) == 0) {
            walk(r, v, e);
            ok = view_same(r, v, e);
        }
        if (ok) {
            linger(r);
            view_same(r, v, e);
        }
    }
    vck_rcu_read_unlock();
    r->sections++;
}

static void sleep_offline(long ns)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ns};
    vck_rcu_thread_offline();
    nanosleep(&ts, NULL);
    vck_rcu_thread_online();
}

/*
 * A view held by reference across sections and a sleep, while the writer moves on: it and every
 * region it names must stay intact until we drop it.
 */
static void held_round(struct reader *r)
{
    const struct vck_flatview *v;
    bool extra = rrand(r, 2) == 0;
    if (rrand(r, 2)) {
        v = vck_as_view_get(S.as);
    } else {
        /*
         * A reference taken inside a section keeps the view past it; one already on its way
         * to reclamation refuses, and the current view is taken instead.
         */
        vck_rcu_read_lock();
        v = vck_as_view(S.as);
        bool got = vck_flatview_ref(v);
        vck_rcu_read_unlock();
        if (!got)
            v = vck_as_view_get(S.as);
    }
    if (extra && !vck_flatview_ref(v))
        report(ERR_VIEW, "reader %d: a reference on a held view was refused", r->id);
    r->held++;
    const struct log_entry *e = view_header(r, v, true);
    if (e) {
        unsigned rounds = 2 + (unsigned)rrand(r, 4);
        bool ok = true;
        for (unsigned k = 0; k < rounds && ok; k++) {
            vck_rcu_read_lock();
            for (int i = 0; i < 4 && ok; i++)
                ok = lookup_one(r, v, e);
            vck_rcu_read_unlock();
            section_round(r); /* the current view meanwhile, in its own section */
            if (k == 1)
                sleep_offline(20000 + (long)rrand(r, 100000));
        }
        if (ok) {
            walk(r, v, e);
            view_same(r, v, e);
        }
    }
    if (extra)
        vck_flatview_unref(v);
    vck_flatview_unref(v);
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    vck_rcu_register_thread();
    for (uint64_t i = 0; !atomic_load_explicit(&stop, memory_order_relaxed); i++) {
        if (rrand(r, 256) == 0)
            held_round(r);
        else
            section_round(r);
        if ((i & 63) == 0)
            vck_rcu_quiescent_state();
        if ((i & 4095) == 4095)
            check_pending(S.w.mm, S.threads);
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * A reader that follows a reclaimed view's pointers may fault instead of finding poison (only
 * with a broken memmap). That is a failure too, and must still print the summary line.
 */
#ifndef STRESS_SANITIZED

static void fault_handler(int sig)
{
    char buf[256];
    size_t len = vck_stress_put_str(buf, 0, "flatview-stress: FAIL signal ");
    len = vck_stress_put_u64(buf, len, (uint64_t)sig);
    len = vck_stress_put_str(buf, len, " (a fault; the asan preset shows where): errors=");
    len = vck_stress_put_u64(buf, len, errors_total() + 1);
    len = vck_stress_put_str(buf, len, " (faults=1) seed=");
    len = vck_stress_put_u64(buf, len, run_seed);
    len = vck_stress_put_str(buf, len, "\n");
    ssize_t ignored = write(STDOUT_FILENO, buf, len);
    (void)ignored;
    _exit(1);
}

static void install_fault_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fault_handler;
    sa.sa_flags = SA_RESETHAND; /* a fault in the handler itself kills the process */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}
#else
/* Sanitizer builds keep their own handler, whose report says more. */
static void install_fault_handler(void)
{
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Set-up and teardown, on the main thread while no other thread changes the map.
 */
static void setup(struct writer *w, uint64_t seed)
{
    struct vck_memmap_options opts = {.pending_limit = PENDING_LIMIT,
                                      .flags = VCK_MEMMAP_QUARANTINE};
    w->mm = vck_memmap_new(&opts);
    if (!w->mm) {
        fprintf(stderr, "flatview-stress: out of memory\n");
        exit(1);
    }
    w->rng = seed;
    node_create(w, 0, N_CONTAINER, VCK_MR_SIZE_FULL);
    for (int i = 1; i <= N_CONTAINERS; i++)
        node_create(w, i, N_CONTAINER, CONTAINER_SIZE);
    vck_memmap_begin(w->mm);
    /* A chain root > 1 > 2, and 3 near the top of the space. */
    vck_mr_add_subregion(w->nodes[0].mr, 0x40000, w->nodes[1].mr, 0);
    w->nodes[1].parent = 0;
    vck_mr_add_subregion(w->nodes[1].mr, 0x8000, w->nodes[2].mr, 1);
    w->nodes[2].parent = 1;
    vck_mr_add_subregion(w->nodes[0].mr, UINT64_MAX - CONTAINER_SIZE + 1, w->nodes[3].mr, 0);
    w->nodes[3].parent = 0;
    for (int i = 0; i < INITIAL_REGIONS; i++)
        op_create(w);
    vck_memmap_commit(w->mm);

    w->as = vck_as_new(w->mm, "stress", w->nodes[0].mr);
    if (!w->as) {
        fprintf(stderr, "flatview-stress: out of memory\n");
        exit(1);
    }
    struct vck_view_builder b = {.build = log_build, .free = log_free_entry, .opaque = w};
    w->in_add_builder = true;
    w->slot = vck_as_add_builder(w->as, &b);
    w->in_add_builder = false;
    if (!w->last_entry)
        report(ERR_WRITER, "vck_as_add_builder did not build for the current view");
    w->listener = (struct vck_mem_listener){.begin = listener_begin,
                                            .region_del = listener_del,
                                            .region_add = listener_add,
                                            .region_nop = listener_nop,
                                            .commit = listener_commit};
    vck_as_listener_register(w->as, &w->listener);
    w->builds_unheard = w->builds;
}

static void teardown(struct writer *w)
{
    w->unregistering = true;
    vck_as_listener_unregister(&w->listener);
    /* Every view published while it listened, plus the replays of registering and leaving. */
    if (w->listener_commits != w->builds - w->builds_unheard + 2)
        report(ERR_WRITER, "listener told of %llu commits, %llu views were published",
               (unsigned long long)w->listener_commits,
               (unsigned long long)(w->builds - w->builds_unheard));

    vck_memmap_begin(w->mm);
    for (int i = 1; i < MAX_NODES; i++)
        if (w->nodes[i].mr && w->nodes[i].parent >= 0)
            unmap(w, i);
    /* Aliases of aliases go first: destroy whatever nothing aliases until only fixed remain. */
    for (bool progress = true; progress;) {
        progress = false;
        for (int i = N_CONTAINERS + 1; i < MAX_NODES; i++)
            if (w->nodes[i].mr && p_destroyable(w, i)) {
                struct node *nd = &w->nodes[i];
                if (nd->kind == N_ALIAS)
                    w->nodes[nd->target].n_aliasers--;
                nd->tag->destroyed = true;
                vck_mr_destroy(nd->mr);
                memset(nd, 0, sizeof(*nd));
                w->destroyed++;
                progress = true;
            }
    }
    vck_memmap_commit(w->mm);
    vck_as_destroy(w->as);
    for (int i = N_CONTAINERS; i >= 0; i--) {
        w->nodes[i].tag->destroyed = true;
        vck_mr_destroy(w->nodes[i].mr);
        memset(&w->nodes[i], 0, sizeof(w->nodes[i]));
        w->destroyed++;
    }
    vck_memmap_free(w->mm);
    vec_free(&w->told);
    vec_free(&w->dels);
    vec_free(&w->news);
}

static bool join_by(pthread_t t, const struct timespec *deadline)
{
    return pthread_timedjoin_np(t, NULL, deadline) == 0;
}

int main(int argc, char **argv)
{
    struct vck_stress_args args = {.duration = 2.0, .threads = 2};
    vck_stress_parse(argc, argv, &args, "flatview-stress");
    if (args.threads > MAX_READERS) {
        fprintf(stderr, "flatview-stress: at most %d readers\n", MAX_READERS);
        return 2;
    }
    run_seed = args.seed;
    install_fault_handler();
    pool_init(&tag_pool, TAG_POOL, TAG_QUARANTINE, tag_free, tag_fifo);
    pool_init(&ram_pool, RAM_POOL, RAM_QUARANTINE, ram_free, ram_fifo);
    pool_init(&log_pool, LOG_POOL, LOG_QUARANTINE, log_free, log_fifo);

    vck_rcu_register_thread();
    struct writer *w = &S.w;
    setup(w, args.seed);
    S.as = w->as;
    S.slot = w->slot;
    S.threads = args.threads;

    for (int i = 0; i < args.threads; i++) {
        struct reader *r = &S.readers[i];
        r->id = i;
        r->rng = args.seed * 31 + (uint64_t)i + 1;
        pthread_create(&r->thread, NULL, reader_main, r);
    }
    pthread_t writer;
    double start = vck_now();
    pthread_create(&writer, NULL, writer_main, w);

    vck_rcu_thread_offline(); /* main only waits now; qsbr must not wait for it */
    while (!atomic_load_explicit(&stop, memory_order_relaxed) &&
           vck_now() - start < args.duration) {
        struct timespec tick = {.tv_nsec = 10 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
    vck_rcu_thread_online();
    atomic_store_explicit(&stop, true, memory_order_relaxed);

    /* A grace period or reclamation wait that never ends is a failure, not a hang. */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    bool stuck = !join_by(writer, &deadline);
    for (int i = 0; i < args.threads && !stuck; i++)
        stuck = !join_by(S.readers[i].thread, &deadline);
    double elapsed = vck_now() - start;
    if (stuck) {
        printf("flatview-stress: FAIL a thread is stuck: errors=%llu (stuck=1) seed=%llu\n",
               (unsigned long long)(errors_total() + 1), (unsigned long long)args.seed);
        return 1;
    }

    struct vck_memmap_stats st;
    vck_memmap_get_stats(w->mm, &st);
    size_t bound = pending_bound(args.threads);
    if (st.peak_pending_bytes > bound)
        report(ERR_MEMORY, "peak_pending_bytes %zu > bound %zu (limit %d)", st.peak_pending_bytes,
               bound, PENDING_LIMIT);
    uint64_t destroyed_in_run = w->destroyed;
    uint64_t released_in_run = atomic_load_explicit(&regions_released, memory_order_relaxed);

    teardown(w);
    /* vck_memmap_free() waited for every reclamation: every region released, every view freed. */
    uint64_t released = atomic_load_explicit(&regions_released, memory_order_relaxed);
    uint64_t live = atomic_load_explicit(&log_live, memory_order_relaxed);
    if (released != w->created)
        report(ERR_RELEASE, "%llu regions created, %llu released after vck_memmap_free",
               (unsigned long long)w->created, (unsigned long long)released);
    if (live != 0)
        report(ERR_RELEASE, "%llu views' derived data not freed after vck_memmap_free",
               (unsigned long long)live);
    vck_rcu_unregister_thread();

    uint64_t lookups = 0, sections = 0, walks = 0, held = 0;
    for (int i = 0; i < args.threads; i++) {
        lookups += S.readers[i].lookups;
        sections += S.readers[i].sections;
        walks += S.readers[i].walks;
        held += S.readers[i].held;
    }
    uint64_t errs = errors_total();

    /* Progress floors, about a twentieth of what a ThreadSanitizer build does on two busy cores:
     * an idle or starved run must not pass. */
    uint64_t min_views = (uint64_t)(100 * args.duration);
    uint64_t min_lookups = (uint64_t)(10000 * args.duration);
    bool progress = w->builds >= min_views && lookups >= min_lookups && destroyed_in_run > 0 &&
                    released_in_run > 0 && held > 0 && walks > 0 && st.reclaim_waits > 0;
    bool pass = errs == 0 && progress;

    printf("flatview-stress: %s views=%llu lookups=%llu errors=%llu (", pass ? "PASS" : "FAIL",
           (unsigned long long)w->builds, (unsigned long long)lookups, (unsigned long long)errs);
    for (int k = 0; k < ERR_KINDS; k++)
        printf("%s%s=%llu", k ? " " : "", err_names[k],
               (unsigned long long)atomic_load_explicit(&errors[k], memory_order_relaxed));
    printf(") commits=%llu transactions=%llu created=%llu destroyed=%llu released=%llu "
           "sections=%llu walks=%llu held=%llu peak_pending=%zu bound=%zu reclaim_waits=%llu "
           "readers=%d seed=%llu duration=%.2fs\n",
           (unsigned long long)st.commits, (unsigned long long)w->transactions,
           (unsigned long long)w->created, (unsigned long long)destroyed_in_run,
           (unsigned long long)released_in_run, (unsigned long long)sections,
           (unsigned long long)walks, (unsigned long long)held, st.peak_pending_bytes, bound,
           (unsigned long long)st.reclaim_waits, args.threads, (unsigned long long)args.seed,
           elapsed);
    if (!progress && errs == 0)
        printf("flatview-stress: too little progress: need %llu views, %llu lookups, and some "
               "destroyed and released regions, held views, walks and reclaim waits\n",
               (unsigned long long)min_views, (unsigned long long)min_lookups);
    return pass ? 0 : 1;
}
