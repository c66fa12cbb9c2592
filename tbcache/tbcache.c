/*
 * tbcache: the block table, jump caches, page descriptors, ordered page locking, invalidation,
 * chaining, flush and the host-address map.
 *
 * Page descriptors live in a radix tree over guest physical page numbers, built lazily: a
 * missing node is allocated and installed with a compare-and-swap (release; the loser frees its
 * copy), and nodes are never freed before the cache, so readers walk it with acquire loads and
 * no lock. A descriptor holds the page's lock, its block list and two atomics: the "has code"
 * flag and the invalidation generation.
 *
 * A block is on the list of each of its pages (one or two); list links are tagged pointers
 * (block | which of its pages), as a block's two page links are distinct fields. Lists change
 * only under the page's lock, so whoever holds the locks of all of a block's pages may unlink
 * it. Adding locks the block's pages in ascending order; invalidating a range locks a page
 * collection (the range's pages plus the other pages of their blocks), ascending with trylock
 * below the highest held, as QEMU does.
 *
 * Lifetime of a block (the only memory a vCPU can be executing):
 *   vck_tb_add: page locks -> gens checked -> page lists -> table insert -> unlock
 *   invalidate (all its page locks held): cflags |= INVALID (seq_cst) -> table remove ->
 *     page lists -> every jump cache slot holding it cleared -> chained jumps in and out
 *     unlinked -> host map -> vck_rcu_call(free_tb)
 * A jump-cache fill stores the block (seq_cst) and then re-reads cflags (seq_cst): if the
 * invalidation's flag store came first the filler clears its slot, otherwise the invalidation's
 * walk sees the slot; either way no slot can keep a block past its grace period (QEMU never
 * frees blocks one by one, so it never needed this).
 *
 * Chained jumps. Exit n of block A holds its destination in A->jmp[n].dest: 0, a block, or DEAD
 * (1: A is invalid, never link again). Linking A.n -> B happens under B's jump lock, after
 * checking B is valid, by a compare-and-swap 0 -> B, and threads the exit onto B's incoming
 * list. Invalidating B takes B's jump lock after setting INVALID and resets every incoming exit
 * to 0. Invalidating A moves each of its exits to DEAD: a 0 by compare-and-swap; a B under B's
 * jump lock, re-checked there, after unthreading it from B's list. So no list ever holds an
 * exit of a freed block, and no exit points to a block after its invalidation returns.
 *
 * Flush without stopping the world: publish a fresh table (lookups miss from then on), wait
 * for a grace period (no add can still be inserting into the old table), then invalidate every
 * old block exactly as above, collected first so that no qht lock is held while page locks are
 * taken (the order is page -> table bucket).
 */
#include <errno.h>
#include <sched.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/tbcache.h>

#if !defined(NDEBUG) || defined(VCK_TB_DEBUG_LOCKS)
#define LOCK_CHECKER 1
#endif

#define DEAD ((uintptr_t)1)

/* Radix over page numbers: 10 bits at the leaves (1024 descriptors), 14 above. */
#define LEAF_BITS  10
#define INNER_BITS 14

/* Pages per collection in vck_tb_invalidate_range (keeps held locks well under TSan's 64). */
#define CHUNK_PAGES 16

struct page_desc {
    pthread_mutex_t lock;
    uintptr_t blocks; /* tagged list, under lock */
    _Atomic uint32_t gen;
    _Atomic bool has_code;
    /*
     * Offsets in the page covered by some block on it, as (first << 32 | last + 1), 0 when the
     * list is empty; grows under the lock, reset when the list empties. Lets an invalidation of
     * bytes no block covers (data sharing a page with code) skip every lock.
     */
    _Atomic uint64_t extent;
};

struct tb_table {
    struct vck_qht qht;
};

struct code_region {
    uintptr_t base, end;
    pthread_mutex_t lock;
    /*
     * The region's blocks in a tsearch(3) tree (glibc's red-black tree) ordered by code range:
     * ranges of live blocks are disjoint, so "overlaps" is "equal" and a one-byte probe finds
     * the block containing it. Insert, delete and find are O(log n); a sorted array's memmove
     * made a flush of N blocks O(N^2).
     */
    void *blocks;
    /*
     * Bumped (under the lock) whenever a pending entry is committed or withdrawn: a lookup that
     * met a pending one waits for it to change rather than on the block, which a withdrawn
     * duplicate's caller frees at once.
     */
    _Atomic uint64_t settled;
};

struct region_list {
    size_t n;
    struct vck_rcu_head rcu;
    struct code_region *r[];
};

struct cpu_list {
    size_t n;
    struct vck_rcu_head rcu;
    struct vck_tb_cpu *cpu[];
};

struct vck_tb_cache {
    struct vck_tb_cache_options opts;
    unsigned inner_levels;
    _Atomic(void *) root;
    struct tb_table *table; /* RCU-published */
    struct cpu_list *cpus;  /* RCU-published, copied on change under lock */
    struct region_list *regions;
    pthread_mutex_t lock;       /* the vCPU and region lists; never held across a grace period */
    pthread_mutex_t flush_lock; /* serialises flushes, which wait for grace periods */
    _Atomic uint64_t added, duplicates, stale_adds, invalidated, flushes, retries, page_leaves;
    struct vck_tb jc_empty; /* what empty jump-cache slots point at: matches no lookup */
};

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vcpukit tbcache: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void count(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

/* ---- the lock checker -------------------------------------------------------------------- */

#ifdef LOCK_CHECKER
#define MAX_TRACKED 512
/* Debugging state only: the pages this thread holds, per cache. */
static _Thread_local struct held {
    const struct vck_tb_cache *cache;
    uint64_t page;
} held[MAX_TRACKED];
static _Thread_local size_t n_held;

static void checker_acquire(const struct vck_tb_cache *c, uint64_t page, bool blocking)
{
    for (size_t i = 0; i < n_held; i++) {
        if (held[i].cache != c)
            continue;
        if (held[i].page == page)
            fatal("page %#llx locked twice by one thread", (unsigned long long)page);
        if (blocking && held[i].page > page)
            fatal("page %#llx locked (blocking) while holding page %#llx: lock order violated",
                  (unsigned long long)page, (unsigned long long)held[i].page);
    }
    if (n_held == MAX_TRACKED)
        fatal("lock checker: more than %d page locks held", MAX_TRACKED);
    held[n_held++] = (struct held){c, page};
}

static void checker_release(const struct vck_tb_cache *c, uint64_t page)
{
    for (size_t i = 0; i < n_held; i++) {
        if (held[i].cache == c && held[i].page == page) {
            held[i] = held[--n_held];
            return;
        }
    }
    fatal("page %#llx unlocked but not held", (unsigned long long)page);
}

void vck_tb_assert_no_page_locks(void)
{
    if (n_held)
        fatal("%zu page locks held where none may be (first: %#llx)", n_held,
              (unsigned long long)held[0].page);
}
#else
static void checker_acquire(const struct vck_tb_cache *c, uint64_t page, bool blocking)
{
    (void)c, (void)page, (void)blocking;
}

static void checker_release(const struct vck_tb_cache *c, uint64_t page)
{
    (void)c, (void)page;
}

void vck_tb_assert_no_page_locks(void)
{
}
#endif

/* ---- page descriptors -------------------------------------------------------------------- */

static uint64_t page_of(const struct vck_tb_cache *c, uint64_t addr)
{
    return addr >> c->opts.page_bits;
}

static void *zalloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p)
        fatal("out of memory");
    return p;
}

static struct page_desc *leaf_new(void)
{
    struct page_desc *leaf = zalloc(sizeof(*leaf) << LEAF_BITS);
    for (size_t i = 0; i < (1u << LEAF_BITS); i++)
        pthread_mutex_init(&leaf[i].lock, NULL);
    return leaf;
}

static void leaf_free(struct page_desc *leaf)
{
    for (size_t i = 0; i < (1u << LEAF_BITS); i++)
        pthread_mutex_destroy(&leaf[i].lock);
    free(leaf);
}

/* The descriptor of page number @page; NULL if absent and !@alloc. Lock-free. */
static struct page_desc *page_find(struct vck_tb_cache *c, uint64_t page, bool alloc)
{
    _Atomic(void *) *slot = &c->root;
    for (unsigned level = c->inner_levels; level > 0; level--) {
        void *node = atomic_load_explicit(slot, memory_order_acquire);
        if (!node) {
            if (!alloc)
                return NULL;
            void *fresh =
                level > 1 ? zalloc(sizeof(_Atomic(void *)) << INNER_BITS) : (void *)leaf_new();
            /* Release: the new node's initialisation is visible to whoever loads it. */
            if (atomic_compare_exchange_strong_explicit(slot, &node, fresh, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                node = fresh;
                if (level == 1)
                    count(&c->page_leaves, 1);
            } else if (level > 1) {
                free(fresh);
            } else {
                leaf_free(fresh);
            }
        }
        if (level == 1)
            return &((struct page_desc *)node)[page & ((1u << LEAF_BITS) - 1)];
        /* An inner node at @level indexes the bits just above its children's span. */
        unsigned shift = LEAF_BITS + (level - 2) * INNER_BITS;
        slot = &((_Atomic(void *) *)node)[(page >> shift) & ((1u << INNER_BITS) - 1)];
    }
    fatal("internal: page radix has no levels");
}

/*
 * The descriptor of the first page in [*@page, @last] whose leaf exists (and that page in
 * *@page), or NULL: absent subtrees are skipped whole, so a range costs what its present leaves
 * hold, not its page count. With @confirm, each absent slot passed over is confirmed by an
 * acq_rel compare-and-swap of NULL with NULL (see vck_tb_invalidate_range()). Lock-free.
 */
static struct page_desc *page_next_present(struct vck_tb_cache *c, uint64_t *page, uint64_t last,
                                           bool confirm)
{
    uint64_t p = *page;
    while (p <= last) {
        _Atomic(void *) *slot = &c->root;
        unsigned level = c->inner_levels;
        void *node;
        for (;;) {
            node = atomic_load_explicit(slot, memory_order_acquire);
            if (!node && confirm)
                atomic_compare_exchange_strong_explicit(slot, &node, NULL, memory_order_acq_rel,
                                                        memory_order_acquire);
            if (!node || level == 1)
                break;
            unsigned shift = LEAF_BITS + (level - 2) * INNER_BITS;
            slot = &((_Atomic(void *) *)node)[(p >> shift) & ((1u << INNER_BITS) - 1)];
            level--;
        }
        if (node) {
            *page = p;
            return &((struct page_desc *)node)[p & ((1u << LEAF_BITS) - 1)];
        }
        if (level == c->inner_levels)
            return NULL; /* no tree at all */
        /* The absent node at @level spans 2^span_bits pages: go on after it. */
        unsigned span_bits = LEAF_BITS + (level - 1) * INNER_BITS;
        uint64_t next = (p | (((uint64_t)1 << span_bits) - 1)) + 1;
        if (next == 0)
            return NULL; /* past the top of the address space */
        p = next;
    }
    return NULL;
}

static void free_tree(void *node, unsigned level)
{
    if (!node)
        return;
    if (level == 1) {
        leaf_free(node);
        return;
    }
    _Atomic(void *) *slots = node;
    for (size_t i = 0; i < (1u << INNER_BITS); i++)
        free_tree(atomic_load_explicit(&slots[i], memory_order_relaxed), level - 1);
    free(node);
}

static void desc_lock(struct vck_tb_cache *c, struct page_desc *pd, uint64_t page)
{
    checker_acquire(c, page, true);
    pthread_mutex_lock(&pd->lock);
}

static bool desc_trylock(struct vck_tb_cache *c, struct page_desc *pd, uint64_t page)
{
    if (pthread_mutex_trylock(&pd->lock))
        return false;
    checker_acquire(c, page, false);
    return true;
}

static void desc_unlock(struct vck_tb_cache *c, struct page_desc *pd, uint64_t page)
{
    checker_release(c, page);
    pthread_mutex_unlock(&pd->lock);
}

void vck_tb_page_lock(struct vck_tb_cache *c, uint64_t phys_addr)
{
    uint64_t page = page_of(c, phys_addr);
    desc_lock(c, page_find(c, page, true), page);
}

void vck_tb_page_unlock(struct vck_tb_cache *c, uint64_t phys_addr)
{
    uint64_t page = page_of(c, phys_addr);
    desc_unlock(c, page_find(c, page, true), page);
}

void vck_tb_page_lock_pair(struct vck_tb_cache *c, uint64_t a, uint64_t b)
{
    uint64_t pa = page_of(c, a);
    if (b == VCK_TB_NO_PAGE2 || page_of(c, b) == pa) {
        vck_tb_page_lock(c, a);
        return;
    }
    uint64_t pb = page_of(c, b);
    uint64_t lo = pa < pb ? pa : pb, hi = pa < pb ? pb : pa;
    desc_lock(c, page_find(c, lo, true), lo);
    desc_lock(c, page_find(c, hi, true), hi);
}

void vck_tb_page_unlock_pair(struct vck_tb_cache *c, uint64_t a, uint64_t b)
{
    vck_tb_page_unlock(c, a);
    if (b != VCK_TB_NO_PAGE2 && page_of(c, b) != page_of(c, a))
        vck_tb_page_unlock(c, b);
}

uint32_t vck_tb_page_gen(struct vck_tb_cache *c, uint64_t phys_addr)
{
    struct page_desc *pd = page_find(c, page_of(c, phys_addr), true);
    /* Pairs with the release increment in invalidate_pages(): code written before it is seen. */
    return atomic_load_explicit(&pd->gen, memory_order_acquire);
}

bool vck_tb_page_has_code(struct vck_tb_cache *c, uint64_t phys_addr)
{
    struct page_desc *pd = page_find(c, page_of(c, phys_addr), false);
    return pd && atomic_load_explicit(&pd->has_code, memory_order_acquire);
}

/* ---- page lists (the page's lock held) ---------------------------------------------------- */

static struct vck_tb *tag_tb(uintptr_t t)
{
    return (struct vck_tb *)(t & ~(uintptr_t)1);
}

static unsigned tag_which(uintptr_t t)
{
    return (unsigned)(t & 1);
}

static uint64_t tb_page(const struct vck_tb_cache *c, const struct vck_tb *tb, unsigned which)
{
    return which ? page_of(c, tb->phys_page2) : page_of(c, tb->phys_pc);
}

static bool tb_spans(const struct vck_tb_cache *c, const struct vck_tb *tb)
{
    return tb->phys_page2 != VCK_TB_NO_PAGE2 &&
           page_of(c, tb->phys_page2) != page_of(c, tb->phys_pc);
}

/*
 * The guest bytes of @tb, as one or two parts: [phys_pc, ...] up to its page's end, then from
 * the start of phys_page2 (which may be the very same physical page). Returns how many.
 */
static unsigned tb_parts(const struct vck_tb_cache *c, const struct vck_tb *tb, uint64_t first[2],
                         uint64_t last[2])
{
    uint64_t page_size = (uint64_t)1 << c->opts.page_bits;
    uint64_t room = page_size - (tb->phys_pc & (page_size - 1));
    uint64_t len0 = room < tb->size ? room : tb->size;
    first[0] = tb->phys_pc;
    last[0] = tb->phys_pc + len0 - 1;
    if (tb->phys_page2 == VCK_TB_NO_PAGE2 || len0 == tb->size)
        return 1;
    first[1] = tb->phys_page2 & ~(page_size - 1);
    last[1] = first[1] + (tb->size - len0) - 1;
    return 2;
}

/*
 * Widen @pd's extent (page @page) to the bytes of @tb on it; returns the previous extent.
 * seq_cst: vck_tb_add() reads the generations after this (see vck_tb_invalidate_range).
 */
static uint64_t extent_grow__locked(const struct vck_tb_cache *c, struct page_desc *pd,
                                    uint64_t page, const struct vck_tb *tb)
{
    uint64_t first[2], last[2], old = atomic_load_explicit(&pd->extent, memory_order_relaxed);
    uint64_t lo = old ? old >> 32 : UINT64_MAX, hi = old ? (old & 0xffffffffu) - 1 : 0;
    const uint64_t mask = ((uint64_t)1 << c->opts.page_bits) - 1;
    for (unsigned i = 0, n = tb_parts(c, tb, first, last); i < n; i++) {
        if (page_of(c, first[i]) != page)
            continue;
        lo = (first[i] & mask) < lo ? first[i] & mask : lo;
        hi = (last[i] & mask) > hi ? last[i] & mask : hi;
    }
    atomic_store_explicit(&pd->extent, lo << 32 | (hi + 1), memory_order_seq_cst);
    return old;
}

static void page_list_add__locked(struct vck_tb_cache *c, struct page_desc *pd, uint64_t page,
                                  struct vck_tb *tb, unsigned which)
{
    tb->page_next[which] = pd->blocks;
    if (pd->blocks)
        tag_tb(pd->blocks)->page_link[tag_which(pd->blocks)] = &tb->page_next[which];
    pd->blocks = (uintptr_t)tb | which;
    tb->page_link[which] = &pd->blocks;
    if (!atomic_load_explicit(&pd->has_code, memory_order_relaxed)) {
        atomic_store_explicit(&pd->has_code, true, memory_order_release);
        if (c->opts.page_code)
            c->opts.page_code(c->opts.opaque, page << c->opts.page_bits, true);
    }
}

static void page_list_remove__locked(struct vck_tb_cache *c, struct page_desc *pd, uint64_t page,
                                     struct vck_tb *tb, unsigned which)
{
    /* O(1): a flush removes every block of a dense page in table order, not list order. */
    uintptr_t next = tb->page_next[which];
    if (*tb->page_link[which] != ((uintptr_t)tb | which))
        fatal("internal: block not on its page's list");
    *tb->page_link[which] = next;
    if (next)
        tag_tb(next)->page_link[tag_which(next)] = tb->page_link[which];
    if (!pd->blocks) {
        atomic_store_explicit(&pd->extent, 0, memory_order_relaxed);
        atomic_store_explicit(&pd->has_code, false, memory_order_release);
        if (c->opts.page_code)
            c->opts.page_code(c->opts.opaque, page << c->opts.page_bits, false);
    }
}

/* ---- page collections -------------------------------------------------------------------- */

struct page_ref {
    uint64_t page;
    struct page_desc *pd;
    bool locked;
};

struct vck_tb_pages {
    struct vck_tb_cache *cache;
    struct page_ref *v; /* sorted by page */
    size_t n, cap;
};

static size_t set_find(const struct vck_tb_pages *s, uint64_t page, bool *found)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->v[mid].page < page)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->n && s->v[lo].page == page;
    return lo;
}

static void set_unlock_all(struct vck_tb_pages *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].locked) {
            desc_unlock(s->cache, s->v[i].pd, s->v[i].page);
            s->v[i].locked = false;
        }
    }
}

/*
 * Make sure @page is locked in the set. Above the highest page held: a blocking lock. Below it:
 * a trylock; on failure the page stays in the set (so the retry locks it in order) and this
 * returns false.
 */
static bool set_add_locked(struct vck_tb_pages *s, uint64_t page)
{
    bool found;
    size_t i = set_find(s, page, &found);
    if (found && s->v[i].locked)
        return true;
    if (!found) {
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 16;
            s->v = reallocarray(s->v, s->cap, sizeof(*s->v));
            if (!s->v)
                fatal("out of memory");
        }
        memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof(*s->v));
        s->v[i] = (struct page_ref){page, page_find(s->cache, page, true), false};
        s->n++;
    }
    bool above = true;
    for (size_t j = i + 1; j < s->n; j++)
        if (s->v[j].locked)
            above = false;
#ifdef VCK_TB_BROKEN_LOCK_ORDER
    above = true; /* the broken twin: block on every page, in whatever order they come */
#endif
    if (above) {
        desc_lock(s->cache, s->v[i].pd, page);
    } else if (!desc_trylock(s->cache, s->v[i].pd, page)) {
        return false;
    }
    s->v[i].locked = true;
    return true;
}

/* Lock @set for [first, last] pages: the collection protocol. Returns with everything locked. */
static void collection_lock(struct vck_tb_pages *set, uint64_t first, uint64_t last)
{
    struct vck_tb_cache *c = set->cache;
retry:
    /* Everything already known, in ascending order: blocking is safe. */
    for (size_t i = 0; i < set->n; i++) {
        if (!set->v[i].locked) {
            desc_lock(c, set->v[i].pd, set->v[i].page);
            set->v[i].locked = true;
        }
    }
    for (uint64_t page = first; page_next_present(c, &page, last, false); page++) {
        if (!set_add_locked(set, page))
            goto busy;
        bool found;
        struct page_desc *pd = set->v[set_find(set, page, &found)].pd;
        for (uintptr_t t = pd->blocks; t; t = tag_tb(t)->page_next[tag_which(t)]) {
            struct vck_tb *tb = tag_tb(t);
            if (!set_add_locked(set, tb_page(c, tb, 0)))
                goto busy;
            if (tb_spans(c, tb) && !set_add_locked(set, tb_page(c, tb, 1)))
                goto busy;
        }
        if (page == last)
            break;
    }
    return;
busy:
    set_unlock_all(set);
    count(&c->retries, 1);
    goto retry;
}

struct vck_tb_pages *vck_tb_pages_lock(struct vck_tb_cache *c, uint64_t start, uint64_t last)
{
    struct vck_tb_pages *set = calloc(1, sizeof(*set));
    if (!set)
        return NULL;
    set->cache = c;
    collection_lock(set, page_of(c, start), page_of(c, last));
    return set;
}

void vck_tb_pages_unlock(struct vck_tb_pages *set)
{
    set_unlock_all(set);
    free(set->v);
    free(set);
}

size_t vck_tb_pages_count(const struct vck_tb_pages *set)
{
    return set->n;
}

/* ---- jump caches ------------------------------------------------------------------------- */

static struct vck_tb *jc_empty(const struct vck_tb_cpu *cpu)
{
    return &cpu->cache->jc_empty;
}

static void jc_clear_slot(struct vck_tb_cpu *cpu, size_t slot, const struct vck_tb *tb)
{
    struct vck_tb *expected = (struct vck_tb *)tb;
    atomic_compare_exchange_strong_explicit(&cpu->jc[slot], &expected, jc_empty(cpu),
                                            memory_order_seq_cst, memory_order_relaxed);
}

void vck_tb_jc_invalidate(struct vck_tb_cache *c, const struct vck_tb *tb)
{
    vck_rcu_read_lock();
    /*
     * seq_cst, like the publication in cpus_update__locked(): a vCPU that registers and then
     * fills a slot (seq_cst) before this walk's INVALID store is in the list this load reads.
     * An acquire load would be enough on x86 and ARMv8, not in the C11 model.
     */
    struct cpu_list *cpus = __atomic_load_n(&c->cpus, __ATOMIC_SEQ_CST);
    for (size_t i = 0; cpus && i < cpus->n; i++)
        jc_clear_slot(cpus->cpu[i], vck_tb_jc_slot(cpus->cpu[i], tb->pc), tb);
    vck_rcu_read_unlock();
}

/* Fill @cpu's slot for @tb; undo it if @tb was invalidated meanwhile (see the design note). */
static void jc_fill(struct vck_tb_cpu *cpu, struct vck_tb *tb)
{
    size_t slot = vck_tb_jc_slot(cpu, tb->pc);
#ifdef VCK_TB_BROKEN_JC_FILL
    /* The stress test's broken twin: no re-check, and a window an invalidation can fall into. */
    sched_yield();
#endif
    atomic_store_explicit(&cpu->jc[slot], tb, memory_order_seq_cst);
#ifndef VCK_TB_BROKEN_JC_FILL
    if (atomic_load_explicit(&tb->cflags, memory_order_seq_cst) & VCK_TB_CF_INVALID)
        jc_clear_slot(cpu, slot, tb);
#endif
}

static void jc_clear_group(struct vck_tb_cpu *cpu, uint64_t vaddr)
{
    uint32_t first = vck_tb_jc_slot(cpu, vaddr & ~(((uint64_t)1 << cpu->page_bits) - 1)) &
                     ~((1u << cpu->group_bits) - 1);
    for (uint32_t i = 0; i < (1u << cpu->group_bits); i++)
        atomic_store_explicit(&cpu->jc[(first + i) & cpu->jc_mask], jc_empty(cpu),
                              memory_order_relaxed);
}

void vck_tb_jc_flush_page(struct vck_tb_cpu *cpu, uint64_t vaddr)
{
    uint64_t page_size = (uint64_t)1 << cpu->page_bits;
    jc_clear_group(cpu, vaddr);
    jc_clear_group(cpu, vaddr - page_size);
}

void vck_tb_jc_flush_all(struct vck_tb_cpu *cpu)
{
    for (uint32_t i = 0; i <= cpu->jc_mask; i++)
        atomic_store_explicit(&cpu->jc[i], jc_empty(cpu), memory_order_relaxed);
}

/* ---- the block table --------------------------------------------------------------------- */

struct lookup_key {
    uint64_t phys_pc, pc;
    uint32_t flags, cflags;
    vck_tb_phys_fn *phys;
    void *opaque;
};

static uint32_t tb_hash(uint64_t phys_pc, uint64_t pc, uint32_t flags, uint32_t cflags)
{
    uint64_t words[3] = {phys_pc, pc, (uint64_t)flags << 32 | cflags};
    return vck_qht_hash_words(words, 3);
}

static bool tb_equal(const void *a, const void *b)
{
    const struct vck_tb *x = a, *y = b;
    return x->phys_pc == y->phys_pc && x->pc == y->pc && x->flags == y->flags &&
           atomic_load_explicit(&x->cflags, memory_order_relaxed) ==
               atomic_load_explicit(&y->cflags, memory_order_relaxed) &&
           x->phys_page2 == y->phys_page2 && x->size == y->size;
}

static bool tb_matches(const void *obj, const void *userp)
{
    const struct vck_tb *tb = obj;
    const struct lookup_key *k = userp;
    if (tb->phys_pc != k->phys_pc || tb->pc != k->pc || tb->flags != k->flags ||
        atomic_load_explicit(&tb->cflags, memory_order_relaxed) != k->cflags)
        return false;
    if (tb->phys_page2 == VCK_TB_NO_PAGE2)
        return true;
    /* The second page's mapping is part of the key: translate it now. */
    uint64_t page_size = (uint64_t)1 << tb->cache->opts.page_bits;
    uint64_t vpage2 = (tb->pc & ~(page_size - 1)) + page_size;
    uint64_t phys2;
    return k->phys(k->opaque, vpage2, &phys2) &&
           (phys2 & ~(page_size - 1)) == (tb->phys_page2 & ~(page_size - 1));
}

struct vck_tb *vck_tb_lookup_slow(struct vck_tb_cpu *cpu, uint64_t pc, uint32_t flags,
                                  uint32_t cflags, vck_tb_phys_fn *phys, void *opaque)
{
    struct vck_tb_cache *c = cpu->cache;
    struct lookup_key k = {
        .pc = pc, .flags = flags, .cflags = cflags, .phys = phys, .opaque = opaque};
    cpu->table_lookups++;
    if (!phys(opaque, pc, &k.phys_pc))
        return NULL;
    struct tb_table *t = vck_rcu_dereference(c->table);
    struct vck_tb *tb =
        vck_qht_lookup_custom(&t->qht, &k, tb_hash(k.phys_pc, pc, flags, cflags), tb_matches);
    if (tb) {
        cpu->table_hits++;
        jc_fill(cpu, tb);
    }
    return tb;
}

/* ---- host code regions ------------------------------------------------------------------- */

static struct code_region *region_of(struct region_list *rl, uintptr_t addr)
{
    size_t lo = 0, hi = rl ? rl->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rl->r[mid]->end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (rl && lo < rl->n && rl->r[lo]->base <= addr)
        return rl->r[lo];
    return NULL;
}

/* tdestroy(3)'s callback: the tree's keys are blocks, which the tree does not own. */
static void tree_node_keep(void *key)
{
    (void)key;
}

/* tsearch(3) order on code ranges; 0 when they overlap. */
static int code_range_cmp(const void *a, const void *b)
{
    const struct vck_tb *x = a, *y = b;
    uintptr_t xs = (uintptr_t)x->code, ys = (uintptr_t)y->code;
    if (xs + x->code_size <= ys)
        return -1;
    if (ys + y->code_size <= xs)
        return 1;
    return 0;
}

static void host_map_add(struct vck_tb_cache *c, struct vck_tb *tb)
{
    tb->host_region = NULL;
    if (!tb->code || !tb->code_size)
        return;
    struct code_region *r = region_of(vck_rcu_dereference(c->regions), (uintptr_t)tb->code);
    if (!r)
        return;
    /* Removal goes by this, not by a fresh search: the region may be registered after the add. */
    tb->host_region = r;
    /* Pending until the table insert decides: a duplicate must never be handed out. */
    tb->host_pending = true;
    pthread_mutex_lock(&r->lock);
    void *node = tsearch(tb, &r->blocks, code_range_cmp);
    if (!node)
        fatal("out of memory");
    const struct vck_tb *there = *(struct vck_tb **)node;
    if (there != tb)
        fatal("block code %p+%zu overlaps the code of a live block (%p+%zu)", tb->code,
              tb->code_size, there->code, there->code_size);
    pthread_mutex_unlock(&r->lock);
}

/* The block went into the table: lookups may return it from now on. */
static void host_map_commit(struct vck_tb *tb)
{
    struct code_region *r = tb->host_region;
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    tb->host_pending = false;
    atomic_fetch_add_explicit(&r->settled, 1, memory_order_relaxed);
    pthread_mutex_unlock(&r->lock);
}

static void host_map_remove(struct vck_tb *tb)
{
    struct code_region *r = tb->host_region;
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    /* Ranges are disjoint, so the node that compares equal is @tb's own. */
    void *node = tfind(tb, &r->blocks, code_range_cmp);
    if (!node || *(struct vck_tb **)node != tb)
        fatal("internal: block missing from the host map");
    tdelete(tb, &r->blocks, code_range_cmp);
    if (tb->host_pending)
        atomic_fetch_add_explicit(&r->settled, 1, memory_order_relaxed);
    pthread_mutex_unlock(&r->lock);
}

void vck_tb_code_region_add(struct vck_tb_cache *c, const void *base, size_t size)
{
    struct code_region *r = zalloc(sizeof(*r));
    r->base = (uintptr_t)base;
    r->end = (uintptr_t)base + size;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_lock(&c->lock);
    struct region_list *old = c->regions;
    size_t n = old ? old->n : 0;
    struct region_list *rl = zalloc(sizeof(*rl) + (n + 1) * sizeof(rl->r[0]));
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (old->r[i]->base < r->end && r->base < old->r[i]->end)
            fatal("code region %p+%zu overlaps a registered one", base, size);
        if (j == i && old->r[i]->base > r->base)
            rl->r[j++] = r;
        rl->r[j++] = old->r[i];
    }
    if (j == n)
        rl->r[j++] = r;
    rl->n = j;
    vck_rcu_assign_pointer(c->regions, rl);
    pthread_mutex_unlock(&c->lock);
    if (old)
        vck_rcu_free(old, rcu);
}

struct vck_tb *vck_tb_find_by_host(struct vck_tb_cache *c, const void *host_addr)
{
    uintptr_t addr = (uintptr_t)host_addr;
    struct code_region *r = region_of(vck_rcu_dereference(c->regions), addr);
    if (!r)
        return NULL;
    /* Only the two fields the order reads. */
    struct vck_tb probe = {.code = (void *)addr, .code_size = 1};
    for (unsigned spins = 0;;) {
        pthread_mutex_lock(&r->lock);
        void *node = tfind(&probe, &r->blocks, code_range_cmp);
        struct vck_tb *found = node ? *(struct vck_tb **)node : NULL;
        if (!found || !found->host_pending) {
            pthread_mutex_unlock(&r->lock);
            return found;
        }
        /* Being added right now: wait until it is in the table or withdrawn (a few µs). */
        uint64_t settled = atomic_load_explicit(&r->settled, memory_order_relaxed);
        pthread_mutex_unlock(&r->lock);
        while (atomic_load_explicit(&r->settled, memory_order_relaxed) == settled)
            if (spins++ > 64)
                sched_yield();
    }
}

/* ---- chaining ---------------------------------------------------------------------------- */

/*
 * A block's jump lock: a test-and-test-and-set spinlock (held for a list splice), yielding after
 * a while so that a preempted holder gets the CPU back. Acquire on taking, release on dropping.
 */
static void jmp_lock(struct vck_tb *tb)
{
    unsigned spins = 0;
    while (atomic_exchange_explicit(&tb->jmp_lock, 1, memory_order_acquire)) {
        while (atomic_load_explicit(&tb->jmp_lock, memory_order_relaxed))
            if (++spins % 128 == 0)
                sched_yield();
    }
}

static void jmp_unlock(struct vck_tb *tb)
{
    atomic_store_explicit(&tb->jmp_lock, 0, memory_order_release);
}

static void jump_set_hook(struct vck_tb_cache *c, struct vck_tb *from, int n, struct vck_tb *to)
{
    if (c->opts.jump_set)
        c->opts.jump_set(c->opts.opaque, from, n, to);
}

bool vck_tb_link(struct vck_tb *from, int n, struct vck_tb *to)
{
    if (n != 0 && n != 1)
        fatal("vck_tb_link: exit %d is not 0 or 1", n);
    bool linked = false;
    jmp_lock(to);
    /* Under to's jump lock: an invalidation of to sets INVALID before taking it. */
    if (!(atomic_load_explicit(&to->cflags, memory_order_relaxed) & VCK_TB_CF_INVALID)) {
        uintptr_t expected = 0;
        /* Release: a vCPU following the exit sees everything about @to. */
        if (atomic_compare_exchange_strong_explicit(&from->jmp[n].dest, &expected, (uintptr_t)to,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            from->jmp[n].next = to->jmp_incoming;
            to->jmp_incoming = (uintptr_t)from | (uintptr_t)n;
            jump_set_hook(from->cache, from, n, to);
            linked = true;
        }
    }
    jmp_unlock(to);
    return linked;
}

/* @tb is being invalidated: reset every exit that jumps into it. */
static void unlink_incoming(struct vck_tb *tb)
{
    jmp_lock(tb);
    uintptr_t t = tb->jmp_incoming;
    tb->jmp_incoming = 0;
    while (t) {
        struct vck_tb *from = tag_tb(t);
        int n = (int)tag_which(t);
        t = from->jmp[n].next;
        atomic_store_explicit(&from->jmp[n].dest, 0, memory_order_release);
        jump_set_hook(tb->cache, from, n, NULL);
    }
    jmp_unlock(tb);
}

/* @tb is being invalidated: make its exits DEAD, unthreading them from their targets' lists. */
static void unlink_outgoing(struct vck_tb *tb)
{
    for (int n = 0; n < 2; n++) {
        for (;;) {
            uintptr_t d = atomic_load_explicit(&tb->jmp[n].dest, memory_order_acquire);
            if (d == DEAD)
                break;
            if (d == 0) {
                if (atomic_compare_exchange_strong_explicit(
                        &tb->jmp[n].dest, &d, DEAD, memory_order_acq_rel, memory_order_relaxed))
                    break;
                continue;
            }
            struct vck_tb *to = (struct vck_tb *)d;
            jmp_lock(to);
            if (atomic_load_explicit(&tb->jmp[n].dest, memory_order_relaxed) == d) {
                uintptr_t self = (uintptr_t)tb | (uintptr_t)n;
                uintptr_t *link = &to->jmp_incoming;
                while (*link != self) {
                    if (!*link)
                        fatal("internal: chained exit missing from its target's list");
                    link = &tag_tb(*link)->jmp[tag_which(*link)].next;
                }
                *link = tb->jmp[n].next;
                atomic_store_explicit(&tb->jmp[n].dest, DEAD, memory_order_release);
                jump_set_hook(tb->cache, tb, n, NULL);
                jmp_unlock(to);
                break;
            }
            jmp_unlock(to);
        }
    }
}

/* ---- invalidation ------------------------------------------------------------------------ */

static void tb_free_rcu(struct vck_rcu_head *head)
{
    struct vck_tb *tb = caa_container_of(head, struct vck_tb, rcu);
    struct vck_tb_cache *c = tb->cache;
    if (c->opts.free_tb)
        c->opts.free_tb(c->opts.opaque, tb);
}

/*
 * Queue the invalidated blocks of @list (linked through page_next[0], which no page list uses
 * any more) for reclamation. Called after the page locks are dropped: liburcu's enqueue wakes
 * its callback thread (a fence and maybe a futex call), which measured 38% of an invalidation
 * and got the invalidating thread preempted with page locks held.
 */
static void reclaim_after_grace(struct vck_tb *list)
{
    while (list) {
        struct vck_tb *tb = list;
        list = (struct vck_tb *)tb->page_next[0];
        vck_rcu_call(&tb->rcu, tb_free_rcu);
    }
}

/*
 * Invalidate @tb and push it on *@reclaim. Every page lock of @tb held by the caller.
 * @from_table false: the table is being discarded whole (a flush), so skip its removal.
 */
static bool invalidate__pages_locked(struct vck_tb_cache *c, struct vck_tb *tb, bool from_table,
                                     struct vck_tb **reclaim)
{
    uint32_t cf = atomic_load_explicit(&tb->cflags, memory_order_relaxed);
    if (cf & VCK_TB_CF_INVALID)
        return false;
    /* seq_cst: ordered before the jump-cache walk below; pairs with jc_fill()'s re-check. */
    atomic_fetch_or_explicit(&tb->cflags, VCK_TB_CF_INVALID, memory_order_seq_cst);
    if (from_table && !vck_qht_remove(&((struct tb_table *)tb->table)->qht, tb, tb->hash))
        fatal("internal: valid block missing from its table");
    uint64_t p0 = tb_page(c, tb, 0);
    page_list_remove__locked(c, page_find(c, p0, false), p0, tb, 0);
    if (tb_spans(c, tb)) {
        uint64_t p1 = tb_page(c, tb, 1);
        page_list_remove__locked(c, page_find(c, p1, false), p1, tb, 1);
    }
    vck_tb_jc_invalidate(c, tb);
    unlink_incoming(tb);
    unlink_outgoing(tb);
    host_map_remove(tb);
    count(&c->invalidated, 1);
    tb->page_next[0] = (uintptr_t)*reclaim;
    *reclaim = tb;
    return true;
}

/* Do bytes [start, last] of guest physical memory hold part of @tb? */
static bool tb_overlaps(const struct vck_tb_cache *c, const struct vck_tb *tb, uint64_t start,
                        uint64_t last)
{
    uint64_t first[2], part_last[2];
    for (unsigned i = 0, n = tb_parts(c, tb, first, part_last); i < n; i++)
        if (first[i] <= last && start <= part_last[i])
            return true;
    return false;
}

size_t vck_tb_invalidate_range(struct vck_tb_cache *c, uint64_t start, uint64_t last)
{
    size_t done = 0;
    uint64_t first_page = page_of(c, start), last_page = page_of(c, last);
    /*
     * First, lock-free: bump every page's generation, then look for code. A store to a page with
     * no block under its bytes (data sharing a page with code, a page being translated right
     * now) ends here. Against a concurrent vck_tb_add, which widens the page's code extent and
     * then reads the generation, both seq_cst: either this sees the extent and takes the locks
     * below, or the add sees the new generation and refuses its block.
     */
    bool any_code = false;
    const uint64_t offset_mask = ((uint64_t)1 << c->opts.page_bits) - 1;
    if (start > last)
        return 0;
    /*
     * Pages without a descriptor are skipped (no memory is allocated for a range that never
     * held code), which is safe against a translator creating the descriptor meanwhile: the
     * skip confirms each absent slot with an acq_rel read-modify-write, and the translator's
     * install is one too, so either this sees the new node (and bumps the page's generation) or
     * the install reads from this thread's RMW and so sees the code stored before this call.
     */
    struct page_desc *pd;
    for (uint64_t page = first_page; (pd = page_next_present(c, &page, last_page, true)); page++) {
        /* Also a release: a translator that reads the new generation sees the new code. */
        atomic_fetch_add_explicit(&pd->gen, 1, memory_order_seq_cst);
        uint64_t ext = atomic_load_explicit(&pd->extent, memory_order_seq_cst);
        if (ext) {
            uint64_t lo = page == first_page ? start & offset_mask : 0;
            uint64_t hi = page == last_page ? last & offset_mask : offset_mask;
            any_code |= lo <= (ext & 0xffffffffu) - 1 && (ext >> 32) <= hi;
        }
        if (page == last_page)
            break;
    }
    if (!any_code)
        return 0;
    vck_rcu_read_lock();
    /* Chunks of CHUNK_PAGES pages, each starting at a present page (the rest hold no block). */
    for (uint64_t chunk = first_page; page_next_present(c, &chunk, last_page, false);) {
        uint64_t chunk_last = last_page - chunk < CHUNK_PAGES ? last_page : chunk + CHUNK_PAGES - 1;
        struct vck_tb_pages set = {.cache = c};
        struct vck_tb *reclaim = NULL;
        collection_lock(&set, chunk, chunk_last);
        /*
         * Only the pages the collection holds: a leaf a translator installs meanwhile is not
         * locked, and its blocks were translated from the new code (see the skip above).
         */
        bool found;
        for (size_t i = set_find(&set, chunk, &found); i < set.n && set.v[i].page <= chunk_last;
             i++) {
            uintptr_t t = set.v[i].pd->blocks;
            while (t) {
                struct vck_tb *tb = tag_tb(t);
                t = tb->page_next[tag_which(t)];
                if (tb_overlaps(c, tb, start, last) &&
                    invalidate__pages_locked(c, tb, true, &reclaim))
                    done++;
            }
        }
        set_unlock_all(&set);
        reclaim_after_grace(reclaim);
        free(set.v);
        if (chunk_last == last_page)
            break;
        chunk = chunk_last + 1;
    }
    vck_rcu_read_unlock();
    return done;
}

bool vck_tb_invalidate(struct vck_tb *tb)
{
    struct vck_tb_cache *c = tb->cache;
    vck_rcu_read_lock();
    vck_tb_page_lock_pair(c, tb->phys_pc, tb_spans(c, tb) ? tb->phys_page2 : VCK_TB_NO_PAGE2);
    struct vck_tb *reclaim = NULL;
    uint64_t page2 = tb_spans(c, tb) ? tb->phys_page2 : VCK_TB_NO_PAGE2;
    bool done = invalidate__pages_locked(c, tb, true, &reclaim);
    vck_tb_page_unlock_pair(c, tb->phys_pc, page2);
    reclaim_after_grace(reclaim);
    vck_rcu_read_unlock();
    return done;
}

/* ---- adding ------------------------------------------------------------------------------ */

struct vck_tb *vck_tb_add(struct vck_tb_cache *c, struct vck_tb_cpu *cpu, struct vck_tb *tb)
{
    uint32_t cf = atomic_load_explicit(&tb->cflags, memory_order_relaxed);
    if (cf & VCK_TB_CF_INVALID || !tb->size)
        fatal("vck_tb_add: block with the INVALID flag or no size");
    tb->cache = c;
    tb->jc_key = vck_tb_jc_key(tb->flags, cf);
    tb->hash = tb_hash(tb->phys_pc, tb->pc, tb->flags, cf);
    tb->jmp_incoming = 0;
    atomic_init(&tb->jmp[0].dest, 0);
    atomic_init(&tb->jmp[1].dest, 0);
    atomic_init(&tb->jmp_lock, 0);

    bool spans = tb_spans(c, tb);
    uint64_t p0 = tb_page(c, tb, 0), p1 = spans ? tb_page(c, tb, 1) : p0;
    struct page_desc *pd0 = page_find(c, p0, true), *pd1 = page_find(c, p1, true);
    struct vck_tb *result = tb;

    vck_rcu_read_lock();
    vck_tb_page_lock_pair(c, tb->phys_pc, spans ? tb->phys_page2 : VCK_TB_NO_PAGE2);
    /* A second part on the first page itself (two virtual pages, one physical) counts too. */
    uint32_t gen1 = spans || tb->phys_page2 == VCK_TB_NO_PAGE2 ? tb->page_gen[1] : tb->page_gen[0];
#ifdef VCK_TB_BROKEN_EXTENT_ORDER
    /* The stress test's broken twin: generations read before the extents cover the block. */
    bool stale = atomic_load_explicit(&pd0->gen, memory_order_seq_cst) != tb->page_gen[0] ||
                 (tb->phys_page2 != VCK_TB_NO_PAGE2 &&
                  atomic_load_explicit(&pd1->gen, memory_order_seq_cst) != gen1);
    sched_yield(); /* a window for invalidations to fall into */
    uint64_t old0 = extent_grow__locked(c, pd0, p0, tb);
    uint64_t old1 = spans ? extent_grow__locked(c, pd1, p1, tb) : 0;
#else
    /* The extents first, then the generations, both seq_cst: see vck_tb_invalidate_range(). */
    uint64_t old0 = extent_grow__locked(c, pd0, p0, tb);
    uint64_t old1 = spans ? extent_grow__locked(c, pd1, p1, tb) : 0;
    bool stale = atomic_load_explicit(&pd0->gen, memory_order_seq_cst) != tb->page_gen[0] ||
                 (tb->phys_page2 != VCK_TB_NO_PAGE2 &&
                  atomic_load_explicit(&pd1->gen, memory_order_seq_cst) != gen1);
#endif
    if (!stale && c->opts.validate && !c->opts.validate(c->opts.opaque, tb))
        stale = true;
    if (stale) {
        atomic_store_explicit(&pd0->extent, old0, memory_order_relaxed);
        if (spans)
            atomic_store_explicit(&pd1->extent, old1, memory_order_relaxed);
        count(&c->stale_adds, 1);
        result = NULL;
        goto unlock;
    }
    page_list_add__locked(c, pd0, p0, tb, 0);
    if (spans)
        page_list_add__locked(c, pd1, p1, tb, 1);
    /* In the host map before anyone can find the block. */
    host_map_add(c, tb);
    struct tb_table *t = vck_rcu_dereference(c->table);
    tb->table = t;
    void *existing;
    if (!vck_qht_insert(&t->qht, tb, tb->hash, &existing)) {
        /* Someone was faster: unlink ours, which nobody but this thread has seen. */
        host_map_remove(tb);
        page_list_remove__locked(c, pd0, p0, tb, 0);
        if (spans)
            page_list_remove__locked(c, pd1, p1, tb, 1);
        count(&c->duplicates, 1);
        result = existing;
        goto unlock;
    }
    host_map_commit(tb);
    count(&c->added, 1);
unlock:
    vck_tb_page_unlock_pair(c, tb->phys_pc, spans ? tb->phys_page2 : VCK_TB_NO_PAGE2);
    if (result && cpu)
        jc_fill(cpu, result);
    vck_rcu_read_unlock();
    return result;
}

/* ---- flush ------------------------------------------------------------------------------- */

struct collected {
    struct vck_tb **v;
    size_t n, cap;
};

static void collect_block(void *obj, uint32_t hash, void *userp)
{
    (void)hash;
    struct collected *col = userp;
    if (col->n == col->cap) {
        col->cap = col->cap ? 2 * col->cap : 1024;
        col->v = reallocarray(col->v, col->cap, sizeof(*col->v));
        if (!col->v)
            fatal("out of memory");
    }
    col->v[col->n++] = obj;
}

static struct tb_table *table_new(const struct vck_tb_cache *c)
{
    struct tb_table *t = zalloc(sizeof(*t));
    vck_qht_init(&t->qht, tb_equal, c->opts.table_size, VCK_QHT_AUTO_RESIZE);
    return t;
}

/* Invalidate every block of @old (no longer published). Outside read-side sections. */
static void invalidate_table(struct vck_tb_cache *c, struct tb_table *old)
{
    struct collected col = {0};
    vck_rcu_read_lock();
    vck_qht_iter(&old->qht, collect_block, &col);
    struct vck_tb *reclaim = NULL;
    for (size_t i = 0; i < col.n; i++) {
        struct vck_tb *tb = col.v[i];
        uint64_t page2 = tb_spans(c, tb) ? tb->phys_page2 : VCK_TB_NO_PAGE2;
        vck_tb_page_lock_pair(c, tb->phys_pc, page2);
        invalidate__pages_locked(c, tb, false, &reclaim);
        vck_tb_page_unlock_pair(c, tb->phys_pc, page2);
    }
    reclaim_after_grace(reclaim);
    vck_rcu_read_unlock();
    free(col.v);
    /*
     * Concurrent invalidations remove blocks from the table they are in, this one included:
     * wait for them (they run inside read-side sections) before destroying it.
     */
    vck_rcu_synchronize();
    vck_qht_destroy(&old->qht);
    free(old);
}

void vck_tb_flush(struct vck_tb_cache *c)
{
    /*
     * Not c->lock: a thread inside a read-side section may take that one (vck_tb_cpu_new...),
     * and this waits for that section to end.
     */
    pthread_mutex_lock(&c->flush_lock);
    struct tb_table *old = c->table;
    /* Pairs with the dereference in lookups and adds: from now on they use the new table. */
    vck_rcu_assign_pointer(c->table, table_new(c));
    /* No add can still be inserting into the old table after this. */
    vck_rcu_synchronize();
    invalidate_table(c, old);
    count(&c->flushes, 1);
    pthread_mutex_unlock(&c->flush_lock);
}

/* ---- the cache and its vCPUs ------------------------------------------------------------- */

struct vck_tb_cache *vck_tb_cache_new(const struct vck_tb_cache_options *opts)
{
    struct vck_tb_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (opts)
        c->opts = *opts;
    if (!c->opts.page_bits)
        c->opts.page_bits = 12;
    if (!c->opts.jc_bits)
        c->opts.jc_bits = 12;
    if (!c->opts.table_size)
        c->opts.table_size = 1u << 15;
    if (c->opts.page_bits > 30 || c->opts.jc_bits < 2 || c->opts.jc_bits > 24 ||
        c->opts.pc_shift > c->opts.page_bits)
        fatal("options out of range: page_bits %u (1..30), jc_bits %u (2..24), pc_shift %u",
              c->opts.page_bits, c->opts.jc_bits, c->opts.pc_shift);
    unsigned page_number_bits = 64 - c->opts.page_bits;
    c->inner_levels = 1 + (page_number_bits - LEAF_BITS + INNER_BITS - 1) / INNER_BITS;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->flush_lock, NULL);
    c->table = table_new(c);
    /* No lookup passes VCK_TB_CF_INVALID, so no lookup's key is this one. */
    c->jc_empty.jc_key = vck_tb_jc_key(0, VCK_TB_CF_INVALID);
    atomic_init(&c->jc_empty.cflags, VCK_TB_CF_INVALID);
    c->jc_empty.cache = c;
    return c;
}

void vck_tb_cache_free(struct vck_tb_cache *c)
{
    if (c->cpus && c->cpus->n)
        fatal("vck_tb_cache_free: %zu vCPUs still registered", c->cpus->n);
    invalidate_table(c, c->table);
    vck_rcu_barrier(); /* every free_tb has run */
    free_tree(atomic_load_explicit(&c->root, memory_order_relaxed), c->inner_levels);
    if (c->regions) {
        for (size_t i = 0; i < c->regions->n; i++) {
            pthread_mutex_destroy(&c->regions->r[i]->lock);
            tdestroy(c->regions->r[i]->blocks, tree_node_keep); /* the blocks are gone already */
            free(c->regions->r[i]);
        }
        free(c->regions);
    }
    free(c->cpus);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->flush_lock);
    free(c);
}

/* Publish a copy of the vCPU list with @add added or @remove removed. Cache lock held. */
static void cpus_update__locked(struct vck_tb_cache *c, struct vck_tb_cpu *add,
                                struct vck_tb_cpu *remove)
{
    struct cpu_list *old = c->cpus;
    size_t n = old ? old->n : 0;
    struct cpu_list *l = zalloc(sizeof(*l) + (n + 1) * sizeof(l->cpu[0]));
    for (size_t i = 0; i < n; i++)
        if (old->cpu[i] != remove)
            l->cpu[l->n++] = old->cpu[i];
    if (add)
        l->cpu[l->n++] = add;
    __atomic_store_n(&c->cpus, l, __ATOMIC_SEQ_CST); /* publishes @l; see vck_tb_jc_invalidate() */
    if (old)
        vck_rcu_free(old, rcu);
}

struct vck_tb_cpu *vck_tb_cpu_new(struct vck_tb_cache *c)
{
    /*
     * Cache lines of its own: the owner writes its miss counters, and two vCPUs' structs side by
     * side in the heap (when they held hit counters) measured as half the guest MIPS on two harts.
     */
    size_t slots = (size_t)1 << c->opts.jc_bits;
    size_t size =
        (sizeof(struct vck_tb_cpu) + slots * sizeof(_Atomic(struct vck_tb *)) + 63) & ~(size_t)63;
    struct vck_tb_cpu *cpu = aligned_alloc(64, size);
    if (!cpu)
        return NULL;
    memset(cpu, 0, sizeof(*cpu));
    cpu->cache = c;
    for (size_t i = 0; i < slots; i++)
        atomic_init(&cpu->jc[i], jc_empty(cpu));
    cpu->jc_mask = (uint32_t)(slots - 1);
    cpu->page_bits = (uint8_t)c->opts.page_bits;
    cpu->pc_shift = (uint8_t)c->opts.pc_shift;
    /* Half the index from the offset in the page (fewer if the page holds fewer instructions). */
    unsigned in_page = c->opts.page_bits - c->opts.pc_shift, group = c->opts.jc_bits / 2;
    if (group > in_page)
        group = in_page;
    cpu->group_bits = (uint8_t)group;
    cpu->group_shift = (uint8_t)(in_page - group);
    cpu->lo_mask = (1u << group) - 1;
    cpu->hi_mask = cpu->jc_mask & ~cpu->lo_mask;
    pthread_mutex_lock(&c->lock);
    cpus_update__locked(c, cpu, NULL);
    pthread_mutex_unlock(&c->lock);
    return cpu;
}

static void cpu_free_rcu(struct vck_rcu_head *head)
{
    struct vck_tb_cpu *cpu = caa_container_of(head, struct vck_tb_cpu, rcu);
    free(cpu);
}

void vck_tb_cpu_free(struct vck_tb_cpu *cpu)
{
    struct vck_tb_cache *c = cpu->cache;
    pthread_mutex_lock(&c->lock);
    cpus_update__locked(c, NULL, cpu);
    pthread_mutex_unlock(&c->lock);
    vck_rcu_call(&cpu->rcu, cpu_free_rcu);
}

void vck_tb_cache_get_stats(struct vck_tb_cache *c, struct vck_tb_cache_stats *st)
{
    *st = (struct vck_tb_cache_stats){
        .added = atomic_load_explicit(&c->added, memory_order_relaxed),
        .duplicates = atomic_load_explicit(&c->duplicates, memory_order_relaxed),
        .stale_adds = atomic_load_explicit(&c->stale_adds, memory_order_relaxed),
        .invalidated = atomic_load_explicit(&c->invalidated, memory_order_relaxed),
        .flushes = atomic_load_explicit(&c->flushes, memory_order_relaxed),
        .collection_retries = atomic_load_explicit(&c->retries, memory_order_relaxed),
        .page_leaves = atomic_load_explicit(&c->page_leaves, memory_order_relaxed),
    };
    st->blocks = st->added - st->invalidated;
}
