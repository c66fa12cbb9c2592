/*
 * vck-tbcache-callgrind MODE N - N lookups of one kind in a vCPU's loop, for counting
 * instructions under callgrind. Run it for N and 2N: the difference of the two totals divided by
 * N is the cost of one iteration, setup and teardown cancelling out.
 *
 *   jc     every vck_tb_lookup() hits the jump cache: up to 1024 blocks, one per slot, warmed
 *   table  every lookup misses the jump cache and hits the block table: pairs of blocks that
 *          share a slot, visited as A0..Am-1 then B0..Bm-1, so each evicts its partner
 *   loop   the same loop around no lookup at all: the floor to subtract from the other two
 *
 * The loop is tbcache_bench.c's: PCs read in turn from an array, one RCU read-side section per
 * 64 lookups. The guest is the same RISC-V-like one (4 KiB pages, pc_shift 1, a 4096-slot jump
 * cache, a linear mapping from virtual to physical); the blocks are 24 bytes every 40 bytes,
 * those crossing a page end left out, so that a table hit never translates a second page.
 *
 * Exit status: 0; 1 if a lookup did not go the way MODE says; 2 for a bad command line.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/rcu.h>
#include <vcpukit/tbcache.h>

#include "vck_bench.h" /* vck_bench_keep() only */

#define PAGE_BITS    12
#define PAGE_SIZE    ((uint64_t)1 << PAGE_BITS)
#define JC_BITS      12
#define RAM_BASE     0x80000000ull
#define RAM_SIZE     (64ull << 20)
#define VA_OFFSET    0xffffffff00000000ull
#define GUEST_FLAGS  0x3u
#define CANDIDATES   8192
#define BLOCK_STRIDE 40
#define BLOCK_SIZE   24
#define MAX_KEYS     1024
#define PER_SECTION  64

static bool guest_phys(void *opaque, uint64_t vaddr, uint64_t *phys)
{
    (void)opaque;
    uint64_t pa = vaddr - VA_OFFSET;
    if (pa - RAM_BASE >= RAM_SIZE)
        return false;
    *phys = pa;
    return true;
}

/* The loop; @fixed (a constant at each call) picks vck_tb_lookup_fixed(). */
static inline __attribute__((always_inline)) uint64_t
lookups(struct vck_tb_cpu *cpu, const uint64_t *pcs, size_t n_pcs, uint64_t n, bool fixed)
{
    uint64_t found = 0;
    size_t i = 0;
    for (uint64_t done = 0; done < n; done += PER_SECTION) {
        uint64_t b = n - done < PER_SECTION ? n - done : PER_SECTION;
        vck_rcu_read_lock();
        for (uint64_t j = 0; j < b; j++) {
            uint64_t pc = pcs[i];
            if (++i == n_pcs)
                i = 0;
            struct vck_tb *tb = fixed ? vck_tb_lookup_fixed(cpu, pc, GUEST_FLAGS, 0, guest_phys,
                                                            NULL, PAGE_BITS, JC_BITS, 1)
                                      : vck_tb_lookup(cpu, pc, GUEST_FLAGS, 0, guest_phys, NULL);
            found += tb != NULL;
            vck_bench_keep(tb);
        }
        vck_rcu_read_unlock();
    }
    return found;
}

/* Out of line, so that callgrind_annotate shows the loop's own instructions as one function. */
static __attribute__((noinline)) uint64_t run_lookups(struct vck_tb_cpu *cpu, const uint64_t *pcs,
                                                      size_t n_pcs, uint64_t n)
{
    return lookups(cpu, pcs, n_pcs, n, false);
}

static __attribute__((noinline)) uint64_t
run_lookups_fixed(struct vck_tb_cpu *cpu, const uint64_t *pcs, size_t n_pcs, uint64_t n)
{
    return lookups(cpu, pcs, n_pcs, n, true);
}

static __attribute__((noinline)) uint64_t run_floor(const uint64_t *pcs, size_t n_pcs, uint64_t n)
{
    uint64_t found = 0;
    size_t i = 0;
    for (uint64_t done = 0; done < n; done += PER_SECTION) {
        uint64_t b = n - done < PER_SECTION ? n - done : PER_SECTION;
        vck_rcu_read_lock();
        for (uint64_t j = 0; j < b; j++) {
            uint64_t pc = pcs[i];
            if (++i == n_pcs)
                i = 0;
            found += pc != 0;
            vck_bench_keep(pc);
        }
        vck_rcu_read_unlock();
    }
    return found;
}

static void free_block(void *opaque, struct vck_tb *tb)
{
    (void)opaque;
    free(tb);
}

static int usage(void)
{
    fprintf(stderr, "usage: vck-tbcache-callgrind jc|jc-fixed|table|loop N\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return usage();
    const char *mode = argv[1];
    char *end;
    uint64_t n = strtoull(argv[2], &end, 10);
    bool fixed = !strcmp(mode, "jc-fixed");
    if (fixed)
        mode = "jc";
    if (*end || !n || (strcmp(mode, "jc") && strcmp(mode, "table") && strcmp(mode, "loop")))
        return usage();

    vck_rcu_register_thread();
    struct vck_tb_cache_options opts = {
        .page_bits = PAGE_BITS, .jc_bits = JC_BITS, .pc_shift = 1, .free_tb = free_block};
    struct vck_tb_cache *c = vck_tb_cache_new(&opts);
    struct vck_tb_cpu *cpu = c ? vck_tb_cpu_new(c) : NULL;
    uint64_t *first = calloc((size_t)1 << JC_BITS, sizeof(*first)); /* per slot: pc, or 0 */
    uint64_t *second = calloc((size_t)1 << JC_BITS, sizeof(*second));
    uint64_t *pcs = malloc(2 * MAX_KEYS * sizeof(*pcs));
    if (!cpu || !first || !second || !pcs) {
        fprintf(stderr, "vck-tbcache-callgrind: out of memory\n");
        return 1;
    }
    for (uint64_t k = 0; k < CANDIDATES; k++) {
        uint64_t phys = RAM_BASE + k * BLOCK_STRIDE;
        if ((phys >> PAGE_BITS) != ((phys + BLOCK_SIZE - 1) >> PAGE_BITS))
            continue;
        struct vck_tb *tb = calloc(1, sizeof(*tb));
        if (!tb) {
            fprintf(stderr, "vck-tbcache-callgrind: out of memory\n");
            return 1;
        }
        tb->pc = phys + VA_OFFSET;
        tb->phys_pc = phys;
        tb->phys_page2 = VCK_TB_NO_PAGE2;
        tb->flags = GUEST_FLAGS;
        tb->size = BLOCK_SIZE;
        tb->page_gen[0] = vck_tb_page_gen(c, phys);
        atomic_init(&tb->cflags, 0);
        if (vck_tb_add(c, NULL, tb) != tb) {
            fprintf(stderr, "vck-tbcache-callgrind: vck_tb_add refused a block\n");
            return 1;
        }
        uint32_t slot = vck_tb_jc_slot(cpu, tb->pc);
        if (!first[slot])
            first[slot] = tb->pc;
        else if (!second[slot])
            second[slot] = tb->pc;
    }
    size_t n_pcs = 0;
    if (!strcmp(mode, "table")) {
        size_t pairs = 0;
        for (size_t s = 0; s < ((size_t)1 << JC_BITS) && pairs < MAX_KEYS; s++) {
            if (second[s]) {
                pcs[pairs] = first[s];
                pcs[MAX_KEYS + pairs] = second[s];
                pairs++;
            }
        }
        memmove(pcs + pairs, pcs + MAX_KEYS, pairs * sizeof(*pcs));
        n_pcs = 2 * pairs;
    } else {
        for (size_t s = 0; s < ((size_t)1 << JC_BITS) && n_pcs < MAX_KEYS; s++)
            if (first[s])
                pcs[n_pcs++] = first[s];
    }

    int status = 0;
    if (!strcmp(mode, "loop")) {
        uint64_t found = run_floor(pcs, n_pcs, n);
        printf("loop: %llu iterations over %zu PCs\n", (unsigned long long)found, n_pcs);
    } else {
        if (!strcmp(mode, "jc"))
            run_lookups(cpu, pcs, n_pcs, n_pcs); /* fill the jump cache */
        uint64_t looked0 = cpu->table_lookups, table0 = cpu->table_hits;
        uint64_t found =
            fixed ? run_lookups_fixed(cpu, pcs, n_pcs, n) : run_lookups(cpu, pcs, n_pcs, n);
        uint64_t table = cpu->table_hits - table0;
        /* Hits count nothing in the vCPU: what did not go on to the table hit the jump cache. */
        uint64_t jc = n - (cpu->table_lookups - looked0);
        printf("%s: %llu lookups over %zu PCs: %llu found, %llu jump-cache hits, %llu table hits\n",
               mode, (unsigned long long)n, n_pcs, (unsigned long long)found,
               (unsigned long long)jc, (unsigned long long)table);
        bool as_said =
            !strcmp(mode, "jc") ? jc == n && found == n : jc == 0 && table == n && found == n;
        if (!as_said) {
            fprintf(stderr, "vck-tbcache-callgrind: lookups did not go the way '%s' says\n", mode);
            status = 1;
        }
    }
    free(pcs);
    free(second);
    free(first);
    vck_tb_cpu_free(cpu);
    vck_tb_cache_free(c);
    vck_rcu_unregister_thread();
    return status;
}
