/*
 * vcpukit/rcu.h - the kit's read-copy-update layer over liburcu.
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
static inline void vck_rcu_read_lock(void)
{
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
}

/**
 * vck_rcu_read_ongoing - true inside a read-side section (for assertions).
 * A registered thread. qsbr builds cannot tell and answer true when the thread is online.
 */
static inline bool vck_rcu_read_ongoing(void)
{
    return VCK_URCU_(read_ongoing)() != 0;
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

#ifdef __cplusplus
}
#endif

#endif /* VCPUKIT_RCU_H */
