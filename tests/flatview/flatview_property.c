/*
 * Property tests of the memory map against a naive reference: random region trees and random
 * change sequences, applied both to the kit and to a model kept here, and every view compared
 * with what the model says answers at each address.
 *
 * The oracle is resolve() below, a direct transcription of the rules in <vcpukit/rcu.h>: a
 * disabled region or an address past a region's size answers nothing; read-only accumulates on
 * the way down; an alias forwards to its target at address + offset; a container asks its
 * children in priority order (highest first, the later-added first among equals) and the first
 * child that answers wins, so a child's holes let lower siblings show. It resolves one address by
 * walking the model, and knows nothing about ranges.
 *
 * Checks are exhaustive, not sampled, whenever the tree is small enough: the model is walked
 * once to collect every place where the mapping can change (each visible region's clipped start
 * and end, through every container and alias path), and both the view and the oracle are affine
 * between consecutive points of that set together with the view's own boundaries. So comparing
 * them at every such point and one below it, plus at each range's start - 1, start, last and
 * last + 1, compares them everywhere. When a tree has too many paths for that the check falls
 * back to those boundaries plus random addresses; the summary counts how often that happened.
 *
 * Properties:
 *  1. render: the view of a random tree agrees with the oracle and is canonical (sorted,
 *     disjoint, no two adjacent ranges that could merge, each range inside its region).
 *  2. incremental == full: one change sequence applied to a default memmap and to one with
 *     VCK_MEMMAP_FULL_RENDER; after every commit the two views are identical range by range
 *     (regions matched through the model), both agree with the oracle, a view is published
 *     exactly when the ranges changed, and the statistics count that.
 *  3. listeners: a listener that mirrors the view by applying dels then adds to a copy of the
 *     previous view (nops must be present) ends each commit with exactly the new view; dels are
 *     exactly old - new, adds new - old, nops old & new; phases come in order across listeners.
 *
 * Replay: each case has its own seed, printed in every failure (cases share memmaps, up to
 * POOL_CASES in a row; a case replayed alone gets a fresh one). VCK_FLATVIEW_SEED=<seed> runs
 * only that case (in each property); VCK_FLATVIEW_TRACE=1 prints every operation as it is
 * applied; VCK_FLATVIEW_CASES=<n> changes the number of cases (a soak).
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/rcu.h>

#include "stress.h"

typedef unsigned __int128 u128;
typedef __int128 s128;

#define SPACE ((u128)1 << 64)

enum {
    MAX_NODES = 48,
    MAX_SIDES = 2,
    MAX_AS = 2,
    MAX_POINTS = 4096,
    WALK_BUDGET = 20000,
    RANDOM_PROBES = 48,
    MAX_LISTENERS = 2,
};

/* ---------------------------------------------------------------------------------------- */
/* The model.                                                                                */

struct node {
    bool live;
    enum vck_mr_kind kind;
    uint64_t size; /* as the API spells it: VCK_MR_SIZE_FULL is 2^64 */
    uint64_t backing;
    bool own_backing; /* vck_mr_new_ram rather than _ram_ptr */
    bool enabled, readonly;
    int parent; /* -1: unmapped */
    uint64_t addr;
    int prio;
    uint64_t seq; /* add order */
    int target;   /* aliases */
    uint64_t alias_off;
    int alias_users; /* live aliases targeting this node */
    int roots;       /* address spaces rooted here */
    struct vck_mr *mr[MAX_SIDES];
};

/* A range in model terms: regions by node index, so two memmaps' views can be compared. */
struct mrange {
    uint64_t start, last;
    int node;
    uint64_t offset;
    bool ro;
};

struct mirror;

/*
 * Memmaps are reused across cases: vck_memmap_free() waits for reclamation, which liburcu's
 * callback thread batches in 10 ms naps, so one memmap per case would spend most of the run
 * asleep. A pool's memmap is freed (and its release callbacks counted) every POOL_CASES cases.
 */
enum { POOL_CASES = 100 };

struct pool {
    unsigned flags;
    struct vck_memmap *mm;
    atomic_int released;
    int created, uses;
};

struct world {
    const char *prop;
    uint64_t seed, rng;
    int step;
    char op_text[192];
    bool trace;

    int n_sides;
    unsigned flags[MAX_SIDES];
    struct vck_memmap *mm[MAX_SIDES];
    struct pool *pool[MAX_SIDES];

    struct node n[MAX_NODES];
    int count;
    int kids[MAX_NODES][MAX_NODES]; /* render order: priority desc, then seq desc */
    int n_kids[MAX_NODES];
    uint64_t next_seq;

    int n_as;
    int as_root[MAX_AS];
    struct vck_as *as[MAX_SIDES][MAX_AS];
    struct mrange *prev[MAX_SIDES][MAX_AS];
    size_t n_prev[MAX_SIDES][MAX_AS];
    uint64_t prev_gen[MAX_SIDES][MAX_AS];

    struct mirror *mirrors[MAX_LISTENERS]; /* property 3, in registration order */
    int n_mirrors;
};

/* Totals over a property's cases, for its summary line. */
struct tally {
    unsigned long cases, steps, checks, probes, sampled, views, ranges, changed, empty;
};

static struct tally tally;

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *s = getenv(name);
    return s && *s ? strtoull(s, NULL, 0) : dflt;
}

static void world_fail(const struct world *w, int line, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    cr_assert_fail("%s: seed %#" PRIx64 ", step %d, last op \"%s\", line %d: %s\n"
                   "  replay: VCK_FLATVIEW_SEED=%#" PRIx64
                   " VCK_FLATVIEW_TRACE=1 test-flatview-property --filter 'flatview_property/%s'",
                   w->prop, w->seed, w->step, w->op_text, line, what, w->seed, w->prop);
}

#define CHECK(w, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            world_fail((w), __LINE__, __VA_ARGS__);                                                \
    } while (0)

static uint64_t rnd(struct world *w)
{
    return vck_rand(&w->rng);
}

static uint64_t below(struct world *w, uint64_t n)
{
    return vck_rand_below(&w->rng, n);
}

static bool chance(struct world *w, unsigned pct)
{
    return below(w, 100) < pct;
}

static u128 size_of(const struct node *n)
{
    return n->size == VCK_MR_SIZE_FULL ? SPACE : (u128)n->size;
}

/* Render order of @c's children, rebuilt after every change to the model. */
static void reindex(struct world *w)
{
    for (int i = 0; i < w->count; i++)
        w->n_kids[i] = 0;
    for (int i = 0; i < w->count; i++) {
        const struct node *k = &w->n[i];
        if (!k->live || k->parent < 0)
            continue;
        int p = k->parent, at = w->n_kids[p]++;
        /* Insertion: before the first kid that k outranks. */
        while (at > 0) {
            const struct node *o = &w->n[w->kids[p][at - 1]];
            bool k_first = k->prio > o->prio || (k->prio == o->prio && k->seq > o->seq);
            if (!k_first)
                break;
            w->kids[p][at] = w->kids[p][at - 1];
            at--;
        }
        w->kids[p][at] = i;
    }
}

struct answer {
    int node;
    uint64_t off;
    bool ro;
};

/* The oracle: who answers at @x in node @r's coordinates. */
static bool resolve(const struct world *w, int r, u128 x, bool ro, struct answer *out)
{
    const struct node *n = &w->n[r];
    if (!n->enabled || x >= size_of(n))
        return false;
    ro |= n->readonly;
    switch (n->kind) {
    case VCK_MR_RAM:
    case VCK_MR_MMIO:
        out->node = r;
        out->off = (uint64_t)x;
        out->ro = ro;
        return true;
    case VCK_MR_ALIAS:
        return resolve(w, n->target, x + n->alias_off, ro, out);
    case VCK_MR_CONTAINER:
        for (int i = 0; i < w->n_kids[r]; i++) {
            const struct node *k = &w->n[w->kids[r][i]];
            if (x >= k->addr && resolve(w, w->kids[r][i], x - k->addr, ro, out))
                return true;
        }
        return false;
    }
    return false;
}

static bool as_answer(const struct world *w, int asi, uint64_t addr, struct answer *out)
{
    return resolve(w, w->as_root[asi], addr, false, out);
}

/* Is @to reachable from @from through children and alias targets (itself included)? */
static bool reaches(const struct world *w, int from, int to)
{
    if (from == to)
        return true;
    const struct node *n = &w->n[from];
    if (n->kind == VCK_MR_ALIAS && reaches(w, n->target, to))
        return true;
    for (int i = 0; i < w->n_kids[from]; i++)
        if (reaches(w, w->kids[from][i], to))
            return true;
    return false;
}

/* ---------------------------------------------------------------------------------------- */
/* Operations, applied to the model and to every side's memmap.                              */

enum op_type {
    OP_CREATE,
    OP_ADD,
    OP_DEL,
    OP_MOVE,
    OP_PRIO,
    OP_RESIZE,
    OP_ENABLE,
    OP_READONLY,
    OP_RETARGET,
    OP_DESTROY,
};

struct op {
    enum op_type type;
    enum vck_mr_kind kind; /* create */
    int a, b;              /* the node changed; add: a container, b child; retarget: b target */
    uint64_t u, v;         /* address, size or offset; create: u size, v alias offset */
    int prio;
    bool flag;
    bool own_backing;
};

static const char *kind_names[] = {"container", "ram", "mmio", "alias"};

static void op_describe(struct world *w, const struct op *op)
{
    char *t = w->op_text;
    size_t cap = sizeof(w->op_text);
    switch (op->type) {
    case OP_CREATE:
        if (op->kind == VCK_MR_ALIAS)
            snprintf(t, cap, "create n%d alias of n%d +%#" PRIx64 " size %#" PRIx64, op->a, op->b,
                     op->v, op->u);
        else
            snprintf(t, cap, "create n%d %s size %#" PRIx64 "%s", op->a, kind_names[op->kind],
                     op->u, op->own_backing ? " (own backing)" : "");
        break;
    case OP_ADD:
        snprintf(t, cap, "add n%d to n%d at %#" PRIx64 " prio %d", op->b, op->a, op->u, op->prio);
        break;
    case OP_DEL:
        snprintf(t, cap, "del n%d", op->a);
        break;
    case OP_MOVE:
        snprintf(t, cap, "move n%d to %#" PRIx64, op->a, op->u);
        break;
    case OP_PRIO:
        snprintf(t, cap, "prio n%d %d", op->a, op->prio);
        break;
    case OP_RESIZE:
        snprintf(t, cap, "resize n%d %#" PRIx64, op->a, op->u);
        break;
    case OP_ENABLE:
        snprintf(t, cap, "%s n%d", op->flag ? "enable" : "disable", op->a);
        break;
    case OP_READONLY:
        snprintf(t, cap, "readonly n%d %d", op->a, op->flag);
        break;
    case OP_RETARGET:
        snprintf(t, cap, "retarget n%d to n%d +%#" PRIx64, op->a, op->b, op->u);
        break;
    case OP_DESTROY:
        snprintf(t, cap, "destroy n%d", op->a);
        break;
    }
    if (w->trace)
        fprintf(stderr, "[%s %#" PRIx64 " step %d] %s\n", w->prop, w->seed, w->step, t);
}

static const struct vck_mr_ops null_ops;
static uint8_t shared_host[0x4000]; /* backs every _ram_ptr region; never read by the kit */

static void count_release(void *opaque)
{
    atomic_fetch_add((atomic_int *)opaque, 1);
}

static void op_apply_kit(struct world *w, int s, const struct op *op)
{
    struct vck_memmap *mm = w->mm[s];
    struct node *a = op->a >= 0 ? &w->n[op->a] : NULL;
    struct node *b = op->b >= 0 ? &w->n[op->b] : NULL;
    switch (op->type) {
    case OP_CREATE: {
        char name[16];
        snprintf(name, sizeof(name), "n%d", op->a);
        struct vck_mr *mr = NULL;
        switch (op->kind) {
        case VCK_MR_CONTAINER:
            mr = vck_mr_new_container(mm, name, op->u);
            break;
        case VCK_MR_RAM:
            mr = op->own_backing ? vck_mr_new_ram(mm, name, op->u)
                                 : vck_mr_new_ram_ptr(mm, name, op->u, shared_host);
            break;
        case VCK_MR_MMIO:
            mr = vck_mr_new_mmio(mm, name, op->u, &null_ops, NULL);
            break;
        case VCK_MR_ALIAS:
            mr = vck_mr_new_alias(mm, name, b->mr[s], op->v, op->u);
            break;
        }
        CHECK(w, mr != NULL, "region constructor returned NULL");
        vck_mr_set_release(mr, count_release, &w->pool[s]->released);
        w->pool[s]->created++;
        a->mr[s] = mr;
        break;
    }
    case OP_ADD:
        vck_mr_add_subregion(a->mr[s], op->u, b->mr[s], op->prio);
        break;
    case OP_DEL:
        vck_mr_del_subregion(w->n[a->parent].mr[s], a->mr[s]);
        break;
    case OP_MOVE:
        vck_mr_set_address(a->mr[s], op->u);
        break;
    case OP_PRIO:
        vck_mr_set_priority(a->mr[s], op->prio);
        break;
    case OP_RESIZE:
        vck_mr_set_size(a->mr[s], op->u);
        break;
    case OP_ENABLE:
        vck_mr_set_enabled(a->mr[s], op->flag);
        break;
    case OP_READONLY:
        vck_mr_set_readonly(a->mr[s], op->flag);
        break;
    case OP_RETARGET:
        vck_mr_set_alias_target(a->mr[s], b->mr[s], op->u);
        break;
    case OP_DESTROY:
        vck_mr_destroy(a->mr[s]);
        a->mr[s] = NULL;
        break;
    }
}

static void op_apply_model(struct world *w, const struct op *op)
{
    struct node *a = &w->n[op->a];
    switch (op->type) {
    case OP_CREATE: {
        struct vck_mr *mrs[MAX_SIDES]; /* op_apply_kit() made them already */
        memcpy(mrs, a->mr, sizeof(mrs));
        memset(a, 0, sizeof(*a));
        memcpy(a->mr, mrs, sizeof(mrs));
        a->live = true;
        a->kind = op->kind;
        a->size = op->u;
        a->backing = op->u;
        a->own_backing = op->own_backing;
        a->enabled = true;
        a->parent = -1;
        a->target = -1;
        if (op->kind == VCK_MR_ALIAS) {
            a->target = op->b;
            a->alias_off = op->v;
            w->n[op->b].alias_users++;
        }
        break;
    }
    case OP_ADD:
        w->n[op->b].parent = op->a;
        w->n[op->b].addr = op->u;
        w->n[op->b].prio = op->prio;
        w->n[op->b].seq = ++w->next_seq;
        break;
    case OP_DEL:
        a->parent = -1;
        a->addr = 0;
        break;
    case OP_MOVE:
        a->addr = op->u;
        break;
    case OP_PRIO:
        a->prio = op->prio;
        break;
    case OP_RESIZE:
        a->size = op->u;
        break;
    case OP_ENABLE:
        a->enabled = op->flag;
        break;
    case OP_READONLY:
        a->readonly = op->flag;
        break;
    case OP_RETARGET:
        w->n[a->target].alias_users--;
        a->target = op->b;
        a->alias_off = op->u;
        w->n[op->b].alias_users++;
        break;
    case OP_DESTROY:
        if (a->kind == VCK_MR_ALIAS)
            w->n[a->target].alias_users--;
        a->live = false;
        break;
    }
    reindex(w);
}

static void apply(struct world *w, const struct op *op)
{
    op_describe(w, op);
    for (int s = 0; s < w->n_sides; s++)
        op_apply_kit(w, s, op);
    op_apply_model(w, op);
}

static void txn_begin(struct world *w)
{
    for (int s = 0; s < w->n_sides; s++)
        vck_memmap_begin(w->mm[s]);
}

static void txn_commit(struct world *w)
{
    for (int s = 0; s < w->n_sides; s++)
        vck_memmap_commit(w->mm[s]);
}

/* ---------------------------------------------------------------------------------------- */
/* Random choices, biased to the interesting places.                                         */

/* Sizes: @giant_pct percent of them 2^63 bytes or more (they hide whatever is under them). */
static uint64_t rand_size_g(struct world *w, unsigned giant_pct)
{
    if (chance(w, giant_pct)) {
        uint64_t g = below(w, 4);
        return g < 2   ? VCK_MR_SIZE_FULL
               : g < 3 ? UINT64_MAX - 1 - below(w, 0x100)
                       : (uint64_t)1 << 63;
    }
    uint64_t d = below(w, 100);
    if (d < 5)
        return 0;
    if (d < 10)
        return 1;
    if (d < 80)
        return 2 + below(w, 0x400);
    if (d < 92)
        return below(w, 0x3000);
    return 2 + below(w, 0x40);
}

static uint64_t rand_size(struct world *w)
{
    return rand_size_g(w, 4);
}

static uint64_t rand_container_size(struct world *w)
{
    uint64_t d = below(w, 100);
    if (d < 3)
        return 0;
    if (d < 6)
        return 1;
    if (d < 60)
        return 0x100 + below(w, 0x3000);
    if (d < 80)
        return VCK_MR_SIZE_FULL;
    return rand_size_g(w, 15);
}

static uint64_t rand_ram_backing(struct world *w)
{
    uint64_t d = below(w, 100);
    if (d < 10)
        return 1;
    if (d < 90)
        return 1 + below(w, 0x400);
    return 1 + below(w, sizeof(shared_host));
}

static uint64_t below_min(struct world *w, u128 size, uint64_t cap)
{
    return size == 0 ? 0 : below(w, size < cap ? (uint64_t)size : cap);
}

/* An address for a child of a container of @csize bytes. */
static uint64_t rand_addr(struct world *w, u128 csize)
{
    uint64_t d = below(w, 100);
    if (d < 6)
        return 0;
    if (d < 76)
        return below_min(w, csize, 0x3000);
    if (d < 80) /* at or just past the container's end */
        return csize < SPACE ? (uint64_t)csize + below(w, 0x40) : UINT64_MAX - below(w, 0x40);
    if (d < 85) /* straddling it */
        return csize < SPACE && csize >= 0x40 ? (uint64_t)csize - below(w, 0x40)
                                              : UINT64_MAX - below(w, 0x80);
    if (d < 90)
        return UINT64_MAX - below(w, 0x200);
    if (d < 95)
        return ((uint64_t)1 << 63) - below(w, 0x100);
    return rnd(w);
}

static uint64_t rand_alias_off(struct world *w, const struct node *target)
{
    uint64_t d = below(w, 100);
    u128 ts = size_of(target);
    if (d < 35)
        return 0;
    if (d < 75)
        return below_min(w, ts, 0x400);
    if (d < 83)
        return ts >= 0x40 && ts < SPACE ? (uint64_t)ts - below(w, 0x40) : below(w, 0x40);
    if (d < 90)
        return UINT64_MAX - below(w, 0x100);
    if (d < 96)
        return below(w, 0x2000);
    return rnd(w);
}

static int rand_prio(struct world *w)
{
    uint64_t d = below(w, 100);
    if (d < 80)
        return (int)below(w, 5) - 2;
    if (d < 85)
        return INT_MAX;
    if (d < 90)
        return INT_MIN;
    return (int)below(w, 200) - 100;
}

/* A random live node satisfying @ok, or -1. */
static int pick(struct world *w, bool (*ok)(const struct world *, int, int), int arg)
{
    int cand[MAX_NODES], n = 0;
    for (int i = 0; i < w->count; i++)
        if (w->n[i].live && ok(w, i, arg))
            cand[n++] = i;
    return n ? cand[below(w, (uint64_t)n)] : -1;
}

static bool is_any(const struct world *w, int i, int arg)
{
    (void)w;
    (void)i;
    (void)arg;
    return true;
}

static bool is_not_root(const struct world *w, int i, int arg)
{
    (void)w;
    (void)arg;
    return i != 0;
}

static bool is_mapped(const struct world *w, int i, int arg)
{
    (void)arg;
    return w->n[i].parent >= 0;
}

static bool is_unmapped(const struct world *w, int i, int arg)
{
    (void)arg;
    return w->n[i].parent < 0;
}

static bool is_alias(const struct world *w, int i, int arg)
{
    (void)arg;
    return w->n[i].kind == VCK_MR_ALIAS;
}

/* A container @i that can take node @sub without making a cycle. */
static bool can_hold(const struct world *w, int i, int sub)
{
    return w->n[i].kind == VCK_MR_CONTAINER && !reaches(w, sub, i);
}

/* A target @i that alias @alias can show without making a cycle. */
static bool can_target(const struct world *w, int i, int alias)
{
    return !reaches(w, i, alias);
}

/* A container for @sub: the root half of the time, so most of the tree is visible. */
static int pick_container(struct world *w, int sub)
{
    if (w->n[0].live && chance(w, 50) && can_hold(w, 0, sub))
        return 0;
    return pick(w, can_hold, sub);
}

static bool is_destroyable(const struct world *w, int i, int arg)
{
    (void)arg;
    const struct node *n = &w->n[i];
    return n->parent < 0 && w->n_kids[i] == 0 && n->alias_users == 0 && n->roots == 0;
}

static void gen_create(struct world *w, struct op *op, int force_kind)
{
    memset(op, 0, sizeof(*op));
    op->type = OP_CREATE;
    op->a = w->count++;
    op->b = -1;
    uint64_t d = below(w, 100);
    op->kind = force_kind >= 0 ? (enum vck_mr_kind)force_kind
               : d < 20        ? VCK_MR_CONTAINER
               : d < 50        ? VCK_MR_RAM
               : d < 78        ? VCK_MR_MMIO
                               : VCK_MR_ALIAS;
    if (op->kind == VCK_MR_ALIAS && op->a == 0)
        op->kind = VCK_MR_MMIO;
    switch (op->kind) {
    case VCK_MR_RAM:
        op->u = rand_ram_backing(w);
        op->own_backing = chance(w, 10);
        break;
    case VCK_MR_ALIAS:
        /* Rarely the root: an alias of it can only be mapped outside its tree. */
        op->b = chance(w, 95) ? pick(w, is_not_root, 0) : -1;
        if (op->b < 0)
            op->b = pick(w, is_any, 0);
        op->u = rand_size_g(w, 30);
        op->v = rand_alias_off(w, &w->n[op->b]);
        break;
    case VCK_MR_CONTAINER:
        op->u = rand_container_size(w);
        break;
    default:
        op->u = rand_size(w);
        break;
    }
}

/* One random change that is legal in the model's current state; false if none was found. */
static bool gen_change(struct world *w, struct op *op)
{
    for (int tries = 0; tries < 20; tries++) {
        memset(op, 0, sizeof(*op));
        op->a = op->b = -1;
        uint64_t d = below(w, 100);
        if (d < 14) {
            op->type = OP_ADD;
            op->b = pick(w, is_unmapped, 0);
            if (op->b < 0)
                continue;
            op->a = pick_container(w, op->b);
            if (op->a < 0)
                continue;
            op->u = rand_addr(w, size_of(&w->n[op->a]));
            op->prio = rand_prio(w);
        } else if (d < 24) {
            op->type = OP_DEL;
            op->a = pick(w, is_mapped, 0);
        } else if (d < 38) {
            op->type = OP_MOVE;
            op->a = pick(w, is_mapped, 0);
            if (op->a >= 0)
                op->u = rand_addr(w, size_of(&w->n[w->n[op->a].parent]));
        } else if (d < 48) {
            op->type = OP_PRIO;
            op->a = pick(w, is_mapped, 0);
            op->prio = rand_prio(w);
        } else if (d < 62) {
            op->type = OP_RESIZE;
            op->a = pick(w, chance(w, 90) ? is_not_root : is_any, 0);
            if (op->a < 0)
                continue;
            const struct node *n = &w->n[op->a];
            if (n->kind == VCK_MR_RAM) {
                uint64_t r = below(w, 100);
                op->u = r < 25 ? n->backing : r < 35 ? 0 : below(w, n->backing + 1);
            } else if (n->kind == VCK_MR_CONTAINER) {
                op->u = rand_container_size(w);
            } else {
                op->u = rand_size(w);
            }
        } else if (d < 72) {
            op->type = OP_ENABLE;
            op->a = pick(w, chance(w, 90) ? is_not_root : is_any, 0);
            op->flag = op->a >= 0 && !w->n[op->a].enabled ? true : chance(w, 30);
        } else if (d < 82) {
            op->type = OP_READONLY;
            op->a = pick(w, chance(w, 90) ? is_not_root : is_any, 0);
            op->flag = op->a >= 0 && w->n[op->a].readonly ? chance(w, 20) : chance(w, 70);
        } else if (d < 93) {
            op->type = OP_RETARGET;
            op->a = pick(w, is_alias, 0);
            if (op->a < 0)
                continue;
            op->b = pick(w, can_target, op->a);
            if (op->b < 0)
                continue;
            op->u = rand_alias_off(w, &w->n[op->b]);
        } else if (d < 97) {
            if (w->count >= MAX_NODES)
                continue;
            gen_create(w, op, -1);
            return true;
        } else {
            op->type = OP_DESTROY;
            op->a = pick(w, is_destroyable, 0);
        }
        if (op->a >= 0)
            return true;
    }
    return false;
}

/* ---------------------------------------------------------------------------------------- */
/* Looking at views.                                                                         */

static int node_of(const struct world *w, int s, const struct vck_mr *mr)
{
    for (int i = 0; i < w->count; i++)
        if (w->n[i].live && w->n[i].mr[s] == mr)
            return i;
    return -1;
}

struct points {
    u128 v[MAX_POINTS];
    int n;
    bool incomplete;
};

static void points_add(struct points *p, s128 x)
{
    if (x < 0 || x > (s128)SPACE)
        return;
    if (p->n == MAX_POINTS) {
        p->incomplete = true;
        return;
    }
    p->v[p->n++] = (u128)x;
}

/* Every clipped start and end of every visible region, along every path from the root. */
static void walk(const struct world *w, int r, s128 base, s128 lo, s128 hi, struct points *p,
                 int *budget)
{
    const struct node *n = &w->n[r];
    if (!n->enabled)
        return;
    if (--*budget < 0) {
        p->incomplete = true;
        return;
    }
    s128 nlo = base > lo ? base : lo;
    s128 end = base + (s128)size_of(n);
    s128 nhi = end < hi ? end : hi;
    if (nlo >= nhi)
        return;
    points_add(p, nlo);
    points_add(p, nhi);
    if (n->kind == VCK_MR_ALIAS)
        walk(w, n->target, base - (s128)n->alias_off, nlo, nhi, p, budget);
    else if (n->kind == VCK_MR_CONTAINER)
        for (int i = 0; i < w->n_kids[r]; i++)
            walk(w, w->kids[r][i], base + (s128)w->n[w->kids[r][i]].addr, nlo, nhi, p, budget);
}

static void check_addr(const struct world *w, int s, int asi, const struct vck_flatview *view,
                       uint64_t addr)
{
    struct answer want;
    bool hit = as_answer(w, asi, addr, &want);
    const struct vck_flat_range *r = vck_flatview_find(view, addr);
    tally.probes++;
    if (!hit) {
        CHECK(w, r == NULL,
              "side %d as %d: at %#" PRIx64 " the view has [%#" PRIx64 ", %#" PRIx64
              "] %s, the oracle nothing",
              s, asi, addr, r->start, r->last, vck_mr_name(r->mr));
        return;
    }
    CHECK(w, r != NULL,
          "side %d as %d: at %#" PRIx64 " the view has nothing, the oracle n%d +%#" PRIx64 "%s", s,
          asi, addr, want.node, want.off, want.ro ? " ro" : "");
    CHECK(w, r->start <= addr && addr <= r->last,
          "side %d as %d: find(%#" PRIx64 ") returned [%#" PRIx64 ", %#" PRIx64 "]", s, asi, addr,
          r->start, r->last);
    int got = node_of(w, s, r->mr);
    uint64_t off = r->offset + (addr - r->start);
    CHECK(w, got == want.node && off == want.off && r->readonly == want.ro,
          "side %d as %d: at %#" PRIx64 " the view has n%d +%#" PRIx64 "%s (range [%#" PRIx64
          ", %#" PRIx64 "]), the oracle n%d +%#" PRIx64 "%s",
          s, asi, addr, got, off, r->readonly ? " ro" : "", r->start, r->last, want.node, want.off,
          want.ro ? " ro" : "");
}

/* The view is canonical and agrees with the oracle everywhere (see the top comment). */
static void check_view(struct world *w, int s, int asi)
{
    static struct points p;
    vck_rcu_read_lock();
    const struct vck_flatview *view = vck_as_view(w->as[s][asi]);
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(view, &n);
    for (size_t i = 0; i < n; i++) {
        CHECK(w, r[i].start <= r[i].last,
              "side %d as %d: range %zu is [%#" PRIx64 ", %#" PRIx64 "]", s, asi, i, r[i].start,
              r[i].last);
        int k = node_of(w, s, r[i].mr);
        CHECK(w, k >= 0, "side %d as %d: range %zu names a region that is not live", s, asi, i);
        CHECK(w, w->n[k].kind == VCK_MR_RAM || w->n[k].kind == VCK_MR_MMIO,
              "side %d as %d: range %zu names n%d, a %s", s, asi, i, k, kind_names[w->n[k].kind]);
        CHECK(w, vck_mr_kind(r[i].mr) == w->n[k].kind, "kind of n%d differs", k);
        CHECK(w, (u128)r[i].offset + (r[i].last - r[i].start) < size_of(&w->n[k]),
              "side %d as %d: range %zu [%#" PRIx64 ", %#" PRIx64 "] +%#" PRIx64
              " runs past the end of n%d",
              s, asi, i, r[i].start, r[i].last, r[i].offset, k);
        if (i == 0)
            continue;
        const struct vck_flat_range *a = &r[i - 1], *b = &r[i];
        CHECK(w, a->last < b->start,
              "side %d as %d: ranges %zu and %zu overlap or are unsorted: [%#" PRIx64 ", %#" PRIx64
              "] then [%#" PRIx64 ", %#" PRIx64 "]",
              s, asi, i - 1, i, a->start, a->last, b->start, b->last);
        bool mergeable = a->mr == b->mr && a->readonly == b->readonly && a->last + 1 == b->start &&
                         (u128)a->offset + (a->last - a->start) + 1 == (u128)b->offset;
        CHECK(w, !mergeable,
              "side %d as %d: ranges %zu and %zu should have been merged: [%#" PRIx64 ", %#" PRIx64
              "] +%#" PRIx64 " and [%#" PRIx64 ", %#" PRIx64 "] +%#" PRIx64 " of %s",
              s, asi, i - 1, i, a->start, a->last, a->offset, b->start, b->last, b->offset,
              vck_mr_name(a->mr));
    }
    if (w->trace) {
        fprintf(stderr, "[%s %#" PRIx64 " step %d] side %d as%d: %zu ranges\n", w->prop, w->seed,
                w->step, s, asi, n);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "    [%#" PRIx64 ", %#" PRIx64 "] %s +%#" PRIx64 "%s\n", r[i].start,
                    r[i].last, vck_mr_name(r[i].mr), r[i].offset, r[i].readonly ? " ro" : "");
    }
    for (size_t i = 0; i < n; i++) {
        check_addr(w, s, asi, view, r[i].start);
        check_addr(w, s, asi, view, r[i].last);
        if (r[i].start > 0)
            check_addr(w, s, asi, view, r[i].start - 1);
        if (r[i].last < UINT64_MAX)
            check_addr(w, s, asi, view, r[i].last + 1);
    }
    p.n = 0;
    p.incomplete = false;
    int budget = WALK_BUDGET;
    const struct node *root = &w->n[w->as_root[asi]];
    walk(w, w->as_root[asi], 0, 0, (s128)size_of(root), &p, &budget);
    points_add(&p, 0);
    points_add(&p, (s128)SPACE);
    for (int i = 0; i < p.n; i++) {
        if (p.v[i] < SPACE)
            check_addr(w, s, asi, view, (uint64_t)p.v[i]);
        if (p.v[i] > 0)
            check_addr(w, s, asi, view, (uint64_t)(p.v[i] - 1));
    }
    int probes = p.incomplete ? 16 * RANDOM_PROBES : RANDOM_PROBES;
    for (int i = 0; i < probes; i++) {
        uint64_t addr;
        if (p.n && chance(w, 70)) {
            u128 base = p.v[below(w, (uint64_t)p.n)];
            addr = (uint64_t)(base + below(w, 5) - 2); /* wraps harmlessly at the ends */
        } else {
            addr = chance(w, 50) ? below(w, 0x10000) : rnd(w);
        }
        check_addr(w, s, asi, view, addr);
    }
    if (p.incomplete)
        tally.sampled++;
    tally.checks++;
    tally.ranges += n;
    tally.empty += n == 0;
    vck_rcu_read_unlock();
}

/* The current view of (@s, @asi) in model terms; *gen gets its generation. Caller frees. */
static struct mrange *snapshot(const struct world *w, int s, int asi, size_t *n, uint64_t *gen)
{
    vck_rcu_read_lock();
    const struct vck_flatview *view = vck_as_view(w->as[s][asi]);
    const struct vck_flat_range *r = vck_flatview_ranges(view, n);
    struct mrange *m = malloc((*n ? *n : 1) * sizeof(*m));
    cr_assert_not_null(m);
    for (size_t i = 0; i < *n; i++)
        m[i] = (struct mrange){r[i].start, r[i].last, node_of(w, s, r[i].mr), r[i].offset,
                               r[i].readonly};
    *gen = vck_flatview_generation(view);
    vck_rcu_read_unlock();
    return m;
}

static bool mranges_equal(const struct mrange *a, size_t na, const struct mrange *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (a[i].start != b[i].start || a[i].last != b[i].last || a[i].node != b[i].node ||
            a[i].offset != b[i].offset || a[i].ro != b[i].ro)
            return false;
    return true;
}

/* Remember every view as it is now (after an address space was created, say). */
static void remember_views(struct world *w)
{
    for (int s = 0; s < w->n_sides; s++)
        for (int asi = 0; asi < w->n_as; asi++) {
            free(w->prev[s][asi]);
            w->prev[s][asi] = snapshot(w, s, asi, &w->n_prev[s][asi], &w->prev_gen[s][asi]);
        }
}

/*
 * After one outermost commit: every view is right, the sides agree, a view was published
 * exactly where the ranges changed, and the statistics say so. Returns how many views changed
 * on side 0.
 */
static int check_commit(struct world *w, const struct vck_memmap_stats *before)
{
    int changed0 = 0;
    for (int s = 0; s < w->n_sides; s++) {
        int changed = 0;
        for (int asi = 0; asi < w->n_as; asi++) {
            check_view(w, s, asi);
            size_t n;
            uint64_t gen;
            struct mrange *m = snapshot(w, s, asi, &n, &gen);
            bool same = mranges_equal(m, n, w->prev[s][asi], w->n_prev[s][asi]);
            CHECK(w, gen == w->prev_gen[s][asi] + (same ? 0 : 1),
                  "side %d as %d: the ranges %s and the generation went from %" PRIu64
                  " to %" PRIu64,
                  s, asi, same ? "did not change" : "changed", w->prev_gen[s][asi], gen);
            changed += !same;
            tally.changed += !same;
            free(w->prev[s][asi]);
            w->prev[s][asi] = m;
            w->n_prev[s][asi] = n;
            w->prev_gen[s][asi] = gen;
            tally.views++;
        }
        if (before) {
            struct vck_memmap_stats st;
            vck_memmap_get_stats(w->mm[s], &st);
            CHECK(w, st.commits == before[s].commits + 1,
                  "side %d: one outermost commit counted as %" PRIu64, s,
                  st.commits - before[s].commits);
            CHECK(w, st.views_published == before[s].views_published + (uint64_t)changed,
                  "side %d: %d views changed, views_published grew by %" PRIu64, s, changed,
                  st.views_published - before[s].views_published);
            if (w->flags[s] & VCK_MEMMAP_FULL_RENDER)
                CHECK(w, st.renders_incremental == 0,
                      "side %d renders from scratch but counted %" PRIu64 " incremental renders", s,
                      st.renders_incremental);
        }
        if (s == 0)
            changed0 = changed;
    }
    /* The sides agree range by range. */
    for (int s = 1; s < w->n_sides; s++)
        for (int asi = 0; asi < w->n_as; asi++) {
            const struct mrange *a = w->prev[0][asi], *b = w->prev[s][asi];
            size_t na = w->n_prev[0][asi], nb = w->n_prev[s][asi];
            CHECK(w, na == nb, "as %d: side 0 (flags %#x) has %zu ranges, side %d (flags %#x) %zu",
                  asi, w->flags[0], na, s, w->flags[s], nb);
            for (size_t i = 0; i < na; i++)
                CHECK(w,
                      a[i].start == b[i].start && a[i].last == b[i].last &&
                          a[i].node == b[i].node && a[i].offset == b[i].offset &&
                          a[i].ro == b[i].ro,
                      "as %d range %zu: side 0 [%#" PRIx64 ", %#" PRIx64 "] n%d +%#" PRIx64
                      "%s, side %d [%#" PRIx64 ", %#" PRIx64 "] n%d +%#" PRIx64 "%s",
                      asi, i, a[i].start, a[i].last, a[i].node, a[i].offset, a[i].ro ? " ro" : "",
                      s, b[i].start, b[i].last, b[i].node, b[i].offset, b[i].ro ? " ro" : "");
        }
    return changed0;
}

/* ---------------------------------------------------------------------------------------- */
/* Worlds: set up, build a random tree, tear down.                                           */

static struct pool pools[8];

static struct pool *pool_get(unsigned flags)
{
    for (size_t i = 0; i < sizeof(pools) / sizeof(pools[0]); i++) {
        struct pool *p = &pools[i];
        if (p->mm && p->flags == flags)
            return p;
    }
    for (size_t i = 0; i < sizeof(pools) / sizeof(pools[0]); i++) {
        struct pool *p = &pools[i];
        if (p->mm)
            continue;
        struct vck_memmap_options o;
        memset(&o, 0, sizeof(o));
        o.flags = p->flags = flags;
        p->mm = vck_memmap_new(&o);
        cr_assert_not_null(p->mm);
        atomic_init(&p->released, 0);
        p->created = p->uses = 0;
        return p;
    }
    cr_assert_fail("out of memmap pools");
    return NULL;
}

/* Free the memmap: every region made on it must have been released by then. */
static void pool_close(const struct world *w, struct pool *p)
{
    vck_memmap_free(p->mm);
    p->mm = NULL;
    CHECK(w, atomic_load(&p->released) == p->created,
          "flags %#x: %d of %d release callbacks ran by vck_memmap_free()", p->flags,
          atomic_load(&p->released), p->created);
}

static void world_init(struct world *w, const char *prop, uint64_t seed, int n_sides,
                       const unsigned *flags)
{
    memset(w, 0, sizeof(*w));
    w->prop = prop;
    w->seed = w->rng = seed;
    w->step = -1;
    snprintf(w->op_text, sizeof(w->op_text), "(none)");
    w->trace = env_u64("VCK_FLATVIEW_TRACE", 0) != 0;
    w->n_sides = n_sides;
    for (int s = 0; s < n_sides; s++) {
        w->flags[s] = flags[s];
        w->pool[s] = pool_get(flags[s]);
        w->mm[s] = w->pool[s]->mm;
    }
}

static void world_add_as(struct world *w, int root)
{
    int asi = w->n_as++;
    w->as_root[asi] = root;
    w->n[root].roots++;
    for (int s = 0; s < w->n_sides; s++) {
        char name[16];
        snprintf(name, sizeof(name), "as%d", asi);
        w->as[s][asi] = vck_as_new(w->mm[s], name, w->n[root].mr[s]);
        cr_assert_not_null(w->as[s][asi]);
    }
    if (w->trace)
        fprintf(stderr, "[%s %#" PRIx64 "] address space as%d on n%d\n", w->prop, w->seed, asi,
                root);
}

static bool is_second_root(const struct world *w, int i, int arg)
{
    (void)arg;
    return i != 0 &&
           ((w->n[i].kind == VCK_MR_CONTAINER && w->n_kids[i] > 0) || w->n[i].kind == VCK_MR_ALIAS);
}

static bool is_terminal(const struct world *w, int i, int arg)
{
    (void)arg;
    return w->n[i].kind == VCK_MR_RAM || w->n[i].kind == VCK_MR_MMIO;
}

/*
 * Two aliases of one region at contiguous offsets, mapped side by side: what merging is about.
 * Sometimes the offsets leave a gap, or one of the pair is read-only, so that they must not.
 */
static void add_alias_pair(struct world *w)
{
    if (w->count + 2 > MAX_NODES)
        return;
    int t = pick(w, chance(w, 80) ? is_terminal : is_not_root, 0);
    if (t < 0)
        return;
    u128 ts = size_of(&w->n[t]);
    uint64_t off = below_min(w, ts, 0x200), s1 = 1 + below(w, 0x100), s2 = 1 + below(w, 0x100);
    if (ts == SPACE && chance(w, 20))
        off = UINT64_MAX - s1 + 1; /* the pair straddles the end of a full-size region */
    int a1 = w->count++;
    struct op op = {.type = OP_CREATE, .kind = VCK_MR_ALIAS, .a = a1, .b = t, .u = s1, .v = off};
    apply(w, &op);
    int a2 = w->count++;
    uint64_t off2 = off + s1 + (chance(w, 15) ? 1 + below(w, 4) : 0);
    op = (struct op){.type = OP_CREATE, .kind = VCK_MR_ALIAS, .a = a2, .b = t, .u = s2, .v = off2};
    apply(w, &op);
    int c = pick_container(w, a1);
    if (c < 0 || !can_hold(w, c, a2))
        return;
    uint64_t addr = below_min(w, size_of(&w->n[c]), 0x3000);
    int prio = chance(w, 50) ? 3 : rand_prio(w);
    op = (struct op){.type = OP_ADD, .a = c, .b = a1, .u = addr, .prio = prio};
    apply(w, &op);
    op = (struct op){.type = OP_ADD, .a = c, .b = a2, .u = addr + s1, .prio = prio};
    apply(w, &op);
    if (chance(w, 20)) {
        op = (struct op){.type = OP_READONLY, .a = chance(w, 50) ? a1 : a2, .b = -1, .flag = true};
        apply(w, &op);
    }
}

/*
 * A random tree under node 0 (a container): nested containers, overlapping children, aliases
 * of anything (aliases and containers included), disabled and read-only regions. The address
 * spaces are created before or after it is built, and it is built in one transaction or one
 * commit per change, so both first renders and incremental ones get the fresh trees.
 */
static void build_tree(struct world *w, int second_as_pct)
{
    int nodes = 2 + (int)below(w, chance(w, 25) ? MAX_NODES - 10 : 30);
    bool as_first = chance(w, 50), in_txn = chance(w, 50);
    struct op op;
    gen_create(w, &op, VCK_MR_CONTAINER);
    if (chance(w, 50))
        op.u = VCK_MR_SIZE_FULL;
    else if (chance(w, 60))
        op.u = 0x1000 + below(w, 0x10000);
    apply(w, &op);
    if (as_first)
        world_add_as(w, 0);
    if (in_txn)
        txn_begin(w);
    for (int i = 1; i < nodes; i++) {
        gen_create(w, &op, -1);
        apply(w, &op);
    }
    /* Containers first, so that what is added to them is mostly under the root too. */
    int order[MAX_NODES], n_order = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 1; i < w->count; i++)
            if ((w->n[i].kind == VCK_MR_CONTAINER) == (pass == 0))
                order[n_order++] = i;
    for (int j = 0; j < n_order; j++) {
        int i = order[j];
        if (!chance(w, 85))
            continue;
        memset(&op, 0, sizeof(op));
        op.type = OP_ADD;
        op.b = i;
        op.a = pick_container(w, i);
        if (op.a < 0)
            continue;
        op.u = rand_addr(w, size_of(&w->n[op.a]));
        op.prio = rand_prio(w);
        apply(w, &op);
    }
    for (int pairs = chance(w, 50) ? 1 + (int)below(w, 3) : 0; pairs > 0; pairs--)
        add_alias_pair(w);
    for (int i = 0; i < w->count; i++) {
        if (i == 0 && !chance(w, 2))
            continue; /* a disabled or read-only root says little about the rest */
        if (chance(w, 7)) {
            op = (struct op){.type = OP_ENABLE, .a = i, .b = -1, .flag = false};
            apply(w, &op);
        }
        if (chance(w, 10)) {
            op = (struct op){.type = OP_READONLY, .a = i, .b = -1, .flag = true};
            apply(w, &op);
        }
    }
    if (in_txn)
        txn_commit(w);
    if (!as_first)
        world_add_as(w, 0);
    if (chance(w, second_as_pct)) {
        int r = pick(w, is_second_root, 0);
        if (r >= 0)
            world_add_as(w, r);
    }
    snprintf(w->op_text, sizeof(w->op_text), "(tree built)");
}

static void world_free(struct world *w)
{
    struct op op;
    for (int asi = 0; asi < w->n_as; asi++) {
        for (int s = 0; s < w->n_sides; s++) {
            vck_as_destroy(w->as[s][asi]);
            free(w->prev[s][asi]);
            w->prev[s][asi] = NULL;
        }
        w->n[w->as_root[asi]].roots--;
    }
    w->n_as = 0;
    for (int i = 0; i < w->count; i++)
        if (w->n[i].live && w->n[i].parent >= 0) {
            op = (struct op){.type = OP_DEL, .a = i, .b = -1};
            apply(w, &op);
        }
    for (bool any = true; any;) {
        any = false;
        for (int i = 0; i < w->count; i++)
            if (w->n[i].live && is_destroyable(w, i, 0)) {
                op = (struct op){.type = OP_DESTROY, .a = i, .b = -1};
                apply(w, &op);
                any = true;
            }
    }
    for (int i = 0; i < w->count; i++)
        CHECK(w, !w->n[i].live, "teardown left n%d", i);
    for (int s = 0; s < w->n_sides; s++)
        if (++w->pool[s]->uses == POOL_CASES)
            pool_close(w, w->pool[s]);
}

/* Cases of a property: VCK_FLATVIEW_SEED replays one, VCK_FLATVIEW_CASES sets how many. */
typedef void case_fn(uint64_t seed);

static void run_cases(const char *prop, unsigned prop_id, unsigned dflt_cases, case_fn *fn)
{
    vck_rcu_register_thread();
    memset(&tally, 0, sizeof(tally));
    const char *replay = getenv("VCK_FLATVIEW_SEED");
    if (replay && *replay) {
        fn(strtoull(replay, NULL, 0));
    } else {
        uint64_t cases = env_u64("VCK_FLATVIEW_CASES", dflt_cases);
        uint64_t base = ((uint64_t)prop_id << 32) | 0x5eed0000u;
        for (uint64_t i = 0; i < cases; i++)
            fn(base + i);
    }
    static struct world closing;
    memset(&closing, 0, sizeof(closing));
    closing.prop = prop;
    snprintf(closing.op_text, sizeof(closing.op_text), "(closing the memmaps)");
    for (size_t i = 0; i < sizeof(pools) / sizeof(pools[0]); i++)
        if (pools[i].mm)
            pool_close(&closing, &pools[i]);
    cr_log_info("%s: %lu cases, %lu commits (%lu views changed), %lu views checked "
                "(%lu empty, %lu by sampling only, %.1f ranges on average), %lu addresses probed",
                prop, tally.cases, tally.steps, tally.changed, tally.checks, tally.empty,
                tally.sampled, tally.checks ? (double)tally.ranges / (double)tally.checks : 0.0,
                tally.probes);
    cr_assert_gt(tally.checks, 0, "no view was checked");
    vck_rcu_unregister_thread();
}

/* ---------------------------------------------------------------------------------------- */
/* Property 1: rendering.                                                                    */

static void render_case(uint64_t seed)
{
    static struct world w;
    unsigned flags[1] = {0};
    uint64_t pick_flags = seed * 0x9e3779b97f4a7c15ULL >> 60;
    if (pick_flags & 1)
        flags[0] |= VCK_MEMMAP_FULL_RENDER;
    world_init(&w, "render", seed, 1, flags);
    build_tree(&w, 30);
    w.step = 0;
    for (int asi = 0; asi < w.n_as; asi++)
        check_view(&w, 0, asi);
    tally.cases++;
    world_free(&w);
}

Test(flatview_property, render)
{
    run_cases("render", 1, 10000, render_case);
}

/* ---------------------------------------------------------------------------------------- */
/* Property 2: incremental rendering equals full rendering.                                  */

enum { SEQ_STEPS = 40 };

/* One step: a single change, or a transaction of a few (sometimes with a nested one). */
static void random_step(struct world *w)
{
    struct op op;
    if (!chance(w, 40)) {
        /*
         * Constructors and vck_mr_destroy() are not documented as transactions of their own
         * (the tree changes are), so those go in one to keep "one step, one commit" exact.
         */
        bool ok = gen_change(w, &op);
        bool wrap = !ok || op.type == OP_CREATE || op.type == OP_DESTROY;
        if (wrap)
            txn_begin(w);
        if (ok)
            apply(w, &op);
        if (wrap)
            txn_commit(w);
        return;
    }
    int k = 2 + (int)below(w, 5), nest_at = chance(w, 30) ? (int)below(w, (uint64_t)k) : -1;
    int nest_end = nest_at >= 0 ? nest_at + 1 + (int)below(w, (uint64_t)(k - nest_at)) : -1;
    txn_begin(w);
    for (int i = 0; i < k; i++) {
        if (i == nest_at)
            txn_begin(w);
        if (gen_change(w, &op))
            apply(w, &op);
        if (i + 1 == nest_end)
            txn_commit(w);
    }
    txn_commit(w);
}

static void incremental_case(uint64_t seed)
{
    static struct world w;
    unsigned flags[2] = {0, VCK_MEMMAP_FULL_RENDER};
    if (seed & 1) /* quarantine on odd cases: a freed view read by mistake shows up as poison */
        flags[0] |= VCK_MEMMAP_QUARANTINE;
    world_init(&w, "incremental_equals_full", seed, 2, flags);
    build_tree(&w, 50);
    remember_views(&w);
    w.step = 0;
    check_commit(&w, NULL);
    for (w.step = 1; w.step <= SEQ_STEPS; w.step++) {
        struct vck_memmap_stats before[MAX_SIDES];
        for (int s = 0; s < w.n_sides; s++)
            vck_memmap_get_stats(w.mm[s], &before[s]);
        random_step(&w);
        check_commit(&w, before);
        tally.steps++;
    }
    tally.cases++;
    world_free(&w);
}

Test(flatview_property, incremental_equals_full)
{
    run_cases("incremental_equals_full", 2, 1500, incremental_case);
}

/* ---------------------------------------------------------------------------------------- */
/* Property 3: listeners.                                                                    */

enum { PH_IDLE, PH_BEGUN, PH_DELS, PH_ADDS };

struct mirror {
    struct vck_mem_listener l; /* first: callbacks cast back */
    struct world *w;
    int id;
    bool registered, leaving;
    int phase;
    struct vck_flat_range *cur, *work; /* last committed view; the one being built */
    size_t n_cur, n_work, cap;
    struct vck_flat_range *dels, *adds; /* this commit's, for the exact-diff check */
    size_t n_dels, n_adds, n_nops;
    uint64_t last_start; /* ascending order within a phase */
    bool any_in_phase;
    unsigned long calls; /* since the step began */
};

struct event {
    int id;
    char type;
    struct vck_flat_range r;
};

static struct event *events;
static size_t n_events, cap_events;

static void log_event(int id, char type, const struct vck_flat_range *r)
{
    if (n_events == cap_events) {
        cap_events = cap_events ? 2 * cap_events : 1024;
        events = realloc(events, cap_events * sizeof(*events));
        cr_assert_not_null(events);
    }
    events[n_events++] =
        (struct event){.id = id, .type = type, .r = r ? *r : (struct vck_flat_range){0}};
}

static bool fr_eq(const struct vck_flat_range *a, const struct vck_flat_range *b)
{
    return a->start == b->start && a->last == b->last && a->mr == b->mr && a->offset == b->offset &&
           a->readonly == b->readonly;
}

static void mirror_reserve(struct mirror *m, size_t need)
{
    if (m->cur && need <= m->cap)
        return; /* allocated from the first call on: memcpy never sees NULL */
    m->cap = need * 2 + 16;
    m->cur = realloc(m->cur, m->cap * sizeof(*m->cur));
    m->work = realloc(m->work, m->cap * sizeof(*m->work));
    m->dels = realloc(m->dels, m->cap * sizeof(*m->dels));
    m->adds = realloc(m->adds, m->cap * sizeof(*m->adds));
    cr_assert(m->cur && m->work && m->dels && m->adds);
}

static long find_range(const struct vck_flat_range *v, size_t n, const struct vck_flat_range *r)
{
    for (size_t i = 0; i < n; i++)
        if (fr_eq(&v[i], r))
            return (long)i;
    return -1;
}

static void order_check(struct mirror *m, const struct vck_flat_range *r, const char *what)
{
    CHECK(m->w, !m->any_in_phase || r->start > m->last_start,
          "L%d: %s [%#" PRIx64 ", %#" PRIx64 "] after one at %#" PRIx64 ": not ascending", m->id,
          what, r->start, r->last, m->last_start);
    m->any_in_phase = true;
    m->last_start = r->start;
}

static void mirror_begin(struct vck_mem_listener *l)
{
    struct mirror *m = (struct mirror *)l;
    log_event(m->id, 'b', NULL);
    m->calls++;
    CHECK(m->w, m->phase == PH_IDLE, "L%d: begin inside a commit", m->id);
    m->phase = PH_BEGUN;
    mirror_reserve(m, m->n_cur);
    memcpy(m->work, m->cur, m->n_cur * sizeof(*m->cur));
    m->n_work = m->n_cur;
    m->n_dels = m->n_adds = m->n_nops = 0;
    m->any_in_phase = false;
}

static void mirror_del(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    struct mirror *m = (struct mirror *)l;
    log_event(m->id, 'd', r);
    m->calls++;
    CHECK(m->w, m->phase == PH_BEGUN || m->phase == PH_DELS,
          "L%d: region_del [%#" PRIx64 ", %#" PRIx64 "] outside the del phase (phase %d)", m->id,
          r->start, r->last, m->phase);
    m->phase = PH_DELS;
    order_check(m, r, "del");
    long at = find_range(m->work, m->n_work, r);
    CHECK(m->w, at >= 0,
          "L%d: region_del [%#" PRIx64 ", %#" PRIx64 "] %s +%#" PRIx64
          " of a range not in the old view",
          m->id, r->start, r->last, vck_mr_name(r->mr), r->offset);
    memmove(&m->work[at], &m->work[at + 1], (m->n_work - (size_t)at - 1) * sizeof(*m->work));
    m->n_work--;
    m->dels[m->n_dels++] = *r;
}

static void add_phase(struct mirror *m, const struct vck_flat_range *r, const char *what)
{
    CHECK(m->w, m->phase != PH_IDLE, "L%d: region_%s outside a commit", m->id, what);
    if (m->phase != PH_ADDS)
        m->any_in_phase = false;
    m->phase = PH_ADDS;
    order_check(m, r, what);
}

static void mirror_add(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    struct mirror *m = (struct mirror *)l;
    log_event(m->id, 'a', r);
    m->calls++;
    add_phase(m, r, "add");
    size_t at = 0;
    while (at < m->n_work && m->work[at].start < r->start)
        at++;
    CHECK(m->w,
          (at == 0 || m->work[at - 1].last < r->start) &&
              (at == m->n_work || r->last < m->work[at].start),
          "L%d: region_add [%#" PRIx64 ", %#" PRIx64 "] overlaps a range still in the mirror",
          m->id, r->start, r->last);
    mirror_reserve(m, m->n_work + 1);
    memmove(&m->work[at + 1], &m->work[at], (m->n_work - at) * sizeof(*m->work));
    m->work[at] = *r;
    m->n_work++;
    m->adds[m->n_adds++] = *r;
}

static void mirror_nop(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    struct mirror *m = (struct mirror *)l;
    log_event(m->id, 'n', r);
    m->calls++;
    add_phase(m, r, "nop");
    CHECK(m->w, find_range(m->work, m->n_work, r) >= 0,
          "L%d: region_nop [%#" PRIx64 ", %#" PRIx64
          "] %s of a range not in the old view (or deleted)",
          m->id, r->start, r->last, vck_mr_name(r->mr));
    m->n_nops++;
}

static void mirror_commit(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    struct mirror *m = (struct mirror *)l;
    struct world *w = m->w;
    log_event(m->id, 'c', NULL);
    m->calls++;
    CHECK(w, m->phase != PH_IDLE, "L%d: commit without begin", m->id);
    m->phase = PH_IDLE;
    if (m->leaving) {
        CHECK(w, m->n_work == 0 && m->n_adds == 0 && m->n_nops == 0,
              "L%d: unregistering left %zu ranges in the mirror (%zu adds, %zu nops)", m->id,
              m->n_work, m->n_adds, m->n_nops);
        m->n_cur = 0;
        return;
    }
    vck_rcu_read_lock();
    const struct vck_flatview *cur = vck_as_view(w->as[0][0]);
    vck_rcu_read_unlock();
    CHECK(w, cur == view, "L%d: during commit, vck_as_view() is not the view handed to commit",
          m->id);
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(view, &n);
    CHECK(w, m->n_work == n, "L%d: the mirror has %zu ranges after the commit, the view %zu", m->id,
          m->n_work, n);
    for (size_t i = 0; i < n; i++)
        CHECK(w, fr_eq(&m->work[i], &r[i]),
              "L%d: mirror range %zu [%#" PRIx64 ", %#" PRIx64 "] +%#" PRIx64
              " differs from the view's [%#" PRIx64 ", %#" PRIx64 "] +%#" PRIx64,
              m->id, i, m->work[i].start, m->work[i].last, m->work[i].offset, r[i].start, r[i].last,
              r[i].offset);
    /* Exactly the difference: dels old - new, adds new - old, nops everything else. */
    CHECK(w, m->n_adds + m->n_nops == n, "L%d: %zu adds + %zu nops for a view of %zu ranges", m->id,
          m->n_adds, m->n_nops, n);
    for (size_t i = 0; i < m->n_dels; i++)
        CHECK(w, find_range(r, n, &m->dels[i]) < 0,
              "L%d: region_del [%#" PRIx64 ", %#" PRIx64 "] of a range that is in the new view too",
              m->id, m->dels[i].start, m->dels[i].last);
    for (size_t i = 0; i < m->n_adds; i++)
        CHECK(w, find_range(m->cur, m->n_cur, &m->adds[i]) < 0,
              "L%d: region_add [%#" PRIx64 ", %#" PRIx64 "] of a range that was in the old view",
              m->id, m->adds[i].start, m->adds[i].last);
    mirror_reserve(m, n);
    memcpy(m->cur, m->work, n * sizeof(*m->cur));
    m->n_cur = n;
}

static void mirror_register(struct world *w, struct mirror *m)
{
    m->registered = true;
    m->leaving = false;
    m->n_cur = 0;
    m->phase = PH_IDLE;
    m->calls = 0;
    n_events = 0;
    snprintf(w->op_text, sizeof(w->op_text), "register L%d", m->id);
    vck_as_listener_register(w->as[0][0], &m->l);
    w->mirrors[w->n_mirrors++] = m;
    CHECK(w, m->calls >= 2, "L%d: registration made %lu calls", m->id, m->calls);
    CHECK(w, m->n_dels == 0 && m->n_nops == 0, "L%d: the replay had %zu dels and %zu nops", m->id,
          m->n_dels, m->n_nops);
}

static void mirror_unregister(struct world *w, struct mirror *m)
{
    m->leaving = true;
    m->calls = 0;
    snprintf(w->op_text, sizeof(w->op_text), "unregister L%d", m->id);
    size_t had = m->n_cur;
    vck_as_listener_unregister(&m->l);
    CHECK(w, m->n_dels == had, "L%d: unregistering deleted %zu of %zu ranges", m->id, m->n_dels,
          had);
    m->registered = false;
    int j = 0;
    for (int i = 0; i < w->n_mirrors; i++)
        if (w->mirrors[i] != m)
            w->mirrors[j++] = w->mirrors[i];
    w->n_mirrors = j;
}

static int reg_pos(const struct world *w, int id)
{
    for (int i = 0; i < w->n_mirrors; i++)
        if (w->mirrors[i]->id == id)
            return i;
    return -1;
}

static int phase_rank(char type)
{
    return type == 'b' ? 0 : type == 'd' ? 1 : type == 'c' ? 3 : 2;
}

/* The calls of one commit, across listeners: phases in order, each listener in its place. */
static void check_event_order(struct world *w, bool changed)
{
    for (int i = 0; i < w->n_mirrors; i++) {
        const struct mirror *m = w->mirrors[i];
        CHECK(w, changed || m->calls == 0, "L%d: %lu calls for a commit that published nothing",
              m->id, m->calls);
        CHECK(w, !changed || m->calls >= 2, "L%d: only %lu calls for a commit that published",
              m->id, m->calls);
        CHECK(w, m->phase == PH_IDLE, "L%d: left inside a commit", m->id);
        int begins = 0, commits = 0;
        for (size_t e = 0; e < n_events; e++) {
            begins += events[e].id == m->id && events[e].type == 'b';
            commits += events[e].id == m->id && events[e].type == 'c';
        }
        CHECK(w, begins == (changed ? 1 : 0) && commits == begins,
              "L%d: %d begins and %d commits for one commit that %s", m->id, begins, commits,
              changed ? "published a view" : "published nothing");
    }
    for (size_t i = 1; i < n_events; i++)
        CHECK(w, phase_rank(events[i - 1].type) <= phase_rank(events[i].type),
              "call %zu (L%d %c) comes after L%d %c", i, events[i].id, events[i].type,
              events[i - 1].id, events[i - 1].type);
    for (size_t i = 0; i < n_events; i++)
        for (size_t j = i + 1; j < n_events; j++) {
            const struct event *a = &events[i], *b = &events[j];
            if (a->id == b->id || phase_rank(a->type) != phase_rank(b->type))
                continue;
            if (a->type != 'b' && a->type != 'c' && !fr_eq(&a->r, &b->r))
                continue;
            int pa = reg_pos(w, a->id), pb = reg_pos(w, b->id);
            if (a->type == 'd')
                CHECK(w, pa > pb,
                      "region_del of [%#" PRIx64 ", %#" PRIx64
                      "] reached L%d before L%d, registered later",
                      a->r.start, a->r.last, a->id, b->id);
            else
                CHECK(w, pa < pb,
                      "%c of [%#" PRIx64 ", %#" PRIx64
                      "] reached L%d before L%d, registered earlier",
                      a->type, a->r.start, a->r.last, a->id, b->id);
        }
}

static void mirror_init(struct mirror *m, struct world *w, int id)
{
    memset(m, 0, sizeof(*m));
    m->l.begin = mirror_begin;
    m->l.region_del = mirror_del;
    m->l.region_add = mirror_add;
    m->l.region_nop = mirror_nop;
    m->l.commit = mirror_commit;
    m->w = w;
    m->id = id;
}

static void mirror_fini(struct mirror *m)
{
    free(m->cur);
    free(m->work);
    free(m->dels);
    free(m->adds);
}

static void listener_case(uint64_t seed)
{
    static struct world w;
    static struct mirror m1, m2;
    unsigned flags[1] = {seed & 1 ? VCK_MEMMAP_FULL_RENDER : 0};
    world_init(&w, "listeners", seed, 1, flags);
    mirror_init(&m1, &w, 1);
    mirror_init(&m2, &w, 2);
    /* Only the first address space is listened to; a second one over part of the tree may
     * exist and must not disturb it. */
    build_tree(&w, 30);
    mirror_register(&w, &m1);
    if (chance(&w, 70))
        mirror_register(&w, &m2);
    remember_views(&w);
    for (w.step = 1; w.step <= SEQ_STEPS; w.step++) {
        if (chance(&w, 8)) {
            struct mirror *m = chance(&w, 50) ? &m1 : &m2;
            if (m->registered)
                mirror_unregister(&w, m);
            else
                mirror_register(&w, m);
        }
        for (int i = 0; i < w.n_mirrors; i++)
            w.mirrors[i]->calls = 0;
        n_events = 0;
        struct vck_memmap_stats before;
        vck_memmap_get_stats(w.mm[0], &before);
        uint64_t gen_before = w.prev_gen[0][0];
        random_step(&w);
        check_commit(&w, &before);
        check_event_order(&w, w.prev_gen[0][0] != gen_before);
        tally.steps++;
    }
    if (m1.registered)
        mirror_unregister(&w, &m1);
    if (m2.registered)
        mirror_unregister(&w, &m2);
    mirror_fini(&m1);
    mirror_fini(&m2);
    tally.cases++;
    world_free(&w);
}

Test(flatview_property, listeners)
{
    run_cases("listeners", 3, 1000, listener_case);
    free(events);
    events = NULL;
    n_events = cap_events = 0;
}
