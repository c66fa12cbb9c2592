#include <stdio.h>
#include <stdlib.h>

#include "dispatch_layout.h"
#include "vck_bench.h"

#define DEV_BASE 0x10000000ull /* slots from 256 MiB ... */
#define SLOT     0x10000ull    /* ... 64 KiB each: 10,000 of them end below 1 GiB */
#define RAM_BASE 0x80000000ull
#define RAM_SIZE (1ull << 30) /* never touched by translation: its backing costs nothing */

static enum vck_mem_result dev_read(void *opaque, uint64_t offset, uint64_t *value, unsigned size)
{
    (void)opaque;
    (void)size;
    *value = offset;
    return VCK_MEM_OK;
}

static enum vck_mem_result dev_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    (void)opaque;
    (void)offset;
    (void)value;
    (void)size;
    return VCK_MEM_OK;
}

const struct vck_mr_ops dlayout_dev_ops = {.read = dev_read, .write = dev_write};

static void *must(void *p, const char *what)
{
    if (!p) {
        fprintf(stderr, "dispatch bench: out of memory creating %s\n", what);
        abort();
    }
    return p;
}

struct dlayout *dlayout_new(size_t sections, bool with_dispatch, size_t pending_limit,
                            uint64_t seed)
{
    if (sections < 2)
        sections = 2;
    struct dlayout *l = must(calloc(1, sizeof(*l)), "a layout");
    l->mm = must(vck_memmap_new(&(struct vck_memmap_options){.pending_limit = pending_limit}),
                 "a memmap");
    l->n_devices = sections - 1;
    l->devices = must(calloc(l->n_devices, sizeof(*l->devices)), "the device table");
    l->addrs = must(calloc(DLAYOUT_ADDRS, sizeof(*l->addrs)), "the address table");

    vck_memmap_begin(l->mm);
    l->root = must(vck_mr_new_container(l->mm, "root", VCK_MR_SIZE_FULL), "the root");
    l->ram = must(vck_mr_new_ram(l->mm, "ram", RAM_SIZE), "the RAM");
    vck_mr_add_subregion(l->root, RAM_BASE, l->ram, 0);
    l->ram_addr = RAM_BASE;
    bool have_mru = false, have_ram = false;
    for (size_t i = 0; i < l->n_devices; i++) {
        uint64_t slot = DEV_BASE + i * SLOT, r = vck_bench_rand(&seed);
        uint64_t at, size;
        bool ram = false;
        char name[32];
        snprintf(name, sizeof(name), "dev%zu", i);
        switch (i % 8) {
        case 0:
        case 1:
        case 2: /* one page of registers */
            at = slot + 0x1000 * (r % 16);
            size = 0x1000;
            break;
        case 3:
            at = slot + 0x4000 * (r % 4);
            size = 0x4000;
            break;
        case 4: /* sub-page: a subpage with unassigned bytes on both sides */
            at = slot + 0x1000 * (r % 16) + 0x100;
            size = 0x200;
            break;
        case 5:
            at = slot + 0x1000 * (r % 16) + 0x80;
            size = 0x40;
            break;
        case 6: /* RAM starting and ending mid-page */
            at = slot + 0x800;
            size = 0x2000;
            ram = true;
            break;
        default: /* a whole aligned slot of RAM */
            at = slot;
            size = SLOT;
            ram = true;
            break;
        }
        struct vck_mr *mr = ram ? vck_mr_new_ram(l->mm, name, size)
                                : vck_mr_new_mmio(l->mm, name, size, &dlayout_dev_ops, NULL);
        l->devices[i] = must(mr, name);
        vck_mr_add_subregion(l->root, at, mr, 0);
        if (!have_mru && !ram && size == 0x1000) {
            l->mru_addr = at + 0x10;
            have_mru = true;
        }
        if (!have_ram && ram && size == SLOT) {
            l->ram_addr = at;
            have_ram = true;
        }
    }
    if (!have_mru)
        l->mru_addr = RAM_BASE + 0x10;
    vck_memmap_commit(l->mm);
    l->as = must(vck_as_new(l->mm, "system", l->root), "the address space");
    if (with_dispatch)
        l->d = must(vck_dispatch_new(l->as, NULL), "the dispatch");

    /* Random addresses inside ranges chosen uniformly (not by size: the RAM would win). */
    vck_rcu_read_lock();
    size_t n;
    const struct vck_flat_range *ranges = vck_flatview_ranges(vck_as_view(l->as), &n);
    if (n != sections) {
        fprintf(stderr, "dispatch bench: the view has %zu ranges, not %zu\n", n, sections);
        abort();
    }
    for (size_t i = 0; i < DLAYOUT_ADDRS; i++) {
        const struct vck_flat_range *x = &ranges[vck_bench_rand(&seed) % n];
        l->addrs[i] = x->start + vck_bench_rand(&seed) % (x->last - x->start + 1);
    }
    vck_rcu_read_unlock();
    return l;
}

void dlayout_free(struct dlayout *l)
{
    vck_memmap_begin(l->mm);
    for (size_t i = 0; i < l->n_devices; i++) {
        vck_mr_del_subregion(l->root, l->devices[i]);
        vck_mr_destroy(l->devices[i]);
    }
    vck_mr_del_subregion(l->root, l->ram);
    vck_mr_destroy(l->ram);
    vck_memmap_commit(l->mm);
    vck_as_destroy(l->as);
    vck_mr_destroy(l->root);
    vck_memmap_free(l->mm);
    if (l->d)
        vck_dispatch_free(l->d);
    free(l->devices);
    free(l->addrs);
    free(l);
}
