/*
 * A machine-like memory map of about N ranges for the dispatch benchmarks and the callgrind
 * driver: one 1 GiB RAM at 2 GiB, and N - 1 devices below it in 64 KiB slots from 256 MiB, a
 * mix of page-sized MMIO, 16 KiB MMIO, sub-page MMIO (partial pages: subpages in the map) and
 * small RAM that starts mid-page. Nothing overlaps, so the view has exactly N ranges.
 */
#ifndef VCK_BENCH_DISPATCH_LAYOUT_H
#define VCK_BENCH_DISPATCH_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/rcu.h>

#define DLAYOUT_ADDRS (1u << 16) /* random addresses, a power of two */

/* An inert device: reads return the offset, writes are dropped (flatview_bench.c uses it too). */
extern const struct vck_mr_ops dlayout_dev_ops;

struct dlayout {
    struct vck_memmap *mm;
    struct vck_as *as;
    struct vck_dispatch *d; /* NULL without a page map */
    struct vck_mr *root;
    struct vck_mr **devices; /* n_devices: the N - 1 small regions */
    size_t n_devices;
    struct vck_mr *ram;
    uint64_t *addrs;   /* DLAYOUT_ADDRS addresses, each in a uniformly chosen range */
    uint64_t mru_addr; /* inside the first page-sized device */
    uint64_t ram_addr; /* the start of the first small RAM */
};

/*
 * Build it (in one transaction) with @sections ranges (at least 2), with a page map attached
 * when @with_dispatch. @pending_limit goes to the memmap (0: its default). The calling thread
 * must be a registered RCU thread. Aborts when memory runs out.
 */
struct dlayout *dlayout_new(size_t sections, bool with_dispatch, size_t pending_limit,
                            uint64_t seed);

void dlayout_free(struct dlayout *l);

#endif
