/*
 * The fixture the dispatch tests share: a "world" is one memory map with a root container of the
 * whole 64-bit space, the regions built on it, the address spaces and dispatches attached to it,
 * and test devices whose every callback is logged.
 *
 * Devices are register files: an MMIO read returns the little-endian bytes at the offset asked,
 * a write stores them, and a device may be made to fail a deterministic subset of its accesses
 * (a hash of offset, size and direction). The behaviour lives in struct dev_state and
 * dev_state_read() / dev_state_write(), so a reference model can run a copy of a device without
 * touching the real one and then compare states, logs and results.
 *
 * RAM comes in two flavours: "fake" RAM (a made-up, never dereferenced host pointer, for tests
 * that only translate, so a region may be 1 GiB or 2^62 bytes) and real RAM (malloc'd buffers,
 * freed by the region's release callback, so ASan sees any use after reclamation). One buffer may
 * back two regions (a split RAM pair, host-contiguous when mapped in order).
 *
 * Teardown (world_free) unmaps and destroys everything in an order the lifetime rules allow and
 * frees the memory map, which waits for reclamation: ASan's leak check then covers the kit.
 */
#ifndef VCK_TEST_DISPATCH_WORLD_H
#define VCK_TEST_DISPATCH_WORLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/rcu.h>

#include "stress.h"

enum {
    WORLD_MAX_MRS = 512,
    WORLD_MAX_AS = 4,
    WORLD_MAX_DISPATCH = 16,
    DEV_SLACK = 16, /* register bytes past a device's size (widened accesses may reach them) */
};

/* One MMIO callback as the device saw it. */
struct call {
    int dev;
    bool write;
    unsigned size;
    uint64_t offset;
    uint64_t value; /* read: what the device produced (0 when it failed); write: what it got */
    enum vck_mem_result result;
};

struct call_log {
    struct call *v;
    size_t n, cap;
};

/* One call of the RAM write hook. */
struct hook_call {
    uint64_t addr, len;
};

struct hook_log {
    struct hook_call *v;
    size_t n, cap;
};

struct dev_state {
    uint8_t *regs; /* size + DEV_SLACK bytes */
    uint64_t n_regs;
    unsigned fail_every; /* 0: never fails, else fails when hash % fail_every == 0 */
    uint64_t salt;
};

struct device {
    struct world *w;
    int id;
    uint64_t size;
    struct vck_mr_ops ops; /* as passed to vck_mr_new_mmio (NULL callbacks included) */
    struct dev_state st;
    struct vck_mr *mr;
};

/* A host buffer behind one or two RAM regions; freed when the last of them is reclaimed. */
struct ram_buf {
    int id; /* index in world.rams */
    uint8_t *buf;
    uint64_t size;
    int refs;     /* regions not yet reclaimed */
    int released; /* release callbacks that ran */
};

/* What answers behind a terminal region: which device or buffer, and where in the buffer. */
struct leaf {
    struct vck_mr *mr;
    enum vck_mr_kind kind;
    struct device *dev;  /* MMIO */
    struct ram_buf *ram; /* real RAM; NULL for fake RAM */
    uint64_t buf_offset; /* real RAM: offset of the region's byte 0 in ram->buf */
};

struct world {
    struct vck_memmap *mm;
    struct vck_mr *root;
    struct vck_mr *mrs[WORLD_MAX_MRS]; /* creation order, root first */
    int n_mrs;
    struct leaf leaves[WORLD_MAX_MRS];
    int n_leaves;
    /* Kept until world_free(): a reset's regions are reclaimed later, maybe with a device call. */
    struct device **devs;
    int n_devs, cap_devs;
    struct ram_buf **rams;
    int n_rams, cap_rams;
    int first_dev, first_ram; /* the ones made since the last reset */
    struct vck_as *as[WORLD_MAX_AS];
    int n_as;
    struct vck_dispatch *d[WORLD_MAX_DISPATCH];
    struct vck_dispatch_options d_opts[WORLD_MAX_DISPATCH];
    int n_d;
    uint64_t next_fake_host;
    struct call_log log;
    struct hook_log hooks;
};

/* The seed a test runs with: $VCK_SEED when set, else @dflt; printed either way. */
uint64_t test_seed(const char *test, uint64_t dflt);
/* $VCK_RUN (a single run index to replay) when set, else -1. */
long test_only_run(void);
/* A scale factor for iteration counts: $VCK_SCALE (a float) when set, else 1. */
double test_scale(void);
/* The seed of run @run of a test seeded with @seed. */
uint64_t run_seed(uint64_t seed, long run);

void world_init(struct world *w);
/*
 * Unmap and destroy every region but the root, keeping the address spaces and dispatches, for
 * the next run (a memory map per run would cost a reclamation wait, ~10 ms, per run).
 */
void world_reset(struct world *w);
void world_free(struct world *w);

/* Regions. Each is recorded for teardown; the terminal ones also as leaves. */
struct vck_mr *world_container(struct world *w, uint64_t size);
struct vck_mr *world_ram_fake(struct world *w, uint64_t size);
struct vck_mr *world_ram(struct world *w, uint64_t size);
/* Two regions over one buffer of @size_a + @size_b bytes: *a over [0, size_a), *b after it. */
void world_ram_pair(struct world *w, uint64_t size_a, uint64_t size_b, struct vck_mr **a,
                    struct vck_mr **b);
/* A device with @ops (its callbacks replaced by the logging ones unless NULL). */
struct vck_mr *world_mmio(struct world *w, uint64_t size, const struct vck_mr_ops *ops,
                          unsigned fail_every, uint64_t salt);
/* Ops with both callbacks present, 1 to 8 bytes, aligned: copy and adjust for world_mmio(). */
extern const struct vck_mr_ops world_any_ops;
/* A device with random access sizes, alignment rules and failures. */
struct vck_mr *world_mmio_random(struct world *w, uint64_t size, uint64_t *rng);
struct vck_mr *world_alias(struct world *w, struct vck_mr *target, uint64_t offset, uint64_t size);

struct vck_as *world_as(struct world *w);
/* A dispatch on @as with @opts (NULL: defaults); its ram_write hook logs into w->hooks. */
struct vck_dispatch *world_dispatch(struct world *w, struct vck_as *as,
                                    const struct vck_dispatch_options *opts);

/*
 * A dense random layout of about @n leaves in [@base, @base + @window) (clipped at 2^64): real
 * RAM, split RAM pairs (host-contiguous or not), random devices, aliases of them, small
 * containers, overlapping at random priorities, some read-only. One transaction.
 */
void world_gen_dense(struct world *w, uint64_t *rng, uint64_t base, uint64_t window, int n);

/* Forget @mr (the caller unmaps and destroys it): teardown will not touch it. */
void world_forget(struct world *w, struct vck_mr *mr);

const struct leaf *world_leaf(const struct world *w, const struct vck_mr *mr);

/* The device behaviour, shared by the real callbacks and the reference models. */
enum vck_mem_result dev_state_read(const struct dev_state *s, uint64_t offset, unsigned size,
                                   uint64_t *value);
enum vck_mem_result dev_state_write(struct dev_state *s, uint64_t offset, unsigned size,
                                    uint64_t value);
void dev_state_copy(struct dev_state *to, const struct dev_state *from);
void dev_state_free(struct dev_state *s);

void call_log_push(struct call_log *l, const struct call *c);
void hook_log_push(struct hook_log *l, uint64_t addr, uint64_t len);
/* Describes @l from index @from into @buf, for failure messages. */
void call_log_format(char *buf, size_t cap, const struct call_log *l, size_t from);
void hook_log_format(char *buf, size_t cap, const struct hook_log *l, size_t from);

/* Copies the current view's ranges of @as into *@out (malloc'd) and returns their count. */
size_t world_snapshot(const struct vck_as *as, struct vck_flat_range **out);
/* Formats ranges for failure messages. */
void ranges_format(char *buf, size_t cap, const struct vck_flat_range *r, size_t n);

/* Random helpers. */
static inline uint64_t rnd(uint64_t *rng, uint64_t bound)
{
    return bound ? vck_rand_below(rng, bound) : vck_rand(rng);
}

static inline bool chance(uint64_t *rng, unsigned percent)
{
    return vck_rand_below(rng, 100) < percent;
}

#endif
