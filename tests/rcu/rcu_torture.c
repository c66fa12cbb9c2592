/*
 * rcu-torture: the RCU layer against its contract, in the manner of Linux's rcutorture.
 *
 * One updater keeps replacing the published object. A replaced object's "age" counts the grace
 * periods that have ended since it was unpublished: 1 once it is replaced, +1 after each grace
 * period, and at PIPE_LEN it is poisoned and quarantined (really freed later, so a late reader
 * finds poison rather than reused memory). Readers dereference the current object, linger a
 * random while, and record its age in the "pipe" histogram. A reader that got the object before
 * it was replaced holds up the first grace period after, so it can see age 0 or 1 and nothing
 * older: anything past the second bucket, or any poison, is an RCU failure.
 *
 * The updater alternates between two ways of waiting: vck_rcu_synchronize() (every object in
 * the removed list ages once per call), and vck_rcu_call() (each callback ages its object and
 * queues itself again). Each switch back drains the callbacks with vck_rcu_barrier(), which must
 * finish the at most PIPE_LEN generations in flight within PIPE_LEN + 1 calls.
 *
 * The object's magic is a plain field, written before publication and at poisoning: under
 * ThreadSanitizer the run is also a check that the layer's annotations order those writes
 * against every reader.
 *
 * Exit status: 0 pass, 1 RCU errors or too little progress, 2 bad command line.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vcpukit/rcu.h>

#include "stress.h"

enum {
    PIPE_LEN = 10,
    MAX_READERS = 64,
    QUARANTINE = 4096,  /* poisoned objects kept before the real free */
    MODE_SWITCH = 256,  /* updates between synchronize and call modes */
    MAX_PENDING = 2048, /* call mode: objects in flight before the updater waits */
};

static const uint64_t MAGIC_LIVE = 0x7ca1ab1eb0a710adULL;
static const uint64_t MAGIC_DEAD = 0xdeaddeaddeaddeadULL;

struct torture;

struct torture_obj {
    uint64_t magic; /* plain: see the file comment */
    uint64_t id;
    uint64_t check; /* ~id while live */
    unsigned age;   /* atomic: the updater or the callback thread ages, readers observe */
    struct torture *owner;
    struct vck_rcu_head rcu;
};

struct reader {
    pthread_t thread;
    struct torture *t;
    uint64_t rng;
    uint64_t reads;
    uint64_t poisoned;
    uint64_t pipe[PIPE_LEN + 1];
};

struct torture {
    struct torture_obj *current; /* RCU-published */
    atomic_bool stop;
    atomic_bool updater_done;
    uint64_t next_id;
    uint64_t rng;

    uint64_t synchronizes;
    uint64_t barriers;
    uint64_t barrier_errors;
    atomic_uint_fast64_t callbacks;
    atomic_uint_fast64_t pending; /* objects still owned by callbacks */
    atomic_uint_fast64_t allocated, freed;

    pthread_mutex_t quarantine_lock;
    struct torture_obj *quarantine[QUARANTINE];
    size_t quarantine_next;
};

static struct torture_obj *obj_new(struct torture *t)
{
    struct torture_obj *o = malloc(sizeof(*o));
    if (!o) {
        fprintf(stderr, "rcu-torture: out of memory\n");
        exit(1);
    }
    o->id = t->next_id++;
    o->check = ~o->id;
    o->magic = MAGIC_LIVE;
    o->owner = t;
    __atomic_store_n(&o->age, 0, __ATOMIC_RELAXED);
    atomic_fetch_add_explicit(&t->allocated, 1, memory_order_relaxed);
    return o;
}

/* Poison a fully aged object and park it; free the oldest parked one. Any thread. */
static void obj_retire(struct torture_obj *o)
{
    struct torture *t = o->owner;
    o->magic = MAGIC_DEAD;
    o->check = 0;
    pthread_mutex_lock(&t->quarantine_lock);
    struct torture_obj *evicted = t->quarantine[t->quarantine_next];
    t->quarantine[t->quarantine_next] = o;
    t->quarantine_next = (t->quarantine_next + 1) % QUARANTINE;
    pthread_mutex_unlock(&t->quarantine_lock);
    if (evicted) {
        free(evicted);
        atomic_fetch_add_explicit(&t->freed, 1, memory_order_relaxed);
    }
}

/* Ages one object by one grace period; returns true when it reached the end of the pipe. */
static bool obj_age(struct torture_obj *o)
{
    unsigned age = __atomic_add_fetch(&o->age, 1, __ATOMIC_RELAXED);
    if (age < PIPE_LEN)
        return false;
    obj_retire(o);
    return true;
}

static void age_callback(struct vck_rcu_head *head)
{
    struct torture_obj *o = caa_container_of(head, struct torture_obj, rcu);
    struct torture *t = o->owner;
    atomic_fetch_add_explicit(&t->callbacks, 1, memory_order_relaxed);
    if (obj_age(o))
        atomic_fetch_sub_explicit(&t->pending, 1, memory_order_relaxed);
    else
        vck_rcu_call(&o->rcu, age_callback);
}

static void reader_linger(struct reader *r)
{
    uint64_t x = vck_rand(&r->rng);
    if ((x & 3) == 0) {
        for (uint64_t spin = (x >> 8) & 1023; spin; spin--)
            __asm__ volatile("" ::: "memory");
    } else if ((x & 0xfff) == 1) {
        usleep(20);
    }
}

static bool obj_looks_live(const struct torture_obj *o)
{
    return o->magic == MAGIC_LIVE && o->check == ~o->id;
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    struct torture *t = r->t;

    vck_rcu_register_thread();
    while (!atomic_load_explicit(&t->stop, memory_order_relaxed)) {
        vck_rcu_read_lock();
        struct torture_obj *o = vck_rcu_dereference(t->current);
        bool nested = (vck_rand(&r->rng) & 7) == 0;
        if (nested) {
            vck_rcu_read_lock();
            struct torture_obj *inner = vck_rcu_dereference(t->current);
            if (!obj_looks_live(inner))
                r->poisoned++;
        }
        if (!obj_looks_live(o))
            r->poisoned++;
        reader_linger(r);
        unsigned age = __atomic_load_n(&o->age, __ATOMIC_RELAXED);
        if (!obj_looks_live(o))
            r->poisoned++;
        if (nested)
            vck_rcu_read_unlock();
        vck_rcu_read_unlock();

        r->pipe[age < PIPE_LEN ? age : PIPE_LEN]++;
        if ((++r->reads & 255) == 0)
            vck_rcu_quiescent_state();
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* Synchronize mode: one grace period ages every object in the removed list. */
static void age_removed(struct torture *t, struct torture_obj **removed, size_t *n_removed)
{
    vck_rcu_synchronize();
    t->synchronizes++;
    size_t kept = 0;
    for (size_t i = 0; i < *n_removed; i++)
        if (!obj_age(removed[i]))
            removed[kept++] = removed[i];
    *n_removed = kept;
}

/* Drain every callback generation; each barrier must finish at least one. */
static void drain_callbacks(struct torture *t)
{
    unsigned rounds = 0;
    while (atomic_load_explicit(&t->pending, memory_order_relaxed) != 0) {
        if (++rounds > PIPE_LEN + 1) {
            t->barrier_errors++;
            fprintf(stderr, "rcu-torture: %u barriers left %lu objects pending\n", rounds - 1,
                    (unsigned long)atomic_load(&t->pending));
            /* Wait it out so that teardown stays safe, but the run has failed. */
            while (atomic_load_explicit(&t->pending, memory_order_relaxed) != 0)
                vck_rcu_barrier();
            break;
        }
        vck_rcu_barrier();
        t->barriers++;
    }
}

static void *updater_main(void *arg)
{
    struct torture *t = arg;
    struct torture_obj *removed[PIPE_LEN + 1];
    size_t n_removed = 0;

    vck_rcu_register_thread();
    vck_rcu_thread_offline(); /* an updater is no reader; qsbr must not wait for it */
    for (uint64_t update = 0; !atomic_load_explicit(&t->stop, memory_order_relaxed); update++) {
        bool call_mode = (update / MODE_SWITCH) & 1;
        if (!call_mode && update % MODE_SWITCH == 0 && update)
            drain_callbacks(t);

        struct torture_obj *old = t->current;
        vck_rcu_assign_pointer(t->current, obj_new(t));
        __atomic_store_n(&old->age, 1, __ATOMIC_RELAXED);

        if (!call_mode) {
            removed[n_removed++] = old;
            age_removed(t, removed, &n_removed);
            continue;
        }
        atomic_fetch_add_explicit(&t->pending, 1, memory_order_relaxed);
        vck_rcu_thread_online();
        vck_rcu_call(&old->rcu, age_callback);
        vck_rcu_thread_offline();
        if (atomic_load_explicit(&t->pending, memory_order_relaxed) > MAX_PENDING) {
            vck_rcu_barrier();
            t->barriers++;
        }
        /* Occasionally let readers catch the updater between updates. */
        if ((vck_rand(&t->rng) & 63) == 0)
            sched_yield();
    }
    /* Finish every object still in flight so the accounting below is exact. */
    while (n_removed)
        age_removed(t, removed, &n_removed);
    drain_callbacks(t);
    vck_rcu_thread_online();
    vck_rcu_unregister_thread();
    atomic_store(&t->updater_done, true);
    return NULL;
}

int main(int argc, char **argv)
{
    struct vck_stress_args args = {.duration = 2.0, .threads = 2};
    vck_stress_parse(argc, argv, &args, "rcu-torture");
    if (args.threads > MAX_READERS) {
        fprintf(stderr, "rcu-torture: at most %d readers\n", MAX_READERS);
        return 2;
    }

    static struct torture t;
    t.rng = args.seed;
    pthread_mutex_init(&t.quarantine_lock, NULL);
    t.current = obj_new(&t);

    static struct reader readers[MAX_READERS];
    for (int i = 0; i < args.threads; i++) {
        readers[i].t = &t;
        readers[i].rng = args.seed * 31 + (uint64_t)i + 1;
        pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]);
    }
    pthread_t updater;
    double start = vck_now();
    pthread_create(&updater, NULL, updater_main, &t);

    struct timespec pause = {.tv_sec = (time_t)args.duration,
                             .tv_nsec =
                                 (long)((args.duration - (double)(time_t)args.duration) * 1e9)};
    nanosleep(&pause, NULL);
    atomic_store(&t.stop, true);

    /* A grace period that never ends is a failure too, not a hang: give it 60 seconds. */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    for (int i = 0; i < args.threads; i++)
        if (pthread_timedjoin_np(readers[i].thread, NULL, &deadline) != 0) {
            printf("rcu-torture: FAIL a reader is stuck seed=%llu\n",
                   (unsigned long long)args.seed);
            return 1;
        }
    if (pthread_timedjoin_np(updater, NULL, &deadline) != 0) {
        printf("rcu-torture: FAIL the updater is stuck in a grace period seed=%llu\n",
               (unsigned long long)args.seed);
        return 1;
    }
    double elapsed = vck_now() - start;

    uint64_t reads = 0, poisoned = 0, too_old = 0, pipe[PIPE_LEN + 1] = {0};
    for (int i = 0; i < args.threads; i++) {
        reads += readers[i].reads;
        poisoned += readers[i].poisoned;
        for (int b = 0; b <= PIPE_LEN; b++)
            pipe[b] += readers[i].pipe[b];
    }
    for (int b = 2; b <= PIPE_LEN; b++)
        too_old += pipe[b];

    /* Every object but the current one went through the whole pipe. */
    free(t.current);
    uint64_t unpoisoned = 0;
    for (size_t i = 0; i < QUARANTINE; i++) {
        if (t.quarantine[i]) {
            if (t.quarantine[i]->magic != MAGIC_DEAD)
                unpoisoned++;
            free(t.quarantine[i]);
            atomic_fetch_add(&t.freed, 1);
        }
    }
    uint64_t allocated = atomic_load(&t.allocated), freed = atomic_load(&t.freed) + 1;
    uint64_t callbacks = atomic_load(&t.callbacks);
    uint64_t errors = poisoned + too_old + t.barrier_errors + unpoisoned + (allocated != freed);

    /* Progress floors: an idle or starved run must not pass. Set at about a twentieth of what a
     * ThreadSanitizer build does on two cores. */
    uint64_t min_gp = (uint64_t)(50 * args.duration), min_reads = (uint64_t)(20000 * args.duration);
    bool progress = t.synchronizes + callbacks >= min_gp && t.synchronizes > 0 && callbacks > 0 &&
                    reads >= min_reads;

    printf("rcu-torture: %s grace_periods=%llu (synchronize=%llu callbacks=%llu barriers=%llu) "
           "reads=%llu errors=%llu (poisoned=%llu too_old=%llu barrier=%llu accounting=%llu) "
           "pipe=",
           errors == 0 && progress ? "PASS" : "FAIL",
           (unsigned long long)(t.synchronizes + callbacks), (unsigned long long)t.synchronizes,
           (unsigned long long)callbacks, (unsigned long long)t.barriers, (unsigned long long)reads,
           (unsigned long long)errors, (unsigned long long)poisoned, (unsigned long long)too_old,
           (unsigned long long)t.barrier_errors,
           (unsigned long long)(unpoisoned + (allocated != freed)));
    for (int b = 0; b <= PIPE_LEN; b++)
        printf("%s%llu", b ? "," : "", (unsigned long long)pipe[b]);
    printf(" flavor=%s readers=%d duration=%.2fs seed=%llu\n", vck_rcu_flavor_name(), args.threads,
           elapsed, (unsigned long long)args.seed);
    if (!progress)
        printf("rcu-torture: too little progress: need %llu grace periods (both kinds) and %llu "
               "reads\n",
               (unsigned long long)min_gp, (unsigned long long)min_reads);
    return errors == 0 && progress ? 0 : 1;
}
