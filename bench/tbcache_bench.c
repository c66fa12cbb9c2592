/*
 * The translation-block cache (vcpukit/tbcache.h): what a vCPU pays to find the block for a PC,
 * what invalidating a code page and locking a page collection cost, and whether vCPUs keep
 * running while the cache is flushed.
 *
 *  tbcache/lookup/jc_hit        vck_tb_lookup() answered by the jump cache
 *  tbcache/lookup/table_hit     the jump cache misses, the block table has the block
 *  tbcache/lookup/miss          a PC never translated: jump cache and table both miss
 *  tbcache/lookup/qht_only      vck_qht_lookup() of table_hit's keys in a bare vck_qht: the floor
 *                               of a table hit (PC to physical, hash, table walk, nothing else)
 *  tbcache/invalidate/blocks_per_page/N  vck_tb_invalidate_range() over one page of N blocks
 *  tbcache/collection/pages/N   vck_tb_pages_lock() + vck_tb_pages_unlock() over N pages
 *  tbcache/flush/blocks/N       vck_tb_flush() of N blocks with host-mapped code
 *  tbcache/flush_pause/vcpus/N  N vCPU threads look up and translate while this thread flushes
 *
 * The guest is RISC-V-like: 4 KiB pages, 2-byte instruction alignment (pc_shift 1), a 4096-slot
 * jump cache, physical RAM at 2 GiB seen through a linear kernel mapping (virtual = physical +
 * VA_OFFSET, so translating a PC is a subtraction and a bounds check, as cheap as a TLB hit).
 * The lookup benchmarks share one cache of 4096 blocks of 8 to 64 bytes (even sizes, 2-aligned
 * starts) in runs of 4 consecutive pages at random places in the 64 MiB of RAM: 261 pages of about
 * 16 blocks each, about 1% of the blocks spanning into the next page. Each lookup benchmark has its
 * own vCPU (a fresh jump cache) and visits its keys in a long random sequence, read sequentially
 * (as in qht_micro.c: over one short permutation the branch predictor learns the walk), 64 lookups
 * per RCU read-side section, as a vCPU loop holds one section across several blocks.
 *
 * Which lookups hit the jump cache is decided by where the keys fall in it:
 *  - jc_hit uses one block per occupied jump-cache slot (about 2300 of the 4096), warmed once:
 *    every lookup then hits.
 *  - table_hit uses the slots that two or more blocks share (up to 4 of each, about 2800 blocks):
 *    each pass of the sequence visits every such slot once, in random order, taking the slot's
 *    next block in turn, so the slot always holds the block looked up on the previous pass. Every
 *    lookup misses the jump cache, finds the block in the table and refills the slot. The pass
 *    count is a multiple of 12 so that the turn also holds across the sequence's wrap-around.
 *  - miss looks up each block's PC + 2 (inside a block, never the start of one), with the jump
 *    cache first filled with all 4096 blocks, so that a probe usually compares against a block.
 * Each run checks, through the vCPU's statistics, that every lookup went the intended way.
 *
 * invalidate and collection build their own small caches. flush_pause is described at
 * bench_flush_pause().
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>
#include <vcpukit/tbcache.h>

#include "suites.h"
#include "vck_bench.h"

#define PAGE_BITS   12
#define PAGE_SIZE   ((uint64_t)1 << PAGE_BITS)
#define JC_BITS     12
#define JC_SLOTS    (1u << JC_BITS)
#define RAM_BASE    0x80000000ull
#define RAM_SIZE    (64ull << 20)
#define RAM_PAGES   (RAM_SIZE / PAGE_SIZE)
#define VA_OFFSET   0xffffffff00000000ull /* RAM_BASE appears at 0xffffffff80000000 */
#define GUEST_FLAGS 0x3u                  /* one CPU mode for every block (say, S-mode) */

#define MIN_BLOCK  8
#define MAX_BLOCK  64
#define RUN_PAGES  4
#define SLOT_BYTES 256
/* One block per slot; the slots start half a slot into the run, so some straddle a page end. */
#define SLOTS_PER_RUN (RUN_PAGES * PAGE_SIZE / SLOT_BYTES - 1)

#define LOOKUP_BLOCKS       4096
#define LOOKUPS_PER_SECTION 64
#define SEQUENCE_MIN        (1u << 20)
#define MAX_PER_SLOT        4  /* table_hit: blocks taken from one shared slot */
#define TURN_PERIOD         12 /* lcm(2, 3, 4): table_hit's pass count is a multiple of it */
#define WARM_LOOKUPS        16384

/* ---- the guest ------------------------------------------------------------------------------ */

static void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p) {
        fprintf(stderr, "tbcache_bench: out of memory (%zu bytes)\n", size);
        abort();
    }
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "tbcache_bench: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

/* SplitMix64: fixed seeds give every run the same guest. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *state, uint64_t n)
{
    return rng_next(state) % n;
}

/* The guest's MMU: the linear kernel mapping over RAM, nothing else. */
static bool guest_phys(void *opaque, uint64_t vaddr, uint64_t *phys)
{
    (void)opaque;
    uint64_t pa = vaddr - VA_OFFSET;
    if (pa - RAM_BASE >= RAM_SIZE)
        return false;
    *phys = pa;
    return true;
}

/* Where a block's guest code is: what a translator would find by decoding. */
struct block_desc {
    uint64_t pc, phys, phys_page2;
    uint32_t size;
};

static uint64_t page_start(uint64_t addr)
{
    return addr & ~(PAGE_SIZE - 1);
}

static struct block_desc block_at(uint64_t phys, uint32_t size)
{
    uint64_t page2 = page_start(phys + size - 1);
    return (struct block_desc){
        .pc = phys + VA_OFFSET,
        .phys = phys,
        .phys_page2 = page2 != page_start(phys) ? page2 : VCK_TB_NO_PAGE2,
        .size = size,
    };
}

static uint32_t random_size(uint64_t *rng, uint32_t max)
{
    return MIN_BLOCK + 2 * (uint32_t)rng_below(rng, (max - MIN_BLOCK) / 2 + 1);
}

/* @n blocks in runs of RUN_PAGES pages at random, distinct, places in RAM (see the top). */
static struct block_desc *layout_new(size_t n, uint64_t seed)
{
    uint64_t rng = seed;
    size_t positions = RAM_PAGES / RUN_PAGES, made = 0;
    bool *used = xcalloc(positions, sizeof(*used));
    struct block_desc *b = xmalloc(n * sizeof(*b));
    while (made < n) {
        size_t pos;
        do {
            pos = (size_t)rng_below(&rng, positions);
        } while (used[pos]);
        used[pos] = true;
        uint64_t run = RAM_BASE + pos * RUN_PAGES * PAGE_SIZE;
        for (size_t s = 0; s < SLOTS_PER_RUN && made < n; s++) {
            uint64_t slot = run + SLOT_BYTES / 2 + s * SLOT_BYTES;
            uint64_t start = slot + 2 * rng_below(&rng, (SLOT_BYTES - MAX_BLOCK) / 2 + 1);
            b[made++] = block_at(start, random_size(&rng, MAX_BLOCK));
        }
    }
    free(used);
    return b;
}

/* ---- blocks ---------------------------------------------------------------------------------- */

static void free_block(void *opaque, struct vck_tb *tb)
{
    (void)opaque;
    free(tb);
}

static struct vck_tb_cache *cache_new(void)
{
    struct vck_tb_cache_options opts = {
        .page_bits = PAGE_BITS, .jc_bits = JC_BITS, .pc_shift = 1, .free_tb = free_block};
    struct vck_tb_cache *c = vck_tb_cache_new(&opts);
    if (!c) {
        fprintf(stderr, "tbcache_bench: vck_tb_cache_new failed\n");
        abort();
    }
    return c;
}

static struct vck_tb_cpu *cpu_new(struct vck_tb_cache *c)
{
    struct vck_tb_cpu *cpu = vck_tb_cpu_new(c);
    if (!cpu) {
        fprintf(stderr, "tbcache_bench: vck_tb_cpu_new failed\n");
        abort();
    }
    return cpu;
}

/* What a translator does for the cache: read the page generations, then fill the block. */
static struct vck_tb *translate(struct vck_tb_cache *c, const struct block_desc *d)
{
    struct vck_tb *tb = xcalloc(1, sizeof(*tb));
    tb->page_gen[0] = vck_tb_page_gen(c, d->phys);
    if (d->phys_page2 != VCK_TB_NO_PAGE2)
        tb->page_gen[1] = vck_tb_page_gen(c, d->phys_page2);
    tb->pc = d->pc;
    tb->phys_pc = d->phys;
    tb->phys_page2 = d->phys_page2;
    tb->flags = GUEST_FLAGS;
    tb->size = d->size;
    atomic_init(&tb->cflags, 0);
    return tb;
}

/* Setup only: no other thread adds, so the block must go in as it is. */
static struct vck_tb *add_new(struct vck_tb_cache *c, struct vck_tb_cpu *cpu,
                              const struct block_desc *d)
{
    struct vck_tb *tb = translate(c, d);
    if (vck_tb_add(c, cpu, tb) != tb) {
        fprintf(stderr, "tbcache_bench: vck_tb_add of pc %#llx refused\n",
                (unsigned long long)d->pc);
        abort();
    }
    return tb;
}

/* ---- key sequences --------------------------------------------------------------------------- */

struct sequence {
    uint32_t *v;
    size_t len;
};

static void shuffle(uint32_t *v, size_t n, uint64_t *rng)
{
    for (size_t i = n; i-- > 1;) {
        size_t j = (size_t)rng_below(rng, i + 1);
        uint32_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Random permutations of @items, concatenated to at least SEQUENCE_MIN entries. */
static void sequence_perms(struct sequence *s, const uint32_t *items, size_t n, uint64_t *rng)
{
    size_t copies = (SEQUENCE_MIN + n - 1) / n;
    s->len = copies * n;
    s->v = xmalloc(s->len * sizeof(*s->v));
    for (size_t c = 0; c < copies; c++) {
        uint32_t *perm = s->v + c * n;
        for (size_t i = 0; i < n; i++)
            perm[i] = items[i];
        shuffle(perm, n, rng);
    }
}

/* ---- lookups ----------------------------------------------------------------------------------
 */

enum lookup_variant { JC_HIT, TABLE_HIT, MISS, QHT_ONLY };

struct lookup_world {
    struct vck_tb_cache *cache;
    struct block_desc *layout;
    uint64_t *pcs;      /* pcs[i]: block i's PC */
    uint64_t *miss_pcs; /* pcs[i] + 2 */
    struct sequence jc_seq, table_seq, miss_seq;
    size_t jc_blocks, table_blocks;
    struct vck_qht qht; /* qht_only: the same blocks, hashed as the cache hashes them */
};

static struct lookup_world *lookup_world;

/* The cache's own key hash (tb_hash in tbcache.c), so that the bare table's buckets match. */
static uint32_t block_hash(uint64_t phys_pc, uint64_t pc, uint32_t flags, uint32_t cflags)
{
    uint64_t words[3] = {phys_pc, pc, (uint64_t)flags << 32 | cflags};
    return vck_qht_hash_words(words, 3);
}

/* qht_only's compare: the key is a struct vck_tb of which only these four fields are set. */
static bool block_key_equal(const void *a, const void *b)
{
    const struct vck_tb *x = a, *y = b;
    return x->pc == y->pc && x->phys_pc == y->phys_pc && x->flags == y->flags &&
           atomic_load_explicit(&x->cflags, memory_order_relaxed) ==
               atomic_load_explicit(&y->cflags, memory_order_relaxed);
}

static inline __attribute__((always_inline)) void *qht_only_lookup(const struct vck_qht *ht,
                                                                   uint64_t pc)
{
    struct vck_tb key;
    if (!guest_phys(NULL, pc, &key.phys_pc))
        return NULL;
    key.pc = pc;
    key.flags = GUEST_FLAGS;
    atomic_store_explicit(&key.cflags, 0, memory_order_relaxed);
    return vck_qht_lookup(ht, &key, block_hash(key.phys_pc, pc, GUEST_FLAGS, 0));
}

/* The key sets of the top comment, from where each PC falls in a jump cache. */
static void lookup_sequences(struct lookup_world *w, uint64_t *rng)
{
    struct vck_tb_cpu *probe = cpu_new(w->cache); /* for vck_tb_jc_slot() only */
    uint32_t(*members)[MAX_PER_SLOT] = xcalloc(JC_SLOTS, sizeof(*members));
    uint32_t *count = xcalloc(JC_SLOTS, sizeof(*count));
    for (uint32_t i = 0; i < LOOKUP_BLOCKS; i++) {
        uint32_t slot = vck_tb_jc_slot(probe, w->pcs[i]);
        if (count[slot] < MAX_PER_SLOT)
            members[slot][count[slot]++] = i;
    }
    vck_tb_cpu_free(probe);

    uint32_t *items = xmalloc(LOOKUP_BLOCKS * sizeof(*items));
    size_t n = 0;
    for (uint32_t s = 0; s < JC_SLOTS; s++)
        if (count[s])
            items[n++] = members[s][0];
    w->jc_blocks = n;
    sequence_perms(&w->jc_seq, items, n, rng);

    size_t groups = 0;
    w->table_blocks = 0;
    for (uint32_t s = 0; s < JC_SLOTS; s++) {
        if (count[s] >= 2) {
            items[groups++] = s;
            w->table_blocks += count[s];
        }
    }
    size_t passes = (SEQUENCE_MIN + groups - 1) / groups;
    passes = (passes + TURN_PERIOD - 1) / TURN_PERIOD * TURN_PERIOD;
    w->table_seq.len = passes * groups;
    w->table_seq.v = xmalloc(w->table_seq.len * sizeof(uint32_t));
    for (size_t p = 0; p < passes; p++) {
        shuffle(items, groups, rng);
        for (size_t g = 0; g < groups; g++)
            w->table_seq.v[p * groups + g] = members[items[g]][p % count[items[g]]];
    }

    for (uint32_t i = 0; i < LOOKUP_BLOCKS; i++)
        items[i] = i;
    sequence_perms(&w->miss_seq, items, LOOKUP_BLOCKS, rng);
    free(items);
    free(count);
    free(members);
}

/* Built on first use, kept for the process: every lookup benchmark shares it. */
static struct lookup_world *get_lookup_world(void)
{
    if (lookup_world)
        return lookup_world;
    struct lookup_world *w = xcalloc(1, sizeof(*w));
    uint64_t rng = 0x7bcac4e0001ull;
    w->cache = cache_new();
    w->layout = layout_new(LOOKUP_BLOCKS, rng_next(&rng));
    w->pcs = xmalloc(LOOKUP_BLOCKS * sizeof(*w->pcs));
    w->miss_pcs = xmalloc(LOOKUP_BLOCKS * sizeof(*w->miss_pcs));
    vck_qht_init(&w->qht, block_key_equal, 1u << 15, VCK_QHT_AUTO_RESIZE); /* the cache's size */
    for (size_t i = 0; i < LOOKUP_BLOCKS; i++) {
        struct vck_tb *tb = add_new(w->cache, NULL, &w->layout[i]);
        if (!vck_qht_insert(&w->qht, tb, block_hash(tb->phys_pc, tb->pc, tb->flags, 0), NULL)) {
            fprintf(stderr, "tbcache_bench: duplicate block in the bare table\n");
            abort();
        }
        w->pcs[i] = w->layout[i].pc;
        w->miss_pcs[i] = w->layout[i].pc + 2;
    }
    lookup_sequences(w, &rng);
    lookup_world = w;
    return w;
}

/* @count lookups of sequence @seq from *@cursor on; returns how many found a block. */
static inline __attribute__((always_inline)) uint64_t
run_lookups(const struct lookup_world *w, struct vck_tb_cpu *cpu, enum lookup_variant v,
            const struct sequence *seq, size_t *cursor, uint64_t count)
{
    const uint64_t *pcs = v == MISS ? w->miss_pcs : w->pcs;
    const uint32_t *order = seq->v;
    const size_t len = seq->len;
    size_t i = *cursor;
    uint64_t found = 0;
    for (uint64_t done = 0; done < count; done += LOOKUPS_PER_SECTION) {
        uint64_t b = count - done < LOOKUPS_PER_SECTION ? count - done : LOOKUPS_PER_SECTION;
        vck_rcu_read_lock();
        for (uint64_t j = 0; j < b; j++) {
            uint64_t pc = pcs[order[i]];
            if (++i == len)
                i = 0;
            void *p = v == QHT_ONLY ? qht_only_lookup(&w->qht, pc)
                                    : vck_tb_lookup(cpu, pc, GUEST_FLAGS, 0, guest_phys, NULL);
            found += p != NULL;
            vck_bench_keep(p);
        }
        vck_rcu_read_unlock();
    }
    *cursor = i;
    return found;
}

static inline __attribute__((always_inline)) void lookup_bench(struct vck_bench_state *st,
                                                               enum lookup_variant v)
{
    vck_rcu_register_thread();
    const struct lookup_world *w = get_lookup_world();
    struct vck_tb_cpu *cpu = cpu_new(w->cache);
    const struct sequence *seq = v == JC_HIT ? &w->jc_seq
                                 : v == MISS ? &w->miss_seq
                                             : &w->table_seq;
    size_t cursor = 0;
    if (v == MISS) {
        size_t all = 0; /* fill the jump cache: misses probe slots holding blocks */
        run_lookups(w, cpu, JC_HIT, &w->miss_seq, &all, LOOKUP_BLOCKS);
    }
    /* Untimed: caches warm, and jc_hit's jump cache filled; table_hit's turns go on from here. */
    run_lookups(w, cpu, v, seq, &cursor, WARM_LOOKUPS);
    uint64_t looked0 = cpu->table_lookups, table0 = cpu->table_hits;

    uint64_t iters = vck_bench_begin(st);
    uint64_t found = run_lookups(w, cpu, v, seq, &cursor, iters);
    vck_bench_end(st);

    uint64_t table = cpu->table_hits - table0;
    /* Hits count nothing in the vCPU: what did not go on to the table hit the jump cache. */
    uint64_t jc = iters - (cpu->table_lookups - looked0);
    vck_bench_items(st, (int64_t)iters);
    vck_bench_counter(st, "blocks",
                      (double)(v == JC_HIT ? w->jc_blocks
                               : v == MISS ? LOOKUP_BLOCKS
                                           : w->table_blocks),
                      false);
    if (v == JC_HIT && (jc != iters || found != iters))
        vck_bench_fail(st, "a jc_hit lookup did not hit the jump cache");
    else if (v == TABLE_HIT && (jc != 0 || table != iters || found != iters))
        vck_bench_fail(st, "a table_hit lookup hit the jump cache or missed the table");
    else if (v == MISS && found != 0)
        vck_bench_fail(st, "a miss lookup found a block");
    else if (v == QHT_ONLY && found != iters)
        vck_bench_fail(st, "a qht_only lookup missed");
    vck_tb_cpu_free(cpu);
    vck_rcu_unregister_thread();
}

static void bench_lookup_jc_hit(struct vck_bench_state *st)
{
    lookup_bench(st, JC_HIT);
}

static void bench_lookup_table_hit(struct vck_bench_state *st)
{
    lookup_bench(st, TABLE_HIT);
}

static void bench_lookup_miss(struct vck_bench_state *st)
{
    lookup_bench(st, MISS);
}

static void bench_lookup_qht_only(struct vck_bench_state *st)
{
    lookup_bench(st, QHT_ONLY);
}

/* ---- invalidation -----------------------------------------------------------------------------
 */

#define INVALIDATE_PAGES 256 /* pages refilled per timer pause */

/* @n blocks spread over the page at @page, in equal slots: none spans into the next page. */
static void page_blocks(struct block_desc *out, uint64_t page, size_t n, uint64_t *rng)
{
    uint64_t slot = PAGE_SIZE / n;
    uint32_t max = slot < MAX_BLOCK ? (uint32_t)slot : MAX_BLOCK;
    for (size_t k = 0; k < n; k++) {
        uint32_t size = random_size(rng, max);
        uint64_t start = page + k * slot + 2 * rng_below(rng, (slot - size) / 2 + 1);
        out[k] = block_at(start, size);
    }
}

static uint64_t *random_pages(size_t n, uint64_t *rng)
{
    bool *used = xcalloc(RAM_PAGES, sizeof(*used));
    uint64_t *pages = xmalloc(n * sizeof(*pages));
    for (size_t i = 0; i < n; i++) {
        uint64_t p;
        do {
            p = rng_below(rng, RAM_PAGES);
        } while (used[p]);
        used[p] = true;
        pages[i] = RAM_BASE + p * PAGE_SIZE;
    }
    free(used);
    return pages;
}

/*
 * One iteration invalidates one page holding N blocks. Two vCPUs are registered (every
 * invalidation walks them) and one has each block in its jump cache, as after running it. The
 * blocks are translated and added again with the timer paused, INVALIDATE_PAGES pages at a time;
 * those invalidated are freed by liburcu's callback thread, on the other core.
 */
static void bench_invalidate(struct vck_bench_state *st)
{
    size_t per_page = (size_t)vck_bench_range(st);
    vck_rcu_register_thread();
    uint64_t rng = 0x1a7a11d0000ull + per_page;
    struct vck_tb_cache *c = cache_new();
    struct vck_tb_cpu *cpus[2] = {cpu_new(c), cpu_new(c)};
    uint64_t *pages = random_pages(INVALIDATE_PAGES, &rng);
    struct block_desc *blocks = xmalloc(INVALIDATE_PAGES * per_page * sizeof(*blocks));
    for (size_t p = 0; p < INVALIDATE_PAGES; p++)
        page_blocks(blocks + p * per_page, pages[p], per_page, &rng);
    uint64_t invalidated = 0;

    uint64_t iters = vck_bench_begin(st);
    for (uint64_t done = 0; done < iters; done += INVALIDATE_PAGES) {
        size_t batch = iters - done < INVALIDATE_PAGES ? (size_t)(iters - done) : INVALIDATE_PAGES;
        vck_bench_pause(st);
        for (size_t k = 0; k < batch * per_page; k++)
            add_new(c, cpus[0], &blocks[k]);
        vck_bench_resume(st);
        for (size_t p = 0; p < batch; p++)
            invalidated += vck_tb_invalidate_range(c, pages[p], pages[p] + PAGE_SIZE - 1);
    }
    vck_bench_end(st);

    vck_bench_items(st, (int64_t)invalidated); /* items/s: blocks invalidated per second */
    if (invalidated != iters * per_page)
        vck_bench_fail(st, "an invalidation missed a block");
    free(blocks);
    free(pages);
    vck_tb_cpu_free(cpus[0]);
    vck_tb_cpu_free(cpus[1]);
    vck_tb_cache_free(c);
    vck_rcu_unregister_thread();
}

/* ---- page collections -------------------------------------------------------------------------
 */

#define COLLECTION_PAGE0 (RAM_BASE + 0x100000) /* the collection's first page */

/*
 * N consecutive pages, each with three blocks inside it (past its first 64 bytes) and a fourth
 * that starts 16 bytes before its end and reaches 16 bytes into the next page: the collection holds
 * the N pages of the range and the page after it, which the last page's spanning block reaches.
 */
static void bench_collection(struct vck_bench_state *st)
{
    size_t n_pages = (size_t)vck_bench_range(st);
    vck_rcu_register_thread();
    uint64_t rng = 0xc011ec7000ull + n_pages;
    struct vck_tb_cache *c = cache_new();
    for (size_t p = 0; p < n_pages; p++) {
        uint64_t page = COLLECTION_PAGE0 + p * PAGE_SIZE;
        for (size_t k = 0; k < 3; k++) {
            struct block_desc d = block_at(page + 64 + k * 1024 + 2 * rng_below(&rng, 256),
                                           random_size(&rng, MAX_BLOCK));
            add_new(c, NULL, &d);
        }
        struct block_desc span = block_at(page + PAGE_SIZE - 16, 32);
        add_new(c, NULL, &span);
    }
    uint64_t last = COLLECTION_PAGE0 + n_pages * PAGE_SIZE - 1;
    size_t held = 0;
    bool failed = false;

    uint64_t iters = vck_bench_begin(st);
    for (uint64_t it = 0; it < iters; it++) {
        struct vck_tb_pages *set = vck_tb_pages_lock(c, COLLECTION_PAGE0, last);
        if (!set) {
            failed = true;
            break;
        }
        held = vck_tb_pages_count(set);
        vck_tb_pages_unlock(set);
    }
    vck_bench_end(st);

    vck_bench_counter(st, "pages_held", (double)held, false);
    vck_bench_items(st, (int64_t)(iters * held)); /* items/s: page locks taken per second */
    if (failed)
        vck_bench_fail(st, "vck_tb_pages_lock ran out of memory");
    else if (held != n_pages + 1)
        vck_bench_fail(st, "the collection did not hold the range's pages and the next one");
    vck_tb_cache_free(c);
    vck_rcu_unregister_thread();
}

/* ---- flush with host-mapped code --------------------------------------------------------------
 */

#define HOST_CODE_BYTES 64 /* each block's translated code, in one registered code buffer */

/*
 * One iteration is one vck_tb_flush() of N blocks whose translated code lies in one registered
 * region, laid out one after the other as a translator fills its code buffer, so that the flush
 * also empties the host-address map. The blocks are added again with the timer paused; the old
 * ones are freed by liburcu's callback thread. Time per iteration: the whole flush, one grace
 * period included.
 */
static void bench_flush_blocks(struct vck_bench_state *st)
{
    size_t n = (size_t)vck_bench_range(st);
    vck_rcu_register_thread();
    struct vck_tb_cache *c = cache_new();
    struct block_desc *layout = layout_new(n, 0xf1a5400000ull + n);
    unsigned char *code = xcalloc(n, HOST_CODE_BYTES);
    vck_tb_code_region_add(c, code, n * HOST_CODE_BYTES);
    uint64_t invalidated = 0;
    bool lost = false;

    uint64_t iters = vck_bench_begin(st);
    for (uint64_t it = 0; it < iters; it++) {
        vck_bench_pause(st);
        for (size_t k = 0; k < n; k++) {
            struct vck_tb *tb = translate(c, &layout[k]);
            tb->code = code + k * HOST_CODE_BYTES;
            tb->code_size = HOST_CODE_BYTES;
            if (vck_tb_add(c, NULL, tb) != tb) {
                free(tb);
                lost = true;
            }
        }
        struct vck_tb_cache_stats before;
        vck_tb_cache_get_stats(c, &before);
        vck_bench_resume(st);
        vck_tb_flush(c);
        vck_bench_pause(st);
        struct vck_tb_cache_stats after;
        vck_tb_cache_get_stats(c, &after);
        invalidated += after.invalidated - before.invalidated;
        vck_rcu_read_lock();
        lost |= vck_tb_find_by_host(c, code) != NULL;
        vck_rcu_read_unlock();
        vck_bench_resume(st);
    }
    vck_bench_end(st);

    vck_bench_items(st, (int64_t)invalidated); /* items/s: blocks flushed per second */
    if (lost || invalidated != iters * n)
        vck_bench_fail(st, "a block was refused, not flushed, or left in the host map");
    vck_tb_cache_free(c);
    free(code);
    free(layout);
    vck_rcu_unregister_thread();
}

/* ---- flush pause ------------------------------------------------------------------------------
 */

/*
 * Log-linear histogram of nanoseconds: exact below 64, then 32 buckets per power of two (3%).
 */
#define HISTO_LINEAR  64
#define HISTO_SUB     32
#define HISTO_MIN_EXP 6
#define HISTO_MAX_EXP 40
#define HISTO_BUCKETS (HISTO_LINEAR + (HISTO_MAX_EXP - HISTO_MIN_EXP + 1) * HISTO_SUB)

struct histo {
    uint64_t n, max;
    uint64_t count[HISTO_BUCKETS];
};

static void histo_add(struct histo *h, uint64_t v)
{
    size_t i;
    if (v < HISTO_LINEAR) {
        i = (size_t)v;
    } else {
        unsigned e = 63u - (unsigned)__builtin_clzll(v);
        if (e > HISTO_MAX_EXP)
            e = HISTO_MAX_EXP;
        size_t sub = (size_t)(v >> (e - 5)) & (HISTO_SUB - 1);
        i = HISTO_LINEAR + (e - HISTO_MIN_EXP) * HISTO_SUB + sub;
    }
    h->count[i]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static void histo_merge(struct histo *into, const struct histo *from)
{
    for (size_t i = 0; i < HISTO_BUCKETS; i++)
        into->count[i] += from->count[i];
    into->n += from->n;
    if (from->max > into->max)
        into->max = from->max;
}

/* The upper edge of the bucket holding quantile @q (the exact maximum for q == 1). */
static double histo_quantile(const struct histo *h, double q)
{
    if (!h->n)
        return 0;
    if (q >= 1)
        return (double)h->max;
    uint64_t rank = (uint64_t)(q * (double)h->n), seen = 0;
    for (size_t i = 0; i < HISTO_BUCKETS; i++) {
        seen += h->count[i];
        if (seen > rank) {
            if (i < HISTO_LINEAR)
                return (double)i;
            unsigned e = HISTO_MIN_EXP + (unsigned)((i - HISTO_LINEAR) / HISTO_SUB);
            uint64_t sub = (i - HISTO_LINEAR) % HISTO_SUB;
            uint64_t upper = ((HISTO_SUB + sub + 1) << (e - 5)) - 1;
            return (double)(upper < h->max ? upper : h->max);
        }
    }
    return (double)h->max;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define FLUSH_BLOCKS   4096
#define FLUSH_GAP_NS   5000000 /* between flushes, untimed: the vCPUs warm up again */
#define FLUSH_MAX_CPUS 2
#define CHECK_STOP     256 /* vCPU iterations between looks at the stop flag */

struct flush_world {
    struct vck_tb_cache *cache;
    struct block_desc *layout;
    struct sequence seq;
    _Atomic uint64_t epoch; /* odd while a flush runs */
    _Atomic bool record;    /* file iterations from now on (not during the warm-up) */
    _Atomic bool stop;
};

/* Iterations that overlapped a flush (in) or not (out); those that translated, apart. */
enum { IN_HIT, IN_TRANSLATE, OUT_HIT, OUT_TRANSLATE, N_HISTOS };

struct vcpu {
    pthread_t thread;
    struct flush_world *w;
    size_t start; /* where in the sequence this vCPU begins */
    struct histo h[N_HISTOS];
    uint64_t duplicates, stale;
    /* Context switches during flushes ([1]) and outside them ([0]): voluntary, involuntary. */
    uint64_t vcsw[2], ivcsw[2];
};

/* The thread's context switches since @prev; files them under the window @in_flush ended. */
static void count_switches(struct vcpu *v, struct rusage *prev, bool in_flush)
{
    struct rusage now;
    getrusage(RUSAGE_THREAD, &now);
    v->vcsw[in_flush] += (uint64_t)(now.ru_nvcsw - prev->ru_nvcsw);
    v->ivcsw[in_flush] += (uint64_t)(now.ru_nivcsw - prev->ru_nivcsw);
    *prev = now;
}

/*
 * A vCPU's dispatch loop without the execution: look the next block up and, on a miss, translate
 * and add it, each iteration timed on its own (about one clock_gettime, 22 ns on the machine of
 * 2026-12-01, is inside every figure) and filed by whether a flush overlapped it. Where an epoch
 * change is first seen, the thread reads its context-switch counts (getrusage), which tell
 * scheduler preemption (involuntary) from waiting on a lock (voluntary) in the window that just
 * ended.
 */
static void *vcpu_main(void *arg)
{
    struct vcpu *v = arg;
    struct flush_world *w = v->w;
    vck_rcu_register_thread();
    struct vck_tb_cpu *cpu = cpu_new(w->cache);
    size_t i = v->start;
    struct rusage usage;
    getrusage(RUSAGE_THREAD, &usage);
    uint64_t window = atomic_load_explicit(&w->epoch, memory_order_acquire);
    while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
        bool record = atomic_load_explicit(&w->record, memory_order_relaxed);
        for (int k = 0; k < CHECK_STOP; k++) {
            const struct block_desc *d = &w->layout[w->seq.v[i]];
            if (++i == w->seq.len)
                i = 0;
            uint64_t e0 = atomic_load_explicit(&w->epoch, memory_order_acquire);
            if (e0 != window) {
                if (record)
                    count_switches(v, &usage, window & 1);
                else
                    getrusage(RUSAGE_THREAD, &usage);
                window = e0;
            }
            uint64_t t0 = now_ns();
            bool translated = false;
            vck_rcu_read_lock();
            struct vck_tb *tb = vck_tb_lookup(cpu, d->pc, GUEST_FLAGS, 0, guest_phys, NULL);
            if (!tb) {
                struct vck_tb *fresh = translate(w->cache, d);
                tb = vck_tb_add(w->cache, cpu, fresh);
                if (tb != fresh) {
                    free(fresh); /* never visible to anyone */
                    v->duplicates += tb != NULL;
                    v->stale += tb == NULL;
                }
                translated = true;
            }
            vck_bench_keep(tb);
            vck_rcu_read_unlock();
            uint64_t t1 = now_ns();
            uint64_t e1 = atomic_load_explicit(&w->epoch, memory_order_acquire);
            bool during = (e0 & 1) || e1 != e0;
            if (record)
                histo_add(&v->h[(during ? IN_HIT : OUT_HIT) + translated], t1 - t0);
        }
    }
    vck_tb_cpu_free(cpu);
    vck_rcu_unregister_thread();
    return NULL;
}

/*
 * tbcache/flush_pause/vcpus/N: N vCPU threads (struct vcpu) run over a working set of 4096
 * blocks (the lookup benchmarks' guest) while this thread, once every FLUSH_GAP_NS, flushes the
 * cache. One iteration is one vck_tb_flush(), wall-clock; the gaps are untimed. The counters
 * compare single vCPU iterations that overlapped a flush with the others:
 *   in_p99_ns, in_max_us    99th percentile and maximum of iterations overlapping a flush
 *   out_p99_ns, out_max_us  the same outside flushes
 *   in_tr_p99_ns, out_tr_p99_ns  p99 of iterations that translated (missed), in and out
 *   in_iters                vCPU iterations completed during each flush (all vCPUs): nonzero
 *                           means the vCPUs were not stopped (QEMU parks every vCPU instead)
 *   in_translations         of those, how many translated (the flush emptied the table)
 *   flush_max_ms            the longest flush
 *   in_vcsw, in_ivcsw       voluntary and involuntary context switches of the vCPUs during
 *                           each flush; out_vcsw, out_ivcsw the same in each gap between them
 * With 2 vCPUs on a 2-core machine three busy threads share two cores, so both maxima include
 * scheduler time slices; the p99s are the comparison.
 */
static void bench_flush_pause(struct vck_bench_state *st)
{
    int n_cpus = (int)vck_bench_range(st);
    vck_rcu_register_thread();
    uint64_t rng = 0xf105400000ull;
    struct flush_world w = {.cache = cache_new(),
                            .layout = layout_new(FLUSH_BLOCKS, rng_next(&rng))};
    uint32_t *items = xmalloc(FLUSH_BLOCKS * sizeof(*items));
    for (uint32_t i = 0; i < FLUSH_BLOCKS; i++)
        items[i] = i;
    sequence_perms(&w.seq, items, FLUSH_BLOCKS, &rng);
    free(items);
    atomic_init(&w.epoch, 0);
    atomic_init(&w.record, false);
    atomic_init(&w.stop, false);
    struct vcpu *cpus = xcalloc((size_t)n_cpus, sizeof(*cpus));
    for (int k = 0; k < n_cpus; k++) {
        cpus[k].w = &w;
        cpus[k].start = w.seq.len / (size_t)n_cpus * (size_t)k;
        if (pthread_create(&cpus[k].thread, NULL, vcpu_main, &cpus[k])) {
            fprintf(stderr, "tbcache_bench: pthread_create failed\n");
            abort();
        }
    }
    /* Let the vCPUs translate the whole working set before the first flush. */
    struct vck_tb_cache_stats cs;
    uint64_t deadline = now_ns() + 5000000000u;
    do {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        vck_tb_cache_get_stats(w.cache, &cs);
    } while (cs.blocks < FLUSH_BLOCKS && now_ns() < deadline);
    bool warm = cs.blocks >= FLUSH_BLOCKS;
    uint64_t flush_max = 0;
    atomic_store_explicit(&w.record, true, memory_order_relaxed);

    uint64_t iters = warm ? vck_bench_begin(st) : 0;
    for (uint64_t it = 0; it < iters; it++) {
        vck_bench_pause(st);
        struct timespec gap = {0, FLUSH_GAP_NS};
        nanosleep(&gap, NULL);
        vck_bench_resume(st);
        uint64_t t0 = now_ns();
        atomic_fetch_add_explicit(&w.epoch, 1, memory_order_seq_cst);
        vck_tb_flush(w.cache);
        atomic_fetch_add_explicit(&w.epoch, 1, memory_order_seq_cst);
        uint64_t t = now_ns() - t0;
        if (t > flush_max)
            flush_max = t;
    }
    if (warm)
        vck_bench_end(st);

    atomic_store_explicit(&w.stop, true, memory_order_relaxed);
    struct histo *all = xcalloc(N_HISTOS, sizeof(*all));
    uint64_t stale = 0, vcsw[2] = {0}, ivcsw[2] = {0};
    for (int k = 0; k < n_cpus; k++) {
        pthread_join(cpus[k].thread, NULL);
        for (int h = 0; h < N_HISTOS; h++)
            histo_merge(&all[h], &cpus[k].h[h]);
        stale += cpus[k].stale;
        for (int in_flush = 0; in_flush < 2; in_flush++) {
            vcsw[in_flush] += cpus[k].vcsw[in_flush];
            ivcsw[in_flush] += cpus[k].ivcsw[in_flush];
        }
    }
    struct histo in = {0}, out = {0};
    histo_merge(&in, &all[IN_HIT]);
    histo_merge(&in, &all[IN_TRANSLATE]);
    histo_merge(&out, &all[OUT_HIT]);
    histo_merge(&out, &all[OUT_TRANSLATE]);
    double flushes = iters ? (double)iters : 1;
    vck_bench_counter(st, "in_p99_ns", histo_quantile(&in, 0.99), false);
    vck_bench_counter(st, "in_max_us", histo_quantile(&in, 1) / 1e3, false);
    vck_bench_counter(st, "out_p99_ns", histo_quantile(&out, 0.99), false);
    vck_bench_counter(st, "out_max_us", histo_quantile(&out, 1) / 1e3, false);
    vck_bench_counter(st, "in_tr_p99_ns", histo_quantile(&all[IN_TRANSLATE], 0.99), false);
    vck_bench_counter(st, "out_tr_p99_ns", histo_quantile(&all[OUT_TRANSLATE], 0.99), false);
    vck_bench_counter(st, "in_iters", (double)in.n / flushes, false);
    vck_bench_counter(st, "in_translations", (double)all[IN_TRANSLATE].n / flushes, false);
    vck_bench_counter(st, "flush_max_ms", (double)flush_max / 1e6, false);
    vck_bench_counter(st, "in_vcsw", (double)vcsw[1] / flushes, false);
    vck_bench_counter(st, "in_ivcsw", (double)ivcsw[1] / flushes, false);
    vck_bench_counter(st, "out_vcsw", (double)vcsw[0] / flushes, false);
    vck_bench_counter(st, "out_ivcsw", (double)ivcsw[0] / flushes, false);
    if (!warm)
        vck_bench_fail(st, "the vCPUs did not translate the working set within 5 s");
    else if (stale)
        vck_bench_fail(st, "vck_tb_add refused a block though no page was invalidated");
    free(all);
    free(cpus);
    free(w.seq.v);
    free(w.layout);
    vck_tb_cache_free(w.cache);
    vck_rcu_unregister_thread();
}

/* ---- registration -----------------------------------------------------------------------------
 */

void vck_bench_register_tbcache(void)
{
    vck_bench_register(
        &(struct vck_bench_def){.name = "tbcache/lookup/jc_hit", .fn = bench_lookup_jc_hit});
    vck_bench_register(
        &(struct vck_bench_def){.name = "tbcache/lookup/table_hit", .fn = bench_lookup_table_hit});
    vck_bench_register(
        &(struct vck_bench_def){.name = "tbcache/lookup/miss", .fn = bench_lookup_miss});
    vck_bench_register(
        &(struct vck_bench_def){.name = "tbcache/lookup/qht_only", .fn = bench_lookup_qht_only});
    vck_bench_register(&(struct vck_bench_def){.name = "tbcache/invalidate/blocks_per_page",
                                               .fn = bench_invalidate,
                                               .args = {1, 8, 64},
                                               .n_args = 3});
    vck_bench_register(&(struct vck_bench_def){.name = "tbcache/collection/pages",
                                               .fn = bench_collection,
                                               .args = {1, 4, 16, 64},
                                               .n_args = 4});
    vck_bench_register(&(struct vck_bench_def){.name = "tbcache/flush/blocks",
                                               .fn = bench_flush_blocks,
                                               .args = {1024, 8192, 32768},
                                               .n_args = 3});
    vck_bench_register(&(struct vck_bench_def){.name = "tbcache/flush_pause/vcpus",
                                               .fn = bench_flush_pause,
                                               .args = {1, FLUSH_MAX_CPUS},
                                               .n_args = 2,
                                               .real_time = true});
}
