/* Uses the installed kit's public headers and libraries only. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>

struct config {
    int value;
    struct vck_rcu_head rcu;
};

static struct config *current;

static bool config_equal(const void *a, const void *b)
{
    return ((const struct config *)a)->value == ((const struct config *)b)->value;
}

/* The table finds what it was given, and refuses a duplicate. */
static bool qht_works(void)
{
    static struct config entries[100];
    struct vck_qht ht;
    vck_qht_init(&ht, config_equal, 0, VCK_QHT_AUTO_RESIZE);
    for (int i = 0; i < 100; i++) {
        entries[i].value = i;
        if (!vck_qht_insert(&ht, &entries[i], vck_qht_hash64((uint64_t)i), NULL))
            return false;
    }
    void *existing = NULL;
    bool ok = !vck_qht_insert(&ht, &entries[0], vck_qht_hash64(0), &existing) &&
              existing == &entries[0];
    struct config key = {.value = 42};
    vck_rcu_read_lock();
    ok = ok && vck_qht_lookup(&ht, &key, vck_qht_hash64(42)) == &entries[42];
    vck_rcu_read_unlock();
    vck_qht_destroy(&ht);
    return ok;
}

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
    bool qht_ok = qht_works();
    vck_rcu_barrier();
    free(current);
    vck_rcu_unregister_thread();
    if (seen != 3 || !qht_ok)
        return 1;
    printf("consumer: %s ok (flavor %s)\n", how, vck_rcu_flavor_name());
    return 0;
}
