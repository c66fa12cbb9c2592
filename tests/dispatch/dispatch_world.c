/*
 * The dispatch tests' shared fixture; see dispatch_world.h.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_world.h"

uint64_t test_seed(const char *test, uint64_t dflt)
{
    const char *env = getenv("VCK_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : dflt;
    fprintf(stderr, "%s: seed %" PRIu64 " (replay with VCK_SEED=%" PRIu64 "%s)\n", test, seed, seed,
            env ? "" : "; this is the fixed default");
    return seed;
}

long test_only_run(void)
{
    const char *env = getenv("VCK_RUN");
    return env ? strtol(env, NULL, 0) : -1;
}

double test_scale(void)
{
    const char *env = getenv("VCK_SCALE");
    double s = env ? strtod(env, NULL) : 1.0;
    return s > 0 ? s : 1.0;
}

uint64_t run_seed(uint64_t seed, long run)
{
    uint64_t s = seed ^ ((uint64_t)run * 0xd1b54a32d192ed03ULL);
    return vck_rand(&s);
}

/* ---- logs ---------------------------------------------------------------------------------- */

void call_log_push(struct call_log *l, const struct call *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        cr_assert_not_null(l->v);
    }
    l->v[l->n++] = *c;
}

void hook_log_push(struct hook_log *l, uint64_t addr, uint64_t len)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        cr_assert_not_null(l->v);
    }
    l->v[l->n++] = (struct hook_call){addr, len};
}

static const char *result_name(enum vck_mem_result r)
{
    switch (r) {
    case VCK_MEM_OK:
        return "ok";
    case VCK_MEM_DEVICE_ERROR:
        return "device-error";
    case VCK_MEM_DECODE_ERROR:
        return "decode-error";
    }
    return "?";
}

void call_log_format(char *buf, size_t cap, const struct call_log *l, size_t from)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = from; i < l->n && used + 1 < cap; i++) {
        const struct call *c = &l->v[i];
        used += (size_t)snprintf(buf + used, cap - used,
                                 "\n      dev%d %s off %#" PRIx64 " size %u value %#" PRIx64 " %s",
                                 c->dev, c->write ? "write" : "read ", c->offset, c->size, c->value,
                                 result_name(c->result));
    }
    if (from >= l->n)
        snprintf(buf, cap, " (none)");
}

void hook_log_format(char *buf, size_t cap, const struct hook_log *l, size_t from)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = from; i < l->n && used + 1 < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, " [%#" PRIx64 " +%#" PRIx64 "]",
                                 l->v[i].addr, l->v[i].len);
    if (from >= l->n)
        snprintf(buf, cap, " (none)");
}

void ranges_format(char *buf, size_t cap, const struct vck_flat_range *r, size_t n)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && used + 1 < cap; i++)
        used += (size_t)snprintf(
            buf + used, cap - used, "\n    [%#" PRIx64 ", %#" PRIx64 "] %s %s +%#" PRIx64 "%s",
            r[i].start, r[i].last, vck_mr_kind(r[i].mr) == VCK_MR_RAM ? "ram " : "mmio",
            vck_mr_name(r[i].mr), r[i].offset, r[i].readonly ? " ro" : "");
    if (n == 0)
        snprintf(buf, cap, " (no ranges)");
}

size_t world_snapshot(const struct vck_as *as, struct vck_flat_range **out)
{
    size_t n;
    vck_rcu_read_lock();
    const struct vck_flat_range *r = vck_flatview_ranges(vck_as_view(as), &n);
    *out = malloc((n ? n : 1) * sizeof(**out));
    cr_assert_not_null(*out);
    if (n)
        memcpy(*out, r, n * sizeof(*r));
    vck_rcu_read_unlock();
    return n;
}

/* ---- devices ------------------------------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static bool dev_fails(const struct dev_state *s, uint64_t offset, unsigned size, bool write)
{
    if (!s->fail_every)
        return false;
    uint64_t h = mix(s->salt ^ mix(offset * 16 + size * 2 + write));
    return h % s->fail_every == 0;
}

/* A byte past the register file (never written) reads as this. */
static uint8_t dev_pattern(const struct dev_state *s, uint64_t offset)
{
    return (uint8_t)mix(s->salt + offset);
}

enum vck_mem_result dev_state_read(const struct dev_state *s, uint64_t offset, unsigned size,
                                   uint64_t *value)
{
    if (dev_fails(s, offset, size, false))
        return VCK_MEM_DEVICE_ERROR;
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++) {
        uint64_t o = offset + i;
        uint8_t b = o < s->n_regs ? s->regs[o] : dev_pattern(s, o);
        v |= (uint64_t)b << (8 * i);
    }
    *value = v;
    return VCK_MEM_OK;
}

enum vck_mem_result dev_state_write(struct dev_state *s, uint64_t offset, unsigned size,
                                    uint64_t value)
{
    if (dev_fails(s, offset, size, true))
        return VCK_MEM_DEVICE_ERROR;
    for (unsigned i = 0; i < size; i++)
        if (offset + i < s->n_regs)
            s->regs[offset + i] = (uint8_t)(value >> (8 * i));
    return VCK_MEM_OK;
}

void dev_state_copy(struct dev_state *to, const struct dev_state *from)
{
    *to = *from;
    to->regs = malloc(from->n_regs);
    cr_assert_not_null(to->regs);
    memcpy(to->regs, from->regs, from->n_regs);
}

void dev_state_free(struct dev_state *s)
{
    free(s->regs);
    s->regs = NULL;
}

/* What the header promises every callback: a power of two in range, aligned unless allowed. */
static void dev_check_access(const struct device *d, uint64_t offset, unsigned size)
{
    const struct vck_mr_ops *o = &d->ops;
    unsigned lo = o->min_access ? o->min_access : 1, hi = o->max_access ? o->max_access : 8;
    cr_assert(size >= lo && size <= hi && (size & (size - 1)) == 0,
              "dev%d: callback size %u, region accepts powers of two in %u..%u", d->id, size, lo,
              hi);
    cr_assert(o->unaligned || offset % size == 0,
              "dev%d: unaligned callback offset %#" PRIx64 " size %u on a region without unaligned",
              d->id, offset, size);
}

static enum vck_mem_result dev_read_cb(void *opaque, uint64_t offset, uint64_t *value,
                                       unsigned size)
{
    struct device *d = opaque;
    dev_check_access(d, offset, size);
    uint64_t v = 0;
    enum vck_mem_result r = dev_state_read(&d->st, offset, size, &v);
    call_log_push(&d->w->log, &(struct call){.dev = d->id,
                                             .write = false,
                                             .size = size,
                                             .offset = offset,
                                             .value = r == VCK_MEM_OK ? v : 0,
                                             .result = r});
    /* A failing device's value must not reach the buffer: make it conspicuous if it does. */
    *value = r == VCK_MEM_OK ? v : 0xa5a5a5a5a5a5a5a5ULL >> (64 - 8 * size);
    return r;
}

static enum vck_mem_result dev_write_cb(void *opaque, uint64_t offset, uint64_t value,
                                        unsigned size)
{
    struct device *d = opaque;
    dev_check_access(d, offset, size);
    enum vck_mem_result r = dev_state_write(&d->st, offset, size, value);
    call_log_push(&d->w->log, &(struct call){.dev = d->id,
                                             .write = true,
                                             .size = size,
                                             .offset = offset,
                                             .value = value,
                                             .result = r});
    return r;
}

/* ---- regions ------------------------------------------------------------------------------- */

void world_init(struct world *w)
{
    memset(w, 0, sizeof(*w));
    /* Runs commit often and each view carries up to twelve page maps: don't wait on them. */
    struct vck_memmap_options o = {.pending_limit = (size_t)256 << 20};
    w->mm = vck_memmap_new(&o);
    cr_assert_not_null(w->mm);
    w->root = world_container(w, VCK_MR_SIZE_FULL);
    w->next_fake_host = (uint64_t)1 << 40;
}

static struct vck_mr *world_keep(struct world *w, struct vck_mr *mr)
{
    cr_assert_not_null(mr, "a region constructor returned NULL");
    cr_assert_lt(w->n_mrs, WORLD_MAX_MRS, "too many regions");
    w->mrs[w->n_mrs++] = mr;
    return mr;
}

static struct leaf *world_add_leaf(struct world *w, struct vck_mr *mr, enum vck_mr_kind kind)
{
    struct leaf *l = &w->leaves[w->n_leaves++];
    *l = (struct leaf){.mr = mr, .kind = kind};
    return l;
}

const struct leaf *world_leaf(const struct world *w, const struct vck_mr *mr)
{
    for (int i = 0; i < w->n_leaves; i++)
        if (w->leaves[i].mr == mr)
            return &w->leaves[i];
    cr_assert_fail("region %s is not a leaf of this world", vck_mr_name(mr));
    return NULL;
}

void world_forget(struct world *w, struct vck_mr *mr)
{
    for (int i = 0; i < w->n_mrs; i++)
        if (w->mrs[i] == mr) {
            memmove(&w->mrs[i], &w->mrs[i + 1], (size_t)(w->n_mrs - i - 1) * sizeof(w->mrs[0]));
            w->n_mrs--;
            return;
        }
    cr_assert_fail("region %s is not in this world", vck_mr_name(mr));
}

static char *world_name(struct world *w, const char *kind, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%d", kind, w->n_mrs);
    return buf;
}

struct vck_mr *world_container(struct world *w, uint64_t size)
{
    char name[32];
    return world_keep(w, vck_mr_new_container(w->mm, world_name(w, "c", name, 32), size));
}

struct vck_mr *world_ram_fake(struct world *w, uint64_t size)
{
    char name[32];
    void *host = (void *)(uintptr_t)w->next_fake_host;
    /* Never dereferenced; kept far below 2^63 so host + offset cannot wrap. */
    w->next_fake_host += (uint64_t)1 << 36;
    if (w->next_fake_host >= (uint64_t)1 << 46)
        w->next_fake_host = (uint64_t)1 << 40;
    struct vck_mr *mr =
        world_keep(w, vck_mr_new_ram_ptr(w->mm, world_name(w, "fram", name, 32), size, host));
    world_add_leaf(w, mr, VCK_MR_RAM);
    return mr;
}

static void ram_release(void *opaque)
{
    struct ram_buf *rb = opaque;
    __atomic_fetch_add(&rb->released, 1, __ATOMIC_SEQ_CST);
    if (__atomic_sub_fetch(&rb->refs, 1, __ATOMIC_SEQ_CST) == 0) {
        free(rb->buf);
        rb->buf = NULL;
    }
}

static struct ram_buf *world_ram_buf(struct world *w, uint64_t size, int refs)
{
    struct ram_buf *rb = calloc(1, sizeof(*rb));
    cr_assert_not_null(rb);
    rb->size = size;
    rb->buf = malloc(size ? size : 1);
    cr_assert_not_null(rb->buf);
    /* Deterministic contents, so two worlds built from one seed start equal. */
    for (uint64_t i = 0; i < size; i++)
        rb->buf[i] = (uint8_t)mix(((uint64_t)w->n_rams << 32) + i);
    rb->refs = refs;
    if (w->n_rams == w->cap_rams) {
        w->cap_rams = w->cap_rams ? 2 * w->cap_rams : 64;
        w->rams = realloc(w->rams, (size_t)w->cap_rams * sizeof(*w->rams));
        cr_assert_not_null(w->rams);
    }
    rb->id = w->n_rams;
    w->rams[w->n_rams++] = rb;
    return rb;
}

static struct vck_mr *world_ram_at(struct world *w, struct ram_buf *rb, uint64_t off, uint64_t size)
{
    char name[32];
    struct vck_mr *mr = world_keep(
        w, vck_mr_new_ram_ptr(w->mm, world_name(w, "ram", name, 32), size, rb->buf + off));
    vck_mr_set_release(mr, ram_release, rb);
    struct leaf *l = world_add_leaf(w, mr, VCK_MR_RAM);
    l->ram = rb;
    l->buf_offset = off;
    return mr;
}

struct vck_mr *world_ram(struct world *w, uint64_t size)
{
    return world_ram_at(w, world_ram_buf(w, size, 1), 0, size);
}

void world_ram_pair(struct world *w, uint64_t size_a, uint64_t size_b, struct vck_mr **a,
                    struct vck_mr **b)
{
    struct ram_buf *rb = world_ram_buf(w, size_a + size_b, 2);
    *a = world_ram_at(w, rb, 0, size_a);
    *b = world_ram_at(w, rb, size_a, size_b);
}

struct vck_mr *world_mmio(struct world *w, uint64_t size, const struct vck_mr_ops *ops,
                          unsigned fail_every, uint64_t salt)
{
    char name[32];
    struct device *d = calloc(1, sizeof(*d));
    cr_assert_not_null(d);
    d->w = w;
    d->id = w->n_devs;
    d->size = size;
    d->ops = *ops;
    d->st.fail_every = fail_every;
    d->st.salt = salt;
    /* A register file only for devices that can be called, and not huge ones. */
    bool callable = ops->read || ops->write;
    d->st.n_regs = callable && size <= ((uint64_t)1 << 20) ? size + DEV_SLACK : 0;
    d->st.regs = malloc(d->st.n_regs ? d->st.n_regs : 1);
    cr_assert_not_null(d->st.regs);
    for (uint64_t i = 0; i < d->st.n_regs; i++)
        d->st.regs[i] = dev_pattern(&d->st, i ^ 0x55);
    struct vck_mr_ops real = *ops;
    real.read = ops->read ? dev_read_cb : NULL;
    real.write = ops->write ? dev_write_cb : NULL;
    if (w->n_devs == w->cap_devs) {
        w->cap_devs = w->cap_devs ? 2 * w->cap_devs : 64;
        w->devs = realloc(w->devs, (size_t)w->cap_devs * sizeof(*w->devs));
        cr_assert_not_null(w->devs);
    }
    w->devs[w->n_devs++] = d;
    d->mr = world_keep(w, vck_mr_new_mmio(w->mm, world_name(w, "mmio", name, 32), size, &real, d));
    struct leaf *l = world_add_leaf(w, d->mr, VCK_MR_MMIO);
    l->dev = d;
    return d->mr;
}

/* Any non-NULL function pointer: world_mmio() substitutes the logging callbacks. */
static enum vck_mem_result placeholder_read(void *opaque, uint64_t offset, uint64_t *value,
                                            unsigned size)
{
    (void)opaque;
    (void)offset;
    (void)value;
    (void)size;
    return VCK_MEM_DEVICE_ERROR;
}

static enum vck_mem_result placeholder_write(void *opaque, uint64_t offset, uint64_t value,
                                             unsigned size)
{
    (void)opaque;
    (void)offset;
    (void)value;
    (void)size;
    return VCK_MEM_DEVICE_ERROR;
}

const struct vck_mr_ops world_any_ops = {.read = placeholder_read, .write = placeholder_write};

struct vck_mr *world_mmio_random(struct world *w, uint64_t size, uint64_t *rng)
{
    static const unsigned pow2[] = {1, 2, 4, 8};
    struct vck_mr_ops ops = {0};
    unsigned lo = (unsigned)(chance(rng, 50) ? 0 : 1 + rnd(rng, 3));
    unsigned hi = lo + (unsigned)rnd(rng, 4 - lo);
    ops.min_access = chance(rng, 10) && lo == 0 ? 0 : pow2[lo]; /* 0 means 1 */
    ops.max_access = chance(rng, 10) && hi == 3 ? 0 : pow2[hi]; /* 0 means 8 */
    ops.unaligned = chance(rng, 40);
    ops.read = chance(rng, 5) ? NULL : placeholder_read;
    ops.write = chance(rng, 5) ? NULL : placeholder_write;
    unsigned fail_every = chance(rng, 70) ? 0 : 2 + (unsigned)rnd(rng, 8);
    return world_mmio(w, size, &ops, fail_every, vck_rand(rng));
}

struct vck_mr *world_alias(struct world *w, struct vck_mr *target, uint64_t offset, uint64_t size)
{
    char name[32];
    return world_keep(
        w, vck_mr_new_alias(w->mm, world_name(w, "alias", name, 32), target, offset, size));
}

static void world_hook(void *opaque, uint64_t addr, uint64_t len)
{
    struct world *w = opaque;
    /* The hook's contract (vcpukit/dispatch.h), whichever path wrote: slow, direct or cached. */
    cr_assert(vck_rcu_read_ongoing(), "the RAM write hook ran outside a read-side section");
    hook_log_push(&w->hooks, addr, len);
}

struct vck_as *world_as(struct world *w)
{
    cr_assert_lt(w->n_as, WORLD_MAX_AS);
    struct vck_as *as = vck_as_new(w->mm, "as", w->root);
    cr_assert_not_null(as);
    w->as[w->n_as++] = as;
    return as;
}

struct vck_dispatch *world_dispatch(struct world *w, struct vck_as *as,
                                    const struct vck_dispatch_options *opts)
{
    cr_assert_lt(w->n_d, WORLD_MAX_DISPATCH);
    struct vck_dispatch_options o = {0};
    if (opts)
        o = *opts;
    o.ram_write = world_hook;
    o.ram_write_opaque = w;
    struct vck_dispatch *d = vck_dispatch_new(as, &o);
    cr_assert_not_null(d);
    w->d_opts[w->n_d] = o;
    w->d[w->n_d++] = d;
    return d;
}

/* Unmaps and destroys the regions from index @from on, newest first (aliases before targets). */
static void world_destroy_from(struct world *w, int from)
{
    vck_memmap_begin(w->mm);
    for (int i = w->n_mrs - 1; i >= from; i--)
        if (vck_mr_container(w->mrs[i]))
            vck_mr_del_subregion(vck_mr_container(w->mrs[i]), w->mrs[i]);
    for (int i = w->n_mrs - 1; i >= from; i--)
        vck_mr_destroy(w->mrs[i]);
    vck_memmap_commit(w->mm);
    w->n_mrs = from;
}

void world_reset(struct world *w)
{
    world_destroy_from(w, 1);
    w->n_leaves = 0;
    w->log.n = 0;
    w->hooks.n = 0;
    w->first_dev = w->n_devs;
    w->first_ram = w->n_rams;
}

void world_free(struct world *w)
{
    for (int i = 0; i < w->n_as; i++)
        vck_as_destroy(w->as[i]);
    world_destroy_from(w, 0);
    /* Waits for reclamation: every view, page map and region is gone after this. */
    vck_memmap_free(w->mm);
    for (int i = 0; i < w->n_d; i++)
        vck_dispatch_free(w->d[i]);
    for (int i = 0; i < w->n_rams; i++) {
        cr_assert_eq(w->rams[i]->refs, 0, "a RAM region was never released");
        free(w->rams[i]);
    }
    for (int i = 0; i < w->n_devs; i++) {
        dev_state_free(&w->devs[i]->st);
        free(w->devs[i]);
    }
    free(w->rams);
    free(w->devs);
    free(w->log.v);
    free(w->hooks.v);
    memset(w, 0, sizeof(*w));
}

/* ---- dense random layouts ------------------------------------------------------------------ */

static uint64_t dense_size(uint64_t *rng, uint64_t window)
{
    unsigned k = (unsigned)rnd(rng, 100);
    if (k < 50)
        return 1 + rnd(rng, 16);
    if (k < 80)
        return 17 + rnd(rng, 80);
    if (k < 95)
        return 97 + rnd(rng, 300);
    return 1 + rnd(rng, window);
}

static int dense_priority(uint64_t *rng)
{
    return (int)rnd(rng, 4) - 1;
}

static uint64_t dense_addr(uint64_t *rng, uint64_t base, uint64_t window)
{
    return base + rnd(rng, window);
}

static void dense_map(uint64_t *rng, struct vck_mr *parent, uint64_t addr, struct vck_mr *mr)
{
    if (chance(rng, 12))
        vck_mr_set_readonly(mr, true);
    vck_mr_add_subregion(parent, addr, mr, dense_priority(rng));
}

static struct vck_mr *dense_leaf(struct world *w, uint64_t *rng, uint64_t size)
{
    if (chance(rng, 50))
        return world_ram(w, size);
    return world_mmio_random(w, size, rng);
}

void world_gen_dense(struct world *w, uint64_t *rng, uint64_t base, uint64_t window, int n)
{
    vck_memmap_begin(w->mm);
    for (int i = 0; i < n && w->n_mrs + 8 < WORLD_MAX_MRS; i++) {
        unsigned k = (unsigned)rnd(rng, 100);
        uint64_t addr = dense_addr(rng, base, window);
        if (k < 70) {
            dense_map(rng, w->root, addr, dense_leaf(w, rng, dense_size(rng, window)));
        } else if (k < 82) {
            struct vck_mr *a, *b;
            uint64_t sa = dense_size(rng, window), sb = dense_size(rng, window);
            world_ram_pair(w, sa, sb, &a, &b);
            int prio = dense_priority(rng);
            unsigned how = (unsigned)rnd(rng, 10);
            if (how < 6) { /* in order: host-contiguous */
                vck_mr_add_subregion(w->root, addr, a, prio);
                vck_mr_add_subregion(w->root, addr + sa, b, prio);
            } else if (how < 8) { /* swapped: adjacent but not contiguous */
                vck_mr_add_subregion(w->root, addr, b, prio);
                vck_mr_add_subregion(w->root, addr + sb, a, prio);
            } else { /* a gap between them */
                vck_mr_add_subregion(w->root, addr, a, prio);
                vck_mr_add_subregion(w->root, addr + sa + 1 + rnd(rng, 8), b, prio);
            }
            if (chance(rng, 10))
                vck_mr_set_readonly(chance(rng, 50) ? a : b, true);
        } else if (k < 94 && w->n_leaves > 0) {
            const struct leaf *t = &w->leaves[rnd(rng, (uint64_t)w->n_leaves)];
            uint64_t tsize = vck_mr_size(t->mr);
            uint64_t off = rnd(rng, tsize);
            uint64_t size = 1 + rnd(rng, tsize - off);
            dense_map(rng, w->root, addr, world_alias(w, t->mr, off, size));
        } else {
            uint64_t csize = 16 + rnd(rng, 400);
            struct vck_mr *c = world_container(w, csize);
            int kids = 1 + (int)rnd(rng, 4);
            for (int j = 0; j < kids; j++) {
                /* Children may stick out of the container: they are clipped. */
                uint64_t size = dense_size(rng, csize);
                dense_map(rng, c, rnd(rng, csize), dense_leaf(w, rng, size));
            }
            dense_map(rng, w->root, addr, c);
        }
    }
    vck_memmap_commit(w->mm);
}
