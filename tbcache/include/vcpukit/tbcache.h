/*
 * vcpukit/tbcache.h - translation blocks: the block table, per-vCPU jump caches, page
 * descriptors with ordered page locking, invalidation, chaining, flush, and the map from host
 * code addresses back to blocks.
 *
 * A dynamic translator asks "the block for this guest PC" on every dispatch:
 *
 *     vck_tb_lookup(cpu, pc, flags, cflags, ...)
 *       1. the vCPU's jump cache, indexed by a hash of the virtual PC    (inline, owner only)
 *       2. the block table (a vck_qht), keyed by physical PC + virtual PC + flags + cflags
 *          (+ the second page's physical address for blocks spanning two pages); a hit fills 1.
 *       3. miss: the caller translates, fills a struct vck_tb and calls vck_tb_add().
 *
 * Blocks are the caller's: embed a struct vck_tb in your own block struct (translated code,
 * pre-decoded ops...), fill its public fields, and hand it over with vck_tb_add(). From then on
 * the cache owns its lifetime: an invalidated block is reclaimed through the free_tb callback
 * after an RCU grace period, because a vCPU may be executing it.
 *
 * Threads. Every thread that calls in must be registered with vcpukit/rcu.h. Lookups, chaining
 * and the jump-target reads run inside the caller's read-side section and return blocks valid
 * until it ends. Adds, invalidations and locking may be called inside or outside a section;
 * vck_tb_flush() and the destroy functions wait for grace periods and must be called outside.
 *
 * Page locks and their order. Each guest physical page that holds code has a descriptor with a
 * lock that protects the list of blocks on that page. Whoever holds more than one page lock took
 * them in ascending page order, or took the lower ones with a trylock (vck_tb_pages_lock does
 * this, dropping everything and re-acquiring in order on a failed trylock); so concurrent
 * invalidations and adds never deadlock. Builds without NDEBUG (and builds defining
 * VCK_TB_DEBUG_LOCKS) record the page locks each thread holds and abort on a blocking
 * acquisition below a held page, and vck_tb_assert_no_page_locks() checks the points a caller
 * names (the top of a vCPU loop). Lock order overall: page locks (ascending) -> a block's jump
 * lock -> the block table's bucket locks; no thread waits for a grace period while holding any.
 *
 * Memory ordering. vck_tb_add() publishes the block (everything the caller wrote to it before
 * the call is visible to whoever finds it: qht's release store, and the jump cache's). A block
 * found by a lookup that started after vck_tb_invalidate_range() (or vck_tb_flush()) returned
 * never overlaps the invalidated range (is never an old block); a jump target read after
 * invalidation of its destination returned is NULL.
 */
#ifndef VCPUKIT_TBCACHE_H
#define VCPUKIT_TBCACHE_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>

#ifdef __cplusplus
extern "C" {
#endif

/* phys_page2 of a block that lies in one page. */
#define VCK_TB_NO_PAGE2 UINT64_MAX
/* Set in cflags once a block is invalid; never part of a lookup's cflags. */
#define VCK_TB_CF_INVALID (1u << 31)

struct vck_tb_cache;
struct vck_tb;

/* Exit @n of a block: where it jumps when chained. */
struct vck_tb_jump {
    _Atomic(uintptr_t) dest; /* private: a block, 0, or the "never again" marker */
    uintptr_t next;          /* private: the next incoming jump of dest's list */
};

struct vck_tb {
    /* Filled by the translator before vck_tb_add(); read-only afterwards. */
    uint64_t pc; /* virtual PC of the first instruction */
    /*
     * Private: vck_tb_jc_key(flags, cflags) as added, beside @pc so that a jump-cache hit
     * compares two adjacent words. Never changes (invalidity is tracked in @cflags).
     */
    uint64_t jc_key;
    uint64_t phys_pc;        /* guest physical address of the first byte */
    uint64_t phys_page2;     /* physical address of the second page's start, or VCK_TB_NO_PAGE2 */
    uint32_t flags;          /* CPU state the translation depends on (privilege, modes, ...) */
    uint32_t size;           /* guest bytes the block covers, >= 1 */
    uint32_t page_gen[2];    /* vck_tb_page_gen() of each page, read before translating from it */
    void *code;              /* the translated code or op array (opaque to the cache) */
    size_t code_size;        /* bytes at @code, for vck_tb_find_by_host(); 0 if not wanted */
    _Atomic uint32_t cflags; /* compile flags; the cache adds VCK_TB_CF_INVALID */

    /* Private to the cache. */
    uint32_t hash;
    struct vck_tb_cache *cache;
    void *table;
    uintptr_t page_next[2];
    uintptr_t *page_link[2];   /* the link that points at this block in page list 0 / 1 */
    void *host_region;         /* the code region whose host map holds the block, or NULL */
    bool host_pending;         /* in that map but not yet in the table, under its lock */
    _Atomic unsigned jmp_lock; /* a spinlock: 1 while held */
    uintptr_t jmp_incoming;    /* list of (source block | exit) jumping here, under jmp_lock */
    struct vck_tb_jump jmp[2];
    struct vck_rcu_head rcu;
};

/*
 * vCPU side; the fields are private, public only so that the jump-cache hit can be inline, except
 * the two statistics, which the owner may read. A jump-cache hit counts nothing (it would be a
 * read-modify-write on every dispatch): the caller counts its lookups, and
 * lookups - table_lookups of them hit the jump cache.
 */
struct vck_tb_cpu {
    /* Read by every thread that clears slots; written once. */
    uint32_t jc_mask;
    /* slot = (t & lo_mask) | ((t >> group_shift) & hi_mask), t = pc >> pc_shift */
    uint32_t lo_mask, hi_mask;
    uint8_t pc_shift, group_shift;
    uint8_t page_bits, group_bits; /* group_bits: log2 of the slots per page group */
    struct vck_tb_cache *cache;
    /* Written by the owner on every miss: a cache line away from the above. */
    _Alignas(64) uint64_t table_lookups; /* jump-cache misses: lookups that went to the table */
    uint64_t table_hits;                 /* of those, the ones the table answered */
    struct vck_rcu_head rcu;
    /*
     * 1 << jc_bits slots, in the struct itself so that a hit loads no pointer to them. An empty
     * slot holds the cache's "no block" sentinel, whose jc_key no lookup matches, rather than
     * NULL: a hit then needs no NULL test.
     */
    _Atomic(struct vck_tb *) jc[];
};

/*
 * The word a jump-cache hit compares besides the PC. Lookups never pass VCK_TB_CF_INVALID in
 * @cflags, so no lookup's key equals the empty-slot sentinel's.
 */
static inline uint64_t vck_tb_jc_key(uint32_t flags, uint32_t cflags)
{
    return (uint64_t)cflags << 32 | flags;
}

/* The physical address of virtual @vaddr, for lookups. Return false if it is not mapped. */
typedef bool vck_tb_phys_fn(void *opaque, uint64_t vaddr, uint64_t *phys);

struct vck_tb_cache_options {
    unsigned page_bits; /* guest page size; 0 means 12 */
    unsigned jc_bits;   /* jump-cache slots per vCPU = 1 << jc_bits; 0 means 12 (4096) */
    unsigned pc_shift;  /* instruction alignment, log2 (RISC-V C: 1, x86: 0); default 0 */
    size_t table_size;  /* initial block-table capacity; 0 means 32768 (grows itself) */
    /* Reclaim an invalidated block, after a grace period, on the RCU callback thread. */
    void (*free_tb)(void *opaque, struct vck_tb *tb);
    /*
     * A page got its first block (@has_code true) or lost its last: the emulator's TLB starts
     * or stops trapping writes to it. Called with that page locked; must not lock pages.
     */
    void (*page_code)(void *opaque, uint64_t phys_page_addr, bool has_code);
    /*
     * Exit @n of @from now jumps to @to (NULL: reset to "back to the dispatcher"); for
     * emulators that patch host code. Called under @to's (or the former target's) jump lock.
     */
    void (*jump_set)(void *opaque, struct vck_tb *from, int n, struct vck_tb *to);
    /*
     * Optional: the last word on a block vck_tb_add() is about to insert, called with its pages
     * locked, after the page generations were checked; false refuses the block as stale (the
     * add returns NULL). For state the cache does not know, e.g. the emulator's memory map
     * changing while the block was translated: an invalidation that follows the change takes
     * the same page locks, so a block either sees the change here or is seen by it. Must not
     * lock pages.
     */
    bool (*validate)(void *opaque, const struct vck_tb *tb);
    void *opaque;
};

/**
 * vck_tb_cache_new - an empty cache. @opts may be NULL (then blocks are never freed: set free_tb
 * if blocks are malloc'd). Any thread. NULL only when memory runs out; aborts on bad options.
 */
struct vck_tb_cache *vck_tb_cache_new(const struct vck_tb_cache_options *opts);

/**
 * vck_tb_cache_free - invalidate every block (free_tb runs for each) and free the cache. No
 * other thread may use it; every vCPU freed first. Outside read-side sections (waits).
 */
void vck_tb_cache_free(struct vck_tb_cache *c);

/** vck_tb_cpu_new - a vCPU's jump cache, registered for invalidations. Any registered thread. */
struct vck_tb_cpu *vck_tb_cpu_new(struct vck_tb_cache *c);

/**
 * vck_tb_cpu_free - unregister and free (after a grace period: invalidations running on other
 * threads may be walking it). The owner, once it stopped looking up.
 */
void vck_tb_cpu_free(struct vck_tb_cpu *cpu);

/*
 * The jump-cache slot of @pc: the low slot bits come from the PC's offset in its page (in units
 * of instructions), the high ones from the page number alone, so all PCs of one guest page share
 * one group of slots. Two shifts, two masks and an or.
 */
static inline size_t vck_tb_jc_slot(const struct vck_tb_cpu *cpu, uint64_t pc)
{
    uint64_t t = pc >> cpu->pc_shift;
    return (size_t)((t & cpu->lo_mask) | ((t >> cpu->group_shift) & cpu->hi_mask));
}

struct vck_tb *vck_tb_lookup_slow(struct vck_tb_cpu *cpu, uint64_t pc, uint32_t flags,
                                  uint32_t cflags, vck_tb_phys_fn *phys, void *opaque);

/**
 * vck_tb_lookup - the valid block for (@pc, @flags, @cflags), or NULL (translate it).
 * The vCPU that owns @cpu, inside a read-side section; the block stays valid until the section
 * ends. A jump-cache hit is inline: the slot, one load, two compares (it need not test the
 * block for INVALID: see jc_fill() in tbcache.c). On a miss, @phys translates the
 * virtual PC (and, for a candidate spanning two pages, its second page) and the block table is
 * searched; a hit fills the jump cache. @cflags must not include VCK_TB_CF_INVALID.
 * The caller flushes the jump cache's page group when a virtual page's mapping changes
 * (vck_tb_jc_flush_page) and all of it on a full TLB flush.
 */
static inline struct vck_tb *vck_tb_lookup(struct vck_tb_cpu *cpu, uint64_t pc, uint32_t flags,
                                           uint32_t cflags, vck_tb_phys_fn *phys, void *opaque)
{
    assert(!(cflags & VCK_TB_CF_INVALID));
    /* Pairs with the store that filled the slot (seq_cst, so at least release). */
    struct vck_tb *tb =
        atomic_load_explicit(&cpu->jc[vck_tb_jc_slot(cpu, pc)], memory_order_acquire);
    if (__builtin_expect(tb->pc == pc && tb->jc_key == vck_tb_jc_key(flags, cflags), 1))
        return tb;
    return vck_tb_lookup_slow(cpu, pc, flags, cflags, phys, opaque);
}

/* log2 of a jump-cache slot's size. */
#define VCK_TB_JC_SLOT_SCALE (sizeof(_Atomic(struct vck_tb *)) == 8 ? 3u : 2u)

/*
 * vck_tb_jc_slot() * (the slot size), for a geometry the caller knows at compile time (see
 * vck_tb_lookup_fixed): a byte offset into the slot array, the scaling folded into the two
 * shifts so that the load takes it as is (a scaled index costs an extra add with GCC 12). Slot
 * bit i is PC bit i + pc_shift for the offset-in-page part and PC bit i + page_bits - group
 * for the page-number part; offset bit i + scale is that same PC bit.
 */
static inline size_t vck_tb_jc_offset_fixed(uint64_t pc, unsigned page_bits, unsigned jc_bits,
                                            unsigned pc_shift)
{
    unsigned in_page = page_bits - pc_shift, group = jc_bits / 2 < in_page ? jc_bits / 2 : in_page;
    unsigned scale = VCK_TB_JC_SLOT_SCALE;
    uint64_t lo = (((uint64_t)1 << group) - 1) << scale;
    uint64_t all = (((uint64_t)1 << jc_bits) - 1) << scale;
    uint64_t low = pc_shift >= scale ? pc >> (pc_shift - scale) : pc << (scale - pc_shift);
    uint64_t high = page_bits >= group + scale ? pc >> (page_bits - group - scale)
                                               : pc << (group + scale - page_bits);
    return (size_t)((low & lo) | (high & (all & ~lo)));
}

/**
 * vck_tb_lookup_fixed - vck_tb_lookup() for an emulator whose geometry is a compile-time
 * constant: @page_bits, @jc_bits and @pc_shift must be the cache's (checked in debug builds).
 * With constants the slot's byte offset is two constant shifts, two constant masks and an or,
 * and the whole jump-cache hit twelve x86-64 instructions (vck-tbcache-callgrind: the offset,
 * one load, two compare-and-branch pairs), against sixteen when the geometry is read from the
 * vCPU.
 */
static inline struct vck_tb *vck_tb_lookup_fixed(struct vck_tb_cpu *cpu, uint64_t pc,
                                                 uint32_t flags, uint32_t cflags,
                                                 vck_tb_phys_fn *phys, void *opaque,
                                                 unsigned page_bits, unsigned jc_bits,
                                                 unsigned pc_shift)
{
    assert(cpu->page_bits == page_bits && cpu->pc_shift == pc_shift &&
           cpu->jc_mask == (1u << jc_bits) - 1 && !(cflags & VCK_TB_CF_INVALID));
    size_t offset = vck_tb_jc_offset_fixed(pc, page_bits, jc_bits, pc_shift);
    struct vck_tb *tb = atomic_load_explicit((_Atomic(struct vck_tb *) *)((char *)cpu->jc + offset),
                                             memory_order_acquire);
    if (__builtin_expect(tb->pc == pc && tb->jc_key == vck_tb_jc_key(flags, cflags), 1))
        return tb;
    return vck_tb_lookup_slow(cpu, pc, flags, cflags, phys, opaque);
}

/**
 * vck_tb_add - insert a block the caller translated; @cpu (may be NULL) gets it in its jump
 * cache. Locks the block's pages (ascending), links it into their lists and into the table.
 * Returns:
 *  - @tb: inserted; the cache now owns it.
 *  - another block: an equal one was inserted first (two vCPUs translated the same code at
 *    once). @tb was never visible to anyone: the caller frees it now and uses the one returned.
 *  - NULL: one of the block's pages was invalidated after its page_gen was read (the code may
 *    have changed under the translator), or the validate hook refused it: the caller frees @tb
 *    and translates again.
 * Any registered thread, inside or outside a read-side section.
 */
struct vck_tb *vck_tb_add(struct vck_tb_cache *c, struct vck_tb_cpu *cpu, struct vck_tb *tb);

/**
 * vck_tb_page_gen - the invalidation generation of the page holding @phys_addr. A translator
 * reads it for each page before reading code from it and stores it in tb->page_gen[]. Any
 * registered thread; lock-free (may allocate the page's descriptor).
 */
uint32_t vck_tb_page_gen(struct vck_tb_cache *c, uint64_t phys_addr);

/**
 * vck_tb_page_has_code - whether blocks exist on the page holding @phys_addr (the emulator's
 * TLB traps writes to such pages). Any thread; lock-free, a snapshot.
 */
bool vck_tb_page_has_code(struct vck_tb_cache *c, uint64_t phys_addr);

/**
 * vck_tb_invalidate_range - invalidate every block with code in [@start, @last] (what a store
 * to code, or DMA, triggers): each is removed from the table and the page lists, cleared from
 * every vCPU's jump cache, unlinked from every chained jump into or out of it, marked invalid,
 * and reclaimed after a grace period. Bumps the generation of every page in the range. Any
 * registered thread holding no page lock, inside or outside a section. Returns how many blocks
 * it invalidated. Locks pages in bounded chunks (ThreadSanitizer gives up past 64 held locks).
 * Costs what the range's pages with descriptors hold, not its size: pages where no translator
 * ever read a generation are skipped (nothing is allocated for them), so [0, UINT64_MAX] is a
 * fine range. An empty range (@start > @last) invalidates nothing.
 */
size_t vck_tb_invalidate_range(struct vck_tb_cache *c, uint64_t start, uint64_t last);

/** vck_tb_invalidate - invalidate one block (false if it already was). Same rules. */
bool vck_tb_invalidate(struct vck_tb *tb);

/**
 * vck_tb_flush - invalidate every block without stopping the vCPUs: a fresh table is published
 * first (lookups miss and re-translate at once), then, after a grace period, every old block is
 * invalidated as above. Any registered thread, outside read-side sections, holding no page lock.
 * Concurrent flushes are serialised.
 */
void vck_tb_flush(struct vck_tb_cache *c);

/**
 * vck_tb_link - chain exit @n (0 or 1) of @from to @to. Returns false, changing nothing, when
 * @to is invalid, when @from is invalid, or when exit @n is already chained. Any registered
 * thread inside a read-side section (both blocks found in it). Takes @to's jump lock.
 */
bool vck_tb_link(struct vck_tb *from, int n, struct vck_tb *to);

/**
 * vck_tb_jump_target - where exit @n of @tb is chained to, or NULL. Inside a read-side section;
 * the target is valid until it ends. One acquire load.
 */
static inline struct vck_tb *vck_tb_jump_target(const struct vck_tb *tb, int n)
{
    uintptr_t d = atomic_load_explicit(&tb->jmp[n].dest, memory_order_acquire);
    return d & 1 ? NULL : (struct vck_tb *)d;
}

/** vck_tb_jc_flush_page - clear the jump-cache groups of virtual page @vaddr and the one before
 * it (blocks that start there may reach into @vaddr's page). Any thread. */
void vck_tb_jc_flush_page(struct vck_tb_cpu *cpu, uint64_t vaddr);

/** vck_tb_jc_flush_all - clear the whole jump cache. Any thread. */
void vck_tb_jc_flush_all(struct vck_tb_cpu *cpu);

/** vck_tb_jc_invalidate - clear @tb from every vCPU's jump cache where it still is. Any thread. */
void vck_tb_jc_invalidate(struct vck_tb_cache *c, const struct vck_tb *tb);

/*
 * Page locking, for emulators that must act on code pages atomically with the cache (and for
 * tests). Addresses are any address inside the page.
 */
void vck_tb_page_lock(struct vck_tb_cache *c, uint64_t phys_addr);
void vck_tb_page_unlock(struct vck_tb_cache *c, uint64_t phys_addr);
/* Both pages, in ascending order (@b may be VCK_TB_NO_PAGE2 or equal to @a's page). */
void vck_tb_page_lock_pair(struct vck_tb_cache *c, uint64_t a, uint64_t b);
void vck_tb_page_unlock_pair(struct vck_tb_cache *c, uint64_t a, uint64_t b);

struct vck_tb_pages;

/**
 * vck_tb_pages_lock - lock a page collection: every page of [@start, @last] that has a
 * descriptor, plus every other page of every block on those pages, in ascending order (trylock
 * below the highest page held; on failure everything is dropped and re-acquired in order).
 * Returns the collection; NULL if memory runs out. Any registered thread holding no page lock.
 * Holds up to (pages + blocks' other pages) locks: keep ranges small under ThreadSanitizer.
 */
struct vck_tb_pages *vck_tb_pages_lock(struct vck_tb_cache *c, uint64_t start, uint64_t last);
void vck_tb_pages_unlock(struct vck_tb_pages *set);
/* How many pages the collection holds (for tests). */
size_t vck_tb_pages_count(const struct vck_tb_pages *set);

/**
 * vck_tb_assert_no_page_locks - abort if the calling thread holds a page lock of any cache.
 * Builds with the lock checker (see above); elsewhere it does nothing.
 */
void vck_tb_assert_no_page_locks(void);

/*
 * Host code address -> block, for precise exceptions: a fault inside a block's translated code
 * (or op array) finds the block and recovers the guest state. The emulator registers the host
 * ranges it translates into (its code buffers, one per translating thread is the scalable
 * choice); blocks whose code lies in a registered region are entered at vck_tb_add() and removed
 * at invalidation. The code ranges [code, code + code_size) of the valid blocks of a region must
 * not overlap (vck_tb_add aborts if one does): reuse a block's code memory only after its
 * free_tb. Each region has its own lock and a balanced tree of its blocks; the region list is
 * RCU-published.
 */

/** vck_tb_code_region_add - register [@base, @base + @size). Any registered thread. */
void vck_tb_code_region_add(struct vck_tb_cache *c, const void *base, size_t size);

/**
 * vck_tb_find_by_host - the valid block whose code contains @host_addr, or NULL. Any registered
 * thread inside a read-side section (the block stays valid until it ends). A binary search over
 * regions (lock-free) and one region lock around an O(log n) tree search of its blocks. A block
 * being added is entered in the map first and handed out only once it is in the table (a
 * duplicate that loses the race never is): a search that meets one waits those few
 * microseconds (while its entry is pending, the adder waits for no lock a searcher holds).
 */
struct vck_tb *vck_tb_find_by_host(struct vck_tb_cache *c, const void *host_addr);

struct vck_tb_cache_stats {
    uint64_t blocks;            /* valid blocks in the table */
    uint64_t added, duplicates; /* vck_tb_add outcomes */
    uint64_t stale_adds;        /* vck_tb_add refused: page invalidated during translation */
    uint64_t invalidated;       /* blocks invalidated (flushes included) */
    uint64_t flushes;
    uint64_t collection_retries; /* page collections that dropped their locks and retried */
    uint64_t page_leaves; /* page-descriptor leaves allocated, each for 1024 consecutive pages */
};

/** vck_tb_cache_get_stats - counters since creation. Any thread; relaxed snapshots. */
void vck_tb_cache_get_stats(struct vck_tb_cache *c, struct vck_tb_cache_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_TBCACHE_H */
