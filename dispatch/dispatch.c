/*
 * dispatch: page maps built from flat views, translation, address-space access, and the
 * memory-region cache.
 *
 * A page map is immutable once built; it is derived data of one flat view (a view builder of
 * vcpukit/rcu.h), published with the view and freed with it, so every pointer into it is valid
 * exactly as long as the view is. The only word written after the build is the MRU section
 * index, a 32-bit relaxed atomic: a reader may see any section index some reader stored, which
 * always names a valid section of the same map, and it re-checks that the section covers its
 * address before using it. It is written only when it changes, so a hot loop over one range
 * does not bounce its cache line between vCPUs.
 *
 * Entries are 32 bits: ptr (25 bits), a subpage flag, and skip (6 bits), the number of levels
 * to descend to reach what ptr names; skip 0 is a leaf (a section, or a subpage). The all-zero
 * entry is the leaf of section 0, unassigned, so a zeroed node maps nothing. The root entry
 * starts as skip 1 into the top node. Path compression replaces an entry pointing at a node that
 * has one non-empty entry by that entry, adding the skips; the addresses the bypassed node sent to
 * its empty entries then reach the surviving section, which is why every walk ends by checking that
 * the section found really covers the address.
 *
 * A subpage is a page shared by several ranges, or partly unassigned: a sorted run of (offset
 * in page, section) boundaries, found by binary search. QEMU gives each such page a 2-byte
 * section index per byte (8 KiB per 4 KiB page); a boundary list is a few bytes per range.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/dispatch.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "loads and stores assume a LE host");

#ifdef VCK_DISPATCH_BROKEN_STALE_VIEW
/* The broken twin of dispatch.stress: the test hands out views from up to 64 calls ago. */
const struct vck_flatview *vck_stress_stale_view(const struct vck_as *as);
#define CURRENT_VIEW(as) vck_stress_stale_view(as)
#else
#define CURRENT_VIEW(as) vck_as_view(as)
#endif

#define PTR_BITS     25
#define PTR_MASK     ((1u << PTR_BITS) - 1)
#define SUBPAGE_FLAG (1u << PTR_BITS)
#define SKIP_SHIFT   26
#define MAX_SKIP     63u

static inline uint32_t entry_skip(uint32_t e)
{
    return e >> SKIP_SHIFT;
}

static inline uint32_t entry_ptr(uint32_t e)
{
    return e & PTR_MASK;
}

static inline uint32_t make_entry(uint32_t skip, uint32_t ptr, bool subpage)
{
    return skip << SKIP_SHIFT | (subpage ? SUBPAGE_FLAG : 0) | ptr;
}

struct subpage_boundary {
    uint32_t offset; /* in the page: this section answers from here to the next boundary */
    uint32_t section;
};

struct subpage {
    uint64_t page;
    uint32_t first, count; /* in map->boundaries */
};

struct pagemap {
    unsigned page_bits, level_bits, levels;
    uint64_t level_mask;
    uint32_t root;
    uint32_t *nodes; /* node i: nodes[i << level_bits ...] */
    size_t n_nodes, cap_nodes;
    struct vck_section *sections; /* [0] unassigned; then the view's ranges in order */
    size_t n_sections;
    struct subpage *subpages;
    size_t n_subpages, cap_subpages;
    struct subpage_boundary *boundaries;
    size_t n_boundaries, cap_boundaries;
    size_t bypassed;
    size_t bytes;
    _Atomic uint32_t mru;
};

struct vck_dispatch {
    struct vck_as *as;
    int slot;
    struct vck_dispatch_options opts;
};

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vcpukit dispatch: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    p = reallocarray(p, c, size);
    if (!p)
        fatal("out of memory");
    *cap = c;
    return p;
}

/* ---- building ---------------------------------------------------------------------------- */

static uint32_t node_alloc(struct pagemap *m)
{
    size_t fanout = (size_t)1 << m->level_bits;
    if (m->n_nodes > PTR_MASK)
        fatal("page map needs more than %u nodes", PTR_MASK + 1);
    m->nodes = grow(m->nodes, &m->cap_nodes, (m->n_nodes + 1) * fanout, sizeof(*m->nodes));
    memset(m->nodes + m->n_nodes * fanout, 0, fanout * sizeof(*m->nodes));
    return (uint32_t)m->n_nodes++;
}

/* The entry @slot of node @node, or the root when @node is UINT32_MAX. */
static uint32_t *entry_at(struct pagemap *m, uint32_t node, uint64_t slot)
{
    if (node == UINT32_MAX)
        return &m->root;
    return &m->nodes[((size_t)node << m->level_bits) + slot];
}

/*
 * Map pages [p0, p1) to @leaf under the entry (@node, @slot), which covers the 2^(level *
 * level_bits) pages from @base. Whole aligned blocks become single entries at the highest level
 * they fill.
 */
static void fill(struct pagemap *m, uint32_t node, uint64_t slot, unsigned level, uint64_t base,
                 uint64_t p0, uint64_t p1, uint32_t leaf)
{
    unsigned shift = level * m->level_bits;
    unsigned __int128 span = (unsigned __int128)1 << shift;
    if (p0 <= base && base + span <= p1) {
        *entry_at(m, node, slot) = leaf;
        return;
    }
    uint32_t e = *entry_at(m, node, slot);
    if (entry_skip(e) == 0) {
        if (e != 0)
            fatal("internal: ranges overlap in the page map");
        uint32_t child = node_alloc(m);
        e = make_entry(1, child, false);
        *entry_at(m, node, slot) = e;
    }
    uint32_t child = entry_ptr(e);
    unsigned child_shift = shift - m->level_bits;
    uint64_t from = (p0 > base ? p0 : base) - base;
    uint64_t to = (uint64_t)(((unsigned __int128)p1 < base + span ? p1 : base + span) - base);
    for (uint64_t k = from >> child_shift; k <= (to - 1) >> child_shift; k++)
        fill(m, child, k, level - 1, base + (k << child_shift), p0, p1, leaf);
}

static void map_pages(struct pagemap *m, uint64_t p0, uint64_t p1, uint32_t leaf)
{
    if (p0 < p1)
        fill(m, UINT32_MAX, 0, m->levels, 0, p0, p1, leaf);
}

struct subpage_builder {
    bool open;
    uint64_t page;
    uint32_t covered; /* bytes of the page described so far */
    uint32_t first;
};

static void boundary_push(struct pagemap *m, uint32_t offset, uint32_t section)
{
    m->boundaries =
        grow(m->boundaries, &m->cap_boundaries, m->n_boundaries + 1, sizeof(*m->boundaries));
    m->boundaries[m->n_boundaries++] = (struct subpage_boundary){offset, section};
}

static void subpage_close(struct pagemap *m, struct subpage_builder *b)
{
    if (!b->open)
        return;
    uint64_t page_size = (uint64_t)1 << m->page_bits;
    if (b->covered < page_size)
        boundary_push(m, b->covered, 0);
    if (m->n_subpages > PTR_MASK)
        fatal("page map needs more than %u subpages", PTR_MASK + 1);
    m->subpages = grow(m->subpages, &m->cap_subpages, m->n_subpages + 1, sizeof(*m->subpages));
    m->subpages[m->n_subpages] = (struct subpage){
        .page = b->page,
        .first = b->first,
        .count = (uint32_t)(m->n_boundaries - b->first),
    };
    map_pages(m, b->page, b->page + 1, make_entry(0, (uint32_t)m->n_subpages, true));
    m->n_subpages++;
    b->open = false;
}

/* Bytes [lo, hi) of page @page belong to @section. Pieces arrive in address order. */
static void subpage_piece(struct pagemap *m, struct subpage_builder *b, uint64_t page, uint32_t lo,
                          uint32_t hi, uint32_t section)
{
    if (b->open && b->page != page)
        subpage_close(m, b);
    if (!b->open)
        *b = (struct subpage_builder){
            .open = true, .page = page, .first = (uint32_t)m->n_boundaries};
    if (lo > b->covered)
        boundary_push(m, b->covered, 0);
    boundary_push(m, lo, section);
    b->covered = hi;
}

static void compress(struct pagemap *m, uint32_t *entry)
{
    uint32_t e = *entry;
    if (entry_skip(e) == 0)
        return;
    size_t fanout = (size_t)1 << m->level_bits;
    uint32_t node = entry_ptr(e);
    uint32_t only = 0;
    size_t used = 0;
    for (size_t i = 0; i < fanout; i++) {
        uint32_t *child = &m->nodes[((size_t)node << m->level_bits) + i];
        if (entry_skip(*child)) /* leaves have nothing to compress: don't call for them */
            compress(m, child);
        if (*child) {
            used++;
            only = *child;
        }
    }
    if (used != 1)
        return;
    if (entry_skip(only) == 0) {
        /* A lone leaf: the walk stops here and the final coverage check does the rest. */
        *entry = only;
    } else {
        if (entry_skip(e) + entry_skip(only) > MAX_SKIP)
            return;
        *entry = make_entry(entry_skip(e) + entry_skip(only), entry_ptr(only), false);
    }
    m->bypassed++;
}

static void section_from_range(struct vck_section *s, const struct vck_flat_range *r)
{
    enum vck_mr_kind kind = vck_mr_kind(r->mr);
    *s = (struct vck_section){
        .start = r->start,
        .last = r->last,
        .mr = r->mr,
        .offset = r->offset,
        .readonly = r->readonly,
    };
    if (kind == VCK_MR_RAM) {
        s->kind = VCK_SECTION_RAM;
        s->host = (uint8_t *)vck_mr_host(r->mr) + r->offset;
    } else {
        s->kind = VCK_SECTION_MMIO;
        s->ops = vck_mr_ops(r->mr);
        s->opaque = vck_mr_opaque(r->mr);
    }
}

static struct pagemap *pagemap_build(const struct vck_dispatch_options *o,
                                     const struct vck_flatview *view)
{
    size_t n;
    const struct vck_flat_range *ranges = vck_flatview_ranges(view, &n);
    struct pagemap *m = calloc(1, sizeof(*m));
    if (!m || n + 1 > PTR_MASK)
        fatal("out of memory (or more than %u ranges)", PTR_MASK);
    m->page_bits = o->page_bits;
    m->level_bits = o->level_bits;
    m->levels = (64 - m->page_bits + m->level_bits - 1) / m->level_bits;
    m->level_mask = ((uint64_t)1 << m->level_bits) - 1;
    m->root = make_entry(1, node_alloc(m), false);
    m->n_sections = n + 1;
    m->sections = calloc(m->n_sections, sizeof(*m->sections));
    if (!m->sections)
        fatal("out of memory");
    m->sections[0] = (struct vck_section){.start = 0, .last = UINT64_MAX};

    const uint64_t page_mask = ((uint64_t)1 << m->page_bits) - 1;
    struct subpage_builder sb = {0};
    for (size_t i = 0; i < n; i++) {
        const struct vck_flat_range *r = &ranges[i];
        uint32_t sec = (uint32_t)(i + 1);
        section_from_range(&m->sections[sec], r);
        uint64_t first_page = r->start >> m->page_bits, last_page = r->last >> m->page_bits;
        uint32_t start_off = (uint32_t)(r->start & page_mask);
        uint32_t end_off = (uint32_t)(r->last & page_mask) + 1; /* exclusive */
        uint32_t page_size = (uint32_t)page_mask + 1;
        uint64_t full_from = first_page, full_to = last_page + 1; /* whole pages */
        if (first_page == last_page) {
            if (start_off || end_off != page_size) {
                subpage_piece(m, &sb, first_page, start_off, end_off, sec);
                continue;
            }
        } else {
            if (start_off) {
                subpage_piece(m, &sb, first_page, start_off, page_size, sec);
                full_from++;
            }
            if (end_off != page_size)
                full_to--;
        }
        map_pages(m, full_from, full_to, make_entry(0, sec, false));
        if (first_page != last_page && end_off != page_size)
            subpage_piece(m, &sb, last_page, 0, end_off, sec);
    }
    subpage_close(m, &sb);
    if (!o->no_compress)
        compress(m, &m->root);
    m->bytes = sizeof(*m) + m->n_nodes * ((size_t)1 << m->level_bits) * sizeof(*m->nodes) +
               m->n_sections * sizeof(*m->sections) + m->n_subpages * sizeof(*m->subpages) +
               m->n_boundaries * sizeof(*m->boundaries);
    return m;
}

static void pagemap_free(struct pagemap *m)
{
    free(m->nodes);
    free(m->sections);
    free(m->subpages);
    free(m->boundaries);
    free(m);
}

static void *builder_build(void *opaque, const struct vck_flatview *view,
                           const struct vck_flatview *old, void *old_data, size_t *bytes)
{
    (void)old;
    (void)old_data;
    struct vck_dispatch *d = opaque;
    struct pagemap *m = pagemap_build(&d->opts, view);
    *bytes = m->bytes;
    return m;
}

static void builder_free(void *opaque, void *data)
{
    (void)opaque;
    pagemap_free(data);
}

/* ---- lookup ------------------------------------------------------------------------------ */

static const struct vck_section *walk(const struct pagemap *m, uint64_t addr)
{
    uint64_t page = addr >> m->page_bits;
    uint32_t e = m->root;
    unsigned level = m->levels;
    while (entry_skip(e)) {
        level -= entry_skip(e);
        size_t slot = (page >> (level * m->level_bits)) & m->level_mask;
        e = m->nodes[((size_t)entry_ptr(e) << m->level_bits) + slot];
    }
    const struct vck_section *s;
    if (e & SUBPAGE_FLAG) {
        const struct subpage *sp = &m->subpages[entry_ptr(e)];
        if (sp->page != page)
            return &m->sections[0];
        uint32_t off = (uint32_t)(addr & (((uint64_t)1 << m->page_bits) - 1));
        const struct subpage_boundary *b = &m->boundaries[sp->first];
        uint32_t lo = 0, hi = sp->count; /* the last boundary at or below off */
        while (hi - lo > 1) {
            uint32_t mid = (lo + hi) / 2;
            if (b[mid].offset <= off)
                lo = mid;
            else
                hi = mid;
        }
        s = &m->sections[b[lo].section];
    } else {
        s = &m->sections[entry_ptr(e)];
    }
    /* Path compression may have sent a miss here: check the section really covers addr. */
    if (addr < s->start || addr > s->last)
        return &m->sections[0];
    return s;
}

static const struct vck_section *map_find(struct pagemap *m, uint64_t addr)
{
    uint32_t mru = atomic_load_explicit(&m->mru, memory_order_relaxed);
    const struct vck_section *s = &m->sections[mru];
    if (mru && addr >= s->start && addr <= s->last)
        return s;
    s = walk(m, addr);
    uint32_t found = (uint32_t)(s - m->sections);
    if (found && found != mru)
        atomic_store_explicit(&m->mru, found, memory_order_relaxed);
    return s;
}

/* Bytes from @addr that stay in @s (for unassigned space: up to the next range). */
static uint64_t section_room(const struct pagemap *m, const struct vck_section *s, uint64_t addr)
{
    uint64_t last = s->last;
    if (s->kind == VCK_SECTION_UNASSIGNED) {
        size_t lo = 1, hi = m->n_sections; /* first range starting after addr */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (m->sections[mid].start <= addr)
                lo = mid + 1;
            else
                hi = mid;
        }
        last = lo < m->n_sections ? m->sections[lo].start - 1 : UINT64_MAX;
    }
    return last - addr + 1; /* 0 means 2^64: only for a whole-space range at 0 */
}

static struct pagemap *current_map(const struct vck_dispatch *d)
{
    return vck_flatview_derived(CURRENT_VIEW(d->as), d->slot);
}

/* A miss of the MRU section: out of line, so that the hit needs no register saves. */
static __attribute__((noinline)) enum vck_mem_result
translate_slow(struct pagemap *m, uint64_t addr, uint64_t len, bool is_write, struct vck_xlat *xlat)
{
    const struct vck_section *s = map_find(m, addr);
    uint64_t room = section_room(m, s, addr);
    xlat->section = s;
    xlat->len = room && room < len ? room : len;
    if (s->kind == VCK_SECTION_UNASSIGNED) {
        xlat->offset = addr;
        xlat->host = NULL;
        return VCK_MEM_DECODE_ERROR;
    }
    xlat->offset = s->offset + (addr - s->start);
    xlat->host = s->host ? s->host + (addr - s->start) : NULL;
    return is_write && s->readonly ? VCK_MEM_DECODE_ERROR : VCK_MEM_OK;
}

enum vck_mem_result vck_dispatch_translate(const struct vck_dispatch *d, uint64_t addr,
                                           uint64_t len, bool is_write, struct vck_xlat *xlat)
{
    struct pagemap *m = current_map(d);
    /* The MRU hit, spelled out: the view, its map, the index, the section's bounds. */
    uint32_t mru = atomic_load_explicit(&m->mru, memory_order_relaxed);
    const struct vck_section *s = &m->sections[mru];
    if (__builtin_expect(mru == 0 || addr - s->start > s->last - s->start, 0))
        return translate_slow(m, addr, len, is_write, xlat);
    uint64_t room = s->last - addr + 1; /* 0 means 2^64 */
    uint64_t at = addr - s->start;
    xlat->section = s;
    xlat->len = room && room < len ? room : len;
    xlat->offset = s->offset + at;
    xlat->host = s->host ? s->host + at : NULL;
    return is_write && s->readonly ? VCK_MEM_DECODE_ERROR : VCK_MEM_OK;
}

/* ---- access ------------------------------------------------------------------------------ */

static unsigned piece_size(const struct vck_mr_ops *ops, uint64_t offset, uint64_t len)
{
    unsigned size = ops->max_access;
    while (size > len)
        size >>= 1;
    if (!ops->unaligned && offset) {
        uint64_t align = offset & -offset;
        while (size > align)
            size >>= 1;
    }
    return size;
}

static enum vck_mem_result mmio_read(const struct vck_section *s, uint64_t offset, uint8_t *buf,
                                     uint64_t len)
{
    const struct vck_mr_ops *ops = s->ops;
    enum vck_mem_result result = VCK_MEM_OK;
    while (len) {
        unsigned size = piece_size(ops, offset, len);
        uint64_t at = offset;
        unsigned width = size, shift = 0;
        if (size < ops->min_access) {
            width = ops->min_access;
            if (!ops->unaligned) {
                at = offset & ~(uint64_t)(width - 1);
                shift = (unsigned)(offset - at);
            }
        }
        uint64_t value = 0;
        enum vck_mem_result r =
            ops->read ? ops->read(s->opaque, at, &value, width) : VCK_MEM_DEVICE_ERROR;
        if (r != VCK_MEM_OK) {
            value = 0;
            if (result == VCK_MEM_OK)
                result = r;
        }
        value >>= 8 * shift;
        for (unsigned i = 0; i < size; i++)
            buf[i] = (uint8_t)(value >> (8 * i));
        buf += size;
        offset += size;
        len -= size;
    }
    return result;
}

static enum vck_mem_result mmio_write(const struct vck_section *s, uint64_t offset,
                                      const uint8_t *buf, uint64_t len)
{
    const struct vck_mr_ops *ops = s->ops;
    enum vck_mem_result result = VCK_MEM_OK;
    while (len) {
        unsigned size = piece_size(ops, offset, len);
        uint64_t at = offset, value = 0;
        unsigned width = size, shift = 0;
        if (size < ops->min_access) {
            width = ops->min_access;
            if (!ops->unaligned) {
                at = offset & ~(uint64_t)(width - 1);
                shift = (unsigned)(offset - at);
            }
        }
        for (unsigned i = 0; i < size; i++)
            value |= (uint64_t)buf[i] << (8 * i);
        value <<= 8 * shift;
        enum vck_mem_result r =
            ops->write ? ops->write(s->opaque, at, value, width) : VCK_MEM_DEVICE_ERROR;
        if (r != VCK_MEM_OK && result == VCK_MEM_OK)
            result = r;
        buf += size;
        offset += size;
        len -= size;
    }
    return result;
}

struct access {
    struct pagemap *map;
    vck_ram_write_fn *ram_write;
    void *ram_write_opaque;
};

static enum vck_mem_result map_read(const struct access *a, uint64_t addr, uint8_t *buf,
                                    uint64_t len)
{
    enum vck_mem_result result = VCK_MEM_OK, r;
    while (len) {
        const struct vck_section *s = map_find(a->map, addr);
        uint64_t room = section_room(a->map, s, addr);
        uint64_t l = room && room < len ? room : len;
        uint64_t at = addr - s->start;
        switch (s->kind) {
        case VCK_SECTION_RAM:
            memcpy(buf, s->host + at, l);
            r = VCK_MEM_OK;
            break;
        case VCK_SECTION_MMIO:
            r = mmio_read(s, s->offset + at, buf, l);
            break;
        default:
            memset(buf, 0, l);
            r = VCK_MEM_DECODE_ERROR;
            break;
        }
        if (r != VCK_MEM_OK && result == VCK_MEM_OK)
            result = r;
        buf += l;
        len -= l;
        addr += l;
        if (len && addr == 0) { /* ran past 2^64 - 1 */
            memset(buf, 0, len);
            return result == VCK_MEM_OK ? VCK_MEM_DECODE_ERROR : result;
        }
    }
    return result;
}

static enum vck_mem_result map_write(const struct access *a, uint64_t addr, const uint8_t *buf,
                                     uint64_t len)
{
    enum vck_mem_result result = VCK_MEM_OK, r;
    while (len) {
        const struct vck_section *s = map_find(a->map, addr);
        uint64_t room = section_room(a->map, s, addr);
        uint64_t l = room && room < len ? room : len;
        uint64_t at = addr - s->start;
        if (s->kind == VCK_SECTION_UNASSIGNED || s->readonly) {
            r = VCK_MEM_DECODE_ERROR;
        } else if (s->kind == VCK_SECTION_RAM) {
            memcpy(s->host + at, buf, l);
            if (a->ram_write)
                a->ram_write(a->ram_write_opaque, addr, l);
            r = VCK_MEM_OK;
        } else {
            r = mmio_write(s, s->offset + at, buf, l);
        }
        if (r != VCK_MEM_OK && result == VCK_MEM_OK)
            result = r;
        buf += l;
        len -= l;
        addr += l;
        if (len && addr == 0)
            return result == VCK_MEM_OK ? VCK_MEM_DECODE_ERROR : result;
    }
    return result;
}

static struct access dispatch_access(const struct vck_dispatch *d)
{
    return (struct access){
        .map = current_map(d),
        .ram_write = d->opts.ram_write,
        .ram_write_opaque = d->opts.ram_write_opaque,
    };
}

enum vck_mem_result vck_dispatch_read(const struct vck_dispatch *d, uint64_t addr, void *buf,
                                      uint64_t len)
{
    vck_rcu_read_lock();
    struct access a = dispatch_access(d);
    const struct vck_section *s = map_find(a.map, addr);
    enum vck_mem_result r;
    if (s->kind == VCK_SECTION_RAM && len && s->last - addr >= len - 1) {
        memcpy(buf, s->host + (addr - s->start), len); /* the common case: one RAM range */
        r = VCK_MEM_OK;
    } else {
        r = map_read(&a, addr, buf, len);
    }
    vck_rcu_read_unlock();
    return r;
}

enum vck_mem_result vck_dispatch_write(const struct vck_dispatch *d, uint64_t addr, const void *buf,
                                       uint64_t len)
{
    vck_rcu_read_lock();
    struct access a = dispatch_access(d);
    enum vck_mem_result r = map_write(&a, addr, buf, len);
    vck_rcu_read_unlock();
    return r;
}

static void check_size(unsigned size)
{
    if (size != 1 && size != 2 && size != 4 && size != 8)
        fatal("access size %u is not 1, 2, 4 or 8", size);
}

enum vck_mem_result vck_dispatch_load(const struct vck_dispatch *d, uint64_t addr, unsigned size,
                                      uint64_t *value)
{
    check_size(size);
    uint64_t v = 0;
    enum vck_mem_result r;
    vck_rcu_read_lock();
    struct access a = dispatch_access(d);
    const struct vck_section *s = map_find(a.map, addr);
    if (s->kind == VCK_SECTION_RAM && s->last - addr >= size - 1) {
        memcpy(&v, s->host + (addr - s->start), size);
        r = VCK_MEM_OK;
    } else {
        r = map_read(&a, addr, (uint8_t *)&v, size);
    }
    vck_rcu_read_unlock();
    *value = v;
    return r;
}

enum vck_mem_result vck_dispatch_store(const struct vck_dispatch *d, uint64_t addr, unsigned size,
                                       uint64_t value)
{
    check_size(size);
    vck_rcu_read_lock();
    struct access a = dispatch_access(d);
    enum vck_mem_result r = map_write(&a, addr, (const uint8_t *)&value, size);
    vck_rcu_read_unlock();
    return r;
}

/* ---- the dispatch and its caches --------------------------------------------------------- */

struct vck_dispatch *vck_dispatch_new(struct vck_as *as, const struct vck_dispatch_options *opts)
{
    struct vck_dispatch *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    if (opts)
        d->opts = *opts;
    if (!d->opts.page_bits)
        d->opts.page_bits = 12;
    if (!d->opts.level_bits)
        d->opts.level_bits = 9;
    if (d->opts.page_bits > 30 || d->opts.level_bits > 16)
        fatal("page_bits %u (1..30) or level_bits %u (1..16) out of range", d->opts.page_bits,
              d->opts.level_bits);
    d->as = as;
    d->slot = vck_as_add_builder(as, &(struct vck_view_builder){
                                         .build = builder_build,
                                         .free = builder_free,
                                         .opaque = d,
                                     });
    return d;
}

void vck_dispatch_free(struct vck_dispatch *d)
{
    free(d);
}

void vck_dispatch_map_stats(const struct vck_dispatch *d, const struct vck_flatview *view,
                            struct vck_pagemap_stats *st)
{
    const struct pagemap *m = vck_flatview_derived(view, d->slot);
    if (!m) { /* a view retired before the dispatch attached, still held by someone */
        *st = (struct vck_pagemap_stats){0};
        return;
    }
    *st = (struct vck_pagemap_stats){
        .sections = m->n_sections,
        .nodes = m->n_nodes,
        .subpages = m->n_subpages,
        .bypassed = m->bypassed,
        .bytes = m->bytes,
    };
}

void vck_mrc_init(struct vck_mrc *c, const struct vck_dispatch *d, uint64_t addr, uint64_t len,
                  bool is_write)
{
    const struct vck_flatview *view = vck_as_view_get(d->as);
    struct pagemap *m = vck_flatview_derived(view, d->slot);
    c->view = view;
    c->map = m;
    c->addr = addr;
    c->len = len;
    c->is_write = is_write;
    c->ram_write = d->opts.ram_write;
    c->ram_write_opaque = d->opts.ram_write_opaque;
    c->host = NULL;

    const struct vck_section *s = map_find(m, addr);
    if (s->kind != VCK_SECTION_RAM || (is_write && s->readonly))
        return;
    uint8_t *host = s->host + (addr - s->start);
    uint64_t covered = s->last - addr + 1; /* 0: the range reaches 2^64 */
    /* Extend across following ranges whose host memory continues this one's. */
    while (covered && covered < len) {
        const struct vck_section *next = s + 1;
        if (next >= m->sections + m->n_sections || next->kind != VCK_SECTION_RAM ||
            next->start != s->last + 1 || next->host != host + covered ||
            (is_write && next->readonly))
            return;
        covered += next->last - next->start + 1;
        s = next;
    }
    c->host = host;
}

void vck_mrc_destroy(struct vck_mrc *c)
{
    vck_flatview_unref(c->view);
    c->view = NULL;
    c->map = NULL;
    c->host = NULL;
}

static struct access cache_access(const struct vck_mrc *c)
{
    return (struct access){
        .map = (struct pagemap *)c->map,
        .ram_write = c->ram_write,
        .ram_write_opaque = c->ram_write_opaque,
    };
}

enum vck_mem_result vck_mrc_read_slow(const struct vck_mrc *c, uint64_t offset, void *buf,
                                      uint64_t n)
{
    struct access a = cache_access(c);
    /* The map is the cache's own view's; the section is for the MMIO callbacks' sake. */
    vck_rcu_read_lock();
    enum vck_mem_result r = map_read(&a, c->addr + offset, buf, n);
    vck_rcu_read_unlock();
    return r;
}

enum vck_mem_result vck_mrc_write_slow(const struct vck_mrc *c, uint64_t offset, const void *buf,
                                       uint64_t n)
{
    struct access a = cache_access(c);
    vck_rcu_read_lock();
    enum vck_mem_result r = map_write(&a, c->addr + offset, buf, n);
    vck_rcu_read_unlock();
    return r;
}
