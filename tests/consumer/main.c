/* Uses the installed kit's public headers and libraries only. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <vcpukit/dispatch.h>
#include <vcpukit/harness.h>
#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>
#include <vcpukit/tbcache.h>

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
    bool ok =
        !vck_qht_insert(&ht, &entries[0], vck_qht_hash64(0), &existing) && existing == &entries[0];
    struct config key = {.value = 42};
    vck_rcu_read_lock();
    ok = ok && vck_qht_lookup(&ht, &key, vck_qht_hash64(42)) == &entries[42];
    vck_rcu_read_unlock();
    vck_qht_destroy(&ht);
    return ok;
}

/* A memory map with RAM, its page map, a read back; a TB cache; a one-hart machine. */
static bool other_modules_work(void)
{
    struct vck_memmap *mm = vck_memmap_new(NULL);
    struct vck_mr *root = vck_mr_new_container(mm, "root", VCK_MR_SIZE_FULL);
    struct vck_mr *ram = vck_mr_new_ram(mm, "ram", 4096);
    vck_mr_add_subregion(root, 0x1000, ram, 0);
    struct vck_as *as = vck_as_new(mm, "as", root);
    struct vck_dispatch *d = vck_dispatch_new(as, NULL);
    uint64_t v = 0;
    bool ok = vck_dispatch_store(d, 0x1008, 8, 0x1122334455667788ull) == VCK_MEM_OK &&
              vck_dispatch_load(d, 0x1008, 8, &v) == VCK_MEM_OK && v == 0x1122334455667788ull;
    vck_as_destroy(as);
    vck_mr_del_subregion(root, ram);
    vck_mr_destroy(ram);
    vck_mr_destroy(root);
    vck_memmap_free(mm);
    vck_dispatch_free(d);

    struct vck_tb_cache *c = vck_tb_cache_new(NULL);
    ok = ok && c && !vck_tb_page_has_code(c, 0x1000);
    vck_tb_cache_free(c);

    struct vck_machine *m =
        vck_machine_new(&(struct vck_machine_options){.harts = 1, .ram_size = 1u << 20});
    ok = ok && m;
    vck_machine_free(m);
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
    bool qht_ok = qht_works() && other_modules_work();
    vck_rcu_barrier();
    free(current);
    vck_rcu_unregister_thread();
    if (seen != 3 || !qht_ok)
        return 1;
    printf("consumer: %s ok (flavor %s)\n", how, vck_rcu_flavor_name());
    return 0;
}
