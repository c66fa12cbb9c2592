/*
 * The RCU layer: liburcu plus the happens-before edges ThreadSanitizer cannot see.
 *
 * liburcu's grace-period machinery (membarrier, futexes, its callback queue) is in an
 * uninstrumented library and uses inline assembly atomics, so under TSan an object freed after
 * vck_rcu_synchronize() looks like it races with the readers that used it, and a callback looks
 * like it races with the thread that queued it. The annotations below add exactly the edges the
 * RCU contract promises (see vcpukit/rcu.h) and nothing stronger:
 *
 *   reader:  ...accesses...  release(domain)  urcu read_unlock
 *   writer:  urcu synchronize  acquire(domain)  ...free...
 *   caller:  ...writes...  release(head)  urcu call_rcu
 *   worker:  acquire(head)  acquire(domain)  func(head)
 *
 * A reader's release covers everything it did before unlocking, and a grace period only ends
 * after every section that was running at its start has unlocked, so acquiring the domain after
 * the grace period is sound. It is also slightly conservative: sections that started after the
 * grace period began are ordered before the writer too, which can hide a real race only between
 * a reader and a writer that touch an object the reader could not have found through RCU.
 *
 * VCK_RCU_BROKEN_GRACE_PERIOD builds a deliberately wrong layer whose grace periods end at once;
 * only the torture test's expected-failure variant is built with it.
 */
#include <stdlib.h>

#include <vcpukit/rcu.h>

#if defined(VCK_RCU_FLAVOR_QSBR)
__thread unsigned vck_rcu_qsbr_depth;
#endif

#ifdef VCK_RCU_TSAN_EDGES
char vck_rcu_tsan_domain;
/* Released after every callback, acquired when vck_rcu_barrier() returns. */
static char tsan_callbacks_done;
#endif

const char *vck_rcu_flavor_name(void)
{
#if defined(VCK_RCU_FLAVOR_QSBR)
    return "qsbr";
#elif defined(VCK_RCU_FLAVOR_MB)
    return "mb";
#else
    return "memb";
#endif
}

void vck_rcu_register_thread(void)
{
    VCK_URCU_(register_thread)();
}

void vck_rcu_unregister_thread(void)
{
    VCK_URCU_(unregister_thread)();
}

void vck_rcu_synchronize(void)
{
#ifndef VCK_RCU_BROKEN_GRACE_PERIOD
    VCK_URCU_(synchronize_rcu)();
    /* Pairs with the release in vck_rcu_read_unlock(). */
    VCK_TSAN_ACQUIRE(&vck_rcu_tsan_domain);
#endif
}

__thread unsigned vck_rcu_callback_depth;

static void callback_trampoline(struct rcu_head *urcu)
{
    struct vck_rcu_head *head = caa_container_of(urcu, struct vck_rcu_head, urcu);

    VCK_TSAN_ACQUIRE(head);                 /* pairs with vck_rcu_call() */
    VCK_TSAN_ACQUIRE(&vck_rcu_tsan_domain); /* pairs with vck_rcu_read_unlock() */
    vck_rcu_callback_depth++;
    head->u.func(head);
    vck_rcu_callback_depth--;
    VCK_TSAN_RELEASE(&tsan_callbacks_done); /* pairs with vck_rcu_barrier() */
}

static void free_trampoline(struct rcu_head *urcu)
{
    struct vck_rcu_head *head = caa_container_of(urcu, struct vck_rcu_head, urcu);

    VCK_TSAN_ACQUIRE(head);
    VCK_TSAN_ACQUIRE(&vck_rcu_tsan_domain);
    free((char *)head - head->u.free_offset);
    VCK_TSAN_RELEASE(&tsan_callbacks_done);
}

static void queue(struct vck_rcu_head *head, void (*trampoline)(struct rcu_head *))
{
#ifdef VCK_RCU_BROKEN_GRACE_PERIOD
    trampoline(&head->urcu);
#else
    /* Publishes the caller's writes (and head->u) to the callback; pairs with the trampolines. */
    VCK_TSAN_RELEASE(head);
    VCK_URCU_(call_rcu)(&head->urcu, trampoline);
#endif
}

void vck_rcu_call(struct vck_rcu_head *head, vck_rcu_callback *func)
{
    head->u.func = func;
    queue(head, callback_trampoline);
}

void vck_rcu_free_at(struct vck_rcu_head *head, size_t offset)
{
    head->u.free_offset = offset;
    queue(head, free_trampoline);
}

void vck_rcu_barrier(void)
{
#ifndef VCK_RCU_BROKEN_GRACE_PERIOD
    VCK_URCU_(barrier)();
    /* Whatever the callbacks did happens-before the return (pairs with the trampolines). */
    VCK_TSAN_ACQUIRE(&tsan_callbacks_done);
#endif
}
