/*
 * Unit tests of the translation-block cache contract (vcpukit/tbcache.h), one path at a time:
 * adds and the three lookup outcomes, duplicates and stale adds, blocks spanning two pages,
 * range and single-block invalidation, chaining, the hooks, the jump caches, the non-stop flush,
 * reclamation, page collections and the lock checker, the host-address map and the statistics.
 * What concurrent vCPUs and invalidators may observe is tbcache_stress.c's business.
 *
 * The fixture is one cache over a small guest: virtual page v maps to physical page
 * PHYS_BASE + v unless a test remaps it, so a cache that confuses virtual and physical addresses
 * fails here. Blocks come from a static pool and are never really freed: free_tb only counts, so
 * every test can look at an invalid block afterwards, and the teardown checks that each block
 * the cache accepted was reclaimed exactly once (after vck_tb_cache_free) and no other ever was.
 *
 * Three tests use a second thread: one holding a read-side section (reclamation must wait for
 * it), one blocking on a page a collection holds, and one publishing blocks while this thread
 * finds each as soon as it is visible (the host map must already know it).
 *
 * This binary links a tbcache built with the lock checker (VCK_TB_DEBUG_LOCKS) in every preset,
 * so the tests that expect the checker to abort do so in release builds too.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vcpukit/rcu.h>
#include <vcpukit/tbcache.h>

#include "stress.h" /* vck_rand() only */

#define PAGE       4096ull
#define PHYS_BASE  0x100ull /* physical page number of virtual page 0 */
#define UNMAPPED   UINT64_MAX
#define VPAGES     64
#define POOL       96
#define MAX_EVENTS 1024
/* The default jump cache (jc_bits 12): 64 groups of 64 slots, a group per virtual page. */
#define JC_GROUP_BITS 6

struct blk {
    struct vck_tb tb;
    bool accepted;      /* vck_tb_add returned this very block */
    _Atomic int frees;  /* free_tb calls for it */
    _Atomic bool valid; /* cflags had no INVALID flag when free_tb ran (a bug) */
};

struct page_event {
    uint64_t addr;
    bool has_code;
};

struct jump_event {
    struct vck_tb *from;
    int n;
    struct vck_tb *to;
};

static struct world {
    struct vck_tb_cache *c;
    struct vck_tb_cpu *cpu;
    uint64_t map[VPAGES]; /* physical page number of each virtual page, or UNMAPPED */
    uint64_t page_size;   /* the cache's page size (the map's pages are always 4 KiB) */
    struct blk pool[POOL];
    size_t used;
    struct blk *extra; /* a test's own blocks beyond the pool, checked like them */
    size_t n_extra;
    _Atomic unsigned frees, foreign_frees;
    struct page_event pev[MAX_EVENTS];
    size_t n_pev;
    struct jump_event jev[MAX_EVENTS];
    size_t n_jev;
} w;

static bool phys_of(void *opaque, uint64_t vaddr, uint64_t *phys)
{
    struct world *wp = opaque;
    uint64_t vpage = vaddr / PAGE;
    if (vpage >= VPAGES || wp->map[vpage] == UNMAPPED)
        return false;
    *phys = wp->map[vpage] * PAGE + vaddr % PAGE;
    return true;
}

static uint64_t phys(uint64_t vaddr)
{
    uint64_t p = 0;
    cr_assert(phys_of(&w, vaddr, &p), "fixture: virtual %#llx is unmapped",
              (unsigned long long)vaddr);
    return p;
}

/* Runs on liburcu's callback thread: only counts; the main thread checks at the end. */
static void free_tb(void *opaque, struct vck_tb *tb)
{
    struct world *wp = opaque;
    struct blk *b = (struct blk *)tb;
    if ((b < wp->pool || b >= wp->pool + POOL) &&
        (!wp->extra || b < wp->extra || b >= wp->extra + wp->n_extra)) {
        atomic_fetch_add(&wp->foreign_frees, 1);
        return;
    }
    if (!(atomic_load(&tb->cflags) & VCK_TB_CF_INVALID))
        atomic_store(&b->valid, true);
    atomic_fetch_add(&b->frees, 1);
    atomic_fetch_add(&wp->frees, 1);
}

static void page_code(void *opaque, uint64_t phys_page_addr, bool has_code)
{
    struct world *wp = opaque;
    cr_assert_lt(wp->n_pev, MAX_EVENTS);
    wp->pev[wp->n_pev++] = (struct page_event){phys_page_addr, has_code};
}

static void jump_set(void *opaque, struct vck_tb *from, int n, struct vck_tb *to)
{
    struct world *wp = opaque;
    cr_assert_lt(wp->n_jev, MAX_EVENTS);
    wp->jev[wp->n_jev++] = (struct jump_event){from, n, to};
}

static void setup_opts(const struct vck_tb_cache_options *extra)
{
    vck_rcu_register_thread();
    for (uint64_t v = 0; v < VPAGES; v++)
        w.map[v] = PHYS_BASE + v;
    struct vck_tb_cache_options o = {0};
    if (extra)
        o = *extra;
    w.page_size = o.page_bits ? 1ull << o.page_bits : PAGE;
    o.free_tb = free_tb;
    o.page_code = page_code;
    o.jump_set = jump_set;
    o.opaque = &w;
    w.c = vck_tb_cache_new(&o);
    cr_assert_not_null(w.c);
    w.cpu = vck_tb_cpu_new(w.c);
    cr_assert_not_null(w.cpu);
}

static void setup(void)
{
    setup_opts(NULL);
}

/* Frees everything and checks reclamation: each accepted block exactly once, no other ever. */
static void teardown(void)
{
    vck_tb_cpu_free(w.cpu);
    vck_tb_cache_free(w.c);
    for (size_t i = 0; i < w.used + w.n_extra; i++) {
        struct blk *b = i < w.used ? &w.pool[i] : &w.extra[i - w.used];
        int frees = atomic_load(&b->frees);
        cr_expect_eq(frees, b->accepted ? 1 : 0, "block %zu (pc %#llx, %s) reclaimed %d times", i,
                     (unsigned long long)b->tb.pc, b->accepted ? "accepted" : "refused", frees);
        cr_expect(!atomic_load(&b->valid), "block %zu reclaimed while still valid", i);
    }
    cr_expect_eq(atomic_load(&w.foreign_frees), 0, "free_tb handed a block that is not ours");
    free(w.extra);
    vck_tb_assert_no_page_locks();
    vck_rcu_unregister_thread();
}

/* A block at virtual @pc, its physical pages and generations read now, as a translator would. */
static struct blk *blk_new(uint64_t pc, uint32_t size, uint32_t flags, uint32_t cflags)
{
    cr_assert_lt(w.used, POOL, "fixture: block pool exhausted");
    struct blk *b = &w.pool[w.used++];
    memset(b, 0, sizeof(*b));
    b->tb.pc = pc;
    b->tb.phys_pc = phys(pc);
    b->tb.flags = flags;
    b->tb.size = size;
    b->tb.phys_page2 = VCK_TB_NO_PAGE2;
    b->tb.page_gen[0] = vck_tb_page_gen(w.c, b->tb.phys_pc);
    if ((pc + size - 1) / w.page_size != pc / w.page_size) {
        b->tb.phys_page2 = phys((pc / w.page_size + 1) * w.page_size);
        b->tb.page_gen[1] = vck_tb_page_gen(w.c, b->tb.phys_page2);
    }
    atomic_init(&b->tb.cflags, cflags);
    return b;
}

static struct vck_tb *add(struct blk *b, struct vck_tb_cpu *cpu)
{
    struct vck_tb *r = vck_tb_add(w.c, cpu, &b->tb);
    if (r == &b->tb)
        b->accepted = true;
    return r;
}

/* A block added with the fixture's vCPU (so it sits in that vCPU's jump cache). */
static struct vck_tb *added(uint64_t pc, uint32_t size)
{
    struct blk *b = blk_new(pc, size, 0, 0);
    struct vck_tb *r = add(b, w.cpu);
    cr_assert_eq(r, &b->tb, "add of a new block at %#llx returned %p", (unsigned long long)pc,
                 (void *)r);
    return r;
}

/*
 * The lookups look_on() made, per vCPU: a jump-cache hit counts nothing in the vCPU, so its hits
 * are these less its table_lookups.
 */
static struct {
    const struct vck_tb_cpu *cpu;
    uint64_t n;
} lookups_made[8];

static uint64_t *lookups_made_by(const struct vck_tb_cpu *cpu)
{
    for (size_t i = 0; i < sizeof(lookups_made) / sizeof(lookups_made[0]); i++) {
        if (!lookups_made[i].cpu)
            lookups_made[i].cpu = cpu;
        if (lookups_made[i].cpu == cpu)
            return &lookups_made[i].n;
    }
    cr_assert_fail("more vCPUs than lookups_made[] tracks");
    return NULL;
}

/* Lookups in their own read-side section; the result is only compared or read before barriers. */
static struct vck_tb *look_on(struct vck_tb_cpu *cpu, uint64_t pc, uint32_t flags, uint32_t cflags)
{
    ++*lookups_made_by(cpu);
    vck_rcu_read_lock();
    struct vck_tb *tb = vck_tb_lookup(cpu, pc, flags, cflags, phys_of, &w);
    vck_rcu_read_unlock();
    return tb;
}

static struct vck_tb *look(uint64_t pc)
{
    return look_on(w.cpu, pc, 0, 0);
}

static bool is_invalid(const struct vck_tb *tb)
{
    return atomic_load(&tb->cflags) & VCK_TB_CF_INVALID;
}

struct counts {
    uint64_t jc_hits, table_lookups, table_hits;
};

static struct counts counts_of(const struct vck_tb_cpu *cpu)
{
    uint64_t made = *lookups_made_by(cpu);
    return (struct counts){made - cpu->table_lookups, cpu->table_lookups, cpu->table_hits};
}

/* The vCPU's counters moved by exactly (jc, lookups, hits) since @before. */
#define expect_counts(cpu, before, jc, lookups, hits, what)                                        \
    do {                                                                                           \
        struct counts now_ = counts_of(cpu);                                                       \
        cr_expect_eq(now_.jc_hits - (before).jc_hits, (uint64_t)(jc), "%s: jc_hits +%llu", what,   \
                     (unsigned long long)(now_.jc_hits - (before).jc_hits));                       \
        cr_expect_eq(now_.table_lookups - (before).table_lookups, (uint64_t)(lookups),             \
                     "%s: table_lookups +%llu", what,                                              \
                     (unsigned long long)(now_.table_lookups - (before).table_lookups));           \
        cr_expect_eq(now_.table_hits - (before).table_hits, (uint64_t)(hits),                      \
                     "%s: table_hits +%llu", what,                                                 \
                     (unsigned long long)(now_.table_hits - (before).table_hits));                 \
    } while (0)

static struct vck_tb_cache_stats stats(void)
{
    struct vck_tb_cache_stats st;
    memset(&st, 0xa5, sizeof(st)); /* a field left unfilled shows up as garbage */
    vck_tb_cache_get_stats(w.c, &st);
    return st;
}

/* The page_code calls since the last check were exactly @want, in any order. */
static void expect_page_events(const struct page_event *want, size_t n, const char *what)
{
    cr_expect_eq(w.n_pev, n, "%s: %zu page_code calls, expected %zu", what, w.n_pev, n);
    bool used[MAX_EVENTS] = {0};
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < w.n_pev &&
               (used[j] || w.pev[j].addr != want[i].addr || w.pev[j].has_code != want[i].has_code))
            j++;
        cr_expect_lt(j, w.n_pev, "%s: no page_code(%#llx, %d) call", what,
                     (unsigned long long)want[i].addr, want[i].has_code);
        if (j < w.n_pev)
            used[j] = true;
    }
    w.n_pev = 0;
}

static void expect_jump_events(const struct jump_event *want, size_t n, const char *what)
{
    cr_expect_eq(w.n_jev, n, "%s: %zu jump_set calls, expected %zu", what, w.n_jev, n);
    for (size_t i = 0; i < n && i < w.n_jev; i++)
        cr_expect(w.jev[i].from == want[i].from && w.jev[i].n == want[i].n &&
                      w.jev[i].to == want[i].to,
                  "%s: jump_set call %zu was (%p, %d, %p), expected (%p, %d, %p)", what, i,
                  (void *)w.jev[i].from, w.jev[i].n, (void *)w.jev[i].to, (void *)want[i].from,
                  want[i].n, (void *)want[i].to);
    w.n_jev = 0;
}

/* Jump targets and links are read inside a read-side section, as the contract asks. */
static struct vck_tb *target(const struct vck_tb *tb, int n)
{
    vck_rcu_read_lock();
    struct vck_tb *t = vck_tb_jump_target(tb, n);
    vck_rcu_read_unlock();
    return t;
}

static bool link_(struct vck_tb *from, int n, struct vck_tb *to)
{
    vck_rcu_read_lock();
    bool ok = vck_tb_link(from, n, to);
    vck_rcu_read_unlock();
    return ok;
}

static struct vck_tb *host(const void *addr)
{
    vck_rcu_read_lock();
    struct vck_tb *tb = vck_tb_find_by_host(w.c, addr);
    vck_rcu_read_unlock();
    return tb;
}

/* ---- adds and lookups -------------------------------------------------------------------- */

TestSuite(tbcache, .init = setup, .fini = teardown);

Test(tbcache, a_block_added_with_its_vcpu_is_a_jump_cache_hit)
{
    struct vck_tb *a = added(0x1000, 16);
    struct counts before = counts_of(w.cpu);
    cr_expect_eq(look(0x1000), a);
    cr_expect_eq(look(0x1000), a);
    expect_counts(w.cpu, before, 2, 0, 0, "two lookups of a block in the jump cache");
    cr_expect(!is_invalid(a));
}

Test(tbcache, a_table_hit_fills_the_jump_cache)
{
    struct blk *b = blk_new(0x2010, 32, 0, 0);
    cr_assert_eq(add(b, NULL), &b->tb);
    struct counts before = counts_of(w.cpu);
    cr_expect_eq(look(0x2010), &b->tb);
    expect_counts(w.cpu, before, 0, 1, 1, "first lookup of a block added without a vCPU");
    before = counts_of(w.cpu);
    cr_expect_eq(look(0x2010), &b->tb);
    expect_counts(w.cpu, before, 1, 0, 0, "second lookup, after the table hit filled the cache");
}

Test(tbcache, a_lookup_misses_when_the_pc_is_not_mapped)
{
    struct vck_tb *a = added(0x3000, 8);
    vck_tb_jc_flush_all(w.cpu);
    w.map[3] = UNMAPPED;
    struct counts before = counts_of(w.cpu);
    cr_expect_null(look(0x3000));
    expect_counts(w.cpu, before, 0, 1, 0, "lookup of an unmapped pc");
    /* Mapped elsewhere: the physical PC is part of the key. */
    w.map[3] = PHYS_BASE + 40;
    cr_expect_null(look(0x3000));
    w.map[3] = PHYS_BASE + 3;
    before = counts_of(w.cpu);
    cr_expect_eq(look(0x3000), a);
    expect_counts(w.cpu, before, 0, 1, 1, "lookup once the mapping is back");
}

Test(tbcache, every_key_field_must_match)
{
    struct blk *b = blk_new(0x1000, 16, 5, 7);
    cr_assert_eq(add(b, w.cpu), &b->tb);
    struct counts before = counts_of(w.cpu);
    cr_expect_eq(look_on(w.cpu, 0x1000, 5, 7), &b->tb);
    expect_counts(w.cpu, before, 1, 0, 0, "exact key");
    /* The jump cache holds this block for the slot; none of these may take it. */
    before = counts_of(w.cpu);
    cr_expect_null(look_on(w.cpu, 0x1000, 4, 7), "flags differ");
    cr_expect_null(look_on(w.cpu, 0x1000, 5, 6), "cflags differ");
    cr_expect_null(look_on(w.cpu, 0x1001, 5, 7), "pc differs");
    cr_expect_null(look_on(w.cpu, 0x1000 + PAGE, 5, 7), "another page");
    expect_counts(w.cpu, before, 0, 4, 0, "four lookups with a wrong key");
    cr_expect_eq(look_on(w.cpu, 0x1000, 5, 7), &b->tb);
}

Test(tbcache, blocks_that_differ_only_in_flags_coexist)
{
    struct blk *a = blk_new(0x5000, 16, 0, 0), *b = blk_new(0x5000, 16, 1, 0);
    struct blk *c = blk_new(0x5000, 16, 0, 2);
    cr_assert_eq(add(a, w.cpu), &a->tb);
    cr_assert_eq(add(b, w.cpu), &b->tb);
    cr_assert_eq(add(c, w.cpu), &c->tb);
    cr_expect_eq(look_on(w.cpu, 0x5000, 0, 0), &a->tb);
    cr_expect_eq(look_on(w.cpu, 0x5000, 1, 0), &b->tb);
    cr_expect_eq(look_on(w.cpu, 0x5000, 0, 2), &c->tb);
    cr_expect_eq(stats().blocks, 3);
}

Test(tbcache, a_duplicate_add_returns_the_block_already_there)
{
    struct vck_tb *a = added(0x4000, 24);
    w.n_pev = 0;
    struct blk *dup = blk_new(0x4000, 24, 0, 0);
    cr_expect_eq(add(dup, w.cpu), a, "second translation of the same code");
    cr_expect_eq(look(0x4000), a);
    vck_tb_jc_flush_all(w.cpu);
    cr_expect_eq(look(0x4000), a);
    expect_page_events(NULL, 0, "a refused duplicate");
    cr_expect(vck_tb_page_has_code(w.c, phys(0x4000)));
    struct vck_tb_cache_stats st = stats();
    cr_expect_eq(st.added, 1);
    cr_expect_eq(st.duplicates, 1);
    cr_expect_eq(st.blocks, 1);
    /* The refused copy is the caller's: the cache never reclaims it (checked at teardown). */
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&dup->frees), 0);
}

Test(tbcache, an_add_after_its_page_was_invalidated_is_refused)
{
    struct blk *b = blk_new(0x6000, 16, 0, 0);
    uint32_t gen = vck_tb_page_gen(w.c, phys(0x6000));
    /* A store to the page between reading its generation and adding (another vCPU's). */
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x6800), phys(0x6803)), 0);
    cr_expect_neq(vck_tb_page_gen(w.c, phys(0x6000)), gen, "invalidation left the gen alone");
    w.n_pev = 0;
    cr_expect_null(add(b, w.cpu), "stale add accepted");
    cr_expect_null(look(0x6000));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x6000)));
    expect_page_events(NULL, 0, "a stale add");
    struct vck_tb_cache_stats st = stats();
    cr_expect_eq(st.stale_adds, 1);
    cr_expect_eq(st.added, 0);
    cr_expect_eq(st.blocks, 0);
    /* Translated again, with the new generation: accepted. */
    struct blk *again = blk_new(0x6000, 16, 0, 0);
    cr_expect_eq(add(again, w.cpu), &again->tb);
    cr_expect_eq(look(0x6000), &again->tb);
}

Test(tbcache, an_add_is_stale_when_its_second_page_was_invalidated)
{
    struct blk *b = blk_new(0x7ff8, 16, 0, 0);
    cr_assert_neq(b->tb.phys_page2, VCK_TB_NO_PAGE2);
    vck_tb_invalidate_range(w.c, phys(0x8f00), phys(0x8f00));
    cr_expect_null(add(b, w.cpu));
    cr_expect_eq(stats().stale_adds, 1);
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x7000)));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x8000)));
}

Test(tbcache, invalidating_other_pages_leaves_an_add_fresh)
{
    struct blk *b = blk_new(0x9000, 16, 0, 0);
    vck_tb_invalidate_range(w.c, phys(0xa000), phys(0xafff));
    vck_tb_invalidate_range(w.c, phys(0x8000), phys(0x8fff));
    cr_expect_eq(add(b, w.cpu), &b->tb);
    cr_expect_eq(stats().stale_adds, 0);
}

/* ---- blocks spanning two pages ------------------------------------------------------------ */

Test(tbcache, a_spanning_block_is_keyed_by_its_second_page)
{
    /* 0x1ff0 + 0x20: the last 16 bytes of virtual page 1 and the first 16 of page 2. */
    struct blk *b = blk_new(0x1ff0, 0x20, 0, 0);
    cr_assert_eq(b->tb.phys_page2, (PHYS_BASE + 2) * PAGE);
    cr_assert_eq(add(b, NULL), &b->tb);
    struct vck_tb *single = added(0x1800, 16);
    struct counts before = counts_of(w.cpu);
    cr_expect_eq(look(0x1ff0), &b->tb);
    expect_counts(w.cpu, before, 0, 1, 1, "spanning block found in the table");
    cr_expect(vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect(vck_tb_page_has_code(w.c, phys(0x2000)));

    /* The guest remaps virtual page 2 and flushes its jump-cache groups (pages 1 and 2). */
    w.map[2] = PHYS_BASE + 50;
    vck_tb_jc_flush_page(w.cpu, 0x2000);
    cr_expect_null(look(0x1ff0), "found although its second page now maps elsewhere");
    w.map[2] = UNMAPPED;
    cr_expect_null(look(0x1ff0), "found although its second page is unmapped");
    cr_expect_eq(look(0x1800), single, "a block that stays in page 1 depends on page 2");
    w.map[2] = PHYS_BASE + 2;
    before = counts_of(w.cpu);
    cr_expect_eq(look(0x1ff0), &b->tb, "not found once the mapping is back");
    expect_counts(w.cpu, before, 0, 1, 1, "lookup once page 2 is mapped back");

    /* Another translation for the new mapping is a different block, not a duplicate. */
    w.map[2] = PHYS_BASE + 50;
    vck_tb_jc_flush_page(w.cpu, 0x2000);
    struct blk *other = blk_new(0x1ff0, 0x20, 0, 0);
    cr_expect_eq(add(other, w.cpu), &other->tb);
    cr_expect_eq(look(0x1ff0), &other->tb);
    w.map[2] = PHYS_BASE + 2;
    vck_tb_jc_flush_page(w.cpu, 0x2000);
    cr_expect_eq(look(0x1ff0), &b->tb);
    cr_expect_eq(stats().duplicates, 0);
}

Test(tbcache, invalidating_the_first_page_of_a_spanning_block)
{
    struct vck_tb *b = added(0x1ff0, 0x20);
    w.n_pev = 0;
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1ffc), phys(0x1ffc)), 1);
    cr_expect(is_invalid(b));
    cr_expect_null(look(0x1ff0));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x2000)));
    struct page_event want[] = {{phys(0x1000), false}, {phys(0x2000), false}};
    expect_page_events(want, 2, "the only block of two pages invalidated");
}

Test(tbcache, invalidating_the_second_page_of_a_spanning_block)
{
    struct vck_tb *b = added(0x1ff0, 0x20);
    struct vck_tb *on2 = added(0x2100, 8);
    /* Byte 0x200f is the block's last; 0x2010 is past it. */
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x2010), phys(0x20ff)), 0);
    cr_expect(!is_invalid(b));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x200f), phys(0x200f)), 1);
    cr_expect(is_invalid(b));
    cr_expect_null(look(0x1ff0));
    cr_expect_eq(look(0x2100), on2);
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect(vck_tb_page_has_code(w.c, phys(0x2000)));
}

Test(tbcache, a_block_whose_two_pages_map_to_one_physical_page)
{
    /*
     * Virtual pages 1 and 2 both map to physical page PHYS_BASE + 1 (a mirrored mapping): the
     * block's last 16 bytes are the first 16 of the same physical page, so a store there is a
     * store to its code.
     */
    w.map[2] = w.map[1];
    struct vck_tb *b = added(0x1ff0, 0x20);
    cr_assert_eq(b->phys_page2, phys(0x1000));
    cr_expect_eq(look(0x1ff0), b);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1010), phys(0x1fef)), 0);
    cr_expect(!is_invalid(b));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1005), phys(0x1005)), 1,
                 "a store to the block's second part left it valid");
    cr_expect(is_invalid(b));
    cr_expect_null(look(0x1ff0));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
}

Test(tbcache, a_spanning_block_survives_ranges_that_miss_it_on_both_pages)
{
    struct vck_tb *b = added(0x1ff0, 0x20);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1000), phys(0x1fef)), 0);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x2010), phys(0x2fff)), 0);
    cr_expect(!is_invalid(b));
    cr_expect_eq(look(0x1ff0), b);
}

/* ---- range invalidation ------------------------------------------------------------------ */

/* Tests that a broken cache could deadlock carry a timeout, so that they fail instead. */

Test(tbcache, pages_far_apart_have_their_own_descriptors, .timeout = 20)
{
    /* Physical pages in other radix leaves and levels, up to the last page of the space. */
    static const uint64_t ppage[] = {0x5, 0x5 + (1u << 10), 0x5 + (1u << 24), 0x5 + (1ull << 38),
                                     (1ull << 52) - 1};
    enum { N = sizeof(ppage) / sizeof(ppage[0]) };
    uint32_t gen[N];
    struct vck_tb *tb[N];
    for (int i = 0; i < N; i++) {
        w.map[10 + i] = ppage[i];
        gen[i] = vck_tb_page_gen(w.c, ppage[i] * PAGE);
    }
    for (int i = 0; i < N; i++) {
        tb[i] = added((uint64_t)(10 + i) * PAGE + 0x100, 16);
        for (int j = 0; j < N; j++)
            cr_expect_eq(vck_tb_page_has_code(w.c, ppage[j] * PAGE), j <= i,
                         "after adding to physical page %#llx, page %#llx says %d",
                         (unsigned long long)ppage[i], (unsigned long long)ppage[j],
                         vck_tb_page_has_code(w.c, ppage[j] * PAGE));
    }
    cr_expect_eq(vck_tb_invalidate_range(w.c, ppage[N - 1] * PAGE, UINT64_MAX), 1);
    cr_expect(is_invalid(tb[N - 1]));
    for (int i = 0; i < N - 1; i++) {
        cr_expect(!is_invalid(tb[i]), "page %#llx lost its block", (unsigned long long)ppage[i]);
        cr_expect_eq(vck_tb_page_gen(w.c, ppage[i] * PAGE), gen[i]);
        cr_expect_eq(look((uint64_t)(10 + i) * PAGE + 0x100), tb[i]);
    }
    cr_expect_neq(vck_tb_page_gen(w.c, ppage[N - 1] * PAGE), gen[N - 1]);
    for (int i = 0; i < N - 1; i++)
        cr_expect_eq(vck_tb_invalidate_range(w.c, ppage[i] * PAGE, ppage[i] * PAGE + PAGE - 1), 1);
}

Test(tbcache, a_range_without_descriptors_allocates_nothing, .timeout = 20)
{
    /* Blocks on the fixture's pages and on the very last page of the physical space. */
    struct vck_tb *low = added(0x1000, 16), *low2 = added(0x5000, 16);
    w.map[12] = (1ull << 52) - 1;
    struct vck_tb *top = added(12 * PAGE + 0x10, 16);
    uint64_t leaves = stats().page_leaves;
    cr_assert_gt(leaves, 0);

    /* Every page between them has no descriptor: skipped whole, nothing allocated. */
    cr_expect_eq(vck_tb_invalidate_range(w.c, 1ull << 30, ((1ull << 52) - 1) * PAGE - 1), 0);
    cr_expect_eq(vck_tb_invalidate_range(w.c, 1ull << 44, 1ull << 62), 0);
    cr_expect_eq(stats().page_leaves, leaves, "an invalidation allocated descriptors");
    cr_expect(!is_invalid(low) && !is_invalid(low2) && !is_invalid(top));

    /* An empty range: nothing, not the whole space the wrap-around would make of it. */
    uint32_t gen = vck_tb_page_gen(w.c, phys(0x1000));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1008), phys(0x1007)), 0);
    cr_expect_eq(vck_tb_invalidate_range(w.c, UINT64_MAX, 0), 0);
    cr_expect_eq(vck_tb_page_gen(w.c, phys(0x1000)), gen, "an empty range bumped a generation");
    cr_expect(!is_invalid(low));

    /* The whole space: exactly the three blocks, still without new descriptors. */
    cr_expect_eq(vck_tb_invalidate_range(w.c, 0, UINT64_MAX), 3);
    cr_expect(is_invalid(low) && is_invalid(low2) && is_invalid(top));
    cr_expect_neq(vck_tb_page_gen(w.c, phys(0x1000)), gen);
    cr_expect_eq(stats().page_leaves, leaves);
    cr_expect_null(look(0x1000));
    cr_expect_null(look(12 * PAGE + 0x10));
}

Test(tbcache, invalidate_range_takes_exactly_the_overlapping_blocks)
{
    struct vck_tb *a = added(0x1000, 16);    /* [0x1000, 0x100f] */
    struct vck_tb *b = added(0x1010, 16);    /* [0x1010, 0x101f] */
    struct vck_tb *c = added(0x1100, 0x100); /* [0x1100, 0x11ff] */
    struct vck_tb *d = added(0x1020, 1);     /* [0x1020] */

    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1021), phys(0x10ff)), 0, "gap");
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1200), phys(0x1fff)), 0, "tail of page");
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x100f), phys(0x1010)), 2, "a's end, b's start");
    cr_expect(is_invalid(a) && is_invalid(b));
    cr_expect(!is_invalid(c) && !is_invalid(d));
    cr_expect_null(look(0x1000));
    cr_expect_null(look(0x1010));
    cr_expect_eq(look(0x1100), c, "a block elsewhere on the page was lost");
    cr_expect_eq(look(0x1020), d);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1020), phys(0x1020)), 1, "a one-byte block");
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x11ff), phys(0x1300)), 1, "c's last byte");
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect_eq(stats().invalidated, 4);
    cr_expect_eq(stats().blocks, 0);
}

Test(tbcache, invalidate_range_over_many_pages)
{
    /* More pages than one locking chunk, blocks at both ends and a spanning one in between. */
    struct vck_tb *lo = added(0x0, 4);
    struct vck_tb *mid = added(0x13ffe, 4);
    struct vck_tb *across = added(0xfffe, 4); /* pages 15 and 16: two chunks */
    struct vck_tb *hi = added(0x28000, 4);
    struct vck_tb *out = added(0x29000, 4);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x0), phys(0x28000)), 4);
    cr_expect(is_invalid(lo) && is_invalid(mid) && is_invalid(across) && is_invalid(hi));
    cr_expect(!is_invalid(out));
    cr_expect_eq(look(0x29000), out);
    for (uint64_t v = 0; v <= 0x28; v++)
        cr_expect(!vck_tb_page_has_code(w.c, phys(v * PAGE)), "page %llu", (unsigned long long)v);
}

Test(tbcache, invalidating_a_range_bumps_every_page_generation_in_it)
{
    uint32_t g[4];
    for (int i = 0; i < 4; i++)
        g[i] = vck_tb_page_gen(w.c, phys((uint64_t)(10 + i) * PAGE));
    vck_tb_invalidate_range(w.c, phys(11 * PAGE + 5), phys(12 * PAGE + 5));
    cr_expect_eq(vck_tb_page_gen(w.c, phys(10 * PAGE)), g[0]);
    cr_expect_neq(vck_tb_page_gen(w.c, phys(11 * PAGE)), g[1]);
    cr_expect_neq(vck_tb_page_gen(w.c, phys(12 * PAGE)), g[2]);
    cr_expect_eq(vck_tb_page_gen(w.c, phys(13 * PAGE)), g[3]);
}

Test(tbcache, invalidate_one_block)
{
    struct vck_tb *a = added(0x1000, 16);
    struct vck_tb *b = added(0x1010, 16);
    /* Held across, so that neither block is reclaimed while we call in with it. */
    vck_rcu_read_lock();
    cr_expect(vck_tb_invalidate(a));
    cr_expect(is_invalid(a));
    cr_expect(!vck_tb_invalidate(a), "invalidated twice");
    cr_expect(!is_invalid(b));
    cr_expect_null(vck_tb_lookup(w.cpu, 0x1000, 0, 0, phys_of, &w));
    cr_expect_eq(vck_tb_lookup(w.cpu, 0x1010, 0, 0, phys_of, &w), b);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1000), phys(0x101f)), 1);
    cr_expect(!vck_tb_invalidate(b));
    vck_rcu_read_unlock();
    cr_expect_eq(stats().invalidated, 2);
}

/* ---- chaining ---------------------------------------------------------------------------- */

Test(tbcache, link_and_jump_target)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x1010, 16), *c = added(0x2000, 16);
    cr_expect_null(target(a, 0));
    cr_expect_null(target(a, 1));
    cr_expect(link_(a, 0, b));
    cr_expect_eq(target(a, 0), b);
    cr_expect_null(target(a, 1));
    cr_expect(!link_(a, 0, c), "an exit already chained was linked again");
    cr_expect_eq(target(a, 0), b);
    cr_expect(link_(a, 1, c));
    cr_expect_eq(target(a, 1), c);
    struct jump_event want[] = {{a, 0, b}, {a, 1, c}};
    expect_jump_events(want, 2, "two links");
}

Test(tbcache, linking_into_an_invalid_block_fails)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x1010, 16);
    vck_rcu_read_lock(); /* keeps b from being reclaimed while we link to it */
    cr_expect(vck_tb_invalidate(b));
    cr_expect(!vck_tb_link(a, 0, b), "linked into an invalid block");
    cr_expect_null(vck_tb_jump_target(a, 0));
    vck_rcu_read_unlock();
    expect_jump_events(NULL, 0, "a refused link");
    cr_expect(link_(a, 0, added(0x1010, 16)), "exit unusable after a refused link");
}

Test(tbcache, invalidating_the_target_resets_the_exits_into_it)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x1010, 16), *c = added(0x1020, 16);
    cr_assert(link_(a, 0, b));
    cr_assert(link_(a, 1, b));
    w.n_jev = 0;
    cr_expect(vck_tb_invalidate(b));
    cr_expect_null(target(a, 0), "exit 0 still leads to an invalidated block");
    cr_expect_null(target(a, 1), "exit 1 still leads to an invalidated block");
    cr_expect(!is_invalid(a));
    cr_expect_eq(w.n_jev, 2);
    for (size_t i = 0; i < w.n_jev; i++)
        cr_expect(w.jev[i].from == a && w.jev[i].to == NULL, "reset %zu: (%p, %d, %p)", i,
                  (void *)w.jev[i].from, w.jev[i].n, (void *)w.jev[i].to);
    cr_expect(w.n_jev == 2 && w.jev[0].n != w.jev[1].n, "both exits reset once each");
    w.n_jev = 0;
    /* The exits are free again. */
    cr_expect(link_(a, 0, c));
    cr_expect_eq(target(a, 0), c);
}

Test(tbcache, an_invalidated_source_has_dead_exits)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x1010, 16), *c = added(0x1020, 16);
    cr_assert(link_(a, 0, b));
    w.n_jev = 0;
    vck_rcu_read_lock();
    cr_expect(vck_tb_invalidate(a));
    cr_expect_null(vck_tb_jump_target(a, 0));
    cr_expect_null(vck_tb_jump_target(a, 1));
    cr_expect(!vck_tb_link(a, 0, c), "linked exit 0 of an invalid block");
    cr_expect(!vck_tb_link(a, 1, c), "linked exit 1 of an invalid block");
    vck_rcu_read_unlock();
    struct jump_event want[] = {{a, 0, NULL}};
    expect_jump_events(want, 1, "invalidating a chained source");
    /* a left b's incoming list: invalidating b must not touch a's (dead) exit. */
    cr_expect(vck_tb_invalidate(b));
    expect_jump_events(NULL, 0, "invalidating the former target");
    cr_expect(!is_invalid(c));
}

Test(tbcache, a_block_with_several_sources)
{
    struct vck_tb *t = added(0x3000, 16);
    struct vck_tb *s[5];
    for (int i = 0; i < 5; i++)
        s[i] = added(0x1000 + 0x10 * (uint64_t)i, 16);
    for (int i = 0; i < 5; i++)
        cr_assert(link_(s[i], i & 1, t));
    w.n_jev = 0;
    /* Leave from the middle, the first and the last linked of the incoming list. */
    cr_expect(vck_tb_invalidate(s[2]));
    cr_expect(vck_tb_invalidate(s[0]));
    cr_expect(vck_tb_invalidate(s[4]));
    w.n_jev = 0;
    cr_expect(vck_tb_invalidate(t));
    cr_expect_eq(w.n_jev, 2, "%zu exits reset, expected s1.1 and s3.1", w.n_jev);
    bool seen1 = false, seen3 = false;
    for (size_t i = 0; i < w.n_jev; i++) {
        cr_expect_null(w.jev[i].to);
        cr_expect_eq(w.jev[i].n, 1);
        seen1 |= w.jev[i].from == s[1];
        seen3 |= w.jev[i].from == s[3];
    }
    cr_expect(seen1 && seen3, "the remaining sources were not both reset");
    w.n_jev = 0;
    cr_expect_null(target(s[1], 1));
    cr_expect_null(target(s[3], 1));
    struct vck_tb *u = added(0x3000, 16);
    cr_expect(link_(s[1], 1, u));
    cr_expect(link_(s[3], 1, u));
    cr_expect(link_(s[3], 0, u));
    cr_expect(vck_tb_invalidate(s[3]));
    cr_expect(vck_tb_invalidate(u));
    struct jump_event want[] = {{s[1], 1, u},    {s[3], 1, u},    {s[3], 0, u},
                                {s[3], 0, NULL}, {s[3], 1, NULL}, {s[1], 1, NULL}};
    /* s3's exits may be reset in either order. */
    if (w.n_jev == 6 && w.jev[3].n == 1) {
        want[3].n = 1;
        want[4].n = 0;
    }
    expect_jump_events(want, 6, "relinking, then invalidating a source and the target");
}

Test(tbcache, a_block_chained_to_itself)
{
    struct vck_tb *a = added(0x1000, 16);
    cr_assert(link_(a, 0, a));
    cr_expect_eq(target(a, 0), a);
    cr_expect(vck_tb_invalidate(a));
    cr_expect_null(target(a, 0));
    struct jump_event want[] = {{a, 0, a}, {a, 0, NULL}};
    expect_jump_events(want, 2, "a loop");
}

Test(tbcache, invalidate_range_unlinks_chains)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x5000, 16);
    cr_assert(link_(a, 0, b));
    cr_assert(link_(b, 1, a));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x5000), phys(0x5000)), 1);
    cr_expect_null(target(a, 0));
    cr_expect(!is_invalid(a));
    cr_expect(link_(a, 0, a), "exit reset by the range invalidation is not usable");
}

/* ---- the page_code hook and vck_tb_page_has_code ------------------------------------------ */

Test(tbcache, page_code_reports_the_first_and_the_last_block_of_a_page)
{
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect(!vck_tb_page_has_code(w.c, 0x7654321000ull), "a page never seen");
    struct vck_tb *a = added(0x1000, 16);
    struct page_event first[] = {{phys(0x1000), true}};
    expect_page_events(first, 1, "first block of page 1");
    cr_expect(vck_tb_page_has_code(w.c, phys(0x1abc)));
    struct vck_tb *b = added(0x1100, 16);
    expect_page_events(NULL, 0, "second block of page 1");
    struct vck_tb *c = added(0x1ff8, 16);
    struct page_event second[] = {{phys(0x2000), true}};
    expect_page_events(second, 1, "a block reaching into page 2");
    cr_expect(vck_tb_page_has_code(w.c, phys(0x2000)));

    cr_expect(vck_tb_invalidate(a));
    cr_expect(vck_tb_invalidate(c));
    struct page_event gone2[] = {{phys(0x2000), false}};
    expect_page_events(gone2, 1, "page 2 loses its only block, page 1 keeps one");
    cr_expect(vck_tb_page_has_code(w.c, phys(0x1000)));
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x2000)));
    cr_expect(vck_tb_invalidate(b));
    struct page_event gone1[] = {{phys(0x1000), false}};
    expect_page_events(gone1, 1, "page 1 loses its last block");
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x1000)));
    added(0x1200, 4);
    expect_page_events(first, 1, "page 1 gets code again");
}

/* ---- jump caches ------------------------------------------------------------------------- */

Test(tbcache, jc_flush_page_clears_that_page_and_the_one_before)
{
    /* Three blocks per page on virtual pages 4..7, all in the jump cache. */
    struct vck_tb *tb[4][3];
    for (int p = 0; p < 4; p++)
        for (int i = 0; i < 3; i++)
            tb[p][i] = added((uint64_t)(4 + p) * PAGE + 0x10 * (uint64_t)i, 16);
    for (int p = 0; p < 4; p++)
        cr_assert_neq(vck_tb_jc_slot(w.cpu, (uint64_t)(4 + p) * PAGE) >> JC_GROUP_BITS,
                      vck_tb_jc_slot(w.cpu, (uint64_t)(4 + (p + 1) % 4) * PAGE) >> JC_GROUP_BITS,
                      "fixture: pages share a jump-cache group");

    vck_tb_jc_flush_page(w.cpu, 6 * PAGE + 0x123);
    for (int p = 0; p < 4; p++) {
        bool flushed = p == 1 || p == 2; /* pages 5 and 6 */
        for (int i = 0; i < 3; i++) {
            char what[64];
            snprintf(what, sizeof(what), "block %d on page %d", i, 4 + p);
            struct counts before = counts_of(w.cpu);
            cr_expect_eq(look((uint64_t)(4 + p) * PAGE + 0x10 * (uint64_t)i), tb[p][i]);
            if (flushed)
                expect_counts(w.cpu, before, 0, 1, 1, what);
            else
                expect_counts(w.cpu, before, 1, 0, 0, what);
        }
    }
    /* The table hits refilled the cache. */
    struct counts before = counts_of(w.cpu);
    for (int p = 0; p < 4; p++)
        for (int i = 0; i < 3; i++)
            look((uint64_t)(4 + p) * PAGE + 0x10 * (uint64_t)i);
    expect_counts(w.cpu, before, 12, 0, 0, "after the refill");
}

Test(tbcache, jc_flush_all_clears_every_slot)
{
    struct vck_tb *tb[8];
    for (int p = 0; p < 8; p++)
        tb[p] = added((uint64_t)p * 5 * PAGE / 4, 8);
    vck_tb_jc_flush_all(w.cpu);
    struct counts before = counts_of(w.cpu);
    for (int p = 0; p < 8; p++)
        cr_expect_eq(look((uint64_t)p * 5 * PAGE / 4), tb[p]);
    expect_counts(w.cpu, before, 0, 8, 8, "lookups after a full jump-cache flush");
}

Test(tbcache, jc_invalidate_clears_a_block_from_every_vcpu)
{
    struct vck_tb_cpu *cpu2 = vck_tb_cpu_new(w.c);
    cr_assert_not_null(cpu2);
    struct vck_tb *x = added(0x1000, 16);
    /* Another PC of x's page in x's slot (past x's 16 bytes): cpu2 keeps y there, not x. */
    uint64_t ypc = 0x1010;
    while (vck_tb_jc_slot(w.cpu, ypc) != vck_tb_jc_slot(w.cpu, 0x1000) && ypc < 0x1ffc)
        ypc++;
    cr_assert_eq(vck_tb_jc_slot(w.cpu, ypc), vck_tb_jc_slot(w.cpu, 0x1000),
                 "no PC shares the slot");
    struct vck_tb *other = added(0x1010, 16);
    cr_assert_neq(vck_tb_jc_slot(w.cpu, 0x1010), vck_tb_jc_slot(w.cpu, 0x1000));
    struct blk *yb = blk_new(ypc, 4, 0, 0);
    cr_assert_eq(add(yb, NULL), &yb->tb);
    struct vck_tb *y = &yb->tb;
    cr_expect_eq(look_on(cpu2, 0x1000, 0, 0), x); /* cpu2's table hit fills its cache */
    cr_expect_eq(look_on(cpu2, 0x1010, 0, 0), other);

    vck_tb_jc_invalidate(w.c, x);
    struct counts c1 = counts_of(w.cpu), c2 = counts_of(cpu2);
    cr_expect_eq(look(0x1000), x, "jc_invalidate invalidated the block itself");
    cr_expect_eq(look_on(cpu2, 0x1000, 0, 0), x);
    expect_counts(w.cpu, c1, 0, 1, 1, "vCPU 1 after jc_invalidate");
    expect_counts(cpu2, c2, 0, 1, 1, "vCPU 2 after jc_invalidate");
    c2 = counts_of(cpu2);
    cr_expect_eq(look_on(cpu2, 0x1010, 0, 0), other);
    expect_counts(cpu2, c2, 1, 0, 0, "another block of the page");

    /* A slot holding another block is left alone. */
    cr_expect_eq(look_on(cpu2, ypc, 0, 0), y); /* evicts x from cpu2's slot */
    vck_tb_jc_invalidate(w.c, x);
    c2 = counts_of(cpu2);
    cr_expect_eq(look_on(cpu2, ypc, 0, 0), y);
    expect_counts(cpu2, c2, 1, 0, 0, "the slot's other occupant");
    vck_tb_cpu_free(cpu2);
}

Test(tbcache, an_invalidated_block_leaves_every_jump_cache)
{
    struct vck_tb_cpu *cpu2 = vck_tb_cpu_new(w.c);
    struct vck_tb *a = added(0x1000, 16);
    cr_expect_eq(look_on(cpu2, 0x1000, 0, 0), a);
    cr_expect(vck_tb_invalidate(a));
    struct counts c1 = counts_of(w.cpu), c2 = counts_of(cpu2);
    cr_expect_null(look(0x1000));
    cr_expect_null(look_on(cpu2, 0x1000, 0, 0));
    expect_counts(w.cpu, c1, 0, 1, 0, "vCPU 1");
    expect_counts(cpu2, c2, 0, 1, 0, "vCPU 2");
    vck_tb_cpu_free(cpu2);
}

/* A reclaimed block's memory reused for a block with the same key that was never added. */
static void reuse_as_impostor(struct vck_tb *tb)
{
    uint64_t pc = tb->pc;
    uint32_t flags = tb->flags;
    memset(tb, 0, sizeof(*tb));
    tb->pc = pc;
    tb->flags = flags;
    tb->size = 16;
    atomic_init(&tb->cflags, 0);
}

Test(tbcache, no_jump_cache_keeps_a_reclaimed_block)
{
    /* A slot left holding a reclaimed block would hit once the memory holds the same key. */
    struct vck_tb_cpu *cpu2 = vck_tb_cpu_new(w.c);
    struct vck_tb *a = added(0x1000, 16), *b = added(0x2000, 16), *c = added(0x3000, 16);
    cr_expect_eq(look_on(cpu2, 0x1000, 0, 0), a);
    cr_expect_eq(look_on(cpu2, 0x2000, 0, 0), b);
    cr_expect_eq(look_on(cpu2, 0x3000, 0, 0), c);
    cr_expect(vck_tb_invalidate(a));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x2000), phys(0x2000)), 1);
    vck_tb_flush(w.c);
    vck_rcu_barrier();
    cr_assert_eq(atomic_load(&w.frees), 3);
    reuse_as_impostor(a);
    reuse_as_impostor(b);
    reuse_as_impostor(c);
    for (uint64_t pc = 0x1000; pc <= 0x3000; pc += 0x1000) {
        cr_expect_null(look(pc), "vCPU 1's jump cache still holds the reclaimed block of %#llx",
                       (unsigned long long)pc);
        cr_expect_null(look_on(cpu2, pc, 0, 0),
                       "vCPU 2's jump cache still holds the reclaimed block of %#llx",
                       (unsigned long long)pc);
    }
    vck_tb_cpu_free(cpu2);
}

Test(tbcache, an_empty_slot_matches_no_lookup)
{
    /* Empty slots point at a sentinel whose PC is 0: the all-zero key must still miss. */
    struct vck_tb_cpu *fresh = vck_tb_cpu_new(w.c);
    cr_assert_not_null(fresh);
    struct counts before = counts_of(fresh);
    cr_expect_null(look_on(fresh, 0, 0, 0), "a fresh jump cache answered pc 0");
    cr_expect_null(look_on(fresh, 0x40, 0, 0));
    expect_counts(fresh, before, 0, 2, 0, "lookups in an empty jump cache");

    struct blk *b = blk_new(0, 16, 0, 0);
    cr_assert_eq(add(b, NULL), &b->tb);
    before = counts_of(fresh);
    cr_expect_eq(look_on(fresh, 0, 0, 0), &b->tb);
    cr_expect_eq(look_on(fresh, 0, 0, 0), &b->tb);
    expect_counts(fresh, before, 1, 1, 1, "a block at pc 0: table hit, then jump-cache hit");

    vck_tb_jc_flush_all(fresh);
    vck_tb_jc_flush_all(w.cpu);
    cr_expect(vck_tb_invalidate(&b->tb));
    before = counts_of(fresh);
    cr_expect_null(look_on(fresh, 0, 0, 0), "a flushed slot answered pc 0");
    cr_expect_null(look(0), "a flushed slot answered pc 0");
    expect_counts(fresh, before, 0, 1, 0, "after flush and invalidation");
    vck_tb_cpu_free(fresh);
}

Test(tbcache, lookup_fixed_agrees_with_lookup)
{
    /* The fixture's geometry as constants: 4 KiB pages, 4096 slots, byte-aligned PCs. */
    struct vck_tb *tb[6];
    for (int i = 0; i < 6; i++)
        tb[i] = added(0x1000 * (uint64_t)(i + 1) + 0x24 * (uint64_t)i, 16);
    vck_tb_jc_flush_all(w.cpu);
    for (int round = 0; round < 2; round++) {
        struct counts before = counts_of(w.cpu);
        for (int i = 0; i < 6; i++) {
            uint64_t pc = 0x1000 * (uint64_t)(i + 1) + 0x24 * (uint64_t)i;
            ++*lookups_made_by(w.cpu);
            vck_rcu_read_lock();
            struct vck_tb *got = vck_tb_lookup_fixed(w.cpu, pc, 0, 0, phys_of, &w, 12, 12, 0);
            vck_rcu_read_unlock();
            cr_expect_eq(got, tb[i], "round %d, block %d", round, i);
            cr_expect_null(look(pc + 1), "a PC inside block %d", i);
        }
        /* Round 0: table hits filling the slots lookup_fixed then reads (and look() misses). */
        expect_counts(w.cpu, before, round ? 6 : 0, round ? 6 : 12, round ? 0 : 6, "round");
    }
}

/* The validate hook: called under the block's page locks; false refuses the add as stale. */
static bool refuse_adds;
static unsigned validations;

static bool validate_hook(void *opaque, const struct vck_tb *tb)
{
    cr_assert_eq(opaque, &w);
    cr_assert_not_null(tb);
    validations++;
    return !refuse_adds;
}

static void setup_validate(void)
{
    struct vck_tb_cache_options o = {.validate = validate_hook};
    refuse_adds = false;
    validations = 0;
    setup_opts(&o);
}

Test(tbcache_validate, a_refused_block_is_stale_and_leaves_no_trace, .init = setup_validate,
     .fini = teardown)
{
    struct vck_tb *a = added(0x1000, 16);
    cr_expect_eq(validations, 1);
    refuse_adds = true;
    struct blk *b = blk_new(0x2000, 16, 0, 0); /* a page with no code yet */
    cr_expect_null(add(b, w.cpu), "a block the hook refused was added");
    cr_expect_eq(validations, 2);
    cr_expect_eq(stats().stale_adds, 1);
    cr_expect(!vck_tb_page_has_code(w.c, phys(0x2000)), "the refused block left its page marked");
    cr_expect_null(look(0x2000));
    /* Its page's extent was rolled back: an invalidation of it meets no code. */
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x2000), phys(0x2fff)), 0);
    refuse_adds = false;
    cr_expect_eq(look(0x1000), a);
    struct blk *c = blk_new(0x2000, 16, 0, 0);
    cr_expect_eq(add(c, w.cpu), &c->tb, "accepted once the hook agrees");
}

/*
 * An invalidation whose range crosses into a radix leaf that does not exist yet, while a
 * translator creates that leaf and adds a block there: the invalidation must leave the new page
 * alone (it holds no lock on it, and the block was translated after the invalidation began).
 * The page_code hook, called with a page locked, parks each thread at the interesting moment.
 */
static struct leaf_race {
    struct vck_tb_cache *c;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stage; /* 0 armed; 1 the invalidator let the translator go; 2 translator mid-add; 3 done */
    struct vck_tb a, b;
} lr = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .stage = -1};

static void leaf_race_page_code(void *opaque, uint64_t addr, bool has_code)
{
    (void)opaque;
    pthread_mutex_lock(&lr.lock);
    if (lr.stage == 0 && !has_code && addr == 1023 * PAGE) {
        /* The invalidator, page 1023 just emptied: let the translator add, wait till it is in. */
        lr.stage = 1;
        pthread_cond_broadcast(&lr.cond);
        while (lr.stage != 2)
            pthread_cond_wait(&lr.cond, &lr.lock);
    } else if (lr.stage == 1 && has_code && addr == 1025 * PAGE) {
        /* The translator, holding page 1025's lock, until the invalidation has returned. */
        lr.stage = 2;
        pthread_cond_broadcast(&lr.cond);
        while (lr.stage != 3)
            pthread_cond_wait(&lr.cond, &lr.lock);
    }
    pthread_mutex_unlock(&lr.lock);
}

static void leaf_race_block(struct vck_tb *tb, uint64_t pa)
{
    memset(tb, 0, sizeof(*tb));
    tb->pc = pa;
    tb->phys_pc = pa;
    tb->phys_page2 = VCK_TB_NO_PAGE2;
    tb->size = 16;
    tb->page_gen[0] = vck_tb_page_gen(lr.c, pa); /* for b: creates the leaf of pages 1024.. */
    atomic_init(&tb->cflags, 0);
}

static void *leaf_race_translator(void *arg)
{
    (void)arg;
    vck_rcu_register_thread();
    pthread_mutex_lock(&lr.lock);
    while (lr.stage != 1)
        pthread_cond_wait(&lr.cond, &lr.lock);
    pthread_mutex_unlock(&lr.lock);
    leaf_race_block(&lr.b, 1025 * PAGE + 0x40);
    struct vck_tb *r = vck_tb_add(lr.c, NULL, &lr.b);
    vck_rcu_unregister_thread();
    return r;
}

Test(tbcache_race, an_invalidation_leaves_a_leaf_created_meanwhile_alone, .timeout = 20)
{
    vck_rcu_register_thread();
    struct vck_tb_cache_options o = {.page_code = leaf_race_page_code};
    lr.c = vck_tb_cache_new(&o);
    cr_assert_not_null(lr.c);
    leaf_race_block(&lr.a, 1023 * PAGE + 0x10); /* the last page of the first leaf */
    cr_assert_eq(vck_tb_add(lr.c, NULL, &lr.a), &lr.a);
    uint64_t leaves = 0;
    struct vck_tb_cache_stats st;
    vck_tb_cache_get_stats(lr.c, &st);
    leaves = st.page_leaves;
    lr.stage = 0;
    pthread_t t;
    pthread_create(&t, NULL, leaf_race_translator, NULL);

    size_t n = vck_tb_invalidate_range(lr.c, 1023 * PAGE, 1025 * PAGE + PAGE - 1);
    pthread_mutex_lock(&lr.lock);
    int stage = lr.stage;
    lr.stage = 3;
    pthread_cond_broadcast(&lr.cond);
    pthread_mutex_unlock(&lr.lock);
    void *added;
    pthread_join(t, &added);

    cr_expect_eq(stage, 2, "the translator was not mid-add during the invalidation");
    cr_expect_eq(n, 1, "invalidated %zu blocks, not just the one on page 1023", n);
    cr_expect(atomic_load(&lr.a.cflags) & VCK_TB_CF_INVALID);
    cr_expect_eq(added, &lr.b, "the new block was refused");
    cr_expect(!(atomic_load(&lr.b.cflags) & VCK_TB_CF_INVALID),
              "the invalidation took the block on the page it never locked");
    vck_tb_cache_get_stats(lr.c, &st);
    cr_expect_eq(st.page_leaves, leaves + 1, "the translator's page_gen made the second leaf");
    vck_tb_cache_free(lr.c);
    vck_rcu_unregister_thread();
}

/*
 * vck_tb_jc_offset_fixed() against vck_tb_jc_slot() of a real vCPU, for random geometries: the
 * fixed-geometry lookup reads the slot the cache fills and clears.
 */
Test(tbcache_geometry, the_fixed_offset_is_the_slot_for_every_geometry, .timeout = 60)
{
    vck_rcu_register_thread();
    uint64_t rng = 0x6a09e667f3bcc908ull;
    for (int g = 0; g < 160; g++) {
        /* Every page size the cache takes; jump caches up to 64K slots; any PC shift (half of
         * the geometries: up to 4, as real instruction sets have). */
        unsigned page_bits = 1 + (unsigned)vck_rand_below(&rng, 30);
        unsigned jc_bits = 2 + (unsigned)vck_rand_below(&rng, 15);
        unsigned pc_shift =
            g % 2 ? (unsigned)vck_rand_below(&rng, page_bits + 1)
                  : (unsigned)vck_rand_below(&rng, (page_bits < 4 ? page_bits : 4) + 1);
        if (g < 4) { /* the corners: 1-byte pages, whole-page shifts, tiny and big caches */
            page_bits = g < 2 ? 1 : 30;
            pc_shift = g % 2 ? page_bits : 0;
            jc_bits = g % 2 ? 2 : 16;
        }
        struct vck_tb_cache_options o = {
            .page_bits = page_bits, .jc_bits = jc_bits, .pc_shift = pc_shift};
        struct vck_tb_cache *c = vck_tb_cache_new(&o);
        cr_assert_not_null(c);
        struct vck_tb_cpu *cpu = vck_tb_cpu_new(c);
        cr_assert_not_null(cpu);
        for (int i = 0; i < 2000; i++) {
            uint64_t pc = vck_rand(&rng);
            if (i % 4 == 0)
                pc &= 0xffffffull; /* small addresses too, where most guests run */
            size_t slot = vck_tb_jc_slot(cpu, pc);
            size_t offset = vck_tb_jc_offset_fixed(pc, page_bits, jc_bits, pc_shift);
            cr_assert_lt(slot, (size_t)1 << jc_bits);
            cr_assert_eq(offset, slot << VCK_TB_JC_SLOT_SCALE,
                         "page_bits %u, jc_bits %u, pc_shift %u, pc %#llx: offset %zu, slot %zu",
                         page_bits, jc_bits, pc_shift, (unsigned long long)pc, offset, slot);
        }
        vck_tb_cpu_free(cpu);
        vck_tb_cache_free(c);
    }
    vck_rcu_unregister_thread();
}

/* ---- flush and reclamation --------------------------------------------------------------- */

Test(tbcache, flush_invalidates_every_block_and_new_adds_work)
{
    static char code[4096];
    vck_tb_code_region_add(w.c, code, sizeof(code));
    struct vck_tb *old[10];
    for (int i = 0; i < 10; i++) {
        struct blk *b = blk_new((uint64_t)i * 0x1ff8, 16, 0, 0); /* some span two pages */
        b->tb.code = code + 64 * i;
        b->tb.code_size = 64;
        old[i] = add(b, w.cpu);
        cr_assert_eq(old[i], &b->tb);
    }
    for (int i = 0; i + 1 < 10; i++)
        cr_assert(link_(old[i], 0, old[i + 1]));
    w.n_pev = w.n_jev = 0;

    vck_tb_flush(w.c);
    for (int i = 0; i < 10; i++) {
        cr_expect(is_invalid(old[i]), "block %d valid after the flush", i);
        cr_expect_null(look((uint64_t)i * 0x1ff8), "block %d found after the flush", i);
        cr_expect_null(target(old[i], 0));
        cr_expect_null(host(code + 64 * i + 1));
        cr_expect(!vck_tb_page_has_code(w.c, old[i]->phys_pc));
    }
    cr_expect(w.n_pev > 0 && !w.pev[0].has_code);
    struct vck_tb_cache_stats st = stats();
    cr_expect_eq(st.flushes, 1);
    cr_expect_eq(st.invalidated, 10);
    cr_expect_eq(st.blocks, 0);
    vck_rcu_barrier();
    for (int i = 0; i < 10; i++)
        cr_expect_eq(atomic_load(&((struct blk *)old[i])->frees), 1, "block %d", i);

    /* The same code translated again: new blocks, not duplicates of the flushed ones. */
    for (int i = 0; i < 10; i++) {
        struct blk *b = blk_new((uint64_t)i * 0x1ff8, 16, 0, 0);
        b->tb.code = code + 64 * i;
        b->tb.code_size = 64;
        cr_expect_eq(add(b, i & 1 ? w.cpu : NULL), &b->tb);
        cr_expect_eq(look((uint64_t)i * 0x1ff8), &b->tb);
        cr_expect_eq(host(code + 64 * i + 1), &b->tb);
    }
    st = stats();
    cr_expect_eq(st.duplicates, 0);
    cr_expect_eq(st.blocks, 10);
    cr_expect(vck_tb_page_has_code(w.c, phys(0)));
    vck_tb_flush(w.c);
    cr_expect_eq(stats().flushes, 2);
    cr_expect_eq(stats().blocks, 0);
}

Test(tbcache, free_tb_runs_once_per_invalidated_block_after_a_barrier)
{
    struct vck_tb *a = added(0x1000, 16), *b = added(0x1010, 16), *c = added(0x2000, 16);
    struct vck_tb *d = added(0x3000, 16), *e = added(0x4000, 16);
    vck_rcu_read_lock();
    cr_expect(vck_tb_invalidate(a));
    cr_expect(!vck_tb_invalidate(a));
    vck_rcu_read_unlock();
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1000), phys(0x2fff)), 2); /* b and c */
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1000), phys(0x2fff)), 0);
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&w.frees), 3);
    cr_expect_eq(atomic_load(&((struct blk *)a)->frees), 1);
    cr_expect_eq(atomic_load(&((struct blk *)b)->frees), 1);
    cr_expect_eq(atomic_load(&((struct blk *)c)->frees), 1);
    vck_tb_flush(w.c);
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&w.frees), 5);
    cr_expect_eq(atomic_load(&((struct blk *)d)->frees), 1);
    cr_expect_eq(atomic_load(&((struct blk *)e)->frees), 1);
    vck_tb_flush(w.c);
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&w.frees), 5, "a second flush reclaimed old blocks again");
}

struct reader {
    pthread_t thread;
    atomic_int state; /* 1: inside its section, 2: asked to leave */
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    vck_rcu_register_thread();
    vck_rcu_read_lock();
    atomic_store(&r->state, 1);
    while (atomic_load(&r->state) != 2)
        sched_yield();
    vck_rcu_read_unlock();
    vck_rcu_unregister_thread();
    return NULL;
}

Test(tbcache, an_invalidated_block_is_not_reclaimed_while_a_reader_may_hold_it, .timeout = 20)
{
    struct vck_tb *a = added(0x1000, 16);
    struct reader r = {0};
    pthread_create(&r.thread, NULL, reader_main, &r);
    while (atomic_load(&r.state) != 1)
        sched_yield();
    cr_expect(vck_tb_invalidate(a));
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    cr_expect_eq(atomic_load(&w.frees), 0, "reclaimed while a read-side section was running");
    atomic_store(&r.state, 2);
    pthread_join(r.thread, NULL);
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&w.frees), 1);
}

Test(tbcache, cache_free_reclaims_the_blocks_still_valid)
{
    for (int i = 0; i < 20; i++)
        added((uint64_t)i * 0x333, 0x40);
    cr_expect_eq(stats().blocks, 20);
    /* The teardown's vck_tb_cache_free must reclaim each of them exactly once. */
}

/* ---- page collections and the lock checker ----------------------------------------------- */

struct locker {
    pthread_t thread;
    uint64_t addr;
    atomic_bool locked;
};

static void *locker_main(void *arg)
{
    struct locker *l = arg;
    vck_rcu_register_thread();
    vck_tb_page_lock(w.c, l->addr);
    atomic_store(&l->locked, true);
    vck_tb_page_unlock(w.c, l->addr);
    vck_tb_assert_no_page_locks();
    vck_rcu_unregister_thread();
    return NULL;
}

Test(tbcache, a_collection_holds_the_other_pages_of_its_blocks, .timeout = 20)
{
    added(3 * PAGE + 0xff0, 0x20); /* pages 3 and 4 */
    added(4 * PAGE + 0x100, 0x10); /* page 4 */
    added(9 * PAGE + 0xff8, 0x10); /* pages 9 and 10 */

    struct vck_tb_pages *set = vck_tb_pages_lock(w.c, phys(4 * PAGE), phys(4 * PAGE + 0xfff));
    cr_assert_not_null(set);
    cr_expect_eq(vck_tb_pages_count(set), 2, "page 4 and the page its spanning block starts on");
    /* Page 3 is really held: another thread blocks on it until the collection goes. */
    struct locker l = {.addr = phys(3 * PAGE)};
    pthread_create(&l.thread, NULL, locker_main, &l);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    cr_expect(!atomic_load(&l.locked), "page 3 was not held by the collection");
    vck_tb_pages_unlock(set);
    pthread_join(l.thread, NULL);
    cr_expect(atomic_load(&l.locked));
    vck_tb_assert_no_page_locks();

    set = vck_tb_pages_lock(w.c, phys(10 * PAGE), phys(10 * PAGE));
    cr_expect_eq(vck_tb_pages_count(set), 2, "page 10 and page 9");
    vck_tb_pages_unlock(set);
    set = vck_tb_pages_lock(w.c, phys(3 * PAGE), phys(4 * PAGE));
    cr_expect_eq(vck_tb_pages_count(set), 2, "pages 3 and 4");
    vck_tb_pages_unlock(set);
    /* Pages 5..8 may have descriptors or not; 3, 4, 9 and 10 must be there, nothing else. */
    set = vck_tb_pages_lock(w.c, phys(4 * PAGE), phys(9 * PAGE));
    size_t n = vck_tb_pages_count(set);
    cr_expect(n >= 4 && n <= 8, "pages 4..9 with their blocks' pages: %zu", n);
    vck_tb_pages_unlock(set);
    /* Pages nothing ever touched, far from every other. */
    set = vck_tb_pages_lock(w.c, 1ull << 40, (1ull << 40) + 5 * PAGE);
    cr_expect_eq(vck_tb_pages_count(set), 0);
    vck_tb_pages_unlock(set);
    vck_tb_assert_no_page_locks();
}

Test(tbcache, a_collection_is_ascending_whatever_the_mapping)
{
    /* Virtual pages 1 and 2 swapped: the spanning block's second page is the lower one. */
    w.map[1] = PHYS_BASE + 20;
    w.map[2] = PHYS_BASE + 19;
    added(1 * PAGE + 0xff0, 0x20); /* physical pages 20 then 19 */
    added(2 * PAGE + 0x100, 0x10); /* physical 19 */
    struct vck_tb_pages *set = vck_tb_pages_lock(w.c, phys(1 * PAGE), phys(1 * PAGE));
    cr_expect_eq(vck_tb_pages_count(set), 2);
    vck_tb_pages_unlock(set);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(1 * PAGE), phys(1 * PAGE + 0xfff)), 1);
    vck_tb_assert_no_page_locks();
}

Test(tbcache, page_locks_in_ascending_order_are_accepted)
{
    vck_tb_page_lock(w.c, 0x5000);
    vck_tb_page_lock(w.c, 0x9000);
    vck_tb_page_unlock(w.c, 0x5000);
    vck_tb_page_unlock(w.c, 0x9000);
    vck_tb_page_lock_pair(w.c, 0x9000, 0x5000);
    vck_tb_page_unlock_pair(w.c, 0x9000, 0x5000);
    vck_tb_page_lock_pair(w.c, 0x9000, VCK_TB_NO_PAGE2);
    vck_tb_page_unlock_pair(w.c, 0x9000, VCK_TB_NO_PAGE2);
    vck_tb_page_lock_pair(w.c, 0x9000, 0x9ff0);
    vck_tb_page_unlock_pair(w.c, 0x9000, 0x9ff0);
    vck_tb_assert_no_page_locks();
}

Test(tbcache, blocking_below_a_held_page_aborts, .signal = SIGABRT)
{
    vck_tb_page_lock(w.c, 0x9000);
    vck_tb_page_lock(w.c, 0x5000);
}

Test(tbcache, assert_no_page_locks_aborts_while_one_is_held, .signal = SIGABRT)
{
    vck_tb_page_lock(w.c, 0x5000);
    vck_tb_assert_no_page_locks();
}

Test(tbcache, assert_no_page_locks_aborts_while_a_collection_is_held, .signal = SIGABRT)
{
    added(0x1000, 16);
    struct vck_tb_pages *set = vck_tb_pages_lock(w.c, phys(0x1000), phys(0x1000));
    cr_assert_eq(vck_tb_pages_count(set), 1);
    vck_tb_assert_no_page_locks();
}

/* ---- the host-address map ---------------------------------------------------------------- */

Test(tbcache, find_by_host_maps_code_addresses_to_blocks)
{
    static char buf[8192], elsewhere[256];
    /* Two regions, the higher registered first. */
    vck_tb_code_region_add(w.c, buf + 4096, 4096);
    vck_tb_code_region_add(w.c, buf, 4096);
    struct blk *a = blk_new(0x1000, 16, 0, 0), *b = blk_new(0x1010, 16, 0, 0);
    struct blk *c = blk_new(0x1020, 16, 0, 0), *e = blk_new(0x1030, 16, 0, 0);
    struct blk *z = blk_new(0x1040, 16, 0, 0);
    a->tb.code = buf + 100, a->tb.code_size = 50;
    b->tb.code = buf + 150, b->tb.code_size = 10; /* right after a */
    c->tb.code = buf + 5000, c->tb.code_size = 1;
    e->tb.code = elsewhere, e->tb.code_size = sizeof(elsewhere); /* in no region */
    z->tb.code = buf + 300, z->tb.code_size = 0;                 /* not wanted */
    cr_assert_eq(add(a, w.cpu), &a->tb);
    cr_assert_eq(add(b, w.cpu), &b->tb);
    cr_assert_eq(add(c, w.cpu), &c->tb);
    cr_assert_eq(add(e, w.cpu), &e->tb);
    cr_assert_eq(add(z, w.cpu), &z->tb);

    cr_expect_eq(host(buf + 100), &a->tb);
    cr_expect_eq(host(buf + 149), &a->tb);
    cr_expect_eq(host(buf + 150), &b->tb);
    cr_expect_eq(host(buf + 159), &b->tb);
    cr_expect_null(host(buf + 160));
    cr_expect_null(host(buf + 99));
    cr_expect_null(host(buf));
    cr_expect_eq(host(buf + 5000), &c->tb);
    cr_expect_null(host(buf + 5001));
    cr_expect_null(host(buf + 4999));
    cr_expect_null(host(elsewhere), "a block outside every region");
    cr_expect_null(host(buf + 300), "a block with code_size 0");
    cr_expect_null(host(buf + sizeof(buf)));

    /* A refused duplicate's code is not entered. */
    struct blk *dup = blk_new(0x1000, 16, 0, 0);
    dup->tb.code = buf + 400, dup->tb.code_size = 16;
    cr_expect_eq(add(dup, w.cpu), &a->tb);
    cr_expect_null(host(buf + 400));

    cr_expect(vck_tb_invalidate(&a->tb));
    cr_expect_null(host(buf + 100), "an invalidated block is still found");
    cr_expect_null(host(buf + 149));
    cr_expect_eq(host(buf + 150), &b->tb);
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1020), phys(0x1020)), 1);
    cr_expect_null(host(buf + 5000));
    cr_expect_eq(host(buf + 155), &b->tb);
}

Test(tbcache, find_by_host_with_many_blocks)
{
    static char buf[4096];
    vck_tb_code_region_add(w.c, buf, sizeof(buf));
    struct vck_tb *tb[40];
    /* Added in an order that is not the code order. */
    for (int i = 0; i < 40; i++) {
        int k = (i * 17) % 40;
        struct blk *b = blk_new((uint64_t)k * 0x40, 0x40, 0, 0);
        b->tb.code = buf + 100 * k;
        b->tb.code_size = 60;
        tb[k] = add(b, w.cpu);
        cr_assert_eq(tb[k], &b->tb);
    }
    for (int k = 0; k < 40; k++) {
        cr_expect_eq(host(buf + 100 * k), tb[k]);
        cr_expect_eq(host(buf + 100 * k + 59), tb[k]);
        cr_expect_null(host(buf + 100 * k + 60));
    }
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x400), phys(0x7ff)), 16);
    for (int k = 0; k < 40; k++)
        cr_expect_eq(host(buf + 100 * k + 30), k >= 16 && k < 32 ? NULL : tb[k], "block %d", k);
}

/*
 * The host map against a byte-by-byte reference on a random walk: blocks with random disjoint
 * code ranges come and go (invalidated one by one and by range, their code memory reused at
 * once), and every few steps random addresses in and around the region are looked up.
 */
Test(tbcache, find_by_host_matches_a_reference_on_random_walks, .timeout = 60)
{
    enum { REGION = 2048, STEPS = 6000, MAX_CODE = 48 };
    static char buf[REGION + 64];
    static int owner[REGION]; /* index into w.extra of the live block there, or -1 */
    w.n_extra = STEPS;
    w.extra = calloc(w.n_extra, sizeof(*w.extra));
    cr_assert_not_null(w.extra);
    for (size_t i = 0; i < REGION; i++)
        owner[i] = -1;
    vck_tb_code_region_add(w.c, buf, REGION);
    uint64_t rng = 0x3c6ef372fe94f82bull;
    size_t made = 0, live = 0, checks = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t what = vck_rand_below(&rng, 10);
        if (what < 6 && made < w.n_extra) {
            /* A new block: its code where the reference says the bytes are free. */
            size_t size = 1 + vck_rand_below(&rng, MAX_CODE);
            size_t start = vck_rand_below(&rng, REGION - size + 1);
            bool free_bytes = true;
            for (size_t i = start; i < start + size && free_bytes; i++)
                free_bytes = owner[i] < 0;
            if (!free_bytes)
                continue;
            struct blk *b = &w.extra[made];
            b->tb.pc = 4 * (uint64_t)made; /* a key of its own: never a duplicate */
            b->tb.phys_pc = phys(b->tb.pc);
            b->tb.phys_page2 = VCK_TB_NO_PAGE2;
            b->tb.size = 4;
            b->tb.page_gen[0] = vck_tb_page_gen(w.c, b->tb.phys_pc);
            b->tb.code = buf + start;
            b->tb.code_size = size;
            atomic_init(&b->tb.cflags, 0);
            cr_assert_eq(add(b, NULL), &b->tb);
            for (size_t i = start; i < start + size; i++)
                owner[i] = (int)made;
            made++, live++;
        } else if (what < 8 && live) {
            /* Invalidate the block at a random live byte. */
            size_t at;
            do {
                at = vck_rand_below(&rng, REGION);
            } while (owner[at] < 0);
            struct blk *b = &w.extra[owner[at]];
            if (what == 6) {
                cr_assert(vck_tb_invalidate(&b->tb));
            } else {
                /* By guest range: just this block's guest bytes (pcs are 4 bytes apart). */
                cr_assert_eq(vck_tb_invalidate_range(w.c, b->tb.phys_pc, b->tb.phys_pc + 3), 1);
            }
            size_t start = (size_t)((char *)b->tb.code - buf);
            for (size_t i = start; i < start + b->tb.code_size; i++)
                owner[i] = -1;
            live--;
        } else {
            for (int k = 0; k < 16; k++, checks++) {
                size_t at = vck_rand_below(&rng, REGION + 64);
                struct vck_tb *want = at < REGION && owner[at] >= 0 ? &w.extra[owner[at]].tb : NULL;
                cr_assert_eq(host(buf + at), want, "step %d: host(buf + %zu)", step, at);
            }
        }
    }
    /* And every byte once at the end. */
    for (size_t at = 0; at < REGION; at++)
        cr_assert_eq(host(buf + at), owner[at] >= 0 ? &w.extra[owner[at]].tb : NULL,
                     "host(buf + %zu) at the end", at);
    cr_expect_gt(made, 1000, "the walk added too few blocks (%zu)", made);
    cr_expect_gt(checks, 1000);
}

Test(tbcache, a_region_registered_after_a_block_leaves_that_block_out)
{
    static char buf[512];
    struct blk *a = blk_new(0x1000, 16, 0, 0), *b = blk_new(0x1010, 16, 0, 0);
    a->tb.code = buf + 16, a->tb.code_size = 32;
    cr_assert_eq(add(a, w.cpu), &a->tb);
    vck_tb_code_region_add(w.c, buf, sizeof(buf));
    b->tb.code = buf + 100, b->tb.code_size = 32;
    cr_assert_eq(add(b, w.cpu), &b->tb);
    cr_expect_null(host(buf + 16), "a block added before its region was registered is mapped");
    cr_expect_eq(host(buf + 100), &b->tb);
    /* Removing either from the host map at invalidation finds what it entered, if anything. */
    cr_expect(vck_tb_invalidate(&a->tb));
    cr_expect(vck_tb_invalidate(&b->tb));
    cr_expect_null(host(buf + 100));
}

Test(tbcache, a_block_whose_code_overlaps_a_live_one_aborts, .signal = SIGABRT)
{
    static char buf[256];
    vck_tb_code_region_add(w.c, buf, sizeof(buf));
    struct blk *a = blk_new(0x1000, 16, 0, 0), *b = blk_new(0x1010, 16, 0, 0);
    a->tb.code = buf + 10, a->tb.code_size = 20;
    b->tb.code = buf + 29, b->tb.code_size = 4; /* a's last byte */
    cr_assert_eq(add(a, NULL), &a->tb);
    add(b, NULL);
}

struct publisher {
    pthread_t thread;
    char *code;
};

static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    vck_rcu_register_thread();
    for (size_t i = 0; i < w.n_extra; i++) {
        struct blk *b = &w.extra[i];
        b->tb.pc = 4 * (uint64_t)i;
        b->tb.phys_pc = phys(b->tb.pc);
        b->tb.phys_page2 = VCK_TB_NO_PAGE2;
        b->tb.size = 4;
        b->tb.page_gen[0] = vck_tb_page_gen(w.c, b->tb.phys_pc);
        b->tb.code = p->code + 4 * i;
        b->tb.code_size = 4;
        atomic_init(&b->tb.cflags, 0);
        b->accepted = vck_tb_add(w.c, NULL, &b->tb) == &b->tb;
    }
    vck_rcu_unregister_thread();
    return NULL;
}

Test(tbcache, a_block_a_lookup_can_find_is_already_in_the_host_map, .timeout = 20)
{
    /*
     * A vCPU may execute a block as soon as a lookup finds it, and fault in it: the host map
     * must know the block by then, even if the vck_tb_add() that published it has not returned.
     * Another thread publishes blocks one after the other; this one finds each as soon as it is
     * visible and asks the host map about it at once.
     */
    static char code[VPAGES * PAGE];
    w.n_extra = sizeof(code) / 4;
    w.extra = calloc(w.n_extra, sizeof(*w.extra));
    cr_assert_not_null(w.extra);
    vck_tb_code_region_add(w.c, code, sizeof(code));
    struct publisher p = {.code = code};
    pthread_create(&p.thread, NULL, publisher_main, &p);
    size_t misses = 0, first_miss = SIZE_MAX;
    for (size_t i = 0; i < w.n_extra; i++) {
        for (;;) {
            vck_rcu_read_lock();
            struct vck_tb *tb = vck_tb_lookup(w.cpu, 4 * (uint64_t)i, 0, 0, phys_of, &w);
            if (tb && vck_tb_find_by_host(w.c, tb->code) != tb && misses++ == 0)
                first_miss = i;
            vck_rcu_read_unlock();
            if (tb)
                break;
        }
    }
    pthread_join(p.thread, NULL);
    cr_expect_eq(misses, 0,
                 "%zu of %zu blocks were found by a lookup before the host map knew them "
                 "(the first: pc %#zx)",
                 misses, w.n_extra, 4 * first_miss);
    for (size_t i = 0; i < w.n_extra; i++)
        cr_assert(w.extra[i].accepted, "block %zu refused", i);
}

/* ---- statistics and options -------------------------------------------------------------- */

Test(tbcache, statistics_count_each_outcome)
{
    struct vck_tb_cache_stats st = stats();
    cr_expect(st.blocks == 0 && st.added == 0 && st.duplicates == 0 && st.stale_adds == 0 &&
              st.invalidated == 0 && st.flushes == 0 && st.collection_retries == 0);
    for (int i = 0; i < 6; i++)
        added((uint64_t)i * 0x100, 0x10);
    struct blk *dup = blk_new(0x100, 0x10, 0, 0);
    cr_expect_neq(add(dup, w.cpu), &dup->tb);
    struct blk *stale = blk_new(0x800, 0x10, 0, 0);
    vck_tb_invalidate_range(w.c, phys(0x800), phys(0x800));
    cr_expect_null(add(stale, w.cpu));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0), phys(0x1ff)), 2);
    st = stats();
    cr_expect_eq(st.added, 6);
    cr_expect_eq(st.duplicates, 1);
    cr_expect_eq(st.stale_adds, 1);
    cr_expect_eq(st.invalidated, 2);
    cr_expect_eq(st.blocks, 4);
    cr_expect_eq(st.flushes, 0);
    vck_tb_flush(w.c);
    st = stats();
    cr_expect_eq(st.invalidated, 6);
    cr_expect_eq(st.blocks, 0);
    cr_expect_eq(st.flushes, 1);
    cr_expect_eq(st.collection_retries, 0, "retries with no other thread around");
    /* The fixture's pages are all in the radix's first leaf. */
    cr_expect_eq(st.page_leaves, 1);
}

static void setup_small(void)
{
    /* 256-byte pages, 16-slot jump caches, 4-byte instructions, a table that must grow. */
    struct vck_tb_cache_options o = {.page_bits = 8, .jc_bits = 4, .pc_shift = 2, .table_size = 1};
    setup_opts(&o);
}

Test(tbcache_small, small_pages_and_a_growing_table, .init = setup_small, .fini = teardown)
{
    /* With 256-byte pages the fixture's 4 KiB pages are 16 small ones, contiguous. */
    enum { N = 80 };
    struct vck_tb *tb[N];
    for (int i = 0; i < N; i++)
        tb[i] = added(0x1000 + (uint64_t)i * 0xf8, 0x10); /* many cross a 256-byte boundary */
    for (int i = 0; i < N; i++)
        cr_expect_eq(look(0x1000 + (uint64_t)i * 0xf8), tb[i], "block %d", i);
    cr_expect_eq(stats().blocks, N);
    /* Byte 0x10ff is the last of a small page: only the block across it and none other. */
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x10ff), phys(0x10ff)), 1);
    cr_expect(is_invalid(tb[1]));
    cr_expect(!is_invalid(tb[0]) && !is_invalid(tb[2]));
    cr_expect_eq(vck_tb_invalidate_range(w.c, phys(0x1000), phys(0x1000 + N * 0xf8)), N - 1);
}
