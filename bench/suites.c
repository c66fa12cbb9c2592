#include "suites.h"

void vck_bench_register_all(void)
{
    vck_bench_register_rcu();
    vck_bench_register_rcu_flavor_memb();
    vck_bench_register_rcu_flavor_qsbr();
    vck_bench_register_rcu_flavor_mb();
    vck_bench_register_rcu_flavor_bp();
    vck_bench_register_qht();
    vck_bench_register_tbcache();
    vck_bench_register_flatview();
    vck_bench_register_dispatch();
}
