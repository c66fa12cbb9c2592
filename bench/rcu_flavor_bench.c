/*
 * Read-side and grace-period costs of one liburcu flavor, measured directly (no vcpukit layer).
 * Compiled once per flavor (VCK_FLAVOR_MEMB, _QSBR, _MB, _BP): liburcu's flavor headers cannot
 * share a translation unit. These are the figures behind the choice of VCK_RCU_FLAVOR.
 */
#define _LGPL_SOURCE
#include <stdint.h>

#if defined(VCK_FLAVOR_MEMB)
#include <urcu/urcu-memb.h>
#define FLAVOR(name) urcu_memb_##name
#define FLAVOR_NAME  "memb"
#define REGISTER_FN  vck_bench_register_rcu_flavor_memb
#elif defined(VCK_FLAVOR_QSBR)
#include <urcu/urcu-qsbr.h>
#define FLAVOR(name) urcu_qsbr_##name
#define FLAVOR_NAME  "qsbr"
#define REGISTER_FN  vck_bench_register_rcu_flavor_qsbr
#elif defined(VCK_FLAVOR_MB)
#include <urcu/urcu-mb.h>
#define FLAVOR(name) urcu_mb_##name
#define FLAVOR_NAME  "mb"
#define REGISTER_FN  vck_bench_register_rcu_flavor_mb
#elif defined(VCK_FLAVOR_BP)
#include <urcu/urcu-bp.h>
#define FLAVOR(name) urcu_bp_##name
#define FLAVOR_NAME  "bp"
#define REGISTER_FN  vck_bench_register_rcu_flavor_bp
#else
#error "define one of VCK_FLAVOR_MEMB, _QSBR, _MB, _BP"
#endif

#include "suites.h"
#include "vck_bench.h"

static uint64_t payload = 42;
static uint64_t *published = &payload;

/* Enter, load the published pointer, use it, leave: what every lock-free lookup pays. */
static void read_section(struct vck_bench_state *st)
{
    FLAVOR(register_thread)();
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        FLAVOR(read_lock)();
        uint64_t *p = __atomic_load_n(&published, __ATOMIC_ACQUIRE);
        vck_bench_keep(*p);
        FLAVOR(read_unlock)();
    }
    vck_bench_end(st);
    FLAVOR(unregister_thread)();
}

/* The same with a quiescent-state report after every section: qsbr's worst case. */
static void read_section_quiescent(struct vck_bench_state *st)
{
    FLAVOR(register_thread)();
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++) {
        FLAVOR(read_lock)();
        uint64_t *p = __atomic_load_n(&published, __ATOMIC_ACQUIRE);
        vck_bench_keep(*p);
        FLAVOR(read_unlock)();
        FLAVOR(quiescent_state)();
    }
    vck_bench_end(st);
    FLAVOR(unregister_thread)();
}

/* One grace period with no reader in a section: the writer's fixed cost. */
static void synchronize(struct vck_bench_state *st)
{
    FLAVOR(register_thread)();
    /* A registered, online qsbr thread would wait for itself: go offline like a writer would. */
    FLAVOR(thread_offline)();
    uint64_t n = vck_bench_begin(st);
    for (uint64_t i = 0; i < n; i++)
        FLAVOR(synchronize_rcu)();
    vck_bench_end(st);
    FLAVOR(thread_online)();
    FLAVOR(unregister_thread)();
}

void REGISTER_FN(void)
{
    vck_bench_register(
        &(struct vck_bench_def){.name = "rcu/read_section/" FLAVOR_NAME, .fn = read_section});
    vck_bench_register(&(struct vck_bench_def){
        .name = "rcu/read_section/" FLAVOR_NAME, .fn = read_section, .threads = 2});
    vck_bench_register(&(struct vck_bench_def){.name = "rcu/read_section_quiescent/" FLAVOR_NAME,
                                               .fn = read_section_quiescent});
    vck_bench_register(&(struct vck_bench_def){
        .name = "rcu/synchronize/" FLAVOR_NAME, .fn = synchronize, .real_time = true});
}
