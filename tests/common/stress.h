/*
 * Helpers shared by the stress tests: command line, seeded random numbers, clocks.
 *
 * Every stress test accepts the same options, so CI and a long soak differ only in arguments:
 *   --duration SECONDS  how long to run (each test has a short default for CI)
 *   --seed N            replay a run's random choices (thread timing is never replayable)
 *   --threads N         worker threads, where the test has a notion of workers
 *   --until-fail        stop at the first failed check (tests that set accepts_until_fail):
 *                       how a broken twin whose race is rare runs long only when it must
 * Unknown options and malformed numbers exit with status 2 and a one-line message.
 */
#ifndef VCK_TEST_STRESS_H
#define VCK_TEST_STRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vck_stress_args {
    double duration;
    uint64_t seed;
    int threads;
    bool accepts_until_fail; /* set by the test: it can stop early; else --until-fail is refused */
    bool until_fail;
};

/* Fills @args (defaults already set by the caller, seed 0 meaning "pick one") from argv. */
void vck_stress_parse(int argc, char **argv, struct vck_stress_args *args, const char *name);

/* Monotonic seconds. */
double vck_now(void);

/* splitmix64: small, fast, good enough to drive test choices; state must be seeded. */
static inline uint64_t vck_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound). */
static inline uint64_t vck_rand_below(uint64_t *state, uint64_t bound)
{
    return (uint64_t)(((unsigned __int128)vck_rand(state) * bound) >> 64);
}

/*
 * Async-signal-safe formatting for fatal-signal handlers, which must still print a stress test's
 * FAIL line: append @s, or @v in decimal, to @buf (at least 256 bytes) at @len; returns the new
 * length, never past 255.
 */
static inline size_t vck_stress_put_str(char *buf, size_t len, const char *s)
{
    while (*s && len < 255)
        buf[len++] = *s++;
    return len;
}

static inline size_t vck_stress_put_u64(char *buf, size_t len, uint64_t v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && len < 255)
        buf[len++] = digits[--n];
    return len;
}

#endif
