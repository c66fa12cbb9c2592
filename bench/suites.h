/* The registration hooks of every benchmark file; vck_bench_register_all() calls them all. */
#ifndef VCK_BENCH_SUITES_H
#define VCK_BENCH_SUITES_H

#ifdef __cplusplus
extern "C" {
#endif

void vck_bench_register_all(void);

void vck_bench_register_rcu(void);
void vck_bench_register_rcu_flavor_memb(void);
void vck_bench_register_rcu_flavor_qsbr(void);
void vck_bench_register_rcu_flavor_mb(void);
void vck_bench_register_rcu_flavor_bp(void);
void vck_bench_register_qht(void);
void vck_bench_register_tbcache(void);
void vck_bench_register_flatview(void);
void vck_bench_register_dispatch(void);

#ifdef __cplusplus
}
#endif

#endif
