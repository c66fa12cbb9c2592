// The only C++ in vcpukit: adapts google-benchmark's C++ API to bench/vck_bench.h.
#include <benchmark/benchmark.h>

#include "vck_bench.h"
#include "suites.h"

struct vck_bench_state {
    benchmark::State &state;
    void *arg;
    bool running;
};

extern "C" void vck_bench_register(const struct vck_bench_def *def)
{
    vck_bench_fn *fn = def->fn;
    void *arg = def->arg;
    auto *b = benchmark::RegisterBenchmark(def->name, [fn, arg](benchmark::State &state) {
        vck_bench_state st{state, arg, false};
        fn(&st);
    });
    if (def->threads > 1)
        b->Threads(def->threads);
    for (int i = 0; i < def->n_args; i++)
        b->Arg(def->args[i]);
    if (def->real_time)
        b->UseRealTime();
}

extern "C" uint64_t vck_bench_begin(struct vck_bench_state *st)
{
    // One batch of exactly max_iterations: the caller loops, then end() finishes the batch.
    uint64_t n = static_cast<uint64_t>(st->state.max_iterations);
    // False only when the run was failed before it started: then run nothing.
    st->running = st->state.KeepRunningBatch(static_cast<benchmark::IterationCount>(n));
    return st->running ? n : 0;
}

extern "C" void vck_bench_end(struct vck_bench_state *st)
{
    // The single batch is used up, so this call finishes the run and stops the timer.
    if (st->running && !st->state.KeepRunningBatch(1))
        st->running = false;
}

extern "C" void *vck_bench_arg(struct vck_bench_state *st)
{
    return st->arg;
}

extern "C" int64_t vck_bench_range(struct vck_bench_state *st)
{
    return st->state.range(0);
}

extern "C" int vck_bench_thread_index(struct vck_bench_state *st)
{
    return st->state.thread_index();
}

extern "C" int vck_bench_threads(struct vck_bench_state *st)
{
    return st->state.threads();
}

extern "C" void vck_bench_pause(struct vck_bench_state *st)
{
    st->state.PauseTiming();
}

extern "C" void vck_bench_resume(struct vck_bench_state *st)
{
    st->state.ResumeTiming();
}

extern "C" void vck_bench_counter(struct vck_bench_state *st, const char *name, double value,
                                  bool rate)
{
    st->state.counters[name] = benchmark::Counter(value, rate ? benchmark::Counter::kIsRate
                                                              : benchmark::Counter::kDefaults);
}

extern "C" void vck_bench_items(struct vck_bench_state *st, int64_t items)
{
    st->state.SetItemsProcessed(items);
}

extern "C" void vck_bench_label(struct vck_bench_state *st, const char *label)
{
    st->state.SetLabel(label);
}

extern "C" void vck_bench_fail(struct vck_bench_state *st, const char *msg)
{
    st->state.SkipWithError(msg);
}

int main(int argc, char **argv)
{
    vck_bench_register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
