/*
 * vcpukit/qht.h - a concurrent hash table whose lookups never lock, never write shared memory,
 * and never wait for a resize.
 *
 * The table stores pointers to the caller's objects, each under a 32-bit hash the caller
 * computes (vck_qht_hash64() and vck_qht_hash_words() are provided). It never dereferences an
 * object except through the caller's compare functions, and never frees one: an object removed
 * from the table may still be seen by a concurrent lookup, so the caller frees it after an RCU
 * grace period (vck_rcu_call / vck_rcu_free).
 *
 * Threads. Every thread that calls into the table must be registered with vcpukit/rcu.h.
 * Lookups run inside the caller's read-side section. Writers (insert, remove) may run on any
 * number of threads at once and block only one another, bucket by bucket; they may be called
 * inside or outside a read-side section. Resizes and resets are serialised by the table's mutex
 * and migrate the table bucket by bucket while lookups and writers carry on.
 *
 * Memory ordering. An insert publishes the object pointer with a release store: everything the
 * caller wrote to the object before vck_qht_insert() is visible to a lookup that returns it.
 * A lookup that starts after vck_qht_insert() returns finds the object (or an equal one); a
 * lookup that starts after vck_qht_remove() returns does not find the removed object.
 */
#ifndef VCPUKIT_QHT_H
#define VCPUKIT_QHT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vcpukit/rcu.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Entries per bucket: one 64-byte cache line holds this many (hash, pointer) pairs. */
#define VCK_QHT_BUCKET_ENTRIES 4

/* Equality of two stored objects: decides whether an insert finds a duplicate. */
typedef bool vck_qht_cmp_fn(const void *a, const void *b);
/* Does stored object @obj match the lookup key @userp? */
typedef bool vck_qht_lookup_fn(const void *obj, const void *userp);
typedef void vck_qht_iter_fn(void *obj, uint32_t hash, void *userp);
/* Return true to remove @obj from the table. */
typedef bool vck_qht_iter_remove_fn(void *obj, uint32_t hash, void *userp);

/* Grow automatically when chains get long (never shrinks by itself). */
#define VCK_QHT_AUTO_RESIZE (1u << 0)
/* Don't ask for transparent huge pages for bucket arrays of 2 MiB and more (see README). */
#define VCK_QHT_NO_HUGE_PAGES (1u << 1)

struct vck_qht_map; /* private */

/* Public so that callers can embed it; the fields are private. */
struct vck_qht {
    struct vck_qht_map *map; /* RCU-published */
    vck_qht_cmp_fn *cmp;
    unsigned flags;
    pthread_mutex_t lock;  /* serialises resize, reset and iteration */
    unsigned long resizes; /* under lock */
    unsigned pending_maps; /* atomic: retired maps not yet reclaimed */
};

/**
 * vck_qht_init - set up an empty table sized for about @n_elems entries.
 * @cmp decides duplicates for vck_qht_insert() and is the compare of vck_qht_lookup().
 * @flags: VCK_QHT_AUTO_RESIZE, VCK_QHT_NO_HUGE_PAGES or 0. Any thread; the table is not
 * shared yet. Allocates max(1, next_pow2(n_elems / 2)) buckets of 64 bytes: two entries per
 * bucket on average, half their capacity (see qht/README.md). Aborts if memory runs out.
 */
void vck_qht_init(struct vck_qht *ht, vck_qht_cmp_fn *cmp, size_t n_elems, unsigned flags);

/**
 * vck_qht_destroy - free the table's memory (not the objects it points to).
 * No other thread may use the table any more. Waits for pending reclamation (vck_rcu_barrier),
 * so not inside a read-side section.
 */
void vck_qht_destroy(struct vck_qht *ht);

/**
 * vck_qht_insert - add @p under @hash unless an equal object (per @cmp) is already there.
 * Returns true if @p was inserted. Returns false if an equal object was found; then *@existing
 * (when @existing is not NULL) is that object, and @p was not inserted. @p must not be NULL.
 * Any registered thread. Locks one bucket (spinning on contention, yielding after a while); may
 * allocate a 64-byte overflow bucket. With VCK_QHT_AUTO_RESIZE, may start doubling the table
 * (allocating the new bucket array); while a doubling is under way and no resizing thread is
 * driving it, each insert and remove also migrates up to 16 buckets, so no single call pays for
 * the whole table.
 */
bool vck_qht_insert(struct vck_qht *ht, void *p, uint32_t hash, void **existing);

/**
 * vck_qht_lookup - find the object @ht->cmp says is equal to @userp, under @hash.
 * Any registered thread, inside an RCU read-side section; the result stays valid until that
 * section ends. Never blocks, never writes shared memory; retries only while a writer is
 * changing that very bucket. Returns NULL when absent.
 */
void *vck_qht_lookup(const struct vck_qht *ht, const void *userp, uint32_t hash);

/** vck_qht_lookup_custom - vck_qht_lookup() with @func(obj, userp) as the match. */
void *vck_qht_lookup_custom(const struct vck_qht *ht, const void *userp, uint32_t hash,
                            vck_qht_lookup_fn *func);

/**
 * vck_qht_prefetch - start loading the bucket that a lookup of @hash would read first.
 * For callers that know their next keys (a batch, the successors of a block): prefetch them
 * all, then look them up, so that their cache misses overlap. Any registered thread, inside an
 * RCU read-side section. Only a hint: reads the map pointer and issues one prefetch; never
 * blocks, writes nothing, changes no result, and is wasted if the table is resized meanwhile.
 * Worth it on tables larger than the caches: at 4M entries, prefetching batches of 8, 16 or 32
 * keys cut the time per lookup by 22, 31 or 35%; at 1K entries (cache-resident) each call only
 * adds 0.1 to 0.8 ns (qht/lookup_hit_batch in vck-bench).
 */
void vck_qht_prefetch(const struct vck_qht *ht, uint32_t hash);

/**
 * vck_qht_remove - remove the entry whose pointer is @p (identity, not @cmp) under @hash.
 * Returns false if it was not in the table. Any registered thread; locks one bucket (and may
 * help a migration, as vck_qht_insert() does). Concurrent
 * lookups may still return @p until the caller's next grace period: free it after one.
 */
bool vck_qht_remove(struct vck_qht *ht, const void *p, uint32_t hash);

/**
 * vck_qht_reset - remove every entry, keeping the size.
 * Any registered thread. Takes the table mutex and, one at a time, every bucket lock; the
 * caller frees the objects (after a grace period).
 */
void vck_qht_reset(struct vck_qht *ht);

/**
 * vck_qht_reset_size - remove every entry and resize for about @n_elems.
 * Returns true if the size changed. Same calling rules as vck_qht_resize().
 */
bool vck_qht_reset_size(struct vck_qht *ht, size_t n_elems);

/**
 * vck_qht_resize - resize for about @n_elems entries; returns false if the size is unchanged.
 * Any registered thread, outside read-side sections: it waits for a grace period before
 * freeing the old buckets, so that at most two maps exist per table however often it is
 * called. The calling thread does the migration (finishing first any automatic one under way);
 * lookups and writers proceed meanwhile, and each bucket is unavailable to writers only while
 * its own entries are copied. O(n).
 */
bool vck_qht_resize(struct vck_qht *ht, size_t n_elems);

/**
 * vck_qht_iter - call @func on every entry once.
 * Any registered thread. Holds the table mutex (no resize or reset meanwhile) and one bucket
 * lock at a time, so concurrent inserts and removes of other buckets proceed and may or may not
 * be seen. @func must not call into this table.
 */
void vck_qht_iter(struct vck_qht *ht, vck_qht_iter_fn *func, void *userp);

/** vck_qht_iter_remove - vck_qht_iter(), removing each entry for which @func returns true. */
void vck_qht_iter_remove(struct vck_qht *ht, vck_qht_iter_remove_fn *func, void *userp);

#define VCK_QHT_CHAIN_HIST 16

struct vck_qht_stats {
    size_t head_buckets;      /* buckets in the table proper */
    size_t used_head_buckets; /* of those, holding at least one entry */
    size_t entries;
    size_t overflow_buckets; /* chained buckets allocated */
    /* chain_hist[k]: used head buckets whose chain is k+1 buckets long (last: that or longer) */
    size_t chain_hist[VCK_QHT_CHAIN_HIST];
    /* occupancy_hist[k]: buckets (head and chained) holding exactly k entries */
    size_t occupancy_hist[VCK_QHT_BUCKET_ENTRIES + 1];
};

/**
 * vck_qht_statistics - a snapshot of the table's shape.
 * Any registered thread. Holds the table mutex and each bucket lock in turn: exact for a quiet
 * table, approximate (but consistent per bucket) under concurrent writers.
 */
void vck_qht_statistics(struct vck_qht *ht, struct vck_qht_stats *stats);

/**
 * vck_qht_hash64 - a 64-bit key to a well-mixed 32-bit hash (every input bit affects every
 * output bit). Pure; a handful of multiplies.
 */
static inline uint32_t vck_qht_hash64(uint64_t key)
{
    /* The 64-bit finaliser of a multiply-xorshift mixer (constants from SplitMix64). */
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebULL;
    key ^= key >> 31;
    return (uint32_t)(key ^ (key >> 32));
}

/**
 * vck_qht_hash_words - hash a key of @n 64-bit words (a translation block's physical PC,
 * virtual PC, flags...). Pure; one multiply-rotate step per word and a final mix.
 */
static inline uint32_t vck_qht_hash_words(const uint64_t *words, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    for (size_t i = 0; i < n; i++) {
        h ^= words[i] * 0xc2b2ae3d27d4eb4fULL;
        h = (h << 31) | (h >> 33);
        h *= 0x9e3779b97f4a7c15ULL;
    }
    return vck_qht_hash64(h);
}

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_QHT_H */
