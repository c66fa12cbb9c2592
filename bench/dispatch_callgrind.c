/*
 * vck-dispatch-callgrind N [MODE [SECTIONS]]: N translations in a loop, for counting
 * instructions under callgrind. Run it with two values of N: the difference in instructions
 * divided by the difference in N is the cost of one translation plus the loop's few.
 *
 *   mru            vck_dispatch_translate() of one address (an MRU hit), in one read-side section
 *   mru-section    the same, one read-side section per translation
 *   miss           random addresses inside the SECTIONS ranges (about 1/SECTIONS MRU hits)
 *   bsearch-mru    the peer: vck_flatview_find() over the current view, then the same answers
 *   bsearch-miss
 *
 * SECTIONS defaults to 1000 (dispatch_layout.h's map). Exit status 2 on a bad command line, 1
 * if a translation of an assigned address failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/rcu.h>

#include "dispatch_layout.h"

static int usage(void)
{
    fprintf(stderr, "usage: vck-dispatch-callgrind N [mru|mru-section|miss|bsearch-mru|"
                    "bsearch-miss [SECTIONS]]\n");
    return 2;
}

/* The same answers as a translation, from the binary search (dispatch_bench.c's peer). */
static uint64_t bsearch_translate(const struct vck_as *as, uint64_t addr, bool *ok)
{
    const struct vck_flat_range *r = vck_flatview_find(vck_as_view(as), addr);
    *ok = r != NULL;
    if (!r)
        return addr;
    uint64_t room = r->last - addr + 1, len = room && room < 4 ? room : 4;
    uint64_t offset = r->offset + (addr - r->start);
    uint8_t *base = vck_mr_host(r->mr);
    return offset ^ len ^ (uint64_t)(uintptr_t)(base ? base + offset : NULL);
}

/* One loop per mode, so that each iteration costs a translation and a few instructions. */
struct loop_result {
    uint64_t ok, sink;
};

static struct loop_result dispatch_mru(const struct dlayout *l, uint64_t n)
{
    struct loop_result r = {0};
    const uint64_t a = l->mru_addr;
    vck_rcu_read_lock();
    for (uint64_t i = 0; i < n; i++) {
        struct vck_xlat x;
        r.ok += vck_dispatch_translate(l->d, a, 4, false, &x) == VCK_MEM_OK;
        r.sink ^= (uint64_t)(uintptr_t)x.host;
    }
    vck_rcu_read_unlock();
    return r;
}

static struct loop_result dispatch_mru_per_call(const struct dlayout *l, uint64_t n)
{
    struct loop_result r = {0};
    const uint64_t a = l->mru_addr;
    for (uint64_t i = 0; i < n; i++) {
        struct vck_xlat x;
        vck_rcu_read_lock();
        r.ok += vck_dispatch_translate(l->d, a, 4, false, &x) == VCK_MEM_OK;
        r.sink ^= (uint64_t)(uintptr_t)x.host;
        vck_rcu_read_unlock();
    }
    return r;
}

static struct loop_result dispatch_random(const struct dlayout *l, uint64_t n)
{
    struct loop_result r = {0};
    const uint64_t *addrs = l->addrs;
    vck_rcu_read_lock();
    for (uint64_t i = 0; i < n; i++) {
        struct vck_xlat x;
        r.ok += vck_dispatch_translate(l->d, addrs[i & (DLAYOUT_ADDRS - 1)], 4, false, &x) ==
                VCK_MEM_OK;
        r.sink ^= (uint64_t)(uintptr_t)x.host;
    }
    vck_rcu_read_unlock();
    return r;
}

static struct loop_result bsearch_mru(const struct dlayout *l, uint64_t n)
{
    struct loop_result r = {0};
    const uint64_t a = l->mru_addr;
    vck_rcu_read_lock();
    for (uint64_t i = 0; i < n; i++) {
        bool found;
        r.sink ^= bsearch_translate(l->as, a, &found);
        r.ok += found;
    }
    vck_rcu_read_unlock();
    return r;
}

static struct loop_result bsearch_random(const struct dlayout *l, uint64_t n)
{
    struct loop_result r = {0};
    const uint64_t *addrs = l->addrs;
    vck_rcu_read_lock();
    for (uint64_t i = 0; i < n; i++) {
        bool found;
        r.sink ^= bsearch_translate(l->as, addrs[i & (DLAYOUT_ADDRS - 1)], &found);
        r.ok += found;
    }
    vck_rcu_read_unlock();
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4)
        return usage();
    char *end;
    unsigned long long n = strtoull(argv[1], &end, 0);
    if (*end || argv[1][0] == '-')
        return usage();
    const char *mode = argc > 2 ? argv[2] : "mru";
    bool bsearch = strncmp(mode, "bsearch-", 8) == 0;
    const char *what = bsearch ? mode + 8 : mode;
    bool random = strcmp(what, "miss") == 0;
    bool per_call = strcmp(what, "mru-section") == 0;
    if (!random && !per_call && strcmp(what, "mru") != 0)
        return usage();
    if (bsearch && per_call)
        return usage();
    size_t sections = 1000;
    if (argc > 3) {
        sections = strtoul(argv[3], &end, 0);
        if (*end || sections < 2 || sections > 100000)
            return usage();
    }

    vck_rcu_register_thread();
    struct dlayout *l = dlayout_new(sections, true, 0, 42);
    struct loop_result r = {0};
    if (bsearch)
        r = random ? bsearch_random(l, n) : bsearch_mru(l, n);
    else if (random)
        r = dispatch_random(l, n);
    else
        r = per_call ? dispatch_mru_per_call(l, n) : dispatch_mru(l, n);
    uint64_t ok = r.ok, sink = r.sink;
    printf("vck-dispatch-callgrind: mode=%s n=%llu sections=%zu ok=%llu sink=%#llx\n", mode, n,
           sections, (unsigned long long)ok, (unsigned long long)sink);
    dlayout_free(l);
    vck_rcu_unregister_thread();
    return ok == n ? 0 : 1;
}
