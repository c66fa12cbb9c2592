/*
 * tbcache-stress: vCPU threads look blocks up, translate, chain and follow chains over a small
 * guest whose code other threads keep rewriting and invalidating, and every block a vCPU is
 * handed is checked against a log of what was invalidated before it asked.
 *
 * The guest. 64 virtual pages of 256 bytes (the cache runs with 256-byte pages, so that about
 * one block in ten spans two), mapped to physical pages by a permutation drawn from the seed:
 * the second page of a spanning block is as often below its first as above it, which is what
 * makes page collections take pages out of order and retry. A few virtual pages mirror the
 * physical page of the one before them, so that some blocks have their two parts on one physical
 * page (and some physical pages are mapped nowhere). Every fourth physical page holds data in
 * its upper half, never executed but stored to, and a fifth of the invalidations aim at the
 * boundary: those mostly meet no block and take the cache's lock-free path, racing with adds
 * that widen the page's code extent. Guest memory is an array of 4-byte
 * words; a block runs from its PC to the first word whose low three bits are zero (at most 24
 * words, never past the end of the space or into data). Exit 0 falls through, exit 1 branches to
 * a target encoded in the last word (either sent back to its page's start if it is data).
 * Invalidators store random words into a physical range and then invalidate it, as a guest writing
 * its own code would; one invalidation in 400 covers the whole physical address space.
 *
 * Blocks. The fake translator copies the words into ops in its vCPU's code buffer (a registered
 * code region, so vck_tb_find_by_host can be checked) and fills a block that carries its exits,
 * the clock value at which its code was read, and a checksum over all of that and the ops. When
 * its buffer is full the vCPU flushes the cache and starts the buffer again: after
 * vck_tb_flush() returns no old block may be reachable, so an old block whose ops were
 * overwritten shows up as a checksum error. free_tb poisons a block and keeps it in a quarantine
 * for a while before freeing it, so a block handed out after reclamation is seen as poison.
 *
 * The invalidation log. One global clock (a seq_cst counter) orders the threads' events:
 *  - a translator reads the page generations, takes t1 from the clock, then reads the code;
 *  - an invalidation of [start, last] takes s0, invalidates, takes s1, and then raises
 *    inval_done[w] to s0 for every guest word w it covered (an atomic max);
 *  - a flush takes s0, flushes, and raises flush_done to s0; vck_tb_invalidate() of one block
 *    stores the clock value taken after it returned into the block;
 *  - before each lookup, and before reading a jump target, a vCPU snapshots inval_done for the
 *    24 words at the PC it is about to look up, flush_done, and the clock.
 * A snapshot value v > t1 for a word of the block it got means an invalidation of that word
 * started after the block's translator had read the page generations (v > t1 in clock order,
 * so that read happened before the generation bump), and completed before the lookup began (its
 * raise was visible to the snapshot): the add was refused or the block was on the page's list
 * and invalidated, so a lookup started afterwards must not see it. Likewise a block accepted
 * before a flush that completed before the snapshot, or invalidated alone before it. A block
 * translated after an invalidation began may overlap its range legitimately, and is not
 * flagged. Every block also must match the key it was looked up with, and a chained exit must
 * lead to a block for the exit's PC.
 *
 * The hooks check themselves: page_code must alternate true/false per page, jump_set must name
 * live blocks and a target for the exit's PC, free_tb must be handed each accepted block once,
 * invalid. A watchdog fails the run if any thread makes no progress for 10 s (a deadlock), and
 * the run fails if it made too little progress. vck_tb_assert_no_page_locks() runs at the top of
 * every loop: this test links a tbcache built with the lock checker.
 *
 * Exit status: 0 pass, 1 a checked invariant failed, a deadlock or too little progress, 2 bad
 * command line.
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
#include <vcpukit/tbcache.h>

#include "stress.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STRESS_SANITIZED 1
#endif
#endif

enum {
    PAGE_BITS = 8,
    PAGE_SIZE = 1 << PAGE_BITS,
    VPAGES = 64,
    WORDS_PER_PAGE = PAGE_SIZE / 4,
    WORDS = VPAGES * WORDS_PER_PAGE,
    SPACE = VPAGES * PAGE_SIZE, /* virtual code space [0, SPACE) */
    PHYS_BASE_PAGE = 0x40,      /* physical page numbers are PHYS_BASE_PAGE + perm[v] */
    ALIASES = 4,        /* virtual pages that show the same physical page as the one before */
    MAX_WORDS = 24,     /* longest block */
    RUN = 32,           /* blocks per read-side section */
    CODE_OPS = 1 << 16, /* ops in each vCPU's code buffer */
    MAX_VCPUS = 32,
    QUARANTINE = 1 << 14,
    STALE_RETRIES = 64,
    FLUSH_EVERY = 2000, /* invalidator 0 flushes once per this many of its operations, */
    BURST = 8,          /* an invalidator paces itself after 7 operations in 8 */
    WORK_PER_OP = 256,  /* until the vCPUs were handed this many more blocks */
    DEADLOCK_SECONDS = 10,
    MAX_REPORTS = 20,
};

#define PHYS_BASE     ((uint64_t)PHYS_BASE_PAGE << PAGE_BITS)
#define LIVE          0x11fe11fe11fe11feull
#define POISON        0xdeaddeaddeaddeadull
#define PACE_MAX_WAIT 0.002 /* seconds */
#define FLUSH_PERIOD  0.25  /* and at least this often (seconds) */

struct op {
    uint32_t word; /* the guest word it was translated from */
    uint32_t tag;  /* op_tag(pc, flags, index) */
};

struct sblock {
    struct vck_tb tb;
    uint64_t magic; /* LIVE until free_tb, then POISON */
    uint64_t exit_pc[2];
    uint64_t t1; /* clock value taken right after the page generations were read */
    uint64_t sum;
    _Atomic uint64_t added_at;  /* clock value taken after vck_tb_add accepted it, or 0 */
    _Atomic uint64_t killed_at; /* clock value taken after vck_tb_invalidate of it, or 0 */
};

/* Counters owned by one thread, read by the watchdog and the signal handler. */
struct counters {
    _Atomic uint64_t progress, lookups, translations, stale, duplicates, jumps, links, host_checks,
        invalidations, blocks_invalidated, flushes, collections;
};

struct vcpu {
    pthread_t thread;
    int id;
    uint64_t rng;
    struct vck_tb_cpu *cpu; /* set by the thread itself, read by invalidators */
    _Atomic(struct vck_tb_cpu *) cpu_pub;
    struct op *ops; /* the code buffer */
    size_t used;
    uint32_t flags;
    struct counters n;
};

struct invalidator {
    pthread_t thread;
    int id;
    uint64_t rng;
    struct counters n;
};

static struct {
    struct vck_tb_cache *c;
    uint32_t perm[VPAGES];
    _Atomic uint32_t mem[WORDS];        /* guest memory, by physical word */
    _Atomic uint64_t inval_done[WORDS]; /* max s0 of the completed invalidations of each word */
    _Atomic uint64_t flush_done;        /* max s0 of the completed flushes */
    _Atomic uint64_t clock;             /* the event order */
    _Atomic bool page_has_code[VPAGES]; /* what page_code said last, by physical page */
    _Atomic uint64_t frees, jump_sets, page_codes, errors;
    atomic_bool stop_invalidators, stop_vcpus, finished;
    int n_vcpus, n_invalidators;
    struct vcpu vcpus[MAX_VCPUS];
    struct invalidator invalidators[MAX_VCPUS];
    struct counters main_n;
    pthread_mutex_t quarantine_lock;
    struct sblock *quarantine[QUARANTINE];
    size_t q_next;
    uint64_t seed;
    double start;
} g;

static void bump(_Atomic uint64_t *c)
{
    /* Single writer: a plain increment, atomic only so that other threads may read it. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static uint64_t get(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void report(const char *fmt, ...)
{
    if (atomic_fetch_add(&g.errors, 1) >= MAX_REPORTS)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "tbcache-stress: %s\n", line);
}

static uint64_t tick(void)
{
    return atomic_fetch_add_explicit(&g.clock, 1, memory_order_seq_cst) + 1;
}

static void raise_to(_Atomic uint64_t *x, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(x, memory_order_relaxed);
    /* Release: pairs with the acquire loads of snap_take(); the completed call happens-before. */
    while (cur < v && !atomic_compare_exchange_weak_explicit(x, &cur, v, memory_order_release,
                                                             memory_order_relaxed))
        ;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- the guest ----------------------------------------------------------------------------- */

static uint64_t phys_addr(uint64_t vaddr)
{
    return ((uint64_t)(PHYS_BASE_PAGE + g.perm[vaddr >> PAGE_BITS]) << PAGE_BITS) |
           (vaddr & (PAGE_SIZE - 1));
}

/* Index of the guest word at virtual @vaddr in mem[] and inval_done[]. */
static size_t word_of(uint64_t vaddr)
{
    return (size_t)((phys_addr(vaddr) - PHYS_BASE) >> 2);
}

/* Every fourth physical page keeps data in its upper half: stored to, never executed. */
static bool is_data(uint64_t vaddr)
{
    uint64_t p = phys_addr(vaddr);
    return (p >> PAGE_BITS) % 4 == 3 && (p & (PAGE_SIZE - 1)) >= PAGE_SIZE / 2;
}

/* Where execution goes when it would reach @vaddr: data sends it back to its page's start. */
static uint64_t code_at(uint64_t vaddr)
{
    return is_data(vaddr) ? vaddr & ~(uint64_t)(PAGE_SIZE - 1) : vaddr;
}

static bool guest_phys(void *opaque, uint64_t vaddr, uint64_t *phys)
{
    (void)opaque;
    if (vaddr >= SPACE)
        return false;
    *phys = phys_addr(vaddr);
    return true;
}

static uint32_t op_tag(uint64_t pc, uint32_t flags, unsigned i)
{
    return (uint32_t)mix(pc * 131 + ((uint64_t)flags << 40) + i);
}

static uint64_t block_sum(const struct sblock *b)
{
    uint64_t h = mix(b->tb.pc ^ 0x5151);
    const uint64_t fields[] = {b->tb.phys_pc, b->tb.phys_page2,     b->tb.flags,
                               b->tb.size,    b->exit_pc[0],        b->exit_pc[1],
                               b->t1,         (uint64_t)b->tb.code, b->tb.code_size};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        h = mix(h ^ fields[i]);
    const struct op *ops = b->tb.code;
    for (uint32_t i = 0; i < b->tb.size / 4; i++)
        h = mix(h ^ ops[i].word ^ ((uint64_t)ops[i].tag << 32));
    return h;
}

/* ---- hooks --------------------------------------------------------------------------------- */

static void free_tb(void *opaque, struct vck_tb *tb)
{
    (void)opaque;
    struct sblock *b = (struct sblock *)tb;
    if (b->magic != LIVE) {
        report("free_tb handed a block that is %s",
               b->magic == POISON ? "already reclaimed" : "not a block");
        return;
    }
    if (!(atomic_load_explicit(&tb->cflags, memory_order_relaxed) & VCK_TB_CF_INVALID))
        report("free_tb handed a valid block (pc %#llx)", (unsigned long long)tb->pc);
    memset(b, 0x6b, sizeof(*b));
    b->magic = POISON;
    atomic_fetch_add_explicit(&g.frees, 1, memory_order_relaxed);
    pthread_mutex_lock(&g.quarantine_lock);
    struct sblock *old = g.quarantine[g.q_next];
    g.quarantine[g.q_next] = b;
    g.q_next = (g.q_next + 1) % QUARANTINE;
    pthread_mutex_unlock(&g.quarantine_lock);
    free(old);
}

static void page_code(void *opaque, uint64_t phys_page_addr, bool has_code)
{
    (void)opaque;
    uint64_t page = phys_page_addr >> PAGE_BITS;
    atomic_fetch_add_explicit(&g.page_codes, 1, memory_order_relaxed);
    if (phys_page_addr & (PAGE_SIZE - 1) || page < PHYS_BASE_PAGE ||
        page >= PHYS_BASE_PAGE + VPAGES) {
        report("page_code for %#llx, not a code page", (unsigned long long)phys_page_addr);
        return;
    }
    /* Called with the page locked, so the calls for one page never overlap. */
    bool was = atomic_exchange(&g.page_has_code[page - PHYS_BASE_PAGE], has_code);
    if (was == has_code)
        report("page_code(%#llx, %d) twice in a row", (unsigned long long)phys_page_addr, has_code);
}

static void jump_set(void *opaque, struct vck_tb *from, int n, struct vck_tb *to)
{
    (void)opaque;
    struct sblock *f = (struct sblock *)from, *t = (struct sblock *)to;
    atomic_fetch_add_explicit(&g.jump_sets, 1, memory_order_relaxed);
    if (f->magic != LIVE || (n != 0 && n != 1)) {
        report("jump_set on exit %d of a dead or corrupt block", n);
        return;
    }
    if (t && (t->magic != LIVE || t->tb.pc != f->exit_pc[n] || t->tb.flags != f->tb.flags))
        report("jump_set chains exit %d of pc %#llx (to %#llx) to a wrong block", n,
               (unsigned long long)from->pc, (unsigned long long)f->exit_pc[n]);
}

/* ---- checking what a vCPU is handed -------------------------------------------------------- */

struct snap {
    uint64_t clock, flush;
    unsigned n;
    uint64_t word[MAX_WORDS];
};

static void snap_take(struct snap *s, uint64_t pc)
{
    /* Acquire: pairs with raise_to() and tick(); what they publish completed before. */
    s->clock = atomic_load_explicit(&g.clock, memory_order_acquire);
    s->flush = atomic_load_explicit(&g.flush_done, memory_order_acquire);
    s->n = 0;
    for (uint64_t a = pc; s->n < MAX_WORDS && a < SPACE; a += 4)
        s->word[s->n++] = atomic_load_explicit(&g.inval_done[word_of(a)], memory_order_acquire);
}

/* @b was handed out for (@pc, @flags) by @what, which started after @s was taken. */
static bool check_block(struct vcpu *v, const struct sblock *b, uint64_t pc, const struct snap *s,
                        const char *what)
{
    if (b->magic != LIVE) {
        report("vcpu %d: %s at pc %#llx returned a %s block", v->id, what, (unsigned long long)pc,
               b->magic == POISON ? "reclaimed" : "corrupt");
        return false;
    }
    uint32_t cf = atomic_load_explicit(&b->tb.cflags, memory_order_relaxed);
    if (b->tb.pc != pc || b->tb.flags != v->flags || (cf & ~VCK_TB_CF_INVALID) != 0 ||
        b->tb.phys_pc != phys_addr(pc)) {
        report("vcpu %d: %s at pc %#llx flags %u returned the block of pc %#llx flags %u", v->id,
               what, (unsigned long long)pc, v->flags, (unsigned long long)b->tb.pc, b->tb.flags);
        return false;
    }
    if (block_sum(b) != b->sum) {
        report("vcpu %d: %s at pc %#llx returned a block with a bad checksum (code overwritten?)",
               v->id, what, (unsigned long long)pc);
        return false;
    }
    const struct op *ops = b->tb.code;
    for (unsigned i = 0; i < b->tb.size / 4; i++) {
        if (ops[i].tag != op_tag(pc, b->tb.flags, i)) {
            report("vcpu %d: %s at pc %#llx: op %u is another block's", v->id, what,
                   (unsigned long long)pc, i);
            return false;
        }
    }
    bool ok = true;
    for (unsigned i = 0; i < b->tb.size / 4 && i < s->n; i++) {
        if (s->word[i] > b->t1) {
            report("vcpu %d: %s at pc %#llx returned a block translated at %llu, although an "
                   "invalidation of its word %u that started at %llu had completed",
                   v->id, what, (unsigned long long)pc, (unsigned long long)b->t1, i,
                   (unsigned long long)s->word[i]);
            ok = false;
            break;
        }
    }
    uint64_t added = atomic_load_explicit(&b->added_at, memory_order_relaxed);
    if (added && added < s->flush) {
        report("vcpu %d: %s at pc %#llx returned a block added at %llu, older than a completed "
               "flush that started at %llu",
               v->id, what, (unsigned long long)pc, (unsigned long long)added,
               (unsigned long long)s->flush);
        ok = false;
    }
    uint64_t killed = atomic_load_explicit(&b->killed_at, memory_order_relaxed);
    if (killed && killed <= s->clock) {
        report("vcpu %d: %s at pc %#llx returned a block invalidated at %llu, before it began "
               "(%llu)",
               v->id, what, (unsigned long long)pc, (unsigned long long)killed,
               (unsigned long long)s->clock);
        ok = false;
    }
    return ok;
}

/* @b is valid or being invalidated: the host map finds it, or it is invalid. */
static void check_host_map(struct vcpu *v, struct sblock *b)
{
    size_t off = (size_t)vck_rand_below(&v->rng, b->tb.code_size);
    struct vck_tb *found = vck_tb_find_by_host(g.c, (const char *)b->tb.code + off);
    bump(&v->n.host_checks);
    if (found == &b->tb)
        return;
    if (found) {
        report("vcpu %d: find_by_host inside the block of pc %#llx found pc %#llx", v->id,
               (unsigned long long)b->tb.pc, (unsigned long long)found->pc);
    } else if (!(atomic_load_explicit(&b->tb.cflags, memory_order_relaxed) & VCK_TB_CF_INVALID)) {
        report("vcpu %d: find_by_host missed the valid block of pc %#llx (added at %llu)", v->id,
               (unsigned long long)b->tb.pc,
               (unsigned long long)atomic_load_explicit(&b->added_at, memory_order_relaxed));
    }
}

/* ---- the vCPUs ----------------------------------------------------------------------------- */

enum translated { T_OK, T_FULL, T_GAVE_UP };

/*
 * Translate (@pc, v->flags) and add it; *@out is the block to use (ours or an equal one added
 * first). Inside the vCPU's read-side section.
 */
static enum translated translate(struct vcpu *v, uint64_t pc, struct sblock **out)
{
    for (int attempt = 0; attempt < STALE_RETRIES; attempt++) {
        uint32_t words[MAX_WORDS];
        uint64_t phys_pc = phys_addr(pc), page2 = VCK_TB_NO_PAGE2;
        uint32_t gen[2] = {vck_tb_page_gen(g.c, phys_pc), 0};
        /* As early as the argument allows: right after the last generation read. */
        uint64_t t1 = tick();
        unsigned n = 0;
        uint64_t a = pc;
        do {
            if (a != pc && !(a & (PAGE_SIZE - 1))) {
                page2 = phys_addr(a);
                gen[1] = vck_tb_page_gen(g.c, page2);
                t1 = tick();
            }
            /* Relaxed: ordered after the generation's acquire load, like a translator's fetch. */
            words[n++] = atomic_load_explicit(&g.mem[word_of(a)], memory_order_relaxed);
            a += 4;
        } while ((words[n - 1] & 7) && n < MAX_WORDS && a < SPACE && !is_data(a));

        if (v->used + n > CODE_OPS)
            return T_FULL;
        struct sblock *b = calloc(1, sizeof(*b));
        if (!b) {
            fprintf(stderr, "tbcache-stress: out of memory\n");
            exit(1);
        }
        struct op *ops = v->ops + v->used;
        for (unsigned i = 0; i < n; i++)
            ops[i] = (struct op){words[i], op_tag(pc, v->flags, i)};
        b->tb.pc = pc;
        b->tb.phys_pc = phys_pc;
        b->tb.phys_page2 = page2;
        b->tb.flags = v->flags;
        b->tb.size = 4 * n;
        b->tb.page_gen[0] = gen[0];
        b->tb.page_gen[1] = gen[1];
        b->tb.code = ops;
        b->tb.code_size = n * sizeof(struct op);
        atomic_init(&b->tb.cflags, 0);
        b->magic = LIVE;
        b->exit_pc[0] = code_at(a % SPACE);
        b->exit_pc[1] = code_at((uint64_t)((words[n - 1] >> 3) % WORDS) * 4);
        b->t1 = t1;
        b->sum = block_sum(b);

        struct vck_tb *r = vck_tb_add(g.c, v->cpu, &b->tb);
        if (r == &b->tb) {
            v->used += n;
            atomic_store_explicit(&b->added_at, tick(), memory_order_relaxed);
            bump(&v->n.translations);
            *out = b;
            return T_OK;
        }
        free(b); /* never visible to anyone; its ops are reused */
        if (r) {
            bump(&v->n.duplicates);
            *out = (struct sblock *)r;
            return T_OK;
        }
        bump(&v->n.stale);
    }
    return T_GAVE_UP;
}

static void flush_logged(struct counters *n)
{
    uint64_t s0 = tick();
    vck_tb_flush(g.c);
    tick();
    raise_to(&g.flush_done, s0);
    bump(&n->flushes);
}

/* One run of up to RUN blocks from @pc in one read-side section. Returns false when full. */
static bool vcpu_run(struct vcpu *v, uint64_t pc)
{
    struct sblock *prev = NULL;
    int exit_n = 0;
    bool room = true;
    vck_rcu_read_lock();
    for (int k = 0; k < RUN; k++) {
        struct snap s;
        snap_take(&s, pc);
        struct sblock *b = NULL;
        if (prev) {
            b = (struct sblock *)vck_tb_jump_target(&prev->tb, exit_n);
            if (b) {
                bump(&v->n.jumps);
                if (!check_block(v, b, pc, &s, "a chained exit"))
                    break;
            }
        }
        if (!b) {
            b = (struct sblock *)vck_tb_lookup(v->cpu, pc, v->flags, 0, guest_phys, NULL);
            bump(&v->n.lookups);
            if (b && !check_block(v, b, pc, &s, "lookup"))
                break;
            if (!b) {
                enum translated t = translate(v, pc, &b);
                if (t == T_FULL)
                    room = false;
                if (t != T_OK)
                    break;
                if (!check_block(v, b, pc, &s, "add"))
                    break;
            }
            if (prev && vck_tb_link(&prev->tb, exit_n, &b->tb))
                bump(&v->n.links);
        }
        if (!(vck_rand(&v->rng) & 3))
            check_host_map(v, b);
        exit_n = (int)(vck_rand(&v->rng) & 1);
        pc = b->exit_pc[exit_n];
        prev = b;
    }
    vck_rcu_read_unlock();
    return room;
}

static void *vcpu_main(void *arg)
{
    struct vcpu *v = arg;
    vck_rcu_register_thread();
    v->cpu = vck_tb_cpu_new(g.c);
    if (!v->cpu) {
        fprintf(stderr, "tbcache-stress: out of memory\n");
        exit(1);
    }
    atomic_store_explicit(&v->cpu_pub, v->cpu, memory_order_release);
    while (!atomic_load_explicit(&g.stop_vcpus, memory_order_relaxed)) {
        vck_tb_assert_no_page_locks();
        bump(&v->n.progress);
        uint64_t r = vck_rand_below(&v->rng, 64);
        if (r == 0)
            v->flags ^= 1; /* a mode switch: the same code, other blocks */
        else if (r == 1)
            vck_tb_jc_flush_all(v->cpu);
        else if (r == 2)
            vck_tb_jc_flush_page(v->cpu, vck_rand_below(&v->rng, SPACE));
        uint64_t pc = code_at(vck_rand_below(&v->rng, WORDS) * 4);
        if (!vcpu_run(v, pc)) {
            /* The code buffer is full: every block in it dies with the flush, then reuse it. */
            flush_logged(&v->n);
            v->used = 0;
        }
        vck_rcu_quiescent_state();
    }
    /* Invalidators, which flush our jump cache, are gone. */
    vck_tb_cpu_free(v->cpu);
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---- the invalidators ---------------------------------------------------------------------- */

static void invalidate_logged(struct invalidator *inv, uint64_t start, uint64_t last)
{
    /* The guest words the range covers (it may reach far outside the space, up to all of it). */
    uint64_t lo = (start > PHYS_BASE ? start : PHYS_BASE) & ~3ull;
    uint64_t hi = last < PHYS_BASE + SPACE - 1 ? last : PHYS_BASE + SPACE - 1;
    /* A store to code: new words, then the invalidation that makes them visible to translators. */
    for (uint64_t a = lo; a <= hi; a += 4)
        atomic_store_explicit(&g.mem[(a - PHYS_BASE) >> 2], (uint32_t)vck_rand(&inv->rng),
                              memory_order_relaxed);
    uint64_t s0 = tick();
    size_t n = vck_tb_invalidate_range(g.c, start, last);
    tick();
    for (uint64_t a = lo; a <= hi; a += 4)
        raise_to(&g.inval_done[(a - PHYS_BASE) >> 2], s0);
    bump(&inv->n.invalidations);
    for (size_t i = 0; i < n; i++)
        bump(&inv->n.blocks_invalidated);
}

static void random_range(struct invalidator *inv, uint64_t *start, uint64_t *last)
{
    uint64_t r = vck_rand_below(&inv->rng, 100), len;
    if (r < 20) {
        /*
         * Around the code/data boundary of a data page: mostly bytes no block covers, which the
         * cache invalidates without locks, racing with adds that widen the page's code extent.
         */
        uint64_t page = 4 * vck_rand_below(&inv->rng, VPAGES / 4) + 3;
        *start = PHYS_BASE + page * PAGE_SIZE + PAGE_SIZE / 2 - 16 + vck_rand_below(&inv->rng, 48);
        *last = *start + vck_rand_below(&inv->rng, 24);
        return;
    }
    if (r == 99 && vck_rand_below(&inv->rng, 4) == 0) {
        /* The whole physical address space: mostly pages without descriptors, skipped. */
        *start = 0;
        *last = UINT64_MAX;
        return;
    }
    if (r < 80)
        len = 1 + vck_rand_below(&inv->rng, 32);
    else if (r < 98)
        len = 1 + vck_rand_below(&inv->rng, 2 * PAGE_SIZE);
    else /* more than one of the cache's 16-page locking chunks */
        len = 16 * PAGE_SIZE + vck_rand_below(&inv->rng, 8 * PAGE_SIZE);
    *start = PHYS_BASE - 64 + vck_rand_below(&inv->rng, SPACE + 64);
    *last = *start + len - 1;
}

/* Find a block through the host map, as a fault handler would, and invalidate it alone. */
static void invalidate_one(struct invalidator *inv)
{
    struct vcpu *v = &g.vcpus[vck_rand_below(&inv->rng, (uint64_t)g.n_vcpus)];
    const char *addr = (const char *)(v->ops + vck_rand_below(&inv->rng, CODE_OPS));
    vck_rcu_read_lock();
    struct sblock *b = (struct sblock *)vck_tb_find_by_host(g.c, addr);
    if (b) {
        if (b->magic != LIVE || addr < (const char *)b->tb.code ||
            addr >= (const char *)b->tb.code + b->tb.code_size) {
            report("invalidator %d: find_by_host(%p) returned a block that does not hold it",
                   inv->id, (const void *)addr);
        } else if (vck_rand(&inv->rng) & 1) {
            vck_tb_jc_invalidate(g.c, &b->tb);
        } else if (vck_tb_invalidate(&b->tb)) {
            atomic_store_explicit(&b->killed_at, tick(), memory_order_relaxed);
            bump(&inv->n.blocks_invalidated);
        }
    }
    vck_rcu_read_unlock();
}

static void lock_collection(struct invalidator *inv)
{
    uint64_t start = PHYS_BASE + vck_rand_below(&inv->rng, SPACE);
    uint64_t last = start + vck_rand_below(&inv->rng, 4 * PAGE_SIZE);
    struct vck_tb_pages *set = vck_tb_pages_lock(g.c, start, last);
    if (!set) {
        fprintf(stderr, "tbcache-stress: out of memory\n");
        exit(1);
    }
    /* Every page of a block has a descriptor, and there are VPAGES code pages. */
    size_t n = vck_tb_pages_count(set);
    uint64_t range_pages = (last >> PAGE_BITS) - (start >> PAGE_BITS) + 1;
    if (n > range_pages + VPAGES)
        report("invalidator %d: a collection of %llu pages holds %zu", inv->id,
               (unsigned long long)range_pages, n);
    vck_tb_pages_unlock(set);
    bump(&inv->n.collections);
}

/* Blocks the vCPUs have been handed so far. */
static uint64_t vcpu_work(void)
{
    uint64_t n = 0;
    for (int i = 0; i < g.n_vcpus; i++)
        n += get(&g.vcpus[i].n.lookups) + get(&g.vcpus[i].n.jumps);
    return n;
}

/*
 * Invalidators are paced by the vCPUs' work, not by time, so that blocks live long enough to be
 * found and chained in every build (ThreadSanitizer slows the vCPUs far more than a sleep), with
 * bursts of back-to-back operations where the invalidators contend for the same pages. A wait
 * is bounded, so invalidators go on when the vCPUs are stuck in a flush.
 */
static void pace(uint64_t *work_seen)
{
    double give_up = vck_now() + PACE_MAX_WAIT;
    vck_rcu_thread_offline();
    while (vcpu_work() < *work_seen + WORK_PER_OP && vck_now() < give_up &&
           !atomic_load_explicit(&g.stop_invalidators, memory_order_relaxed)) {
        struct timespec pause = {0, 20 * 1000};
        nanosleep(&pause, NULL);
    }
    vck_rcu_thread_online();
    *work_seen = vcpu_work();
}

static void *invalidator_main(void *arg)
{
    struct invalidator *inv = arg;
    vck_rcu_register_thread();
    uint64_t ops = 0, work_seen = 0;
    double next_flush = vck_now() + FLUSH_PERIOD;
    while (!atomic_load_explicit(&g.stop_invalidators, memory_order_relaxed)) {
        vck_tb_assert_no_page_locks();
        bump(&inv->n.progress);
        uint64_t r = vck_rand_below(&inv->rng, 100);
        if (inv->id == 0 && (++ops % FLUSH_EVERY == 0 || vck_now() >= next_flush)) {
            flush_logged(&inv->n);
            next_flush = vck_now() + FLUSH_PERIOD;
        } else if (r < 75) {
            uint64_t start, last;
            random_range(inv, &start, &last);
            invalidate_logged(inv, start, last);
        } else if (r < 88) {
            invalidate_one(inv);
        } else if (r < 94) {
            lock_collection(inv);
        } else {
            struct vcpu *v = &g.vcpus[vck_rand_below(&inv->rng, (uint64_t)g.n_vcpus)];
            struct vck_tb_cpu *cpu = atomic_load_explicit(&v->cpu_pub, memory_order_acquire);
            if (cpu && (r & 1))
                vck_tb_jc_flush_page(cpu, vck_rand_below(&inv->rng, SPACE));
            else if (cpu)
                vck_tb_jc_flush_all(cpu);
        }
        vck_rcu_quiescent_state();
        if (vck_rand_below(&inv->rng, BURST))
            pace(&work_seen);
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---- totals, the watchdog and the summary line ---------------------------------------------- */

struct totals {
    uint64_t lookups, translations, stale, duplicates, jumps, links, host_checks, invalidations,
        blocks_invalidated, flushes, collections;
};

static void add_counters(struct totals *t, struct counters *n)
{
    t->lookups += get(&n->lookups);
    t->translations += get(&n->translations);
    t->stale += get(&n->stale);
    t->duplicates += get(&n->duplicates);
    t->jumps += get(&n->jumps);
    t->links += get(&n->links);
    t->host_checks += get(&n->host_checks);
    t->invalidations += get(&n->invalidations);
    t->blocks_invalidated += get(&n->blocks_invalidated);
    t->flushes += get(&n->flushes);
    t->collections += get(&n->collections);
}

static struct totals totals(void)
{
    struct totals t = {0};
    for (int i = 0; i < g.n_vcpus; i++)
        add_counters(&t, &g.vcpus[i].n);
    for (int i = 0; i < g.n_invalidators; i++)
        add_counters(&t, &g.invalidators[i].n);
    add_counters(&t, &g.main_n);
    return t;
}

static void summary(const char *verdict, const char *why)
{
    struct totals t = totals();
    printf("tbcache-stress: %s lookups=%llu translations=%llu invalidations=%llu flushes=%llu "
           "jumps=%llu links=%llu stale=%llu duplicates=%llu blocks_invalidated=%llu "
           "host_checks=%llu collections=%llu errors=%llu vcpus=%d invalidators=%d seed=%llu "
           "duration=%.2fs%s%s\n",
           verdict, (unsigned long long)t.lookups, (unsigned long long)t.translations,
           (unsigned long long)t.invalidations, (unsigned long long)t.flushes,
           (unsigned long long)t.jumps, (unsigned long long)t.links, (unsigned long long)t.stale,
           (unsigned long long)t.duplicates, (unsigned long long)t.blocks_invalidated,
           (unsigned long long)t.host_checks, (unsigned long long)t.collections,
           (unsigned long long)atomic_load(&g.errors), g.n_vcpus, g.n_invalidators,
           (unsigned long long)g.seed, vck_now() - g.start, why ? " " : "", why ? why : "");
    fflush(stdout);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    int n = g.n_vcpus + g.n_invalidators + 1;
    uint64_t last[2 * MAX_VCPUS + 1];
    double since[2 * MAX_VCPUS + 1];
    for (int i = 0; i < n; i++) {
        last[i] = UINT64_MAX;
        since[i] = vck_now();
    }
    while (!atomic_load(&g.finished)) {
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        double now = vck_now();
        for (int i = 0; i < n; i++) {
            struct counters *c = i < g.n_vcpus ? &g.vcpus[i].n
                                 : i < n - 1   ? &g.invalidators[i - g.n_vcpus].n
                                               : &g.main_n;
            uint64_t p = get(&c->progress);
            if (p != last[i]) {
                last[i] = p;
                since[i] = now;
            } else if (now - since[i] >= DEADLOCK_SECONDS) {
                char why[96];
                snprintf(why, sizeof(why), "deadlock: %s %d made no progress for %d s",
                         i < g.n_vcpus ? "vcpu"
                         : i < n - 1   ? "invalidator"
                                       : "main",
                         i < g.n_vcpus ? i
                         : i < n - 1   ? i - g.n_vcpus
                                       : 0,
                         DEADLOCK_SECONDS);
                summary("FAIL", why);
                _exit(1);
            }
        }
    }
    return NULL;
}

/* The FAIL line survives the checker's abort or a crash (vck_stress_put_*: async-signal-safe). */

static void on_fatal_signal(int sig)
{
    struct totals t = totals();
    char buf[256];
    size_t n = vck_stress_put_str(buf, 0, "tbcache-stress: FAIL lookups=");
    n = vck_stress_put_u64(buf, n, t.lookups);
    n = vck_stress_put_str(buf, n, " translations=");
    n = vck_stress_put_u64(buf, n, t.translations);
    n = vck_stress_put_str(buf, n, " invalidations=");
    n = vck_stress_put_u64(buf, n, t.invalidations);
    n = vck_stress_put_str(buf, n, " flushes=");
    n = vck_stress_put_u64(buf, n, t.flushes);
    n = vck_stress_put_str(buf, n, " errors=");
    n = vck_stress_put_u64(buf, n, atomic_load(&g.errors));
    n = vck_stress_put_str(buf, n, " seed=");
    n = vck_stress_put_u64(buf, n, g.seed);
    n = vck_stress_put_str(buf, n, sig == SIGABRT ? " aborted" : " crashed, signal ");
    if (sig != SIGABRT)
        n = vck_stress_put_u64(buf, n, (uint64_t)sig);
    buf[n++] = '\n';
    if (write(STDOUT_FILENO, buf, n) < 0)
        _exit(1);
    _exit(1);
}

static void install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGABRT, &sa, NULL);
#ifndef STRESS_SANITIZED
    /* The sanitizers report faults better themselves. */
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
#endif
}

/* ---- main ---------------------------------------------------------------------------------- */

/* After the run, single-threaded: the cache's counters against ours, then reclamation. */
static void audit(void)
{
    struct totals t = totals();
    struct vck_tb_cache_stats st;
    vck_tb_cache_get_stats(g.c, &st);
    if (st.added != t.translations || st.duplicates != t.duplicates || st.stale_adds != t.stale ||
        st.flushes != t.flushes || st.invalidated > st.added ||
        st.blocks != st.added - st.invalidated)
        report("stats: added %llu (ours %llu) duplicates %llu (%llu) stale %llu (%llu) flushes "
               "%llu (%llu) invalidated %llu blocks %llu",
               (unsigned long long)st.added, (unsigned long long)t.translations,
               (unsigned long long)st.duplicates, (unsigned long long)t.duplicates,
               (unsigned long long)st.stale_adds, (unsigned long long)t.stale,
               (unsigned long long)st.flushes, (unsigned long long)t.flushes,
               (unsigned long long)st.invalidated, (unsigned long long)st.blocks);
    vck_tb_cache_free(g.c); /* invalidates the rest, waits for every free_tb */
    uint64_t frees = atomic_load(&g.frees);
    if (frees != st.added)
        report("free_tb ran %llu times for %llu accepted blocks", (unsigned long long)frees,
               (unsigned long long)st.added);
    for (int p = 0; p < VPAGES; p++)
        if (atomic_load(&g.page_has_code[p]))
            report("page_code never said page %#x lost its code",
                   (unsigned)((PHYS_BASE_PAGE + p) << PAGE_BITS));
    for (size_t i = 0; i < QUARANTINE; i++)
        free(g.quarantine[i]);
}

int main(int argc, char **argv)
{
    struct vck_stress_args args = {.duration = 2.0, .threads = 2, .accepts_until_fail = true};
    vck_stress_parse(argc, argv, &args, "tbcache-stress");
    if (args.threads > MAX_VCPUS) {
        fprintf(stderr, "tbcache-stress: at most %d vCPU threads\n", MAX_VCPUS);
        return 2;
    }
    g.seed = args.seed;
    g.n_vcpus = args.threads;
    g.n_invalidators = args.threads;
    install_signal_handlers();
    pthread_mutex_init(&g.quarantine_lock, NULL);

    uint64_t rng = args.seed;
    for (uint32_t i = 0; i < VPAGES; i++)
        g.perm[i] = i;
    for (uint32_t i = VPAGES - 1; i > 0; i--) {
        uint32_t j = (uint32_t)vck_rand_below(&rng, i + 1), t = g.perm[i];
        g.perm[i] = g.perm[j];
        g.perm[j] = t;
    }
    for (int i = 0; i < ALIASES; i++) {
        uint32_t v = (uint32_t)vck_rand_below(&rng, VPAGES - 1);
        g.perm[v + 1] = g.perm[v];
    }
    for (size_t i = 0; i < WORDS; i++)
        atomic_init(&g.mem[i], (uint32_t)vck_rand(&rng));

    vck_rcu_register_thread();
    struct vck_tb_cache_options opts = {
        .page_bits = PAGE_BITS,
        .jc_bits = 10,
        .pc_shift = 2,
        .table_size = 64, /* grows while the run fills it */
        .free_tb = free_tb,
        .page_code = page_code,
        .jump_set = jump_set,
    };
    g.c = vck_tb_cache_new(&opts);
    if (!g.c)
        return 1;
    for (int i = 0; i < g.n_vcpus; i++) {
        struct vcpu *v = &g.vcpus[i];
        v->id = i;
        v->rng = mix(args.seed * 7919 + (uint64_t)i);
        v->ops = calloc(CODE_OPS, sizeof(*v->ops));
        if (!v->ops)
            return 1;
        /* Registered before any thread starts (see the report on code regions and flushes). */
        vck_tb_code_region_add(g.c, v->ops, CODE_OPS * sizeof(*v->ops));
    }

    g.start = vck_now();
    pthread_t watchdog;
    pthread_create(&watchdog, NULL, watchdog_main, NULL);
    for (int i = 0; i < g.n_vcpus; i++)
        pthread_create(&g.vcpus[i].thread, NULL, vcpu_main, &g.vcpus[i]);
    for (int i = 0; i < g.n_invalidators; i++) {
        struct invalidator *inv = &g.invalidators[i];
        inv->id = i;
        inv->rng = mix(args.seed * 104729 + (uint64_t)i);
        pthread_create(&inv->thread, NULL, invalidator_main, inv);
    }

    vck_rcu_thread_offline();
    while (vck_now() - g.start < args.duration && !(args.until_fail && atomic_load(&g.errors))) {
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
        bump(&g.main_n.progress);
    }
    atomic_store(&g.stop_invalidators, true);
    for (int i = 0; i < g.n_invalidators; i++)
        pthread_join(g.invalidators[i].thread, NULL);
    bump(&g.main_n.progress);
    atomic_store(&g.stop_vcpus, true);
    for (int i = 0; i < g.n_vcpus; i++)
        pthread_join(g.vcpus[i].thread, NULL);
    bump(&g.main_n.progress);
    vck_rcu_thread_online();
    double elapsed = vck_now() - g.start;

    audit();
    bump(&g.main_n.progress);
    atomic_store(&g.finished, true);
    pthread_join(watchdog, NULL);

    /*
     * Progress floors at about a tenth of a ThreadSanitizer build on two cores (which makes
     * about 50000 lookups, 25000 translations and 900 range invalidations a second).
     */
    struct totals t = totals();
    bool progress =
        t.lookups >= (uint64_t)(5000 * elapsed) && t.translations >= (uint64_t)(2500 * elapsed) &&
        t.invalidations >= (uint64_t)(90 * elapsed) && t.flushes > 0 && t.jumps > 0 && t.links > 0;
    bool pass = atomic_load(&g.errors) == 0 && progress;
    summary(pass ? "PASS" : "FAIL", progress ? NULL : "too little progress");
    for (int i = 0; i < g.n_vcpus; i++)
        free(g.vcpus[i].ops);
    vck_rcu_unregister_thread();
    return pass ? 0 : 1;
}
