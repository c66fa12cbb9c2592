/*
 * Unit and property tests of the qht contract (vcpukit/qht.h), single-threaded: what insert,
 * lookup and remove return, that collisions, resizes, resets and iteration neither lose nor
 * duplicate an entry, that the statistics add up, and that the provided hashes mix. What
 * concurrent readers and writers may observe is the stress tests' business.
 *
 * Objects carry {key, ~key} and every callback checks both, so a table that hands a callback a
 * stale or foreign pointer fails here instead of passing by luck. Removed objects are freed only
 * after a grace period (or after vck_qht_destroy), as the contract asks, which lets ASan catch a
 * table that still holds a pointer it claimed to have removed.
 *
 * The property test is deterministic per seed; each failure message names the seed, the run's
 * configuration and the operation index. VCK_QHT_SEED=<n> in the environment replaces the fixed
 * seeds (every configuration is run with it), for replaying a report or soaking with new seeds.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>

#include "stress.h"

struct obj {
    uint64_t key;
    uint64_t check; /* ~key while the object is alive */
};

static bool obj_alive(const struct obj *o)
{
    return o->check == ~o->key;
}

static unsigned long cmp_calls;

static bool obj_cmp(const void *a, const void *b)
{
    const struct obj *x = a, *y = b;
    cmp_calls++;
    cr_assert(obj_alive(x) && obj_alive(y),
              "compare was handed a dead or foreign object: {%" PRIx64 ", %" PRIx64 "} vs {%" PRIx64
              ", %" PRIx64 "}",
              x->key, x->check, y->key, y->check);
    return x->key == y->key;
}

static uint32_t hash_of(uint64_t key)
{
    return vck_qht_hash64(key);
}

/* An array of live objects with keys first_key, first_key + 1, ...; freed with free(). */
static struct obj *objs_new(size_t n, uint64_t first_key)
{
    struct obj *objs = calloc(n ? n : 1, sizeof(*objs));
    cr_assert_not_null(objs);
    for (size_t i = 0; i < n; i++) {
        objs[i].key = first_key + i;
        objs[i].check = ~objs[i].key;
    }
    return objs;
}

/* Looks @key up in its own read-side section; the result is only compared, never dereferenced. */
static const struct obj *find(const struct vck_qht *ht, uint64_t key, uint32_t hash)
{
    struct obj probe = {.key = key, .check = ~key};
    vck_rcu_read_lock();
    const struct obj *o = vck_qht_lookup(ht, &probe, hash);
    if (o)
        cr_assert(obj_alive(o) && o->key == key,
                  "lookup of key %" PRIu64 " returned {%" PRIx64 ", %" PRIx64 "}", key, o->key,
                  o->check);
    vck_rcu_read_unlock();
    return o;
}

static bool is_pow2(size_t x)
{
    return x && !(x & (x - 1));
}

/* The bucket count vck_qht_init() documents: max(1, next_pow2(n_elems / 2)). */
static size_t documented_head_buckets(size_t n_elems)
{
    size_t want = n_elems / 2, n = 1;
    while (n < want)
        n <<= 1;
    return n;
}

/*
 * The statistics, checked against every relation the field comments make unambiguous, so that
 * each test that looks at them also checks their consistency.
 */
static struct vck_qht_stats stats_of(struct vck_qht *ht)
{
    struct vck_qht_stats s;
    memset(&s, 0xa5, sizeof(s)); /* a field the table forgets to fill shows up as garbage */
    vck_qht_statistics(ht, &s);

    size_t weighted = 0, buckets = 0;
    for (size_t k = 0; k <= VCK_QHT_BUCKET_ENTRIES; k++) {
        weighted += k * s.occupancy_hist[k];
        buckets += s.occupancy_hist[k];
    }
    size_t chains = 0, chained_lower_bound = 0;
    for (size_t k = 0; k < VCK_QHT_CHAIN_HIST; k++) {
        chains += s.chain_hist[k];
        chained_lower_bound += k * s.chain_hist[k];
    }
    cr_assert(is_pow2(s.head_buckets), "head_buckets %zu is not a power of two", s.head_buckets);
    cr_assert(s.used_head_buckets <= s.head_buckets, "used_head_buckets %zu > head_buckets %zu",
              s.used_head_buckets, s.head_buckets);
    cr_assert(s.used_head_buckets <= s.entries, "used_head_buckets %zu > entries %zu",
              s.used_head_buckets, s.entries);
    cr_assert_eq(weighted, s.entries, "sum of k * occupancy_hist[k] is %zu, entries %zu", weighted,
                 s.entries);
    cr_assert_eq(buckets, s.head_buckets + s.overflow_buckets,
                 "occupancy_hist counts %zu buckets, head %zu + overflow %zu", buckets,
                 s.head_buckets, s.overflow_buckets);
    cr_assert_eq(chains, s.used_head_buckets, "chain_hist sums to %zu, used_head_buckets %zu",
                 chains, s.used_head_buckets);
    cr_assert(s.occupancy_hist[0] >= s.head_buckets - s.used_head_buckets,
              "occupancy_hist[0] %zu < %zu unused head buckets", s.occupancy_hist[0],
              s.head_buckets - s.used_head_buckets);
    cr_assert(chained_lower_bound <= s.overflow_buckets,
              "chain_hist implies at least %zu overflow buckets, overflow_buckets %zu",
              chained_lower_bound, s.overflow_buckets);
    return s;
}

static const size_t init_sizes[] = {0, 1, 4, 16, 1000, 5000};
static const unsigned flag_sets[] = {0, VCK_QHT_AUTO_RESIZE};

#define N_INIT_SIZES (sizeof(init_sizes) / sizeof(init_sizes[0]))
#define N_FLAG_SETS  (sizeof(flag_sets) / sizeof(flag_sets[0]))

typedef void config_body(size_t n_elems, unsigned flags);

static void for_each_config(config_body *body)
{
    vck_rcu_register_thread();
    for (size_t i = 0; i < N_INIT_SIZES; i++)
        for (size_t j = 0; j < N_FLAG_SETS; j++)
            body(init_sizes[i], flag_sets[j]);
    vck_rcu_unregister_thread();
}

Test(qht, init_allocates_the_documented_size_and_starts_empty)
{
    vck_rcu_register_thread();
    const size_t sizes[] = {0, 1, 3, 4, 5, 7, 8, 16, 17, 1000, 5000, 65536};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (size_t j = 0; j < N_FLAG_SETS; j++) {
            struct vck_qht ht;
            vck_qht_init(&ht, obj_cmp, sizes[i], flag_sets[j]);
            struct vck_qht_stats s = stats_of(&ht);
            cr_expect_eq(s.head_buckets, documented_head_buckets(sizes[i]),
                         "n_elems %zu: %zu head buckets, documented %zu", sizes[i], s.head_buckets,
                         documented_head_buckets(sizes[i]));
            cr_expect_eq(s.entries, 0);
            cr_expect_eq(s.used_head_buckets, 0);
            cr_expect_eq(s.occupancy_hist[0], s.head_buckets + s.overflow_buckets);
            for (uint64_t key = 0; key < 100; key++)
                cr_expect_null(find(&ht, key, hash_of(key)), "empty table found key %" PRIu64, key);
            vck_qht_destroy(&ht);
        }
    }
    vck_rcu_unregister_thread();
}

static void insert_then_lookup_body(size_t n_elems, unsigned flags)
{
    enum { N = 3000 };
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    for (size_t i = 0; i < N; i++) {
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(objs[i].key), NULL),
                  "n_elems %zu flags %u: insert of new key %zu refused", n_elems, flags, i);
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i],
                     "n_elems %zu flags %u: key %zu not found right after its insert", n_elems,
                     flags, i);
    }
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i],
                     "n_elems %zu flags %u: key %zu lost after %d inserts", n_elems, flags, i, N);
    for (uint64_t key = N; key < 2 * N; key++)
        cr_assert_null(find(&ht, key, hash_of(key)),
                       "n_elems %zu flags %u: absent key %" PRIu64 " found", n_elems, flags, key);
    cr_assert_eq(stats_of(&ht).entries, N);
    vck_qht_destroy(&ht);
    free(objs);
}

Test(qht, insert_then_lookup_finds_every_object_and_nothing_else)
{
    for_each_config(insert_then_lookup_body);
}

/* A lookup key of a different type from the stored objects, so swapped arguments are noticed. */
struct probe {
    uint64_t tag;
    uint64_t key;
};

static const uint64_t PROBE_TAG = 0x70726f6265ULL;
enum { CUSTOM_OFFSET = 1000000 };

static void check_custom_args(const void *obj, const void *userp)
{
    const struct obj *o = obj;
    const struct probe *p = userp;
    cr_assert(obj_alive(o), "custom match: first argument is not a stored object");
    cr_assert_eq(p->tag, PROBE_TAG, "custom match: second argument is not the caller's userp");
}

/* Matches what obj_cmp never would, so a hit proves the custom function was the one used. */
static bool match_shifted_key(const void *obj, const void *userp)
{
    check_custom_args(obj, userp);
    return ((const struct obj *)obj)->key + CUSTOM_OFFSET == ((const struct probe *)userp)->key;
}

static bool match_nothing(const void *obj, const void *userp)
{
    check_custom_args(obj, userp);
    return false;
}

static void lookup_custom_body(size_t n_elems, unsigned flags)
{
    enum { N = 1000 };
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    unsigned long cmp_before = cmp_calls;
    vck_rcu_read_lock();
    for (uint64_t key = 0; key < N; key++) {
        struct probe p = {.tag = PROBE_TAG, .key = key + CUSTOM_OFFSET};
        cr_assert_eq(vck_qht_lookup_custom(&ht, &p, hash_of(key), match_shifted_key), &objs[key],
                     "n_elems %zu flags %u: custom lookup of key %" PRIu64 " missed", n_elems,
                     flags, key);
        cr_assert_null(vck_qht_lookup_custom(&ht, &p, hash_of(key), match_nothing),
                       "n_elems %zu flags %u: custom lookup returned an object its match refused",
                       n_elems, flags);
        struct probe absent = {.tag = PROBE_TAG, .key = key + N + CUSTOM_OFFSET};
        cr_assert_null(vck_qht_lookup_custom(&ht, &absent, hash_of(key + N), match_shifted_key));
    }
    vck_rcu_read_unlock();
    cr_assert_eq(cmp_calls, cmp_before, "lookup_custom called the table's cmp");
    vck_qht_destroy(&ht);
    free(objs);
}

Test(qht, lookup_custom_matches_with_the_given_function)
{
    for_each_config(lookup_custom_body);
}

struct visit_log {
    size_t n_keys;
    uint64_t first_key;
    unsigned *visits;               /* per key */
    uint32_t (*hash)(uint64_t key); /* the hash each key was inserted under */
    const struct obj *objs;         /* when set, the object each key must be */
    size_t calls;
};

static void visit_log_init(struct visit_log *log, size_t n_keys, uint64_t first_key,
                           uint32_t (*hash)(uint64_t), const struct obj *objs)
{
    log->n_keys = n_keys;
    log->first_key = first_key;
    log->visits = calloc(n_keys ? n_keys : 1, sizeof(*log->visits));
    cr_assert_not_null(log->visits);
    log->hash = hash;
    log->objs = objs;
    log->calls = 0;
}

static void visit_log_record(struct visit_log *log, void *obj, uint32_t hash)
{
    const struct obj *o = obj;
    log->calls++;
    cr_assert(obj_alive(o), "iteration visited a dead or foreign object");
    cr_assert(o->key >= log->first_key && o->key - log->first_key < log->n_keys,
              "iteration visited key %" PRIu64 ", never inserted", o->key);
    size_t i = o->key - log->first_key;
    if (log->objs)
        cr_assert_eq(o, &log->objs[i], "iteration visited a different object for key %" PRIu64,
                     o->key);
    cr_assert_eq(hash, log->hash(o->key),
                 "iteration passed hash %08" PRIx32 " for key %" PRIu64
                 ", inserted under %08" PRIx32,
                 hash, o->key, log->hash(o->key));
    log->visits[i]++;
}

static void visit_into_log(void *obj, uint32_t hash, void *userp)
{
    visit_log_record(userp, obj, hash);
}

/* Runs vck_qht_iter and checks that exactly the keys with present[i] were seen, once each. */
static void check_iter_sees(struct vck_qht *ht, size_t n_keys, uint64_t first_key,
                            uint32_t (*hash)(uint64_t), const struct obj *objs, const bool *present)
{
    struct visit_log log;
    visit_log_init(&log, n_keys, first_key, hash, objs);
    vck_qht_iter(ht, visit_into_log, &log);
    for (size_t i = 0; i < n_keys; i++)
        cr_assert_eq(log.visits[i], present[i] ? 1u : 0u,
                     "iteration visited key %" PRIu64 " %u times, expected %d", first_key + i,
                     log.visits[i], present[i] ? 1 : 0);
    free(log.visits);
}

static void duplicate_insert_body(size_t n_elems, unsigned flags)
{
    enum { N = 500 };
    struct obj *objs = objs_new(N, 0);
    struct obj *twins = objs_new(N, 0); /* equal per cmp, different pointers */
    bool *all = malloc(N * sizeof(*all));
    cr_assert_not_null(all);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    for (size_t i = 0; i < N; i++) {
        all[i] = true;
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    }
    struct vck_qht_stats before = stats_of(&ht);
    for (size_t i = 0; i < N; i++) {
        void *existing = &twins[i];
        cr_assert_not(vck_qht_insert(&ht, &twins[i], hash_of(i), &existing),
                      "n_elems %zu flags %u: duplicate key %zu inserted", n_elems, flags, i);
        cr_assert_eq(existing, &objs[i],
                     "n_elems %zu flags %u: duplicate insert of key %zu reported %p, not %p",
                     n_elems, flags, i, existing, (void *)&objs[i]);
        cr_assert_not(vck_qht_insert(&ht, &twins[i], hash_of(i), NULL),
                      "n_elems %zu flags %u: duplicate key %zu inserted with existing == NULL",
                      n_elems, flags, i);
        existing = NULL;
        cr_assert_not(vck_qht_insert(&ht, &objs[i], hash_of(i), &existing),
                      "n_elems %zu flags %u: the same object was inserted twice", n_elems, flags);
        cr_assert_eq(existing, &objs[i]);
    }
    struct vck_qht_stats after = stats_of(&ht);
    cr_assert_eq(after.entries, N, "refused inserts changed the entry count to %zu", after.entries);
    cr_assert_eq(after.head_buckets, before.head_buckets, "refused inserts resized the table");
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i], "key %zu now finds the twin", i);
    check_iter_sees(&ht, N, 0, hash_of, objs, all);
    vck_qht_destroy(&ht);
    free(all);
    free(twins);
    free(objs);
}

Test(qht, duplicate_insert_is_refused_and_reports_the_existing_object)
{
    for_each_config(duplicate_insert_body);
}

/*
 * Same-hash chains. Every key of a chain test shares one hash, so all of them sit in one chain of
 * 4-entry buckets; removal at each position exercises whatever compaction the table does.
 */
struct chain {
    struct vck_qht ht;
    struct obj *objs;
    bool *present;
    size_t n;
    uint32_t hash;
    const char *what; /* the scenario, for failure messages */
    size_t n_elems;
    unsigned flags;
};

static void chain_check(struct chain *c)
{
    size_t count = 0;
    for (size_t i = 0; i < c->n; i++) {
        const struct obj *found = find(&c->ht, i, c->hash);
        cr_assert_eq(found, c->present[i] ? &c->objs[i] : NULL,
                     "%s (n %zu, hash %08" PRIx32 ", n_elems %zu, flags %u): key %zu should be %s",
                     c->what, c->n, c->hash, c->n_elems, c->flags, i,
                     c->present[i] ? "present" : "absent");
        count += c->present[i];
    }
    cr_assert_eq(stats_of(&c->ht).entries, count, "%s (n %zu): entries", c->what, c->n);
}

static void chain_setup(struct chain *c, size_t n, uint32_t hash, size_t n_elems, unsigned flags,
                        const char *what)
{
    c->objs = objs_new(n, 0);
    c->present = calloc(n, sizeof(*c->present));
    cr_assert_not_null(c->present);
    c->n = n;
    c->hash = hash;
    c->what = what;
    c->n_elems = n_elems;
    c->flags = flags;
    vck_qht_init(&c->ht, obj_cmp, n_elems, flags);
    for (size_t i = 0; i < n; i++) {
        cr_assert(vck_qht_insert(&c->ht, &c->objs[i], hash, NULL), "%s: insert %zu", what, i);
        c->present[i] = true;
    }
    chain_check(c);
}

static void chain_remove(struct chain *c, size_t i)
{
    cr_assert_eq(vck_qht_remove(&c->ht, &c->objs[i], c->hash), c->present[i],
                 "%s (n %zu, n_elems %zu, flags %u): remove of key %zu", c->what, c->n, c->n_elems,
                 c->flags, i);
    c->present[i] = false;
    chain_check(c);
}

static void chain_insert(struct chain *c, size_t i)
{
    cr_assert_eq(vck_qht_insert(&c->ht, &c->objs[i], c->hash, NULL), !c->present[i],
                 "%s (n %zu): insert of key %zu", c->what, c->n, i);
    c->present[i] = true;
    chain_check(c);
}

static void chain_teardown(struct chain *c)
{
    vck_qht_destroy(&c->ht);
    free(c->present);
    free(c->objs);
}

static void shuffle(size_t *a, size_t n, uint64_t *rng)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = vck_rand_below(rng, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static void same_hash_every_position_body(size_t n_elems, unsigned flags)
{
    /* Around each multiple of the bucket size: a full bucket, one spilling over, a chain end. */
    static const size_t lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 20, 21};
    static const uint32_t hashes[] = {0, UINT32_MAX, 0x9e3779b9};
    uint64_t rng = 42;
    for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
        size_t n = lengths[li];
        struct chain c;
        /*
         * One table per length, drained and refilled in order for each position: destroying a
         * table that grew waits for an RCU barrier, which would dominate the run time.
         */
        chain_setup(&c, n, hashes[li % 3], n_elems, flags, "remove one position, reinsert, drain");
        for (size_t pos = 0; pos < n; pos++) {
            for (size_t i = 0; i < n; i++)
                if (!c.present[i])
                    chain_insert(&c, i);
            chain_remove(&c, pos);
            chain_remove(&c, pos); /* twice: false the second time */
            chain_insert(&c, pos);
            size_t order[21];
            for (size_t i = 0; i < n; i++)
                order[i] = i;
            shuffle(order, n, &rng);
            for (size_t i = 0; i < n; i++)
                chain_remove(&c, order[i]);
            vck_rcu_synchronize(); /* the drained objects are reused */
        }
        chain_teardown(&c);
    }
}

Test(qht, same_hash_chain_survives_removal_at_every_position)
{
    for_each_config(same_hash_every_position_body);
}

static void same_hash_orders_body(size_t n_elems, unsigned flags)
{
    enum { N = 40 };
    uint64_t rng = 7;
    size_t order[N];
    const uint32_t hash = hash_of(1234567);

    struct chain c;
    chain_setup(&c, 20, hash, n_elems, flags, "20 entries, first each time");
    for (size_t i = 0; i < 20; i++)
        chain_remove(&c, i);
    chain_teardown(&c);

    chain_setup(&c, 20, hash, n_elems, flags, "20 entries, last each time");
    for (size_t i = 20; i-- > 0;)
        chain_remove(&c, i);
    chain_teardown(&c);

    chain_setup(&c, 21, hash, n_elems, flags, "21 entries, middle outwards");
    for (size_t d = 0; d <= 10; d++) {
        chain_remove(&c, 10 + d);
        if (d)
            chain_remove(&c, 10 - d);
    }
    chain_teardown(&c);

    /* In insertion order, entries 3, 7, 11... end full buckets and entry 19 ends the chain. */
    chain_setup(&c, 20, hash, n_elems, flags, "20 entries, bucket ends then the rest");
    static const size_t bucket_ends[] = {19, 3, 7, 15, 11};
    for (size_t i = 0; i < sizeof(bucket_ends) / sizeof(bucket_ends[0]); i++)
        chain_remove(&c, bucket_ends[i]);
    for (size_t i = 0; i < 20; i++)
        if (c.present[i])
            chain_remove(&c, i);
    chain_teardown(&c);

    /* Holes refilled by new inserts, then drained at random. */
    for (int round = 0; round < 5; round++) {
        chain_setup(&c, N, hash, n_elems, flags, "40 entries, random holes refilled");
        for (size_t i = 0; i < N; i++)
            order[i] = i;
        shuffle(order, N, &rng);
        for (size_t i = 0; i < N / 2; i++)
            chain_remove(&c, order[i]);
        shuffle(order, N / 2, &rng);
        for (size_t i = 0; i < N / 4; i++)
            chain_insert(&c, order[i]);
        shuffle(order, N, &rng);
        for (size_t i = 0; i < N; i++)
            if (c.present[order[i]])
                chain_remove(&c, order[i]);
        chain_insert(&c, 0); /* an emptied chain takes entries again */
        chain_teardown(&c);
    }
}

Test(qht, same_hash_chain_survives_removal_orders)
{
    for_each_config(same_hash_orders_body);
}

/* Different hashes sharing a bucket: the hash, not only the bucket index, must match. */
static uint32_t shared_bucket_hash(uint64_t key)
{
    return (uint32_t)(key + 1) << 16;
}

Test(qht, hashes_sharing_a_bucket_are_told_apart)
{
    enum { N = 30 };
    vck_rcu_register_thread();
    for (size_t j = 0; j < N_FLAG_SETS; j++) {
        struct obj *objs = objs_new(N, 0);
        struct vck_qht ht;
        vck_qht_init(&ht, obj_cmp, 0, flag_sets[j]);
        for (size_t i = 0; i < N; i++)
            cr_assert(vck_qht_insert(&ht, &objs[i], shared_bucket_hash(i), NULL));
        for (size_t i = 0; i < N; i++) {
            cr_assert_eq(find(&ht, i, shared_bucket_hash(i)), &objs[i]);
            cr_assert_null(find(&ht, i, shared_bucket_hash(i + 1)),
                           "flags %u: key %zu found under another key's hash", flag_sets[j], i);
            cr_assert_null(find(&ht, i, shared_bucket_hash(i) ^ 1),
                           "flags %u: key %zu found under a hash one bit off", flag_sets[j], i);
            cr_assert_not(vck_qht_remove(&ht, &objs[i], shared_bucket_hash(i + 1)),
                          "flags %u: key %zu removed under another key's hash", flag_sets[j], i);
        }
        for (size_t i = 0; i < N; i += 3)
            cr_assert(vck_qht_remove(&ht, &objs[i], shared_bucket_hash(i)));
        for (size_t i = 0; i < N; i++)
            cr_assert_eq(find(&ht, i, shared_bucket_hash(i)), i % 3 ? &objs[i] : NULL,
                         "flags %u: key %zu after removing every third", flag_sets[j], i);
        cr_assert_eq(stats_of(&ht).entries, N - (N + 2) / 3);
        vck_qht_destroy(&ht);
        free(objs);
    }
    vck_rcu_unregister_thread();
}

static void remove_identity_body(size_t n_elems, unsigned flags)
{
    enum { N = 400 };
    struct obj *objs = objs_new(N, 0);
    struct obj *twins = objs_new(N, 0);
    struct obj *never = objs_new(N, N);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    for (size_t i = 0; i < N; i++) {
        cr_assert_not(vck_qht_remove(&ht, &twins[i], hash_of(i)),
                      "n_elems %zu flags %u: an equal object at another address removed key %zu",
                      n_elems, flags, i);
        cr_assert_not(vck_qht_remove(&ht, &objs[i], hash_of(i) ^ 0x80000001u),
                      "n_elems %zu flags %u: key %zu removed under the wrong hash", n_elems, flags,
                      i);
        cr_assert_not(vck_qht_remove(&ht, &never[i], hash_of(never[i].key)),
                      "n_elems %zu flags %u: a never-inserted object was removed", n_elems, flags);
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i], "a refused remove lost key %zu", i);
    }
    cr_assert_eq(stats_of(&ht).entries, N);
    for (size_t i = 0; i < N; i += 2) {
        cr_assert(vck_qht_remove(&ht, &objs[i], hash_of(i)),
                  "n_elems %zu flags %u: remove of present key %zu", n_elems, flags, i);
        cr_assert_not(vck_qht_remove(&ht, &objs[i], hash_of(i)),
                      "n_elems %zu flags %u: key %zu removed twice", n_elems, flags, i);
    }
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), i % 2 ? &objs[i] : NULL);
    cr_assert_eq(stats_of(&ht).entries, N / 2);
    vck_qht_destroy(&ht);
    free(never);
    free(twins);
    free(objs);
}

Test(qht, remove_goes_by_pointer_identity_and_hash)
{
    for_each_config(remove_identity_body);
}

/* Calls vck_qht_resize and checks its result against the size the statistics report. */
static void resize_and_check_result(struct vck_qht *ht, size_t n, bool reset)
{
    size_t before = stats_of(ht).head_buckets;
    bool changed = reset ? vck_qht_reset_size(ht, n) : vck_qht_resize(ht, n);
    size_t after = stats_of(ht).head_buckets;
    cr_assert_eq(changed, before != after, "%s(%zu) returned %d going from %zu to %zu head buckets",
                 reset ? "reset_size" : "resize", n, changed, before, after);
    cr_assert_not(reset ? vck_qht_reset_size(ht, n) : vck_qht_resize(ht, n),
                  "%s(%zu) repeated reported a change", reset ? "reset_size" : "resize", n);
    cr_assert_eq(stats_of(ht).head_buckets, after);
}

static void resize_body(size_t n_elems, unsigned flags)
{
    enum { N = 3000, MORE = 500 };
    static const size_t targets[] = {0, 1, 3, 4, 16, 100, 2999, 3000, 3001, 12000, 100000, 1, 5000};
    struct obj *objs = objs_new(N + MORE, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    cr_assert_not(vck_qht_resize(&ht, n_elems),
                  "resize to the n_elems the table was initialised with (%zu) reported a change",
                  n_elems);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    for (size_t t = 0; t < sizeof(targets) / sizeof(targets[0]); t++) {
        resize_and_check_result(&ht, targets[t], false);
        for (size_t i = 0; i < N; i++)
            cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i],
                         "n_elems %zu flags %u: key %zu lost by resize(%zu)", n_elems, flags, i,
                         targets[t]);
        for (uint64_t key = N + MORE; key < N + MORE + 200; key++)
            cr_assert_null(find(&ht, key, hash_of(key)));
        cr_assert_eq(stats_of(&ht).entries, N, "resize(%zu) changed the entry count", targets[t]);
    }
    /* A resized table takes inserts and removes as before. */
    for (size_t i = N; i < N + MORE; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    for (size_t i = 0; i < N + MORE; i += 2)
        cr_assert(vck_qht_remove(&ht, &objs[i], hash_of(i)));
    for (size_t i = 0; i < N + MORE; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), i % 2 ? &objs[i] : NULL,
                     "n_elems %zu flags %u: key %zu after resizes, inserts and removes", n_elems,
                     flags, i);
    cr_assert_eq(stats_of(&ht).entries, (N + MORE) / 2);
    vck_qht_destroy(&ht);
    free(objs);
}

Test(qht, resize_keeps_every_entry_and_reports_changes)
{
    for_each_config(resize_body);
}

Test(qht, resize_for_more_entries_means_more_buckets)
{
    vck_rcu_register_thread();
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, 0, 0);
    cr_assert(vck_qht_resize(&ht, 100000), "resize from 0 to 100000 entries reported no change");
    size_t big = stats_of(&ht).head_buckets;
    cr_assert(vck_qht_resize(&ht, 1), "resize from 100000 to 1 entry reported no change");
    size_t small = stats_of(&ht).head_buckets;
    cr_assert_gt(big, small, "sized for 100000 entries: %zu buckets, for 1: %zu", big, small);
    vck_qht_destroy(&ht);
    vck_rcu_unregister_thread();
}

static void reset_body(size_t n_elems, unsigned flags)
{
    enum { N = 2000 };
    static const size_t reset_sizes[] = {0, 1000, 1000, 20000, 7};
    struct obj *objs = objs_new(N, 0);
    bool *none = calloc(N, sizeof(*none));
    cr_assert_not_null(none);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    for (int round = 0; round < 6; round++) {
        for (size_t i = 0; i < N; i++)
            cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL),
                      "n_elems %zu flags %u round %d: insert of key %zu after a reset", n_elems,
                      flags, round, i);
        cr_assert_eq(stats_of(&ht).entries, N);
        size_t head_before = stats_of(&ht).head_buckets;
        if (round == 0) {
            vck_qht_reset(&ht);
            cr_assert_eq(stats_of(&ht).head_buckets, head_before, "reset changed the size");
        } else {
            resize_and_check_result(&ht, reset_sizes[round - 1], true);
        }
        struct vck_qht_stats s = stats_of(&ht);
        cr_assert_eq(s.entries, 0, "round %d: %zu entries left by a reset", round, s.entries);
        cr_assert_eq(s.used_head_buckets, 0);
        for (size_t i = 0; i < N; i++) {
            cr_assert_null(find(&ht, i, hash_of(i)),
                           "n_elems %zu flags %u round %d: key %zu survived a reset", n_elems,
                           flags, round, i);
            cr_assert_not(vck_qht_remove(&ht, &objs[i], hash_of(i)),
                          "round %d: key %zu removed after a reset", round, i);
        }
        check_iter_sees(&ht, N, 0, hash_of, objs, none);
        /* The objects were removed by the reset; wait out readers before reusing them. */
        vck_rcu_synchronize();
    }
    vck_qht_destroy(&ht);
    free(none);
    free(objs);
}

Test(qht, reset_and_reset_size_empty_the_table_and_it_stays_usable)
{
    for_each_config(reset_body);
}

static uint32_t hash_mod3(uint64_t key)
{
    return (uint32_t)(key % 3);
}

static uint32_t hash_const(uint64_t key)
{
    (void)key;
    return 0x5eed5eedu;
}

static uint32_t (*const iter_hashes[])(uint64_t) = {hash_of, hash_mod3, hash_const};
static const char *const iter_hash_names[] = {"hash64", "key % 3", "one hash"};

static void iter_body(size_t n_elems, unsigned flags)
{
    for (size_t h = 0; h < sizeof(iter_hashes) / sizeof(iter_hashes[0]); h++) {
        const size_t n = h == 0 ? 3000 : 150;
        struct obj *objs = objs_new(n, 100);
        bool *present = malloc(n * sizeof(*present));
        cr_assert_not_null(present);
        struct vck_qht ht;
        vck_qht_init(&ht, obj_cmp, n_elems, flags);
        for (size_t i = 0; i < n; i++)
            present[i] = false;
        check_iter_sees(&ht, n, 100, iter_hashes[h], objs, present);
        for (size_t i = 0; i < n; i++) {
            cr_assert(vck_qht_insert(&ht, &objs[i], iter_hashes[h](objs[i].key), NULL));
            present[i] = true;
        }
        check_iter_sees(&ht, n, 100, iter_hashes[h], objs, present);
        for (size_t i = 0; i < n; i += 5) {
            cr_assert(vck_qht_remove(&ht, &objs[i], iter_hashes[h](objs[i].key)));
            present[i] = false;
        }
        check_iter_sees(&ht, n, 100, iter_hashes[h], objs, present);
        vck_qht_destroy(&ht);
        free(present);
        free(objs);
    }
}

Test(qht, iter_visits_every_entry_once_with_its_hash)
{
    for_each_config(iter_body);
}

struct remove_choice {
    struct visit_log log;
    int rule; /* 0: odd keys, 1: every key, 2: no key, 3: keys divisible by 3 */
};

static bool chosen_by_rule(int rule, uint64_t key)
{
    switch (rule) {
    case 0:
        return key & 1;
    case 1:
        return true;
    case 2:
        return false;
    default:
        return key % 3 == 0;
    }
}

static bool remove_by_rule(void *obj, uint32_t hash, void *userp)
{
    struct remove_choice *choice = userp;
    visit_log_record(&choice->log, obj, hash);
    return chosen_by_rule(choice->rule, ((struct obj *)obj)->key);
}

static void iter_remove_body(size_t n_elems, unsigned flags)
{
    static const int rules[] = {0, 3, 2, 1};
    for (size_t h = 0; h < sizeof(iter_hashes) / sizeof(iter_hashes[0]); h++) {
        const size_t n = h == 0 ? 3000 : 150;
        struct obj *objs = objs_new(n, 0);
        bool *present = malloc(n * sizeof(*present));
        cr_assert_not_null(present);
        struct vck_qht ht;
        vck_qht_init(&ht, obj_cmp, n_elems, flags);
        for (size_t i = 0; i < n; i++) {
            cr_assert(vck_qht_insert(&ht, &objs[i], iter_hashes[h](i), NULL));
            present[i] = true;
        }
        for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++) {
            struct remove_choice choice = {.rule = rules[r]};
            visit_log_init(&choice.log, n, 0, iter_hashes[h], objs);
            vck_qht_iter_remove(&ht, remove_by_rule, &choice);
            size_t left = 0;
            for (size_t i = 0; i < n; i++) {
                cr_assert_eq(choice.log.visits[i], present[i] ? 1u : 0u,
                             "%s, n_elems %zu flags %u, rule %d: iter_remove visited key %zu %u "
                             "times",
                             iter_hash_names[h], n_elems, flags, rules[r], i, choice.log.visits[i]);
                if (chosen_by_rule(rules[r], i))
                    present[i] = false;
                cr_assert_eq(find(&ht, i, iter_hashes[h](i)), present[i] ? &objs[i] : NULL,
                             "%s, n_elems %zu flags %u, rule %d: key %zu should be %s",
                             iter_hash_names[h], n_elems, flags, rules[r], i,
                             present[i] ? "kept" : "removed");
                left += present[i];
            }
            cr_assert_eq(stats_of(&ht).entries, left);
            check_iter_sees(&ht, n, 0, iter_hashes[h], objs, present);
            free(choice.log.visits);
        }
        cr_assert_eq(stats_of(&ht).entries, 0);
        vck_qht_destroy(&ht);
        free(present);
        free(objs);
    }
}

Test(qht, iter_remove_removes_exactly_the_chosen_entries)
{
    for_each_config(iter_remove_body);
}

Test(qht, statistics_describe_simple_shapes_exactly)
{
    vck_rcu_register_thread();
    enum { N = 20 };
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;

    vck_qht_init(&ht, obj_cmp, 64, 0);
    cr_assert(vck_qht_insert(&ht, &objs[0], 7, NULL));
    struct vck_qht_stats s = stats_of(&ht);
    cr_expect_eq(s.entries, 1);
    cr_expect_eq(s.used_head_buckets, 1);
    cr_expect_eq(s.overflow_buckets, 0, "one entry needs no overflow bucket");
    cr_expect_eq(s.chain_hist[0], 1, "one entry: a chain of one bucket");
    cr_expect_eq(s.occupancy_hist[1], 1);
    cr_expect_eq(s.occupancy_hist[0], s.head_buckets - 1);
    vck_qht_destroy(&ht);

    /* N entries under one hash in a one-bucket table: one chain of at least N / 4 buckets. */
    vck_qht_init(&ht, obj_cmp, 0, 0);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], 7, NULL));
    s = stats_of(&ht);
    cr_expect_eq(s.head_buckets, 1);
    cr_expect_eq(s.entries, N);
    cr_expect_eq(s.used_head_buckets, 1);
    cr_expect_geq(s.overflow_buckets, N / VCK_QHT_BUCKET_ENTRIES - 1,
                  "%d entries in %zu overflow buckets", N, s.overflow_buckets);
    size_t long_chains = 0;
    for (size_t k = N / VCK_QHT_BUCKET_ENTRIES - 1; k < VCK_QHT_CHAIN_HIST; k++)
        long_chains += s.chain_hist[k];
    cr_expect_eq(long_chains, 1, "the one chain is not reported as %d buckets or longer",
                 N / VCK_QHT_BUCKET_ENTRIES);

    /* Distinct hashes in a big table: every entry lands somewhere, some buckets get used. */
    vck_qht_destroy(&ht);
    vck_qht_init(&ht, obj_cmp, 5000, 0);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    s = stats_of(&ht);
    cr_expect_eq(s.entries, N);
    cr_expect_gt(s.used_head_buckets, N / 2, "20 well-hashed keys in %zu used buckets of %zu",
                 s.used_head_buckets, s.head_buckets);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_remove(&ht, &objs[i], hash_of(i)));
    s = stats_of(&ht);
    cr_expect_eq(s.entries, 0);
    cr_expect_eq(s.used_head_buckets, 0);
    vck_qht_destroy(&ht);
    free(objs);
    vck_rcu_unregister_thread();
}

static void statistics_body(size_t n_elems, unsigned flags)
{
    enum { N = 4000 };
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    uint64_t rng = n_elems * 2 + flags;
    size_t entries = 0;
    for (size_t i = 0; i < N; i++) {
        /* A quarter of the keys crowd into eight hashes, so chains of every length appear. */
        uint32_t hash = i % 4 ? hash_of(i) : (uint32_t)(i % 32);
        cr_assert(vck_qht_insert(&ht, &objs[i], hash, NULL));
        entries++;
        if (i % 512 == 0)
            cr_assert_eq(stats_of(&ht).entries, entries);
    }
    for (int k = 0; k < 3000; k++) {
        size_t i = vck_rand_below(&rng, N);
        uint32_t hash = i % 4 ? hash_of(i) : (uint32_t)(i % 32);
        if (vck_qht_remove(&ht, &objs[i], hash))
            entries--;
        if (k % 256 == 0)
            cr_assert_eq(stats_of(&ht).entries, entries, "n_elems %zu flags %u", n_elems, flags);
    }
    cr_assert_eq(stats_of(&ht).entries, entries);
    vck_qht_destroy(&ht);
    free(objs);
}

Test(qht, statistics_add_up_while_the_table_changes)
{
    for_each_config(statistics_body);
}

Test(qht, auto_resize_grows_a_table_created_empty)
{
    enum { N = 100000 };
    vck_rcu_register_thread();
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, 0, VCK_QHT_AUTO_RESIZE);
    size_t initial = stats_of(&ht).head_buckets;
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL), "insert of key %zu", i);
    struct vck_qht_stats s = stats_of(&ht);
    cr_assert_eq(s.entries, N);
    /* 32 entries per head bucket is a chain of 8 buckets: "long" by any threshold. */
    cr_assert_geq(s.head_buckets * 32, (size_t)N, "%d entries in only %zu head buckets (from %zu)",
                  N, s.head_buckets, initial);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i], "key %zu lost while growing", i);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_remove(&ht, &objs[i], hash_of(i)));
    cr_assert_eq(stats_of(&ht).head_buckets, s.head_buckets,
                 "an auto-resizing table shrank by itself");
    vck_qht_destroy(&ht);
    free(objs);
    vck_rcu_unregister_thread();
}

Test(qht, without_auto_resize_the_size_stays)
{
    /* Small: every insert walks the whole chain of a one-bucket table. */
    enum { N = 10000 };
    vck_rcu_register_thread();
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, 0, 0);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
    struct vck_qht_stats s = stats_of(&ht);
    cr_assert_eq(s.head_buckets, 1, "a table without VCK_QHT_AUTO_RESIZE grew to %zu buckets",
                 s.head_buckets);
    cr_assert_eq(s.entries, N);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i]);
    vck_qht_destroy(&ht);
    free(objs);
    vck_rcu_unregister_thread();
}

Test(qht, auto_resize_does_not_chase_a_chain_that_growing_cannot_split)
{
    /*
     * Entries under one hash stay in one chain at any size. The header promises growth "once per
     * doubling" of the entries; a table that doubled on every long-chain insert would need
     * 2^1000 buckets here, so the bound below is generous.
     */
    enum { N = 1000 };
    vck_rcu_register_thread();
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, 0, VCK_QHT_AUTO_RESIZE);
    for (size_t i = 0; i < N; i++)
        cr_assert(vck_qht_insert(&ht, &objs[i], 0xabcdef01u, NULL));
    struct vck_qht_stats s = stats_of(&ht);
    cr_assert_eq(s.entries, N);
    cr_assert_leq(s.head_buckets, (size_t)65536,
                  "%d same-hash entries grew the table to %zu head buckets", N, s.head_buckets);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&ht, i, 0xabcdef01u), &objs[i]);
    vck_qht_destroy(&ht);
    free(objs);
    vck_rcu_unregister_thread();
}

Test(qht, huge_page_choice_changes_nothing_observable)
{
    /* 2 MiB of buckets and more may be mapped differently: sizes on both sides of that line. */
    enum { N = 5000 };
    static const unsigned flags[] = {0, VCK_QHT_NO_HUGE_PAGES,
                                     VCK_QHT_NO_HUGE_PAGES | VCK_QHT_AUTO_RESIZE};
    static const size_t sizes[] = {300000, 1, 131072, 200000, 100};
    vck_rcu_register_thread();
    struct obj *objs = objs_new(N, 0);
    for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++) {
        struct vck_qht ht;
        vck_qht_init(&ht, obj_cmp, 200000, flags[f]);
        cr_assert_eq(stats_of(&ht).head_buckets, documented_head_buckets(200000));
        for (size_t i = 0; i < N; i++)
            cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
        for (size_t t = 0; t < sizeof(sizes) / sizeof(sizes[0]); t++) {
            resize_and_check_result(&ht, sizes[t], false);
            for (size_t i = 0; i < N; i++)
                cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i],
                             "flags %u: key %zu lost by resize(%zu)", flags[f], i, sizes[t]);
            cr_assert_eq(stats_of(&ht).entries, N);
        }
        resize_and_check_result(&ht, 400000, true);
        cr_assert_eq(stats_of(&ht).entries, 0);
        cr_assert_null(find(&ht, 0, hash_of(0)));
        vck_qht_destroy(&ht);
        vck_rcu_synchronize(); /* the objects go into the next table */
    }
    free(objs);
    vck_rcu_unregister_thread();
}

Test(qht, tables_side_by_side_are_independent)
{
    enum { N = 300 };
    vck_rcu_register_thread();
    struct obj *objs = objs_new(N, 0);
    struct vck_qht a, b;
    vck_qht_init(&a, obj_cmp, 16, VCK_QHT_AUTO_RESIZE);
    vck_qht_init(&b, obj_cmp, 16, 0);
    for (size_t i = 0; i < N; i++) {
        cr_assert(vck_qht_insert(&a, &objs[i], hash_of(i), NULL));
        cr_assert(vck_qht_insert(&b, &objs[i], hash_of(i), NULL));
    }
    for (size_t i = 0; i < N; i += 2)
        cr_assert(vck_qht_remove(&a, &objs[i], hash_of(i)));
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(find(&a, i, hash_of(i)), i % 2 ? &objs[i] : NULL);
        cr_assert_eq(find(&b, i, hash_of(i)), &objs[i], "a remove from one table reached another");
    }
    vck_qht_reset(&a);
    cr_assert_eq(stats_of(&a).entries, 0);
    cr_assert_eq(stats_of(&b).entries, N, "a reset of one table emptied another");
    vck_qht_destroy(&a);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(find(&b, i, hash_of(i)), &objs[i]);
    vck_qht_destroy(&b);
    free(objs);
    vck_rcu_unregister_thread();
}

/* ---- prefetch ---- */

/*
 * Prefetches, in one read-side section, the hashes of keys [first, last) and a few extremes,
 * and checks that it called nothing and changed nothing a quiet table can show.
 */
static void prefetch_range(struct vck_qht *ht, uint64_t first, uint64_t last)
{
    static const uint32_t extremes[] = {0, 1, 0x80000000u, UINT32_MAX};
    struct vck_qht_stats before = stats_of(ht);
    unsigned long cmp_before = cmp_calls;
    vck_rcu_read_lock();
    for (size_t i = 0; i < sizeof(extremes) / sizeof(extremes[0]); i++)
        vck_qht_prefetch(ht, extremes[i]);
    for (uint64_t key = first; key < last; key++)
        vck_qht_prefetch(ht, hash_of(key));
    vck_rcu_read_unlock();
    struct vck_qht_stats after = stats_of(ht);
    cr_assert_eq(cmp_calls, cmp_before, "prefetch called the table's cmp");
    cr_assert(memcmp(&before, &after, sizeof(before)) == 0, "prefetch changed the statistics");
}

static void prefetch_body(size_t n_elems, unsigned flags)
{
    enum { N = 3000 };
    static const size_t resizes[] = {1, 100000, 3000};
    struct obj *objs = objs_new(N, 0);
    struct vck_qht ht;
    vck_qht_init(&ht, obj_cmp, n_elems, flags);
    prefetch_range(&ht, 0, 2 * N);
    for (uint64_t key = 0; key < N; key++)
        cr_assert_null(find(&ht, key, hash_of(key)), "empty table found key %" PRIu64, key);
    for (size_t i = 0; i < N; i++) {
        cr_assert(vck_qht_insert(&ht, &objs[i], hash_of(i), NULL));
        /* No statistics here: they finish the migration an auto-resize may have under way. */
        vck_rcu_read_lock();
        vck_qht_prefetch(&ht, hash_of(i));
        vck_qht_prefetch(&ht, hash_of(i + N));
        vck_rcu_read_unlock();
        cr_assert_eq(find(&ht, i, hash_of(i)), &objs[i],
                     "n_elems %zu flags %u: key %zu not found after prefetching it", n_elems, flags,
                     i);
        cr_assert_null(find(&ht, i + N, hash_of(i + N)));
    }
    for (size_t r = 0; r <= sizeof(resizes) / sizeof(resizes[0]); r++) {
        prefetch_range(&ht, 0, 2 * N);
        for (size_t i = 0; i < 2 * N; i++)
            cr_assert_eq(find(&ht, i, hash_of(i)), i < N ? &objs[i] : NULL,
                         "n_elems %zu flags %u: key %zu after prefetching", n_elems, flags, i);
        cr_assert_eq(stats_of(&ht).entries, N);
        if (r < sizeof(resizes) / sizeof(resizes[0]))
            vck_qht_resize(&ht, resizes[r]);
    }
    vck_qht_destroy(&ht);
    free(objs);
}

Test(qht, prefetch_is_only_a_hint)
{
    for_each_config(prefetch_body);
}

/* ---- hashes ---- */

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/*
 * 100001 random 32-bit values collide about n^2 / 2^33 = 1.2 times; 8 or more happens with
 * probability about 1e-5, while a mixer that loses input bits collides by the thousand.
 */
static size_t count_collisions(uint32_t *hashes, size_t n)
{
    qsort(hashes, n, sizeof(*hashes), compare_u32);
    size_t collisions = 0;
    for (size_t i = 1; i < n; i++)
        collisions += hashes[i] == hashes[i - 1];
    return collisions;
}

enum { SEQ_KEYS = 100001, MAX_COLLISIONS = 7 };

Test(qht, hash64_is_deterministic_and_spreads_sequential_keys)
{
    uint32_t *hashes = malloc(SEQ_KEYS * sizeof(*hashes));
    cr_assert_not_null(hashes);
    for (uint64_t key = 0; key < SEQ_KEYS; key++) {
        hashes[key] = vck_qht_hash64(key);
        cr_assert_eq(vck_qht_hash64(key), hashes[key]);
    }
    /* Bucket indices come from the low bits: 64 keys per bin, chi-square over 1023 d.o.f. */
    enum { BINS = 1024, PER_BIN = 64 };
    size_t bins[BINS] = {0};
    for (size_t i = 0; i < BINS * PER_BIN; i++)
        bins[hashes[i] & (BINS - 1)]++;
    double chi2 = 0;
    for (size_t i = 0; i < BINS; i++)
        chi2 += ((double)bins[i] - PER_BIN) * ((double)bins[i] - PER_BIN) / PER_BIN;
    cr_expect_lt(chi2, 1250.0, "low bits of sequential keys: chi-square %.1f (expected ~1023)",
                 chi2);
    size_t collisions = count_collisions(hashes, SEQ_KEYS);
    cr_expect_leq(collisions, (size_t)MAX_COLLISIONS, "%zu collisions among keys 0..%d", collisions,
                  SEQ_KEYS - 1);
    free(hashes);
}

Test(qht, hash_words_is_deterministic_and_spreads_sequential_keys)
{
    uint32_t *hashes = malloc(SEQ_KEYS * sizeof(*hashes));
    cr_assert_not_null(hashes);
    /* The varying word in each position, and in both words at once. */
    for (size_t shape = 0; shape < 4; shape++) {
        size_t n = shape == 0 ? 1 : 2;
        for (uint64_t i = 0; i < SEQ_KEYS; i++) {
            uint64_t words[2] = {0x400000, 0x1000};
            if (shape == 0 || shape == 1 || shape == 3)
                words[0] = i;
            if (shape == 2 || shape == 3)
                words[1] = i;
            hashes[i] = vck_qht_hash_words(words, n);
            cr_assert_eq(vck_qht_hash_words(words, n), hashes[i]);
        }
        size_t collisions = count_collisions(hashes, SEQ_KEYS);
        cr_expect_leq(collisions, (size_t)MAX_COLLISIONS, "shape %zu: %zu collisions", shape,
                      collisions);
    }
    /* The length is part of the key: {x} and {x, 0} are different keys. */
    size_t same = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t words[3] = {i, 0, 0};
        same += vck_qht_hash_words(words, 1) == vck_qht_hash_words(words, 2);
        same += vck_qht_hash_words(words, 2) == vck_qht_hash_words(words, 3);
    }
    cr_expect_leq(same, (size_t)1, "%zu of 2000 keys hash alike when zero-extended", same);
    free(hashes);
}

enum { AVALANCHE_SAMPLES = 2000 };

/*
 * Flipping one input bit must flip each output bit with probability near 1/2. With 2000 samples
 * the standard deviation of a measured probability is 0.011, so [0.4, 0.6] is a nine-sigma
 * band for a good mixer, and a mean flip count in [14, 18] per input bit leaves the same room.
 */
static void check_avalanche(const char *name, size_t n_words, uint64_t seed)
{
    uint64_t rng = seed;
    /* n_words == 0 stands for vck_qht_hash64, which has one input word. */
    size_t positions = n_words ? n_words : 1;
    for (size_t w = 0; w < positions; w++) {
        for (unsigned bit = 0; bit < 64; bit++) {
            unsigned flips[32] = {0};
            unsigned long total = 0;
            for (int s = 0; s < AVALANCHE_SAMPLES; s++) {
                uint64_t words[4];
                for (size_t i = 0; i < n_words; i++)
                    words[i] = vck_rand(&rng);
                uint32_t a, b;
                if (n_words == 0) {
                    a = vck_qht_hash64(words[0] = vck_rand(&rng));
                    b = vck_qht_hash64(words[0] ^ (1ULL << bit));
                } else {
                    a = vck_qht_hash_words(words, n_words);
                    words[w] ^= 1ULL << bit;
                    b = vck_qht_hash_words(words, n_words);
                }
                uint32_t diff = a ^ b;
                for (unsigned o = 0; o < 32; o++) {
                    flips[o] += (diff >> o) & 1;
                    total += (diff >> o) & 1;
                }
            }
            double mean = (double)total / AVALANCHE_SAMPLES;
            cr_expect(mean >= 14.0 && mean <= 18.0,
                      "%s: flipping word %zu bit %u flips %.2f output bits on average", name, w,
                      bit, mean);
            for (unsigned o = 0; o < 32; o++) {
                double p = (double)flips[o] / AVALANCHE_SAMPLES;
                cr_assert(p >= 0.4 && p <= 0.6,
                          "%s: word %zu bit %u flips output bit %u with probability %.3f", name, w,
                          bit, o, p);
            }
        }
    }
}

Test(qht, hash64_avalanches)
{
    check_avalanche("hash64", 0, 1);
}

Test(qht, hash_words_avalanches)
{
    for (size_t n = 1; n <= 3; n++)
        check_avalanche("hash_words", n, 100 + n);
}

/* ---- property test against a reference map ---- */

enum hash_mode { HASH_MIX, HASH_MOD7, HASH_HIGH_BITS };

static const char *const hash_mode_names[] = {"hash64", "key % 7", "key << 20"};

struct prop_run {
    enum hash_mode mode;
    unsigned flags;
    size_t n_elems;
    uint64_t keys; /* keys are drawn from [0, keys) */
};

/*
 * Small key ranges make duplicates and removals of present keys common; key % 7 makes chains of
 * about ten buckets that no resize can split; key << 20 puts distinct hashes into one bucket until
 * the table is huge.
 */
static const struct prop_run prop_runs[] = {
    {HASH_MIX, 0, 0, 512},
    {HASH_MIX, VCK_QHT_AUTO_RESIZE, 0, 512},
    {HASH_MIX, VCK_QHT_AUTO_RESIZE, 5000, 4096},
    {HASH_MOD7, 0, 16, 256},
    {HASH_MOD7, VCK_QHT_AUTO_RESIZE, 0, 256},
    {HASH_HIGH_BITS, VCK_QHT_AUTO_RESIZE, 1000, 1024},
    {HASH_HIGH_BITS, 0, 1, 64},
};

static const uint64_t prop_seeds[] = {1, 2};

enum {
    PROP_OPS = 200000,
    PROP_FULL_CHECK_EVERY = 4096,
    PROP_RECLAIM_EVERY = 2048,
};

struct prop {
    const struct prop_run *run;
    uint64_t seed;
    uint64_t rng;
    long op;             /* index of the operation under way */
    const char *op_name; /* and what it is */
    struct vck_qht ht;
    struct obj **ref; /* ref[key]: the object the table must hold under key, or NULL */
    size_t ref_count;
    struct obj **retired; /* removed, to be freed after the next grace period */
    size_t n_retired, cap_retired;
    unsigned *seen; /* per key, during a walk over the table */
    uint64_t salt;  /* iter_remove: picks the keys to remove */
    unsigned remove_share;
};

static void prop_fail(const struct prop *p, int line, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    cr_assert_fail("seed %" PRIu64 " (%s, flags %u, n_elems %zu, keys %" PRIu64
                   "), op %ld (%s), line %d: %s",
                   p->seed, hash_mode_names[p->run->mode], p->run->flags, p->run->n_elems,
                   p->run->keys, p->op, p->op_name, line, what);
}

#define PROP_CHECK(p, cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond))                                                                               \
            prop_fail((p), __LINE__, __VA_ARGS__);                                                 \
    } while (0)

static uint32_t prop_hash(const struct prop *p, uint64_t key)
{
    switch (p->run->mode) {
    case HASH_MOD7:
        return (uint32_t)(key % 7);
    case HASH_HIGH_BITS:
        return (uint32_t)key << 20;
    default:
        return vck_qht_hash64(key);
    }
}

static struct obj *prop_obj_new(uint64_t key)
{
    struct obj *o = malloc(sizeof(*o));
    cr_assert_not_null(o);
    o->key = key;
    o->check = ~key;
    return o;
}

static void prop_retire(struct prop *p, struct obj *o)
{
    if (p->n_retired == p->cap_retired) {
        p->cap_retired = p->cap_retired ? 2 * p->cap_retired : 1024;
        p->retired = realloc(p->retired, p->cap_retired * sizeof(*p->retired));
        cr_assert_not_null(p->retired);
    }
    p->retired[p->n_retired++] = o;
}

/*
 * Frees what was removed, after a grace period. ASan reports a table that still reaches one; in
 * other builds the poison (or whatever the allocator writes over it) fails the next compare.
 */
static void prop_reclaim(struct prop *p)
{
    vck_rcu_synchronize();
    for (size_t i = 0; i < p->n_retired; i++) {
        p->retired[i]->check = p->retired[i]->key;
        free(p->retired[i]);
    }
    p->n_retired = 0;
}

static const struct obj *prop_find(struct prop *p, uint64_t key, bool custom)
{
    uint32_t hash = prop_hash(p, key);
    const struct obj *o;
    vck_rcu_read_lock();
    if (custom) {
        struct probe pr = {.tag = PROBE_TAG, .key = key + CUSTOM_OFFSET};
        o = vck_qht_lookup_custom(&p->ht, &pr, hash, match_shifted_key);
    } else {
        struct obj probe = {.key = key, .check = ~key};
        o = vck_qht_lookup(&p->ht, &probe, hash);
    }
    if (o)
        PROP_CHECK(p, obj_alive(o) && o->key == key,
                   "lookup of key %" PRIu64 " returned {%" PRIx64 ", %" PRIx64 "}", key, o->key,
                   o->check);
    vck_rcu_read_unlock();
    return o;
}

static void prop_check_key(struct prop *p, uint64_t key)
{
    const struct obj *o = prop_find(p, key, false);
    PROP_CHECK(p, o == p->ref[key], "key %" PRIu64 ": lookup gives %p, reference %p", key,
               (const void *)o, (void *)p->ref[key]);
}

static void prop_insert(struct prop *p, uint64_t key)
{
    struct obj *o = prop_obj_new(key);
    bool in_section = vck_rand_below(&p->rng, 8) == 0; /* writers may run inside sections */
    bool want_existing = vck_rand_below(&p->rng, 4) != 0;
    void *existing = o;
    p->op_name = p->ref[key] ? "insert duplicate" : "insert new";
    if (in_section)
        vck_rcu_read_lock();
    bool inserted = vck_qht_insert(&p->ht, o, prop_hash(p, key), want_existing ? &existing : NULL);
    if (in_section)
        vck_rcu_read_unlock();
    if (p->ref[key]) {
        PROP_CHECK(p, !inserted, "duplicate key %" PRIu64 " inserted", key);
        if (want_existing)
            PROP_CHECK(p, existing == p->ref[key],
                       "duplicate key %" PRIu64 ": existing %p, reference %p", key, existing,
                       (void *)p->ref[key]);
        free(o); /* never published */
    } else {
        PROP_CHECK(p, inserted, "insert of absent key %" PRIu64 " refused (existing %p)", key,
                   want_existing ? existing : NULL);
        p->ref[key] = o;
        p->ref_count++;
    }
}

static void prop_remove(struct prop *p, uint64_t key)
{
    uint32_t hash = prop_hash(p, key);
    struct obj *target = p->ref[key];
    if (target) {
        unsigned variant = vck_rand_below(&p->rng, 8);
        if (variant == 0) {
            p->op_name = "remove an equal object at another address";
            struct obj twin = {.key = key, .check = ~key};
            PROP_CHECK(p, !vck_qht_remove(&p->ht, &twin, hash), "twin of key %" PRIu64 " removed",
                       key);
            prop_check_key(p, key);
        } else if (variant == 1) {
            p->op_name = "remove under a wrong hash";
            uint32_t wrong = hash ^ (1u << vck_rand_below(&p->rng, 32));
            PROP_CHECK(p, !vck_qht_remove(&p->ht, target, wrong),
                       "key %" PRIu64 " removed under hash %08" PRIx32 ", not %08" PRIx32, key,
                       wrong, hash);
            prop_check_key(p, key);
        }
        p->op_name = "remove present";
        bool in_section = vck_rand_below(&p->rng, 8) == 0;
        if (in_section)
            vck_rcu_read_lock();
        bool removed = vck_qht_remove(&p->ht, target, hash);
        if (in_section)
            vck_rcu_read_unlock();
        PROP_CHECK(p, removed, "remove of present key %" PRIu64 " failed", key);
        p->ref[key] = NULL;
        p->ref_count--;
        prop_retire(p, target);
    } else if (p->n_retired && vck_rand_below(&p->rng, 2)) {
        /* An object removed earlier (not freed yet): removing it again must fail. */
        p->op_name = "remove an already removed object";
        struct obj *gone = p->retired[vck_rand_below(&p->rng, p->n_retired)];
        PROP_CHECK(p, !vck_qht_remove(&p->ht, gone, prop_hash(p, gone->key)),
                   "removed object of key %" PRIu64 " removed again", gone->key);
        prop_check_key(p, gone->key);
    } else {
        p->op_name = "remove absent";
        struct obj stranger = {.key = key, .check = ~key};
        PROP_CHECK(p, !vck_qht_remove(&p->ht, &stranger, hash), "absent key %" PRIu64 " removed",
                   key);
    }
}

static void prop_lookup(struct prop *p, uint64_t key)
{
    bool custom = vck_rand_below(&p->rng, 4) == 0;
    p->op_name = p->ref[key] ? (custom ? "lookup_custom present" : "lookup present")
                             : (custom ? "lookup_custom absent" : "lookup absent");
    const struct obj *o = prop_find(p, key, custom);
    PROP_CHECK(p, o == p->ref[key], "key %" PRIu64 ": lookup gives %p, reference %p", key,
               (const void *)o, (void *)p->ref[key]);
}

static void prop_visit(struct prop *p, void *obj, uint32_t hash)
{
    const struct obj *o = obj;
    PROP_CHECK(p, obj_alive(o), "iteration visited a dead or foreign object");
    PROP_CHECK(p, o->key < p->run->keys && p->ref[o->key] == o,
               "iteration visited key %" PRIu64 " at %p, reference holds %p", o->key, obj,
               o->key < p->run->keys ? (void *)p->ref[o->key] : NULL);
    PROP_CHECK(p, hash == prop_hash(p, o->key),
               "iteration passed hash %08" PRIx32 " for key %" PRIu64 ", inserted under %08" PRIx32,
               hash, o->key, prop_hash(p, o->key));
    PROP_CHECK(p, p->seen[o->key]++ == 0, "iteration visited key %" PRIu64 " twice", o->key);
}

static void prop_visit_cb(void *obj, uint32_t hash, void *userp)
{
    prop_visit(userp, obj, hash);
}

static void prop_check_all_seen(struct prop *p)
{
    for (uint64_t key = 0; key < p->run->keys; key++)
        PROP_CHECK(p, (p->seen[key] != 0) == (p->ref[key] != NULL), "iteration %s key %" PRIu64,
                   p->ref[key] ? "missed" : "invented", key);
}

static void prop_full_check(struct prop *p)
{
    p->op_name = "full check";
    memset(p->seen, 0, p->run->keys * sizeof(*p->seen));
    vck_qht_iter(&p->ht, prop_visit_cb, p);
    prop_check_all_seen(p);
    struct vck_qht_stats s = stats_of(&p->ht);
    PROP_CHECK(p, s.entries == p->ref_count, "statistics count %zu entries, reference %zu",
               s.entries, p->ref_count);
    for (uint64_t key = 0; key < p->run->keys; key++)
        prop_check_key(p, key);
}

static bool prop_chosen(const struct prop *p, uint64_t key)
{
    return vck_qht_hash64(key ^ p->salt) % 4 < p->remove_share;
}

static bool prop_remove_cb(void *obj, uint32_t hash, void *userp)
{
    struct prop *p = userp;
    prop_visit(p, obj, hash);
    return prop_chosen(p, ((struct obj *)obj)->key);
}

static void prop_iter_remove(struct prop *p)
{
    p->op_name = "iter_remove";
    p->salt = vck_rand(&p->rng);
    p->remove_share = vck_rand_below(&p->rng, 5); /* in quarters: none .. all */
    memset(p->seen, 0, p->run->keys * sizeof(*p->seen));
    vck_qht_iter_remove(&p->ht, prop_remove_cb, p);
    prop_check_all_seen(p);
    for (uint64_t key = 0; key < p->run->keys; key++) {
        if (p->ref[key] && prop_chosen(p, key)) {
            prop_retire(p, p->ref[key]);
            p->ref[key] = NULL;
            p->ref_count--;
        }
    }
    prop_full_check(p);
}

static void prop_resize(struct prop *p)
{
    bool reset = vck_rand_below(&p->rng, 8) == 0;
    p->op_name = reset ? "reset_size" : "resize";
    size_t n = vck_rand_below(&p->rng, 4) == 0 ? 0 : vck_rand_below(&p->rng, 8 * p->run->keys);
    size_t before = stats_of(&p->ht).head_buckets;
    bool changed = reset ? vck_qht_reset_size(&p->ht, n) : vck_qht_resize(&p->ht, n);
    size_t after = stats_of(&p->ht).head_buckets;
    PROP_CHECK(p, changed == (before != after),
               "%s(%zu) returned %d going from %zu to %zu head buckets", p->op_name, n, changed,
               before, after);
    if (reset) {
        for (uint64_t key = 0; key < p->run->keys; key++) {
            if (p->ref[key])
                prop_retire(p, p->ref[key]);
            p->ref[key] = NULL;
        }
        p->ref_count = 0;
    }
    prop_full_check(p);
}

static void prop_reset(struct prop *p)
{
    p->op_name = "reset";
    vck_qht_reset(&p->ht);
    for (uint64_t key = 0; key < p->run->keys; key++) {
        if (p->ref[key])
            prop_retire(p, p->ref[key]);
        p->ref[key] = NULL;
    }
    p->ref_count = 0;
    prop_full_check(p);
}

static void prop_run_one(const struct prop_run *run, uint64_t seed)
{
    struct prop p = {.run = run, .seed = seed, .rng = seed, .op = -1, .op_name = "init"};
    p.ref = calloc(run->keys, sizeof(*p.ref));
    p.seen = calloc(run->keys, sizeof(*p.seen));
    cr_assert(p.ref && p.seen);
    vck_qht_init(&p.ht, obj_cmp, run->n_elems, run->flags);
    for (p.op = 0; p.op < PROP_OPS; p.op++) {
        uint64_t key = vck_rand_below(&p.rng, run->keys);
        unsigned dice = vck_rand_below(&p.rng, 100000);
        if (dice < 35000) {
            prop_insert(&p, key);
            prop_check_key(&p, key);
        } else if (dice < 60000) {
            prop_remove(&p, key);
            prop_check_key(&p, key);
        } else if (dice < 99950) {
            prop_lookup(&p, key);
        } else if (dice < 99975) {
            prop_resize(&p);
        } else if (dice < 99995) {
            prop_iter_remove(&p);
        } else {
            prop_reset(&p);
        }
        if (p.op % PROP_FULL_CHECK_EVERY == 0)
            prop_full_check(&p);
        if (p.op % PROP_RECLAIM_EVERY == 0)
            prop_reclaim(&p);
    }
    p.op_name = "final check";
    prop_full_check(&p);
    vck_qht_destroy(&p.ht);
    prop_reclaim(&p);
    for (uint64_t key = 0; key < run->keys; key++)
        free(p.ref[key]);
    free(p.retired);
    free(p.seen);
    free(p.ref);
}

Test(qht, matches_a_reference_map_under_random_operations)
{
    vck_rcu_register_thread();
    const char *env_seed = getenv("VCK_QHT_SEED");
    uint64_t replay = env_seed ? strtoull(env_seed, NULL, 0) : 0;
    for (size_t r = 0; r < sizeof(prop_runs) / sizeof(prop_runs[0]); r++) {
        if (env_seed) {
            prop_run_one(&prop_runs[r], replay);
            continue;
        }
        for (size_t s = 0; s < sizeof(prop_seeds) / sizeof(prop_seeds[0]); s++)
            prop_run_one(&prop_runs[r], prop_seeds[s] * 1000 + r);
    }
    vck_rcu_unregister_thread();
}
