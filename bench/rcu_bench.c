/*
 * The vcpukit RCU layer as built (vcpukit/rcu.h, flavor VCK_RCU_FLAVOR), beside the peers a
 * reader could use instead: nothing at all (the floor) and a reader-writer lock.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include <vcpukit/rcu.h>

#include "suites.h"
#include "vck_bench.h"

static uint64_t payload = 42;
static uint64_t *published = &payload;
static pthread_rwlock_t payload_lock = PTHREAD_RWLOCK_INITIALIZER;

static void read_section_vck(struct vck_bench_state *st)
{
    vck_rcu_register_thread();
    vck_bench_label(st, vck_rcu_flavor_name());
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        vck_rcu_read_lock();
        uint64_t *p = vck_rcu_dereference(published);
        vck_bench_keep(*p);
        vck_rcu_read_unlock();
    }
    vck_bench_end(st);
    vck_rcu_unregister_thread();
}

static void read_section_none(struct vck_bench_state *st)
{
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t *p = __atomic_load_n(&published, __ATOMIC_ACQUIRE);
        vck_bench_keep(*p);
    }
    vck_bench_end(st);
}

static void read_section_rwlock(struct vck_bench_state *st)
{
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        pthread_rwlock_rdlock(&payload_lock);
        vck_bench_keep(*published);
        pthread_rwlock_unlock(&payload_lock);
    }
    vck_bench_end(st);
}

/* A registered writer, outside any section: comparable with rcu/synchronize/<flavor>. */
static void synchronize_vck(struct vck_bench_state *st)
{
    vck_rcu_register_thread();
    vck_rcu_thread_offline();
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++)
        vck_rcu_synchronize();
    vck_bench_end(st);
    vck_rcu_thread_online();
    vck_rcu_unregister_thread();
}

struct reclaimable {
    uint64_t value;
    struct vck_rcu_head rcu;
};

/* Queueing a deferred free: what a writer pays per retired object. The barrier is untimed. */
static void free_deferred_vck(struct vck_bench_state *st)
{
    vck_rcu_register_thread();
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        struct reclaimable *obj = malloc(sizeof(*obj));
        if (!obj)
            abort();
        obj->value = i;
        vck_rcu_free(obj, rcu);
    }
    vck_bench_end(st);
    vck_rcu_barrier();
    vck_rcu_unregister_thread();
}

void vck_bench_register_rcu(void)
{
    for (int threads = 1; threads <= 2; threads++) {
        vck_bench_register(&(struct vck_bench_def){
            .name = "rcu/read_section/vck", .fn = read_section_vck, .threads = threads});
        vck_bench_register(&(struct vck_bench_def){
            .name = "rcu/read_section/none", .fn = read_section_none, .threads = threads});
        vck_bench_register(&(struct vck_bench_def){
            .name = "rcu/read_section/rwlock", .fn = read_section_rwlock, .threads = threads});
    }
    vck_bench_register(&(struct vck_bench_def){
        .name = "rcu/synchronize/vck", .fn = synchronize_vck, .real_time = true});
    vck_bench_register(
        &(struct vck_bench_def){.name = "rcu/free_deferred/vck", .fn = free_deferred_vck});
}
