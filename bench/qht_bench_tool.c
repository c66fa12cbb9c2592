/*
 * vck-qht-bench - throughput of a concurrent hash table under the workload of QEMU's
 * tests/bench/qht-bench: same options, same workload, same result lines, so that a figure from
 * one compares directly with the other. --table runs the same workload against two peers:
 * liburcu's lock-free resizable cds_lfht and Concurrency Kit's ck_hs.
 *
 * Workload. Keys are longs, offset + i for an index i in [0, range); every range is rounded up to
 * a power of two. The table is first loaded with -k distinct keys drawn at random from the key
 * range (-K). Then each worker thread loops until the deadline: draw r from its xorshift64*;
 * with probability -u it updates the key at index r mod update-range (-r), alternating between
 * an insert (look up, insert if absent) and a remove (look up, remove what was found); otherwise
 * it looks up the key at index r mod lookup-range (-l). An insert of a present key or a remove
 * of an absent one counts as an attempt but not a success. With -S, resize threads alternately
 * resize the table down to n/2 and up to n entries (n: the larger of the key and update ranges),
 * each attempt taken with probability -S, one attempt per -D microseconds.
 *
 * Where this deliberately differs from QEMU's tool:
 *  - Objects. By default a successful insert mallocs its object and a successful remove frees it
 *    after a grace period: cds_lfht needs a node per entry, so every table pays the same.
 *    --static-keys stores pointers into a preallocated key array instead, as QEMU's tool does
 *    (no allocation during the run; vck and ckhs only).
 *  - Read-side sections cover one operation, not a thread's whole run: vck_qht_resize() and
 *    cds_lfht_resize() wait for grace periods.
 *  - The hash is vck_qht_hash64() (a multiply-xorshift mixer), not xxhash. -p precomputes it into
 *    an array indexed by key - offset (QEMU stores the hashes as the keys themselves).
 *  - -d takes fractions of a second, and throughput divides by the measured run time.
 *  - The initial keys are drawn without replacement: the same uniform subset, in a random order,
 *    as QEMU's insert-and-retry loop, without the retries.
 *  - Unset -K/-l/-r/-s follow -k (QEMU's default for all of them is 4096).
 *
 * ck_hs is single-writer/multi-reader (CK_HS_MODE_SPMC): its writes here are serialised by one
 * mutex, its lookups are lock-free, inside the same RCU read-side sections as the others so that
 * its retired maps and objects can be freed after a grace period. cds_lfht is created with the
 * liburcu flavor vcpukit/rcu.h is built with, so vck_rcu_read_lock() protects its lookups too.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <vcpukit/qht.h>
#include <vcpukit/rcu.h>

/* After vcpukit/rcu.h: cds_lfht needs the flavor's declarations first. */
#include <ck_hs.h>
#include <urcu/rculfhash.h>

#define PROG "vck-qht-bench"

/* Largest accepted key range: indices are 32-bit. */
#define MAX_RANGE   (1ul << 31)
#define MAX_THREADS 1024

enum table_kind { TABLE_VCK, TABLE_LFHT, TABLE_CKHS };

static const char *const table_names[] = {
    [TABLE_VCK] = "vck",
    [TABLE_LFHT] = "lfht",
    [TABLE_CKHS] = "ckhs",
};

static const char *const table_descriptions[] = {
    [TABLE_VCK] = "vck (vcpukit qht)",
    [TABLE_LFHT] = "lfht (liburcu cds_lfht)",
    [TABLE_CKHS] = "ckhs (Concurrency Kit ck_hs, SPMC: writes serialised by one mutex)",
};

/* ---- options ---------------------------------------------------------------------------- */

static double duration = 1.0;
static unsigned n_rw_threads = 1;
static unsigned n_rz_threads = 1;
static double update_rate; /* 0.0 to 1.0 */
static double resize_rate; /* 0.0 to 1.0 */
static unsigned long resize_delay_us = 1000;
static size_t init_size = 64; /* -k */
/* 0 until set: then a power of two. Unset ones follow -k. */
static unsigned long init_range, lookup_range, update_range;
static size_t size_hint;
static bool size_hint_set;
static long key_offset;
static bool precompute_hash;
static bool auto_resize;
static bool static_keys;
static enum table_kind table_kind = TABLE_VCK;
static uint64_t seed;
static bool seed_set;

/* ---- derived state ---------------------------------------------------------------------- */

static unsigned long key_space; /* entries of hashes[] and keys[]: the largest range */
static size_t resize_min, resize_max;
static uint64_t update_threshold, resize_threshold;
static uint32_t *hashes; /* -p: hash of key_offset + i */
static long *keys;       /* --static-keys: the objects themselves */

static atomic_bool test_start;
static atomic_bool test_stop;
static atomic_uint n_ready_threads;

/* ---- the tables ------------------------------------------------------------------------- */

static struct vck_qht qht;
static struct cds_lfht *lfht;
static ck_hs_t ckhs;
/* ck_hs allows one writer at a time. */
static pthread_mutex_t ckhs_write_lock = PTHREAD_MUTEX_INITIALIZER;
/* The size last asked of cds_lfht_resize(), which does not say whether it changed anything. */
static atomic_ulong lfht_resize_target;

/* What vck and ckhs store (and what --static-keys points at): the key comes first. */
struct obj {
    long key;
    struct vck_rcu_head rcu;
};

struct lfht_obj {
    long key;
    struct cds_lfht_node node;
    struct vck_rcu_head rcu;
};

struct thread_stats {
    size_t rd, not_rd;
    size_t in, not_in;
    size_t rm, not_rm;
    size_t rz, not_rz;
};

struct thread_info {
    struct thread_stats stats;
    uint64_t rng;
    bool write_op;    /* the next update inserts */
    bool resize_down; /* the next resize shrinks */
    bool resizer;
    pthread_t thread;
} __attribute__((aligned(64))); /* no false sharing between workers */

/* ---- small helpers ---------------------------------------------------------------------- */

/* Bad command line: one line on stderr, exit status 2. */
static _Noreturn __attribute__((format(printf, 1, 2))) void die_usage(const char *fmt, ...)
{
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (try -h)\n", stderr);
    exit(2);
}

static void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p) {
        fprintf(stderr, PROG ": out of memory (%zu bytes)\n", size);
        exit(1);
    }
    return p;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#endif
}

/* xorshift64* (Vigna): the state is never 0, and neither is the output (odd multiplier). */
static inline uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static unsigned long pow2_ceil(unsigned long v)
{
    unsigned long p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* A probability in [0, 1] as a threshold for "r < threshold", r uniform in [0, 2^64 - 1). */
static uint64_t rate_threshold(double rate)
{
    if (rate >= 1.0)
        return UINT64_MAX;
    return (uint64_t)(rate * 0x1p64);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double max_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static inline uint32_t hash_of_index(unsigned long idx)
{
    if (precompute_hash)
        return hashes[idx];
    return vck_qht_hash64((uint64_t)(key_offset + (long)idx));
}

/* ---- callbacks of the three tables ------------------------------------------------------ */

static bool key_equal(const void *a, const void *b)
{
    return *(const long *)a == *(const long *)b;
}

static int lfht_match(struct cds_lfht_node *node, const void *key)
{
    return caa_container_of(node, struct lfht_obj, node)->key == *(const long *)key;
}

/* ck_hs rehashes stored objects when it grows. */
static unsigned long ckhs_hash(const void *object, unsigned long unused_seed)
{
    (void)unused_seed;
    return hash_of_index((unsigned long)(*(const long *)object - key_offset));
}

/*
 * ck_hs frees a replaced map with defer = true: lock-free readers may still be in it. They all
 * run inside RCU read-side sections, so a grace period is the deferral. Each block carries its
 * rcu head in front.
 */
#define CKHS_BLOCK_HEADER 32
_Static_assert(sizeof(struct vck_rcu_head) <= CKHS_BLOCK_HEADER, "ck_hs block header too small");

struct ckhs_block {
    struct vck_rcu_head rcu;
};

static void *ckhs_malloc(size_t size)
{
    char *block = xmalloc(CKHS_BLOCK_HEADER + size);
    return block + CKHS_BLOCK_HEADER;
}

static void ckhs_free(void *p, size_t size, bool defer)
{
    (void)size;
    struct ckhs_block *block = (struct ckhs_block *)((char *)p - CKHS_BLOCK_HEADER);
    if (defer)
        vck_rcu_free(block, rcu);
    else
        free(block);
}

static struct ck_malloc ckhs_allocator = {.malloc = ckhs_malloc, .free = ckhs_free};

/* ---- table operations ------------------------------------------------------------------- */

/*
 * Each takes the table kind as a constant: the worker loop is instantiated once per table, so
 * the switch folds away.
 */

static void table_init(enum table_kind kind)
{
    switch (kind) {
    case TABLE_VCK:
        vck_qht_init(&qht, key_equal, size_hint, auto_resize ? VCK_QHT_AUTO_RESIZE : 0);
        break;
    case TABLE_LFHT:
        /* Load factor 1: as many buckets as the hint has entries. */
        lfht = cds_lfht_new_flavor(pow2_ceil(size_hint), 1, 1ul << 32,
                                   auto_resize ? CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING : 0,
                                   &VCK_URCU_(flavor), NULL);
        if (!lfht) {
            fprintf(stderr, PROG ": cds_lfht_new failed\n");
            exit(1);
        }
        atomic_store(&lfht_resize_target, pow2_ceil(size_hint));
        break;
    case TABLE_CKHS:
        /* ck_hs grows past half full: twice the hint holds the hinted entries. */
        if (!ck_hs_init(&ckhs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC, ckhs_hash, key_equal,
                        &ckhs_allocator, 2 * (size_hint ? size_hint : 1), seed)) {
            fprintf(stderr, PROG ": ck_hs_init failed\n");
            exit(1);
        }
        break;
    }
}

static inline void *object_new(enum table_kind kind, unsigned long idx)
{
    if (static_keys)
        return &keys[idx];
    long key = key_offset + (long)idx;
    if (kind == TABLE_LFHT) {
        struct lfht_obj *o = xmalloc(sizeof(*o));
        o->key = key;
        cds_lfht_node_init(&o->node);
        return o;
    }
    struct obj *o = xmalloc(sizeof(*o));
    o->key = key;
    return o;
}

/* An object that was never published. */
static inline void object_discard(void *o)
{
    if (!static_keys)
        free(o);
}

/* An object just removed: concurrent lookups may still hold it. */
static inline void object_retire(enum table_kind kind, void *o)
{
    if (static_keys)
        return;
    if (kind == TABLE_LFHT) {
        struct lfht_obj *lo = o;
        vck_rcu_free(lo, rcu);
    } else {
        struct obj *so = o;
        vck_rcu_free(so, rcu);
    }
}

/* Inside a read-side section. */
static inline void *table_lookup(enum table_kind kind, const long *key, uint32_t hash)
{
    switch (kind) {
    case TABLE_VCK:
        return vck_qht_lookup(&qht, key, hash);
    case TABLE_LFHT: {
        struct cds_lfht_iter iter;
        cds_lfht_lookup(lfht, hash, lfht_match, key, &iter);
        struct cds_lfht_node *node = cds_lfht_iter_get_node(&iter);
        return node ? caa_container_of(node, struct lfht_obj, node) : NULL;
    }
    case TABLE_CKHS:
        return ck_hs_get(&ckhs, hash, key);
    }
    return NULL;
}

/* Inside a read-side section (cds_lfht requires one). True if @o was inserted. */
static inline bool table_insert(enum table_kind kind, void *o, uint32_t hash)
{
    switch (kind) {
    case TABLE_VCK:
        return vck_qht_insert(&qht, o, hash, NULL);
    case TABLE_LFHT: {
        struct lfht_obj *lo = o;
        return cds_lfht_add_unique(lfht, hash, lfht_match, &lo->key, &lo->node) == &lo->node;
    }
    case TABLE_CKHS: {
        pthread_mutex_lock(&ckhs_write_lock);
        bool inserted = ck_hs_put(&ckhs, hash, o);
        pthread_mutex_unlock(&ckhs_write_lock);
        return inserted;
    }
    }
    return false;
}

/*
 * Inside the read-side section in which @found was looked up. Returns the object this call
 * removed (the caller retires it), or NULL if another thread removed it first.
 */
static inline void *table_remove(enum table_kind kind, void *found, const long *key, uint32_t hash)
{
    switch (kind) {
    case TABLE_VCK:
        return vck_qht_remove(&qht, found, hash) ? found : NULL;
    case TABLE_LFHT: {
        struct lfht_obj *lo = found;
        return cds_lfht_del(lfht, &lo->node) == 0 ? found : NULL;
    }
    case TABLE_CKHS: {
        /* By key: what is removed may be an equal object inserted since the lookup. */
        pthread_mutex_lock(&ckhs_write_lock);
        void *removed = ck_hs_remove(&ckhs, hash, key);
        pthread_mutex_unlock(&ckhs_write_lock);
        return removed;
    }
    }
    return NULL;
}

/* Outside read-side sections. True if the size changed. */
static bool table_resize(enum table_kind kind, size_t n_elems)
{
    switch (kind) {
    case TABLE_VCK:
        return vck_qht_resize(&qht, n_elems);
    case TABLE_LFHT: {
        unsigned long buckets = pow2_ceil(n_elems);
        cds_lfht_resize(lfht, buckets);
        return atomic_exchange(&lfht_resize_target, buckets) != buckets;
    }
    case TABLE_CKHS:
        break; /* rejected by parse_args(): ck_hs cannot shrink */
    }
    return false;
}

/* Prints the table's shape; returns how many entries it holds. After the run, single thread. */
static size_t print_table_shape(enum table_kind kind)
{
    switch (kind) {
    case TABLE_VCK: {
        struct vck_qht_stats s;
        vck_qht_statistics(&qht, &s);
        printf(" Table:             %zu entries, %zu head buckets (%zu used), "
               "%zu overflow buckets\n",
               s.entries, s.head_buckets, s.used_head_buckets, s.overflow_buckets);
        return s.entries;
    }
    case TABLE_LFHT: {
        long before, after;
        unsigned long count;
        vck_rcu_read_lock();
        cds_lfht_count_nodes(lfht, &before, &count, &after);
        vck_rcu_read_unlock();
        printf(" Table:             %lu entries, %lu buckets last requested\n", count,
               atomic_load(&lfht_resize_target));
        return count;
    }
    case TABLE_CKHS: {
        struct ck_hs_stat s;
        ck_hs_stat(&ckhs, &s);
        printf(" Table:             %lu entries, %lu tombstones made, longest probe %u\n",
               s.n_entries, s.tombstones, s.probe_maximum);
        return s.n_entries;
    }
    }
    return 0;
}

/* ---- workers ---------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void rw_loop(struct thread_info *info,
                                                          enum table_kind kind)
{
    struct thread_stats s = {0};
    const unsigned long lookup_mask = lookup_range - 1, update_mask = update_range - 1;
    uint64_t rng = info->rng;
    bool write_op = info->write_op;

    for (unsigned long iter = 1; !atomic_load_explicit(&test_stop, memory_order_relaxed); iter++) {
        uint64_t r = rng_next(&rng) - 1;
        if (r >= update_threshold) {
            unsigned long idx = r & lookup_mask;
            long key = key_offset + (long)idx;
            uint32_t hash = hash_of_index(idx);
            vck_rcu_read_lock();
            bool hit = table_lookup(kind, &key, hash) != NULL;
            vck_rcu_read_unlock();
            if (hit)
                s.rd++;
            else
                s.not_rd++;
        } else {
            unsigned long idx = r & update_mask;
            long key = key_offset + (long)idx;
            uint32_t hash = hash_of_index(idx);
            if (write_op) {
                bool inserted = false;
                vck_rcu_read_lock();
                if (!table_lookup(kind, &key, hash)) {
                    void *o = object_new(kind, idx);
                    inserted = table_insert(kind, o, hash);
                    if (!inserted)
                        object_discard(o);
                }
                vck_rcu_read_unlock();
                if (inserted)
                    s.in++;
                else
                    s.not_in++;
            } else {
                void *removed = NULL;
                vck_rcu_read_lock();
                void *found = table_lookup(kind, &key, hash);
                if (found)
                    removed = table_remove(kind, found, &key, hash);
                vck_rcu_read_unlock();
                if (removed) {
                    object_retire(kind, removed);
                    s.rm++;
                } else {
                    s.not_rm++;
                }
            }
            write_op = !write_op;
        }
        /* Free unless this is a qsbr build, where grace periods need it. */
        if ((iter & 63) == 0)
            vck_rcu_quiescent_state();
    }
    info->stats = s;
}

static void rw_loop_vck(struct thread_info *info)
{
    rw_loop(info, TABLE_VCK);
}

static void rw_loop_lfht(struct thread_info *info)
{
    rw_loop(info, TABLE_LFHT);
}

static void rw_loop_ckhs(struct thread_info *info)
{
    rw_loop(info, TABLE_CKHS);
}

static void rz_loop(struct thread_info *info)
{
    struct thread_stats *s = &info->stats;
    while (!atomic_load_explicit(&test_stop, memory_order_relaxed)) {
        uint64_t r = rng_next(&info->rng) - 1;
        if (r < resize_threshold) {
            bool resized = table_resize(table_kind, info->resize_down ? resize_min : resize_max);
            info->resize_down = !info->resize_down;
            if (resized)
                s->rz++;
            else
                s->not_rz++;
        }
        vck_rcu_thread_offline();
        usleep((useconds_t)resize_delay_us);
        vck_rcu_thread_online();
    }
}

static void *thread_main(void *arg)
{
    struct thread_info *info = arg;
    vck_rcu_register_thread();
    atomic_fetch_add_explicit(&n_ready_threads, 1, memory_order_release);
    while (!atomic_load_explicit(&test_start, memory_order_acquire))
        cpu_relax();
    if (info->resizer)
        rz_loop(info);
    else if (table_kind == TABLE_VCK)
        rw_loop_vck(info);
    else if (table_kind == TABLE_LFHT)
        rw_loop_lfht(info);
    else
        rw_loop_ckhs(info);
    vck_rcu_unregister_thread();
    return NULL;
}

/* ---- set-up ----------------------------------------------------------------------------- */

static const char usage_text[] =
    "Usage: " PROG " [options]\n"
    "Hash-table throughput under the workload of QEMU's tests/bench/qht-bench.\n"
    "\n"
    " -d = duration, in seconds (fractions allowed; default 1)\n"
    " -n = number of worker threads (default 1)\n"
    "\n"
    " -o = offset at which keys start (default 0)\n"
    " -p = precompute hashes\n"
    "\n"
    " -g = set -s,-k,-K,-l,-r to the same value\n"
    " -s = initial size hint (default: -k)\n"
    " -k = initial number of keys (default 64)\n"
    " -K = initial range of keys (rounded up to pow2; default: -k)\n"
    " -l = lookup range of keys (rounded up to pow2; default: -k)\n"
    " -r = update range of keys (rounded up to pow2; default: -k)\n"
    "\n"
    " -u = update rate (0.0 to 100.0), alternating insertions and removals\n"
    "\n"
    " -R = enable auto-resize\n"
    " -S = resize rate (0.0 to 100.0): resize threads alternate between n/2 and n\n"
    " -D = delay (in us) between potential resizes (default 1000)\n"
    " -N = number of resize threads (default 1; used only with -S)\n"
    "\n"
    " --table=vck|lfht|ckhs  the table under test (default vck): vcpukit qht, liburcu\n"
    "                        cds_lfht, or Concurrency Kit ck_hs (single-writer: its inserts and\n"
    "                        removes are serialised by one mutex; cannot shrink, so no -S)\n"
    " --static-keys          store pointers into a preallocated key array, as QEMU's tool does,\n"
    "                        instead of malloc per insert and free after a grace period per\n"
    "                        remove (vck and ckhs only)\n"
    " --seed=N               random seed (default: the time)\n"
    " -h, --help             this help\n";

static unsigned long parse_ulong(const char *opt, const char *arg, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 0);
    if (arg[0] == '-' || errno || end == arg || *end || v > max)
        die_usage("invalid value for %s: '%s' (an integer from 0 to %lu)", opt, arg, max);
    return v;
}

static double parse_double(const char *opt, const char *arg, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !(v >= min && v <= max))
        die_usage("invalid value for %s: '%s' (a number from %g to %g)", opt, arg, min, max);
    return v;
}

static unsigned long parse_range(const char *opt, const char *arg)
{
    unsigned long v = parse_ulong(opt, arg, MAX_RANGE);
    return pow2_ceil(v ? v : 1);
}

enum { OPT_TABLE = 256, OPT_STATIC_KEYS, OPT_SEED };

static void parse_args(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"table", required_argument, NULL, OPT_TABLE},
        {"static-keys", no_argument, NULL, OPT_STATIC_KEYS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":d:D:g:hk:K:l:n:N:o:pr:Rs:S:u:", long_options, NULL);
        if (c < 0)
            break;
        /* The option's name in messages, for the short options. */
        const char name[3] = {'-', (char)c, '\0'};
        switch (c) {
        case 'd':
            duration = parse_double(name, optarg, 1e-3, 1e6);
            break;
        case 'D':
            resize_delay_us = parse_ulong(name, optarg, 60ul * 1000 * 1000);
            break;
        case 'g':
            init_range = lookup_range = update_range = parse_range(name, optarg);
            init_size = size_hint = parse_ulong(name, optarg, MAX_RANGE);
            size_hint_set = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            exit(0);
        case 'k':
            init_size = parse_ulong(name, optarg, MAX_RANGE);
            break;
        case 'K':
            init_range = parse_range(name, optarg);
            break;
        case 'l':
            lookup_range = parse_range(name, optarg);
            break;
        case 'n':
            n_rw_threads = (unsigned)parse_ulong(name, optarg, MAX_THREADS);
            if (n_rw_threads == 0)
                die_usage("invalid value for -n: '%s' (at least 1)", optarg);
            break;
        case 'N':
            n_rz_threads = (unsigned)parse_ulong(name, optarg, MAX_THREADS);
            break;
        case 'o': {
            char *end;
            errno = 0;
            key_offset = strtol(optarg, &end, 0);
            if (errno || end == optarg || *end || key_offset > LONG_MAX - (long)MAX_RANGE)
                die_usage("invalid value for -o: '%s'", optarg);
            break;
        }
        case 'p':
            precompute_hash = true;
            break;
        case 'r':
            update_range = parse_range(name, optarg);
            break;
        case 'R':
            auto_resize = true;
            break;
        case 's':
            size_hint = parse_ulong(name, optarg, MAX_RANGE);
            size_hint_set = true;
            break;
        case 'S':
            resize_rate = parse_double(name, optarg, 0.0, 100.0) / 100.0;
            break;
        case 'u':
            update_rate = parse_double(name, optarg, 0.0, 100.0) / 100.0;
            break;
        case OPT_TABLE: {
            bool known = false;
            for (int t = TABLE_VCK; t <= TABLE_CKHS; t++) {
                if (!strcmp(optarg, table_names[t])) {
                    table_kind = (enum table_kind)t;
                    known = true;
                }
            }
            if (!known)
                die_usage("invalid value for --table: '%s' (vck, lfht or ckhs)", optarg);
            break;
        }
        case OPT_STATIC_KEYS:
            static_keys = true;
            break;
        case OPT_SEED:
            seed = parse_ulong("--seed", optarg, ULONG_MAX);
            seed_set = true;
            break;
        case ':':
            if (optopt > 0 && optopt < OPT_TABLE)
                die_usage("option -%c needs a value", optopt);
            die_usage("option %s needs a value", argv[optind - 1]);
        default:
            if (optopt > 0 && optopt < OPT_TABLE)
                die_usage("unknown option -%c", optopt);
            die_usage("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);

    if (!init_range)
        init_range = pow2_ceil(init_size ? init_size : 1);
    if (!lookup_range)
        lookup_range = pow2_ceil(init_size ? init_size : 1);
    if (!update_range)
        update_range = pow2_ceil(init_size ? init_size : 1);
    if (!size_hint_set)
        size_hint = init_size;
    if (init_size > init_range)
        die_usage("-k %zu exceeds the initial key range -K %lu", init_size, init_range);
    if (static_keys && table_kind == TABLE_LFHT)
        die_usage("--static-keys: cds_lfht needs a node per entry, not a bare key");
    if (resize_rate > 0 && table_kind == TABLE_CKHS)
        die_usage("-S: ck_hs cannot shrink, so it has no resize workload");
}

/* A uniform random subset of -k indices of the key range, inserted in random order. */
static void populate(enum table_kind kind, uint64_t *rng)
{
    uint32_t *idx = xmalloc(sizeof(*idx) * init_range);
    for (unsigned long i = 0; i < init_range; i++)
        idx[i] = (uint32_t)i;
    for (size_t i = 0; i < init_size; i++) {
        size_t j = i + (size_t)(rng_next(rng) % (init_range - i));
        uint32_t chosen = idx[j];
        idx[j] = idx[i];
        idx[i] = chosen;
        void *o = object_new(kind, chosen);
        vck_rcu_read_lock();
        bool inserted = table_insert(kind, o, hash_of_index(chosen));
        vck_rcu_read_unlock();
        if (!inserted) {
            fprintf(stderr, PROG ": initial insert of key %ld failed\n", key_offset + (long)chosen);
            exit(1);
        }
    }
    free(idx);
    /* cds_lfht grows lazily, from call_rcu workers: left to itself it was seen stuck at a few
     * thousand buckets holding millions of entries. Give it the size its auto-resize aims at. */
    if (kind == TABLE_LFHT && auto_resize) {
        unsigned long buckets = pow2_ceil(init_size ? init_size : 1);
        cds_lfht_resize(lfht, buckets);
        atomic_store(&lfht_resize_target, buckets);
    }
}

static void print_params(void)
{
    printf("Parameters:\n");
    printf(" table:             %s\n", table_descriptions[table_kind]);
    printf(" duration:          %g s\n", duration);
    printf(" # of threads:      %u\n", n_rw_threads);
    printf(" initial # of keys: %zu\n", init_size);
    printf(" initial size hint: %zu\n", size_hint);
    printf(" auto-resize:       %s\n", table_kind == TABLE_CKHS ? "always (ck_hs grows by itself)"
                                       : auto_resize            ? "on"
                                                                : "off");
    if (resize_rate > 0) {
        printf(" resize_rate:       %f%%\n", resize_rate * 100.0);
        printf(" resize range:      %zu-%zu\n", resize_min, resize_max);
        printf(" # resize threads   %u\n", n_rz_threads);
        printf(" resize delay:      %lu us\n", resize_delay_us);
    }
    printf(" update rate:       %f%%\n", update_rate * 100.0);
    printf(" offset:            %ld\n", key_offset);
    printf(" initial key range: %lu\n", init_range);
    printf(" lookup range:      %lu\n", lookup_range);
    printf(" update range:      %lu\n", update_range);
    printf(" precompute hashes: %s\n", precompute_hash ? "yes" : "no");
    printf(" objects:           %s\n", static_keys ? "static key array (as QEMU)"
                                                   : "malloc per insert, freed after a grace "
                                                     "period");
    printf(" seed:              %llu\n", (unsigned long long)seed);
    fflush(stdout);
}

static void print_stat_line(const char *label, size_t ok, size_t not_ok)
{
    size_t total = ok + not_ok;
    printf(" %-19s%.2f M (%.2f%% of %.2fM)\n", label, (double)ok / 1e6,
           total ? (double)ok / (double)total * 100.0 : 0.0, (double)total / 1e6);
}

/* Returns false if the table does not hold what the counts say it should. */
static bool print_results(struct thread_info *infos, unsigned n_infos, double elapsed,
                          double rss_loaded)
{
    struct thread_stats s = {0};
    for (unsigned i = 0; i < n_infos; i++) {
        const struct thread_stats *t = &infos[i].stats;
        s.rd += t->rd;
        s.not_rd += t->not_rd;
        s.in += t->in;
        s.not_in += t->not_in;
        s.rm += t->rm;
        s.not_rm += t->not_rm;
        s.rz += t->rz;
        s.not_rz += t->not_rz;
    }
    printf("Results:\n");
    if (resize_rate > 0) {
        size_t total = s.rz + s.not_rz;
        printf(" Resizes:           %zu (%.2f%% of %zu)\n", s.rz,
               total ? (double)s.rz / (double)total * 100.0 : 0.0, total);
    }
    print_stat_line("Read:", s.rd, s.not_rd);
    print_stat_line("Inserted:", s.in, s.not_in);
    print_stat_line("Removed:", s.rm, s.not_rm);
    double ops = (double)(s.rd + s.not_rd + s.in + s.not_in + s.rm + s.not_rm);
    double tx = ops / 1e6 / elapsed;
    printf(" Throughput:        %.2f MT/s\n", tx);
    printf(" Throughput/thread: %.2f MT/s/thread\n", tx / n_rw_threads);
    printf(" Measured time:     %.3f s\n", elapsed);
    printf(" Peak RSS:          %.1f MiB (%.1f MiB after population)\n", max_rss_mib(), rss_loaded);
    size_t entries = print_table_shape(table_kind);
    /* Every success changed the table by one entry: a cheap check that the run was sane. */
    size_t expected = init_size + s.in - s.rm;
    if (entries != expected) {
        fprintf(stderr,
                PROG ": FAIL: the table holds %zu entries, expected %zu (initial %zu + "
                     "inserted %zu - removed %zu)\n",
                entries, expected, init_size, s.in, s.rm);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    if (!seed_set)
        seed = (uint64_t)time(NULL);

    key_space = init_range;
    if (lookup_range > key_space)
        key_space = lookup_range;
    if (update_range > key_space)
        key_space = update_range;
    if (precompute_hash) {
        hashes = xmalloc(sizeof(*hashes) * key_space);
        for (unsigned long i = 0; i < key_space; i++)
            hashes[i] = vck_qht_hash64((uint64_t)(key_offset + (long)i));
    }
    if (static_keys) {
        keys = xmalloc(sizeof(*keys) * key_space);
        for (unsigned long i = 0; i < key_space; i++)
            keys[i] = key_offset + (long)i;
    }
    update_threshold = rate_threshold(update_rate);
    resize_threshold = rate_threshold(resize_rate);
    if (resize_rate > 0) {
        size_t n = init_range > update_range ? init_range : update_range;
        resize_min = n / 2;
        resize_max = n;
    } else {
        n_rz_threads = 0;
    }

    vck_rcu_register_thread();
    table_init(table_kind);
    print_params();

    fprintf(stderr, "Initialization: populating %zu items...", init_size);
    uint64_t rng = seed ? seed : 1;
    double t0 = now_seconds();
    populate(table_kind, &rng);
    fprintf(stderr, " done in %.2f s\n", now_seconds() - t0);
    double rss_loaded = max_rss_mib();

    unsigned n_threads = n_rw_threads + n_rz_threads;
    struct thread_info *infos = aligned_alloc(64, sizeof(*infos) * n_threads);
    if (!infos) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    memset(infos, 0, sizeof(*infos) * n_threads);
    for (unsigned i = 0; i < n_threads; i++) {
        struct thread_info *info = &infos[i];
        uint64_t s = (seed + i + 1) * 0x9e3779b97f4a7c15ull;
        info->rng = s ? s : 1;
        info->write_op = true;    /* the first update inserts */
        info->resize_down = true; /* the first resize shrinks */
        info->resizer = i >= n_rw_threads;
        int err = pthread_create(&info->thread, NULL, thread_main, info);
        if (err) {
            fprintf(stderr, PROG ": pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    while (atomic_load_explicit(&n_ready_threads, memory_order_acquire) != n_threads)
        sched_yield();

    /* The main thread reads nothing while the workers run. */
    vck_rcu_thread_offline();
    double start = now_seconds();
    atomic_store_explicit(&test_start, true, memory_order_release);
    struct timespec ts = {.tv_sec = (time_t)duration,
                          .tv_nsec = (long)((duration - (double)(time_t)duration) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    atomic_store_explicit(&test_stop, true, memory_order_relaxed);
    double elapsed = now_seconds() - start;
    for (unsigned i = 0; i < n_threads; i++)
        pthread_join(infos[i].thread, NULL);
    vck_rcu_thread_online();

    bool ok = print_results(infos, n_threads, elapsed, rss_loaded);
    free(infos);
    return ok ? 0 : 1;
}
