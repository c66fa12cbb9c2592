/* Uses the installed kit's public headers and libraries only. */
#include <stdio.h>
#include <stdlib.h>

#include <vcpukit/rcu.h>

struct config {
    int value;
    struct vck_rcu_head rcu;
};

static struct config *current;

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "?";
    vck_rcu_register_thread();
    for (int i = 1; i <= 3; i++) {
        struct config *next = malloc(sizeof(*next));
        if (!next)
            return 1;
        next->value = i;
        struct config *old = vck_rcu_xchg_pointer(current, next);
        if (old)
            vck_rcu_free(old, rcu);
    }
    vck_rcu_read_lock();
    int seen = vck_rcu_dereference(current)->value;
    vck_rcu_read_unlock();
    vck_rcu_barrier();
    free(current);
    vck_rcu_unregister_thread();
    if (seen != 3)
        return 1;
    printf("consumer: %s ok (flavor %s)\n", how, vck_rcu_flavor_name());
    return 0;
}
