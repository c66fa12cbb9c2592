/*
 * vck_bench.h - write google-benchmark benchmarks in C.
 *
 * A benchmark is a C function that prepares, calls vck_bench_begin() to learn how many
 * iterations to run (the timer starts there), runs them in its own tight loop, calls
 * vck_bench_end() (the timer stops), and cleans up. Running the loop in C keeps the C++ shim out
 * of the measured path: a nanosecond-scale operation is not timed together with a call into C++.
 *
 * With .threads > 1 the function runs on that many threads at once, each with its own state;
 * vck_bench_begin() and vck_bench_end() are barriers across them, so thread 0 may set up shared
 * data before begin and tear it down after end.
 */
#ifndef VCK_BENCH_H
#define VCK_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct vck_bench_state;
typedef void vck_bench_fn(struct vck_bench_state *st);

#define VCK_BENCH_MAX_ARGS 8

struct vck_bench_def {
    const char *name; /* "<module>/<what>/<variant>", e.g. "rcu/read_section/memb" */
    vck_bench_fn *fn;
    void *arg;                        /* handed back by vck_bench_arg() */
    int threads;                      /* 0 means 1 */
    int64_t args[VCK_BENCH_MAX_ARGS]; /* one registration per argument ... */
    int n_args;                       /* ... or none when 0 */
    bool real_time;                   /* report wall-clock time instead of CPU time */
};

/* Register a benchmark. Call before main runs them (from a vck_bench_register_*() hook). */
void vck_bench_register(const struct vck_bench_def *def);

/* Start timing; returns the number of iterations this thread must run. */
uint64_t vck_bench_begin(struct vck_bench_state *st);
/* Stop timing. Must follow the loop, once. */
void vck_bench_end(struct vck_bench_state *st);

void *vck_bench_arg(struct vck_bench_state *st);
int64_t vck_bench_range(struct vck_bench_state *st); /* this registration's argument, or 0 */
int vck_bench_thread_index(struct vck_bench_state *st);
int vck_bench_threads(struct vck_bench_state *st);

/* Exclude work inside a timed region (costly: use per batch, not per iteration). */
void vck_bench_pause(struct vck_bench_state *st);
void vck_bench_resume(struct vck_bench_state *st);

/* Report extra figures. A rate counter is divided by the elapsed time. */
void vck_bench_counter(struct vck_bench_state *st, const char *name, double value, bool rate);
void vck_bench_items(struct vck_bench_state *st, int64_t items);
void vck_bench_label(struct vck_bench_state *st, const char *label);
/* Mark the run failed with @msg; the function must still return (calling no begin/end after). */
void vck_bench_fail(struct vck_bench_state *st, const char *msg);

/* splitmix64: a seeded, repeatable sequence for building maps and access orders. */
static inline uint64_t vck_bench_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Keep the compiler from discarding a computed value. */
#define vck_bench_keep(v) __asm__ volatile("" : : "r"(v) : "memory")

#ifdef __cplusplus
}
#endif

#endif
