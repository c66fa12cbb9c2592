/*
 * dispatch-stress: readers translate and access random addresses through three page maps of
 * one address space while a writer keeps remapping it, and every answer is checked.
 *
 * Contents. Every terminal region has a tag (for MMIO it is the device, the region's opaque;
 * for RAM the region's name names it) with {magic, id, ~id, region}. Its bytes follow a pattern
 * of (kind, id, offset): the 8-byte word at offset 8w is kind << 56 | id << 32 | w, so any
 * aligned word read from anywhere says which region and offset it came from. RAM is filled with
 * it before it is mapped; MMIO devices compute it, checking in every callback that the device is
 * alive and that the access has the shape the region asked for (size, alignment, bounds). All
 * RAM outside the scratch windows is read-only, so no store can change a pattern (and no two
 * readers race on RAM). Each reader owns one writable RAM region, its scratch, in a window of
 * its own that no other thread reads: the writer enables, disables, resizes, write-protects,
 * unmaps and remaps it, always at the same address, and the reader keeps a shadow of what its
 * stores should have left there.
 *
 * Checks that hold whatever the timing: a translated section contains the address, xlat.len
 * stays inside it and within what was asked, the xlat's offset and host pointer follow from the
 * section, the section agrees with its region (kind, host, ops, opaque), the device or RAM is
 * alive and its bytes are exactly the pattern at the xlat's offset. Reads and loads outside any
 * check window return whole pattern words of some region (or zeros, with an error). Exact
 * checks: a reader loads the current view before and after an operation; when both loads return
 * the same view, the operation used that view (loads of one location are coherent), so its
 * answer must match a model computed from the view's ranges with vck_flatview_find(): the
 * section field by field, xlat.len to the byte, every byte read, the result code, the bytes a
 * store left in the scratch and the RAM write hook's calls. Memory-region caches hold their own
 * view, so every cache operation is checked exactly against it, and a direct cache must be
 * backed by RAM ranges of that view with contiguous host memory.
 *
 * Lifetimes. The memmap runs with VCK_MEMMAP_QUARANTINE: a reclaimed view is poisoned and kept
 * a while, so a reader holding one would see a generation from poison (each reader checks that
 * generations never go back and never pass what the writer built). A page map is freed with its
 * view (not poisoned: the asan preset catches its use). A region's release callback
 * (vck_mr_set_release) poisons its tag and, for RAM the test owns, the buffer; tags and buffers
 * are quarantined before reuse and never freed during the run, so a late reader finds poison,
 * not freed memory. Caches keep old views alive across many commits, and are checked against
 * them.
 *
 * Progress floors (views published, reader operations and exact checks per second) make an
 * idle or starved run fail instead of passing.
 *
 * Exit status: 0 pass, 1 a failed check or too little progress, 2 bad command line.
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

#include <vcpukit/dispatch.h>
#include <vcpukit/rcu.h>

#include "stress.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STRESS_SANITIZED 1
#endif
#endif

typedef unsigned __int128 u128;

enum {
    MAX_READERS = 16,
    N_DISPATCH = 3, /* page maps of the one address space; the fourth builder slot is ours */
    MAX_NODES = 64,

    TAG_POOL = 4096, /* tags of shared regions (devices for MMIO) */
    TAG_QUARANTINE = 1024,
    BUF_POOL = 48, /* test-owned RAM buffers */
    BUF_QUARANTINE = 16,
    BUF_SIZE = 0x10000,

    SCRATCH_CAP = 0x4000,
    MAX_BATCH = 8,    /* translations per read-side section */
    MAX_ACCESS = 256, /* bytes per read or write */
    MAX_HOOK = 8,
    MAX_REPORTS = 20,
    PENDING_LIMIT = 2 * 1024 * 1024,
};

/*
 * The layout. Shared regions live in the first LOW_SPAN bytes and the last HIGH_SPAN bytes of
 * the space, where ranges end at 2^64 - 1. Reader t's scratch sits at SCRATCH_OFFSET in window
 * t, far from both; nothing else is ever mapped in the windows.
 */
static const uint64_t LOW_SPAN = 0x400000;
static const uint64_t HIGH_SPAN = 0x100000;
static const uint64_t SCRATCH_BASE = 0x100000000ULL;
static const uint64_t WINDOW = 0x100000;
static const uint64_t SCRATCH_OFFSET = 0x800;
#define HIGH_BASE   ((uint64_t)0 - HIGH_SPAN)
#define SCRATCH_END (SCRATCH_BASE + MAX_READERS * WINDOW)

static const uint64_t TAG_LIVE = 0x7a6c17e0c0ffee11ULL;
static const uint64_t TAG_DEAD = 0xdeadbeefdeadbeefULL;

/* The top byte of every pattern word: which kind of region it belongs to. */
enum { PAT_RAM = 0xa5, PAT_MMIO = 0x5a };

static inline uint64_t pattern_word(unsigned kind, uint32_t id, uint64_t word)
{
    return (uint64_t)kind << 56 | (uint64_t)(id & 0xffffff) << 32 | (uint32_t)word;
}

static inline uint8_t pattern_byte(unsigned kind, uint32_t id, uint64_t offset)
{
    return (uint8_t)(pattern_word(kind, id, offset >> 3) >> (8 * (offset & 7)));
}

/* ---------------------------------------------------------------------------------------------
 * Errors: counted by kind from any thread (the RCU callback thread included), a few printed.
 */
enum err_kind {
    ERR_XLAT,    /* a translation inconsistent with itself or its section */
    ERR_EXACT,   /* an answer that disagrees with the view it was given by */
    ERR_DATA,    /* bytes that are no region's, or not the region's the xlat names */
    ERR_DEVICE,  /* a callback on a dead device or with a shape its region forbids */
    ERR_VIEW,    /* a view whose generation is poison, goes back, or was never built */
    ERR_CACHE,   /* a memory-region cache that answers otherwise than its view */
    ERR_HOOK,    /* RAM write hook calls that do not match the RAM written */
    ERR_RELEASE, /* a release callback too early, twice, or missing */
    ERR_KINDS,
};

static const char *const err_names[ERR_KINDS] = {"xlat", "exact", "data", "device",
                                                 "view", "cache", "hook", "release"};

static atomic_uint_fast64_t errors[ERR_KINDS];
static atomic_uint reports;
static uint64_t run_seed;

static void report(enum err_kind kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void report(enum err_kind kind, const char *fmt, ...)
{
    atomic_fetch_add_explicit(&errors[kind], 1, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&reports, 1, memory_order_relaxed) >= MAX_REPORTS)
        return;
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "dispatch-stress: %s error: %s\n", err_names[kind], msg);
}

static uint64_t errors_total(void)
{
    uint64_t sum = 0;
    for (int k = 0; k < ERR_KINDS; k++)
        sum += atomic_load_explicit(&errors[k], memory_order_relaxed);
    return sum;
}

/* ---------------------------------------------------------------------------------------------
 * Pools: a free stack and a FIFO quarantine; a released slot is reused only after @quarantine
 * later releases. Callers hold the lock, which also orders what they write into the slot.
 */
struct pool {
    pthread_mutex_t lock;
    uint32_t quarantine;
    uint32_t *free_list, n_free;
    uint32_t *fifo, fifo_head, fifo_count; /* quarantine + 1 places */
};

static void pool_init(struct pool *p, uint32_t size, uint32_t quarantine, uint32_t *free_buf,
                      uint32_t *fifo_buf)
{
    pthread_mutex_init(&p->lock, NULL);
    p->quarantine = quarantine;
    p->free_list = free_buf;
    p->fifo = fifo_buf;
    p->n_free = size;
    p->fifo_head = p->fifo_count = 0;
    for (uint32_t i = 0; i < size; i++)
        free_buf[i] = size - 1 - i;
}

static int64_t pool_get(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    int64_t i = p->n_free ? (int64_t)p->free_list[--p->n_free] : -1;
    pthread_mutex_unlock(&p->lock);
    return i;
}

static void pool_put__locked(struct pool *p, uint32_t i)
{
    uint32_t cap = p->quarantine + 1;
    p->fifo[(p->fifo_head + p->fifo_count) % cap] = i;
    if (++p->fifo_count <= p->quarantine)
        return;
    p->free_list[p->n_free++] = p->fifo[p->fifo_head];
    p->fifo_head = (p->fifo_head + 1) % cap;
    p->fifo_count--;
}

/* ---------------------------------------------------------------------------------------------
 * Tags. Plain fields: the memmap's reclamation (an RCU grace period, annotated for TSan) must
 * order the release callback's poisoning after every reader that used them.
 */
enum tag_kind { TAG_RAM, TAG_MMIO, TAG_SCRATCH };

struct tag {
    uint64_t magic;
    uint32_t id;
    uint32_t check; /* ~id while live */
    struct vck_mr *mr;
    uint64_t capacity; /* the most bytes the region ever has */
    enum tag_kind kind;
    int buf;   /* test-owned RAM: index in bufs, else -1 */
    int owner; /* scratch: the reader */
    unsigned min_access, max_access;
    bool unaligned, writable;
    bool destroyed; /* set by the writer just before vck_mr_destroy() */
};

static struct tag tags[TAG_POOL];
static uint32_t tag_free[TAG_POOL], tag_fifo[TAG_QUARANTINE + 1];
static struct pool tag_pool;

static struct tag scratch_tags[MAX_READERS];
static _Alignas(64) uint8_t scratch_mem[MAX_READERS][SCRATCH_CAP];

static _Alignas(64) uint8_t bufs[BUF_POOL][BUF_SIZE];
static uint32_t buf_free[BUF_POOL], buf_fifo[BUF_QUARANTINE + 1];
static struct pool buf_pool;

static atomic_uint_fast32_t next_id = 1;
static atomic_uint_fast64_t tags_created, tags_released;
static atomic_uint_fast64_t device_reads, device_writes;

static bool tag_alive(const struct tag *t, const struct vck_mr *mr)
{
    return t->magic == TAG_LIVE && t->check == ~t->id && t->mr == mr;
}

/* The tag of a region a live view names, from the region's name ("t<slot>" or "s<reader>"). */
static const struct tag *tag_of(const struct vck_mr *mr)
{
    const char *name = vck_mr_name(mr);
    if (!name || (name[0] != 't' && name[0] != 's'))
        return NULL;
    unsigned long n = 0;
    const char *p = name + 1;
    if (*p < '0' || *p > '9')
        return NULL;
    for (; *p >= '0' && *p <= '9'; p++)
        n = n * 10 + (unsigned long)(*p - '0');
    if (*p)
        return NULL;
    if (name[0] == 't')
        return n < TAG_POOL ? &tags[n] : NULL;
    return n < MAX_READERS ? &scratch_tags[n] : NULL;
}

static bool tag_is_device(const void *p)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)tags;
    return (uintptr_t)p >= (uintptr_t)tags && off < sizeof(tags) && off % sizeof(tags[0]) == 0;
}

static void region_released(void *opaque)
{
    struct tag *t = opaque;
    if (t->magic != TAG_LIVE || !t->destroyed) {
        report(ERR_RELEASE, "region %u released %s", t->id,
               t->magic != TAG_LIVE ? "twice" : "before it was destroyed");
        return;
    }
    bool shared = tag_is_device(t);
    struct pool *p = shared ? &tag_pool : NULL;
    if (p)
        pthread_mutex_lock(&p->lock);
    t->magic = TAG_DEAD;
    t->check = 0;
    if (t->buf >= 0) {
        pthread_mutex_lock(&buf_pool.lock);
        memset(bufs[t->buf], VCK_FLATVIEW_POISON, BUF_SIZE);
        pool_put__locked(&buf_pool, (uint32_t)t->buf);
        pthread_mutex_unlock(&buf_pool.lock);
    }
    if (p) {
        pool_put__locked(p, (uint32_t)(t - tags));
        pthread_mutex_unlock(&p->lock);
    }
    atomic_fetch_add_explicit(&tags_released, 1, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------------------------
 * Devices. Read and write callbacks check that the device is alive and that the access has the
 * shape dispatch promised; reads return the pattern, writes change nothing.
 */
static bool device_access_ok(const struct tag *t, uint64_t offset, unsigned size, bool write)
{
    if (!tag_is_device(t) || t->magic != TAG_LIVE || t->check != ~t->id || t->kind != TAG_MMIO) {
        report(ERR_DEVICE, "%s callback on a dead or foreign device (%p)", write ? "write" : "read",
               (const void *)t);
        return false;
    }
    bool pow2 = size && !(size & (size - 1));
    if (!pow2 || size < t->min_access || size > t->max_access || (!t->unaligned && offset % size) ||
        offset >= t->capacity || (!t->unaligned && size > t->capacity - offset)) {
        report(ERR_DEVICE,
               "device %u (access %u..%u%s, %llu bytes): %s of %u bytes at offset %#llx", t->id,
               t->min_access, t->max_access, t->unaligned ? ", unaligned" : "",
               (unsigned long long)t->capacity, write ? "write" : "read", size,
               (unsigned long long)offset);
        return false;
    }
    return true;
}

static enum vck_mem_result device_read(void *opaque, uint64_t offset, uint64_t *value,
                                       unsigned size)
{
    const struct tag *t = opaque;
    if (!device_access_ok(t, offset, size, false))
        return VCK_MEM_DEVICE_ERROR;
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)pattern_byte(PAT_MMIO, t->id, offset + i) << (8 * i);
    *value = v;
    atomic_fetch_add_explicit(&device_reads, 1, memory_order_relaxed);
    return VCK_MEM_OK;
}

static enum vck_mem_result device_write(void *opaque, uint64_t offset, uint64_t value,
                                        unsigned size)
{
    (void)value;
    if (!device_access_ok(opaque, offset, size, true))
        return VCK_MEM_DEVICE_ERROR;
    atomic_fetch_add_explicit(&device_writes, 1, memory_order_relaxed);
    return VCK_MEM_OK;
}

/* The access shapes devices ask for; the write-less ones fail every write. */
static const struct vck_mr_ops device_ops[] = {
    {.read = device_read, .write = device_write, .min_access = 1, .max_access = 8},
    {.read = device_read, .write = device_write, .min_access = 4, .max_access = 4},
    {.read = device_read,
     .write = device_write,
     .min_access = 1,
     .max_access = 4,
     .unaligned = true},
    {.read = device_read, .write = device_write, .min_access = 2, .max_access = 8},
    {.read = device_read, .write = device_write, .min_access = 8, .max_access = 8},
    {.read = device_read, .write = device_write, .min_access = 1, .max_access = 1},
    {.read = device_read,
     .write = device_write,
     .min_access = 4,
     .max_access = 8,
     .unaligned = true},
    {.read = device_read, .min_access = 1, .max_access = 8},
};
#define N_DEVICE_OPS (sizeof(device_ops) / sizeof(device_ops[0]))

/* ---------------------------------------------------------------------------------------------
 * The RAM write hook: records calls on the calling thread, for the reader to compare.
 */
struct hook_log {
    unsigned calls;
    uint64_t addr[MAX_HOOK], len[MAX_HOOK];
};

static _Thread_local struct hook_log hook;

static void ram_written(void *opaque, uint64_t addr, uint64_t len)
{
    (void)opaque;
    if (hook.calls < MAX_HOOK) {
        hook.addr[hook.calls] = addr;
        hook.len[hook.calls] = len;
    }
    hook.calls++;
}

/* ---------------------------------------------------------------------------------------------
 * Shared state.
 */
struct shared {
    struct vck_memmap *mm;
    struct vck_as *as;
    struct vck_dispatch *d[N_DISPATCH];
    int readers;
    atomic_bool stop;
    atomic_uint_fast64_t latest_gen; /* release: stored by our builder before each publish */
    atomic_uint_fast64_t builds;
};

static struct shared S;

static const struct vck_dispatch_options dispatch_opts[N_DISPATCH] = {
    {.ram_write = ram_written},                  /* 4 KiB pages, 9 bits: QEMU's shape */
    {.level_bits = 3, .ram_write = ram_written}, /* 18 levels */
    {.page_bits = 8, .level_bits = 5, .no_compress = true, .ram_write = ram_written},
};

/* Our own view builder: only records the generation, before the view is published. */
static void *gen_build(void *opaque, const struct vck_flatview *view,
                       const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    (void)opaque;
    (void)old;
    (void)old_data;
    *bytes = 0;
    atomic_store_explicit(&S.latest_gen, vck_flatview_generation(view), memory_order_release);
    atomic_fetch_add_explicit(&S.builds, 1, memory_order_relaxed);
    return NULL;
}

static void gen_free(void *opaque, void *data)
{
    (void)opaque;
    (void)data;
}

/* ---------------------------------------------------------------------------------------------
 * The model: what a view says about bytes, computed from its ranges alone.
 */

/* The range containing @a, or NULL with *@next the start of the next range (*@has_next false:
 * none up to 2^64). */
static const struct vck_flat_range *view_lookup(const struct vck_flatview *v, uint64_t a,
                                                uint64_t *next, bool *has_next)
{
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(v, &n);
    size_t lo = 0, hi = n; /* first range with last >= a */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r[mid].last < a)
            lo = mid + 1;
        else
            hi = mid;
    }
    const struct vck_flat_range *found = vck_flatview_find(v, a);
    if (lo < n && r[lo].start <= a) {
        if (found != &r[lo])
            report(ERR_EXACT, "vck_flatview_find(%#llx) disagrees with the ranges",
                   (unsigned long long)a);
        return &r[lo];
    }
    if (found)
        report(ERR_EXACT, "vck_flatview_find(%#llx) found a range in a hole",
               (unsigned long long)a);
    *has_next = lo < n;
    *next = lo < n ? r[lo].start : 0;
    return NULL;
}

struct cache {
    struct vck_mrc c;
    bool live;
    uint64_t gen; /* its view's generation when made */
    int uses;
};

struct reader {
    pthread_t thread;
    int id;
    uint64_t rng;
    uint64_t last_gen;
    uint64_t window; /* address of scratch offset 0 */
    uint8_t *mem;    /* the scratch's backing, which only this thread touches */
    uint8_t shadow[SCRATCH_CAP];
    struct cache caches[2];
    uint64_t translations, exact_translations, sections, accesses, exact_accesses;
    uint64_t weak_accesses, cache_inits, cache_direct, cache_ops, stores, hook_calls;
};

/*
 * The bytes of region @mr at [@offset, @offset + @n), into @out. False (and nothing written)
 * when the region is not one this thread may read, which the address choice rules out.
 */
static bool region_bytes(const struct reader *rd, const struct vck_mr *mr, uint64_t offset,
                         uint8_t *out, uint64_t n)
{
    const struct tag *t = tag_of(mr);
    if (!t || !tag_alive(t, mr)) {
        report(ERR_DATA, "a live view names a dead region (%p)", (const void *)mr);
        memset(out, 0, n);
        return true;
    }
    if (t->kind == TAG_SCRATCH) {
        if (!rd || t->owner != rd->id || &scratch_tags[rd->id] != t)
            return false;
        if (offset > SCRATCH_CAP || n > SCRATCH_CAP - offset) {
            report(ERR_DATA, "scratch offset %#llx+%llu past its capacity",
                   (unsigned long long)offset, (unsigned long long)n);
            memset(out, 0, n);
            return true;
        }
        memcpy(out, rd->shadow + offset, n);
        return true;
    }
    unsigned kind = t->kind == TAG_MMIO ? PAT_MMIO : PAT_RAM;
    for (uint64_t i = 0; i < n; i++)
        out[i] = pattern_byte(kind, t->id, offset + i);
    return true;
}

/* A RAM piece the model expects a write to reach: for the hook and the shadow. */
struct piece {
    uint64_t addr, len, offset;
    bool scratch;
};

struct model {
    enum vck_mem_result result;
    unsigned n_pieces;
    struct piece pieces[MAX_HOOK];
    bool unknown; /* it touched memory this thread may not model */
};

static void model_note(struct model *m, enum vck_mem_result r)
{
    if (r != VCK_MEM_OK && m->result == VCK_MEM_OK)
        m->result = r;
}

/* What reading (or writing, @write) [a, a + len) should do in view @v; @out gets read bytes. */
static void model_access(const struct reader *rd, const struct vck_flatview *v, uint64_t a,
                         uint64_t len, bool write, uint8_t *out, struct model *m)
{
    *m = (struct model){.result = VCK_MEM_OK};
    while (len) {
        uint64_t next = 0;
        bool has_next = false;
        const struct vck_flat_range *r = view_lookup(v, a, &next, &has_next);
        u128 room;
        if (r)
            room = (u128)r->last - a + 1;
        else
            room = has_next ? (u128)(next - a) : ((u128)1 << 64) - a;
        uint64_t l = room < len ? (uint64_t)room : len;
        if (!r) {
            if (out)
                memset(out, 0, l);
            model_note(m, VCK_MEM_DECODE_ERROR);
        } else {
            uint64_t offset = r->offset + (a - r->start);
            enum vck_mr_kind kind = vck_mr_kind(r->mr);
            if (out && !region_bytes(rd, r->mr, offset, out, l))
                m->unknown = true;
            if (write && r->readonly) {
                model_note(m, VCK_MEM_DECODE_ERROR);
            } else if (write && kind == VCK_MR_MMIO) {
                if (!vck_mr_ops(r->mr)->write)
                    model_note(m, VCK_MEM_DEVICE_ERROR);
            } else if (write && kind == VCK_MR_RAM) {
                const struct tag *t = tag_of(r->mr);
                if (m->n_pieces < MAX_HOOK)
                    m->pieces[m->n_pieces] =
                        (struct piece){a, l, offset, t && t->kind == TAG_SCRATCH};
                else
                    m->unknown = true;
                m->n_pieces++;
            }
        }
        if (out)
            out += l;
        len -= l;
        if (len && (uint64_t)(a + l) == 0) { /* past 2^64 - 1: zeros and a decode error */
            if (out)
                memset(out, 0, len);
            model_note(m, VCK_MEM_DECODE_ERROR);
            break;
        }
        a += l;
    }
}

/* ---------------------------------------------------------------------------------------------
 * The writer's model of the tree. Writer state: the writer thread, and main before it starts
 * and after it has been joined.
 */
enum node_kind { N_CONTAINER, N_RAM, N_RAM_BUF, N_MMIO, N_ALIAS, N_SCRATCH };

struct node {
    struct vck_mr *mr; /* NULL: free slot */
    enum node_kind kind;
    struct tag *tag;
    uint64_t capacity; /* RAM: the backing; MMIO: the device; alias, container: its size */
    int parent;        /* container node, -1 when unmapped */
    int target;        /* alias: the node it shows */
    bool persistent;   /* never destroyed (containers, alias targets, scratch) */
    bool enabled;
};

/* Nodes 0..3 are containers: the root, a bus and a device cluster in it, and one at the top. */
enum { ROOT = 0, BUS = 1, CLUSTER = 2, TOP = 3, N_CONTAINERS = 4 };
static const uint64_t BUS_SIZE = 0x100000, CLUSTER_SIZE = 0x40000, TOP_SIZE = 0x40000;

struct writer {
    pthread_t thread;
    struct node nodes[MAX_NODES];
    int scratch_node[MAX_READERS];
    uint64_t rng;
    uint64_t ops, txns, created, destroyed, in_section_ops;
};

static struct writer W;

static uint64_t rnd(uint64_t bound)
{
    return vck_rand_below(&W.rng, bound);
}

static int node_free_slot(void)
{
    for (int i = N_CONTAINERS; i < MAX_NODES; i++)
        if (!W.nodes[i].mr)
            return i;
    return -1;
}

static uint64_t container_span(int c)
{
    return c == ROOT ? 0 : W.nodes[c].capacity;
}

/* An 8-aligned address for a child of @size in container @c, sometimes page-aligned, sometimes
 * at the very end, sometimes hanging past it (clipped). */
static uint64_t pick_place(int c, uint64_t size)
{
    if (c == ROOT) {
        bool high = rnd(4) == 0;
        uint64_t span = high ? HIGH_SPAN : LOW_SPAN;
        uint64_t base = high ? HIGH_BASE : 0;
        if (size >= span)
            return base;
        uint64_t at = 8 * rnd((span - size) / 8 + 1);
        if (rnd(3) == 0)
            at &= ~(uint64_t)0xfff;
        if (high && rnd(6) == 0)
            at = span - size; /* ends at 2^64 - 1 */
        return base + at;
    }
    uint64_t span = container_span(c);
    uint64_t at;
    if (rnd(8) == 0)
        at = 8 * rnd(span / 8); /* may hang past the end */
    else if (size < span)
        at = 8 * rnd((span - size) / 8 + 1);
    else
        at = 0;
    if (rnd(3) == 0)
        at &= ~(uint64_t)0xfff;
    if (rnd(8) == 0 && size <= span)
        at = span - size;
    return at;
}

static void map_node(int i, int parent)
{
    struct node *n = &W.nodes[i];
    uint64_t size = n->capacity;
    if (n->kind != N_CONTAINER && n->kind != N_ALIAS)
        size = vck_mr_size(n->mr);
    vck_mr_add_subregion(W.nodes[parent].mr, pick_place(parent, size), n->mr, (int)rnd(6) - 2);
    n->parent = parent;
}

static void unmap_node(int i)
{
    struct node *n = &W.nodes[i];
    vck_mr_del_subregion(W.nodes[n->parent].mr, n->mr);
    n->parent = -1;
}

static int random_parent(void)
{
    static const int parents[] = {ROOT, ROOT, ROOT, BUS, BUS, CLUSTER, TOP};
    return parents[rnd(sizeof(parents) / sizeof(parents[0]))];
}

static uint64_t random_size(bool big_ok)
{
    switch (rnd(big_ok ? 6 : 5)) {
    case 0:
        return 8 * (1 + rnd(64)); /* a few registers */
    case 1:
        return 8 * (1 + rnd(512)); /* sub-page */
    case 2:
        return 0x1000; /* one page */
    case 3:
        return 0x1000 * (2 + rnd(15));
    case 4:
        return 8 * (1 + rnd(BUF_SIZE / 8));
    default:
        return 0x40000 << rnd(3); /* big RAM, 256 KiB to 1 MiB */
    }
}

static struct tag *tag_new(enum tag_kind kind, uint64_t capacity)
{
    int64_t slot = pool_get(&tag_pool);
    if (slot < 0)
        return NULL;
    struct tag *t = &tags[slot];
    pthread_mutex_lock(&tag_pool.lock);
    uint32_t id = (uint32_t)atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    *t = (struct tag){.magic = TAG_LIVE,
                      .id = id,
                      .check = ~id,
                      .capacity = capacity,
                      .kind = kind,
                      .buf = -1,
                      .owner = -1};
    pthread_mutex_unlock(&tag_pool.lock);
    return t;
}

static void fill_pattern(uint8_t *host, uint32_t id, uint64_t size)
{
    for (uint64_t w = 0; w < size / 8; w++) {
        uint64_t v = pattern_word(PAT_RAM, id, w);
        memcpy(host + 8 * w, &v, 8);
    }
}

/* A new shared region in node slot @i: RAM (read-only, owned or test-owned backing) or MMIO. */
static bool node_create(int i, enum node_kind kind, uint64_t size)
{
    struct node *n = &W.nodes[i];
    struct tag *t = tag_new(kind == N_MMIO ? TAG_MMIO : TAG_RAM, size);
    if (!t)
        return false;
    char name[16];
    snprintf(name, sizeof(name), "t%u", (unsigned)(t - tags));
    struct vck_mr *mr;
    if (kind == N_MMIO) {
        const struct vck_mr_ops *ops = &device_ops[rnd(N_DEVICE_OPS)];
        t->min_access = ops->min_access;
        t->max_access = ops->max_access;
        t->unaligned = ops->unaligned;
        t->writable = ops->write != NULL;
        mr = vck_mr_new_mmio(S.mm, name, size, ops, t);
    } else if (kind == N_RAM_BUF) {
        int64_t b = pool_get(&buf_pool);
        if (b < 0) {
            kind = N_RAM;
        } else {
            pthread_mutex_lock(&buf_pool.lock);
            fill_pattern(bufs[b], t->id, size);
            pthread_mutex_unlock(&buf_pool.lock);
            t->buf = (int)b;
        }
        mr = kind == N_RAM ? vck_mr_new_ram(S.mm, name, size)
                           : vck_mr_new_ram_ptr(S.mm, name, size, bufs[b]);
        if (kind == N_RAM && mr)
            fill_pattern(vck_mr_host(mr), t->id, size);
    } else {
        mr = vck_mr_new_ram(S.mm, name, size);
        if (mr)
            fill_pattern(vck_mr_host(mr), t->id, size);
    }
    if (!mr) {
        fprintf(stderr, "dispatch-stress: out of memory creating a region\n");
        exit(1);
    }
    t->mr = mr;
    if (kind != N_MMIO)
        vck_mr_set_readonly(mr, true);
    vck_mr_set_release(mr, region_released, t);
    atomic_fetch_add_explicit(&tags_created, 1, memory_order_relaxed);
    *n = (struct node){.mr = mr,
                       .kind = kind,
                       .tag = t,
                       .capacity = size,
                       .parent = -1,
                       .target = -1,
                       .enabled = true};
    W.created++;
    return true;
}

static bool node_aliased(int i)
{
    for (int j = 0; j < MAX_NODES; j++)
        if (W.nodes[j].mr && W.nodes[j].kind == N_ALIAS && W.nodes[j].target == i)
            return true;
    return false;
}

static void node_destroy(int i)
{
    struct node *n = &W.nodes[i];
    if (n->parent >= 0)
        unmap_node(i);
    if (n->tag)
        n->tag->destroyed = true;
    vck_mr_destroy(n->mr);
    memset(n, 0, sizeof(*n));
    n->parent = -1;
    W.destroyed++;
}

/* A random live node that is not a container (and, with @mortal, that may be destroyed). */
static int random_node(bool mortal)
{
    for (int tries = 0; tries < 16; tries++) {
        int i = N_CONTAINERS + (int)rnd(MAX_NODES - N_CONTAINERS);
        struct node *n = &W.nodes[i];
        if (n->mr && n->kind != N_SCRATCH && (!mortal || (!n->persistent && !node_aliased(i))))
            return i;
    }
    return -1;
}

static void op_scratch(void)
{
    int t = (int)rnd((uint64_t)S.readers);
    int i = W.scratch_node[t];
    struct node *n = &W.nodes[i];
    switch (rnd(5)) {
    case 0:
        n->enabled = !n->enabled;
        vck_mr_set_enabled(n->mr, n->enabled);
        break;
    case 1:
        vck_mr_set_size(n->mr, 8 * (1 + rnd(SCRATCH_CAP / 8)));
        break;
    case 2:
        vck_mr_set_readonly(n->mr, !vck_mr_readonly(n->mr));
        break;
    default:
        /* Unmapped and mapped again, always at the same place. */
        if (n->parent >= 0) {
            unmap_node(i);
        } else {
            vck_mr_add_subregion(W.nodes[ROOT].mr,
                                 SCRATCH_BASE + (uint64_t)t * WINDOW + SCRATCH_OFFSET, n->mr, 0);
            n->parent = ROOT;
        }
        break;
    }
}

static void writer_op(void)
{
    uint64_t what = rnd(100);
    W.ops++;
    if (what < 14) {
        int i = node_free_slot();
        if (i < 0)
            return;
        uint64_t k = rnd(10);
        enum node_kind kind = k < 4 ? N_MMIO : k < 7 ? N_RAM : N_RAM_BUF;
        uint64_t size = random_size(kind == N_RAM);
        if (kind == N_MMIO && size > 0x10000)
            size = 0x10000;
        if (kind == N_RAM_BUF && size > BUF_SIZE)
            size = BUF_SIZE;
        if (node_create(i, kind, size))
            map_node(i, random_parent());
    } else if (what < 26) {
        int i = random_node(true);
        if (i >= 0)
            node_destroy(i);
    } else if (what < 38) {
        int i = random_node(false);
        if (i < 0)
            return;
        if (W.nodes[i].parent >= 0)
            unmap_node(i);
        else
            map_node(i, random_parent());
    } else if (what < 52) {
        int i = random_node(false);
        if (i >= 0 && W.nodes[i].parent >= 0) {
            struct node *n = &W.nodes[i];
            vck_mr_set_address(n->mr, pick_place(n->parent, vck_mr_size(n->mr)));
        }
    } else if (what < 62) {
        int i = random_node(false);
        if (i >= 0) {
            struct node *n = &W.nodes[i];
            n->enabled = !n->enabled;
            vck_mr_set_enabled(n->mr, n->enabled);
        }
    } else if (what < 72) {
        int i = random_node(false);
        if (i >= 0 && W.nodes[i].kind != N_ALIAS) {
            struct node *n = &W.nodes[i];
            vck_mr_set_size(n->mr, 8 * (1 + rnd(n->capacity / 8)));
        }
    } else if (what < 77) {
        int i = random_node(false);
        if (i >= 0 && W.nodes[i].parent >= 0)
            vck_mr_set_priority(W.nodes[i].mr, (int)rnd(6) - 2);
    } else if (what < 82) {
        /* Move a container: every range inside it changes address. */
        static const int movable[] = {BUS, CLUSTER, TOP};
        int c = movable[rnd(3)];
        vck_mr_set_address(W.nodes[c].mr, pick_place(W.nodes[c].parent, W.nodes[c].capacity));
    } else if (what < 85) {
        /* Read-only on a container matters for its MMIO; its RAM is read-only anyway. */
        static const int flaggable[] = {BUS, CLUSTER, TOP};
        int c = flaggable[rnd(3)];
        vck_mr_set_readonly(W.nodes[c].mr, !vck_mr_readonly(W.nodes[c].mr));
    } else {
        op_scratch();
    }
}

static void writer_step(void)
{
    uint64_t how = rnd(16);
    if (how < 4) {
        /* A transaction, sometimes nested. */
        vck_memmap_begin(S.mm);
        int n = 2 + (int)rnd(6);
        for (int k = 0; k < n; k++) {
            if (rnd(8) == 0) {
                vck_memmap_begin(S.mm);
                writer_op();
                writer_op();
                vck_memmap_commit(S.mm);
            } else {
                writer_op();
            }
        }
        vck_memmap_commit(S.mm);
        W.txns++;
    } else if (how == 4) {
        /* A commit made inside a read-side section, which must never wait. */
        vck_rcu_read_lock();
        writer_op();
        vck_rcu_read_unlock();
        W.in_section_ops++;
    } else {
        writer_op();
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    vck_rcu_register_thread();
    while (!atomic_load_explicit(&S.stop, memory_order_relaxed)) {
        writer_step();
        if (rnd(16) == 0) {
            vck_rcu_thread_offline();
            struct timespec pause = {.tv_nsec = (long)(20000 + rnd(80000))};
            nanosleep(&pause, NULL);
            vck_rcu_thread_online();
        }
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* The starting tree: containers, persistent regions and their aliases, the scratches. */
static void writer_setup(void)
{
    struct node *nd = W.nodes;
    nd[ROOT] = (struct node){.mr = vck_mr_new_container(S.mm, "root", VCK_MR_SIZE_FULL),
                             .kind = N_CONTAINER,
                             .parent = -1,
                             .persistent = true};
    nd[BUS] = (struct node){.mr = vck_mr_new_container(S.mm, "bus", BUS_SIZE),
                            .kind = N_CONTAINER,
                            .capacity = BUS_SIZE,
                            .persistent = true};
    nd[CLUSTER] = (struct node){.mr = vck_mr_new_container(S.mm, "cluster", CLUSTER_SIZE),
                                .kind = N_CONTAINER,
                                .capacity = CLUSTER_SIZE,
                                .persistent = true};
    nd[TOP] = (struct node){.mr = vck_mr_new_container(S.mm, "top", TOP_SIZE),
                            .kind = N_CONTAINER,
                            .capacity = TOP_SIZE,
                            .persistent = true};
    for (int c = 0; c < N_CONTAINERS; c++)
        if (!nd[c].mr)
            exit(1);
    vck_memmap_begin(S.mm);
    vck_mr_add_subregion(nd[ROOT].mr, 0x100000, nd[BUS].mr, 1);
    nd[BUS].parent = ROOT;
    vck_mr_add_subregion(nd[BUS].mr, 0x80000, nd[CLUSTER].mr, 1);
    nd[CLUSTER].parent = BUS;
    vck_mr_add_subregion(nd[ROOT].mr, HIGH_BASE + 0x80000, nd[TOP].mr, 0);
    nd[TOP].parent = ROOT;

    /* Persistent regions: a 1 MiB ROM, a device page, a test-owned ROM, a small device. */
    int i = N_CONTAINERS;
    node_create(i, N_RAM, 0x100000);
    map_node(i, ROOT);
    int rom = i++;
    node_create(i, N_MMIO, 0x1000);
    map_node(i, BUS);
    int dev = i++;
    node_create(i, N_RAM_BUF, 0x8000);
    map_node(i, ROOT);
    int buf = i++;
    node_create(i, N_MMIO, 0x200);
    map_node(i, CLUSTER);
    i++;
    for (int p = N_CONTAINERS; p < i; p++)
        nd[p].persistent = true;
    /* Aliases: a window of the ROM, one of the device, one of the test-owned ROM. */
    const struct {
        int target;
        uint64_t offset, size;
    } aliases[] = {{rom, 0x10000, 0x20000}, {dev, 0x100, 0x200}, {buf, 0x808, 0x1ff8}};
    for (size_t k = 0; k < sizeof(aliases) / sizeof(aliases[0]); k++, i++) {
        char name[16];
        snprintf(name, sizeof(name), "alias%zu", k);
        nd[i] = (struct node){.mr = vck_mr_new_alias(S.mm, name, nd[aliases[k].target].mr,
                                                     aliases[k].offset, aliases[k].size),
                              .kind = N_ALIAS,
                              .capacity = aliases[k].size,
                              .parent = -1,
                              .target = aliases[k].target,
                              .enabled = true,
                              .persistent = true};
        map_node(i, random_parent());
    }
    /* A few ordinary regions to start with. */
    for (int k = 0; k < 16; k++, i++) {
        enum node_kind kind = k % 3 == 0 ? N_MMIO : k % 3 == 1 ? N_RAM : N_RAM_BUF;
        uint64_t size = random_size(false);
        if (size > BUF_SIZE)
            size = BUF_SIZE;
        node_create(i, kind, size);
        map_node(i, random_parent());
    }
    /* The scratches: writable RAM backed by scratch_mem, zero to start with. */
    for (int t = 0; t < S.readers; t++, i++) {
        struct tag *tg = &scratch_tags[t];
        *tg = (struct tag){.magic = TAG_LIVE,
                           .id = (uint32_t)atomic_fetch_add(&next_id, 1),
                           .capacity = SCRATCH_CAP,
                           .kind = TAG_SCRATCH,
                           .buf = -1,
                           .owner = t,
                           .writable = true};
        tg->check = ~tg->id;
        char name[16];
        snprintf(name, sizeof(name), "s%d", t);
        struct vck_mr *mr = vck_mr_new_ram_ptr(S.mm, name, SCRATCH_CAP, scratch_mem[t]);
        if (!mr)
            exit(1);
        tg->mr = mr;
        vck_mr_set_release(mr, region_released, tg);
        atomic_fetch_add(&tags_created, 1);
        nd[i] = (struct node){.mr = mr,
                              .kind = N_SCRATCH,
                              .tag = tg,
                              .capacity = SCRATCH_CAP,
                              .parent = ROOT,
                              .target = -1,
                              .persistent = true,
                              .enabled = true};
        vck_mr_add_subregion(nd[ROOT].mr, SCRATCH_BASE + (uint64_t)t * WINDOW + SCRATCH_OFFSET, mr,
                             0);
        W.scratch_node[t] = i;
    }
    for (; i < MAX_NODES; i++)
        nd[i].parent = -1;
    vck_memmap_commit(S.mm);
}

/* After the run: unmap and destroy everything, children before containers. */
static void writer_teardown(void)
{
    vck_memmap_begin(S.mm);
    for (int i = N_CONTAINERS; i < MAX_NODES; i++)
        if (W.nodes[i].mr && W.nodes[i].kind == N_ALIAS)
            node_destroy(i);
    for (int i = N_CONTAINERS; i < MAX_NODES; i++)
        if (W.nodes[i].mr)
            node_destroy(i);
    node_destroy(CLUSTER);
    node_destroy(BUS);
    node_destroy(TOP);
    vck_memmap_commit(S.mm);
}

/* ---------------------------------------------------------------------------------------------
 * The broken twin (dispatch.stress.broken): dispatch.c built with vck_as_view() renamed to this,
 * which answers from the view of up to 64 calls ago, QEMU's stale cached dispatch. It holds a
 * reference on that view, so the twin must fail by wrong answers, not by touching freed memory.
 */
#ifdef DISPATCH_STRESS_STALE_VIEW
const struct vck_flatview *vck_stress_stale_view(const struct vck_as *as);

static _Thread_local const struct vck_flatview *stale_view;
static _Thread_local unsigned stale_calls;

const struct vck_flatview *vck_stress_stale_view(const struct vck_as *as)
{
    if (!stale_view || ++stale_calls % 64 == 0) {
        const struct vck_flatview *v = vck_as_view_get(as);
        if (stale_view)
            vck_flatview_unref(stale_view);
        stale_view = v;
    }
    return stale_view;
}

static void stale_view_drop(void)
{
    if (stale_view)
        vck_flatview_unref(stale_view);
    stale_view = NULL;
}
#else
static void stale_view_drop(void)
{
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Readers.
 */
static uint64_t rrand(struct reader *rd, uint64_t bound)
{
    return vck_rand_below(&rd->rng, bound);
}

/* [a, a + len) touches a scratch window other than @rd's own. */
static bool foreign(const struct reader *rd, uint64_t a, uint64_t len)
{
    u128 end = (u128)a + len;
    if (end <= SCRATCH_BASE || a >= SCRATCH_END)
        return false;
    return !(a >= rd->window - SCRATCH_OFFSET && end <= rd->window - SCRATCH_OFFSET + WINDOW);
}

static void check_view(struct reader *rd, const struct vck_flatview *v)
{
    uint64_t gen = vck_flatview_generation(v);
    uint64_t latest = atomic_load_explicit(&S.latest_gen, memory_order_acquire);
    if (gen < rd->last_gen || gen > latest || gen == 0) {
        report(ERR_VIEW, "reader %d: view generation %#llx (last seen %llu, latest built %llu)",
               rd->id, (unsigned long long)gen, (unsigned long long)rd->last_gen,
               (unsigned long long)latest);
        return;
    }
    rd->last_gen = gen;
}

/*
 * An address for an access of @len bytes: mostly where regions are, near range boundaries of
 * @v (when given), in this reader's window, near page boundaries, anywhere; never where another
 * reader's scratch is.
 */
static uint64_t pick_addr(struct reader *rd, const struct vck_flatview *v, uint64_t len)
{
    uint64_t a;
    uint64_t r = rrand(rd, 100);
    if (r < 30) {
        a = rrand(rd, LOW_SPAN);
    } else if (r < 42) {
        a = HIGH_BASE + rrand(rd, HIGH_SPAN);
    } else if (r < 57) {
        a = rd->window - SCRATCH_OFFSET + rrand(rd, SCRATCH_CAP + 2 * SCRATCH_OFFSET);
    } else if (r < 85 && v) {
        size_t n;
        const struct vck_flat_range *ranges = vck_flatview_ranges(v, &n);
        if (!n)
            return rrand(rd, LOW_SPAN);
        const struct vck_flat_range *x = &ranges[rrand(rd, n)];
        uint64_t d = rrand(rd, 24);
        a = rrand(rd, 2) ? x->start - 12 + d : x->last - 12 + d;
    } else if (r < 95) {
        a = (rrand(rd, LOW_SPAN >> 12) << 12) - 12 + rrand(rd, 24);
    } else {
        a = vck_rand(&rd->rng);
    }
    if (foreign(rd, a, len))
        a = rrand(rd, LOW_SPAN);
    return a;
}

static uint64_t pick_len(struct reader *rd)
{
    switch (rrand(rd, 8)) {
    case 0:
        return 1;
    case 1:
        return 4;
    case 2:
        return 8;
    case 3:
        return 0x1000;
    case 4:
        return UINT64_MAX;
    default:
        return 1 + rrand(rd, 64);
    }
}

/* Checks of one translation that need no view: the xlat agrees with itself and its section. */
static void check_xlat(struct reader *rd, uint64_t a, uint64_t len, bool w, enum vck_mem_result res,
                       const struct vck_xlat *x)
{
    const struct vck_section *s = x->section;
    if (!s) {
        report(ERR_XLAT, "translate(%#llx) gave no section", (unsigned long long)a);
        return;
    }
    if (a < s->start || a > s->last)
        report(ERR_XLAT, "translate(%#llx) gave section [%#llx, %#llx]", (unsigned long long)a,
               (unsigned long long)s->start, (unsigned long long)s->last);
    else if (x->len == 0 || x->len > len || x->len - 1 > s->last - a)
        report(ERR_XLAT, "translate(%#llx, %llu): len %llu crosses section [%#llx, %#llx]",
               (unsigned long long)a, (unsigned long long)len, (unsigned long long)x->len,
               (unsigned long long)s->start, (unsigned long long)s->last);
    uint64_t at = a - s->start;
    switch (s->kind) {
    case VCK_SECTION_UNASSIGNED:
        if (s->mr || res != VCK_MEM_DECODE_ERROR || x->offset != a || x->host)
            report(ERR_XLAT, "translate(%#llx): unassigned but mr %p, result %d, offset %#llx",
                   (unsigned long long)a, (void *)s->mr, res, (unsigned long long)x->offset);
        return;
    case VCK_SECTION_RAM:
    case VCK_SECTION_MMIO:
        break;
    default:
        report(ERR_XLAT, "translate(%#llx): section kind %d", (unsigned long long)a, s->kind);
        return;
    }
    if (!s->mr || x->offset != s->offset + at ||
        res != (w && s->readonly ? VCK_MEM_DECODE_ERROR : VCK_MEM_OK)) {
        report(ERR_XLAT, "translate(%#llx, %s): offset %#llx (section %#llx + %#llx), result %d",
               (unsigned long long)a, w ? "write" : "read", (unsigned long long)x->offset,
               (unsigned long long)s->offset, (unsigned long long)at, res);
        return;
    }
    const struct tag *t = tag_of(s->mr);
    if (!t || !tag_alive(t, s->mr)) {
        report(ERR_DATA, "translate(%#llx) names a dead region", (unsigned long long)a);
        return;
    }
    if (x->offset >= t->capacity) {
        report(ERR_XLAT, "translate(%#llx): offset %#llx past region %u's %#llx bytes",
               (unsigned long long)a, (unsigned long long)x->offset, t->id,
               (unsigned long long)t->capacity);
        return;
    }
    if (s->kind == VCK_SECTION_RAM) {
        uint8_t *base = vck_mr_host(s->mr);
        if (vck_mr_kind(s->mr) != VCK_MR_RAM || t->kind == TAG_MMIO || !base ||
            s->host != base + s->offset || x->host != s->host + at) {
            report(ERR_XLAT, "translate(%#llx): RAM section inconsistent with its region",
                   (unsigned long long)a);
            return;
        }
        /* Exactly the bytes at the xlat's offset of the region it names. */
        uint64_t n = x->len < 64 ? x->len : 64;
        uint8_t want[64];
        if (!region_bytes(rd, s->mr, x->offset, want, n)) {
            report(ERR_XLAT, "translate(%#llx) names another reader's scratch",
                   (unsigned long long)a);
            return;
        }
        if (t->kind == TAG_SCRATCH) {
            /* Our own RAM: shadow and backing agree, and host is where the backing is. */
            if (x->host != rd->mem + x->offset)
                report(ERR_XLAT, "translate(%#llx): scratch host %p, backing at %p",
                       (unsigned long long)a, x->host, (void *)(rd->mem + x->offset));
        }
        if (memcmp(x->host, want, n)) {
            report(ERR_DATA, "translate(%#llx): bytes at host differ from region %u offset %#llx",
                   (unsigned long long)a, t->id, (unsigned long long)x->offset);
        }
        return;
    }
    if (vck_mr_kind(s->mr) != VCK_MR_MMIO || x->host || s->host || s->ops != vck_mr_ops(s->mr) ||
        s->opaque != vck_mr_opaque(s->mr) || s->opaque != t) {
        report(ERR_XLAT, "translate(%#llx): MMIO section inconsistent with its region",
               (unsigned long long)a);
        return;
    }
    /* Call the device as a CPU would: one access of its smallest size at the offset. */
    unsigned size = t->min_access;
    uint64_t off = t->unaligned ? x->offset : x->offset & ~(uint64_t)(size - 1);
    if (off + size > t->capacity)
        return;
    uint64_t value = 0;
    if (s->ops->read(s->opaque, off, &value, size) != VCK_MEM_OK)
        return; /* the callback reported it */
    for (unsigned i = 0; i < size; i++)
        if ((uint8_t)(value >> (8 * i)) != pattern_byte(PAT_MMIO, t->id, off + i)) {
            report(ERR_DATA, "device %u read at %#llx returned %#llx", t->id,
                   (unsigned long long)off, (unsigned long long)value);
            break;
        }
}

/* The translation against the view it was made from. */
static void check_xlat_exact(uint64_t a, uint64_t len, const struct vck_xlat *x,
                             const struct vck_flatview *v)
{
    uint64_t next = 0;
    bool has_next = false;
    const struct vck_flat_range *r = view_lookup(v, a, &next, &has_next);
    const struct vck_section *s = x->section;
    u128 room;
    if (!r) {
        if (s->kind != VCK_SECTION_UNASSIGNED) {
            report(ERR_EXACT, "translate(%#llx) found [%#llx, %#llx] where the view has a hole",
                   (unsigned long long)a, (unsigned long long)s->start,
                   (unsigned long long)s->last);
            return;
        }
        room = has_next ? (u128)(next - a) : ((u128)1 << 64) - a;
    } else {
        if (s->start != r->start || s->last != r->last || s->mr != r->mr ||
            s->offset != r->offset || s->readonly != r->readonly) {
            report(ERR_EXACT,
                   "translate(%#llx): section [%#llx, %#llx] +%#llx ro=%d, view has [%#llx, "
                   "%#llx] +%#llx ro=%d",
                   (unsigned long long)a, (unsigned long long)s->start, (unsigned long long)s->last,
                   (unsigned long long)s->offset, s->readonly, (unsigned long long)r->start,
                   (unsigned long long)r->last, (unsigned long long)r->offset, r->readonly);
            return;
        }
        room = (u128)r->last - a + 1;
    }
    uint64_t want = room < len ? (uint64_t)room : len;
    if (x->len != want)
        report(ERR_EXACT, "translate(%#llx, %llu): len %llu, the view gives %llu",
               (unsigned long long)a, (unsigned long long)len, (unsigned long long)x->len,
               (unsigned long long)want);
}

/* A section of translations, some repeating or following the previous address (MRU hits). */
static void reader_translate(struct reader *rd)
{
    struct {
        uint64_t a, len;
        struct vck_xlat x;
    } done[MAX_BATCH];
    int d = (int)rrand(rd, N_DISPATCH);
    int n = 1 + (int)rrand(rd, MAX_BATCH);
    vck_rcu_read_lock();
    const struct vck_flatview *v1 = vck_as_view(S.as);
    check_view(rd, v1);
    for (int k = 0; k < n; k++) {
        uint64_t len = pick_len(rd);
        uint64_t a;
        if (k && rrand(rd, 2)) {
            a = done[k - 1].a + rrand(rd, 64);
            if (foreign(rd, a, 64))
                a = done[k - 1].a;
        } else {
            a = pick_addr(rd, v1, 64);
        }
        bool w = rrand(rd, 4) == 0;
        struct vck_xlat x;
        enum vck_mem_result res = vck_dispatch_translate(S.d[d], a, len, w, &x);
        check_xlat(rd, a, len, w, res, &x);
        done[k].a = a;
        done[k].len = len;
        done[k].x = x;
        rd->translations++;
    }
    const struct vck_flatview *v2 = vck_as_view(S.as);
    if (v1 == v2) {
        for (int k = 0; k < n; k++)
            check_xlat_exact(done[k].a, done[k].len, &done[k].x, v1);
        rd->exact_translations += (uint64_t)n;
        if (rrand(rd, 16) == 0) {
            struct vck_pagemap_stats st;
            size_t nr;
            vck_flatview_ranges(v1, &nr);
            vck_dispatch_map_stats(S.d[d], v1, &st);
            if (st.sections != nr + 1)
                report(ERR_EXACT, "map stats: %zu sections for %zu ranges", st.sections, nr);
        }
    }
    vck_rcu_read_unlock();
    rd->sections++;
}

static void hook_reset(void)
{
    hook.calls = 0;
}

/* The hook calls of a write the model predicted, piece by piece. */
static void check_hook(struct reader *rd, const struct model *m, const char *what, uint64_t a)
{
    rd->hook_calls += hook.calls;
    if (m->unknown)
        return;
    bool same = hook.calls == m->n_pieces;
    for (unsigned i = 0; same && i < hook.calls && i < MAX_HOOK; i++)
        same = hook.addr[i] == m->pieces[i].addr && hook.len[i] == m->pieces[i].len;
    if (!same)
        report(ERR_HOOK, "%s at %#llx: %u hook calls (first %#llx+%llu), %u RAM pieces written",
               what, (unsigned long long)a, hook.calls,
               (unsigned long long)(hook.calls ? hook.addr[0] : 0),
               (unsigned long long)(hook.calls ? hook.len[0] : 0), m->n_pieces);
}

/* A write this reader's model says reached its scratch: the shadow follows. */
static void shadow_apply(struct reader *rd, const struct model *m, const uint8_t *buf, uint64_t a)
{
    for (unsigned i = 0; i < m->n_pieces && i < MAX_HOOK; i++) {
        const struct piece *p = &m->pieces[i];
        if (p->scratch && p->offset <= SCRATCH_CAP && p->len <= SCRATCH_CAP - p->offset)
            memcpy(rd->shadow + p->offset, buf + (p->addr - a), p->len);
    }
}

/*
 * The shadow after a write whose view is not known: only a write inside one 8-byte block of
 * the window is all-or-nothing (the scratch starts and ends on 8-byte boundaries), so it lands
 * at its fixed offset exactly when it succeeded. Anything else resynchronises from the backing.
 */
static void shadow_after_unknown(struct reader *rd, uint64_t a, const uint8_t *buf, uint64_t len,
                                 enum vck_mem_result r)
{
    uint64_t lo = rd->window;
    if ((u128)a + len <= lo || a >= lo + SCRATCH_CAP)
        return; /* the scratch untouched */
    if (a >= lo && (a & 7) + len <= 8 && a + len <= lo + SCRATCH_CAP) {
        if (r == VCK_MEM_OK)
            memcpy(rd->shadow + (a - lo), buf, len);
        return;
    }
    memcpy(rd->shadow, rd->mem, SCRATCH_CAP);
}

static void check_bytes(struct reader *rd, const char *what, uint64_t a, const uint8_t *got,
                        const uint8_t *want, uint64_t len, enum vck_mem_result r,
                        enum vck_mem_result want_r)
{
    (void)rd;
    if (r != want_r) {
        report(ERR_EXACT, "%s(%#llx, %llu) returned %d, the view says %d", what,
               (unsigned long long)a, (unsigned long long)len, r, want_r);
        return;
    }
    for (uint64_t i = 0; i < len; i++)
        if (got[i] != want[i]) {
            report(ERR_EXACT, "%s(%#llx, %llu): byte %llu is %#x, the view says %#x", what,
                   (unsigned long long)a, (unsigned long long)len, (unsigned long long)i, got[i],
                   want[i]);
            return;
        }
}

/* Whole pattern words of some region, or zeros when the access reported an error. */
static void check_words(const char *what, uint64_t a, const uint8_t *buf, uint64_t len,
                        enum vck_mem_result r)
{
    uint32_t ids = (uint32_t)atomic_load_explicit(&next_id, memory_order_relaxed);
    for (uint64_t i = 0; i + 8 <= len; i += 8) {
        uint64_t word;
        memcpy(&word, buf + i, 8);
        unsigned kind = (unsigned)(word >> 56);
        uint32_t id = (uint32_t)(word >> 32) & 0xffffff;
        uint64_t index = (uint32_t)word;
        bool ok = (word == 0 && r != VCK_MEM_OK) || ((kind == PAT_RAM || kind == PAT_MMIO) && id &&
                                                     id < ids && index < (0x100000 >> 3));
        if (!ok) {
            report(ERR_DATA, "%s(%#llx, %llu): word %llu is %#llx, no region's (result %d)", what,
                   (unsigned long long)a, (unsigned long long)len, (unsigned long long)(i / 8),
                   (unsigned long long)word, r);
            return;
        }
    }
}

enum access_op { OP_READ, OP_LOAD, OP_WRITE, OP_STORE, N_OPS };

/*
 * One read, load, write or store. Exact (@exact): inside a read-side section between two loads
 * of the view, checked against the model when they agree. Otherwise outside any section, and
 * checked by shape: pattern words for aligned reads of the shared areas, the shadow for writes.
 */
static void reader_access(struct reader *rd, bool exact)
{
    enum access_op op = (enum access_op)rrand(rd, N_OPS);
    bool write = op == OP_WRITE || op == OP_STORE;
    unsigned size = 1u << rrand(rd, 4);
    uint64_t len = op == OP_LOAD || op == OP_STORE ? size : 1 + rrand(rd, MAX_ACCESS);
    uint8_t buf[MAX_ACCESS], want[MAX_ACCESS];
    const struct vck_flatview *v1 = NULL;
    if (exact) {
        vck_rcu_read_lock();
        v1 = vck_as_view(S.as);
        check_view(rd, v1);
    }
    uint64_t a = pick_addr(rd, v1, len);
    bool aligned_words = false;
    if (!exact && !write && rrand(rd, 2)) {
        /* Whole words of the shared areas, for the shape check. */
        a = (rrand(rd, 3) ? rrand(rd, LOW_SPAN) : HIGH_BASE + rrand(rd, HIGH_SPAN)) & ~7ULL;
        len = op == OP_LOAD ? 8 : 8 * (1 + rrand(rd, MAX_ACCESS / 8));
        size = 8;
        aligned_words = true;
    }
    if (write) {
        for (uint64_t i = 0; i < len; i++)
            buf[i] = (uint8_t)vck_rand(&rd->rng);
        if (!exact && rrand(rd, 2)) {
            /* Inside one 8-byte block of the scratch: all-or-nothing. */
            a = rd->window + (rrand(rd, SCRATCH_CAP) & ~7ULL);
            if (op == OP_STORE) {
                a += rrand(rd, 8 / size + 0) * size;
            } else {
                len = 1 + rrand(rd, 8);
                a += rrand(rd, 9 - len);
            }
        }
    }
    struct vck_dispatch *d = S.d[rrand(rd, N_DISPATCH)];
    const char *what = "";
    enum vck_mem_result r = VCK_MEM_OK;
    uint64_t value = 0;
    hook_reset();
    switch (op) {
    case OP_READ:
        what = "read";
        r = vck_dispatch_read(d, a, buf, len);
        break;
    case OP_LOAD:
        what = "load";
        r = vck_dispatch_load(d, a, size, &value);
        memcpy(buf, &value, size);
        break;
    case OP_WRITE:
        what = "write";
        r = vck_dispatch_write(d, a, buf, len);
        break;
    case OP_STORE:
        what = "store";
        memcpy(&value, buf, size);
        r = vck_dispatch_store(d, a, size, value);
        break;
    default:
        break;
    }
    rd->accesses++;
    if (write)
        rd->stores++;
    if (!write && hook.calls)
        report(ERR_HOOK, "%s at %#llx called the RAM write hook", what, (unsigned long long)a);
    if (exact) {
        const struct vck_flatview *v2 = vck_as_view(S.as);
        if (v1 == v2) {
            struct model m;
            model_access(rd, v1, a, len, write, write ? NULL : want, &m);
            if (m.unknown) {
                report(ERR_EXACT, "internal: %s at %#llx touched memory this reader can't model",
                       what, (unsigned long long)a);
            } else if (write) {
                if (r != m.result)
                    report(ERR_EXACT, "%s(%#llx, %llu) returned %d, the view says %d", what,
                           (unsigned long long)a, (unsigned long long)len, r, m.result);
                check_hook(rd, &m, what, a);
                shadow_apply(rd, &m, buf, a);
            } else {
                check_bytes(rd, what, a, buf, want, len, r, m.result);
            }
            rd->exact_accesses++;
        } else if (write) {
            shadow_after_unknown(rd, a, buf, len, r);
        }
        vck_rcu_read_unlock();
        return;
    }
    if (write) {
        shadow_after_unknown(rd, a, buf, len, r);
        for (unsigned i = 0; i < hook.calls && i < MAX_HOOK; i++)
            if (hook.addr[i] < rd->window || hook.addr[i] - rd->window >= SCRATCH_CAP ||
                hook.len[i] > len)
                report(ERR_HOOK, "%s at %#llx: hook called for %#llx+%llu", what,
                       (unsigned long long)a, (unsigned long long)hook.addr[i],
                       (unsigned long long)hook.len[i]);
        rd->hook_calls += hook.calls;
    } else if (aligned_words) {
        check_words(what, a, buf, len, r);
        rd->weak_accesses++;
    }
}

/* Does the cache's view back its range with RAM at contiguous host addresses from c->host? */
static bool cache_direct_ok(const struct vck_mrc *c)
{
    uint64_t a = c->addr, left = c->len;
    while (left) {
        uint64_t next = 0;
        bool has_next = false;
        const struct vck_flat_range *r = view_lookup(c->view, a, &next, &has_next);
        if (!r || vck_mr_kind(r->mr) != VCK_MR_RAM || (c->is_write && r->readonly))
            return false;
        uint8_t *host = (uint8_t *)vck_mr_host(r->mr) + r->offset + (a - r->start);
        if (host != c->host + (a - c->addr))
            return false;
        u128 room = (u128)r->last - a + 1;
        uint64_t l = room < left ? (uint64_t)room : left;
        left -= l;
        a += l;
    }
    return true;
}

static void cache_drop(struct cache *k)
{
    if (k->live)
        vck_mrc_destroy(&k->c);
    k->live = false;
}

static void cache_init(struct reader *rd, struct cache *k)
{
    cache_drop(k);
    /* In this reader's window (around its scratch), or where shared regions are. */
    uint64_t len = 8 * (1 + rrand(rd, 1024));
    uint64_t a = rrand(rd, 2) ? rd->window - 64 + 8 * rrand(rd, (SCRATCH_CAP + 128) / 8)
                              : pick_addr(rd, NULL, len);
    bool is_write = rrand(rd, 2);
    bool in_section = rrand(rd, 2);
    if (in_section)
        vck_rcu_read_lock();
    vck_mrc_init(&k->c, S.d[rrand(rd, N_DISPATCH)], a, len, is_write);
    if (in_section)
        vck_rcu_read_unlock();
    k->live = true;
    k->uses = 0;
    k->gen = vck_flatview_generation(k->c.view);
    rd->cache_inits++;
    if (k->c.addr != a || k->c.len != len || k->c.is_write != is_write || !k->c.view)
        report(ERR_CACHE, "mrc_init(%#llx, %llu) set the cache up wrong", (unsigned long long)a,
               (unsigned long long)len);
    if (k->gen < rd->last_gen || k->gen > atomic_load(&S.latest_gen))
        report(ERR_VIEW, "mrc_init took a view of generation %#llx", (unsigned long long)k->gen);
    if (k->c.host) {
        rd->cache_direct++;
        if (!cache_direct_ok(&k->c))
            report(ERR_CACHE, "cache [%#llx, +%llu) direct but its view does not back it so",
                   (unsigned long long)a, (unsigned long long)len);
    }
}

/* A read or a write through a cache, checked against the cache's own view. */
static void cache_use(struct reader *rd, struct cache *k)
{
    struct vck_mrc *c = &k->c;
    if (vck_flatview_generation(c->view) != k->gen) {
        report(ERR_VIEW, "a cache's view changed generation while referenced (%#llx)",
               (unsigned long long)vck_flatview_generation(c->view));
        return;
    }
    uint64_t off = rrand(rd, c->len);
    uint64_t n = 1 + rrand(rd, c->len - off < 64 ? c->len - off : 64);
    uint8_t buf[64], want[64];
    struct model m;
    hook_reset();
    if (c->is_write && rrand(rd, 2)) {
        for (uint64_t i = 0; i < n; i++)
            buf[i] = (uint8_t)vck_rand(&rd->rng);
        enum vck_mem_result r = vck_mrc_write(c, off, buf, n);
        model_access(rd, c->view, c->addr + off, n, true, NULL, &m);
        if (m.unknown)
            report(ERR_CACHE, "internal: cache write touched memory this reader can't model");
        else if (r != m.result)
            report(ERR_CACHE, "mrc_write(%#llx, %llu) returned %d, its view says %d",
                   (unsigned long long)(c->addr + off), (unsigned long long)n, r, m.result);
        check_hook(rd, &m, "mrc_write", c->addr + off);
        shadow_apply(rd, &m, buf, c->addr + off);
        rd->stores++;
    } else {
        enum vck_mem_result r = vck_mrc_read(c, off, buf, n);
        if (hook.calls)
            report(ERR_HOOK, "mrc_read called the RAM write hook");
        model_access(rd, c->view, c->addr + off, n, false, want, &m);
        if (m.unknown)
            report(ERR_CACHE, "internal: cache read touched memory this reader can't model");
        else if (r != m.result || memcmp(buf, want, n))
            report(ERR_CACHE,
                   "mrc_read(%#llx, %llu) (view generation %llu, %s): result %d, "
                   "the view says %d, bytes %s",
                   (unsigned long long)(c->addr + off), (unsigned long long)n,
                   (unsigned long long)k->gen, c->host ? "direct" : "slow", r, m.result,
                   memcmp(buf, want, n) ? "differ" : "agree");
    }
    k->uses++;
    rd->cache_ops++;
}

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    vck_rcu_register_thread();
    uint64_t round = 0;
    while (!atomic_load_explicit(&S.stop, memory_order_relaxed)) {
        uint64_t what = rrand(rd, 100);
        if (what < 40) {
            reader_translate(rd);
        } else if (what < 65) {
            reader_access(rd, true);
        } else if (what < 80) {
            reader_access(rd, false);
        } else {
            struct cache *k = &rd->caches[rrand(rd, 2)];
            if (!k->live || k->uses > 200 || rrand(rd, 64) == 0)
                cache_init(rd, k);
            else
                cache_use(rd, k);
        }
        if (++round % 256 == 0) {
            /* Nothing but this thread's own stores may have changed its scratch. */
            if (memcmp(rd->shadow, rd->mem, SCRATCH_CAP))
                report(ERR_DATA, "reader %d: scratch backing differs from what it stored", rd->id);
            vck_rcu_quiescent_state();
        }
    }
    for (int i = 0; i < 2; i++)
        cache_drop(&rd->caches[i]);
    stale_view_drop();
    if (memcmp(rd->shadow, rd->mem, SCRATCH_CAP))
        report(ERR_DATA, "reader %d: scratch backing differs from what it stored", rd->id);
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * main
 */
#ifndef STRESS_SANITIZED
static void on_fault(int sig)
{
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "dispatch-stress: FAIL signal %d seed=%llu\n", sig,
                     (unsigned long long)run_seed);
    if (n > 0 && write(2, msg, (size_t)n) < 0)
        _exit(1);
    _exit(1);
}
#endif

static struct reader readers[MAX_READERS];

int main(int argc, char **argv)
{
    struct vck_stress_args args = {.duration = 2.0, .threads = 2};
    vck_stress_parse(argc, argv, &args, "dispatch-stress");
    if (args.threads > MAX_READERS) {
        fprintf(stderr, "dispatch-stress: at most %d reader threads\n", MAX_READERS);
        return 2;
    }
    run_seed = args.seed;
#ifndef STRESS_SANITIZED
    signal(SIGSEGV, on_fault);
    signal(SIGBUS, on_fault);
#endif
    setvbuf(stdout, NULL, _IOLBF, 0);

    vck_rcu_register_thread();
    pool_init(&tag_pool, TAG_POOL, TAG_QUARANTINE, tag_free, tag_fifo);
    pool_init(&buf_pool, BUF_POOL, BUF_QUARANTINE, buf_free, buf_fifo);
    S.readers = args.threads;
    W.rng = args.seed ^ 0x5eedULL;
    S.mm = vck_memmap_new(&(struct vck_memmap_options){.pending_limit = PENDING_LIMIT,
                                                       .flags = VCK_MEMMAP_QUARANTINE});
    if (!S.mm)
        return 1;
    writer_setup();
    S.as = vck_as_new(S.mm, "system", W.nodes[ROOT].mr);
    if (!S.as)
        return 1;
    vck_as_add_builder(S.as, &(struct vck_view_builder){.build = gen_build, .free = gen_free});
    for (int i = 0; i < N_DISPATCH; i++)
        if (!(S.d[i] = vck_dispatch_new(S.as, &dispatch_opts[i])))
            return 1;
    struct vck_memmap_stats before;
    vck_memmap_get_stats(S.mm, &before);

    for (int t = 0; t < args.threads; t++) {
        struct reader *rd = &readers[t];
        rd->id = t;
        rd->rng = args.seed * 7919 + (uint64_t)t + 1;
        rd->window = SCRATCH_BASE + (uint64_t)t * WINDOW + SCRATCH_OFFSET;
        rd->mem = scratch_mem[t];
        pthread_create(&rd->thread, NULL, reader_main, rd);
    }
    pthread_create(&W.thread, NULL, writer_main, NULL);

    double start = vck_now();
    vck_rcu_thread_offline();
    struct timespec pause = {.tv_sec = (time_t)args.duration,
                             .tv_nsec =
                                 (long)((args.duration - (double)(time_t)args.duration) * 1e9)};
    nanosleep(&pause, NULL);
    atomic_store(&S.stop, true);
    for (int t = 0; t < args.threads; t++)
        pthread_join(readers[t].thread, NULL);
    pthread_join(W.thread, NULL);
    vck_rcu_thread_online();
    double elapsed = vck_now() - start;

    struct vck_memmap_stats after;
    vck_memmap_get_stats(S.mm, &after);
    uint64_t views = after.views_published - before.views_published;

    writer_teardown();
    vck_as_destroy(S.as);
    node_destroy(ROOT);
    vck_memmap_free(S.mm);
    for (int i = 0; i < N_DISPATCH; i++)
        vck_dispatch_free(S.d[i]);
    uint64_t created = atomic_load(&tags_created), released = atomic_load(&tags_released);
    if (created != released)
        report(ERR_RELEASE, "%llu regions created, %llu released", (unsigned long long)created,
               (unsigned long long)released);

    uint64_t tr = 0, xtr = 0, ac = 0, xac = 0, wk = 0, ci = 0, cd = 0, co = 0, st = 0, hk = 0;
    for (int t = 0; t < args.threads; t++) {
        struct reader *rd = &readers[t];
        tr += rd->translations;
        xtr += rd->exact_translations;
        ac += rd->accesses;
        xac += rd->exact_accesses;
        wk += rd->weak_accesses;
        ci += rd->cache_inits;
        cd += rd->cache_direct;
        co += rd->cache_ops;
        st += rd->stores;
        hk += rd->hook_calls;
    }
    uint64_t errs = errors_total();
    /*
     * Floors at about a tenth of what a ThreadSanitizer build does on two busy cores: every
     * kind of check must have run, and the writer must have kept the map moving.
     */
    double secs = elapsed > 0.1 ? elapsed : 0.1;
    double ops_per_s = (double)(tr + ac + co) / secs;
    bool progress = views >= (uint64_t)(50 * args.duration) && ops_per_s >= 2000.0 &&
                    xtr >= (uint64_t)(300 * args.duration) &&
                    xac >= (uint64_t)(100 * args.duration) &&
                    co >= (uint64_t)(50 * args.duration) && cd > 0 && hk > 0;
    bool pass = errs == 0 && progress;
    printf("dispatch-stress: %s views=%llu writer_ops=%llu (txns=%llu created=%llu "
           "destroyed=%llu) translations=%llu (exact=%llu) accesses=%llu (exact=%llu shape=%llu "
           "stores=%llu hook_calls=%llu) caches=%llu (direct=%llu ops=%llu) device_calls=%llu "
           "reader_ops/s=%.0f reclaim_waits=%llu peak_pending=%zu errors=%llu readers=%d seed=%llu "
           "duration=%.2fs\n",
           pass ? "PASS" : "FAIL", (unsigned long long)views, (unsigned long long)W.ops,
           (unsigned long long)W.txns, (unsigned long long)W.created,
           (unsigned long long)W.destroyed, (unsigned long long)tr, (unsigned long long)xtr,
           (unsigned long long)ac, (unsigned long long)xac, (unsigned long long)wk,
           (unsigned long long)st, (unsigned long long)hk, (unsigned long long)ci,
           (unsigned long long)cd, (unsigned long long)co,
           (unsigned long long)(atomic_load(&device_reads) + atomic_load(&device_writes)),
           ops_per_s, (unsigned long long)(after.reclaim_waits - before.reclaim_waits),
           after.peak_pending_bytes, (unsigned long long)errs, args.threads,
           (unsigned long long)args.seed, elapsed);
    if (errs)
        for (int k = 0; k < ERR_KINDS; k++)
            if (atomic_load(&errors[k]))
                printf("dispatch-stress: %llu %s errors\n",
                       (unsigned long long)atomic_load(&errors[k]), err_names[k]);
    if (!progress)
        printf("dispatch-stress: too little progress\n");
    vck_rcu_unregister_thread();
    return pass ? 0 : 1;
}
