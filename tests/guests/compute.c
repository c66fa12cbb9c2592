/*
 * An integer workload: FNV-1a hashing, CRC-32 bit by bit, quicksort, 32x32 matrix products,
 * a linked-list walk in random order and Euclid's gcd (divisions), each over data of its own
 * made by a xorshift generator. Every hart runs its own copy in its own memory (aggregate
 * throughput with --smp N); hart 0 waits for all and checks that every copy got the same
 * digests, and that they equal the values computed once under QEMU for this scale. Sorting is
 * also checked directly (ascending, same sum).
 *
 * COMPUTE_SCALE multiplies the work, about 9 million instructions per unit and hart: 2 (the
 * default) for the tests, a few hundredths of a second on vck-run; the benchmark build
 * (compute-bench.elf) uses 150, 1.3 billion instructions, 2 to 3 s on one hart of vck-run
 * (vck-run --stats compute-bench.elf) and 1.4 s on QEMU.
 */
#include <stddef.h>

#include "guest.h"

#ifndef COMPUTE_SCALE
#define COMPUTE_SCALE 2
#endif

#define BUF_BYTES 16384
#define SORT_N    2048
#define MAT_N     32
#define LIST_N    4096
#define GCD_PAIRS 512
#define N_KERNELS 6

struct node {
    struct node *next;
    uint64_t value;
};

struct work {
    uint8_t buf[BUF_BYTES];
    uint32_t sort[SORT_N];
    uint32_t a[MAT_N][MAT_N], b[MAT_N][MAT_N], c[MAT_N][MAT_N];
    struct node nodes[LIST_N];
    uint32_t perm[LIST_N];
};

_Static_assert(sizeof(struct work) <= HEAP_PER_HART, "per-hart work area too small");

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t fnv_passes(struct work *w, unsigned passes)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned p = 0; p < passes; p++) {
        h ^= p;
        for (unsigned i = 0; i < BUF_BYTES; i++) {
            h ^= w->buf[i];
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

static uint64_t crc_passes(struct work *w, unsigned passes)
{
    uint32_t crc = 0xffffffffu;
    for (unsigned p = 0; p < passes; p++) {
        for (unsigned i = 0; i < BUF_BYTES / 4; i++) {
            crc ^= w->buf[i];
            for (int k = 0; k < 8; k++)
                crc = crc & 1 ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
        }
    }
    return ~crc;
}

static void quicksort(uint32_t *v, int lo, int hi)
{
    while (lo < hi) {
        uint32_t pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                uint32_t t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        /* Recurse into the smaller part, loop on the larger: bounded stack. */
        if (j - lo < hi - i) {
            quicksort(v, lo, j);
            lo = i;
        } else {
            quicksort(v, i, hi);
            hi = j;
        }
    }
}

static uint64_t sort_rounds(struct work *w, uint64_t *seed, unsigned rounds, unsigned *bad)
{
    uint64_t digest = 0;
    for (unsigned r = 0; r < rounds; r++) {
        uint64_t sum = 0;
        for (unsigned i = 0; i < SORT_N; i++) {
            w->sort[i] = (uint32_t)xorshift(seed);
            sum += w->sort[i];
        }
        quicksort(w->sort, 0, SORT_N - 1);
        uint64_t after = w->sort[0];
        for (unsigned i = 1; i < SORT_N; i++) {
            *bad += w->sort[i - 1] > w->sort[i];
            after += w->sort[i];
        }
        *bad += after != sum;
        for (unsigned i = 0; i < SORT_N; i += 97)
            digest = digest * 31 + w->sort[i];
    }
    return digest;
}

static uint64_t matmul_rounds(struct work *w, uint64_t *seed, unsigned rounds)
{
    for (unsigned i = 0; i < MAT_N; i++)
        for (unsigned j = 0; j < MAT_N; j++) {
            w->a[i][j] = (uint32_t)xorshift(seed) & 0xff;
            w->b[i][j] = (uint32_t)xorshift(seed) & 0xff;
        }
    for (unsigned r = 0; r < rounds; r++) {
        for (unsigned i = 0; i < MAT_N; i++)
            for (unsigned j = 0; j < MAT_N; j++) {
                uint32_t acc = 0;
                for (unsigned k = 0; k < MAT_N; k++)
                    acc += w->a[i][k] * w->b[k][j];
                w->c[i][j] = acc;
            }
        for (unsigned i = 0; i < MAT_N; i++)
            for (unsigned j = 0; j < MAT_N; j++)
                w->a[i][j] = w->c[i][j] ^ (w->c[i][j] >> 7);
    }
    uint64_t digest = 0;
    for (unsigned i = 0; i < MAT_N; i++)
        for (unsigned j = 0; j < MAT_N; j++)
            digest = digest * 1000003 + w->c[i][j];
    return digest;
}

static uint64_t list_walks(struct work *w, uint64_t *seed, unsigned walks)
{
    for (unsigned i = 0; i < LIST_N; i++)
        w->perm[i] = i;
    for (unsigned i = LIST_N - 1; i > 0; i--) {
        unsigned j = (unsigned)(xorshift(seed) % (i + 1));
        uint32_t t = w->perm[i];
        w->perm[i] = w->perm[j];
        w->perm[j] = t;
    }
    for (unsigned i = 0; i < LIST_N; i++) {
        struct node *n = &w->nodes[w->perm[i]];
        n->next = i + 1 < LIST_N ? &w->nodes[w->perm[i + 1]] : NULL;
        n->value = xorshift(seed) & 0xffff;
    }
    uint64_t digest = 0;
    for (unsigned k = 0; k < walks; k++) {
        uint64_t sum = 0, pos = 0;
        for (const struct node *n = &w->nodes[w->perm[0]]; n; n = n->next)
            sum += n->value * ++pos;
        digest = digest * 31 + sum + k;
    }
    return digest;
}

static uint64_t gcd_rounds(uint64_t *seed, unsigned rounds)
{
    uint64_t digest = 0;
    for (unsigned r = 0; r < rounds; r++)
        for (unsigned i = 0; i < GCD_PAIRS; i++) {
            uint64_t a = xorshift(seed) >> 20, b = xorshift(seed) >> 30;
            while (b) {
                uint64_t t = a % b;
                a = b;
                b = t;
            }
            digest += a;
        }
    return digest;
}

struct result {
    uint64_t digests[N_KERNELS];
    unsigned sort_bad;
};

static struct result results[MAX_HARTS];
static const char *const names[N_KERNELS] = {"fnv-1a", "crc-32", "quicksort",
                                             "matmul", "list",   "gcd"};

static void run(unsigned hart)
{
    struct work *w = hart_heap(hart);
    struct result *r = &results[hart];
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < BUF_BYTES; i++)
        w->buf[i] = (uint8_t)xorshift(&seed);
    unsigned s = COMPUTE_SCALE;
    r->digests[0] = fnv_passes(w, 24 * s);
    r->digests[1] = crc_passes(w, 4 * s);
    r->digests[2] = sort_rounds(w, &seed, 8 * s, &r->sort_bad);
    r->digests[3] = matmul_rounds(w, &seed, 4 * s);
    r->digests[4] = list_walks(w, &seed, 64 * s);
    r->digests[5] = gcd_rounds(&seed, 8 * s);
}

/* The digests under QEMU (qemu-system-riscv64 7.2, -smp 1) for the scales that are built. */
#if COMPUTE_SCALE == 2
static const uint64_t expected[N_KERNELS] = {0x1cec946e09424525ull, 0x00000000e7a26f30ull,
                                             0x3c217a870059e36eull, 0xccda41fe91e9170aull,
                                             0xc0168a246e97b840ull, 0x000000000000aa87ull};
#elif COMPUTE_SCALE == 150
static const uint64_t expected[N_KERNELS] = {0x783e860a9499d9e5ull, 0x00000000c9e0181dull,
                                             0xfa309e8d53c4e4e6ull, 0xca4ab736f3bd9218ull,
                                             0xfccc61a01a156ac0ull, 0x000000000072aadfull};
#else
#define COMPUTE_UNCHECKED /* a scale of one's own: digests printed, compared across harts only */
#endif

int main(unsigned hart, unsigned harts)
{
    if (hart == 0) {
        puts_uart("compute: scale ");
        print_u64(COMPUTE_SCALE);
        puts_uart(", ");
        print_u64(harts);
        puts_uart(" harts\n");
    }
    barrier();
    run(hart);
    barrier();
    if (hart != 0)
        return 0;
    unsigned bad = 0;
    for (unsigned k = 0; k < N_KERNELS; k++) {
        unsigned differ = 0;
        for (unsigned h = 1; h < harts; h++)
            differ += results[h].digests[k] != results[0].digests[k];
        puts_uart(names[k]);
        puts_uart(" ");
        print_hex(results[0].digests[k]);
#ifndef COMPUTE_UNCHECKED
        bool ok = results[0].digests[k] == expected[k];
        puts_uart(ok ? " ok" : " WRONG");
        bad += !ok;
#endif
        if (differ) {
            puts_uart(", harts that differ: ");
            print_u64(differ);
            bad++;
        }
        putc_uart('\n');
    }
    for (unsigned h = 0; h < harts; h++)
        bad += results[h].sort_bad;
    if (results[0].sort_bad)
        puts_uart("quicksort: output not sorted or not a permutation\n");
    if (bad) {
        print_line_u64("compute: wrong results: ", bad);
        return 1;
    }
    puts_uart("compute: PASS\n");
    return 0;
}
