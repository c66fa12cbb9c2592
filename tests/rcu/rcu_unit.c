/*
 * Unit tests of the RCU layer's contract: what a grace period waits for, when callbacks run,
 * what barrier waits for, nesting. Timing is used only to give a wrong implementation the chance
 * to return early (a reader holds its section for 100 ms); no test passes by being fast.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <vcpukit/rcu.h>

static const useconds_t HOLD_US = 100 * 1000;

struct held_reader {
    pthread_t thread;
    atomic_bool inside;   /* set once the section is entered */
    atomic_bool finished; /* set just before the section is left */
};

static void *held_reader_main(void *arg)
{
    struct held_reader *r = arg;
    vck_rcu_register_thread();
    vck_rcu_read_lock();
    atomic_store(&r->inside, true);
    usleep(HOLD_US);
    atomic_store(&r->finished, true);
    vck_rcu_read_unlock();
    vck_rcu_unregister_thread();
    return NULL;
}

static void held_reader_start(struct held_reader *r)
{
    atomic_init(&r->inside, false);
    atomic_init(&r->finished, false);
    cr_assert_eq(pthread_create(&r->thread, NULL, held_reader_main, r), 0);
    while (!atomic_load(&r->inside))
        usleep(100);
}

Test(rcu, dereference_sees_what_was_assigned)
{
    static int a = 1, b = 2;
    int *slot = NULL;
    vck_rcu_register_thread();
    vck_rcu_assign_pointer(slot, &a);
    vck_rcu_read_lock();
    cr_expect_eq(vck_rcu_dereference(slot), &a);
    vck_rcu_read_unlock();
    cr_expect_eq(vck_rcu_xchg_pointer(slot, &b), &a);
    cr_expect_eq(vck_rcu_dereference(slot), &b);
    vck_rcu_unregister_thread();
}

Test(rcu, synchronize_waits_for_a_running_reader)
{
    struct held_reader r;
    held_reader_start(&r);
    vck_rcu_synchronize();
    cr_expect(atomic_load(&r.finished), "synchronize returned while a reader was in its section");
    pthread_join(r.thread, NULL);
}

Test(rcu, synchronize_ignores_unregistered_and_idle_threads)
{
    /* Only readers in a section may delay a grace period: with none, it completes. */
    for (int i = 0; i < 10; i++)
        vck_rcu_synchronize();
}

static atomic_int callbacks_run;
static atomic_bool reader_finished_at_callback;
static struct held_reader *watched_reader;

struct counted {
    int value;
    struct vck_rcu_head rcu;
};

static void counted_callback(struct vck_rcu_head *head)
{
    struct counted *c = caa_container_of(head, struct counted, rcu);
    if (watched_reader)
        atomic_store(&reader_finished_at_callback, atomic_load(&watched_reader->finished));
    atomic_fetch_add(&callbacks_run, c->value);
    free(c);
}

static struct counted *counted_new(int value)
{
    struct counted *c = malloc(sizeof(*c));
    cr_assert_not_null(c);
    c->value = value;
    return c;
}

Test(rcu, callback_runs_after_the_running_reader_leaves)
{
    struct held_reader r;
    atomic_store(&callbacks_run, 0);
    watched_reader = &r;
    held_reader_start(&r);
    vck_rcu_register_thread();
    struct counted *c = counted_new(1);
    vck_rcu_call(&c->rcu, counted_callback);
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&callbacks_run), 1, "barrier returned before the callback ran");
    cr_expect(atomic_load(&reader_finished_at_callback),
              "callback ran while a reader that predates it was in its section");
    vck_rcu_unregister_thread();
    pthread_join(r.thread, NULL);
    watched_reader = NULL;
}

Test(rcu, barrier_waits_for_every_queued_callback)
{
    enum { N = 5000 };
    atomic_store(&callbacks_run, 0);
    vck_rcu_register_thread();
    for (int i = 0; i < N; i++) {
        struct counted *c = counted_new(1);
        vck_rcu_call(&c->rcu, counted_callback);
    }
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&callbacks_run), N);
    vck_rcu_unregister_thread();
}

Test(rcu, callback_may_be_queued_inside_a_read_section)
{
    atomic_store(&callbacks_run, 0);
    vck_rcu_register_thread();
    vck_rcu_read_lock();
    struct counted *c = counted_new(7);
    vck_rcu_call(&c->rcu, counted_callback);
    vck_rcu_read_unlock();
    vck_rcu_barrier();
    cr_expect_eq(atomic_load(&callbacks_run), 7);
    vck_rcu_unregister_thread();
}

Test(rcu, sections_nest)
{
    vck_rcu_register_thread();
    vck_rcu_thread_online();
    vck_rcu_read_lock();
    vck_rcu_read_lock();
    cr_expect(vck_rcu_read_ongoing());
    vck_rcu_read_unlock();
    cr_expect(vck_rcu_read_ongoing(), "an inner unlock ended the outer section");
    vck_rcu_read_unlock();
#if !defined(VCK_RCU_FLAVOR_QSBR)
    cr_expect(!vck_rcu_read_ongoing());
#endif
    vck_rcu_unregister_thread();
}

static void *nested_reader_main(void *arg)
{
    struct held_reader *r = arg;
    vck_rcu_register_thread();
    vck_rcu_read_lock();
    vck_rcu_read_lock();
    vck_rcu_read_unlock(); /* still inside the outer section */
    atomic_store(&r->inside, true);
    usleep(HOLD_US);
    atomic_store(&r->finished, true);
    vck_rcu_read_unlock();
    vck_rcu_unregister_thread();
    return NULL;
}

Test(rcu, grace_period_waits_for_the_outer_section_of_a_nest)
{
    struct held_reader r;
    atomic_init(&r.inside, false);
    atomic_init(&r.finished, false);
    cr_assert_eq(pthread_create(&r.thread, NULL, nested_reader_main, &r), 0);
    while (!atomic_load(&r.inside))
        usleep(100);
    vck_rcu_synchronize();
    cr_expect(atomic_load(&r.finished), "synchronize returned inside an outer section");
    pthread_join(r.thread, NULL);
}

Test(rcu, flavor_name_matches_the_configuration)
{
#if defined(VCK_RCU_FLAVOR_QSBR)
    cr_expect_str_eq(vck_rcu_flavor_name(), "qsbr");
#elif defined(VCK_RCU_FLAVOR_MB)
    cr_expect_str_eq(vck_rcu_flavor_name(), "mb");
#else
    cr_expect_str_eq(vck_rcu_flavor_name(), "memb");
#endif
}
