/*
 * Single-operation costs of vcpukit's qht beside its peers, liburcu's cds_lfht and Concurrency
 * Kit's ck_hs, at 1K entries (cache-resident) and 4M entries (memory-bound):
 * qht/<op>/<table>/<n>, with <table> one of vck, lfht, ckhs, and none: the same loop with no
 * table at all, the floor to subtract (it includes the timer pauses of insert and remove).
 *
 * Every table holds the keys 0..n-1 at rest (longs; vck and ck_hs store pointers into one shared
 * key array, cds_lfht its own nodes), inserted in random order, each under vck_qht_hash64(key),
 * which every timed loop computes too. Sizing, each table's own convention for n entries:
 * vck_qht_init(n) (n/4 buckets of 4), cds_lfht with n buckets and no auto-resize, ck_hs with 2n
 * slots (it grows past half full). Keys are visited in the order of a long random sequence
 * (struct sequence), read sequentially, so that neither the prefetcher nor the branch predictor
 * learns the table walk.
 * Each lookup runs in its own RCU read-side section.
 *
 * lookup_hit_batch measures vck_qht_prefetch() (vck tables only): the same keys, looked up in
 * batches of 8, 16 (vck, vck_prefetch) or 32 (_b8, _b32) in one read-side section each, with or
 * without first prefetching the batch's buckets; and (_d4, _d16) lookup_hit's own loop
 * prefetching 4 or 16 keys ahead, whose peer is lookup_hit/vck.
 *
 * Tables are built once, on first use, and shared by every benchmark of that table and size
 * (about 450 MB for the three 4M tables); each benchmark leaves its table holding 0..n-1.
 *
 * insert and remove are measured alone, in batches of up to min(n/4, 16384) keys with the timer
 * paused in between (a pause costs about a microsecond of clock reads: see the none peer). The
 * table holds between n - batch and n entries throughout (more would make ck_hs grow).
 *  - remove times removing a batch of resident keys, taken in turn from the sequence, and puts
 *    them back paused.
 *  - insert first removes such a batch, paused, then times adding as many spare keys (n and up,
 *    min(n, 1M) of them, in their own sequence), removed again paused before the next batch. At
 *    4M a spare key comes back only after a million others, its bucket out of the cache;
 *    inserting back the keys just removed would find their buckets cached.
 * A removed cds_lfht node is reused only after a grace period (waited for while paused).
 *
 * ck_hs is single-writer: these single-threaded benchmarks call it without a lock, where the
 * concurrent tool (vck-qht-bench) needs a mutex around its writes. Its removals leave
 * tombstones, never cleared by later inserts: once every free slot of a 1K table is one, an
 * insert probes to the bound and took 106 ns instead of 29. So, as a user of ck_hs would
 * have to, the benchmarks clear them with ck_hs_rebuild() after every n/8 removals, paused:
 * the ckhs insert and remove figures leave that maintenance out.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>

/* After vcpukit/rcu.h: cds_lfht needs the flavor's declarations first. */
#include <ck_hs.h>
#include <urcu/rculfhash.h>

#include "suites.h"
#include "vck_bench.h"

/* vck_nohuge: the same table without transparent huge pages, to measure what they are worth. */
enum kind { KIND_VCK, KIND_VCK_NOHUGE, KIND_LFHT, KIND_CKHS, KIND_NONE, N_KINDS };

#define MAX_SIZES        4
#define MAX_BATCH        16384
#define MAX_SPARE        (1u << 20)
#define SEQUENCE_MIN     (1u << 20)
#define MAX_LOOKUP_BATCH 32 /* lookup_hit_batch: keys per batch, or prefetch distance */

/*
 * Random permutations of 0..period-1, concatenated to at least SEQUENCE_MIN entries. Visiting a
 * table in a cycle this long keeps the branch predictor from learning the walk: over a single
 * 1K permutation it did, and 1K-entry lookups measured 3-4 times faster than in vck-qht-bench.
 */
struct sequence {
    uint32_t *v;
    size_t len; /* a multiple of period */
    size_t period;
};

struct keyset {
    size_t n;
    size_t spare;              /* spare keys n .. n + spare - 1, for insert */
    long *keys;                /* keys[i] == i, for i < n + spare: what vck and ck_hs point at */
    struct sequence seq;       /* over 0..n-1: lookups and removes */
    struct sequence spare_seq; /* over 0..spare-1: inserts */
};

struct lfht_node {
    long key;
    struct cds_lfht_node node;
};

struct table {
    enum kind kind;
    struct keyset *ks;
    size_t cursor;       /* where the next batch of resident keys starts in ks->seq */
    size_t spare_cursor; /* where the next batch of spare keys starts in ks->spare_seq */
    size_t churn;        /* removals since ck_hs was last rebuilt */
    struct vck_qht qht;
    struct cds_lfht *lfht;
    struct lfht_node *nodes; /* lfht: nodes[i].key == i, for i < n + spare */
    ck_hs_t hs;
};

static struct keyset *keysets[MAX_SIZES];
static struct table *tables[N_KINDS][MAX_SIZES];
/* The table of a multi-threaded benchmark: set by thread 0 before vck_bench_begin(). */
static struct table *shared_table;

/* ---- callbacks ------------------------------------------------------------------------- */

static bool key_equal(const void *a, const void *b)
{
    return *(const long *)a == *(const long *)b;
}

static int lfht_match(struct cds_lfht_node *node, const void *key)
{
    return caa_container_of(node, struct lfht_node, node)->key == *(const long *)key;
}

static unsigned long ckhs_hash(const void *object, unsigned long seed)
{
    (void)seed;
    return vck_qht_hash64((uint64_t) * (const long *)object);
}

/* ck_hs frees a map it replaced with defer = true: after a grace period, as its lookups run
 * inside read-side sections. Each block carries its rcu head in front. */
#define CKHS_BLOCK_HEADER 32
_Static_assert(sizeof(struct vck_rcu_head) <= CKHS_BLOCK_HEADER, "ck_hs block header too small");

struct ckhs_block {
    struct vck_rcu_head rcu;
};

static void *ckhs_malloc(size_t size)
{
    char *block = malloc(CKHS_BLOCK_HEADER + size);
    return block ? block + CKHS_BLOCK_HEADER : NULL;
}

static void ckhs_free(void *p, size_t size, bool defer)
{
    (void)size;
    struct ckhs_block *block = (struct ckhs_block *)((char *)p - CKHS_BLOCK_HEADER);
    if (defer)
        vck_rcu_free(block, rcu);
    else
        free(block);
}

static struct ck_malloc ckhs_allocator = {.malloc = ckhs_malloc, .free = ckhs_free};

/* ---- operations, instantiated per table kind (@kind is always a constant) ------------------ */

static inline __attribute__((always_inline)) uint32_t key_hash(long key)
{
    return vck_qht_hash64((uint64_t)key);
}

/* Inside a read-side section. */
static inline __attribute__((always_inline)) void *t_lookup(struct table *t, enum kind kind,
                                                            const long *key, uint32_t hash)
{
    switch (kind) {
    case KIND_VCK:
    case KIND_VCK_NOHUGE:
        return vck_qht_lookup(&t->qht, key, hash);
    case KIND_LFHT: {
        struct cds_lfht_iter iter;
        cds_lfht_lookup(t->lfht, hash, lfht_match, key, &iter);
        return cds_lfht_iter_get_node(&iter);
    }
    case KIND_CKHS:
        return ck_hs_get(&t->hs, hash, key);
    case KIND_NONE:
        return *key < (long)t->ks->n ? (void *)key : NULL;
    default:
        return NULL;
    }
}

/* Adds key @k (whose object is preallocated). True if inserted. */
static inline __attribute__((always_inline)) bool t_insert(struct table *t, enum kind kind, long k,
                                                           uint32_t hash)
{
    switch (kind) {
    case KIND_VCK:
    case KIND_VCK_NOHUGE:
        return vck_qht_insert(&t->qht, &t->ks->keys[k], hash, NULL);
    case KIND_LFHT: {
        struct lfht_node *node = &t->nodes[k];
        vck_rcu_read_lock();
        bool added =
            cds_lfht_add_unique(t->lfht, hash, lfht_match, &node->key, &node->node) == &node->node;
        vck_rcu_read_unlock();
        return added;
    }
    case KIND_CKHS:
        return ck_hs_put(&t->hs, hash, &t->ks->keys[k]);
    case KIND_NONE:
        vck_bench_keep(hash);
        return true;
    default:
        return false;
    }
}

/* Removes key @k, given its object as each API takes it. True if removed. */
static inline __attribute__((always_inline)) bool t_remove(struct table *t, enum kind kind, long k,
                                                           uint32_t hash)
{
    switch (kind) {
    case KIND_VCK:
    case KIND_VCK_NOHUGE:
        return vck_qht_remove(&t->qht, &t->ks->keys[k], hash);
    case KIND_LFHT: {
        vck_rcu_read_lock();
        bool deleted = cds_lfht_del(t->lfht, &t->nodes[k].node) == 0;
        vck_rcu_read_unlock();
        return deleted;
    }
    case KIND_CKHS:
        return ck_hs_remove(&t->hs, hash, &t->ks->keys[k]) != NULL;
    case KIND_NONE:
        vck_bench_keep(hash);
        return true;
    default:
        return false;
    }
}

/* ---- building ------------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p) {
        fprintf(stderr, "qht_micro: out of memory (%zu bytes)\n", size);
        abort();
    }
    return p;
}

static int size_slot(size_t n)
{
    for (int i = 0; i < MAX_SIZES; i++) {
        if (!keysets[i] || keysets[i]->n == n)
            return i;
    }
    fprintf(stderr, "qht_micro: more than %d table sizes\n", MAX_SIZES);
    abort();
}

static void sequence_init(struct sequence *s, size_t period, uint64_t *rng)
{
    size_t copies = period >= SEQUENCE_MIN ? 1 : (SEQUENCE_MIN + period - 1) / period;
    s->period = period;
    s->len = period * copies;
    s->v = xmalloc(sizeof(*s->v) * s->len);
    for (size_t c = 0; c < copies; c++) {
        uint32_t *perm = s->v + c * period;
        for (size_t i = 0; i < period; i++)
            perm[i] = (uint32_t)i;
        for (size_t i = period - 1; i > 0; i--) {
            size_t j = (size_t)(rng_next(rng) % (i + 1));
            uint32_t tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
    }
}

/* Where a window of @b <= period entries at or after @start begins that lies within one
 * permutation, so that its entries are distinct. */
static size_t sequence_window(const struct sequence *s, size_t start, size_t b)
{
    if (start >= s->len)
        start = 0;
    if (start % s->period + b > s->period) {
        start += s->period - start % s->period;
        if (start >= s->len)
            start = 0;
    }
    return start;
}

static struct keyset *get_keyset(int slot, size_t n)
{
    if (keysets[slot])
        return keysets[slot];
    struct keyset *ks = xmalloc(sizeof(*ks));
    ks->n = n;
    ks->spare = n < MAX_SPARE ? n : MAX_SPARE;
    ks->keys = xmalloc(sizeof(*ks->keys) * (n + ks->spare));
    for (size_t i = 0; i < n + ks->spare; i++)
        ks->keys[i] = (long)i;
    uint64_t rng = 0x5eed0000u + n; /* fixed: the same tables in every run */
    sequence_init(&ks->seq, n, &rng);
    sequence_init(&ks->spare_seq, ks->spare, &rng);
    keysets[slot] = ks;
    return ks;
}

static inline __attribute__((always_inline)) void fill(struct table *t, enum kind kind)
{
    const struct keyset *ks = t->ks;
    for (size_t i = 0; i < ks->n; i++) {
        long k = ks->seq.v[i];
        if (!t_insert(t, kind, k, key_hash(k))) {
            fprintf(stderr, "qht_micro: building: insert of %ld failed\n", k);
            abort();
        }
    }
}

/* ck_hs: clears the tombstones (rehashing into a fresh map) after n/8 removals. Untimed. */
static void ckhs_maintain(struct table *t)
{
    if (t->kind == KIND_CKHS && t->churn > t->ks->n / 8) {
        if (!ck_hs_rebuild(&t->hs))
            abort();
        t->churn = 0;
    }
}

/* Registered thread, outside read-side sections. */
static struct table *get_table(enum kind kind, size_t n)
{
    int slot = size_slot(n);
    struct table *t = tables[kind][slot];
    if (t) {
        ckhs_maintain(t);
        return t;
    }
    t = xmalloc(sizeof(*t));
    *t = (struct table){.kind = kind, .ks = get_keyset(slot, n)};
    size_t n_objects = n + t->ks->spare;
    switch (kind) {
    case KIND_VCK:
        vck_qht_init(&t->qht, key_equal, n, 0);
        fill(t, KIND_VCK);
        break;
    case KIND_VCK_NOHUGE:
        vck_qht_init(&t->qht, key_equal, n, VCK_QHT_NO_HUGE_PAGES);
        fill(t, KIND_VCK_NOHUGE);
        break;
    case KIND_LFHT: {
        unsigned long buckets = 1;
        while (buckets < n)
            buckets <<= 1;
        t->lfht = cds_lfht_new_flavor(buckets, 1, 1ul << 32, 0, &VCK_URCU_(flavor), NULL);
        if (!t->lfht)
            abort();
        t->nodes = xmalloc(sizeof(*t->nodes) * n_objects);
        for (size_t i = 0; i < n_objects; i++) {
            t->nodes[i].key = (long)i;
            cds_lfht_node_init(&t->nodes[i].node);
        }
        fill(t, KIND_LFHT);
        break;
    }
    case KIND_CKHS:
        if (!ck_hs_init(&t->hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC, ckhs_hash, key_equal,
                        &ckhs_allocator, 2 * n, 0))
            abort();
        fill(t, KIND_CKHS);
        break;
    default:
        break;
    }
    tables[kind][slot] = t;
    return t;
}

static size_t batch_size(size_t n)
{
    size_t b = n / 4;
    if (b > MAX_BATCH)
        b = MAX_BATCH;
    return b ? b : 1;
}

/* ---- benchmarks ---------------------------------------------------------------------------- */

/* @key_bias 0: keys 0..n-1, all present; n: keys n..2n-1, all absent. */
static inline __attribute__((always_inline)) void
lookup_loop(struct vck_bench_state *st, enum kind kind, long key_bias, bool shared)
{
    size_t n = (size_t)vck_bench_range(st);
    int index = vck_bench_thread_index(st);
    struct table *t = NULL;
    if (!shared)
        t = get_table(kind, n);
    else if (index == 0)
        shared_table = get_table(kind, n);
    uint64_t iters = vck_bench_begin(st);
    if (shared)
        t = shared_table; /* vck_bench_begin() is a barrier: thread 0 set it before */
    const uint32_t *seq = t->ks->seq.v;
    const size_t len = t->ks->seq.len;
    /* Threads start at different places in the sequence. */
    size_t i = len / (size_t)vck_bench_threads(st) * (size_t)index, hits = 0;
    for (uint64_t it = 0; it < iters; it++) {
        long key = (long)seq[i] + key_bias;
        if (++i == len)
            i = 0;
        uint32_t hash = key_hash(key);
        vck_rcu_read_lock();
        void *p = t_lookup(t, kind, &key, hash);
        vck_rcu_read_unlock();
        hits += p != NULL;
        vck_bench_keep(p);
    }
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    if (hits != (key_bias ? 0 : iters))
        vck_bench_fail(st, key_bias ? "a lookup found an absent key" : "a lookup missed");
}

static inline __attribute__((always_inline)) void bench_lookup_hit(struct vck_bench_state *st,
                                                                   enum kind kind)
{
    vck_rcu_register_thread();
    lookup_loop(st, kind, 0, false);
    vck_rcu_unregister_thread();
}

/* Keys n..2n-1: absent, hashed into random buckets like the present ones. */
static inline __attribute__((always_inline)) void bench_lookup_miss(struct vck_bench_state *st,
                                                                    enum kind kind)
{
    vck_rcu_register_thread();
    lookup_loop(st, kind, (long)vck_bench_range(st), false);
    vck_rcu_unregister_thread();
}

/* Read-only, every thread on the same table. */
static inline __attribute__((always_inline)) void bench_lookup_hit_mt(struct vck_bench_state *st,
                                                                      enum kind kind)
{
    vck_rcu_register_thread();
    lookup_loop(st, kind, 0, true);
    vck_rcu_unregister_thread();
}

/*
 * Batched hits, for vck_qht_prefetch(): the keys of lookup_hit, @batch at a time, hashed and
 * then looked up in one read-side section per batch. @prefetch: first hint the bucket of every
 * key of the batch, so that their misses overlap; without, the same loop is the peer.
 */
static inline __attribute__((always_inline)) void
bench_lookup_hit_batch(struct vck_bench_state *st, size_t batch, bool prefetch)
{
    vck_rcu_register_thread();
    struct table *t = get_table(KIND_VCK, (size_t)vck_bench_range(st));
    const uint32_t *seq = t->ks->seq.v;
    const size_t len = t->ks->seq.len;
    long keys[MAX_LOOKUP_BATCH];
    uint32_t hashes[MAX_LOOKUP_BATCH];
    size_t i = 0, hits = 0;
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t done = 0; done < iters; done += batch) {
        size_t b = iters - done < batch ? (size_t)(iters - done) : batch;
        for (size_t j = 0; j < b; j++) {
            keys[j] = (long)seq[i];
            if (++i == len)
                i = 0;
            hashes[j] = key_hash(keys[j]);
        }
        vck_rcu_read_lock();
        if (prefetch) {
            for (size_t j = 0; j < b; j++)
                vck_qht_prefetch(&t->qht, hashes[j]);
        }
        for (size_t j = 0; j < b; j++) {
            void *p = vck_qht_lookup(&t->qht, &keys[j], hashes[j]);
            hits += p != NULL;
            vck_bench_keep(p);
        }
        vck_rcu_read_unlock();
    }
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    if (hits != iters)
        vck_bench_fail(st, "a lookup missed");
    vck_rcu_unregister_thread();
}

/*
 * The hint used as a pipeline instead: lookup_hit's loop (a read-side section per lookup) that
 * also prefetches the bucket of the key @distance places further on. Its peer is lookup_hit/vck.
 */
static inline __attribute__((always_inline)) void bench_lookup_hit_ahead(struct vck_bench_state *st,
                                                                         size_t distance)
{
    vck_rcu_register_thread();
    struct table *t = get_table(KIND_VCK, (size_t)vck_bench_range(st));
    const uint32_t *seq = t->ks->seq.v;
    const size_t len = t->ks->seq.len;
    /* ahead[k % distance]: the hash of sequence position k, computed when it was prefetched */
    uint32_t ahead[MAX_LOOKUP_BATCH];
    size_t i = 0, next = 0, hits = 0;
    for (size_t k = 0; k < distance; k++) {
        ahead[k] = key_hash((long)seq[next]);
        if (++next == len)
            next = 0;
    }
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t it = 0; it < iters; it++) {
        long key = (long)seq[i];
        if (++i == len)
            i = 0;
        size_t slot = (size_t)(it % distance);
        uint32_t hash = ahead[slot];
        ahead[slot] = key_hash((long)seq[next]);
        if (++next == len)
            next = 0;
        vck_rcu_read_lock();
        vck_qht_prefetch(&t->qht, ahead[slot]);
        void *p = vck_qht_lookup(&t->qht, &key, hash);
        vck_rcu_read_unlock();
        hits += p != NULL;
        vck_bench_keep(p);
    }
    vck_bench_end(st);
    vck_bench_items(st, (int64_t)iters);
    if (hits != iters)
        vck_bench_fail(st, "a lookup missed");
    vck_rcu_unregister_thread();
}

/* Removes (untimed) the @b resident keys of the window at @start in ks->seq. */
static inline __attribute__((always_inline)) void remove_residents(struct table *t, enum kind kind,
                                                                   size_t start, size_t b)
{
    const uint32_t *window = t->ks->seq.v + start;
    for (size_t j = 0; j < b; j++) {
        long k = window[j];
        if (!t_remove(t, kind, k, key_hash(k)))
            abort();
    }
    t->churn += b;
}

/* Puts back (untimed) the @b resident keys of the window at @start in ks->seq. */
static inline __attribute__((always_inline)) void
reinsert_residents(struct table *t, enum kind kind, size_t start, size_t b)
{
    const uint32_t *window = t->ks->seq.v + start;
    if (kind == KIND_LFHT && b)
        vck_rcu_synchronize(); /* a deleted node is added again only after a grace period */
    for (size_t j = 0; j < b; j++) {
        long k = window[j];
        if (!t_insert(t, kind, k, key_hash(k)))
            abort();
    }
}

/* Removes (untimed) the @b spare keys of the window at @start in ks->spare_seq. */
static inline __attribute__((always_inline)) void remove_spares(struct table *t, enum kind kind,
                                                                size_t start, size_t b)
{
    const uint32_t *window = t->ks->spare_seq.v + start;
    const long n = (long)t->ks->n;
    for (size_t j = 0; j < b; j++) {
        long k = n + window[j];
        if (!t_remove(t, kind, k, key_hash(k)))
            abort();
    }
    t->churn += b;
}

/*
 * Each batch, paused: undo the previous batch, then remove @b resident keys to make room (so that
 * no table ever holds more than n: ck_hs would grow); timed: insert @b spare keys.
 */
static inline __attribute__((always_inline)) void bench_insert(struct vck_bench_state *st,
                                                               enum kind kind)
{
    vck_rcu_register_thread();
    const size_t n = (size_t)vck_bench_range(st);
    struct table *t = get_table(kind, n);
    const size_t batch = batch_size(n);
    size_t inserted = 0, resident_start = 0, spare_start = 0, b = 0;
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t done = 0; done < iters; done += b) {
        vck_bench_pause(st);
        if (done) {
            remove_spares(t, kind, spare_start, b);
            reinsert_residents(t, kind, resident_start, b); /* lfht: after a grace period */
            ckhs_maintain(t);
        }
        b = iters - done < batch ? (size_t)(iters - done) : batch;
        resident_start = sequence_window(&t->ks->seq, t->cursor, b);
        remove_residents(t, kind, resident_start, b);
        t->cursor = resident_start + b;
        spare_start = sequence_window(&t->ks->spare_seq, t->spare_cursor, b);
        t->spare_cursor = spare_start + b;
        vck_bench_resume(st);

        const uint32_t *window = t->ks->spare_seq.v + spare_start;
        for (size_t j = 0; j < b; j++) {
            long k = (long)n + window[j];
            inserted += t_insert(t, kind, k, key_hash(k));
        }
    }
    vck_bench_end(st);
    remove_spares(t, kind, spare_start, b);
    reinsert_residents(t, kind, resident_start, b);
    vck_bench_items(st, (int64_t)iters);
    if (inserted != iters)
        vck_bench_fail(st, "an insert failed");
    vck_rcu_unregister_thread();
}

/* Each batch, timed: remove @b resident keys; paused: put them back. */
static inline __attribute__((always_inline)) void bench_remove(struct vck_bench_state *st,
                                                               enum kind kind)
{
    vck_rcu_register_thread();
    const size_t n = (size_t)vck_bench_range(st);
    struct table *t = get_table(kind, n);
    const size_t batch = batch_size(n);
    size_t removed = 0, start = 0, b = 0;
    uint64_t iters = vck_bench_begin(st);
    for (uint64_t done = 0; done < iters; done += b) {
        if (done) {
            vck_bench_pause(st);
            reinsert_residents(t, kind, start, b);
            ckhs_maintain(t);
            vck_bench_resume(st);
        }
        b = iters - done < batch ? (size_t)(iters - done) : batch;
        start = sequence_window(&t->ks->seq, t->cursor, b);
        t->cursor = start + b;
        const uint32_t *window = t->ks->seq.v + start;
        for (size_t j = 0; j < b; j++) {
            long k = window[j];
            removed += t_remove(t, kind, k, key_hash(k));
        }
        t->churn += b;
    }
    vck_bench_end(st);
    reinsert_residents(t, kind, start, b);
    vck_bench_items(st, (int64_t)iters);
    if (removed != iters)
        vck_bench_fail(st, "a remove failed");
    vck_rcu_unregister_thread();
}

/* One instance of each benchmark per table kind, so that every table call is direct. */
#define INSTANCE(bench, kind_name, KIND)                                                           \
    static void bench##_##kind_name(struct vck_bench_state *st)                                    \
    {                                                                                              \
        bench_##bench(st, KIND);                                                                   \
    }
#define INSTANCES(bench)                                                                           \
    INSTANCE(bench, vck, KIND_VCK)                                                                 \
    INSTANCE(bench, vck_nohuge, KIND_VCK_NOHUGE)                                                   \
    INSTANCE(bench, lfht, KIND_LFHT)                                                               \
    INSTANCE(bench, ckhs, KIND_CKHS)                                                               \
    INSTANCE(bench, none, KIND_NONE)

INSTANCES(lookup_hit)
INSTANCES(lookup_miss)
INSTANCES(lookup_hit_mt)
INSTANCES(insert)
INSTANCES(remove)

/* Batches of 16 are the pair named plainly; the others try other batch sizes and distances. */
#define BATCH(name, batch, prefetch)                                                               \
    static void lookup_hit_batch_##name(struct vck_bench_state *st)                                \
    {                                                                                              \
        _Static_assert(batch <= MAX_LOOKUP_BATCH, "batch too large");                              \
        bench_lookup_hit_batch(st, batch, prefetch);                                               \
    }
#define AHEAD(name, distance)                                                                      \
    static void lookup_hit_batch_##name(struct vck_bench_state *st)                                \
    {                                                                                              \
        _Static_assert(distance <= MAX_LOOKUP_BATCH, "distance too large");                        \
        bench_lookup_hit_ahead(st, distance);                                                      \
    }
BATCH(vck_b8, 8, false)
BATCH(vck_prefetch_b8, 8, true)
BATCH(vck, 16, false)
BATCH(vck_prefetch, 16, true)
BATCH(vck_b32, 32, false)
BATCH(vck_prefetch_b32, 32, true)
AHEAD(vck_prefetch_d4, 4)
AHEAD(vck_prefetch_d16, 16)

static void register_peers(const char *what, vck_bench_fn *const fns[N_KINDS], int threads)
{
    static const char *const kind_names[N_KINDS] = {"vck", "vck_nohuge", "lfht", "ckhs", "none"};
    static char names[5 * N_KINDS][48];
    static int used;
    for (int k = 0; k < N_KINDS; k++) {
        if (used == (int)(sizeof(names) / sizeof(names[0])))
            abort();
        char *name = names[used++];
        snprintf(name, sizeof(names[0]), "qht/%s/%s", what, kind_names[k]);
        vck_bench_register(&(struct vck_bench_def){
            .name = name, .fn = fns[k], .threads = threads, .args = {1024, 4194304}, .n_args = 2});
    }
}

#define PEERS(bench)                                                                               \
    (vck_bench_fn *const[N_KINDS])                                                                 \
    {                                                                                              \
        bench##_vck, bench##_vck_nohuge, bench##_lfht, bench##_ckhs, bench##_none                  \
    }

void vck_bench_register_qht(void)
{
    register_peers("lookup_hit", PEERS(lookup_hit), 1);
    register_peers("lookup_miss", PEERS(lookup_miss), 1);
    register_peers("insert", PEERS(insert), 1);
    register_peers("remove", PEERS(remove), 1);
    register_peers("lookup_hit_mt", PEERS(lookup_hit_mt), 2);
    static const struct {
        const char *name;
        vck_bench_fn *fn;
    } batches[] = {
        {"qht/lookup_hit_batch/vck_b8", lookup_hit_batch_vck_b8},
        {"qht/lookup_hit_batch/vck_prefetch_b8", lookup_hit_batch_vck_prefetch_b8},
        {"qht/lookup_hit_batch/vck", lookup_hit_batch_vck},
        {"qht/lookup_hit_batch/vck_prefetch", lookup_hit_batch_vck_prefetch},
        {"qht/lookup_hit_batch/vck_b32", lookup_hit_batch_vck_b32},
        {"qht/lookup_hit_batch/vck_prefetch_b32", lookup_hit_batch_vck_prefetch_b32},
        {"qht/lookup_hit_batch/vck_prefetch_d4", lookup_hit_batch_vck_prefetch_d4},
        {"qht/lookup_hit_batch/vck_prefetch_d16", lookup_hit_batch_vck_prefetch_d16},
    };
    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++)
        vck_bench_register(&(struct vck_bench_def){
            .name = batches[i].name, .fn = batches[i].fn, .args = {1024, 4194304}, .n_args = 2});
}
