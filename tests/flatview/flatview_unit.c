/*
 * Unit tests of the memory map (regions rendered into flat views, second half of
 * <vcpukit/rcu.h>), single-threaded: every region kind, every change to the tree, what a view
 * holds after each of them (exactly: every range's bounds, region, offset and read-only flag),
 * when views are published, view references and builders, listeners, reclamation, and the
 * lifetime rules that must abort in every build type.
 *
 * Expected views are written out by hand from the header's rules; the random trees and change
 * sequences, checked against a naive resolver, are flatview_property.c's business.
 *
 * Every test builds its regions through the small fixture below, which tears them down in
 * reverse creation order (aliases after their targets are destroyed first), so ASan's leak
 * check also covers the kit's reclamation of everything a test made.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/rcu.h>

#define UMAX UINT64_MAX

static void suite_init(void)
{
    vck_rcu_register_thread();
}

static void suite_fini(void)
{
    vck_rcu_unregister_thread();
}

TestSuite(flatview, .init = suite_init, .fini = suite_fini);
TestSuite(flatview_abort, .init = suite_init, .fini = suite_fini, .timeout = 30);

/* ---------------------------------------------------------------------------------------- */
/* Fixture: one memmap, the regions and address spaces made on it, torn down in order.       */

enum { FX_MAX = 96, SNAP_MAX = 128 };

struct fixture {
    struct vck_memmap *mm;
    struct vck_mr *mrs[FX_MAX];
    int n_mrs;
    struct vck_as *ases[8];
    int n_ases;
};

static struct vck_memmap *mm_new_opts(unsigned flags, size_t pending_limit)
{
    struct vck_memmap_options o;
    memset(&o, 0, sizeof(o));
    o.flags = flags;
    o.pending_limit = pending_limit;
    struct vck_memmap *mm = vck_memmap_new(&o);
    cr_assert_not_null(mm, "vck_memmap_new failed");
    return mm;
}

static void fx_init(struct fixture *fx, unsigned flags)
{
    memset(fx, 0, sizeof(*fx));
    fx->mm = mm_new_opts(flags, 0);
}

static struct vck_mr *fx_keep(struct fixture *fx, struct vck_mr *mr)
{
    cr_assert_not_null(mr, "a region constructor returned NULL");
    cr_assert_lt(fx->n_mrs, FX_MAX);
    fx->mrs[fx->n_mrs++] = mr;
    return mr;
}

static struct vck_mr *fx_container(struct fixture *fx, const char *name, uint64_t size)
{
    return fx_keep(fx, vck_mr_new_container(fx->mm, name, size));
}

static struct vck_mr *fx_ram(struct fixture *fx, const char *name, uint64_t size)
{
    return fx_keep(fx, vck_mr_new_ram(fx->mm, name, size));
}

static struct vck_mr *fx_ram_ptr(struct fixture *fx, const char *name, uint64_t size, void *host)
{
    return fx_keep(fx, vck_mr_new_ram_ptr(fx->mm, name, size, host));
}

static const struct vck_mr_ops no_ops; /* both callbacks NULL: accesses fail, fine here */

static struct vck_mr *fx_mmio(struct fixture *fx, const char *name, uint64_t size)
{
    return fx_keep(fx, vck_mr_new_mmio(fx->mm, name, size, &no_ops, NULL));
}

static struct vck_mr *fx_alias(struct fixture *fx, const char *name, struct vck_mr *target,
                               uint64_t offset, uint64_t size)
{
    return fx_keep(fx, vck_mr_new_alias(fx->mm, name, target, offset, size));
}

static struct vck_as *fx_as(struct fixture *fx, const char *name, struct vck_mr *root)
{
    struct vck_as *as = vck_as_new(fx->mm, name, root);
    cr_assert_not_null(as, "vck_as_new failed");
    fx->ases[fx->n_ases++] = as;
    return as;
}

static void fx_forget_as(struct fixture *fx, struct vck_as *as)
{
    for (int i = 0; i < fx->n_ases; i++)
        if (fx->ases[i] == as) {
            fx->ases[i] = fx->ases[--fx->n_ases];
            return;
        }
    cr_assert_fail("address space not in the fixture");
}

/* Tear down, in an order the lifetime rules allow when no alias was retargeted to a newer one. */
static void fx_free(struct fixture *fx)
{
    for (int i = 0; i < fx->n_ases; i++)
        vck_as_destroy(fx->ases[i]);
    fx->n_ases = 0;
    for (int i = fx->n_mrs - 1; i >= 0; i--)
        if (vck_mr_container(fx->mrs[i]))
            vck_mr_del_subregion(vck_mr_container(fx->mrs[i]), fx->mrs[i]);
    for (int i = fx->n_mrs - 1; i >= 0; i--)
        vck_mr_destroy(fx->mrs[i]);
    fx->n_mrs = 0;
    vck_memmap_free(fx->mm);
    fx->mm = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Looking at views.                                                                         */

struct want {
    uint64_t start, last;
    const struct vck_mr *mr;
    uint64_t offset;
    bool ro;
};

struct snap {
    size_t n;
    uint64_t gen;
    const struct vck_flatview *view; /* for identity comparisons only, never dereferenced */
    struct vck_flat_range r[SNAP_MAX];
};

static const char *mr_name_or(const struct vck_mr *mr)
{
    return mr ? vck_mr_name(mr) : "(null)";
}

static void fmt_ranges(char *buf, size_t cap, const struct vck_flat_range *r, size_t n)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && used + 1 < cap; i++)
        used += (size_t)snprintf(
            buf + used, cap - used, "\n    [%#" PRIx64 ", %#" PRIx64 "] %s +%#" PRIx64 "%s",
            r[i].start, r[i].last, mr_name_or(r[i].mr), r[i].offset, r[i].readonly ? " ro" : "");
    if (n == 0)
        snprintf(buf, cap, " (no ranges)");
}

/* Copies @view's ranges, checking that find() returns each range at its start and last. */
static void snap_view(struct snap *s, const struct vck_flatview *view)
{
    const struct vck_flat_range *r = vck_flatview_ranges(view, &s->n);
    cr_assert_leq(s->n, SNAP_MAX, "view has %zu ranges", s->n);
    cr_assert(s->n == 0 || r != NULL, "non-empty view without a range array");
    if (s->n)
        memcpy(s->r, r, s->n * sizeof(*r));
    s->gen = vck_flatview_generation(view);
    s->view = view;
    for (size_t i = 0; i < s->n; i++) {
        cr_assert_eq(vck_flatview_find(view, r[i].start), &r[i],
                     "find(%#" PRIx64 ") is not range %zu", r[i].start, i);
        cr_assert_eq(vck_flatview_find(view, r[i].last), &r[i],
                     "find(%#" PRIx64 ") is not range %zu", r[i].last, i);
    }
}

static struct snap *snap_of(const struct vck_as *as)
{
    static struct snap s;
    vck_rcu_read_lock();
    snap_view(&s, vck_as_view(as));
    vck_rcu_read_unlock();
    return &s;
}

static uint64_t gen_of(const struct vck_as *as)
{
    vck_rcu_read_lock();
    uint64_t g = vck_flatview_generation(vck_as_view(as));
    vck_rcu_read_unlock();
    return g;
}

static bool range_eq(const struct vck_flat_range *a, const struct vck_flat_range *b)
{
    return a->start == b->start && a->last == b->last && a->mr == b->mr && a->offset == b->offset &&
           a->readonly == b->readonly;
}

static void expect_view_(const struct vck_as *as, int line, const struct want *w, size_t n)
{
    struct snap *s = snap_of(as);
    bool ok = s->n == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = s->r[i].start == w[i].start && s->r[i].last == w[i].last && s->r[i].mr == w[i].mr &&
             s->r[i].offset == w[i].offset && s->r[i].readonly == w[i].ro;
    if (!ok) {
        static char got[8192], exp[8192];
        static struct vck_flat_range wr[SNAP_MAX];
        for (size_t i = 0; i < n && i < SNAP_MAX; i++)
            wr[i] = (struct vck_flat_range){.start = w[i].start,
                                            .last = w[i].last,
                                            .mr = (struct vck_mr *)w[i].mr,
                                            .offset = w[i].offset,
                                            .readonly = w[i].ro};
        fmt_ranges(got, sizeof(got), s->r, s->n);
        fmt_ranges(exp, sizeof(exp), wr, n);
        cr_assert_fail("line %d: view of %s (generation %" PRIu64 ") is:%s\n  expected:%s", line,
                       vck_as_name(as), s->gen, got, exp);
    }
    /* The gaps between ranges are unassigned. */
    vck_rcu_read_lock();
    const struct vck_flatview *v = vck_as_view(as);
    for (size_t i = 0; i < n; i++) {
        if (w[i].start > 0 && (i == 0 || w[i - 1].last + 1 < w[i].start))
            cr_assert_null(vck_flatview_find(v, w[i].start - 1),
                           "line %d: find(%#" PRIx64 ") in a gap is not NULL", line,
                           w[i].start - 1);
        if (w[i].last < UMAX && (i + 1 == n || w[i].last + 1 < w[i + 1].start))
            cr_assert_null(vck_flatview_find(v, w[i].last + 1),
                           "line %d: find(%#" PRIx64 ") in a gap is not NULL", line, w[i].last + 1);
    }
    if (n == 0) {
        cr_assert_null(vck_flatview_find(v, 0), "line %d: find(0) in an empty view", line);
        cr_assert_null(vck_flatview_find(v, UMAX), "line %d: find(max) in an empty view", line);
    }
    vck_rcu_read_unlock();
}

#define EXPECT_VIEW(as, ...)                                                                       \
    expect_view_((as), __LINE__, (const struct want[]){__VA_ARGS__},                               \
                 sizeof((const struct want[]){__VA_ARGS__}) / sizeof(struct want))
#define EXPECT_EMPTY(as) expect_view_((as), __LINE__, NULL, 0)

static struct vck_memmap_stats stats_of(struct vck_memmap *mm)
{
    struct vck_memmap_stats st;
    memset(&st, 0xa5, sizeof(st));
    vck_memmap_get_stats(mm, &st);
    return st;
}

/*
 * Reclamation can take more than one round of callbacks (a view's callback dropping the last
 * reference to a region that is then reclaimed in a callback of its own), and a barrier only
 * waits for callbacks queued before it, so "everything reclaimable has been reclaimed" is a few
 * barriers in a row.
 */
static void reclaim_all(void)
{
    for (int i = 0; i < 3; i++)
        vck_rcu_barrier();
}

/* ---------------------------------------------------------------------------------------- */
/* Region kinds and attributes.                                                              */

Test(flatview, empty_root_renders_no_range)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x1000);
    char name[] = "system";
    struct vck_as *as = fx_as(&fx, name, root);
    name[0] = 'X';
    cr_expect_str_eq(vck_as_name(as), "system", "the address space's name was not copied");
    cr_expect_eq(vck_as_root(as), root);
    EXPECT_EMPTY(as);
    cr_expect_eq(gen_of(as), 1, "the first view's generation is not 1");
    fx_free(&fx);
}

Test(flatview, every_kind_renders_as_a_root)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *ram = fx_ram(&fx, "ram", 0x2000);
    struct vck_mr *mmio = fx_mmio(&fx, "mmio", 0x10);
    struct vck_mr *alias = fx_alias(&fx, "alias", ram, 0x100, 0x200);
    struct vck_mr *tail = fx_alias(&fx, "tail", ram, 0x1f00, 0x1000); /* runs past the RAM */
    struct vck_mr *cont = fx_container(&fx, "cont", 0x10000);
    struct vck_as *as_ram = fx_as(&fx, "as-ram", ram);
    struct vck_as *as_mmio = fx_as(&fx, "as-mmio", mmio);
    struct vck_as *as_alias = fx_as(&fx, "as-alias", alias);
    struct vck_as *as_tail = fx_as(&fx, "as-tail", tail);
    struct vck_as *as_cont = fx_as(&fx, "as-cont", cont);
    EXPECT_VIEW(as_ram, {0, 0x1fff, ram, 0, false});
    EXPECT_VIEW(as_mmio, {0, 0xf, mmio, 0, false});
    EXPECT_VIEW(as_alias, {0, 0x1ff, ram, 0x100, false});
    EXPECT_VIEW(as_tail, {0, 0xff, ram, 0x1f00, false});
    EXPECT_EMPTY(as_cont);
    fx_free(&fx);
}

static enum vck_mem_result dummy_read(void *opaque, uint64_t offset, uint64_t *value, unsigned size)
{
    (void)opaque;
    (void)offset;
    (void)size;
    *value = 0;
    return VCK_MEM_OK;
}

Test(flatview, region_attributes)
{
    struct fixture fx;
    fx_init(&fx, 0);
    static uint8_t host[0x400];
    int token;
    char name[] = "ram0";
    struct vck_mr *c = fx_container(&fx, "c", 0x10000);
    struct vck_mr *ram = fx_ram(&fx, name, 0x3000);
    name[0] = 'X';
    struct vck_mr *rp = fx_ram_ptr(&fx, "rp", sizeof(host), host);
    struct vck_mr_ops ops = {.read = dummy_read, .min_access = 2, .max_access = 4};
    struct vck_mr *io = fx_keep(&fx, vck_mr_new_mmio(fx.mm, "io", 0x100, &ops, &token));
    ops.min_access = 8;
    struct vck_mr *al = fx_alias(&fx, "al", ram, 0x10, 0x20);

    cr_expect_str_eq(vck_mr_name(ram), "ram0", "the region's name was not copied");
    cr_expect_eq(vck_mr_kind(c), VCK_MR_CONTAINER);
    cr_expect_eq(vck_mr_kind(ram), VCK_MR_RAM);
    cr_expect_eq(vck_mr_kind(rp), VCK_MR_RAM);
    cr_expect_eq(vck_mr_kind(io), VCK_MR_MMIO);
    cr_expect_eq(vck_mr_kind(al), VCK_MR_ALIAS);

    uint8_t *h = vck_mr_host(ram);
    cr_assert_not_null(h);
    for (size_t i = 0; i < 0x3000; i++)
        cr_assert_eq(h[i], 0, "RAM backing is not zeroed at %zu", i);
    h[0x2fff] = 1; /* the backing is writable over its whole size */
    cr_expect_eq(vck_mr_host(rp), host);
    cr_expect_null(vck_mr_host(c));
    cr_expect_null(vck_mr_host(io));
    cr_expect_null(vck_mr_host(al));

    const struct vck_mr_ops *got = vck_mr_ops(io);
    cr_assert_not_null(got);
    cr_expect_neq(got, &ops, "the ops were not copied");
    cr_expect_eq(got->read, dummy_read);
    cr_expect_null(got->write);
    cr_expect_eq(got->min_access, 2);
    cr_expect_eq(got->max_access, 4);
    cr_expect_eq(vck_mr_opaque(io), &token);
    cr_expect_null(vck_mr_ops(ram));
    cr_expect_null(vck_mr_ops(al));
    cr_expect_null(vck_mr_opaque(ram));

    /* The defaults: enabled, writable, priority 0, mapped nowhere. */
    cr_expect_eq(vck_mr_size(ram), 0x3000);
    cr_expect_eq(vck_mr_size(al), 0x20);
    cr_expect_eq(vck_mr_address(ram), 0);
    cr_expect_eq(vck_mr_priority(ram), 0);
    cr_expect(vck_mr_enabled(ram));
    cr_expect(!vck_mr_readonly(ram));
    cr_expect_null(vck_mr_container(ram));

    vck_mr_add_subregion(c, 0x40, ram, 3);
    cr_expect_eq(vck_mr_address(ram), 0x40);
    cr_expect_eq(vck_mr_priority(ram), 3);
    cr_expect_eq(vck_mr_container(ram), c);
    vck_mr_set_address(ram, 0x8000);
    cr_expect_eq(vck_mr_address(ram), 0x8000);
    vck_mr_set_priority(ram, -7);
    cr_expect_eq(vck_mr_priority(ram), -7);
    vck_mr_set_enabled(ram, false);
    cr_expect(!vck_mr_enabled(ram));
    vck_mr_set_readonly(ram, true);
    cr_expect(vck_mr_readonly(ram));
    vck_mr_set_size(ram, 0x1000);
    cr_expect_eq(vck_mr_size(ram), 0x1000);
    cr_expect_eq(vck_mr_host(ram), h, "resizing moved the RAM's host memory");
    vck_mr_del_subregion(c, ram);
    cr_expect_null(vck_mr_container(ram));
    cr_expect_eq(vck_mr_address(ram), 0, "an unmapped region's address is not 0");

    struct vck_mr *full = fx_container(&fx, "full", VCK_MR_SIZE_FULL);
    cr_expect_eq(vck_mr_size(full), VCK_MR_SIZE_FULL);
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* Changing the tree.                                                                        */

Test(flatview, add_and_del_subregion)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    EXPECT_VIEW(as, {0, 0xfff, a, 0, false});
    cr_expect_eq(gen_of(as), 2);
    vck_mr_add_subregion(root, 0x800, b, 1);
    EXPECT_VIEW(as, {0, 0x7ff, a, 0, false}, {0x800, 0x8ff, b, 0, false},
                {0x900, 0xfff, a, 0x900, false});
    cr_expect_eq(gen_of(as), 3);
    vck_mr_del_subregion(root, b);
    EXPECT_VIEW(as, {0, 0xfff, a, 0, false});
    cr_expect_eq(gen_of(as), 4);
    /* Re-added below a: hidden, so nothing visible changes and nothing is published. */
    vck_mr_add_subregion(root, 0x800, b, -1);
    EXPECT_VIEW(as, {0, 0xfff, a, 0, false});
    cr_expect_eq(gen_of(as), 4, "a change hidden under a higher priority published a view");
    vck_mr_del_subregion(root, a);
    EXPECT_VIEW(as, {0x800, 0x8ff, b, 0, false});
    vck_mr_del_subregion(root, b);
    EXPECT_EMPTY(as);
    fx_free(&fx);
}

Test(flatview, priority_then_add_order_decides_overlaps)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_mmio(&fx, "a", 0x100);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(root, 0x80, b, 0);
    /* Equal priority: b, added later, wins. */
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false});
    vck_mr_set_priority(a, 1);
    EXPECT_VIEW(as, {0, 0xff, a, 0, false}, {0x100, 0x17f, b, 0x80, false});
    /* Back to equal priority: a keeps its earlier place in the add order. */
    vck_mr_set_priority(a, 0);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false});
    /* Moving keeps the add order too. */
    vck_mr_set_address(a, 0x1000);
    EXPECT_VIEW(as, {0x80, 0x17f, b, 0, false}, {0x1000, 0x10ff, a, 0, false});
    vck_mr_set_address(a, 0);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false});
    /* Deleted and re-added, a is now the later one. */
    vck_mr_del_subregion(root, a);
    vck_mr_add_subregion(root, 0, a, 0);
    EXPECT_VIEW(as, {0, 0xff, a, 0, false}, {0x100, 0x17f, b, 0x80, false});
    /* Negative priorities lose to 0. */
    vck_mr_set_priority(a, -1);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false});

    /* The extremes of int compare as integers (a comparator that subtracts overflows). */
    struct vck_mr *hi = fx_mmio(&fx, "hi", 0x10);
    struct vck_mr *lo = fx_mmio(&fx, "lo", 0x10);
    vck_mr_add_subregion(root, 0x800, hi, INT32_MAX);
    vck_mr_add_subregion(root, 0x800, lo, INT32_MIN);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false},
                {0x800, 0x80f, hi, 0, false});
    vck_mr_set_priority(lo, INT32_MAX);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false},
                {0x800, 0x80f, lo, 0, false});
    vck_mr_set_priority(hi, INT32_MIN);
    vck_mr_set_priority(lo, INT32_MIN + 1);
    EXPECT_VIEW(as, {0, 0x7f, a, 0, false}, {0x80, 0x17f, b, 0, false},
                {0x800, 0x80f, lo, 0, false});
    fx_free(&fx);
}

Test(flatview, holes_show_lower_priority_siblings)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *low = fx_ram(&fx, "low", 0x4000);
    struct vck_mr *hi = fx_container(&fx, "hi", 0x4000);
    struct vck_mr *dev = fx_mmio(&fx, "dev", 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(hi, 0x1000, dev, 0);
    vck_mr_add_subregion(root, 0, low, 0);
    vck_mr_add_subregion(root, 0, hi, 1);
    EXPECT_VIEW(as, {0, 0xfff, low, 0, false}, {0x1000, 0x10ff, dev, 0, false},
                {0x1100, 0x3fff, low, 0x1100, false});
    /* A child of the hole-y container moved: its old place shows the sibling again. */
    vck_mr_set_address(dev, 0x2000);
    EXPECT_VIEW(as, {0, 0x1fff, low, 0, false}, {0x2000, 0x20ff, dev, 0, false},
                {0x2100, 0x3fff, low, 0x2100, false});
    fx_free(&fx);
}

Test(flatview, set_address_moves_and_clips)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x1000);
    struct vck_mr *r = fx_ram(&fx, "r", 0x200);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0x100, r, 0);
    EXPECT_VIEW(as, {0x100, 0x2ff, r, 0, false});
    vck_mr_set_address(r, 0x400);
    EXPECT_VIEW(as, {0x400, 0x5ff, r, 0, false});
    vck_mr_set_address(r, 0xf00); /* straddles the container's end */
    EXPECT_VIEW(as, {0xf00, 0xfff, r, 0, false});
    vck_mr_set_address(r, 0x1000); /* just past it */
    EXPECT_EMPTY(as);
    vck_mr_set_address(r, UMAX); /* far past it, where addr + size overflows */
    EXPECT_EMPTY(as);
    vck_mr_set_address(r, 0);
    EXPECT_VIEW(as, {0, 0x1ff, r, 0, false});
    fx_free(&fx);
}

Test(flatview, set_size_of_each_kind)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x100000);
    struct vck_mr *ram = fx_ram(&fx, "ram", 0x4000);
    struct vck_mr *io = fx_mmio(&fx, "io", 0x100);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *inner = fx_mmio(&fx, "inner", 0x800);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, ram, 0);
    vck_mr_add_subregion(root, 0x10000, io, 0);
    vck_mr_add_subregion(c, 0x400, inner, 0);
    vck_mr_add_subregion(root, 0x20000, c, 0);
    EXPECT_VIEW(as, {0, 0x3fff, ram, 0, false}, {0x10000, 0x100ff, io, 0, false},
                {0x20400, 0x20bff, inner, 0, false});

    vck_mr_set_size(ram, 0x1000);
    vck_mr_set_size(io, 0x1000);
    vck_mr_set_size(c, 0x600); /* clips inner */
    EXPECT_VIEW(as, {0, 0xfff, ram, 0, false}, {0x10000, 0x10fff, io, 0, false},
                {0x20400, 0x205ff, inner, 0, false});
    vck_mr_set_size(ram, 0x4000); /* grows back, up to its backing */
    vck_mr_set_size(c, 0x1000);
    EXPECT_VIEW(as, {0, 0x3fff, ram, 0, false}, {0x10000, 0x10fff, io, 0, false},
                {0x20400, 0x20bff, inner, 0, false});
    vck_mr_set_size(ram, 0x2001);
    EXPECT_VIEW(as, {0, 0x2000, ram, 0, false}, {0x10000, 0x10fff, io, 0, false},
                {0x20400, 0x20bff, inner, 0, false});
    vck_mr_set_size(ram, 0);
    vck_mr_set_size(inner, 1);
    EXPECT_VIEW(as, {0x10000, 0x10fff, io, 0, false}, {0x20400, 0x20400, inner, 0, false});
    vck_mr_set_size(ram, 0x4000);
    EXPECT_VIEW(as, {0, 0x3fff, ram, 0, false}, {0x10000, 0x10fff, io, 0, false},
                {0x20400, 0x20400, inner, 0, false});
    /* The root's size clips the address space. */
    vck_mr_set_size(root, 0x10080);
    EXPECT_VIEW(as, {0, 0x3fff, ram, 0, false}, {0x10000, 0x1007f, io, 0, false});
    vck_mr_set_size(root, VCK_MR_SIZE_FULL);
    EXPECT_VIEW(as, {0, 0x3fff, ram, 0, false}, {0x10000, 0x10fff, io, 0, false},
                {0x20400, 0x20400, inner, 0, false});
    fx_free(&fx);
}

Test(flatview, enable_and_disable)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *low = fx_ram(&fx, "low", 0x2000);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *dev = fx_mmio(&fx, "dev", 0x100);
    struct vck_mr *al = fx_alias(&fx, "al", low, 0x1000, 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, low, 0);
    vck_mr_add_subregion(c, 0x100, dev, 0);
    vck_mr_add_subregion(root, 0, c, 1);
    vck_mr_add_subregion(root, 0x8000, al, 0);
    EXPECT_VIEW(as, {0, 0xff, low, 0, false}, {0x100, 0x1ff, dev, 0, false},
                {0x200, 0x1fff, low, 0x200, false}, {0x8000, 0x80ff, low, 0x1000, false});
    vck_mr_set_enabled(dev, false);
    EXPECT_VIEW(as, {0, 0x1fff, low, 0, false}, {0x8000, 0x80ff, low, 0x1000, false});
    vck_mr_set_enabled(dev, true);
    vck_mr_set_enabled(c, false); /* hides its whole subtree */
    EXPECT_VIEW(as, {0, 0x1fff, low, 0, false}, {0x8000, 0x80ff, low, 0x1000, false});
    vck_mr_set_enabled(c, true);
    vck_mr_set_enabled(al, false);
    EXPECT_VIEW(as, {0, 0xff, low, 0, false}, {0x100, 0x1ff, dev, 0, false},
                {0x200, 0x1fff, low, 0x200, false});
    /* Disabling the target hides it through the alias as well. */
    vck_mr_set_enabled(al, true);
    vck_mr_set_enabled(low, false);
    EXPECT_VIEW(as, {0x100, 0x1ff, dev, 0, false});
    vck_mr_set_enabled(low, true);
    vck_mr_set_enabled(root, false);
    EXPECT_EMPTY(as);
    vck_mr_set_enabled(root, true);
    EXPECT_VIEW(as, {0, 0xff, low, 0, false}, {0x100, 0x1ff, dev, 0, false},
                {0x200, 0x1fff, low, 0x200, false}, {0x8000, 0x80ff, low, 0x1000, false});
    fx_free(&fx);
}

Test(flatview, readonly_is_inherited_from_containers_and_aliases)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x100000);
    struct vck_mr *rom = fx_ram(&fx, "rom", 0x1000);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *dev = fx_mmio(&fx, "dev", 0x100);
    struct vck_mr *ram = fx_ram(&fx, "ram", 0x1000);
    struct vck_mr *al = fx_alias(&fx, "al", ram, 0, 0x1000);
    struct vck_mr *alc = fx_alias(&fx, "alc", c, 0, 0x1000); /* an alias of the container */
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_set_readonly(rom, true);
    vck_mr_add_subregion(root, 0, rom, 0);
    vck_mr_add_subregion(c, 0, dev, 0);
    vck_mr_add_subregion(root, 0x10000, c, 0);
    vck_mr_add_subregion(root, 0x20000, ram, 0);
    vck_mr_add_subregion(root, 0x30000, al, 0);
    vck_mr_add_subregion(root, 0x40000, alc, 0);
    EXPECT_VIEW(as, {0, 0xfff, rom, 0, true}, {0x10000, 0x100ff, dev, 0, false},
                {0x20000, 0x20fff, ram, 0, false}, {0x30000, 0x30fff, ram, 0, false},
                {0x40000, 0x400ff, dev, 0, false});
    vck_mr_set_readonly(c, true); /* seen directly and through alc */
    vck_mr_set_readonly(al, true);
    EXPECT_VIEW(as, {0, 0xfff, rom, 0, true}, {0x10000, 0x100ff, dev, 0, true},
                {0x20000, 0x20fff, ram, 0, false}, {0x30000, 0x30fff, ram, 0, true},
                {0x40000, 0x400ff, dev, 0, true});
    vck_mr_set_readonly(c, false);
    vck_mr_set_readonly(alc, true);
    EXPECT_VIEW(as, {0, 0xfff, rom, 0, true}, {0x10000, 0x100ff, dev, 0, false},
                {0x20000, 0x20fff, ram, 0, false}, {0x30000, 0x30fff, ram, 0, true},
                {0x40000, 0x400ff, dev, 0, true});
    vck_mr_set_readonly(root, true);
    EXPECT_VIEW(as, {0, 0xfff, rom, 0, true}, {0x10000, 0x100ff, dev, 0, true},
                {0x20000, 0x20fff, ram, 0, true}, {0x30000, 0x30fff, ram, 0, true},
                {0x40000, 0x400ff, dev, 0, true});
    vck_mr_set_readonly(root, false);
    vck_mr_set_readonly(rom, false);
    vck_mr_set_readonly(al, false);
    vck_mr_set_readonly(alc, false);
    EXPECT_VIEW(as, {0, 0xfff, rom, 0, false}, {0x10000, 0x100ff, dev, 0, false},
                {0x20000, 0x20fff, ram, 0, false}, {0x30000, 0x30fff, ram, 0, false},
                {0x40000, 0x400ff, dev, 0, false});
    fx_free(&fx);
}

Test(flatview, alias_retarget)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *r1 = fx_ram(&fx, "r1", 0x1000);
    struct vck_mr *r2 = fx_ram(&fx, "r2", 0x1000);
    struct vck_mr *io = fx_mmio(&fx, "io", 0x80);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *cdev = fx_mmio(&fx, "cdev", 0x10);
    struct vck_mr *al = fx_alias(&fx, "al", r1, 0, 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(c, 0x40, cdev, 0);
    vck_mr_add_subregion(root, 0x1000, al, 0);
    EXPECT_VIEW(as, {0x1000, 0x10ff, r1, 0, false});
    vck_mr_set_alias_target(al, r2, 0x10);
    EXPECT_VIEW(as, {0x1000, 0x10ff, r2, 0x10, false});
    cr_expect_eq(vck_mr_size(al), 0x100, "retargeting changed the alias's size");
    vck_mr_set_alias_target(al, r2, 0xf80); /* now runs past r2's end */
    EXPECT_VIEW(as, {0x1000, 0x107f, r2, 0xf80, false});
    vck_mr_set_alias_target(al, io, 0x40);
    EXPECT_VIEW(as, {0x1000, 0x103f, io, 0x40, false});
    vck_mr_set_alias_target(al, c, 0x20);
    EXPECT_VIEW(as, {0x1020, 0x102f, cdev, 0, false});
    vck_mr_set_alias_target(al, r1, 0x1000); /* past the target's end: nothing */
    EXPECT_EMPTY(as);
    fx_free(&fx);
}

Test(flatview, aliases_of_aliases_compose)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *ram = fx_ram(&fx, "ram", 0x1000);
    struct vck_mr *a1 = fx_alias(&fx, "a1", ram, 0x100, 0x800);
    struct vck_mr *a2 = fx_alias(&fx, "a2", a1, 0x80, 0x400);
    struct vck_mr *a3 = fx_alias(&fx, "a3", a2, 0x40, 0x1000); /* sees [0x40, 0x400) of a2 */
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0x2000, a3, 0);
    EXPECT_VIEW(as, {0x2000, 0x23bf, ram, 0x1c0, false});
    /* Changes two links away from what is mapped. */
    vck_mr_set_alias_target(a1, ram, 0x200);
    EXPECT_VIEW(as, {0x2000, 0x23bf, ram, 0x2c0, false});
    vck_mr_set_size(a1, 0x100); /* a2 sees [0x80, 0x100) of a1, a3 [0x40, 0x80) of a2 */
    EXPECT_VIEW(as, {0x2000, 0x203f, ram, 0x2c0, false});
    vck_mr_set_readonly(a1, true);
    EXPECT_VIEW(as, {0x2000, 0x203f, ram, 0x2c0, true});
    vck_mr_set_enabled(a1, false);
    EXPECT_EMPTY(as);
    vck_mr_set_enabled(a1, true);
    vck_mr_set_readonly(a1, false);
    vck_mr_set_size(a1, 0x800);
    vck_mr_set_size(ram, 0x300); /* shrinking the RAM at the bottom of the chain clips all */
    EXPECT_VIEW(as, {0x2000, 0x203f, ram, 0x2c0, false});
    fx_free(&fx);
}

Test(flatview, alias_into_a_container)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *r = fx_ram(&fx, "r", 0x100);
    struct vck_mr *m = fx_mmio(&fx, "m", 0x100);
    struct vck_mr *a = fx_alias(&fx, "a", c, 0x180, 0x400);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(c, 0x200, r, 0);
    vck_mr_add_subregion(c, 0x400, m, 0);
    vck_mr_add_subregion(root, 0, c, 0);
    vck_mr_add_subregion(root, 0x8000, a, 0);
    EXPECT_VIEW(as, {0x200, 0x2ff, r, 0, false}, {0x400, 0x4ff, m, 0, false},
                {0x8080, 0x817f, r, 0, false}, {0x8280, 0x837f, m, 0, false});
    /* One change inside the container shows in both places. */
    vck_mr_set_address(r, 0x300);
    EXPECT_VIEW(as, {0x300, 0x3ff, r, 0, false}, {0x400, 0x4ff, m, 0, false},
                {0x8180, 0x827f, r, 0, false}, {0x8280, 0x837f, m, 0, false});
    vck_mr_set_address(r, 0x100); /* out of the alias's window, partly */
    EXPECT_VIEW(as, {0x100, 0x1ff, r, 0, false}, {0x400, 0x4ff, m, 0, false},
                {0x8000, 0x807f, r, 0x80, false}, {0x8280, 0x837f, m, 0, false});
    /* An unmapped container shows through its alias only. */
    vck_mr_del_subregion(root, c);
    EXPECT_VIEW(as, {0x8000, 0x807f, r, 0x80, false}, {0x8280, 0x837f, m, 0, false});
    fx_free(&fx);
}

Test(flatview, children_are_clipped_at_the_container_end)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x1000);
    struct vck_mr *r = fx_ram(&fx, "r", 0x200);
    struct vck_mr *past = fx_mmio(&fx, "past", 0x100);
    struct vck_mr *far = fx_mmio(&fx, "far", 0x100);
    struct vck_mr *c = fx_container(&fx, "c", 0x100);
    struct vck_mr *r2 = fx_ram(&fx, "r2", 0x200);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0xf00, r, 0);
    vck_mr_add_subregion(root, 0x1000, past, 0);
    vck_mr_add_subregion(root, 0x200000, far, 0);
    vck_mr_add_subregion(c, 0x80, r2, 0);
    vck_mr_add_subregion(root, 0x100, c, 0);
    EXPECT_VIEW(as, {0x180, 0x1ff, r2, 0, false}, {0xf00, 0xfff, r, 0, false});
    vck_mr_set_size(root, 0x1100); /* past now fits */
    EXPECT_VIEW(as, {0x180, 0x1ff, r2, 0, false}, {0xf00, 0xfff, r, 0, false},
                {0x1000, 0x10ff, past, 0, false});
    vck_mr_set_size(c, 0x81); /* the nested clip follows its container's size */
    EXPECT_VIEW(as, {0x180, 0x180, r2, 0, false}, {0xf00, 0xfff, r, 0, false},
                {0x1000, 0x10ff, past, 0, false});
    vck_mr_set_size(c, 0x80);
    EXPECT_VIEW(as, {0xf00, 0xfff, r, 0, false}, {0x1000, 0x10ff, past, 0, false});
    fx_free(&fx);
}

Test(flatview, regions_touching_the_top_of_the_64_bit_space)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", VCK_MR_SIZE_FULL);
    struct vck_mr *full = fx_mmio(&fx, "full", VCK_MR_SIZE_FULL);
    struct vck_mr *t = fx_mmio(&fx, "t", 0x100);
    struct vck_mr *r = fx_ram(&fx, "r", 0x1000);
    struct vck_mr *af = fx_alias(&fx, "af", full, 0x1000, VCK_MR_SIZE_FULL);
    struct vck_mr *ic = fx_container(&fx, "ic", VCK_MR_SIZE_FULL);
    struct vck_mr *last = fx_alias(&fx, "last", full, UMAX, 1);
    struct vck_mr *full2 = fx_mmio(&fx, "full2", VCK_MR_SIZE_FULL);
    struct vck_as *as = fx_as(&fx, "as", root);
    struct vck_as *as2 = fx_as(&fx, "as2", full2);
    EXPECT_VIEW(as2, {0, UMAX, full2, 0, false});

    vck_mr_add_subregion(root, 0, full, 0);
    EXPECT_VIEW(as, {0, UMAX, full, 0, false});
    vck_mr_add_subregion(root, UMAX - 0xff, t, 1);
    EXPECT_VIEW(as, {0, UMAX - 0x100, full, 0, false}, {UMAX - 0xff, UMAX, t, 0, false});
    vck_mr_set_address(t, UMAX - 0x7f); /* would end past 2^64: clipped there */
    EXPECT_VIEW(as, {0, UMAX - 0x80, full, 0, false}, {UMAX - 0x7f, UMAX, t, 0, false});
    vck_mr_set_size(t, 1);
    vck_mr_set_address(t, UMAX);
    EXPECT_VIEW(as, {0, UMAX - 1, full, 0, false}, {UMAX, UMAX, t, 0, false});
    vck_mr_del_subregion(root, full);
    EXPECT_VIEW(as, {UMAX, UMAX, t, 0, false});
    vck_mr_add_subregion(root, UMAX - 0xfff, r, 0);
    EXPECT_VIEW(as, {UMAX - 0xfff, UMAX - 1, r, 0, false}, {UMAX, UMAX, t, 0, false});
    vck_mr_del_subregion(root, t);
    EXPECT_VIEW(as, {UMAX - 0xfff, UMAX, r, 0, false});
    vck_mr_del_subregion(root, r);

    /* A full-size alias that starts inside its full-size target ends with the target. */
    vck_mr_add_subregion(root, 0, af, 0);
    EXPECT_VIEW(as, {0, UMAX - 0x1000, full, 0x1000, false});
    vck_mr_del_subregion(root, af);
    /* A full-size container placed at 0x10 is clipped at 2^64 with everything in it. */
    vck_mr_add_subregion(ic, 0, full, 0);
    vck_mr_add_subregion(root, 0x10, ic, 0);
    EXPECT_VIEW(as, {0x10, UMAX, full, 0, false});
    /* The last byte of a full-size region, through a 1-byte alias. */
    vck_mr_add_subregion(root, 0, last, 1);
    EXPECT_VIEW(as, {0, 0, full, UMAX, false}, {0x10, UMAX, full, 0, false});
    vck_mr_set_address(last, UMAX);
    EXPECT_VIEW(as, {0x10, UMAX - 1, full, 0, false}, {UMAX, UMAX, full, UMAX, false});
    vck_mr_set_priority(last, -1);
    EXPECT_VIEW(as, {0x10, UMAX, full, 0, false});
    fx_free(&fx);
}

Test(flatview, zero_size_and_one_byte_regions)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x100);
    struct vck_mr *r = fx_ram(&fx, "r", 0x100);
    struct vck_mr *z = fx_mmio(&fx, "z", 0);
    struct vck_mr *zc = fx_container(&fx, "zc", 0);
    struct vck_mr *zd = fx_mmio(&fx, "zd", 0x10);
    struct vck_mr *o = fx_mmio(&fx, "o", 1);
    struct vck_mr *o0 = fx_mmio(&fx, "o0", 1);
    struct vck_mr *olast = fx_mmio(&fx, "olast", 1);
    struct vck_mr *za = fx_alias(&fx, "za", r, 0, 0);
    struct vck_mr *a1 = fx_alias(&fx, "a1", r, 0x80, 1);
    struct vck_mr *zroot = fx_container(&fx, "zroot", 0);
    struct vck_mr *zchild = fx_mmio(&fx, "zchild", 0x10);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, r, 0);
    EXPECT_VIEW(as, {0, 0xff, r, 0, false});
    uint64_t g = gen_of(as);
    /* Zero-size regions hide nothing, whatever their priority. */
    vck_mr_add_subregion(root, 0x10, z, 5);
    vck_mr_add_subregion(zc, 0, zd, 0);
    vck_mr_add_subregion(root, 0x20, zc, 5);
    vck_mr_add_subregion(root, 0x40, za, 9);
    EXPECT_VIEW(as, {0, 0xff, r, 0, false});
    cr_expect_eq(gen_of(as), g, "adding zero-size regions published a view");
    vck_mr_add_subregion(root, 0x20, o, 1);
    EXPECT_VIEW(as, {0, 0x1f, r, 0, false}, {0x20, 0x20, o, 0, false},
                {0x21, 0xff, r, 0x21, false});
    vck_mr_add_subregion(root, 0, o0, 1);
    vck_mr_add_subregion(root, 0xff, olast, 1);
    EXPECT_VIEW(as, {0, 0, o0, 0, false}, {1, 0x1f, r, 1, false}, {0x20, 0x20, o, 0, false},
                {0x21, 0xfe, r, 0x21, false}, {0xff, 0xff, olast, 0, false});
    vck_mr_add_subregion(root, 0x50, a1, 9);
    EXPECT_VIEW(as, {0, 0, o0, 0, false}, {1, 0x1f, r, 1, false}, {0x20, 0x20, o, 0, false},
                {0x21, 0x4f, r, 0x21, false}, {0x50, 0x50, r, 0x80, false},
                {0x51, 0xfe, r, 0x51, false}, {0xff, 0xff, olast, 0, false});
    vck_mr_set_size(zc, 1); /* zd's first byte appears */
    EXPECT_VIEW(as, {0, 0, o0, 0, false}, {1, 0x1f, r, 1, false}, {0x20, 0x20, zd, 0, false},
                {0x21, 0x4f, r, 0x21, false}, {0x50, 0x50, r, 0x80, false},
                {0x51, 0xfe, r, 0x51, false}, {0xff, 0xff, olast, 0, false});
    vck_mr_set_size(zc, 0);
    vck_mr_set_size(a1, 0);
    EXPECT_VIEW(as, {0, 0, o0, 0, false}, {1, 0x1f, r, 1, false}, {0x20, 0x20, o, 0, false},
                {0x21, 0xfe, r, 0x21, false}, {0xff, 0xff, olast, 0, false});
    /* A zero-size root renders nothing at all. */
    vck_mr_add_subregion(zroot, 0, zchild, 0);
    struct vck_as *zas = fx_as(&fx, "zas", zroot);
    EXPECT_EMPTY(zas);
    fx_free(&fx);
}

Test(flatview, adjacent_compatible_ranges_merge)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x100000);
    struct vck_mr *R = fx_ram(&fx, "R", 0x200);
    struct vck_mr *a1 = fx_alias(&fx, "a1", R, 0, 0x100);
    struct vck_mr *a2 = fx_alias(&fx, "a2", R, 0x100, 0x100);
    struct vck_mr *h = fx_mmio(&fx, "h", 1);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0x1000, a1, 0);
    vck_mr_add_subregion(root, 0x1100, a2, 0);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false});
    vck_mr_set_readonly(a2, true);
    EXPECT_VIEW(as, {0x1000, 0x10ff, R, 0, false}, {0x1100, 0x11ff, R, 0x100, true});
    vck_mr_set_readonly(a2, false);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false});
    vck_mr_set_alias_target(a2, R, 0x80); /* offsets no longer contiguous */
    EXPECT_VIEW(as, {0x1000, 0x10ff, R, 0, false}, {0x1100, 0x11ff, R, 0x80, false});
    vck_mr_set_alias_target(a2, R, 0x100);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false});
    /* A 1-byte device splits the merged range; removing it merges it back. */
    vck_mr_add_subregion(root, 0x1080, h, 1);
    EXPECT_VIEW(as, {0x1000, 0x107f, R, 0, false}, {0x1080, 0x1080, h, 0, false},
                {0x1081, 0x11ff, R, 0x81, false});
    vck_mr_del_subregion(root, h);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false});
    vck_mr_del_subregion(root, a1);
    vck_mr_del_subregion(root, a2);

    /* Same region, adjacent addresses, but offset 0 does not continue offset 0x1ff. */
    struct vck_mr *S = fx_ram(&fx, "S", 0x100);
    vck_mr_add_subregion(root, 0x1000, a1, 0);
    vck_mr_add_subregion(root, 0x1100, a2, 0);
    vck_mr_add_subregion(root, 0x1200, R, 0);
    vck_mr_add_subregion(root, 0x1400, S, 0); /* adjacent, another region */
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false}, {0x1200, 0x13ff, R, 0, false},
                {0x1400, 0x14ff, S, 0, false});

    /* Merging ignores the containers the pieces came through. */
    struct vck_mr *c1 = fx_container(&fx, "c1", 0x100);
    struct vck_mr *c2 = fx_container(&fx, "c2", 0x100);
    struct vck_mr *b1 = fx_alias(&fx, "b1", R, 0, 0x100);
    struct vck_mr *b2 = fx_alias(&fx, "b2", R, 0x100, 0x100);
    vck_mr_add_subregion(c1, 0, b1, 0);
    vck_mr_add_subregion(c2, 0, b2, 0);
    vck_mr_add_subregion(root, 0x3000, c1, 0);
    vck_mr_add_subregion(root, 0x3100, c2, 0);
    /* MMIO pieces merge the same way. */
    struct vck_mr *M = fx_mmio(&fx, "M", 0x100);
    struct vck_mr *m1 = fx_alias(&fx, "m1", M, 0, 0x80);
    struct vck_mr *m2 = fx_alias(&fx, "m2", M, 0x80, 0x80);
    vck_mr_add_subregion(root, 0x4000, m1, 0);
    vck_mr_add_subregion(root, 0x4080, m2, 0);
    /* The end of a full-size region followed by its start: contiguous only modulo 2^64. */
    struct vck_mr *FM = fx_mmio(&fx, "FM", VCK_MR_SIZE_FULL);
    struct vck_mr *w1 = fx_alias(&fx, "w1", FM, UMAX - 0xf, 0x10);
    struct vck_mr *w2 = fx_alias(&fx, "w2", FM, 0, 0x10);
    vck_mr_add_subregion(root, 0x5000, w1, 0);
    vck_mr_add_subregion(root, 0x5010, w2, 0);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false}, {0x1200, 0x13ff, R, 0, false},
                {0x1400, 0x14ff, S, 0, false}, {0x3000, 0x31ff, R, 0, false},
                {0x4000, 0x40ff, M, 0, false}, {0x5000, 0x500f, FM, UMAX - 0xf, false},
                {0x5010, 0x501f, FM, 0, false});
    vck_mr_set_readonly(c2, true);
    EXPECT_VIEW(as, {0x1000, 0x11ff, R, 0, false}, {0x1200, 0x13ff, R, 0, false},
                {0x1400, 0x14ff, S, 0, false}, {0x3000, 0x30ff, R, 0, false},
                {0x3100, 0x31ff, R, 0x100, true}, {0x4000, 0x40ff, M, 0, false},
                {0x5000, 0x500f, FM, UMAX - 0xf, false}, {0x5010, 0x501f, FM, 0, false});
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* Transactions and publication.                                                             */

Test(flatview, nested_transaction_publishes_one_view_at_the_outermost_commit)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_ram(&fx, "b", 0x1000);
    struct vck_as *as = fx_as(&fx, "as", root);
    uint64_t g0 = gen_of(as);
    struct vck_memmap_stats st0 = stats_of(fx.mm);
    vck_memmap_begin(fx.mm);
    vck_memmap_begin(fx.mm);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_set_address(a, 0x1000);
    vck_memmap_commit(fx.mm); /* inner: renders nothing yet */
    EXPECT_EMPTY(as);
    cr_expect_eq(gen_of(as), g0, "an inner commit published a view");
    vck_memmap_begin(fx.mm);
    vck_mr_add_subregion(root, 0x2000, b, 0);
    vck_memmap_commit(fx.mm);
    vck_mr_set_readonly(b, true);
    EXPECT_EMPTY(as);
    cr_expect_eq(gen_of(as), g0, "a change inside a transaction published a view");
    vck_memmap_commit(fx.mm);
    EXPECT_VIEW(as, {0x1000, 0x1fff, a, 0, false}, {0x2000, 0x2fff, b, 0, true});
    cr_expect_eq(gen_of(as), g0 + 1, "the outermost commit did not publish exactly one view");
    struct vck_memmap_stats st1 = stats_of(fx.mm);
    cr_expect_eq(st1.commits, st0.commits + 1, "commits went from %" PRIu64 " to %" PRIu64,
                 st0.commits, st1.commits);
    cr_expect_eq(st1.views_published, st0.views_published + 1,
                 "views_published went from %" PRIu64 " to %" PRIu64, st0.views_published,
                 st1.views_published);
    cr_expect_geq(st1.renders_full + st1.renders_incremental,
                  st0.renders_full + st0.renders_incremental + 1, "the commit rendered nothing");

    /* A single change outside a transaction is a commit of its own. */
    vck_mr_set_readonly(b, false);
    struct vck_memmap_stats st2 = stats_of(fx.mm);
    cr_expect_eq(st2.commits, st1.commits + 1);
    cr_expect_eq(st2.views_published, st1.views_published + 1);
    cr_expect_eq(gen_of(as), g0 + 2);
    fx_free(&fx);
}

Test(flatview, a_commit_that_changes_nothing_visible_publishes_nothing)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *hidden = fx_mmio(&fx, "hidden", 0x100);
    struct vck_mr *loose = fx_mmio(&fx, "loose", 0x100);
    struct vck_mr *al = fx_alias(&fx, "al", loose, 0, 0x100); /* unmapped alias */
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(root, 0x100, hidden, -1);
    uint64_t g = gen_of(as);
    struct vck_memmap_stats st0 = stats_of(fx.mm);

    vck_memmap_begin(fx.mm);
    vck_memmap_commit(fx.mm); /* empty */
    vck_memmap_begin(fx.mm);
    vck_mr_set_enabled(a, false);
    vck_mr_set_enabled(a, true);
    vck_mr_set_address(a, 0x4000);
    vck_mr_set_address(a, 0);
    vck_memmap_commit(fx.mm);
    struct vck_memmap_stats st1 = stats_of(fx.mm);
    cr_expect_eq(st1.commits, st0.commits + 2, "two outermost commits counted as %" PRIu64,
                 st1.commits - st0.commits);

    vck_mr_set_readonly(a, false); /* already writable */
    vck_mr_set_address(a, 0);      /* already there */
    vck_mr_set_priority(a, 0);
    vck_mr_set_size(hidden, 0x200); /* under a */
    vck_mr_set_readonly(hidden, true);
    vck_mr_set_size(loose, 0x80); /* mapped nowhere */
    vck_mr_set_readonly(loose, true);
    vck_mr_set_alias_target(al, a, 0);
    vck_mr_set_enabled(al, false);
    EXPECT_VIEW(as, {0, 0xfff, a, 0, false});
    cr_expect_eq(gen_of(as), g, "an invisible change published generation %" PRIu64, gen_of(as));
    struct vck_memmap_stats st2 = stats_of(fx.mm);
    cr_expect_eq(st2.views_published, st0.views_published, "views_published moved by %" PRIu64,
                 st2.views_published - st0.views_published);
    fx_free(&fx);
}

Test(flatview, two_memmaps_are_independent)
{
    struct fixture f1, f2;
    fx_init(&f1, VCK_MEMMAP_FULL_RENDER);
    fx_init(&f2, 0);
    struct vck_mr *root1 = fx_container(&f1, "root", 0x10000);
    struct vck_mr *r1 = fx_ram(&f1, "r", 0x1000);
    struct vck_mr *root2 = fx_container(&f2, "root", 0x10000);
    struct vck_mr *r2 = fx_ram(&f2, "r", 0x1000);
    struct vck_as *as1 = fx_as(&f1, "as", root1);
    struct vck_as *as2 = fx_as(&f2, "as", root2);
    struct vck_memmap_stats s2 = stats_of(f2.mm);
    uint64_t g1 = gen_of(as1), g2 = gen_of(as2);
    vck_mr_add_subregion(root1, 0, r1, 0);
    cr_expect_eq(gen_of(as1), g1 + 1);
    cr_expect_eq(gen_of(as2), g2, "a change in one memmap published a view in the other");
    cr_expect_eq(stats_of(f2.mm).commits, s2.commits);
    EXPECT_EMPTY(as2);
    /* A transaction open on one memmap does not hold the other's writers. */
    vck_memmap_begin(f1.mm);
    vck_mr_set_address(r1, 0x2000);
    vck_mr_add_subregion(root2, 0x3000, r2, 0);
    EXPECT_VIEW(as2, {0x3000, 0x3fff, r2, 0, false});
    EXPECT_VIEW(as1, {0, 0xfff, r1, 0, false});
    vck_memmap_commit(f1.mm);
    EXPECT_VIEW(as1, {0x2000, 0x2fff, r1, 0, false});
    EXPECT_VIEW(as2, {0x3000, 0x3fff, r2, 0, false});
    cr_expect_eq(gen_of(as1), g1 + 2);
    cr_expect_eq(gen_of(as2), g2 + 1);
    fx_free(&f1);
    EXPECT_VIEW(as2, {0x3000, 0x3fff, r2, 0, false});
    fx_free(&f2);
}

Test(flatview, two_address_spaces_over_one_tree)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x100000);
    struct vck_mr *c = fx_container(&fx, "c", 0x1000);
    struct vck_mr *dev = fx_mmio(&fx, "dev", 0x100);
    struct vck_mr *ram = fx_ram(&fx, "ram", 0x1000);
    vck_mr_add_subregion(c, 0x100, dev, 0);
    vck_mr_add_subregion(root, 0x10000, c, 0);
    struct vck_as *as1 = fx_as(&fx, "as1", root);
    struct vck_as *as2 = fx_as(&fx, "as2", c);
    EXPECT_VIEW(as1, {0x10100, 0x101ff, dev, 0, false});
    EXPECT_VIEW(as2, {0x100, 0x1ff, dev, 0, false});
    uint64_t g1 = gen_of(as1), g2 = gen_of(as2);
    struct vck_memmap_stats st0 = stats_of(fx.mm);
    vck_mr_set_address(dev, 0x200); /* inside c: both change */
    EXPECT_VIEW(as1, {0x10200, 0x102ff, dev, 0, false});
    EXPECT_VIEW(as2, {0x200, 0x2ff, dev, 0, false});
    struct vck_memmap_stats st1 = stats_of(fx.mm);
    cr_expect_eq(st1.views_published, st0.views_published + 2);
    cr_expect_eq(gen_of(as1), g1 + 1);
    cr_expect_eq(gen_of(as2), g2 + 1);
    vck_mr_add_subregion(root, 0, ram, 0); /* outside c: only as1 */
    EXPECT_VIEW(as1, {0, 0xfff, ram, 0, false}, {0x10200, 0x102ff, dev, 0, false});
    EXPECT_VIEW(as2, {0x200, 0x2ff, dev, 0, false});
    cr_expect_eq(stats_of(fx.mm).views_published, st1.views_published + 1);
    cr_expect_eq(gen_of(as1), g1 + 2);
    cr_expect_eq(gen_of(as2), g2 + 1, "a change outside as2's root published a view of it");
    vck_mr_set_address(c, 0x20000); /* moves c within root: as2 sees nothing change */
    EXPECT_VIEW(as1, {0, 0xfff, ram, 0, false}, {0x20200, 0x202ff, dev, 0, false});
    cr_expect_eq(gen_of(as2), g2 + 1, "moving as2's root within its parent republished as2");
    fx_free(&fx);
}

Test(flatview, incremental_and_full_render_counters)
{
    for (int mode = 0; mode < 2; mode++) {
        struct fixture fx;
        fx_init(&fx, mode ? VCK_MEMMAP_FULL_RENDER : 0);
        struct vck_mr *root = fx_container(&fx, "root", VCK_MR_SIZE_FULL);
        struct vck_mr *rams[64];
        vck_memmap_begin(fx.mm);
        for (int i = 0; i < 64; i++) {
            char name[16];
            snprintf(name, sizeof(name), "r%d", i);
            rams[i] = fx_mmio(&fx, name, 0x1000);
            vck_mr_add_subregion(root, (uint64_t)i * 0x10000, rams[i], 0);
        }
        vck_memmap_commit(fx.mm);
        struct vck_as *as = fx_as(&fx, "as", root);
        struct vck_memmap_stats st0 = stats_of(fx.mm);
        vck_mr_set_readonly(rams[17], true);
        struct vck_memmap_stats st1 = stats_of(fx.mm);
        cr_expect_eq(snap_of(as)->n, 64);
        if (mode) {
            cr_expect_eq(st1.renders_full, st0.renders_full + 1, "full render mode: %" PRIu64,
                         st1.renders_full - st0.renders_full);
            cr_expect_eq(st1.renders_incremental, 0, "full render mode rendered incrementally");
        } else {
            cr_expect_eq(st1.renders_full, st0.renders_full,
                         "a one-region change was rendered from scratch");
            cr_expect_gt(st1.renders_incremental, st0.renders_incremental,
                         "a one-region change was not rendered incrementally");
        }
        fx_free(&fx);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Views held by reference.                                                                  */

Test(flatview, a_held_view_outlives_later_commits)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    const struct vck_flatview *v = vck_as_view_get(as);
    cr_assert_not_null(v);
    struct snap held;
    snap_view(&held, v);
    cr_expect_eq(held.n, 1);
    vck_mr_del_subregion(root, a);
    EXPECT_EMPTY(as);
    reclaim_all();
    struct snap again;
    snap_view(&again, v);
    cr_expect_eq(again.n, held.n);
    cr_expect(range_eq(&again.r[0], &held.r[0]), "a held view changed under its reference");
    cr_expect_eq(vck_flatview_generation(v), held.gen);
    cr_expect_eq(gen_of(as), held.gen + 1);
    struct vck_memmap_stats st = stats_of(fx.mm);
    cr_expect_geq(st.views_live, 2, "views_live %" PRIu64 " with a view held", st.views_live);
    cr_assert(vck_flatview_ref(v), "a reference on a held view was refused");
    vck_flatview_unref(v);
    reclaim_all();
    snap_view(&again, v);
    cr_expect(range_eq(&again.r[0], &held.r[0]));
    /* A reference taken on the current view inside a section. */
    vck_rcu_read_lock();
    const struct vck_flatview *cur = vck_as_view(as);
    cr_assert(vck_flatview_ref(cur), "a reference on the current view was refused");
    vck_rcu_read_unlock();
    vck_flatview_unref(v);
    reclaim_all();
    st = stats_of(fx.mm);
    cr_expect_eq(st.views_live, 1, "views_live %" PRIu64 " after reclamation", st.views_live);
    cr_expect_eq(st.pending_bytes, 0, "pending_bytes %zu after reclamation", st.pending_bytes);
    cr_expect_geq(st.peak_pending_bytes, 1);
    cr_expect_eq(vck_flatview_generation(cur), held.gen + 1);
    vck_flatview_unref(cur);
    fx_free(&fx);
}

static atomic_int released;

static void count_release(void *opaque)
{
    atomic_fetch_add((atomic_int *)opaque, 1);
}

Test(flatview, destroying_an_address_space_leaves_held_views_usable)
{
    struct fixture fx;
    fx_init(&fx, 0);
    atomic_store(&released, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *r = vck_mr_new_ram(fx.mm, "r", 0x1000); /* not in the fixture */
    cr_assert_not_null(r);
    vck_mr_set_release(r, count_release, &released);
    vck_mr_add_subregion(root, 0x100, r, 0);
    struct vck_as *as = fx_as(&fx, "as", root);
    const struct vck_flatview *v = vck_as_view_get(as);
    vck_as_destroy(as);
    fx_forget_as(&fx, as);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(r);
    reclaim_all();
    cr_expect_eq(atomic_load(&released), 0, "a region was reclaimed while a held view names it");
    size_t n;
    const struct vck_flat_range *rs = vck_flatview_ranges(v, &n);
    cr_assert_eq(n, 1);
    cr_expect_eq(rs[0].start, 0x100);
    cr_expect_eq(rs[0].last, 0x10ff);
    cr_expect_eq(rs[0].mr, r);
    cr_expect_str_eq(vck_mr_name(rs[0].mr), "r");
    cr_expect_eq(vck_mr_kind(rs[0].mr), VCK_MR_RAM);
    ((volatile uint8_t *)vck_mr_host(rs[0].mr))[0xfff] = 1; /* the backing is still there */
    vck_flatview_unref(v);
    reclaim_all();
    cr_expect_eq(atomic_load(&released), 1, "the release callback ran %d times",
                 atomic_load(&released));
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* Reclamation of regions.                                                                   */

Test(flatview, release_runs_once_a_destroyed_region_is_reclaimed)
{
    struct fixture fx;
    fx_init(&fx, 0);
    atomic_store(&released, 0);
    static uint8_t host[0x100];
    /* No address space: nothing can hold the regions. */
    struct vck_mr *p = vck_mr_new_ram_ptr(fx.mm, "p", sizeof(host), host);
    struct vck_mr *q = vck_mr_new_ram(fx.mm, "q", 0x3000);
    struct vck_mr *m = vck_mr_new_mmio(fx.mm, "m", 0x10, &no_ops, NULL);
    struct vck_mr *a = vck_mr_new_alias(fx.mm, "a", m, 0, 0x10);
    cr_assert(p && q && m && a);
    vck_mr_set_release(p, count_release, &released);
    vck_mr_set_release(q, count_release, &released);
    vck_mr_set_release(m, count_release, &released);
    vck_mr_set_release(a, count_release, &released);
    vck_mr_destroy(p);
    vck_mr_destroy(q);
    vck_mr_destroy(a);
    vck_mr_destroy(m); /* no longer aliased */
    reclaim_all();
    cr_expect_eq(atomic_load(&released), 4, "%d of 4 release callbacks ran",
                 atomic_load(&released));
    fx_free(&fx);
}

/* A commit made from an RCU callback (on liburcu's callback thread) with reclamation over the
 * limit: it must not wait for a grace period or a barrier there, which would wait for itself. */
static struct {
    struct vck_rcu_head head;
    struct vck_mr *r;
    atomic_int done;
} from_callback;

static void commit_from_callback(struct vck_rcu_head *head)
{
    (void)head;
    /* Inside a section: the retired view goes to liburcu, and pending bytes pass the limit. */
    vck_rcu_read_lock();
    vck_mr_set_enabled(from_callback.r, false);
    vck_rcu_read_unlock();
    /* Outside one, over the limit: a commit elsewhere would wait for a barrier here. */
    vck_mr_set_enabled(from_callback.r, true);
    atomic_store(&from_callback.done, 1);
}

Test(flatview, a_commit_inside_an_rcu_callback_does_not_wait, .timeout = 20)
{
    struct vck_memmap *mm = mm_new_opts(0, 1); /* any pending byte is over the limit */
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x10000);
    from_callback.r = vck_mr_new_ram(mm, "r", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert(root && from_callback.r && as);
    vck_mr_add_subregion(root, 0x1000, from_callback.r, 0);
    atomic_store(&from_callback.done, 0);
    vck_rcu_call(&from_callback.head, commit_from_callback);
    reclaim_all(); /* hangs (and the timeout fails the test) if the callback waits */
    cr_expect_eq(atomic_load(&from_callback.done), 1);
    vck_as_destroy(as);
    vck_mr_del_subregion(root, from_callback.r);
    vck_mr_destroy(from_callback.r);
    vck_mr_destroy(root);
    reclaim_all();
    vck_memmap_free(mm);
}

Test(flatview, release_waits_for_a_held_view_naming_the_region)
{
    struct fixture fx;
    fx_init(&fx, 0);
    atomic_store(&released, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *other = fx_mmio(&fx, "other", 0x10);
    struct vck_mr *r = vck_mr_new_ram(fx.mm, "r", 0x1000);
    cr_assert_not_null(r);
    vck_mr_set_release(r, count_release, &released);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, r, 0);
    const struct vck_flatview *v = vck_as_view_get(as);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(r);
    reclaim_all();
    cr_expect_eq(atomic_load(&released), 0, "released while a held view names the region");
    cr_expect_str_eq(vck_mr_name(vck_flatview_find(v, 0)->mr), "r");
    vck_flatview_unref(v);
    /*
     * The header says a destroyed region lives until "every view that existed when it was
     * destroyed is gone", which includes the then-current view that no longer names it:
     * replace that one too, so both readings of the rule must have released it.
     */
    vck_mr_add_subregion(root, 0x8000, other, 0);
    reclaim_all();
    cr_expect_eq(atomic_load(&released), 1, "the release callback ran %d times",
                 atomic_load(&released));
    fx_free(&fx);
}

Test(flatview, memmap_free_reclaims_every_destroyed_region)
{
    atomic_store(&released, 0);
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x10000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x1000);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", r, 0, 0x100);
    cr_assert(root && r && a);
    vck_mr_set_release(root, count_release, &released);
    vck_mr_set_release(r, count_release, &released);
    vck_mr_set_release(a, count_release, &released);
    vck_mr_add_subregion(root, 0, r, 0);
    vck_mr_add_subregion(root, 0x1000, a, 0);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert_not_null(as);
    vck_as_destroy(as);
    vck_mr_del_subregion(root, a);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(a);
    vck_mr_destroy(r);
    vck_mr_destroy(root);
    vck_memmap_free(mm);
    cr_expect_eq(atomic_load(&released), 3, "%d of 3 releases ran by vck_memmap_free()",
                 atomic_load(&released));
}

Test(flatview, a_region_is_destroyable_once_nothing_maps_it)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *s = fx_ram(&fx, "s", 0x100);
    struct vck_mr *r = vck_mr_new_ram(fx.mm, "r", 0x100);
    struct vck_mr *c = vck_mr_new_container(fx.mm, "c", 0x100);
    struct vck_mr *cc = vck_mr_new_mmio(fx.mm, "cc", 0x10, &no_ops, NULL);
    struct vck_mr *a = fx_alias(&fx, "a", r, 0, 0x100);
    struct vck_mr *root2 = vck_mr_new_container(fx.mm, "root2", 0x100);
    cr_assert(r && c && cc && root2);
    struct vck_as *as = fx_as(&fx, "as", root);
    struct vck_as *as2 = vck_as_new(fx.mm, "as2", root2);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(c, 0, cc, 0);
    vck_mr_add_subregion(root, 0x1000, c, 0);
    EXPECT_VIEW(as, {0, 0xff, r, 0, false}, {0x1000, 0x100f, cc, 0, false});
    vck_mr_set_alias_target(a, s, 0); /* r is aliased no more */
    vck_mr_destroy(r);
    vck_mr_del_subregion(root, c);
    vck_mr_del_subregion(c, cc);
    vck_mr_destroy(c); /* unmapped, and its children gone */
    vck_mr_destroy(cc);
    vck_as_destroy(as2);
    vck_mr_destroy(root2); /* no longer a root */
    EXPECT_VIEW(as, {0, 0xff, s, 0, false});
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* Pending-memory limit and quarantine.                                                      */

Test(flatview, pending_limit_makes_commits_wait_for_reclamation)
{
    struct vck_memmap *mm = mm_new_opts(0, 1);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x10000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    vck_mr_add_subregion(root, 0, r, 0);
    for (int i = 1; i <= 5; i++)
        vck_mr_set_address(r, (uint64_t)i * 0x1000);
    struct vck_memmap_stats st = stats_of(mm);
    cr_expect_geq(st.reclaim_waits, 1, "no commit waited with a 1-byte pending limit");
    cr_expect_geq(st.peak_pending_bytes, 1);
    cr_expect_eq(gen_of(as), 7);
    /* A commit inside a read-side section cannot wait, and does not. */
    uint64_t waits = st.reclaim_waits;
    vck_rcu_read_lock();
    vck_mr_set_address(r, 0);
    vck_mr_set_address(r, 0x1000);
    vck_rcu_read_unlock();
    cr_expect_eq(stats_of(mm).reclaim_waits, waits, "a commit inside a section waited");
    /* Waiting is for reclamation, not for held views: holding one cannot deadlock a commit. */
    const struct vck_flatview *v = vck_as_view_get(as);
    vck_mr_set_address(r, 0x2000);
    vck_mr_set_address(r, 0x3000);
    vck_flatview_unref(v);
    cr_expect_eq(gen_of(as), 11);
    vck_as_destroy(as);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(r);
    vck_mr_destroy(root);
    vck_memmap_free(mm);

    mm = mm_new_opts(0, SIZE_MAX);
    root = vck_mr_new_container(mm, "root", 0x10000);
    r = vck_mr_new_ram(mm, "r", 0x1000);
    as = vck_as_new(mm, "as", root);
    vck_mr_add_subregion(root, 0, r, 0);
    for (int i = 1; i <= 50; i++)
        vck_mr_set_address(r, (uint64_t)i * 0x100);
    st = stats_of(mm);
    cr_expect_eq(st.reclaim_waits, 0, "a commit waited under pending_limit SIZE_MAX");
    cr_expect_leq(st.pending_bytes, st.peak_pending_bytes);
    vck_as_destroy(as);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(r);
    vck_mr_destroy(root);
    vck_memmap_free(mm);
}

Test(flatview, quarantine_poisons_freed_views)
{
    struct fixture fx;
    fx_init(&fx, VCK_MEMMAP_QUARANTINE);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *r = fx_ram(&fx, "r", 0x1000);
    struct vck_mr *s = fx_ram(&fx, "s", 0x1000);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, r, 0);
    vck_mr_add_subregion(root, 0x2000, s, 0);
    const struct vck_flatview *v = vck_as_view_get(as);
    size_t n;
    const unsigned char *bytes = (const unsigned char *)vck_flatview_ranges(v, &n);
    cr_assert_eq(n, 2);
    vck_mr_del_subregion(root, s);
    vck_flatview_unref(v);
    reclaim_all();
    /* Freed, but kept in quarantine: readable, and every byte of its ranges poisoned. */
    for (size_t i = 0; i < n * sizeof(struct vck_flat_range); i++)
        cr_assert_eq(bytes[i], VCK_FLATVIEW_POISON,
                     "byte %zu of a freed view's ranges is %#x, not the poison", i, bytes[i]);
    EXPECT_VIEW(as, {0, 0xfff, r, 0, false});
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* View builders.                                                                            */

#define DERIVED_MAGIC 0xd311e7edULL
#define DERIVED_DEAD  0xdeadULL

struct derived {
    uint64_t magic;
    const struct vck_flatview *view;
    size_t n;
    struct vck_flat_range r[SNAP_MAX];
};

struct builder_log {
    int builds, nulls_returned;
    atomic_int frees, bad_frees;
    const struct vck_flatview *old;
    void *old_data;
    void *last;
    bool return_null;
};

static void *builder_build(void *opaque, const struct vck_flatview *view,
                           const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    struct builder_log *bl = opaque;
    bl->builds++;
    bl->old = old;
    bl->old_data = old_data;
    if (old_data) {
        const struct derived *od = old_data;
        cr_assert_eq(od->magic, DERIVED_MAGIC, "build was handed dead old data");
        cr_assert_eq(od->view, old, "build was handed another view's data as old_data");
    }
    if (bl->return_null) {
        bl->nulls_returned++;
        *bytes = 0;
        return NULL;
    }
    struct derived *d = calloc(1, sizeof(*d));
    cr_assert_not_null(d);
    d->magic = DERIVED_MAGIC;
    d->view = view;
    const struct vck_flat_range *r = vck_flatview_ranges(view, &d->n);
    cr_assert_leq(d->n, SNAP_MAX);
    if (d->n)
        memcpy(d->r, r, d->n * sizeof(*r));
    *bytes = sizeof(*d);
    bl->last = d;
    return d;
}

static void builder_free(void *opaque, void *data)
{
    struct builder_log *bl = opaque;
    struct derived *d = data;
    if (!d || d->magic != DERIVED_MAGIC)
        atomic_fetch_add(&bl->bad_frees, 1);
    else
        d->magic = DERIVED_DEAD;
    free(d);
    atomic_fetch_add(&bl->frees, 1);
}

/* The current view's data in @slot matches the view; returns it. */
static struct derived *check_derived(const struct vck_as *as, int slot, int line)
{
    vck_rcu_read_lock();
    const struct vck_flatview *v = vck_as_view(as);
    struct derived *d = vck_flatview_derived(v, slot);
    cr_assert_not_null(d, "line %d: the current view has no data in slot %d", line, slot);
    cr_assert_eq(d->magic, DERIVED_MAGIC, "line %d: dead derived data", line);
    cr_assert_eq(d->view, v, "line %d: the current view carries another view's data", line);
    size_t n;
    const struct vck_flat_range *r = vck_flatview_ranges(v, &n);
    cr_assert_eq(d->n, n, "line %d: derived data built from %zu ranges, view has %zu", line, d->n,
                 n);
    for (size_t i = 0; i < n; i++)
        cr_assert(range_eq(&d->r[i], &r[i]), "line %d: derived range %zu differs", line, i);
    vck_rcu_read_unlock();
    return d;
}

Test(flatview, view_builders_build_with_the_old_view_and_free_with_the_view)
{
    struct fixture fx;
    fx_init(&fx, 0);
    static struct builder_log bl; /* outlives the fixture: frees may run late */
    memset(&bl, 0, sizeof(bl));
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    const struct vck_flatview *before = vck_as_view_get(as);

    struct vck_view_builder vb = {.build = builder_build, .free = builder_free, .opaque = &bl};
    int slot = vck_as_add_builder(as, &vb);
    cr_assert(slot >= 0 && slot < VCK_FLATVIEW_DERIVED_MAX, "slot %d", slot);
    cr_expect_eq(bl.builds, 1, "add_builder built %d times", bl.builds);
    cr_expect_null(bl.old_data, "the first build was handed old data");
    struct derived *d1 = check_derived(as, slot, __LINE__);
    cr_expect_eq(d1, bl.last);
    vck_rcu_read_lock();
    const struct vck_flatview *v1 = vck_as_view(as);
    vck_rcu_read_unlock();
    cr_expect_neq(v1, before, "the view was not republished with its derived data");
    cr_expect_null(vck_flatview_derived(before, slot),
                   "a view published before the builder registered has its data");
    vck_flatview_unref(before);

    vck_mr_add_subregion(root, 0x2000, b, 0);
    cr_expect_eq(bl.builds, 2);
    cr_expect_eq(bl.old, v1, "build's old is not the view being replaced");
    cr_expect_eq(bl.old_data, d1, "build's old_data is not the replaced view's data");
    struct derived *d2 = check_derived(as, slot, __LINE__);

    /* Nothing visible changes: nothing is built. */
    vck_mr_set_readonly(a, false);
    cr_expect_eq(bl.builds, 2, "a commit that published nothing ran the builder");

    const struct vck_flatview *held = vck_as_view_get(as); /* holds d2 */
    vck_mr_set_address(b, 0x3000);
    cr_expect_eq(bl.builds, 3);
    cr_expect_eq(bl.old_data, d2);
    check_derived(as, slot, __LINE__);
    reclaim_all();
    cr_expect_eq(atomic_load(&bl.frees), 1, "%d data freed; only the unheld old view's may be",
                 atomic_load(&bl.frees));
    cr_expect_eq(((struct derived *)vck_flatview_derived(held, slot))->magic, DERIVED_MAGIC);
    vck_flatview_unref(held);
    reclaim_all();
    cr_expect_eq(atomic_load(&bl.frees), 2);

    /* A second builder gets another slot; both data sets match the view. */
    static struct builder_log bl2;
    memset(&bl2, 0, sizeof(bl2));
    struct vck_view_builder vb2 = {.build = builder_build, .free = builder_free, .opaque = &bl2};
    int slot2 = vck_as_add_builder(as, &vb2);
    cr_assert(slot2 >= 0 && slot2 < VCK_FLATVIEW_DERIVED_MAX && slot2 != slot, "slot2 %d", slot2);
    check_derived(as, slot, __LINE__);
    check_derived(as, slot2, __LINE__);
    vck_mr_set_address(b, 0x4000);
    check_derived(as, slot, __LINE__);
    check_derived(as, slot2, __LINE__);
    cr_expect_eq(bl2.builds, 2);

    /* A builder that derives nothing. */
    static struct builder_log bl3;
    memset(&bl3, 0, sizeof(bl3));
    bl3.return_null = true;
    struct vck_view_builder vb3 = {.build = builder_build, .free = builder_free, .opaque = &bl3};
    int slot3 = vck_as_add_builder(as, &vb3);
    vck_mr_set_address(b, 0x5000);
    vck_rcu_read_lock();
    cr_expect_null(vck_flatview_derived(vck_as_view(as), slot3));
    vck_rcu_read_unlock();
    cr_expect_eq(bl3.nulls_returned, 2);

    fx_free(&fx);
    cr_expect_eq(atomic_load(&bl.frees), bl.builds, "%d of %d derived data freed",
                 atomic_load(&bl.frees), bl.builds);
    cr_expect_eq(atomic_load(&bl2.frees), bl2.builds, "%d of %d derived data freed",
                 atomic_load(&bl2.frees), bl2.builds);
    cr_expect_eq(atomic_load(&bl.bad_frees) + atomic_load(&bl2.bad_frees), 0,
                 "free was handed data that is not a live build result");
}

/* ---------------------------------------------------------------------------------------- */
/* Listeners.                                                                                */

enum { EV_BEGIN = 'b', EV_DEL = 'd', EV_ADD = 'a', EV_NOP = 'n', EV_COMMIT = 'c' };

struct ev {
    int who;
    char type;
    struct vck_flat_range r;
    const struct vck_flatview *view; /* commit: the view passed */
    bool view_current;               /* commit: vck_as_view() returned it */
};

static struct ev evs[1024];
static int n_evs;

struct rec_listener {
    struct vck_mem_listener l; /* first: the callbacks cast back */
    int who;
    struct vck_as *as;
};

static void rec(struct vck_mem_listener *l, char type, const struct vck_flat_range *r)
{
    cr_assert_lt(n_evs, 1024);
    struct ev *e = &evs[n_evs++];
    memset(e, 0, sizeof(*e));
    e->who = ((struct rec_listener *)l)->who;
    e->type = type;
    if (r)
        e->r = *r;
}

static void rec_begin(struct vck_mem_listener *l)
{
    rec(l, EV_BEGIN, NULL);
}

static void rec_del(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    rec(l, EV_DEL, r);
}

static void rec_add(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    rec(l, EV_ADD, r);
}

static void rec_nop(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    rec(l, EV_NOP, r);
}

static void rec_commit(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    rec(l, EV_COMMIT, NULL);
    struct ev *e = &evs[n_evs - 1];
    e->view = view;
    vck_rcu_read_lock();
    e->view_current = vck_as_view(((struct rec_listener *)l)->as) == view;
    vck_rcu_read_unlock();
}

static void rec_init(struct rec_listener *rl, int who, struct vck_as *as)
{
    memset(rl, 0, sizeof(*rl));
    rl->l.begin = rec_begin;
    rl->l.region_del = rec_del;
    rl->l.region_add = rec_add;
    rl->l.region_nop = rec_nop;
    rl->l.commit = rec_commit;
    rl->who = who;
    rl->as = as;
}

struct want_ev {
    int who;
    char type;
    struct want r;
};

static void fmt_evs(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < n_evs && used + 1 < cap; i++)
        used += (size_t)snprintf(
            buf + used, cap - used, "\n    L%d %c [%#" PRIx64 ", %#" PRIx64 "] %s +%#" PRIx64 "%s",
            evs[i].who, evs[i].type, evs[i].r.start, evs[i].r.last, mr_name_or(evs[i].r.mr),
            evs[i].r.offset, evs[i].r.readonly ? " ro" : "");
}

/* The recorded events are exactly @w; each commit saw its view as the current one. */
static void expect_evs_(const struct vck_as *as, int line, const struct want_ev *w, size_t n)
{
    bool ok = (size_t)n_evs == n;
    for (size_t i = 0; ok && i < n; i++) {
        const struct ev *e = &evs[i];
        ok = e->who == w[i].who && e->type == w[i].type;
        if (ok && (e->type == EV_DEL || e->type == EV_ADD || e->type == EV_NOP))
            ok = e->r.start == w[i].r.start && e->r.last == w[i].r.last && e->r.mr == w[i].r.mr &&
                 e->r.offset == w[i].r.offset && e->r.readonly == w[i].r.ro;
    }
    if (!ok) {
        static char got[16384];
        fmt_evs(got, sizeof(got));
        cr_assert_fail("line %d: listener calls differ from the %zu expected:%s", line, n, got);
    }
    vck_rcu_read_lock();
    const struct vck_flatview *cur = vck_as_view(as);
    vck_rcu_read_unlock();
    for (int i = 0; i < n_evs; i++)
        if (evs[i].type == EV_COMMIT) {
            cr_assert(evs[i].view_current,
                      "line %d: commit's view was not current (vck_as_view) during commit", line);
            cr_assert_eq(evs[i].view, cur, "line %d: commit was not handed the new view", line);
        }
    n_evs = 0;
}

#define EXPECT_EVS(as, ...)                                                                        \
    expect_evs_((as), __LINE__, (const struct want_ev[]){__VA_ARGS__},                             \
                sizeof((const struct want_ev[]){__VA_ARGS__}) / sizeof(struct want_ev))
#define EXPECT_NO_EVS(as) expect_evs_((as), __LINE__, NULL, 0)

Test(flatview, listener_registration_replays_and_unregistration_deletes)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_mr *c = fx_ram(&fx, "c", 0x100);
    vck_mr_set_readonly(c, true);
    vck_mr_add_subregion(root, 0x3000, c, 0);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(root, 0x2000, b, 0);
    struct vck_as *as = fx_as(&fx, "as", root);
    static struct rec_listener l1;
    rec_init(&l1, 1, as);
    n_evs = 0;
    vck_as_listener_register(as, &l1.l);
    EXPECT_EVS(as, {1, EV_BEGIN}, {1, EV_ADD, {0, 0xfff, a, 0, false}},
               {1, EV_ADD, {0x2000, 0x20ff, b, 0, false}},
               {1, EV_ADD, {0x3000, 0x30ff, c, 0, true}}, {1, EV_COMMIT});
    vck_as_listener_unregister(&l1.l);
    EXPECT_EVS(as, {1, EV_BEGIN}, {1, EV_DEL, {0, 0xfff, a, 0, false}},
               {1, EV_DEL, {0x2000, 0x20ff, b, 0, false}},
               {1, EV_DEL, {0x3000, 0x30ff, c, 0, true}}, {1, EV_COMMIT});
    vck_mr_set_address(b, 0x4000); /* forgotten: not called */
    EXPECT_NO_EVS(as);
    /* Registering on an empty view: begin and commit only. */
    struct vck_mr *empty = fx_container(&fx, "empty", 0x100);
    struct vck_as *eas = fx_as(&fx, "eas", empty);
    static struct rec_listener l2;
    rec_init(&l2, 2, eas);
    vck_as_listener_register(eas, &l2.l);
    EXPECT_EVS(eas, {2, EV_BEGIN}, {2, EV_COMMIT});
    vck_as_listener_unregister(&l2.l);
    EXPECT_EVS(eas, {2, EV_BEGIN}, {2, EV_COMMIT});
    fx_free(&fx);
}

Test(flatview, listener_sees_begin_dels_adds_and_nops_commit)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_mr *c = fx_mmio(&fx, "c", 0x100);
    struct vck_mr *d = fx_mmio(&fx, "d", 0x100);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(root, 0x2000, b, 0);
    vck_mr_add_subregion(root, 0x3000, c, 0);
    struct vck_as *as = fx_as(&fx, "as", root);
    static struct rec_listener l;
    rec_init(&l, 1, as);
    vck_as_listener_register(as, &l.l);
    n_evs = 0;
    vck_memmap_begin(fx.mm);
    vck_mr_add_subregion(root, 0x4000, d, 0);
    vck_mr_del_subregion(root, b);
    vck_mr_set_readonly(c, true);
    vck_memmap_commit(fx.mm);
    EXPECT_EVS(as, {1, EV_BEGIN}, {1, EV_DEL, {0x2000, 0x20ff, b, 0, false}},
               {1, EV_DEL, {0x3000, 0x30ff, c, 0, false}}, {1, EV_NOP, {0, 0xfff, a, 0, false}},
               {1, EV_ADD, {0x3000, 0x30ff, c, 0, true}},
               {1, EV_ADD, {0x4000, 0x40ff, d, 0, false}}, {1, EV_COMMIT});
    /* Splitting a range: the old one goes, three new ones come. */
    vck_mr_add_subregion(root, 0x800, b, 1);
    EXPECT_EVS(as, {1, EV_BEGIN}, {1, EV_DEL, {0, 0xfff, a, 0, false}},
               {1, EV_ADD, {0, 0x7ff, a, 0, false}}, {1, EV_ADD, {0x800, 0x8ff, b, 0, false}},
               {1, EV_ADD, {0x900, 0xfff, a, 0x900, false}},
               {1, EV_NOP, {0x3000, 0x30ff, c, 0, true}},
               {1, EV_NOP, {0x4000, 0x40ff, d, 0, false}}, {1, EV_COMMIT});
    /* Nothing visible changes: nothing is called. */
    vck_memmap_begin(fx.mm);
    vck_mr_set_enabled(d, false);
    vck_mr_set_enabled(d, true);
    vck_memmap_commit(fx.mm);
    vck_mr_set_readonly(a, false);
    EXPECT_NO_EVS(as);
    vck_as_listener_unregister(&l.l);
    n_evs = 0;
    fx_free(&fx);
}

/* Index of the first event of @who with @type on a range equal to @r, or -1. */
static int find_ev(int who, char type, const struct vck_flat_range *r)
{
    for (int i = 0; i < n_evs; i++)
        if (evs[i].who == who && evs[i].type == type && (!r || range_eq(&evs[i].r, r)))
            return i;
    return -1;
}

Test(flatview, two_listeners_del_in_reverse_and_add_in_registration_order)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_mr *b = fx_mmio(&fx, "b", 0x100);
    struct vck_mr *c = fx_mmio(&fx, "c", 0x100);
    struct vck_mr *d = fx_mmio(&fx, "d", 0x100);
    vck_mr_add_subregion(root, 0, a, 0);
    vck_mr_add_subregion(root, 0x2000, b, 0);
    vck_mr_add_subregion(root, 0x3000, c, 0);
    struct vck_as *as = fx_as(&fx, "as", root);
    static struct rec_listener l1, l2;
    rec_init(&l1, 1, as);
    rec_init(&l2, 2, as);
    vck_as_listener_register(as, &l1.l);
    vck_as_listener_register(as, &l2.l);
    n_evs = 0;
    vck_memmap_begin(fx.mm);
    vck_mr_del_subregion(root, b);
    vck_mr_del_subregion(root, c);
    vck_mr_add_subregion(root, 0x4000, d, 0);
    vck_mr_add_subregion(root, 0x5000, b, 0);
    vck_memmap_commit(fx.mm);

    static char got[16384];
    fmt_evs(got, sizeof(got));
    /* Each: begin, 2 dels, 1 nop, 2 adds, commit. */
    cr_assert_eq(n_evs, 2 * 7, "expected 14 calls:%s", got);
    /* Phases in order across both listeners. */
    const char phase_of[128] = {
        [EV_BEGIN] = 0, [EV_DEL] = 1, [EV_ADD] = 2, [EV_NOP] = 2, [EV_COMMIT] = 3};
    for (int i = 1; i < n_evs; i++)
        cr_assert_leq(phase_of[(int)evs[i - 1].type], phase_of[(int)evs[i].type],
                      "call %d out of phase order:%s", i, got);
    struct vck_flat_range rb = {0x2000, 0x20ff, b, 0, false}, rc = {0x3000, 0x30ff, c, 0, false},
                          ra = {0, 0xfff, a, 0, false}, rd = {0x4000, 0x40ff, d, 0, false},
                          rb2 = {0x5000, 0x50ff, b, 0, false};
    cr_assert_lt(find_ev(1, EV_BEGIN, NULL), find_ev(2, EV_BEGIN, NULL), "begin order:%s", got);
    cr_assert_lt(find_ev(1, EV_COMMIT, NULL), find_ev(2, EV_COMMIT, NULL), "commit order:%s", got);
    for (int who = 1; who <= 2; who++) {
        cr_assert_lt(find_ev(who, EV_DEL, &rb), find_ev(who, EV_DEL, &rc), "del order:%s", got);
        cr_assert_lt(find_ev(who, EV_NOP, &ra), find_ev(who, EV_ADD, &rd), "add order:%s", got);
        cr_assert_lt(find_ev(who, EV_ADD, &rd), find_ev(who, EV_ADD, &rb2), "add order:%s", got);
    }
    /* Per range: del reaches L2 before L1, add and nop reach L1 before L2. */
    cr_assert_geq(find_ev(1, EV_DEL, &rb), 0, "%s", got);
    cr_assert_lt(find_ev(2, EV_DEL, &rb), find_ev(1, EV_DEL, &rb), "del of b:%s", got);
    cr_assert_lt(find_ev(2, EV_DEL, &rc), find_ev(1, EV_DEL, &rc), "del of c:%s", got);
    cr_assert_geq(find_ev(1, EV_NOP, &ra), 0, "%s", got);
    cr_assert_lt(find_ev(1, EV_NOP, &ra), find_ev(2, EV_NOP, &ra), "nop of a:%s", got);
    cr_assert_lt(find_ev(1, EV_ADD, &rd), find_ev(2, EV_ADD, &rd), "add of d:%s", got);
    cr_assert_lt(find_ev(1, EV_ADD, &rb2), find_ev(2, EV_ADD, &rb2), "add of b:%s", got);
    for (int i = 0; i < n_evs; i++)
        if (evs[i].type == EV_COMMIT)
            cr_assert(evs[i].view_current, "commit did not see the new view as current");

    /* Unregistered, L1 hears no more; L2 goes on. */
    vck_as_listener_unregister(&l1.l);
    n_evs = 0;
    vck_mr_del_subregion(root, d);
    EXPECT_EVS(as, {2, EV_BEGIN}, {2, EV_DEL, {0x4000, 0x40ff, d, 0, false}},
               {2, EV_NOP, {0, 0xfff, a, 0, false}}, {2, EV_NOP, {0x5000, 0x50ff, b, 0, false}},
               {2, EV_COMMIT});
    vck_as_listener_unregister(&l2.l);
    n_evs = 0;
    fx_free(&fx);
}

static int commits_only_calls;

static void commit_only(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    (void)l;
    (void)view;
    commits_only_calls++;
}

Test(flatview, listener_callbacks_may_be_null)
{
    struct fixture fx;
    fx_init(&fx, 0);
    struct vck_mr *root = fx_container(&fx, "root", 0x10000);
    struct vck_mr *a = fx_ram(&fx, "a", 0x1000);
    struct vck_as *as = fx_as(&fx, "as", root);
    vck_mr_add_subregion(root, 0, a, 0);
    static struct vck_mem_listener l;
    memset(&l, 0, sizeof(l));
    l.commit = commit_only;
    static struct vck_mem_listener none; /* every callback NULL */
    memset(&none, 0, sizeof(none));
    commits_only_calls = 0;
    vck_as_listener_register(as, &l);
    vck_as_listener_register(as, &none);
    cr_expect_eq(commits_only_calls, 1);
    vck_mr_set_address(a, 0x1000);
    cr_expect_eq(commits_only_calls, 2);
    vck_as_listener_unregister(&none);
    vck_as_listener_unregister(&l);
    cr_expect_eq(commits_only_calls, 3);
    fx_free(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifetime rules and misuse: abort in every build type.                                     */

static struct vck_mr *toggled_by_release;

static void release_that_changes_the_map(void *opaque)
{
    (void)opaque;
    vck_mr_set_enabled(toggled_by_release, false);
}

/* A release callback may run under the writer lock or on the callback thread: no map changes. */
Test(flatview_abort, a_release_callback_that_changes_the_map, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x10000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    toggled_by_release = vck_mr_new_ram(mm, "other", 0x100);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert(root && r && toggled_by_release && as);
    vck_mr_add_subregion(root, 0x1000, toggled_by_release, 0);
    vck_mr_set_release(r, release_that_changes_the_map, NULL);
    vck_mr_destroy(r); /* never mapped: reclaimed now or on the callback thread */
    reclaim_all();
}

Test(flatview_abort, registering_a_listener_twice, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    struct vck_as *a = vck_as_new(mm, "a", root), *b = vck_as_new(mm, "b", root);
    cr_assert(a && b);
    static struct vck_mem_listener l;
    vck_as_listener_register(a, &l);
    vck_as_listener_register(b, &l); /* on another address space: still the same list node */
}

Test(flatview_abort, unregistering_a_listener_never_registered, .signal = SIGABRT)
{
    static struct vck_mem_listener l;
    vck_as_listener_unregister(&l);
}

Test(flatview_abort, adding_a_region_destroyed_in_the_open_transaction, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x10000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert(root && r && as);
    vck_mr_add_subregion(root, 0x1000, r, 0);
    vck_memmap_begin(mm);
    vck_mr_del_subregion(root, r);
    vck_mr_destroy(r); /* its detach commits with the transaction: still in memory until then */
    vck_mr_add_subregion(root, 0x2000, r, 0);
}

Test(flatview_abort, destroying_a_child_of_a_container, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(c, 0, r, 0);
    vck_mr_destroy(r);
}

Test(flatview_abort, destroying_an_alias_target, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", r, 0, 0x100);
    cr_assert_not_null(a);
    vck_mr_destroy(r);
}

Test(flatview_abort, destroying_an_address_space_root, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert_not_null(as);
    vck_mr_destroy(root);
}

Test(flatview_abort, destroying_a_container_with_children, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(c, 0, r, 0);
    vck_mr_destroy(c);
}

Test(flatview_abort, adding_a_child_mapped_elsewhere, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c1 = vck_mr_new_container(mm, "c1", 0x1000);
    struct vck_mr *c2 = vck_mr_new_container(mm, "c2", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(c1, 0, r, 0);
    vck_mr_add_subregion(c2, 0, r, 0);
}

Test(flatview_abort, adding_a_child_twice, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(c, 0, r, 0);
    vck_mr_add_subregion(c, 0x100, r, 1);
}

Test(flatview_abort, adding_a_container_into_itself, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    vck_mr_add_subregion(c, 0, c, 0);
}

Test(flatview_abort, adding_a_container_into_its_descendant, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c1 = vck_mr_new_container(mm, "c1", 0x1000);
    struct vck_mr *c2 = vck_mr_new_container(mm, "c2", 0x1000);
    struct vck_mr *c3 = vck_mr_new_container(mm, "c3", 0x1000);
    vck_mr_add_subregion(c1, 0, c2, 0);
    vck_mr_add_subregion(c2, 0, c3, 0);
    vck_mr_add_subregion(c3, 0, c1, 0);
}

Test(flatview_abort, retargeting_an_alias_to_itself, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", r, 0, 0x100);
    vck_mr_set_alias_target(a, a, 0);
}

Test(flatview_abort, an_alias_chain_reaching_itself, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    struct vck_mr *a1 = vck_mr_new_alias(mm, "a1", r, 0, 0x100);
    struct vck_mr *a2 = vck_mr_new_alias(mm, "a2", a1, 0, 0x100);
    struct vck_mr *a3 = vck_mr_new_alias(mm, "a3", a2, 0, 0x100);
    vck_mr_set_alias_target(a1, a3, 0);
}

Test(flatview_abort, adding_an_alias_into_the_container_it_shows, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", c, 0, 0x100);
    vck_mr_add_subregion(c, 0x800, a, 0);
}

Test(flatview_abort, retargeting_an_alias_to_a_container_holding_it, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *outer = vck_mr_new_container(mm, "outer", 0x1000);
    struct vck_mr *c = vck_mr_new_container(mm, "c", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", r, 0, 0x100);
    vck_mr_add_subregion(c, 0, a, 0);
    vck_mr_add_subregion(outer, 0, c, 0);
    vck_mr_set_alias_target(a, outer, 0);
}

Test(flatview_abort, adding_a_container_under_an_alias_of_it, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *c1 = vck_mr_new_container(mm, "c1", 0x1000);
    struct vck_mr *c2 = vck_mr_new_container(mm, "c2", 0x1000);
    struct vck_mr *a = vck_mr_new_alias(mm, "a", c2, 0, 0x100);
    vck_mr_add_subregion(c1, 0, a, 0); /* c1 -> a -> c2 */
    vck_mr_add_subregion(c2, 0, c1, 0);
}

Test(flatview_abort, growing_ram_past_its_backing, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x1000);
    vck_mr_set_size(r, 0x800);
    vck_mr_set_size(r, 0x1000);
    vck_mr_set_size(r, 0x1001);
}

Test(flatview_abort, growing_caller_backed_ram_past_its_backing, .signal = SIGABRT)
{
    static uint8_t host[0x100];
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram_ptr(mm, "r", sizeof(host), host);
    vck_mr_set_size(r, 2 * sizeof(host));
}

Test(flatview_abort, mapping_a_region_of_another_memmap, .signal = SIGABRT)
{
    struct vck_memmap *mm1 = mm_new_opts(0, 0), *mm2 = mm_new_opts(0, 0);
    struct vck_mr *c = vck_mr_new_container(mm1, "c", 0x1000);
    struct vck_mr *r = vck_mr_new_ram(mm2, "r", 0x100);
    vck_mr_add_subregion(c, 0, r, 0);
}

Test(flatview_abort, retargeting_an_alias_to_another_memmap, .signal = SIGABRT)
{
    struct vck_memmap *mm1 = mm_new_opts(0, 0), *mm2 = mm_new_opts(0, 0);
    struct vck_mr *r1 = vck_mr_new_ram(mm1, "r1", 0x100);
    struct vck_mr *r2 = vck_mr_new_ram(mm2, "r2", 0x100);
    struct vck_mr *a = vck_mr_new_alias(mm1, "a", r1, 0, 0x100);
    vck_mr_set_alias_target(a, r2, 0);
}

static struct vck_mr *victim;

static void add_changes_the_map(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    (void)l;
    (void)r;
    vck_mr_set_enabled(victim, false);
}

Test(flatview_abort, a_listener_changing_the_map, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    victim = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(root, 0, victim, 0);
    struct vck_as *as = vck_as_new(mm, "as", root);
    static struct vck_mem_listener l;
    memset(&l, 0, sizeof(l));
    l.region_add = add_changes_the_map;
    vck_as_listener_register(as, &l); /* the replay calls region_add */
}

static void *build_changes_the_map(void *opaque, const struct vck_flatview *view,
                                   const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    (void)opaque;
    (void)view;
    (void)old;
    (void)old_data;
    *bytes = 0;
    vck_mr_set_enabled(victim, false);
    return NULL;
}

Test(flatview_abort, a_view_builder_changing_the_map, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    victim = vck_mr_new_ram(mm, "r", 0x100);
    vck_mr_add_subregion(root, 0, victim, 0);
    struct vck_as *as = vck_as_new(mm, "as", root);
    struct vck_view_builder b = {.build = build_changes_the_map, .free = NULL};
    vck_as_add_builder(as, &b);
}

static void *build_nothing(void *opaque, const struct vck_flatview *view,
                           const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    (void)opaque;
    (void)view;
    (void)old;
    (void)old_data;
    *bytes = 0;
    return NULL;
}

static void free_nothing(void *opaque, void *data)
{
    (void)opaque;
    (void)data;
}

Test(flatview_abort, one_builder_more_than_the_slots, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    struct vck_view_builder b = {.build = build_nothing, .free = free_nothing};
    bool seen[VCK_FLATVIEW_DERIVED_MAX] = {false};
    for (int i = 0; i < VCK_FLATVIEW_DERIVED_MAX; i++) {
        int slot = vck_as_add_builder(as, &b);
        /* A wrong slot fails by exiting normally, which a .signal test reports. */
        if (slot < 0 || slot >= VCK_FLATVIEW_DERIVED_MAX || seen[slot])
            return;
        seen[slot] = true;
    }
    vck_as_add_builder(as, &b);
}

Test(flatview_abort, destroying_an_address_space_with_a_listener, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    static struct vck_mem_listener l;
    memset(&l, 0, sizeof(l));
    vck_as_listener_register(as, &l);
    vck_as_destroy(as);
}

Test(flatview_abort, freeing_a_memmap_with_a_region_left, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *r = vck_mr_new_ram(mm, "r", 0x100);
    cr_assert_not_null(r);
    vck_memmap_free(mm);
}

Test(flatview_abort, freeing_a_memmap_with_an_address_space_left, .signal = SIGABRT)
{
    struct vck_memmap *mm = mm_new_opts(0, 0);
    struct vck_mr *root = vck_mr_new_container(mm, "root", 0x1000);
    struct vck_as *as = vck_as_new(mm, "as", root);
    cr_assert_not_null(as);
    vck_memmap_free(mm);
}
