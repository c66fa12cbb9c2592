/*
 * vck_rcu_free() must free every object once a grace period has passed. The check is
 * LeakSanitizer's: in the asan preset an object left unfreed after vck_rcu_barrier() is reported
 * at exit and fails the test. Elsewhere the test still checks that nothing crashes and that
 * objects queued from several threads, inside and outside read sections, are all taken.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <vcpukit/rcu.h>

enum { THREADS = 2, PER_THREAD = 20000 };

struct node {
    unsigned long payload[6];
    struct vck_rcu_head rcu;
};

static void *retire_many(void *arg)
{
    (void)arg;
    vck_rcu_register_thread();
    for (int i = 0; i < PER_THREAD; i++) {
        struct node *n = malloc(sizeof(*n));
        if (!n)
            abort();
        n->payload[0] = (unsigned long)i;
        if (i & 1) {
            vck_rcu_read_lock();
            vck_rcu_free(n, rcu);
            vck_rcu_read_unlock();
        } else {
            vck_rcu_free(n, rcu);
        }
    }
    vck_rcu_unregister_thread();
    return NULL;
}

int main(void)
{
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, retire_many, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    vck_rcu_barrier();
    printf("rcu-free-deferred: queued %d objects from %d threads\n", THREADS * PER_THREAD, THREADS);
    return 0;
}
