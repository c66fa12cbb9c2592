/*
 * qht: a concurrent hash table with lock-free lookups and bucket-by-bucket resizing.
 *
 * Layout. A map is a power-of-two array of head buckets, each one 64-byte cache line: a lock
 * word, a sequence counter, four 32-bit hashes, four pointers and a link to an overflow bucket.
 * Overflow buckets have the same layout; the head bucket's lock and sequence cover its whole
 * chain. Entries in a chain are packed: the first empty slot ends the chain, and removal moves
 * the chain's last entry into the hole. Full hashes are stored so a resize never recomputes one.
 *
 * Lookups (any thread, inside an RCU read-side section) read the current map, load the head
 * bucket's sequence (acquire), compare stored hashes and call the caller's match on candidate
 * pointers (acquire loads), then re-check the sequence after an acquire fence. An odd sequence
 * means a writer is inside that chain; a changed one means the walk may have been torn. Both
 * send the lookup to the slow path, kept out of line. Lookups write nothing.
 *
 * Writers lock the head bucket (a spinlock in the lock word), bracket their change with the
 * sequence (odd, relaxed store + release fence; then even, release store) and publish a new
 * object pointer with a release store, so the caller's initialisation of the object is visible
 * to any lookup that finds it.
 *
 * Resizing is where this differs from QEMU's qht, which takes every bucket lock of the table at
 * once and copies everything while all writers spin (measured there: a 4M-entry table stalls
 * writers for 0.3-0.7 s per resize, and old maps pile up awaiting grace periods). Here a resize
 * builds the new map, links it from the old one (old->next, release), and then old head buckets
 * are migrated one at a time, by whichever threads help (see "Migration is cooperative"):
 *
 *     lock old bucket; copy its entries into the new map, each under the destination bucket's
 *     lock and sequence; set MIGRATED in the old lock word; make the old sequence odd for good
 *     (release); unlock.
 *
 * A lookup that finds an odd sequence checks MIGRATED (the release store of the sequence orders
 * the flag before it) and, if set, continues in old->next. Until the flag is set the old bucket
 * is intact, so lookups never wait for a copy, and retry at most once per resize (if the flag
 * was set while they walked). A writer that locks a migrated bucket drops it and follows
 * old->next. Every hash has exactly one live home, the old bucket until it is migrated and the
 * new one after, so duplicate detection on insert stays exact. Once every bucket has moved, the
 * new map is published as current and the old one is reclaimed after a grace period.
 *
 * Lock order: the table mutex (resize, reset, iteration, statistics), then at most one old-map
 * head bucket, then at most one new-map head bucket. Writers hold a single bucket lock at a
 * time, so no thread ever holds more than two spinlocks and one mutex (ThreadSanitizer gives up
 * past 64 held locks, which QEMU's all-buckets resize exceeds).
 *
 * Memory. An explicit resize waits for a grace period and frees the old map before returning,
 * so a table has at most two maps however often it is resized. An automatic resize runs inside
 * an insert, possibly inside the caller's read-side section, so it cannot wait: it frees the old
 * map with vck_rcu_call(). It only ever doubles, so the maps awaiting reclamation halve going
 * back and together stay below the size of the current map.
 */
#include <assert.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <vcpukit/qht.h>

#define ENTRIES VCK_QHT_BUCKET_ENTRIES

enum {
    LOCK_HELD = 1u << 0,
    LOCK_MIGRATED = 1u << 1, /* head bucket: its entries now live in map->next */
};

struct bucket {
    _Atomic uint32_t lock;
    _Atomic uint32_t seq;
    _Atomic uint32_t hashes[ENTRIES];
    _Atomic(void *) pointers[ENTRIES];
    _Atomic(struct bucket *) next;
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct bucket) == 64, "a bucket is one cache line");

struct vck_qht_map {
    struct bucket *buckets;
    size_t n_buckets;
    size_t mask;
    size_t alloc_size;
    bool mmapped;
    _Atomic size_t n_overflow; /* overflow buckets allocated in this map */
    /* Migration out of this map: next is published (release) once the rest is set up. */
    _Atomic(struct vck_qht_map *) next; /* the map being filled, or NULL */
    bool migrate_copy;                  /* false: a reset_size, entries are dropped */
    _Atomic size_t migrate_cursor;      /* next old head bucket to claim */
    _Atomic size_t migrate_done;        /* old head buckets migrated */
    _Atomic bool migrate_driven;        /* a thread is finishing it: writers need not help */
    struct vck_qht *owner;
    struct vck_rcu_head rcu;
};

/*
 * Entry accesses inside a sequence section are relaxed, ordered against the sequence by one
 * fence per section (cheaper than per-access ordering on weakly ordered hosts). ThreadSanitizer
 * does not model standalone fences, and gcc refuses them under -fsanitize=thread, so TSan builds
 * give every entry load acquire and every entry store release instead: the same guarantee, spelled
 * per access, and the same code on x86-64.
 */
#ifdef VCK_TSAN
#define ENTRY_LOAD      memory_order_acquire
#define ENTRY_STORE     memory_order_release
#define SEQ_FENCE(kind) ((void)0)
#else
#define ENTRY_LOAD      memory_order_relaxed
#define ENTRY_STORE     memory_order_relaxed
#define SEQ_FENCE(kind) atomic_thread_fence(kind)
#endif

#ifdef VCK_QHT_BROKEN_NO_SEQ_RECHECK
/* The stress test's expected-failure build: lookups trust torn walks. */
#define SEQ_RECHECK_ENABLED 0
#else
#define SEQ_RECHECK_ENABLED 1
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#endif
}

static void *xmalloc_aligned(size_t align, size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, align, size) != 0) {
        fprintf(stderr, "vck_qht: out of memory (%zu bytes)\n", size);
        abort();
    }
    return p;
}

/* ---- buckets ---------------------------------------------------------------------------- */

static void bucket_lock(struct bucket *b)
{
    uint32_t v = atomic_load_explicit(&b->lock, memory_order_relaxed);
    for (unsigned spins = 0;; spins++) {
        if (!(v & LOCK_HELD)) {
            /* Acquire pairs with bucket_unlock()'s release. */
            if (atomic_compare_exchange_weak_explicit(&b->lock, &v, v | LOCK_HELD,
                                                      memory_order_acquire, memory_order_relaxed))
                return;
            continue;
        }
        /* The holder may have been preempted: on a 2-core host spinning would starve it. */
        if (spins > 256)
            sched_yield();
        else
            cpu_relax();
        v = atomic_load_explicit(&b->lock, memory_order_relaxed);
    }
}

static void bucket_unlock(struct bucket *b)
{
    atomic_fetch_and_explicit(&b->lock, ~(uint32_t)LOCK_HELD, memory_order_release);
}

static bool bucket_migrated__locked(const struct bucket *b)
{
    return atomic_load_explicit(&b->lock, memory_order_relaxed) & LOCK_MIGRATED;
}

static void seq_write_begin__locked(struct bucket *head)
{
    uint32_t s = atomic_load_explicit(&head->seq, memory_order_relaxed);
    atomic_store_explicit(&head->seq, s + 1, memory_order_relaxed);
    /* Orders the odd sequence before the entry stores that follow; pairs with the acquire
     * fence in seq_read_retry(). */
    SEQ_FENCE(memory_order_release);
}

static void seq_write_end__locked(struct bucket *head)
{
    uint32_t s = atomic_load_explicit(&head->seq, memory_order_relaxed);
    /* Release: the entry stores happen-before a reader that sees the even value. */
    atomic_store_explicit(&head->seq, s + 1, memory_order_release);
}

static inline uint32_t seq_read_begin(const struct bucket *head)
{
    return atomic_load_explicit(&head->seq, memory_order_acquire);
}

static inline bool seq_read_retry(const struct bucket *head, uint32_t seq)
{
#if SEQ_RECHECK_ENABLED
    SEQ_FENCE(memory_order_acquire);
    return atomic_load_explicit(&head->seq, memory_order_relaxed) != seq;
#else
    (void)head;
    (void)seq;
    return false;
#endif
}

/*
 * The slots of @b whose stored hash is @hash, as a bit mask. Folding the four compares into a
 * mask rather than branching on each keeps the position of the matching slot, which is random,
 * out of the branch predictor's way: on a 1K-entry table it was the largest cost of a hit.
 */
static inline unsigned bucket_match(const struct bucket *b, uint32_t hash)
{
    _Static_assert(ENTRIES == 4, "bucket_match() compares four slots");
    /* Written out: gcc 12 keeps the loop form as a loop with a variable shift. */
    unsigned m0 = atomic_load_explicit(&b->hashes[0], ENTRY_LOAD) == hash;
    unsigned m1 = atomic_load_explicit(&b->hashes[1], ENTRY_LOAD) == hash;
    unsigned m2 = atomic_load_explicit(&b->hashes[2], ENTRY_LOAD) == hash;
    unsigned m3 = atomic_load_explicit(&b->hashes[3], ENTRY_LOAD) == hash;
    return m0 | m1 << 1 | m2 << 2 | m3 << 3;
}

static inline void *bucket_walk(const struct bucket *b, vck_qht_lookup_fn *func, const void *userp,
                                uint32_t hash)
{
    do {
        for (unsigned mask = bucket_match(b, hash); mask; mask &= mask - 1) {
            /* Acquire pairs with the release store in chain_append__locked(). */
            void *p = atomic_load_explicit(&b->pointers[__builtin_ctz(mask)], memory_order_acquire);
            if (__builtin_expect(p != NULL, 1) && func(p, userp))
                return p;
        }
        /* Entries are packed: a bucket with a free last slot ends the chain, whatever empty
         * overflow buckets churn has left linked behind it (measured: misses on a churned 1K
         * table went from 13.5 to 9 ns). A torn read here is caught by the sequence re-check. */
        if (!atomic_load_explicit(&b->pointers[ENTRIES - 1], ENTRY_LOAD))
            return NULL;
        b = atomic_load_explicit(&b->next, memory_order_acquire);
    } while (b);
    return NULL;
}

/* ---- maps -------------------------------------------------------------------------------- */

/*
 * Two entries per head bucket on average: a quarter of the buckets' capacity. With four (QEMU's
 * choice) more than half of the buckets are full, and a miss then reads a second cache line:
 * measured on 1K entries, misses took 11.1 ns against cds_lfht's 12.8; sized this way, 6.3 ns.
 * Auto-resize settles at this density too. Memory: 32 bytes of head bucket per entry.
 */
static size_t buckets_for(size_t n_elems)
{
    size_t want = n_elems / 2, n = 1;
    while (n < want && n < ((size_t)1 << 40))
        n <<= 1;
    return n;
}

static struct vck_qht_map *map_new(struct vck_qht *ht, size_t n_buckets)
{
    struct vck_qht_map *map = xmalloc_aligned(64, sizeof(*map));
    map->n_buckets = n_buckets;
    map->mask = n_buckets - 1;
    map->alloc_size = n_buckets * sizeof(struct bucket);
    map->owner = ht;
    atomic_init(&map->n_overflow, 0);
    atomic_init(&map->next, NULL);
    map->migrate_copy = true;
    atomic_init(&map->migrate_cursor, 0);
    atomic_init(&map->migrate_done, 0);
    atomic_init(&map->migrate_driven, false);
    /* Large maps are dominated by TLB misses: back them with transparent huge pages. */
    const size_t huge = 2u << 20;
    if (map->alloc_size >= huge && !(ht->flags & VCK_QHT_NO_HUGE_PAGES)) {
        size_t size = (map->alloc_size + huge - 1) & ~(huge - 1);
        map->buckets = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map->buckets == MAP_FAILED) {
            fprintf(stderr, "vck_qht: out of memory (%zu bytes)\n", size);
            abort();
        }
        madvise(map->buckets, size, MADV_HUGEPAGE);
        map->alloc_size = size;
        map->mmapped = true;
    } else {
        map->buckets = xmalloc_aligned(64, map->alloc_size);
        memset(map->buckets, 0, map->alloc_size);
        map->mmapped = false;
    }
    return map;
}

static void map_free(struct vck_qht_map *map)
{
    for (size_t i = 0; i < map->n_buckets; i++) {
        struct bucket *b = atomic_load_explicit(&map->buckets[i].next, memory_order_relaxed);
        while (b) {
            struct bucket *next = atomic_load_explicit(&b->next, memory_order_relaxed);
            free(b);
            b = next;
        }
    }
    if (map->mmapped)
        munmap(map->buckets, map->alloc_size);
    else
        free(map->buckets);
    free(map);
}

static void map_free_callback(struct vck_rcu_head *head)
{
    struct vck_qht_map *map = caa_container_of(head, struct vck_qht_map, rcu);
    struct vck_qht *ht = map->owner;
    map_free(map);
    /* Release: pairs with vck_qht_destroy(), which must not free @ht before this runs. */
    __atomic_fetch_sub(&ht->pending_maps, 1, __ATOMIC_RELEASE);
}

static inline struct vck_qht_map *current_map(const struct vck_qht *ht)
{
    return vck_rcu_dereference(((struct vck_qht *)ht)->map);
}

/* ---- lookup ------------------------------------------------------------------------------ */

static void *__attribute__((noinline)) lookup_slow(const struct vck_qht_map *map, const void *userp,
                                                   uint32_t hash, vck_qht_lookup_fn *func)
{
    for (;;) {
        const struct bucket *b = &map->buckets[hash & map->mask];
        uint32_t seq = seq_read_begin(b);
        if (seq & 1) {
            /* The release store that made a migrated bucket's sequence odd ordered the
             * MIGRATED flag and map->next before it. */
            if (atomic_load_explicit(&b->lock, memory_order_relaxed) & LOCK_MIGRATED) {
                map =
                    atomic_load_explicit(&((struct vck_qht_map *)map)->next, memory_order_acquire);
                continue;
            }
            cpu_relax();
            continue;
        }
        void *p = bucket_walk(b, func, userp, hash);
        if (!seq_read_retry(b, seq))
            return p;
    }
}

void *vck_qht_lookup_custom(const struct vck_qht *ht, const void *userp, uint32_t hash,
                            vck_qht_lookup_fn *func)
{
    const struct vck_qht_map *map = current_map(ht);
    const struct bucket *b = &map->buckets[hash & map->mask];
    uint32_t seq = seq_read_begin(b);
    if (__builtin_expect(!(seq & 1), 1)) {
        void *p = bucket_walk(b, func, userp, hash);
        if (__builtin_expect(!seq_read_retry(b, seq), 1))
            return p;
    }
    return lookup_slow(map, userp, hash, func);
}

void *vck_qht_lookup(const struct vck_qht *ht, const void *userp, uint32_t hash)
{
    return vck_qht_lookup_custom(ht, userp, hash, (vck_qht_lookup_fn *)ht->cmp);
}

/*
 * Only the head bucket: it is the one certain miss of a lookup, and an overflow bucket's address
 * is known only once the head has arrived. During a migration this is the old map's bucket,
 * which a lookup reads first too (and leaves only if that bucket has already moved). Out of line,
 * keeping the map private: an inline copy saved 0.2-0.3 ns per call on a 1K table, where the
 * hint is useless anyway, and nothing measurable on a 4M one.
 */
void vck_qht_prefetch(const struct vck_qht *ht, uint32_t hash)
{
    const struct vck_qht_map *map = current_map(ht);
    __builtin_prefetch(&map->buckets[hash & map->mask], 0, 3);
}

/* ---- writers ----------------------------------------------------------------------------- */

/*
 * Locks the head bucket that is @hash's live home, following migrations; returns it and its map.
 * Caller inside a read-side section (maps reached through ->next are protected by it).
 */
static struct bucket *lock_home(struct vck_qht *ht, uint32_t hash, struct vck_qht_map **mapp)
{
    struct vck_qht_map *map = current_map(ht);
    for (;;) {
        struct bucket *b = &map->buckets[hash & map->mask];
        bucket_lock(b);
        if (__builtin_expect(!bucket_migrated__locked(b), 1)) {
            *mapp = map;
            return b;
        }
        bucket_unlock(b);
        map = atomic_load_explicit(&map->next, memory_order_acquire);
    }
}

/* Finds the first empty slot of @head's chain; false if the chain is full, with *@tail its last
 * bucket. */
static bool chain_free_slot__locked(struct bucket *head, struct bucket **slot_bucket,
                                    int *slot_index, struct bucket **tail)
{
    for (struct bucket *b = head;; b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
        for (int i = 0; i < ENTRIES; i++) {
            if (!atomic_load_explicit(&b->pointers[i], memory_order_relaxed)) {
                *slot_bucket = b;
                *slot_index = i;
                return true;
            }
        }
        if (!atomic_load_explicit(&b->next, memory_order_relaxed)) {
            *tail = b;
            return false;
        }
    }
}

/*
 * Stores (@p, @hash) in @head's chain, which must not contain it. Returns true if an overflow
 * bucket had to be added. Caller holds @head's lock.
 */
static bool chain_append__locked(struct vck_qht_map *map, struct bucket *head, void *p,
                                 uint32_t hash)
{
    struct bucket *b, *tail;
    int i;
    if (chain_free_slot__locked(head, &b, &i, &tail)) {
        seq_write_begin__locked(head);
        atomic_store_explicit(&b->hashes[i], hash, ENTRY_STORE);
        /* Release: publishes the caller's object; pairs with bucket_walk()'s acquire. */
        atomic_store_explicit(&b->pointers[i], p, memory_order_release);
        seq_write_end__locked(head);
        return false;
    }
    struct bucket *nb = xmalloc_aligned(64, sizeof(*nb));
    memset(nb, 0, sizeof(*nb));
    atomic_store_explicit(&nb->hashes[0], hash, memory_order_relaxed);
    atomic_store_explicit(&nb->pointers[0], p, memory_order_relaxed);
    seq_write_begin__locked(head);
    /* Release: the new bucket's contents (and the object) before the link. */
    atomic_store_explicit(&tail->next, nb, memory_order_release);
    seq_write_end__locked(head);
    atomic_fetch_add_explicit(&map->n_overflow, 1, memory_order_relaxed);
    return true;
}

static void *chain_find_equal__locked(const struct vck_qht *ht, struct bucket *head, const void *p,
                                      uint32_t hash)
{
    for (struct bucket *b = head; b; b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
        for (int i = 0; i < ENTRIES; i++) {
            void *q = atomic_load_explicit(&b->pointers[i], memory_order_relaxed);
            if (!q)
                return NULL; /* packed: nothing after the first empty slot */
            if (atomic_load_explicit(&b->hashes[i], memory_order_relaxed) == hash && ht->cmp(q, p))
                return q;
        }
    }
    return NULL;
}

static bool map_wants_growth(const struct vck_qht_map *map)
{
    return atomic_load_explicit(&map->n_overflow, memory_order_relaxed) > map->n_buckets / 8;
}

static void grow_if_still_needed(struct vck_qht *ht, struct vck_qht_map *map);
static inline void migration_writer_help(struct vck_qht *ht);

bool vck_qht_insert(struct vck_qht *ht, void *p, uint32_t hash, void **existing)
{
    assert(p != NULL);
    vck_rcu_read_lock();
    struct vck_qht_map *map;
    struct bucket *head = lock_home(ht, hash, &map);
    void *prev = chain_find_equal__locked(ht, head, p, hash);
    bool chained = false;
    if (!prev)
        chained = chain_append__locked(map, head, p, hash);
    bucket_unlock(head);
    if (chained && (ht->flags & VCK_QHT_AUTO_RESIZE) && map_wants_growth(map))
        grow_if_still_needed(ht, map);
    migration_writer_help(ht);
    vck_rcu_read_unlock();
    if (prev && existing)
        *existing = prev;
    return prev == NULL;
}

/* Removes slot (@b, @i) of @head's chain, moving the chain's last entry into it. */
static void chain_delete_slot__locked(struct bucket *head, struct bucket *b, int i)
{
    struct bucket *last_b = b;
    int last_i = i;
    /* Find the last occupied slot, starting from the hole (everything before it is full). */
    for (struct bucket *c = b; c; c = atomic_load_explicit(&c->next, memory_order_relaxed)) {
        for (int j = (c == b ? i : 0); j < ENTRIES; j++) {
            if (!atomic_load_explicit(&c->pointers[j], memory_order_relaxed))
                goto found;
            last_b = c;
            last_i = j;
        }
    }
found:
    seq_write_begin__locked(head);
    if (last_b != b || last_i != i) {
        atomic_store_explicit(&b->hashes[i],
                              atomic_load_explicit(&last_b->hashes[last_i], memory_order_relaxed),
                              ENTRY_STORE);
        atomic_store_explicit(&b->pointers[i],
                              atomic_load_explicit(&last_b->pointers[last_i], memory_order_relaxed),
                              memory_order_release);
    }
    atomic_store_explicit(&last_b->pointers[last_i], NULL, ENTRY_STORE);
    atomic_store_explicit(&last_b->hashes[last_i], 0, ENTRY_STORE);
    seq_write_end__locked(head);
}

bool vck_qht_remove(struct vck_qht *ht, const void *p, uint32_t hash)
{
    bool found = false;
    vck_rcu_read_lock();
    struct vck_qht_map *map;
    struct bucket *head = lock_home(ht, hash, &map);
    for (struct bucket *b = head; b; b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
        for (int i = 0; i < ENTRIES; i++) {
            void *q = atomic_load_explicit(&b->pointers[i], memory_order_relaxed);
            if (!q)
                goto done; /* packed: the chain ends at its first free slot */
            if (q == p && atomic_load_explicit(&b->hashes[i], memory_order_relaxed) == hash) {
                chain_delete_slot__locked(head, b, i);
                found = true;
                goto done;
            }
        }
    }
done:
    bucket_unlock(head);
    migration_writer_help(ht);
    vck_rcu_read_unlock();
    return found;
}

/* ---- resize ------------------------------------------------------------------------------ */

/*
 * Moves every entry of @old_head (locked) into @new_map, then retires @old_head for good.
 * @exclusive: the new map is at least as large as the old one, so each new bucket receives
 * entries from this old bucket only. No other thread can reach those new buckets before this one
 * is marked (lookups and writers get there only through a migrated bucket), so they need no lock.
 */
static void bucket_migrate__locked(struct vck_qht_map *new_map, struct bucket *old_head, bool copy,
                                   bool exclusive)
{
    if (copy) {
        for (struct bucket *b = old_head; b;
             b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
            for (int i = 0; i < ENTRIES; i++) {
                void *p = atomic_load_explicit(&b->pointers[i], memory_order_relaxed);
                if (!p)
                    goto copied;
                uint32_t hash = atomic_load_explicit(&b->hashes[i], memory_order_relaxed);
                struct bucket *dst = &new_map->buckets[hash & new_map->mask];
                if (!exclusive)
                    bucket_lock(dst);
                chain_append__locked(new_map, dst, p, hash);
                if (!exclusive)
                    bucket_unlock(dst);
            }
        }
    }
copied:
    atomic_fetch_or_explicit(&old_head->lock, LOCK_MIGRATED, memory_order_relaxed);
    uint32_t s = atomic_load_explicit(&old_head->seq, memory_order_relaxed);
    /* Odd for good. Release: readers that see it also see MIGRATED and old->next. */
    atomic_store_explicit(&old_head->seq, s | 1, memory_order_release);
}

/*
 * Migration is cooperative. Whoever starts one (an explicit resize, or an insert that found the
 * table too full) links the new map. A thread that needs it finished (a resize, a reset, an
 * iteration) claims big chunks of old buckets until none are left, and marks the migration
 * driven; until then, every writer that meets the migration moves a small chunk after its own
 * operation. Chunks are claimed with a cursor; the thread whose chunk brings the done-count to
 * the number of buckets publishes the new map and retires the old one. So no insert ever stalls
 * for a whole table's migration, and with a resizer thread the work lands on that thread.
 */
enum {
    WRITER_CHUNK = 16,   /* buckets a writer migrates per insert or remove */
    RESIZER_CHUNK = 1024 /* buckets a resizing thread claims at a time */
};

/* Starts moving the current map into a new one of @n_buckets. Table mutex held, no migration
 * in progress (so the current map cannot change under us). */
static void migration_start__table_locked(struct vck_qht *ht, size_t n_buckets, bool copy)
{
    struct vck_qht_map *old = __atomic_load_n(&ht->map, __ATOMIC_RELAXED);
    struct vck_qht_map *new_map = map_new(ht, n_buckets);
    old->migrate_copy = copy;
    /* Release: the new map and migrate_copy before any helper or lookup follows the link. */
    atomic_store_explicit(&old->next, new_map, memory_order_release);
}

/*
 * Migrates one claimed chunk of @old. Caller inside a read-side section (or otherwise keeping
 * @old alive). Returns true if this call finished the whole migration: it has published the new
 * map, and the caller must retire @old.
 */
static bool migration_help(struct vck_qht *ht, struct vck_qht_map *old, size_t chunk)
{
    struct vck_qht_map *new_map = atomic_load_explicit(&old->next, memory_order_acquire);
    size_t n = old->n_buckets;
    size_t first = atomic_fetch_add_explicit(&old->migrate_cursor, chunk, memory_order_relaxed);
    if (first >= n)
        return false;
    size_t last = first + chunk < n ? first + chunk : n;
    bool exclusive = new_map->n_buckets >= n;
    for (size_t i = first; i < last; i++) {
        struct bucket *head = &old->buckets[i];
        bucket_lock(head);
        bucket_migrate__locked(new_map, head, old->migrate_copy, exclusive);
        bucket_unlock(head);
    }
    /* Acq_rel: the finisher sees every helper's migration before it publishes. */
    size_t done =
        atomic_fetch_add_explicit(&old->migrate_done, last - first, memory_order_acq_rel) +
        (last - first);
    if (done != n)
        return false;
    vck_rcu_assign_pointer(ht->map, new_map);
    __atomic_fetch_add(&ht->resizes, 1, __ATOMIC_RELAXED);
    return true;
}

/* Frees @old after a grace period, without waiting: usable inside read-side sections. */
static void map_retire_deferred(struct vck_qht *ht, struct vck_qht_map *old)
{
    __atomic_fetch_add(&ht->pending_maps, 1, __ATOMIC_RELAXED);
    vck_rcu_call(&old->rcu, map_free_callback);
}

/* A writer's share of a migration in progress. Inside a read-side section. */
static inline void migration_writer_help(struct vck_qht *ht)
{
    struct vck_qht_map *map = current_map(ht);
    if (__builtin_expect(atomic_load_explicit(&map->next, memory_order_relaxed) == NULL, 1))
        return;
    /* A resizing thread is on it: helping would only slow this writer down (measured on two
     * cores with a resizer thread: 2.7 instead of 4 M ops/s). */
    if (atomic_load_explicit(&map->migrate_driven, memory_order_relaxed))
        return;
    if (migration_help(ht, map, WRITER_CHUNK))
        map_retire_deferred(ht, map);
}

/*
 * Completes the migration in progress, if any. Table mutex held, so no other can start.
 * @may_block: the caller is outside read-side sections, and frees the old map itself after a
 * grace period if it finishes the migration.
 */
static void migration_finish__table_locked(struct vck_qht *ht, bool may_block)
{
    struct vck_qht_map *finished = NULL;
    vck_rcu_read_lock();
    struct vck_qht_map *map = current_map(ht);
    if (atomic_load_explicit(&map->next, memory_order_acquire)) {
        atomic_store_explicit(&map->migrate_driven, true, memory_order_relaxed);
        while (!finished &&
               atomic_load_explicit(&map->migrate_cursor, memory_order_relaxed) < map->n_buckets)
            if (migration_help(ht, map, RESIZER_CHUNK))
                finished = map;
        /* Writers still migrating the chunks they claimed: the last of them publishes. */
        while (!finished && current_map(ht) == map)
            sched_yield();
    }
    vck_rcu_read_unlock();
    if (!finished)
        return;
    if (may_block) {
        vck_rcu_synchronize();
        map_free(finished);
    } else {
        map_retire_deferred(ht, finished);
    }
}

/* Outside read-side sections, table mutex held. */
static bool resize__table_locked(struct vck_qht *ht, size_t n_elems, bool copy)
{
    migration_finish__table_locked(ht, true);
    /* Maps a writer retired are freed before we make another: two maps at most. */
    if (__atomic_load_n(&ht->pending_maps, __ATOMIC_ACQUIRE))
        vck_rcu_barrier();
    size_t n_buckets = buckets_for(n_elems);
    size_t old_n_buckets = __atomic_load_n(&ht->map, __ATOMIC_RELAXED)->n_buckets;
    if (n_buckets == old_n_buckets && copy)
        return false;
    migration_start__table_locked(ht, n_buckets, copy);
    migration_finish__table_locked(ht, true);
    if (__atomic_load_n(&ht->pending_maps, __ATOMIC_ACQUIRE))
        vck_rcu_barrier();
    return n_buckets != old_n_buckets;
}

bool vck_qht_resize(struct vck_qht *ht, size_t n_elems)
{
    pthread_mutex_lock(&ht->lock);
    bool changed = resize__table_locked(ht, n_elems, true);
    pthread_mutex_unlock(&ht->lock);
    return changed;
}

bool vck_qht_reset_size(struct vck_qht *ht, size_t n_elems)
{
    pthread_mutex_lock(&ht->lock);
    bool changed = resize__table_locked(ht, n_elems, false);
    pthread_mutex_unlock(&ht->lock);
    return changed;
}

/* An insert that found @map too full starts a doubling, unless one is already on its way. Inside
 * a read-side section; the work itself is shared out by migration_writer_help(). */
static void grow_if_still_needed(struct vck_qht *ht, struct vck_qht_map *map)
{
    /*
     * Never wait for the mutex. Nor for the reclamation of maps retired by earlier growth: they
     * halve at each step back, so together they never exceed the current map.
     */
    if (atomic_load_explicit(&map->next, memory_order_relaxed) != NULL)
        return;
    if (pthread_mutex_trylock(&ht->lock) != 0)
        return;
    struct vck_qht_map *current = current_map(ht);
    if (current == map && atomic_load_explicit(&map->next, memory_order_relaxed) == NULL &&
        map_wants_growth(map))
        migration_start__table_locked(ht, map->n_buckets * 2, true);
    pthread_mutex_unlock(&ht->lock);
}

/* ---- whole-table operations -------------------------------------------------------------- */

void vck_qht_init(struct vck_qht *ht, vck_qht_cmp_fn *cmp, size_t n_elems, unsigned flags)
{
    assert(cmp != NULL);
    memset(ht, 0, sizeof(*ht));
    ht->cmp = cmp;
    ht->flags = flags;
    pthread_mutex_init(&ht->lock, NULL);
    vck_rcu_assign_pointer(ht->map, map_new(ht, buckets_for(n_elems)));
}

void vck_qht_destroy(struct vck_qht *ht)
{
    migration_finish__table_locked(ht, true); /* nobody else uses the table: no lock needed */
    /* Callbacks still freeing retired maps point at @ht. */
    if (__atomic_load_n(&ht->pending_maps, __ATOMIC_ACQUIRE))
        vck_rcu_barrier();
    map_free(ht->map);
    ht->map = NULL;
    pthread_mutex_destroy(&ht->lock);
}

void vck_qht_reset(struct vck_qht *ht)
{
    pthread_mutex_lock(&ht->lock);
    migration_finish__table_locked(ht, false);
    /* With the mutex held and no migration in progress, the current map stays current. */
    struct vck_qht_map *map = current_map(ht);
    for (size_t i = 0; i < map->n_buckets; i++) {
        struct bucket *head = &map->buckets[i];
        bucket_lock(head);
        if (atomic_load_explicit(&head->pointers[0], memory_order_relaxed)) {
            seq_write_begin__locked(head);
            for (struct bucket *b = head; b;
                 b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
                for (int j = 0; j < ENTRIES; j++) {
                    atomic_store_explicit(&b->pointers[j], NULL, ENTRY_STORE);
                    atomic_store_explicit(&b->hashes[j], 0, ENTRY_STORE);
                }
            }
            seq_write_end__locked(head);
        }
        bucket_unlock(head);
    }
    pthread_mutex_unlock(&ht->lock);
}

/* Visits every entry; removes those for which @remove_fn returns true. One bucket lock at a time.
 */
static void iterate(struct vck_qht *ht, vck_qht_iter_fn *visit_fn,
                    vck_qht_iter_remove_fn *remove_fn, void *userp)
{
    pthread_mutex_lock(&ht->lock);
    migration_finish__table_locked(ht, false);
    /* With the mutex held and no migration in progress, the current map stays current. */
    struct vck_qht_map *map = current_map(ht);
    for (size_t i = 0; i < map->n_buckets; i++) {
        struct bucket *head = &map->buckets[i];
        bucket_lock(head);
        struct bucket *b = head;
        int j = 0;
        while (b) {
            void *p = atomic_load_explicit(&b->pointers[j], memory_order_relaxed);
            if (!p)
                break;
            uint32_t hash = atomic_load_explicit(&b->hashes[j], memory_order_relaxed);
            if (visit_fn) {
                visit_fn(p, hash, userp);
            } else if (remove_fn(p, hash, userp)) {
                /* The chain's last entry moves into this slot: look at it next. */
                chain_delete_slot__locked(head, b, j);
                continue;
            }
            if (++j == ENTRIES) {
                j = 0;
                b = atomic_load_explicit(&b->next, memory_order_relaxed);
            }
        }
        bucket_unlock(head);
    }
    pthread_mutex_unlock(&ht->lock);
}

void vck_qht_iter(struct vck_qht *ht, vck_qht_iter_fn *func, void *userp)
{
    iterate(ht, func, NULL, userp);
}

void vck_qht_iter_remove(struct vck_qht *ht, vck_qht_iter_remove_fn *func, void *userp)
{
    iterate(ht, NULL, func, userp);
}

void vck_qht_statistics(struct vck_qht *ht, struct vck_qht_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    pthread_mutex_lock(&ht->lock);
    migration_finish__table_locked(ht, false);
    struct vck_qht_map *map = current_map(ht);
    stats->head_buckets = map->n_buckets;
    for (size_t i = 0; i < map->n_buckets; i++) {
        struct bucket *head = &map->buckets[i];
        bucket_lock(head);
        size_t chain = 0, entries = 0;
        for (struct bucket *b = head; b; b = atomic_load_explicit(&b->next, memory_order_relaxed)) {
            int used = 0;
            while (used < ENTRIES && atomic_load_explicit(&b->pointers[used], memory_order_relaxed))
                used++;
            stats->occupancy_hist[used]++;
            entries += (size_t)used;
            chain++;
            if (b != head)
                stats->overflow_buckets++;
        }
        bucket_unlock(head);
        stats->entries += entries;
        if (entries) {
            stats->used_head_buckets++;
            stats->chain_hist[chain < VCK_QHT_CHAIN_HIST ? chain - 1 : VCK_QHT_CHAIN_HIST - 1]++;
        }
    }
    pthread_mutex_unlock(&ht->lock);
}
