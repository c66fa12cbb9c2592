/*
 * vcpukit/rcu.h - the kit's read-copy-update layer over liburcu, and the memory map built on it
 * (regions rendered into RCU-published flat views: second half of this header).
 *
 * Every vcpukit module that publishes data to lock-free readers goes through this header, never
 * through liburcu directly, for two reasons:
 *
 *  1. ThreadSanitizer cannot see liburcu's grace periods (Debian's liburcu 0.13 has no TSan
 *     annotations: a correct publish -> synchronize -> free is reported as a race). This layer
 *     adds the happens-before edges TSan needs, in TSan builds only (see "Memory ordering").
 *  2. The flavor (memb, qsbr, mb) is chosen once, at configure time (VCK_RCU_FLAVOR), and the
 *     modules stay flavor-agnostic: they call vck_rcu_quiescent_state() where a qsbr build needs
 *     one and it costs nothing in the others.
 *
 * Threads. A thread that enters read-side sections, or calls vck_rcu_call(), must be registered
 * (vck_rcu_register_thread) for as long as it does so. vck_rcu_synchronize() and
 * vck_rcu_barrier() may be called by any thread, registered or not, but never from inside a
 * read-side section nor from an RCU callback: both would wait for themselves.
 *
 * Memory ordering. vck_rcu_assign_pointer() is a release store and vck_rcu_dereference() an
 * acquire load (compiled to a plain load on x86-64 and to LDAR on arm64): whatever the writer
 * stored into an object before publishing it is visible to a reader that dereferenced the
 * published pointer. A grace period orders the other way: everything a reader did inside a section
 * happens-before vck_rcu_synchronize() returns for any section that was running when it was called,
 * and before the callback of a vck_rcu_call() made while it was running. In TSan builds these
 * edges are spelled out: the outermost read unlock releases a sync object, synchronize and every
 * callback acquire it, and vck_rcu_call() releases the head that its callback acquires.
 *
 * The domain is liburcu's, which is per process: two emulators in one process share grace
 * periods, which is correct (a grace period waits for everyone) though not isolated.
 */
#ifndef VCPUKIT_RCU_H
#define VCPUKIT_RCU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vcpukit/config.h>

#if defined(__SANITIZE_THREAD__)
#define VCK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VCK_TSAN 1
#endif
#endif

/*
 * The read-side fast paths are liburcu's inline versions, which need _LGPL_SOURCE. liburcu states
 * that those functions are kept under ten lines precisely so that code under any license may
 * inline them. We define it only around our include so a consumer's own choice is left alone.
 * Under ThreadSanitizer we call the library instead: inlined, liburcu's deliberately racy
 * read-unlock wake-up would be instrumented as if it were ours.
 */
#if !defined(_LGPL_SOURCE) && !defined(VCK_TSAN)
#define _LGPL_SOURCE
#define VCK_RCU_DEFINED_LGPL_SOURCE
#endif
#if defined(VCK_RCU_FLAVOR_QSBR)
#include <urcu/urcu-qsbr.h>
#define VCK_URCU_(name) urcu_qsbr_##name
#elif defined(VCK_RCU_FLAVOR_MB)
#include <urcu/urcu-mb.h>
#define VCK_URCU_(name) urcu_mb_##name
#else
#include <urcu/urcu-memb.h>
#define VCK_URCU_(name) urcu_memb_##name
#endif
#ifdef VCK_RCU_DEFINED_LGPL_SOURCE
#undef _LGPL_SOURCE
#undef VCK_RCU_DEFINED_LGPL_SOURCE
#endif

#ifdef __cplusplus
extern "C" {
#endif

/*
 * VCK_RCU_NO_TSAN_ANNOTATIONS exists for one test: the variant of the torture that shows TSan
 * reporting liburcu's reclamation as a race when the edges are left out.
 */
#if defined(VCK_TSAN) && !defined(VCK_RCU_NO_TSAN_ANNOTATIONS)
#define VCK_RCU_TSAN_EDGES 1
#endif

#ifdef VCK_RCU_TSAN_EDGES
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
/* The address TSan uses as "the grace period": never read or written, only annotated. */
extern char vck_rcu_tsan_domain;
#define VCK_TSAN_ACQUIRE(addr) __tsan_acquire((void *)(addr))
#define VCK_TSAN_RELEASE(addr) __tsan_release((void *)(addr))
#else
#define VCK_TSAN_ACQUIRE(addr) ((void)0)
#define VCK_TSAN_RELEASE(addr) ((void)0)
#endif

struct vck_rcu_head;
typedef void vck_rcu_callback(struct vck_rcu_head *head);

/*
 * Embed one in each object reclaimed through vck_rcu_call() or vck_rcu_free(); 24 bytes.
 * The fields are private to this layer.
 */
struct vck_rcu_head {
    struct rcu_head urcu;
    union {
        vck_rcu_callback *func;
        size_t free_offset;
    } u;
};

/**
 * vck_rcu_flavor_name - "memb", "qsbr" or "mb": the flavor this kit was built with.
 * Any thread. Returns a static string.
 */
const char *vck_rcu_flavor_name(void);

/**
 * vck_rcu_register_thread - make the calling thread an RCU reader.
 * Any thread not yet registered; call before its first read-side section or vck_rcu_call().
 * Takes liburcu's registry lock (microseconds). In a qsbr build the thread starts online.
 */
void vck_rcu_register_thread(void);

/**
 * vck_rcu_unregister_thread - undo vck_rcu_register_thread().
 * The registered thread itself, outside any read-side section, before it exits.
 */
void vck_rcu_unregister_thread(void);

/**
 * vck_rcu_read_lock - enter a read-side critical section. Sections nest.
 * A registered thread. Never blocks; memb: a thread-local load and store and a compiler barrier
 * (no fence), qsbr: nothing, mb: a full fence. See bench/README.md for measured costs.
 */
#if defined(VCK_RCU_FLAVOR_QSBR)
/*
 * qsbr's sections are empty, so liburcu cannot tell a thread inside one from a thread that is
 * merely online; the layer counts sections itself (for vck_rcu_read_ongoing) in qsbr builds.
 */
extern __thread unsigned vck_rcu_qsbr_depth;
#endif

static inline void vck_rcu_read_lock(void)
{
#if defined(VCK_RCU_FLAVOR_QSBR)
    vck_rcu_qsbr_depth++;
#endif
    VCK_URCU_(read_lock)();
}

/**
 * vck_rcu_read_unlock - leave a read-side critical section.
 * The thread that entered it. Never blocks. Pointers obtained with vck_rcu_dereference() inside
 * the outermost section must not be used after it.
 */
static inline void vck_rcu_read_unlock(void)
{
#ifdef VCK_RCU_TSAN_EDGES
    /* Pairs with the acquire in vck_rcu_synchronize() and in every callback. */
    VCK_TSAN_RELEASE(&vck_rcu_tsan_domain);
#endif
    VCK_URCU_(read_unlock)();
#if defined(VCK_RCU_FLAVOR_QSBR)
    vck_rcu_qsbr_depth--;
#endif
}

/**
 * vck_rcu_read_ongoing - true inside a read-side section (for assertions, and for code that
 * must not wait for a grace period from inside one). A registered thread.
 */
static inline bool vck_rcu_read_ongoing(void)
{
#if defined(VCK_RCU_FLAVOR_QSBR)
    return vck_rcu_qsbr_depth != 0;
#else
    return VCK_URCU_(read_ongoing)() != 0;
#endif
}

/*
 * Depth of vck_rcu_call() callbacks running on the calling thread (liburcu's callback thread,
 * or any thread that runs them): waiting for a grace period or a barrier there deadlocks.
 */
extern __thread unsigned vck_rcu_callback_depth;

/**
 * vck_rcu_may_wait - whether the calling thread may wait for a grace period or a barrier now:
 * not inside a read-side section and not inside an RCU callback. A registered thread, or the
 * callback thread.
 */
static inline bool vck_rcu_may_wait(void)
{
    return !vck_rcu_callback_depth && !vck_rcu_read_ongoing();
}

/**
 * vck_rcu_quiescent_state - report that the calling thread holds no RCU-protected pointer.
 * A registered thread, outside any read-side section. qsbr: a grace period cannot end until
 * every online thread has called this (or gone offline), so long-running loops (a vCPU's
 * execution loop) call it at a safe point; other flavors: free.
 */
static inline void vck_rcu_quiescent_state(void)
{
    VCK_URCU_(quiescent_state)();
}

/**
 * vck_rcu_thread_offline - tell RCU the calling thread will not read for a while (before it
 * blocks or sleeps, e.g. a vCPU in WFI); vck_rcu_thread_online() ends that.
 * A registered thread, outside any read-side section. Free except in qsbr builds.
 */
static inline void vck_rcu_thread_offline(void)
{
    VCK_URCU_(thread_offline)();
}

static inline void vck_rcu_thread_online(void)
{
    VCK_URCU_(thread_online)();
}

/**
 * vck_rcu_dereference - load an RCU-protected pointer (acquire).
 * Any thread, inside a read-side section, or a writer holding the lock that orders updates.
 * @p is the pointer lvalue (a field or variable of pointer type), as in liburcu.
 */
#define vck_rcu_dereference(p) __atomic_load_n(&(p), __ATOMIC_ACQUIRE)

/**
 * vck_rcu_assign_pointer - publish @v through pointer lvalue @p (release store): every store
 * made to *v before this call is visible to readers that dereference it. Writers must be
 * serialised by the caller (a lock, or a single writer thread).
 */
#define vck_rcu_assign_pointer(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELEASE)

/**
 * vck_rcu_xchg_pointer - publish @v and return the previous pointer, atomically (acq_rel);
 * for lock-free writers that need the old value to reclaim it.
 */
#define vck_rcu_xchg_pointer(p, v) __atomic_exchange_n(&(p), (v), __ATOMIC_ACQ_REL)

/**
 * vck_rcu_synchronize - wait for a grace period: every read-side section running at the call
 * has ended when this returns.
 * Any thread, outside read-side sections and callbacks. Blocks; memb: about two membarrier
 * system calls plus the longest running section.
 */
void vck_rcu_synchronize(void);

/**
 * vck_rcu_call - run @func(@head) on liburcu's callback thread after a grace period.
 * A registered thread (online, in qsbr); may be called inside a read-side section and from a
 * callback. Never blocks: O(1), a wait-free enqueue. @head must stay untouched until @func runs;
 * @func usually frees the object containing @head. Callbacks must not block on a grace period.
 */
void vck_rcu_call(struct vck_rcu_head *head, vck_rcu_callback *func);

/**
 * vck_rcu_free - free(3) the object @obj after a grace period; @field names its
 * struct vck_rcu_head member. Same rules as vck_rcu_call(); @obj must come from malloc().
 */
#define vck_rcu_free(obj, field) vck_rcu_free_at(&(obj)->field, offsetof(__typeof__(*(obj)), field))

/* The function behind vck_rcu_free(): free((char *)head - offset) after a grace period. */
void vck_rcu_free_at(struct vck_rcu_head *head, size_t offset);

/**
 * vck_rcu_barrier - wait until every callback queued by any thread before this call has run.
 * Any thread, outside read-side sections and never from a callback. Blocks for at least one
 * grace period. Call it before freeing what callbacks use (or before exit, to reclaim all).
 */
void vck_rcu_barrier(void);

/*
 * ===========================================================================================
 * The memory map: regions rendered into flat views published with RCU.
 *
 * A guest's physical memory is a tree of regions: RAM, MMIO devices, aliases (a window onto part
 * of another region) and containers (which place children at offsets, with priorities, and let
 * lower-priority siblings show through their holes). An address space renders the tree under
 * its root region into a flat view: a sorted array of disjoint ranges, each naming the terminal
 * region (RAM or MMIO) that answers there and the offset into it. Views are immutable,
 * published with RCU and reclaimed after a grace period once no reader holds them, so readers
 * never lock and the writer never waits for them.
 *
 * Everything belongs to a struct vck_memmap (one per emulated machine; no global state). All
 * changes to regions, address spaces and listeners are made by writers holding the memmap's
 * writer lock, which every changing call takes by itself and vck_memmap_begin() holds across a
 * transaction. Changes inside a transaction are rendered once, at the outermost
 * vck_memmap_commit(); a change outside one commits at once. A commit re-renders only the parts
 * of each address space that the changes could have touched (see rcu/README.md, "Rendering").
 *
 * Threads. Writers: any registered RCU thread (vck_rcu_register_thread), not from a listener
 * callback or a view builder (that is a bug, and aborts). Readers: any registered thread,
 * inside a read-side section (vck_as_view) or holding a reference (vck_as_view_get).
 *
 * Memory ordering. Publication of a view is a release store (vck_rcu_assign_pointer) and
 * vck_as_view() an acquire load: a reader sees a view's ranges and derived data completely
 * built. A view is freed only after its reference count reaches zero and then a grace period.
 *
 * Lifetime rules (checked: breaking them aborts, in every build type).
 *  - A region can be destroyed (vck_mr_destroy) only when it is mapped nowhere: not a child of a
 *    container, not the target of an alias, not the root of an address space, and, if it is a
 *    container, without children. Its memory (and RAM backing, and the release callback) is
 *    reclaimed only once every view that existed when it was destroyed is gone, so a reader that
 *    holds a view may always use the regions the view names.
 *  - Address spaces are destroyed before their root; listeners are unregistered before their
 *    address space goes; vck_memmap_free() requires every region and address space destroyed.
 * ===========================================================================================
 */

struct vck_memmap;   /* one machine's memory map: its regions, address spaces and writer lock */
struct vck_mr;       /* a memory region */
struct vck_as;       /* an address space: a root region and its published view */
struct vck_flatview; /* an immutable rendering of an address space */

/* Size of a region that covers the whole 64-bit space (2^64 bytes, which uint64_t can't hold). */
#define VCK_MR_SIZE_FULL UINT64_MAX

enum vck_mr_kind {
    VCK_MR_CONTAINER, /* places children; its holes show lower-priority siblings */
    VCK_MR_RAM,       /* host memory; ROM is RAM with the read-only flag */
    VCK_MR_MMIO,      /* read/write callbacks */
    VCK_MR_ALIAS,     /* shows [offset, offset + size) of its target */
};

/* Outcome of a memory access (MMIO callbacks return one; dispatch reports one per access). */
enum vck_mem_result {
    VCK_MEM_OK = 0,
    VCK_MEM_DEVICE_ERROR = 1, /* the device refused the access */
    VCK_MEM_DECODE_ERROR = 2, /* nothing answers at that address, or a write to read-only memory */
};

/*
 * An MMIO region's device. The callbacks run on whichever reader thread accesses the region,
 * concurrently with each other (the device synchronises its own state), inside that thread's
 * RCU read-side section: they must not wait for a grace period, but may change the memory map
 * (the writer lock is never held across a grace period, and a commit made inside a read-side
 * section never waits for one). @offset is from the start of the region; @size is a power of two in
 * [min_access, max_access]. A NULL callback makes that direction fail with VCK_MEM_DEVICE_ERROR.
 */
struct vck_mr_ops {
    enum vck_mem_result (*read)(void *opaque, uint64_t offset, uint64_t *value, unsigned size);
    enum vck_mem_result (*write)(void *opaque, uint64_t offset, uint64_t value, unsigned size);
    unsigned min_access; /* smallest access the callbacks implement, bytes; 0 means 1 */
    unsigned max_access; /* largest; 0 means 8 */
    bool unaligned;      /* the callbacks accept offsets not aligned to the access size */
};

/*
 * Called once when a region's memory is reclaimed: no view can reach the region any more. It
 * may run inside a commit (with the writer lock held) or on liburcu's callback thread, so it
 * must not change the memory map (that aborts) or wait for a grace period.
 */
typedef void vck_mr_release_fn(void *opaque);

/* One range of a flat view. @mr is RAM or MMIO, never a container or an alias. */
struct vck_flat_range {
    uint64_t start;    /* first address */
    uint64_t last;     /* last address, inclusive: a range may end at 2^64 - 1 */
    struct vck_mr *mr; /* the region answering here */
    uint64_t offset;   /* offset in @mr of @start */
    bool readonly;     /* the region, or a container or alias above it, is read-only */
};

/* vck_memmap_new() options; zero-initialise and set what you need. */
struct vck_memmap_options {
    /*
     * Bytes of retired views (and their derived data) awaiting reclamation above which a commit
     * made outside a read-side section waits for reclamation (vck_rcu_barrier) before returning,
     * so a storm of commits cannot pile up views. 0 means the default, 4 MiB; SIZE_MAX never
     * waits. A commit made inside a read-side section cannot wait and never does. Every
     * mutator commits, so: an emulator whose writers hold a lock that readers also take inside
     * their sections (QEMU's big lock, taken by a vCPU doing MMIO) must set SIZE_MAX, or that
     * wait deadlocks; reclamation then relies on liburcu's callback thread alone.
     */
    size_t pending_limit;
    unsigned flags;
};

/* Render every commit from scratch (QEMU's way): the reference and benchmark peer. */
#define VCK_MEMMAP_FULL_RENDER (1u << 0)
/* Testing aid: poison freed views and keep the last 64 in quarantine before freeing them. */
#define VCK_MEMMAP_QUARANTINE (1u << 1)

/* Byte every freed view is filled with under VCK_MEMMAP_QUARANTINE. */
#define VCK_FLATVIEW_POISON 0x6b

/**
 * vck_memmap_new - an empty memory map. @opts may be NULL for the defaults.
 * Any thread. Returns NULL only when memory runs out.
 */
struct vck_memmap *vck_memmap_new(const struct vck_memmap_options *opts);

/**
 * vck_memmap_free - free an empty memory map: every address space and region destroyed.
 * Any registered thread, outside read-side sections: waits for pending reclamation.
 */
void vck_memmap_free(struct vck_memmap *mm);

/**
 * vck_memmap_begin / vck_memmap_commit - a transaction: changes between them are rendered
 * once, at the outermost commit. Nestable. begin takes the memmap's writer lock (blocking other
 * writers until the outermost commit); commit re-renders what changed, runs the view builders,
 * tells the listeners, publishes the new views, and may wait for reclamation (see
 * vck_memmap_options.pending_limit). A commit that changes nothing visible publishes nothing.
 * Writers only (see above); commit by the thread that called begin.
 */
void vck_memmap_begin(struct vck_memmap *mm);
void vck_memmap_commit(struct vck_memmap *mm);

struct vck_memmap_stats {
    uint64_t commits;             /* outermost commits */
    uint64_t views_published;     /* over all address spaces */
    uint64_t renders_full;        /* address-space renders from scratch */
    uint64_t renders_incremental; /* renders of changed windows only */
    uint64_t views_live;          /* views not yet reclaimed, current ones included */
    size_t pending_bytes;         /* retired views awaiting reclamation */
    size_t peak_pending_bytes;
    uint64_t reclaim_waits; /* commits that waited because pending_bytes passed the limit */
};

/** vck_memmap_get_stats - counters since vck_memmap_new(). Any thread; takes the writer lock. */
void vck_memmap_get_stats(struct vck_memmap *mm, struct vck_memmap_stats *st);

/*
 * Regions. Constructors: writers; @name is copied; the region starts enabled, writable, at
 * priority 0, mapped nowhere. They return NULL only when memory runs out.
 */

/** vck_mr_new_container - a container of @size bytes (VCK_MR_SIZE_FULL: the whole space). */
struct vck_mr *vck_mr_new_container(struct vck_memmap *mm, const char *name, uint64_t size);

/**
 * vck_mr_new_ram - RAM of @size bytes backed by zeroed host memory the region owns (anonymous
 * mmap, transparent huge pages asked for from 2 MiB). The region can later shrink and grow back,
 * never past @size.
 */
struct vck_mr *vck_mr_new_ram(struct vck_memmap *mm, const char *name, uint64_t size);

/**
 * vck_mr_new_ram_ptr - RAM backed by @host, which the caller owns and keeps valid until the
 * region's release callback runs (vck_mr_set_release).
 */
struct vck_mr *vck_mr_new_ram_ptr(struct vck_memmap *mm, const char *name, uint64_t size,
                                  void *host);

/** vck_mr_new_mmio - a device: @ops (copied) called with @opaque. */
struct vck_mr *vck_mr_new_mmio(struct vck_memmap *mm, const char *name, uint64_t size,
                               const struct vck_mr_ops *ops, void *opaque);

/**
 * vck_mr_new_alias - shows [@offset, @offset + @size) of @target. @target may be any region of
 * the same memmap, an alias or a container included; it cannot be destroyed while aliased.
 */
struct vck_mr *vck_mr_new_alias(struct vck_memmap *mm, const char *name, struct vck_mr *target,
                                uint64_t offset, uint64_t size);

/**
 * vck_mr_destroy - give up the region. Writers. It must be mapped nowhere (see "Lifetime
 * rules"; otherwise this aborts, naming it). Its memory, RAM backing and release callback are
 * reclaimed once every view that exists now is gone: maybe at once, maybe later on the RCU
 * callback thread.
 */
void vck_mr_destroy(struct vck_mr *mr);

/** vck_mr_set_release - call @fn(@opaque) when @mr's memory is reclaimed. Writers. */
void vck_mr_set_release(struct vck_mr *mr, vck_mr_release_fn *fn, void *opaque);

/*
 * Changing the tree. Writers; each is a transaction of its own when called outside one. Misuse
 * (a cycle, a child already mapped elsewhere, a RAM region grown past its backing, regions of
 * two memmaps) aborts with a message.
 */

/**
 * vck_mr_add_subregion - map @sub at @addr in @container, at @priority. Higher priorities win
 * where children overlap; at equal priority the child added later wins (moving or
 * re-prioritising a child keeps its place in that order). A child may extend past its
 * container's end: it is clipped.
 */
void vck_mr_add_subregion(struct vck_mr *container, uint64_t addr, struct vck_mr *sub,
                          int priority);

/** vck_mr_del_subregion - unmap @sub from @container (where it must be mapped). */
void vck_mr_del_subregion(struct vck_mr *container, struct vck_mr *sub);

/** vck_mr_set_address - move a mapped @sub to @addr within its container. */
void vck_mr_set_address(struct vck_mr *sub, uint64_t addr);

/** vck_mr_set_priority - change a mapped @sub's priority. */
void vck_mr_set_priority(struct vck_mr *sub, int priority);

/** vck_mr_set_size - resize @mr (RAM: at most its backing's size). */
void vck_mr_set_size(struct vck_mr *mr, uint64_t size);

/** vck_mr_set_enabled - a disabled region and everything under it is skipped when rendering. */
void vck_mr_set_enabled(struct vck_mr *mr, bool enabled);

/** vck_mr_set_readonly - read-only applies to everything rendered through @mr. */
void vck_mr_set_readonly(struct vck_mr *mr, bool readonly);

/** vck_mr_set_alias_target - point @alias at [@offset, @offset + size) of @target. */
void vck_mr_set_alias_target(struct vck_mr *alias, struct vck_mr *target, uint64_t offset);

/*
 * Region attributes. The kind, name, host pointer, ops and opaque never change, so any thread
 * holding a view (or a writer) may read them for a region the view names. The rest (size,
 * address, priority, flags, parent) are writer state: writers only.
 */
enum vck_mr_kind vck_mr_kind(const struct vck_mr *mr);
const char *vck_mr_name(const struct vck_mr *mr);
/* RAM: the host address of offset 0; NULL for other kinds. */
void *vck_mr_host(const struct vck_mr *mr);
/* MMIO: the callbacks and their opaque; NULL for other kinds. */
const struct vck_mr_ops *vck_mr_ops(const struct vck_mr *mr);
void *vck_mr_opaque(const struct vck_mr *mr);
/* Writer state. Size VCK_MR_SIZE_FULL means 2^64. */
uint64_t vck_mr_size(const struct vck_mr *mr);
uint64_t vck_mr_address(const struct vck_mr *mr); /* in its container; 0 when unmapped */
int vck_mr_priority(const struct vck_mr *mr);
bool vck_mr_enabled(const struct vck_mr *mr);
bool vck_mr_readonly(const struct vck_mr *mr);
struct vck_mr *vck_mr_container(const struct vck_mr *mr); /* NULL when unmapped */

/*
 * Address spaces.
 */

/**
 * vck_as_new - an address space rendering @root (clipped to [0, min(size, 2^64))). Writers.
 * Renders and publishes the first view before returning. NULL only when memory runs out.
 */
struct vck_as *vck_as_new(struct vck_memmap *mm, const char *name, struct vck_mr *root);

/**
 * vck_as_destroy - unpublish and drop the address space. Writers; no listener may still be
 * registered. Readers inside a section may go on using the view they hold.
 */
void vck_as_destroy(struct vck_as *as);

struct vck_mr *vck_as_root(const struct vck_as *as);
const char *vck_as_name(const struct vck_as *as);

/*
 * The first member of struct vck_as and of struct vck_flatview, public only so that the two
 * loads every access makes (current view, its derived data) are inline; the rest is private.
 */
struct vck_as_head {
    struct vck_flatview *view; /* RCU-published */
};

/**
 * vck_as_view - the current view. A registered thread inside a read-side section; the view
 * stays valid until the section ends (don't keep it past: take a reference for that). One
 * acquire load, inline; never NULL.
 */
static inline const struct vck_flatview *vck_as_view(const struct vck_as *as)
{
    /* Pairs with the release store that publishes a view (vck_rcu_assign_pointer). */
    return __atomic_load_n(&((const struct vck_as_head *)(const void *)as)->view, __ATOMIC_ACQUIRE);
}

/**
 * vck_as_view_get - the current view with a reference: valid outside read-side sections until
 * vck_flatview_unref(). Any registered thread (enters a section itself). An acquire load and a
 * compare-and-swap on the view's count.
 */
const struct vck_flatview *vck_as_view_get(const struct vck_as *as);

/**
 * vck_flatview_ref - another reference on a view the caller holds a reference to, or reads
 * inside a read-side section. Returns false, taking nothing, when the view is already on its
 * way to reclamation (replaced, every reference dropped): only possible for a view read in a
 * section, which may still be used until the section ends; take the current one with
 * vck_as_view_get() instead. A compare-and-swap on the view's count.
 */
bool vck_flatview_ref(const struct vck_flatview *view);

/**
 * vck_flatview_unref - drop a reference; the last one queues the view for reclamation after a
 * grace period. Any registered thread, inside or outside sections.
 */
void vck_flatview_unref(const struct vck_flatview *view);

/* The ranges, sorted by address, disjoint, adjacent compatible ranges merged. */
const struct vck_flat_range *vck_flatview_ranges(const struct vck_flatview *view, size_t *n);

/* Per address space, 1 for the first view, +1 for each one published after it. */
uint64_t vck_flatview_generation(const struct vck_flatview *view);

/** vck_flatview_find - the range containing @addr, or NULL (unassigned). O(log n). */
const struct vck_flat_range *vck_flatview_find(const struct vck_flatview *view, uint64_t addr);

/*
 * View builders: data derived from each view (a dispatch page map, say), built by the writer
 * before the view is published and freed with it, so a reader that holds a view holds a
 * matching derived structure too and can never pair one view with another's.
 */
struct vck_view_builder {
    /*
     * Build the derived data for @view. @old is the view being replaced and @old_data its data
     * (NULL for the first view), for incremental builds; @old stays valid during the call.
     * Store the bytes the result uses in *@bytes (for the pending-memory accounting).
     * Return NULL only when nothing is derived.
     */
    void *(*build)(void *opaque, const struct vck_flatview *view, const struct vck_flatview *old,
                   void *old_data, size_t *bytes);
    /* Free a result of build(). Runs on the RCU callback thread, or a writer. */
    void (*free)(void *opaque, void *data);
    void *opaque;
};

#define VCK_FLATVIEW_DERIVED_MAX 4

struct vck_flatview_head {
    void *derived[VCK_FLATVIEW_DERIVED_MAX]; /* built before the view was published */
};

/**
 * vck_as_add_builder - register @b (copied) and build its data for the current view, which is
 * then republished with it. Writers. Returns the slot to pass to vck_flatview_derived(); aborts
 * when all VCK_FLATVIEW_DERIVED_MAX slots are taken.
 */
int vck_as_add_builder(struct vck_as *as, const struct vck_view_builder *b);

/**
 * vck_flatview_derived - the data @slot's builder made for @view (NULL for views published
 * before it registered). Whoever holds the view; one load, inline. @slot comes from
 * vck_as_add_builder().
 */
static inline void *vck_flatview_derived(const struct vck_flatview *view, int slot)
{
    return ((const struct vck_flatview_head *)(const void *)view)->derived[slot];
}

/*
 * Listeners: told how each commit changed an address space's view. Callbacks run on the
 * committing writer, under the writer lock, in this order:
 *   begin           (registration order)
 *   region_del      for each range of the old view not in the new one, ascending address
 *                   (reverse registration order)
 *   region_add      for each range of the new view not in the old one, and
 *   region_nop      for each range in both, interleaved in ascending address
 *                   (registration order)
 *   -- the new view is published here --
 *   commit          (registration order), with the now current view
 * "In both" means equal start, last, region, offset and read-only flag. Applying the dels and
 * then the adds to a copy of the old view yields the new one. Commits that change nothing
 * visible in this address space call nothing. Callbacks may be NULL; they must not change the
 * memory map (that aborts) nor wait for a grace period, but may read it and call vck_as_view().
 */
struct vck_mem_listener {
    void (*begin)(struct vck_mem_listener *l);
    void (*region_del)(struct vck_mem_listener *l, const struct vck_flat_range *r);
    void (*region_add)(struct vck_mem_listener *l, const struct vck_flat_range *r);
    void (*region_nop)(struct vck_mem_listener *l, const struct vck_flat_range *r);
    void (*commit)(struct vck_mem_listener *l, const struct vck_flatview *view);
    /* private to the memmap */
    struct vck_as *as_;
    struct vck_mem_listener *next_, *prev_;
};

/**
 * vck_as_listener_register - register @l on @as and replay the current view to it: begin,
 * region_add for every range, commit. Writers. @l must stay valid until unregistered.
 */
void vck_as_listener_register(struct vck_as *as, struct vck_mem_listener *l);

/**
 * vck_as_listener_unregister - begin, region_del for every range, commit; then forget @l.
 * Writers.
 */
void vck_as_listener_unregister(struct vck_mem_listener *l);

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_RCU_H */
