/*
 * qht-stress: lookups, inserts and removes from several threads while another thread resizes,
 * iterates and takes statistics, with every answer checked.
 *
 * Keys are partitioned: worker t owns the keys k with k % workers == t and is their only writer,
 * so it knows at every moment whether each of its keys is in the table, and a lookup of its own
 * key has exactly one right answer whatever the other threads do. Workers also look up the other
 * workers' keys (any answer, but a hit must be a well-formed object) and a set of read-only keys
 * inserted before the start and never removed, which every lookup must find. Objects carry
 * {key, ~key, hash}, checked on every hit and by the iterating thread. Groups of four keys share
 * one full 32-bit hash, so duplicate detection really depends on the compare function, and the
 * resizer keeps moving the table between 1 and thousands of buckets, so chains are sometimes
 * long and removals keep moving entries within them.
 *
 * After the run, an audit compares the table with what the workers believe, key by key, plus
 * entry counts from vck_qht_iter() and vck_qht_statistics().
 *
 * Exit status: 0 pass, 1 wrong answers or too little progress, 2 bad command line.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vcpukit/qht.h>

#include "stress.h"

enum {
    KEYS_PER_WORKER = 4096,
    READ_ONLY_KEYS = 512,
    MAX_WORKERS = 64,
};

struct obj {
    uint64_t key;
    uint64_t inverse;
    uint32_t hash;
    struct vck_rcu_head rcu;
};

/* Read-only keys live above every worker key. */
static uint64_t read_only_key(unsigned i)
{
    return (uint64_t)MAX_WORKERS * KEYS_PER_WORKER + i;
}

/*
 * The hot chain: the first HOT_PER_WORKER keys of every worker and the first HOT_READ_ONLY
 * read-only keys share one full hash, so they share one long chain at every table size. Workers
 * churn their hot keys and everyone looks hot keys up often: a removal there moves the chain's
 * last entry, often a read-only key, under concurrent walks, which is where a lookup that trusts
 * a torn walk goes wrong.
 */
enum { HOT_PER_WORKER = 8, HOT_READ_ONLY = 24 };

/* Set once before the threads start: worker keys interleave by the number of workers. */
static unsigned n_workers = 1;

static bool key_is_hot(uint64_t key)
{
    uint64_t first_read_only = (uint64_t)MAX_WORKERS * KEYS_PER_WORKER;
    if (key >= first_read_only)
        return key - first_read_only < HOT_READ_ONLY;
    return key / n_workers < HOT_PER_WORKER;
}

static uint32_t key_hash(uint64_t key)
{
    /* Elsewhere, groups of four keys share a hash, so duplicates are told apart by compare. */
    return key_is_hot(key) ? vck_qht_hash64(~0ull) : vck_qht_hash64(key / 4);
}

static bool obj_equal(const void *a, const void *b)
{
    return ((const struct obj *)a)->key == ((const struct obj *)b)->key;
}

static bool obj_matches_key(const void *obj, const void *userp)
{
    return ((const struct obj *)obj)->key == *(const uint64_t *)userp;
}

static bool obj_well_formed(const struct obj *o, uint64_t key)
{
    return o->key == key && o->inverse == ~key && o->hash == key_hash(key);
}

static struct obj *obj_new(uint64_t key)
{
    struct obj *o = malloc(sizeof(*o));
    if (!o) {
        fprintf(stderr, "qht-stress: out of memory\n");
        exit(1);
    }
    o->key = key;
    o->inverse = ~key;
    o->hash = key_hash(key);
    return o;
}

struct shared {
    struct vck_qht ht;
    atomic_bool stop;
    int workers;
};

struct worker {
    pthread_t thread;
    struct shared *s;
    int id;
    uint64_t rng;
    struct obj *mine[KEYS_PER_WORKER]; /* my objects in the table; NULL when absent */
    uint64_t lookups, inserts, removes, misses_expected, errors;
};

struct resizer {
    pthread_t thread;
    struct shared *s;
    uint64_t rng;
    uint64_t resizes, iterations, errors;
};

static uint64_t worker_key(const struct worker *w, unsigned i)
{
    return (uint64_t)i * (uint64_t)w->s->workers + (uint64_t)w->id;
}

static void report(uint64_t *errors, const char *what, uint64_t key)
{
    if ((*errors)++ < 10)
        fprintf(stderr, "qht-stress: %s (key %llu)\n", what, (unsigned long long)key);
}

static struct obj *lookup(struct shared *s, uint64_t key)
{
    return vck_qht_lookup_custom(&s->ht, &key, key_hash(key), obj_matches_key);
}

static void worker_lookup_own(struct worker *w, unsigned i)
{
    uint64_t key = worker_key(w, i);
    vck_rcu_read_lock();
    struct obj *o = lookup(w->s, key);
    if (o != w->mine[i])
        report(&w->errors,
               o ? "lookup found a key its owner removed" : "lookup missed a present key", key);
    else if (o && !obj_well_formed(o, key))
        report(&w->errors, "lookup returned a corrupt object", key);
    vck_rcu_read_unlock();
}

static void worker_lookup_other(struct worker *w)
{
    struct shared *s = w->s;
    uint64_t key;
    bool must_find = vck_rand(&w->rng) & 1;
    if (must_find)
        key = read_only_key((unsigned)vck_rand_below(
            &w->rng, (vck_rand(&w->rng) & 1) ? HOT_READ_ONLY : READ_ONLY_KEYS));
    else
        key = vck_rand_below(&w->rng, (uint64_t)KEYS_PER_WORKER * (uint64_t)s->workers);
    vck_rcu_read_lock();
    struct obj *o = lookup(s, key);
    if (o && !obj_well_formed(o, key))
        report(&w->errors, "lookup returned a corrupt object", key);
    else if (must_find && !o)
        report(&w->errors, "lookup missed a read-only key", key);
    vck_rcu_read_unlock();
}

static void worker_insert(struct worker *w, unsigned i)
{
    uint64_t key = worker_key(w, i);
    struct obj *o = obj_new(key);
    void *existing = NULL;
    bool inserted = vck_qht_insert(&w->s->ht, o, o->hash, &existing);
    if (inserted) {
        if (w->mine[i])
            report(&w->errors, "insert added a duplicate", key);
        w->mine[i] = o;
        return;
    }
    if (existing != w->mine[i] || !existing)
        report(&w->errors, "insert returned the wrong existing object", key);
    free(o); /* never published */
}

static void worker_remove(struct worker *w, unsigned i)
{
    uint64_t key = worker_key(w, i);
    struct obj *o = w->mine[i];
    if (!o) {
        /* An equal-looking object that was never inserted is not removed: identity counts. */
        struct obj impostor = {.key = key, .inverse = ~key, .hash = key_hash(key)};
        if (vck_qht_remove(&w->s->ht, &impostor, impostor.hash))
            report(&w->errors, "remove took an object that was never inserted", key);
        return;
    }
    if (!vck_qht_remove(&w->s->ht, o, o->hash)) {
        report(&w->errors, "remove did not find a present object", key);
        return;
    }
    w->mine[i] = NULL;
    vck_rcu_free(o, rcu);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    vck_rcu_register_thread();
    while (!atomic_load_explicit(&w->s->stop, memory_order_relaxed)) {
        for (int n = 0; n < 64; n++) {
            unsigned i = (unsigned)vck_rand_below(
                &w->rng, (vck_rand(&w->rng) & 3) ? KEYS_PER_WORKER : HOT_PER_WORKER);
            uint64_t r = vck_rand_below(&w->rng, 100);
            if (r < 30) {
                worker_lookup_own(w, i);
            } else if (r < 60) {
                worker_lookup_other(w);
            } else if (r < 80) {
                worker_insert(w, i);
                w->inserts++;
                continue;
            } else {
                worker_remove(w, i);
                w->removes++;
                continue;
            }
            w->lookups++;
        }
        vck_rcu_quiescent_state();
    }
    vck_rcu_unregister_thread();
    return NULL;
}

struct iter_check {
    uint64_t entries, errors;
};

static void check_entry(void *p, uint32_t hash, void *userp)
{
    struct iter_check *c = userp;
    struct obj *o = p;
    c->entries++;
    if (hash != o->hash || !obj_well_formed(o, o->key))
        report(&c->errors, "iteration met a corrupt object", o->key);
}

static bool keep_entry(void *p, uint32_t hash, void *userp)
{
    check_entry(p, hash, userp);
    return false;
}

static void *resizer_main(void *arg)
{
    /* Mostly dense: long chains are where removals move entries under concurrent walks. */
    static const size_t sizes[] = {0, 4, 16, 64, 256, 1024, 16384};
    struct resizer *r = arg;
    vck_rcu_register_thread();
    while (!atomic_load_explicit(&r->s->stop, memory_order_relaxed)) {
        size_t n = sizes[vck_rand_below(&r->rng, sizeof(sizes) / sizeof(sizes[0]))];
        if (vck_qht_resize(&r->s->ht, n))
            r->resizes++;
        uint64_t what = vck_rand_below(&r->rng, 8);
        if (what == 0) {
            struct iter_check c = {0};
            vck_qht_iter(&r->s->ht, check_entry, &c);
            r->errors += c.errors;
            r->iterations++;
        } else if (what == 1) {
            struct iter_check c = {0};
            vck_qht_iter_remove(&r->s->ht, keep_entry, &c);
            r->errors += c.errors;
            r->iterations++;
        } else if (what == 2) {
            struct vck_qht_stats st;
            vck_qht_statistics(&r->s->ht, &st);
        }
        usleep((useconds_t)vck_rand_below(&r->rng, 2000));
    }
    vck_rcu_unregister_thread();
    return NULL;
}

/* After the run, single-threaded: the table must be exactly what the workers believe. */
static uint64_t audit(struct shared *s, struct worker *workers, uint64_t *present)
{
    uint64_t errors = 0;
    *present = READ_ONLY_KEYS;
    vck_rcu_read_lock();
    for (int t = 0; t < s->workers; t++) {
        for (unsigned i = 0; i < KEYS_PER_WORKER; i++) {
            uint64_t key = worker_key(&workers[t], i);
            struct obj *o = lookup(s, key);
            if (o != workers[t].mine[i])
                report(&errors, "audit: table and owner disagree", key);
            *present += workers[t].mine[i] != NULL;
        }
    }
    for (unsigned i = 0; i < READ_ONLY_KEYS; i++)
        if (!lookup(s, read_only_key(i)))
            report(&errors, "audit: read-only key missing", read_only_key(i));
    vck_rcu_read_unlock();

    struct iter_check c = {0};
    vck_qht_iter(&s->ht, check_entry, &c);
    errors += c.errors;
    struct vck_qht_stats st;
    vck_qht_statistics(&s->ht, &st);
    if (c.entries != *present || st.entries != *present) {
        fprintf(stderr, "qht-stress: audit: %llu keys present, iteration saw %llu, stats %zu\n",
                (unsigned long long)*present, (unsigned long long)c.entries, st.entries);
        errors++;
    }
    return errors;
}

static bool free_all(void *p, uint32_t hash, void *userp)
{
    (void)hash;
    (void)userp;
    free(p);
    return true;
}

int main(int argc, char **argv)
{
    struct vck_stress_args args = {.duration = 2.0, .threads = 2};
    vck_stress_parse(argc, argv, &args, "qht-stress");
    if (args.threads > MAX_WORKERS) {
        fprintf(stderr, "qht-stress: at most %d worker threads\n", MAX_WORKERS);
        return 2;
    }

    vck_rcu_register_thread();
    static struct shared s;
    s.workers = args.threads;
    n_workers = (unsigned)args.threads;
    /* Auto-resize on odd seeds, so both growth paths run across CI runs. */
    unsigned flags = (args.seed & 1) ? VCK_QHT_AUTO_RESIZE : 0;
    vck_qht_init(&s.ht, obj_equal, 16, flags);
    for (unsigned i = 0; i < READ_ONLY_KEYS; i++) {
        struct obj *o = obj_new(read_only_key(i));
        if (!vck_qht_insert(&s.ht, o, o->hash, NULL)) {
            fprintf(stderr, "qht-stress: FAIL inserting read-only keys\n");
            return 1;
        }
    }

    struct worker *workers = calloc((size_t)args.threads, sizeof(*workers));
    if (!workers)
        return 1;
    for (int t = 0; t < args.threads; t++) {
        workers[t].s = &s;
        workers[t].id = t;
        workers[t].rng = args.seed * 7919 + (uint64_t)t;
        pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]);
    }
    struct resizer resizer = {.s = &s, .rng = args.seed ^ 0x5eed};
    pthread_create(&resizer.thread, NULL, resizer_main, &resizer);

    double start = vck_now();
    vck_rcu_thread_offline();
    struct timespec pause = {.tv_sec = (time_t)args.duration,
                             .tv_nsec =
                                 (long)((args.duration - (double)(time_t)args.duration) * 1e9)};
    nanosleep(&pause, NULL);
    atomic_store(&s.stop, true);
    for (int t = 0; t < args.threads; t++)
        pthread_join(workers[t].thread, NULL);
    pthread_join(resizer.thread, NULL);
    vck_rcu_thread_online();
    double elapsed = vck_now() - start;

    uint64_t lookups = 0, inserts = 0, removes = 0, errors = resizer.errors, present;
    for (int t = 0; t < args.threads; t++) {
        lookups += workers[t].lookups;
        inserts += workers[t].inserts;
        removes += workers[t].removes;
        errors += workers[t].errors;
    }
    errors += audit(&s, workers, &present);

    /* Progress floors at about a twentieth of a ThreadSanitizer build on two cores. */
    uint64_t ops = lookups + inserts + removes;
    bool progress = ops >= (uint64_t)(20000 * args.duration) && resizer.resizes >= 2;
    bool pass = errors == 0 && progress;
    printf("qht-stress: %s ops=%llu (lookups=%llu inserts=%llu removes=%llu) resizes=%llu "
           "iterations=%llu present=%llu errors=%llu workers=%d auto_resize=%d duration=%.2fs "
           "seed=%llu\n",
           pass ? "PASS" : "FAIL", (unsigned long long)ops, (unsigned long long)lookups,
           (unsigned long long)inserts, (unsigned long long)removes,
           (unsigned long long)resizer.resizes, (unsigned long long)resizer.iterations,
           (unsigned long long)present, (unsigned long long)errors, args.threads,
           (flags & VCK_QHT_AUTO_RESIZE) != 0, elapsed, (unsigned long long)args.seed);
    if (!progress)
        printf("qht-stress: too little progress\n");

    vck_qht_iter_remove(&s.ht, free_all, NULL);
    vck_rcu_barrier();
    vck_qht_destroy(&s.ht);
    free(workers);
    vck_rcu_unregister_thread();
    return pass ? 0 : 1;
}
