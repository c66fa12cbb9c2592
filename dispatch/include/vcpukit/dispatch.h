/*
 * vcpukit/dispatch.h - "which region answers at this physical address, and where in it?":
 * a multi-level page map built for every flat view of an address space, translation,
 * address-space reads and writes, and the memory-region cache for devices that touch the same
 * guest RAM over and over.
 *
 * A struct vck_dispatch attaches to one address space (vcpukit/rcu.h) as a view builder: each
 * view the address space publishes carries its own page map, built before the view is published
 * and reclaimed with it. A lookup therefore loads the current view and takes the map that came
 * with it; the two can never be mismatched, and no caller ever holds a map pointer of its own
 * (QEMU's per-CPU cached dispatch pointer outlived its grace period more than once). Every
 * function below either runs inside the caller's RCU read-side section and returns results
 * valid until it ends (translation), or enters a section itself (reads, writes, caches).
 *
 * The page map. Page numbers (address >> page_bits) index a radix tree of level_bits bits per
 * level (defaults 12 and 9: six levels for 64-bit addresses). Aligned runs of whole pages are
 * single entries at the highest level they fill; pages shared by several ranges, or partly
 * unassigned, are subpages resolved by byte offset; after the build, nodes with a single
 * non-empty child are bypassed (path compression) and a final check that the section found
 * really covers the address turns a bypassed miss into "unassigned". A most-recently-used
 * section per map is tried before the walk.
 *
 * MMIO accesses are cut to the region's callbacks as QEMU's memory core cuts them: a buffer is
 * split into pieces of the largest power of two that fits the remaining length and the region's
 * max_access and, when the region does not accept unaligned offsets, the alignment of the
 * offset; a piece smaller than min_access is widened to min_access (aligned down when the region
 * does not accept unaligned offsets: a read keeps the piece's bytes, a write sends the piece's
 * bytes in place with the others zero). Little-endian throughout.
 *
 * Unassigned space, and addresses past 2^64 - 1, read as zero and report VCK_MEM_DECODE_ERROR;
 * writes there are dropped and report the same; so do writes to read-only ranges. A device
 * error in a read leaves that piece's bytes zero. An access touching several ranges reports the
 * first error met and still performs the rest.
 */
#ifndef VCPUKIT_DISPATCH_H
#define VCPUKIT_DISPATCH_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <vcpukit/rcu.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called after bytes [addr, addr + len) of RAM were written through a dispatch or a cache. */
typedef void vck_ram_write_fn(void *opaque, uint64_t addr, uint64_t len);

struct vck_dispatch_options {
    unsigned page_bits;  /* 0 means 12 (4 KiB pages); 1 to 30 */
    unsigned level_bits; /* 0 means 9; 1 to 16 (tests use 3 to reach deep trees) */
    bool no_compress;    /* skip path compression (to show it changes no answer) */
    /*
     * The write hook (e.g. the TB cache invalidating code that DMA overwrote): called on the
     * writing thread, inside its read-side section, after the bytes are in place.
     */
    vck_ram_write_fn *ram_write;
    void *ram_write_opaque;
};

struct vck_dispatch;

enum vck_section_kind {
    VCK_SECTION_UNASSIGNED,
    VCK_SECTION_RAM,
    VCK_SECTION_MMIO,
};

/* What a page map knows about one range of its view (or about unassigned space). */
struct vck_section {
    uint64_t start, last;         /* the range, inclusive; unassigned: the whole space */
    struct vck_mr *mr;            /* NULL when unassigned */
    uint64_t offset;              /* offset in mr of start */
    uint8_t *host;                /* RAM: host address of start; NULL otherwise */
    const struct vck_mr_ops *ops; /* MMIO */
    void *opaque;
    enum vck_section_kind kind;
    bool readonly;
};

/**
 * vck_dispatch_new - attach a page map builder to @as; builds the map of its current view.
 * Writers of @as's memmap (it registers a view builder). @opts may be NULL. Returns NULL when
 * memory runs out; aborts on out-of-range options.
 */
struct vck_dispatch *vck_dispatch_new(struct vck_as *as, const struct vck_dispatch_options *opts);

/**
 * vck_dispatch_free - free @d. Only after vck_as_destroy() of its address space (the address
 * space keeps calling @d's builder until then) and once no thread uses @d.
 */
void vck_dispatch_free(struct vck_dispatch *d);

struct vck_xlat {
    const struct vck_section *section;
    uint64_t offset; /* offset in section->mr of the address (unassigned: the address) */
    uint64_t len;    /* bytes from the address that stay in this section, at most the asked */
    void *host;      /* RAM: host address of the address; NULL otherwise */
};

/**
 * vck_dispatch_translate - resolve @addr for an access of up to @len bytes (@len >= 1).
 * Any registered thread, inside a read-side section: *@xlat points into the current view's map
 * and stays valid until the section ends. O(levels) on a miss of the MRU section, a few loads
 * on a hit. Returns VCK_MEM_OK, or VCK_MEM_DECODE_ERROR for unassigned space and for a write
 * (@is_write) to a read-only range; *@xlat is filled in either case.
 */
enum vck_mem_result vck_dispatch_translate(const struct vck_dispatch *d, uint64_t addr,
                                           uint64_t len, bool is_write, struct vck_xlat *xlat);

/**
 * vck_dispatch_read / vck_dispatch_write - copy @len bytes between @buf and the address space
 * at @addr, across any number of ranges. Any registered thread, in or out of a read-side section
 * (they enter one). RAM is memcpy; MMIO goes through the callbacks as described above; the RAM
 * write hook runs for every RAM range written. Returns VCK_MEM_OK or the first error met.
 */
enum vck_mem_result vck_dispatch_read(const struct vck_dispatch *d, uint64_t addr, void *buf,
                                      uint64_t len);
enum vck_mem_result vck_dispatch_write(const struct vck_dispatch *d, uint64_t addr, const void *buf,
                                       uint64_t len);

/**
 * vck_dispatch_load / vck_dispatch_store - little-endian loads and stores of @size = 1, 2, 4
 * or 8 bytes at any alignment. Same rules as vck_dispatch_read(); a load that fails leaves the
 * failing bytes zero in *@value.
 */
enum vck_mem_result vck_dispatch_load(const struct vck_dispatch *d, uint64_t addr, unsigned size,
                                      uint64_t *value);
enum vck_mem_result vck_dispatch_store(const struct vck_dispatch *d, uint64_t addr, unsigned size,
                                       uint64_t value);

/* Statistics of the page map of @view (a view of @d's address space), for tests and tuning. */
struct vck_pagemap_stats {
    size_t sections; /* ranges of the view, plus one for unassigned */
    size_t nodes;    /* radix nodes allocated */
    size_t subpages;
    size_t bypassed; /* nodes bypassed by path compression */
    size_t bytes;
};

/** vck_dispatch_map_stats - the shape of @view's map. Whoever holds @view. */
void vck_dispatch_map_stats(const struct vck_dispatch *d, const struct vck_flatview *view,
                            struct vck_pagemap_stats *st);

/*
 * The memory-region cache. A device that reads and writes the same guest range over and over
 * (a virtio ring) translates it once. When the whole range is RAM (contiguous host memory
 * across adjacent RAM ranges; writable, for a cache initialised for writing), reads and writes
 * are an inline memcpy with a bounds assertion; otherwise they take a slow path through the page
 * map of the view the cache was made from.
 *
 * The cache holds a reference on that view, so it stays safe to use after the memory map
 * changes, but it goes on answering as the old view did (and keeps the old regions alive). A
 * device must therefore re-initialise its caches when the map changes: register a listener on
 * the address space (vcpukit/rcu.h) and rebuild them in its commit callback, publishing the new
 * set to the device's threads as it publishes anything else (e.g. with RCU).
 *
 * Any registered thread may use a cache once initialised (it is read-only); initialising,
 * destroying and re-initialising it are the owner's.
 */
struct vck_mrc {
    uint8_t *host; /* the whole range is directly accessible RAM: its host address, else NULL */
    uint64_t addr, len;
    bool is_write;
    vck_ram_write_fn *ram_write;
    void *ram_write_opaque;
    const struct vck_flatview *view; /* referenced */
    const void *map;                 /* the page map that came with view */
};

/**
 * vck_mrc_init - set @c up over [@addr, @addr + @len) for reads (@is_write false) or for reads
 * and writes. Any registered thread, outside or inside a read-side section. One translation,
 * plus one step per adjacent RAM range the direct mapping extends over; takes a view reference.
 * Does not zero-fill anything it does not set.
 */
void vck_mrc_init(struct vck_mrc *c, const struct vck_dispatch *d, uint64_t addr, uint64_t len,
                  bool is_write);

/** vck_mrc_destroy - drop the cache's view reference. The owner; @c may then be re-initialised. */
void vck_mrc_destroy(struct vck_mrc *c);

enum vck_mem_result vck_mrc_read_slow(const struct vck_mrc *c, uint64_t offset, void *buf,
                                      uint64_t n);
enum vck_mem_result vck_mrc_write_slow(const struct vck_mrc *c, uint64_t offset, const void *buf,
                                       uint64_t n);

/**
 * vck_mrc_read - read @n bytes at @offset into the cached range (asserted to fit).
 * Any registered thread. Direct: a memcpy. Otherwise the slow path, with vck_dispatch_read()'s
 * rules.
 */
static inline enum vck_mem_result vck_mrc_read(const struct vck_mrc *c, uint64_t offset, void *buf,
                                               uint64_t n)
{
    assert(offset <= c->len && n <= c->len - offset);
    if (__builtin_expect(c->host != NULL, 1)) {
        memcpy(buf, c->host + offset, n);
        return VCK_MEM_OK;
    }
    return vck_mrc_read_slow(c, offset, buf, n);
}

/**
 * vck_mrc_write - write @n bytes at @offset into the cached range (asserted to fit; the cache
 * must have been initialised for writing). Direct: a memcpy and the dispatch's RAM write hook.
 */
static inline enum vck_mem_result vck_mrc_write(const struct vck_mrc *c, uint64_t offset,
                                                const void *buf, uint64_t n)
{
    assert(c->is_write && offset <= c->len && n <= c->len - offset);
    if (__builtin_expect(c->host != NULL, 1)) {
        memcpy(c->host + offset, buf, n);
        if (c->ram_write && n) {
            /* The hook's contract: it runs inside a read-side section (see above). */
            vck_rcu_read_lock();
            c->ram_write(c->ram_write_opaque, c->addr + offset, n);
            vck_rcu_read_unlock();
        }
        return VCK_MEM_OK;
    }
    return vck_mrc_write_slow(c, offset, buf, n);
}

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_DISPATCH_H */
