/*
 * The memory map: a tree of regions rendered into flat views that are published with RCU.
 *
 * Writer side. Everything a memmap owns (regions, address spaces, listeners) is changed only
 * under its writer lock, a recursive mutex that vck_memmap_begin() takes and the outermost
 * vck_memmap_commit() drops. The lock is never held while waiting for a grace period (a commit
 * that must wait for reclamation waits after unlocking), so a reader thread may change the map
 * from inside its read-side section, e.g. from an MMIO callback, without deadlocking against a
 * writer that waits for that section.
 *
 * Rendering. A view is the list of ranges where a terminal region (RAM or MMIO) answers. It is
 * computed in two steps:
 *  1. Collect candidates: walk the tree depth-first from the root, children in render order
 *     (priority descending, later-added first), clipping each region to its ancestors and to the
 *     window being rendered, and emit every terminal region met as a candidate interval. The
 *     order of emission is a painter's order: where candidates overlap, the first one emitted
 *     is what the tree says answers there (a higher-priority sibling's whole subtree comes before
 *     a lower one's, and a container's holes hide nothing).
 *  2. Resolve: sweep the candidates by address, keeping the active ones in a min-heap on their
 *     emission rank; each elementary segment goes to the heap's top. When no two candidates
 *     overlap (the common case) the sweep is skipped. Adjacent compatible pieces are merged as
 *     they are appended, so the result is canonical: a boundary exists exactly where the mapping
 *     is discontinuous, and any two correct renderings of the same window are identical.
 * QEMU instead inserts each terminal region into a sorted array, shifting it each time
 * (quadratic in the number of ranges), and re-renders every view at every commit.
 *
 * Incremental commits. Every change marks, in each address space, the windows of the root's
 * coordinates where the changed region is (or could be) visible, before and after the change:
 * upwards through its container chain and through every alias that shows it, clipped at each
 * step, ignoring enabled flags and priorities (a superset is safe). A commit re-renders only
 * those windows and splices them into a copy of the old view; since rendering is canonical, the
 * result equals a full render (the property tests check exactly that). Too many windows, or an
 * alias fan-out past a budget, falls back to a full render. The copy is a memcpy of the ranges
 * outside the windows: no per-range work, and no per-range reference counting (see below).
 *
 * Views and readers. A view is immutable once published. The address space holds one reference
 * to its current view; vck_as_view_get() takes more with a compare-and-swap that refuses a zero
 * count. When the count reaches zero the view is queued for reclamation after a grace period.
 * Publication is vck_rcu_assign_pointer() (release) of a fully built view, derived data
 * included; vck_as_view() is the matching acquire.
 *
 * Region lifetime without per-range references. A terminal region named by a view must outlive
 * the view. Instead of counting references from every range (QEMU refs each region per range,
 * which costs a cache miss per range on every commit), views are numbered as they are retired
 * (replaced as current, or dropped with their address space), and retired views not yet freed
 * are kept in that order. After a commit, every current view is the rendering of the current
 * tree, so a terminal region that the tree no longer shows is named at most by views retired
 * before then: the commit gives it the floor T = the next retirement number. Once destroyed it
 * waits, as a zombie, until no retired view numbered below T is left, then is freed. Containers
 * and aliases never appear in views and are freed at once.
 *
 * Lock order: writer lock -> reclaim lock. The reclaim lock (live views, zombies, quarantine)
 * is also taken alone by the RCU callback thread when it frees a view.
 *
 * VCK_MEMMAP_BROKEN_NO_GRACE builds a deliberately wrong memmap that frees a view as soon as
 * its last reference goes, without a grace period; only the stress test's broken twin uses it.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <vcpukit/rcu.h>

typedef unsigned __int128 u128;
typedef __int128 s128;

#define SPACE_END ((u128)1 << 64)

/* Past these, a commit renders the whole address space instead of its dirty windows. */
#define MAX_DIRTY_WINDOWS 64
#define MARK_BUDGET       256

#define QUARANTINE_VIEWS   64
#define DEFAULT_PENDING    (4u << 20)
#define HUGE_PAGE_MIN_SIZE (2u << 20)

struct window {
    u128 lo, hi; /* [lo, hi) in the root's coordinates */
};

struct vck_mr {
    struct vck_memmap *mm;
    enum vck_mr_kind kind;
    char *name;
    u128 size;
    bool enabled;
    bool readonly;

    /* Placement in a container. */
    struct vck_mr *parent;
    uint64_t addr;
    int priority;
    uint64_t add_seq; /* memmap-wide: a later add wins ties */

    /* Containers: children in render order (priority descending, add_seq descending). */
    struct vck_mr **children;
    size_t n_children, cap_children;
    /*
     * The same children but for empty ones, by address, and how many neighbouring pairs of them
     * overlap. With none, a render visits only the children that meet its window (binary search),
     * already in address order; render order cannot matter where nothing overlaps.
     */
    struct vck_mr **by_addr;
    size_t n_by_addr, cap_by_addr;
    size_t overlaps;

    /* RAM. */
    void *host;
    u128 capacity;
    size_t mapped_bytes; /* nonzero: we own an mmap of this length */

    /* MMIO. */
    struct vck_mr_ops ops;
    void *opaque;

    /* Aliases. */
    struct vck_mr *target;
    uint64_t alias_offset;

    /* Who shows this region: aliases targeting it, address spaces rooted at it. */
    struct vck_mr **alias_users;
    size_t n_alias_users, cap_alias_users;
    unsigned n_roots;

    /*
     * Terminal regions: retired views numbered below this may name the region (set by the
     * commit after it was detached; 0 if it never was mapped).
     */
    uint64_t view_floor;
    bool detach_pending;           /* detached in the open transaction */
    bool destroyed;                /* destroyed in the open transaction, waiting for its commit */
    struct vck_mr *next_detached;  /* on mm->detached */
    struct vck_mr *next_destroyed; /* on mm->destroyed_in_txn: a region can be on both */

    vck_mr_release_fn *release;
    void *release_opaque;
    struct vck_mr *next_zombie;
};

/* How to free a view's derived data (the data itself is in the view's head). */
struct derived_slot {
    void (*free)(void *opaque, void *data);
    void *opaque;
};

struct vck_flatview {
    struct vck_flatview_head head; /* first: vck_flatview_derived() is inline */
    _Atomic unsigned long refs;
    uint64_t generation;
    uint64_t retired; /* memmap-wide retirement number + 1; 0 while current */
    struct vck_memmap *mm;
    size_t n;
    size_t bytes;       /* this allocation plus derived data: pending-memory accounting */
    size_t alloc_bytes; /* this allocation */
    struct vck_flatview *retired_prev, *retired_next; /* under mm->reclaim_lock */
    struct vck_flatview *next_own;                    /* on mm->own_retired */
    struct vck_rcu_head rcu;
    struct derived_slot derived[VCK_FLATVIEW_DERIVED_MAX];
    struct vck_flat_range ranges[];
};

_Static_assert(offsetof(struct vck_flatview, head) == 0, "vck_flatview_derived() reads the head");

struct vck_as {
    /* First: vck_as_view() is inline. head.view is RCU-published; the AS holds one reference. */
    struct vck_as_head head;
    struct vck_memmap *mm;
    char *name;
    struct vck_mr *root;
    uint64_t generation;

    struct window *dirty;
    size_t n_dirty, cap_dirty;
    bool dirty_full;

    struct vck_view_builder builders[VCK_FLATVIEW_DERIVED_MAX];
    int n_builders;

    struct vck_mem_listener *listeners, *listeners_tail;
    struct vck_as *next, *prev;
    struct vck_rcu_head rcu;
};

_Static_assert(offsetof(struct vck_as, head) == 0, "vck_as_view() reads the head");

struct candidate {
    u128 lo, hi; /* clipped, in the root's coordinates */
    s128 base;   /* root address of the region's offset 0 */
    struct vck_mr *mr;
    size_t rank; /* emission order: lower wins where candidates overlap */
    bool readonly;
};

struct candidates {
    struct candidate *v;
    size_t n, cap;
};

struct ranges {
    struct vck_flat_range *v;
    size_t n, cap;
};

/* A min-heap of indices into the sorted candidates, ordered by the candidates' rank. */
struct heap {
    size_t *v;
    size_t n, cap;
};

struct render_scratch {
    struct candidates cands;
    struct heap heap;
};

struct vck_memmap {
    pthread_mutex_t lock; /* the writer lock, recursive */
    unsigned depth;       /* transaction nesting */
    bool in_callbacks;    /* listeners or builders are running */
    unsigned flags;
    size_t pending_limit;
    uint64_t next_add_seq;
    struct vck_as *spaces;
    size_t n_regions;
    struct vck_mr *detached;         /* regions detached in the open transaction */
    struct vck_mr *destroyed_in_txn; /* terminal regions destroyed before their detach committed */
    struct vck_memmap_stats stats;   /* writer-owned fields; the atomics below for the rest */
    struct render_scratch scratch;   /* reused by every render */
    struct ranges out;
    struct vck_flatview *own_retired; /* views the writer dropped last: reclaimed at its unlock */
    _Atomic uint64_t reclaim_waits;

    pthread_mutex_t reclaim_lock;
    uint64_t next_retired; /* the rest is under reclaim_lock too */
    struct vck_flatview *retired_head, *retired_tail;
    struct vck_mr **zombies; /* a min-heap on view_floor */
    size_t n_zombies, cap_zombies;
    struct vck_flatview *quarantine[QUARANTINE_VIEWS];
    unsigned quarantine_next;
    _Atomic uint64_t views_live;
    _Atomic size_t pending_bytes;
    _Atomic size_t peak_pending_bytes;
};

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vcpukit memory map: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void *xrealloc_array(void *p, size_t n, size_t size)
{
    void *q = reallocarray(p, n, size);
    if (!q && n)
        fatal("out of memory");
    return q;
}

static u128 size_from_api(uint64_t size)
{
    return size == VCK_MR_SIZE_FULL ? SPACE_END : size;
}

static uint64_t size_to_api(u128 size)
{
    return size >= SPACE_END ? VCK_MR_SIZE_FULL : (uint64_t)size;
}

static u128 min128(u128 a, u128 b)
{
    return a < b ? a : b;
}

static u128 max128(u128 a, u128 b)
{
    return a > b ? a : b;
}

static bool is_terminal(const struct vck_mr *mr)
{
    return mr->kind == VCK_MR_RAM || mr->kind == VCK_MR_MMIO;
}

/* ---- the writer lock and transactions -------------------------------------------------- */

/* For changes that render nothing. */
/*
 * Set while a region's release callback runs, on whichever thread runs it (the writer, inside
 * a commit with the writer lock held, or liburcu's callback thread): a map change from there
 * could wait for a grace period under the writer lock or from inside a callback, and deadlock.
 */
static _Thread_local unsigned in_release_callback;

static void writer_lock(struct vck_memmap *mm)
{
    if (in_release_callback)
        fatal("a region's release callback tried to change the memory map");
    pthread_mutex_lock(&mm->lock);
    if (mm->in_callbacks)
        fatal("a listener or view builder tried to change the memory map");
}

static void writer_enter(struct vck_memmap *mm)
{
    writer_lock(mm);
    mm->depth++;
}

static void commit__locked(struct vck_memmap *mm);
static void writer_leave(struct vck_memmap *mm);

void vck_memmap_begin(struct vck_memmap *mm)
{
    writer_enter(mm);
}

void vck_memmap_commit(struct vck_memmap *mm)
{
    writer_leave(mm);
}

/* ---- dirty windows ----------------------------------------------------------------------- */

static void as_add_dirty(struct vck_as *as, u128 lo, u128 hi)
{
    hi = min128(hi, min128(as->root->size, SPACE_END));
    if (lo >= hi || as->dirty_full)
        return;
    if (as->n_dirty == MAX_DIRTY_WINDOWS) {
        as->dirty_full = true;
        return;
    }
    if (as->n_dirty == as->cap_dirty) {
        as->cap_dirty = as->cap_dirty ? 2 * as->cap_dirty : 8;
        as->dirty = xrealloc_array(as->dirty, as->cap_dirty, sizeof(*as->dirty));
    }
    as->dirty[as->n_dirty++] = (struct window){lo, hi};
}

static void mark_all_full(struct vck_memmap *mm)
{
    for (struct vck_as *as = mm->spaces; as; as = as->next)
        as->dirty_full = true;
}

/*
 * [lo, hi) of @mr's own coordinates may look different after the change being made: mark
 * where that shows in every address space. Ignores enabled flags and priorities, so it may
 * mark more than changed, never less.
 */
static void mark_up(struct vck_mr *mr, u128 lo, u128 hi, int *budget)
{
    hi = min128(hi, mr->size);
    if (lo >= hi)
        return;
    if (--*budget < 0) {
        mark_all_full(mr->mm);
        return;
    }
    if (mr->n_roots) {
        for (struct vck_as *as = mr->mm->spaces; as; as = as->next)
            if (as->root == mr)
                as_add_dirty(as, lo, hi);
    }
    if (mr->parent)
        mark_up(mr->parent, lo + mr->addr, hi + mr->addr, budget);
    for (size_t i = 0; i < mr->n_alias_users; i++) {
        struct vck_mr *alias = mr->alias_users[i];
        u128 from = alias->alias_offset;
        u128 l = max128(lo, from), h = min128(hi, from + alias->size);
        if (l < h)
            mark_up(alias, l - from, h - from, budget);
    }
}

/* All of @mr, as it is placed now. Called before and after every change to it. */
static void mark_region(struct vck_mr *mr)
{
    if (mr->mm->flags & VCK_MEMMAP_FULL_RENDER) {
        mark_all_full(mr->mm);
        return;
    }
    int budget = MARK_BUDGET;
    mark_up(mr, 0, mr->size, &budget);
}

/* ---- rendering --------------------------------------------------------------------------- */

static void collect(struct candidates *c, struct vck_mr *mr, s128 base, u128 clip_lo, u128 clip_hi,
                    bool readonly)
{
    if (!mr->enabled || mr->size == 0)
        return;
    /* base may be negative below an alias with a large offset: clip at 0 first. */
    u128 start = base > 0 ? (u128)base : 0;
    s128 end_signed = base + (s128)mr->size;
    if (end_signed <= 0)
        return;
    u128 lo = max128(clip_lo, start), hi = min128(clip_hi, (u128)end_signed);
    if (lo >= hi)
        return;
    readonly |= mr->readonly;
    switch (mr->kind) {
    case VCK_MR_RAM:
    case VCK_MR_MMIO:
        if (c->n == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 64;
            c->v = xrealloc_array(c->v, c->cap, sizeof(*c->v));
        }
        c->v[c->n] = (struct candidate){lo, hi, base, mr, c->n, readonly};
        c->n++;
        break;
    case VCK_MR_ALIAS:
        collect(c, mr->target, base - (s128)mr->alias_offset, lo, hi, readonly);
        break;
    case VCK_MR_CONTAINER:
        if (mr->overlaps == 0) {
            /* The window in the container's coordinates; children's ends ascend with them. */
            s128 from = (s128)lo - base;
            u128 local_lo = from > 0 ? (u128)from : 0, local_hi = (u128)((s128)hi - base);
            size_t a = 0, b = mr->n_by_addr;
            while (a < b) {
                size_t mid = a + (b - a) / 2;
                if ((u128)mr->by_addr[mid]->addr + mr->by_addr[mid]->size <= local_lo)
                    a = mid + 1;
                else
                    b = mid;
            }
            for (size_t i = a; i < mr->n_by_addr && mr->by_addr[i]->addr < local_hi; i++) {
                struct vck_mr *child = mr->by_addr[i];
                collect(c, child, base + (s128)child->addr, lo, hi, readonly);
            }
            break;
        }
        for (size_t i = 0; i < mr->n_children; i++) {
            struct vck_mr *child = mr->children[i];
            collect(c, child, base + (s128)child->addr, lo, hi, readonly);
        }
        break;
    }
}

static void ranges_reserve(struct ranges *r, size_t more)
{
    if (r->n + more <= r->cap)
        return;
    size_t cap = r->cap ? r->cap : 16;
    while (cap < r->n + more)
        cap *= 2;
    r->v = xrealloc_array(r->v, cap, sizeof(*r->v));
    r->cap = cap;
}

static bool ranges_mergeable(const struct vck_flat_range *a, const struct vck_flat_range *b)
{
    /* In 128 bits: offsets continue each other only if they do not wrap past 2^64. */
    return a->mr == b->mr && a->readonly == b->readonly && a->last != UINT64_MAX &&
           a->last + 1 == b->start && (u128)a->offset + (a->last - a->start) + 1 == (u128)b->offset;
}

/* Append [lo, hi) of @mr (whose offset 0 is at @base), merging with the last range if it fits. */
static void push_piece(struct ranges *out, u128 lo, u128 hi, s128 base, struct vck_mr *mr,
                       bool readonly)
{
    struct vck_flat_range r = {
        .start = (uint64_t)lo,
        .last = (uint64_t)(hi - 1),
        .mr = mr,
        .offset = (uint64_t)((s128)lo - base),
        .readonly = readonly,
    };
    if (out->n && ranges_mergeable(&out->v[out->n - 1], &r)) {
        out->v[out->n - 1].last = r.last;
        return;
    }
    ranges_reserve(out, 1);
    out->v[out->n++] = r;
}

static int candidate_cmp(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->rank < y->rank ? -1 : x->rank > y->rank;
}

static void heap_push(struct heap *h, const struct candidate *c, size_t x)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->v = xrealloc_array(h->v, h->cap, sizeof(*h->v));
    }
    size_t i = h->n++;
    while (i && c[h->v[(i - 1) / 2]].rank > c[x].rank) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = x;
}

static void heap_pop(struct heap *h, const struct candidate *c)
{
    size_t x = h->v[--h->n], i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->n)
            break;
        if (child + 1 < h->n && c[h->v[child + 1]].rank < c[h->v[child]].rank)
            child++;
        if (c[h->v[child]].rank >= c[x].rank)
            break;
        h->v[i] = h->v[child];
        i = child;
    }
    if (h->n)
        h->v[i] = x;
}

/* Resolve the collected candidates into @out (appending, merging at the seam). */
static void resolve(struct render_scratch *s, struct ranges *out)
{
    struct candidate *c = s->cands.v;
    size_t n = s->cands.n;
    bool sorted = true, overlap = false;
    for (size_t i = 1; i < n && sorted; i++)
        sorted = c[i - 1].lo <= c[i].lo;
    if (!sorted)
        qsort(c, n, sizeof(*c), candidate_cmp);
    for (size_t i = 1; i < n && !overlap; i++)
        overlap = c[i].lo < c[i - 1].hi;
    if (!overlap) {
        for (size_t i = 0; i < n; i++)
            push_piece(out, c[i].lo, c[i].hi, c[i].base, c[i].mr, c[i].readonly);
        return;
    }

    struct heap *h = &s->heap;
    h->n = 0;
    size_t next = 0;
    u128 pos = c[0].lo;
    while (next < n || h->n) {
        if (!h->n && c[next].lo > pos)
            pos = c[next].lo;
        while (next < n && c[next].lo <= pos)
            heap_push(h, c, next++);
        while (h->n && c[h->v[0]].hi <= pos)
            heap_pop(h, c);
        if (!h->n)
            continue;
        const struct candidate *top = &c[h->v[0]];
        u128 end = top->hi;
        if (next < n && c[next].lo < end)
            end = c[next].lo;
        push_piece(out, pos, end, top->base, top->mr, top->readonly);
        pos = end;
    }
}

static void render_window(struct render_scratch *s, struct vck_mr *root, u128 lo, u128 hi,
                          struct ranges *out)
{
    s->cands.n = 0;
    collect(&s->cands, root, 0, lo, hi, false);
    resolve(s, out);
}

static u128 root_extent(const struct vck_as *as)
{
    return min128(as->root->size, SPACE_END);
}

static int window_cmp(const void *a, const void *b)
{
    const struct window *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return 0;
}

/* Sort the dirty windows and merge the ones that overlap or touch. */
static size_t merge_windows(struct window *w, size_t n)
{
    qsort(w, n, sizeof(*w), window_cmp);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && w[i].lo <= w[m - 1].hi)
            w[m - 1].hi = max128(w[m - 1].hi, w[i].hi);
        else
            w[m++] = w[i];
    }
    return m;
}

/* First range of @v whose last address is >= @addr (n if none). */
static size_t first_ending_at_or_after(const struct vck_flatview *v, u128 addr)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((u128)v->ranges[mid].last < addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Append the part of @old's ranges that lies in [lo, hi). */
static void copy_old(struct ranges *out, const struct vck_flatview *old, u128 lo, u128 hi)
{
    if (lo >= hi)
        return;
    size_t i = first_ending_at_or_after(old, lo);
    /* The first and last pieces may be cut and may merge at the seams; the rest is verbatim. */
    size_t j = first_ending_at_or_after(old, hi);
    /* Ranges i .. j-1 end inside [lo, hi); range j (if it starts before hi) is cut at hi. */
    if (i < j) {
        const struct vck_flat_range *r = &old->ranges[i];
        u128 s = max128(r->start, lo);
        push_piece(out, s, (u128)r->last + 1, (s128)r->start - (s128)r->offset, r->mr, r->readonly);
        if (j - i > 1) {
            ranges_reserve(out, j - i - 1);
            memcpy(out->v + out->n, old->ranges + i + 1, (j - i - 1) * sizeof(*out->v));
            out->n += j - i - 1;
        }
    }
    if (j < old->n && (u128)old->ranges[j].start < hi) {
        const struct vck_flat_range *r = &old->ranges[j];
        u128 s = max128(r->start, lo);
        push_piece(out, s, hi, (s128)r->start - (s128)r->offset, r->mr, r->readonly);
    }
}

/* ---- views ------------------------------------------------------------------------------- */

static struct vck_flatview *view_alloc(struct vck_memmap *mm, const struct ranges *r)
{
    size_t bytes = sizeof(struct vck_flatview) + r->n * sizeof(struct vck_flat_range);
    struct vck_flatview *v = malloc(bytes);
    if (!v)
        fatal("out of memory");
    memset(v, 0, sizeof(*v));
    atomic_init(&v->refs, 1);
    v->mm = mm;
    v->n = r->n;
    v->bytes = bytes;
    v->alloc_bytes = bytes;
    if (r->n)
        memcpy(v->ranges, r->v, r->n * sizeof(*r->v));
    atomic_fetch_add_explicit(&mm->views_live, 1, memory_order_relaxed);
    return v;
}

/* @v stops being its address space's current view. Writer lock held. */
static void view_retire(struct vck_memmap *mm, struct vck_flatview *v)
{
    pthread_mutex_lock(&mm->reclaim_lock);
    v->retired = ++mm->next_retired;
    v->retired_prev = mm->retired_tail;
    if (mm->retired_tail)
        mm->retired_tail->retired_next = v;
    else
        mm->retired_head = v;
    mm->retired_tail = v;
    pthread_mutex_unlock(&mm->reclaim_lock);
}

static void region_free(struct vck_mr *mr);

static void zombie_push__reclaim_locked(struct vck_memmap *mm, struct vck_mr *z)
{
    if (mm->n_zombies == mm->cap_zombies) {
        mm->cap_zombies = mm->cap_zombies ? 2 * mm->cap_zombies : 16;
        mm->zombies = xrealloc_array(mm->zombies, mm->cap_zombies, sizeof(*mm->zombies));
    }
    size_t i = mm->n_zombies++;
    while (i && mm->zombies[(i - 1) / 2]->view_floor > z->view_floor) {
        mm->zombies[i] = mm->zombies[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    mm->zombies[i] = z;
}

static struct vck_mr *zombie_pop__reclaim_locked(struct vck_memmap *mm)
{
    struct vck_mr *top = mm->zombies[0], *last = mm->zombies[--mm->n_zombies];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= mm->n_zombies)
            break;
        if (child + 1 < mm->n_zombies &&
            mm->zombies[child + 1]->view_floor < mm->zombies[child]->view_floor)
            child++;
        if (mm->zombies[child]->view_floor >= last->view_floor)
            break;
        mm->zombies[i] = mm->zombies[child];
        i = child;
    }
    if (mm->n_zombies)
        mm->zombies[i] = last;
    return top;
}

/* Zombies no retired view can name any more. Reclaim lock held; they are moved onto @out. */
static void reap_zombies__reclaim_locked(struct vck_memmap *mm, struct vck_mr **out)
{
    uint64_t oldest = mm->retired_head ? mm->retired_head->retired - 1 : UINT64_MAX;
    while (mm->n_zombies && mm->zombies[0]->view_floor <= oldest) {
        struct vck_mr *z = zombie_pop__reclaim_locked(mm);
        z->next_zombie = *out;
        *out = z;
    }
}

static void free_regions(struct vck_mr *list)
{
    while (list) {
        struct vck_mr *next = list->next_zombie;
        region_free(list);
        list = next;
    }
}

static void view_reclaim(struct vck_flatview *v)
{
    struct vck_memmap *mm = v->mm;
    for (int i = 0; i < VCK_FLATVIEW_DERIVED_MAX; i++)
        if (v->head.derived[i] && v->derived[i].free)
            v->derived[i].free(v->derived[i].opaque, v->head.derived[i]);

    struct vck_mr *reaped = NULL;
    struct vck_flatview *evicted = NULL;
    pthread_mutex_lock(&mm->reclaim_lock);
    if (!v->retired)
        fatal("internal: reclaiming a current view");
    if (v->retired_prev)
        v->retired_prev->retired_next = v->retired_next;
    else
        mm->retired_head = v->retired_next;
    if (v->retired_next)
        v->retired_next->retired_prev = v->retired_prev;
    else
        mm->retired_tail = v->retired_prev;
    atomic_fetch_sub_explicit(&mm->pending_bytes, v->bytes, memory_order_relaxed);
    atomic_fetch_sub_explicit(&mm->views_live, 1, memory_order_relaxed);
    if (mm->flags & VCK_MEMMAP_QUARANTINE) {
        memset(v, VCK_FLATVIEW_POISON, v->alloc_bytes);
        evicted = mm->quarantine[mm->quarantine_next];
        mm->quarantine[mm->quarantine_next] = v;
        mm->quarantine_next = (mm->quarantine_next + 1) % QUARANTINE_VIEWS;
    } else {
        evicted = v;
    }
    reap_zombies__reclaim_locked(mm, &reaped);
    pthread_mutex_unlock(&mm->reclaim_lock);
    free(evicted);
    free_regions(reaped);
}

static void note_pending(struct vck_memmap *mm, size_t bytes)
{
    size_t now = atomic_fetch_add_explicit(&mm->pending_bytes, bytes, memory_order_relaxed) + bytes;
    size_t peak = atomic_load_explicit(&mm->peak_pending_bytes, memory_order_relaxed);
    while (now > peak &&
           !atomic_compare_exchange_weak_explicit(&mm->peak_pending_bytes, &peak, now,
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* The writer drops a reference; a last one is reclaimed when the writer unlocks. */
static void unref_by_writer__locked(struct vck_memmap *mm, struct vck_flatview *v)
{
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
        return;
    note_pending(mm, v->bytes);
    v->next_own = mm->own_retired;
    mm->own_retired = v;
}

bool vck_flatview_ref(const struct vck_flatview *view)
{
    struct vck_flatview *v = (struct vck_flatview *)view;
    unsigned long refs = atomic_load_explicit(&v->refs, memory_order_relaxed);
    /* Zero: the last reference went and the view is queued for reclamation; it stays dead. */
    while (refs && !atomic_compare_exchange_weak_explicit(
                       &v->refs, &refs, refs + 1, memory_order_acquire, memory_order_relaxed)) {
    }
    return refs != 0;
}

#ifndef VCK_MEMMAP_BROKEN_NO_GRACE
static void view_reclaim_rcu(struct vck_rcu_head *head)
{
    view_reclaim(caa_container_of(head, struct vck_flatview, rcu));
}
#endif

/* Reclaim @v after a grace period (the broken twin: at once). */
static void reclaim_after_grace(struct vck_flatview *v)
{
#ifdef VCK_MEMMAP_BROKEN_NO_GRACE
    view_reclaim(v);
#else
    vck_rcu_call(&v->rcu, view_reclaim_rcu);
#endif
}

void vck_flatview_unref(const struct vck_flatview *view)
{
    struct vck_flatview *v = (struct vck_flatview *)view;
    /* acq_rel: every use of the view by this holder happens-before its reclamation. */
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
        return;
    note_pending(v->mm, v->bytes);
    reclaim_after_grace(v);
}

const struct vck_flatview *vck_as_view_get(const struct vck_as *as)
{
    vck_rcu_read_lock();
    for (;;) {
        struct vck_flatview *v = vck_rcu_dereference(((struct vck_as *)as)->head.view);
        unsigned long refs = atomic_load_explicit(&v->refs, memory_order_relaxed);
        /* A zero count means the view was just replaced: read the address space again. */
        while (refs && !atomic_compare_exchange_weak_explicit(
                           &v->refs, &refs, refs + 1, memory_order_acquire, memory_order_relaxed)) {
        }
        if (refs) {
            vck_rcu_read_unlock();
            return v;
        }
    }
}

const struct vck_flat_range *vck_flatview_ranges(const struct vck_flatview *view, size_t *n)
{
    *n = view->n;
    return view->ranges;
}

uint64_t vck_flatview_generation(const struct vck_flatview *view)
{
    return view->generation;
}

const struct vck_flat_range *vck_flatview_find(const struct vck_flatview *view, uint64_t addr)
{
    size_t i = first_ending_at_or_after(view, addr);
    if (i < view->n && view->ranges[i].start <= addr)
        return &view->ranges[i];
    return NULL;
}

#ifndef NDEBUG
static void validate_view(const struct vck_flatview *v)
{
    for (size_t i = 0; i < v->n; i++) {
        const struct vck_flat_range *r = &v->ranges[i];
        if (r->last < r->start || !is_terminal(r->mr))
            fatal("internal: malformed range %zu", i);
        if (i && (v->ranges[i - 1].last >= r->start || ranges_mergeable(&v->ranges[i - 1], r)))
            fatal("internal: ranges %zu and %zu unsorted, overlapping or unmerged", i - 1, i);
    }
}
#else
static void validate_view(const struct vck_flatview *v)
{
    (void)v;
}
#endif

/* ---- commit ------------------------------------------------------------------------------ */

static bool range_equal(const struct vck_flat_range *a, const struct vck_flat_range *b)
{
    return a->start == b->start && a->last == b->last && a->mr == b->mr && a->offset == b->offset &&
           a->readonly == b->readonly;
}

static bool views_equal(const struct vck_flatview *v, const struct ranges *r)
{
    if (v->n != r->n)
        return false;
    for (size_t i = 0; i < r->n; i++)
        if (!range_equal(&v->ranges[i], &r->v[i]))
            return false;
    return true;
}

enum diff_pass { PASS_DEL, PASS_ADD };

static void call_listeners(struct vck_as *as, enum diff_pass pass, const struct vck_flat_range *r,
                           bool same)
{
    if (pass == PASS_DEL) {
        for (struct vck_mem_listener *l = as->listeners_tail; l; l = l->prev_)
            if (l->region_del)
                l->region_del(l, r);
        return;
    }
    for (struct vck_mem_listener *l = as->listeners; l; l = l->next_) {
        if (same && l->region_nop)
            l->region_nop(l, r);
        else if (!same && l->region_add)
            l->region_add(l, r);
    }
}

/* Walk old and new together; PASS_DEL reports what went, PASS_ADD what came and what stayed. */
static void diff_pass(struct vck_as *as, const struct vck_flatview *old,
                      const struct vck_flatview *new, enum diff_pass pass)
{
    size_t i = 0, j = 0, n_old = old ? old->n : 0, n_new = new ? new->n : 0;
    while (i < n_old || j < n_new) {
        const struct vck_flat_range *o = i < n_old ? &old->ranges[i] : NULL;
        const struct vck_flat_range *n = j < n_new ? &new->ranges[j] : NULL;
        if (o && n && range_equal(o, n)) {
            if (pass == PASS_ADD)
                call_listeners(as, pass, n, true);
            i++, j++;
        } else if (o && (!n || o->start <= n->start)) {
            if (pass == PASS_DEL)
                call_listeners(as, pass, o, false);
            i++;
        } else {
            if (pass == PASS_ADD)
                call_listeners(as, pass, n, false);
            j++;
        }
    }
}

static void listeners_begin(struct vck_as *as)
{
    for (struct vck_mem_listener *l = as->listeners; l; l = l->next_)
        if (l->begin)
            l->begin(l);
}

static void listeners_commit(struct vck_as *as, const struct vck_flatview *view)
{
    for (struct vck_mem_listener *l = as->listeners; l; l = l->next_)
        if (l->commit)
            l->commit(l, view);
}

/* Build derived data, tell listeners (if @notify), publish @v as @as's view, drop the old one. */
static void publish__locked(struct vck_as *as, struct vck_flatview *v, bool notify)
{
    struct vck_memmap *mm = as->mm;
    struct vck_flatview *old = as->head.view;
    v->generation = ++as->generation;
    validate_view(v);

    mm->in_callbacks = true;
    for (int i = 0; i < as->n_builders; i++) {
        const struct vck_view_builder *b = &as->builders[i];
        size_t bytes = 0;
        v->head.derived[i] = b->build(b->opaque, v, old, old ? old->head.derived[i] : NULL, &bytes);
        v->derived[i] = (struct derived_slot){
            .free = b->free,
            .opaque = b->opaque,
        };
        v->bytes += bytes;
    }
    notify = notify && as->listeners;
    if (notify) {
        listeners_begin(as);
        diff_pass(as, old, v, PASS_DEL);
        diff_pass(as, old, v, PASS_ADD);
    }
    /* Pairs with the acquire in vck_as_view(): readers see the view and its derived data. */
    vck_rcu_assign_pointer(as->head.view, v);
    if (notify)
        listeners_commit(as, v);
    mm->in_callbacks = false;

    mm->stats.views_published++;
    if (old) {
        view_retire(mm, old);
        unref_by_writer__locked(mm, old);
    }
}

static void render_as__locked(struct vck_as *as, struct render_scratch *s, struct ranges *out)
{
    struct vck_memmap *mm = as->mm;
    const struct vck_flatview *old = as->head.view;
    out->n = 0;
    if (as->dirty_full || !old) {
        render_window(s, as->root, 0, root_extent(as), out);
        mm->stats.renders_full++;
    } else {
        size_t n = merge_windows(as->dirty, as->n_dirty);
        u128 done = 0;
        for (size_t i = 0; i < n; i++) {
            copy_old(out, old, done, as->dirty[i].lo);
            render_window(s, as->root, as->dirty[i].lo, as->dirty[i].hi, out);
            done = as->dirty[i].hi;
        }
        copy_old(out, old, done, SPACE_END);
        mm->stats.renders_incremental++;
    }
    as->n_dirty = 0;
    as->dirty_full = false;
}

/* Terminal regions detached in this transaction: only views retired so far can name them. */
static void settle_detached__locked(struct vck_memmap *mm)
{
    pthread_mutex_lock(&mm->reclaim_lock);
    uint64_t floor = mm->next_retired;
    pthread_mutex_unlock(&mm->reclaim_lock);
    while (mm->detached) {
        struct vck_mr *mr = mm->detached;
        mm->detached = mr->next_detached;
        mr->detach_pending = false;
        mr->view_floor = floor;
    }
}

static void make_zombie(struct vck_mr *mr);

static void commit__locked(struct vck_memmap *mm)
{
    for (struct vck_as *as = mm->spaces; as; as = as->next) {
        if (!as->dirty_full && !as->n_dirty)
            continue;
        render_as__locked(as, &mm->scratch, &mm->out);
        if (views_equal(as->head.view, &mm->out))
            continue;
        publish__locked(as, view_alloc(mm, &mm->out), true);
    }
    mm->stats.commits++;

    settle_detached__locked(mm);
    while (mm->destroyed_in_txn) {
        struct vck_mr *mr = mm->destroyed_in_txn;
        mm->destroyed_in_txn = mr->next_destroyed;
        make_zombie(mr);
    }
}

/*
 * Views the writer itself dropped (the ones its commits replaced). Normally they go to
 * liburcu's callback thread. Past the pending limit, and outside a read-side section, the
 * writer waits for one grace period and frees them itself: liburcu's callback thread sleeps
 * 10 ms between batches, so waiting on it (vck_rcu_barrier) capped a commit storm at a few
 * megabytes per 10 ms. Only if views queued by readers keep the total over the limit does it
 * wait for those too. Called after unlocking: a reader blocked on the writer lock inside its
 * section would otherwise keep the grace period from ending.
 */
static void reclaim_own(struct vck_memmap *mm, struct vck_flatview *list)
{
    /* Not inside a section, nor inside an RCU callback (a barrier there waits for itself). */
    bool can_wait = vck_rcu_may_wait();
    bool over = atomic_load_explicit(&mm->pending_bytes, memory_order_relaxed) > mm->pending_limit;
    if (list && can_wait && over) {
        vck_rcu_synchronize();
        atomic_fetch_add_explicit(&mm->reclaim_waits, 1, memory_order_relaxed);
    }
    while (list) {
        struct vck_flatview *v = list;
        list = v->next_own;
        if (can_wait && over)
            view_reclaim(v);
        else
            reclaim_after_grace(v);
    }
    if (can_wait &&
        atomic_load_explicit(&mm->pending_bytes, memory_order_relaxed) > mm->pending_limit) {
        vck_rcu_barrier();
        atomic_fetch_add_explicit(&mm->reclaim_waits, 1, memory_order_relaxed);
    }
}

static void writer_leave(struct vck_memmap *mm)
{
    if (mm->depth == 0)
        fatal("vck_memmap_commit without vck_memmap_begin");
    bool outermost = --mm->depth == 0;
    if (outermost)
        commit__locked(mm);
    struct vck_flatview *retired = NULL;
    if (outermost) {
        retired = mm->own_retired;
        mm->own_retired = NULL;
    }
    pthread_mutex_unlock(&mm->lock);
    if (outermost)
        reclaim_own(mm, retired);
}

/* ---- the memmap -------------------------------------------------------------------------- */

struct vck_memmap *vck_memmap_new(const struct vck_memmap_options *opts)
{
    struct vck_memmap *mm = calloc(1, sizeof(*mm));
    if (!mm)
        return NULL;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&mm->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    pthread_mutex_init(&mm->reclaim_lock, NULL);
    mm->pending_limit = DEFAULT_PENDING;
    if (opts) {
        mm->flags = opts->flags;
        if (opts->pending_limit)
            mm->pending_limit = opts->pending_limit;
    }
    return mm;
}

void vck_memmap_free(struct vck_memmap *mm)
{
    if (mm->spaces)
        fatal("vck_memmap_free: address space '%s' still exists", mm->spaces->name);
    if (mm->n_regions)
        fatal("vck_memmap_free: %zu regions not destroyed", mm->n_regions);
    /* An address space's callback drops its view, which queues the view's: two rounds. */
    for (int round = 0; round < 2; round++)
        vck_rcu_barrier();
    if (atomic_load(&mm->views_live))
        fatal("vck_memmap_free: a view is still referenced (vck_as_view_get without unref?)");
    for (unsigned i = 0; i < QUARANTINE_VIEWS; i++)
        free(mm->quarantine[i]);
    for (size_t i = 0; i < mm->n_zombies; i++)
        region_free(mm->zombies[i]);
    free(mm->zombies);
    free(mm->scratch.cands.v);
    free(mm->scratch.heap.v);
    free(mm->out.v);
    pthread_mutex_destroy(&mm->lock);
    pthread_mutex_destroy(&mm->reclaim_lock);
    free(mm);
}

void vck_memmap_get_stats(struct vck_memmap *mm, struct vck_memmap_stats *st)
{
    pthread_mutex_lock(&mm->lock);
    *st = mm->stats;
    pthread_mutex_unlock(&mm->lock);
    st->views_live = atomic_load_explicit(&mm->views_live, memory_order_relaxed);
    st->reclaim_waits = atomic_load_explicit(&mm->reclaim_waits, memory_order_relaxed);
    st->pending_bytes = atomic_load_explicit(&mm->pending_bytes, memory_order_relaxed);
    st->peak_pending_bytes = atomic_load_explicit(&mm->peak_pending_bytes, memory_order_relaxed);
}

/* ---- regions ----------------------------------------------------------------------------- */

static struct vck_mr *region_new(struct vck_memmap *mm, enum vck_mr_kind kind, const char *name,
                                 uint64_t size)
{
    struct vck_mr *mr = calloc(1, sizeof(*mr));
    char *copy = strdup(name ? name : "");
    if (!mr || !copy) {
        free(mr);
        free(copy);
        return NULL;
    }
    mr->mm = mm;
    mr->kind = kind;
    mr->name = copy;
    mr->size = size_from_api(size);
    mr->enabled = true;
    return mr;
}

/* Count a new region; under the writer lock like every other change. */
static struct vck_mr *region_register(struct vck_mr *mr)
{
    if (mr) {
        writer_lock(mr->mm);
        mr->mm->n_regions++;
        pthread_mutex_unlock(&mr->mm->lock);
    }
    return mr;
}

struct vck_mr *vck_mr_new_container(struct vck_memmap *mm, const char *name, uint64_t size)
{
    return region_register(region_new(mm, VCK_MR_CONTAINER, name, size));
}

struct vck_mr *vck_mr_new_ram(struct vck_memmap *mm, const char *name, uint64_t size)
{
    if (size == VCK_MR_SIZE_FULL || size > SIZE_MAX / 2)
        fatal("vck_mr_new_ram '%s': size %#llx cannot be backed", name, (unsigned long long)size);
    struct vck_mr *mr = region_new(mm, VCK_MR_RAM, name, size);
    if (!mr)
        return NULL;
    if (size) {
        void *host = mmap(NULL, size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (host == MAP_FAILED) {
            free(mr->name);
            free(mr);
            return NULL;
        }
        if (size >= HUGE_PAGE_MIN_SIZE)
            madvise(host, size, MADV_HUGEPAGE);
        mr->host = host;
        mr->mapped_bytes = size;
    }
    mr->capacity = size;
    return region_register(mr);
}

struct vck_mr *vck_mr_new_ram_ptr(struct vck_memmap *mm, const char *name, uint64_t size,
                                  void *host)
{
    struct vck_mr *mr = region_new(mm, VCK_MR_RAM, name, size);
    if (mr) {
        mr->host = host;
        mr->capacity = mr->size;
    }
    return region_register(mr);
}

struct vck_mr *vck_mr_new_mmio(struct vck_memmap *mm, const char *name, uint64_t size,
                               const struct vck_mr_ops *ops, void *opaque)
{
    struct vck_mr *mr = region_new(mm, VCK_MR_MMIO, name, size);
    if (mr) {
        mr->ops = *ops;
        if (!mr->ops.min_access)
            mr->ops.min_access = 1;
        if (!mr->ops.max_access)
            mr->ops.max_access = 8;
        unsigned lo = mr->ops.min_access, hi = mr->ops.max_access;
        if ((lo & (lo - 1)) || (hi & (hi - 1)) || lo > hi || hi > 8)
            fatal("vck_mr_new_mmio '%s': access sizes %u..%u are not powers of two in 1..8", name,
                  lo, hi);
        mr->opaque = opaque;
    }
    return region_register(mr);
}

static void add_alias_user(struct vck_mr *target, struct vck_mr *alias)
{
    if (target->n_alias_users == target->cap_alias_users) {
        target->cap_alias_users = target->cap_alias_users ? 2 * target->cap_alias_users : 4;
        target->alias_users = xrealloc_array(target->alias_users, target->cap_alias_users,
                                             sizeof(*target->alias_users));
    }
    target->alias_users[target->n_alias_users++] = alias;
}

static void note_detached(struct vck_mr *mr);

static void remove_alias_user(struct vck_mr *target, struct vck_mr *alias)
{
    for (size_t i = 0; i < target->n_alias_users; i++) {
        if (target->alias_users[i] == alias) {
            target->alias_users[i] = target->alias_users[--target->n_alias_users];
            note_detached(target);
            return;
        }
    }
    fatal("internal: alias '%s' not among the users of '%s'", alias->name, target->name);
}

/* Is @needle reachable from @from through children and alias targets? */
static bool reaches(const struct vck_mr *from, const struct vck_mr *needle)
{
    if (from == needle)
        return true;
    if (from->kind == VCK_MR_ALIAS)
        return reaches(from->target, needle);
    for (size_t i = 0; i < from->n_children; i++)
        if (reaches(from->children[i], needle))
            return true;
    return false;
}

struct vck_mr *vck_mr_new_alias(struct vck_memmap *mm, const char *name, struct vck_mr *target,
                                uint64_t offset, uint64_t size)
{
    if (target->mm != mm)
        fatal("vck_mr_new_alias '%s': target '%s' belongs to another memory map", name,
              target->name);
    struct vck_mr *mr = region_new(mm, VCK_MR_ALIAS, name, size);
    if (!mr)
        return NULL;
    mr->target = target;
    mr->alias_offset = offset;
    writer_lock(mm);
    add_alias_user(target, mr);
    mm->n_regions++;
    pthread_mutex_unlock(&mm->lock);
    return mr;
}

void vck_mr_set_release(struct vck_mr *mr, vck_mr_release_fn *fn, void *opaque)
{
    writer_lock(mr->mm);
    mr->release = fn;
    mr->release_opaque = opaque;
    pthread_mutex_unlock(&mr->mm->lock);
}

static void region_free(struct vck_mr *mr)
{
    if (mr->release) {
        in_release_callback++;
        mr->release(mr->release_opaque);
        in_release_callback--;
    }
    if (mr->mapped_bytes)
        munmap(mr->host, mr->mapped_bytes);
    free(mr->children);
    free(mr->by_addr);
    free(mr->alias_users);
    free(mr->name);
    free(mr);
}

/*
 * A terminal region was just detached from whatever showed it. The views of the open
 * transaction's commit are the first that cannot name it (if it is not shown elsewhere).
 */
static void note_detached(struct vck_mr *mr)
{
    if (!is_terminal(mr) || mr->detach_pending)
        return;
    mr->detach_pending = true;
    mr->next_detached = mr->mm->detached;
    mr->mm->detached = mr;
}

static void make_zombie(struct vck_mr *mr)
{
    struct vck_memmap *mm = mr->mm;
    struct vck_mr *reaped = NULL;
    pthread_mutex_lock(&mm->reclaim_lock);
    zombie_push__reclaim_locked(mm, mr);
    reap_zombies__reclaim_locked(mm, &reaped);
    pthread_mutex_unlock(&mm->reclaim_lock);
    free_regions(reaped);
}

void vck_mr_destroy(struct vck_mr *mr)
{
    struct vck_memmap *mm = mr->mm;
    writer_enter(mm);
    if (mr->parent)
        fatal("vck_mr_destroy: region '%s' is still mapped in container '%s'", mr->name,
              mr->parent->name);
    if (mr->n_alias_users)
        fatal("vck_mr_destroy: region '%s' is still the target of alias '%s'", mr->name,
              mr->alias_users[0]->name);
    if (mr->n_roots)
        fatal("vck_mr_destroy: region '%s' is still the root of an address space", mr->name);
    if (mr->n_children)
        fatal("vck_mr_destroy: container '%s' still has %zu children (first: '%s')", mr->name,
              mr->n_children, mr->children[0]->name);
    if (mr->destroyed)
        fatal("vck_mr_destroy: region '%s' destroyed twice", mr->name);
    mm->n_regions--;
    if (mr->kind == VCK_MR_ALIAS)
        remove_alias_user(mr->target, mr);
    if (!is_terminal(mr)) {
        region_free(mr);
    } else if (mr->detach_pending) {
        /* Its detach commits with this transaction: the floor is known only then. */
        mr->destroyed = true;
        mr->next_destroyed = mm->destroyed_in_txn;
        mm->destroyed_in_txn = mr;
    } else {
        make_zombie(mr);
    }
    writer_leave(mm);
}

/* ---- changing the tree ------------------------------------------------------------------- */

static bool render_before(const struct vck_mr *a, const struct vck_mr *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority;
    return a->add_seq > b->add_seq;
}

static void children_insert(struct vck_mr *c, struct vck_mr *sub)
{
    size_t lo = 0, hi = c->n_children;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (render_before(c->children[mid], sub))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (c->n_children == c->cap_children) {
        c->cap_children = c->cap_children ? 2 * c->cap_children : 4;
        c->children = xrealloc_array(c->children, c->cap_children, sizeof(*c->children));
    }
    memmove(c->children + lo + 1, c->children + lo, (c->n_children - lo) * sizeof(*c->children));
    c->children[lo] = sub;
    c->n_children++;
}

static void children_remove(struct vck_mr *c, struct vck_mr *sub)
{
    size_t lo = 0, hi = c->n_children;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (render_before(c->children[mid], sub))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == c->n_children || c->children[lo] != sub)
        fatal("internal: '%s' not found among the children of '%s'", sub->name, c->name);
    memmove(c->children + lo, c->children + lo + 1,
            (c->n_children - lo - 1) * sizeof(*c->children));
    c->n_children--;
}

static bool addr_before(const struct vck_mr *a, const struct vck_mr *b)
{
    if (a->addr != b->addr)
        return a->addr < b->addr;
    return (uintptr_t)a < (uintptr_t)b;
}

/* Does by_addr[i] overlap by_addr[i + 1]? */
static size_t pair_overlaps(const struct vck_mr *c, size_t i)
{
    return i + 1 < c->n_by_addr &&
           (u128)c->by_addr[i]->addr + c->by_addr[i]->size > c->by_addr[i + 1]->addr;
}

static size_t by_addr_position(const struct vck_mr *c, const struct vck_mr *sub)
{
    size_t lo = 0, hi = c->n_by_addr;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr_before(c->by_addr[mid], sub))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Enter @sub, with its current address and size, in @c's address index. */
static void by_addr_insert(struct vck_mr *c, struct vck_mr *sub)
{
    if (sub->size == 0)
        return;
    size_t i = by_addr_position(c, sub);
    if (i > 0)
        c->overlaps -= pair_overlaps(c, i - 1);
    if (c->n_by_addr == c->cap_by_addr) {
        c->cap_by_addr = c->cap_by_addr ? 2 * c->cap_by_addr : 4;
        c->by_addr = xrealloc_array(c->by_addr, c->cap_by_addr, sizeof(*c->by_addr));
    }
    memmove(c->by_addr + i + 1, c->by_addr + i, (c->n_by_addr - i) * sizeof(*c->by_addr));
    c->by_addr[i] = sub;
    c->n_by_addr++;
    if (i > 0)
        c->overlaps += pair_overlaps(c, i - 1);
    c->overlaps += pair_overlaps(c, i);
}

/* Take @sub, with the address and size it was entered with, out of @c's address index. */
static void by_addr_remove(struct vck_mr *c, struct vck_mr *sub)
{
    if (sub->size == 0)
        return;
    size_t i = by_addr_position(c, sub);
    if (i == c->n_by_addr || c->by_addr[i] != sub)
        fatal("internal: '%s' missing from the address index of '%s'", sub->name, c->name);
    if (i > 0)
        c->overlaps -= pair_overlaps(c, i - 1);
    c->overlaps -= pair_overlaps(c, i);
    memmove(c->by_addr + i, c->by_addr + i + 1, (c->n_by_addr - i - 1) * sizeof(*c->by_addr));
    c->n_by_addr--;
    if (i > 0)
        c->overlaps += pair_overlaps(c, i - 1);
}

void vck_mr_add_subregion(struct vck_mr *container, uint64_t addr, struct vck_mr *sub, int priority)
{
    struct vck_memmap *mm = container->mm;
    writer_enter(mm);
    if (sub->mm != mm)
        fatal("vck_mr_add_subregion: '%s' and '%s' belong to different memory maps", sub->name,
              container->name);
    if (container->kind != VCK_MR_CONTAINER)
        fatal("vck_mr_add_subregion: '%s' is not a container", container->name);
    if (sub->parent)
        fatal("vck_mr_add_subregion: '%s' is already mapped in '%s'", sub->name, sub->parent->name);
    if (sub->destroyed)
        fatal("vck_mr_add_subregion: '%s' was destroyed", sub->name);
    if (reaches(sub, container))
        fatal("vck_mr_add_subregion: mapping '%s' in '%s' would make a cycle", sub->name,
              container->name);
    sub->parent = container;
    sub->addr = addr;
    sub->priority = priority;
    sub->add_seq = ++mm->next_add_seq;
    children_insert(container, sub);
    by_addr_insert(container, sub);
    mark_region(sub);
    writer_leave(mm);
}

static void check_mapped(const struct vck_mr *sub, const char *what)
{
    if (!sub->parent)
        fatal("%s: '%s' is not mapped in a container", what, sub->name);
}

void vck_mr_del_subregion(struct vck_mr *container, struct vck_mr *sub)
{
    struct vck_memmap *mm = container->mm;
    writer_enter(mm);
    if (sub->parent != container)
        fatal("vck_mr_del_subregion: '%s' is not mapped in '%s'", sub->name, container->name);
    mark_region(sub);
    children_remove(container, sub);
    by_addr_remove(container, sub);
    sub->parent = NULL;
    sub->addr = 0;
    note_detached(sub);
    writer_leave(mm);
}

void vck_mr_set_address(struct vck_mr *sub, uint64_t addr)
{
    struct vck_memmap *mm = sub->mm;
    writer_enter(mm);
    check_mapped(sub, "vck_mr_set_address");
    if (sub->addr != addr) {
        mark_region(sub);
        by_addr_remove(sub->parent, sub);
        sub->addr = addr;
        by_addr_insert(sub->parent, sub);
        mark_region(sub);
    }
    writer_leave(mm);
}

void vck_mr_set_priority(struct vck_mr *sub, int priority)
{
    struct vck_memmap *mm = sub->mm;
    writer_enter(mm);
    check_mapped(sub, "vck_mr_set_priority");
    if (sub->priority != priority) {
        children_remove(sub->parent, sub);
        sub->priority = priority;
        children_insert(sub->parent, sub);
        mark_region(sub);
    }
    writer_leave(mm);
}

void vck_mr_set_size(struct vck_mr *mr, uint64_t size)
{
    struct vck_memmap *mm = mr->mm;
    writer_enter(mm);
    u128 new_size = size_from_api(size);
    if (mr->kind == VCK_MR_RAM && new_size > mr->capacity)
        fatal("vck_mr_set_size: RAM '%s' cannot grow past its %#llx-byte backing", mr->name,
              (unsigned long long)mr->capacity);
    if (mr->size != new_size) {
        mark_region(mr);
        if (mr->parent)
            by_addr_remove(mr->parent, mr);
        mr->size = new_size;
        if (mr->parent)
            by_addr_insert(mr->parent, mr);
        mark_region(mr);
        /* Views cut to the new size still name the region; nothing to settle. */
    }
    writer_leave(mm);
}

void vck_mr_set_enabled(struct vck_mr *mr, bool enabled)
{
    struct vck_memmap *mm = mr->mm;
    writer_enter(mm);
    if (mr->enabled != enabled) {
        mr->enabled = enabled;
        mark_region(mr);
    }
    writer_leave(mm);
}

void vck_mr_set_readonly(struct vck_mr *mr, bool readonly)
{
    struct vck_memmap *mm = mr->mm;
    writer_enter(mm);
    if (mr->readonly != readonly) {
        mr->readonly = readonly;
        mark_region(mr);
    }
    writer_leave(mm);
}

void vck_mr_set_alias_target(struct vck_mr *alias, struct vck_mr *target, uint64_t offset)
{
    struct vck_memmap *mm = alias->mm;
    writer_enter(mm);
    if (alias->kind != VCK_MR_ALIAS)
        fatal("vck_mr_set_alias_target: '%s' is not an alias", alias->name);
    if (target->mm != mm)
        fatal("vck_mr_set_alias_target: '%s' belongs to another memory map", target->name);
    if (reaches(target, alias))
        fatal("vck_mr_set_alias_target: aliasing '%s' from '%s' would make a cycle", target->name,
              alias->name);
    if (alias->target != target || alias->alias_offset != offset) {
        mark_region(alias);
        remove_alias_user(alias->target, alias);
        alias->target = target;
        alias->alias_offset = offset;
        add_alias_user(target, alias);
        mark_region(alias);
    }
    writer_leave(mm);
}

enum vck_mr_kind vck_mr_kind(const struct vck_mr *mr)
{
    return mr->kind;
}

const char *vck_mr_name(const struct vck_mr *mr)
{
    return mr->name;
}

void *vck_mr_host(const struct vck_mr *mr)
{
    return mr->kind == VCK_MR_RAM ? mr->host : NULL;
}

const struct vck_mr_ops *vck_mr_ops(const struct vck_mr *mr)
{
    return mr->kind == VCK_MR_MMIO ? &mr->ops : NULL;
}

void *vck_mr_opaque(const struct vck_mr *mr)
{
    return mr->kind == VCK_MR_MMIO ? mr->opaque : NULL;
}

uint64_t vck_mr_size(const struct vck_mr *mr)
{
    return size_to_api(mr->size);
}

uint64_t vck_mr_address(const struct vck_mr *mr)
{
    return mr->addr;
}

int vck_mr_priority(const struct vck_mr *mr)
{
    return mr->priority;
}

bool vck_mr_enabled(const struct vck_mr *mr)
{
    return mr->enabled;
}

bool vck_mr_readonly(const struct vck_mr *mr)
{
    return mr->readonly;
}

struct vck_mr *vck_mr_container(const struct vck_mr *mr)
{
    return mr->parent;
}

/* ---- address spaces ---------------------------------------------------------------------- */

struct vck_as *vck_as_new(struct vck_memmap *mm, const char *name, struct vck_mr *root)
{
    if (root->mm != mm)
        fatal("vck_as_new '%s': root '%s' belongs to another memory map", name, root->name);
    struct vck_as *as = calloc(1, sizeof(*as));
    char *copy = strdup(name ? name : "");
    if (!as || !copy) {
        free(as);
        free(copy);
        return NULL;
    }
    as->mm = mm;
    as->name = copy;
    as->root = root;
    writer_enter(mm);
    root->n_roots++;
    as->next = mm->spaces;
    if (mm->spaces)
        mm->spaces->prev = as;
    mm->spaces = as;
    /* The first view is published at once, even inside a transaction: vck_as_view never fails. */
    as->dirty_full = true;
    render_as__locked(as, &mm->scratch, &mm->out);
    publish__locked(as, view_alloc(mm, &mm->out), true);
    writer_leave(mm);
    return as;
}

static void as_free_rcu(struct vck_rcu_head *head)
{
    struct vck_as *as = caa_container_of(head, struct vck_as, rcu);
    vck_flatview_unref(as->head.view);
    free(as->dirty);
    free(as->name);
    free(as);
}

void vck_as_destroy(struct vck_as *as)
{
    struct vck_memmap *mm = as->mm;
    writer_enter(mm);
    if (as->listeners)
        fatal("vck_as_destroy '%s': a listener is still registered", as->name);
    if (as->prev)
        as->prev->next = as->next;
    else
        mm->spaces = as->next;
    if (as->next)
        as->next->prev = as->prev;
    as->root->n_roots--;
    if (!as->root->n_roots)
        note_detached(as->root);
    /*
     * Readers inside a section may still call vck_as_view(as): the address space and its view
     * are dropped after a grace period. The view is retired now, so that the regions it names
     * wait for it.
     */
    view_retire(mm, as->head.view);
    vck_rcu_call(&as->rcu, as_free_rcu);
    writer_leave(mm);
}

struct vck_mr *vck_as_root(const struct vck_as *as)
{
    return as->root;
}

const char *vck_as_name(const struct vck_as *as)
{
    return as->name;
}

int vck_as_add_builder(struct vck_as *as, const struct vck_view_builder *b)
{
    struct vck_memmap *mm = as->mm;
    writer_enter(mm);
    if (as->n_builders == VCK_FLATVIEW_DERIVED_MAX)
        fatal("vck_as_add_builder '%s': all %d slots taken", as->name, VCK_FLATVIEW_DERIVED_MAX);
    int slot = as->n_builders++;
    as->builders[slot] = *b;
    /* Views never change once published: publish the same ranges again, with every builder's data.
     */
    struct ranges same = {.v = as->head.view->ranges, .n = as->head.view->n};
    publish__locked(as, view_alloc(mm, &same), false);
    writer_leave(mm);
    return slot;
}

/* ---- listeners --------------------------------------------------------------------------- */

void vck_as_listener_register(struct vck_as *as, struct vck_mem_listener *l)
{
    struct vck_memmap *mm = as->mm;
    writer_enter(mm);
    /* Twice would make the list a cycle, and every later commit would loop on it. */
    for (struct vck_as *s = mm->spaces; s; s = s->next)
        for (struct vck_mem_listener *x = s->listeners; x; x = x->next_)
            if (x == l)
                fatal("vck_as_listener_register: the listener is already registered (on '%s')",
                      s->name);
    l->as_ = as;
    l->next_ = NULL;
    l->prev_ = as->listeners_tail;
    if (as->listeners_tail)
        as->listeners_tail->next_ = l;
    else
        as->listeners = l;
    as->listeners_tail = l;
    mm->in_callbacks = true;
    if (l->begin)
        l->begin(l);
    for (size_t i = 0; i < as->head.view->n; i++)
        if (l->region_add)
            l->region_add(l, &as->head.view->ranges[i]);
    if (l->commit)
        l->commit(l, as->head.view);
    mm->in_callbacks = false;
    writer_leave(mm);
}

void vck_as_listener_unregister(struct vck_mem_listener *l)
{
    struct vck_as *as = l->as_;
    if (!as)
        fatal("vck_as_listener_unregister: the listener is not registered");
    struct vck_memmap *mm = as->mm;
    writer_enter(mm);
    mm->in_callbacks = true;
    if (l->begin)
        l->begin(l);
    for (size_t i = 0; i < as->head.view->n; i++)
        if (l->region_del)
            l->region_del(l, &as->head.view->ranges[i]);
    if (l->commit)
        l->commit(l, as->head.view);
    mm->in_callbacks = false;
    if (l->prev_)
        l->prev_->next_ = l->next_;
    else
        as->listeners = l->next_;
    if (l->next_)
        l->next_->prev_ = l->prev_;
    else
        as->listeners_tail = l->prev_;
    l->as_ = NULL;
    writer_leave(mm);
}
