# The two commands a new machine needs (see README.md):
#   make run    install what is missing, build release, run the kit's main job (vck-run)
#   make test   install what is missing, build every preset, run the default test suite
.PHONY: run test deps build bench format format-check clean

# The kit's main job: the harness running our integer workload, one copy per hart, on 4 harts.
run: build
	./build/release/harness/vck-run --smp 4 --stats --timeout 300 \
		build/release/tests/guests/compute-bench.elf

test: deps
	./scripts/test.sh

deps:
	@./scripts/deps.sh

build: deps
	cmake --preset release >/dev/null
	cmake --build --preset release -j $$(nproc)

# The full benchmark suite with repetitions, for figures worth quoting (see bench/README.md).
bench: build
	./build/release/bench/vck-bench --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true \
		--benchmark_report_aggregates_only=true

format:
	git ls-files '*.c' '*.h' '*.cc' | xargs clang-format -i

format-check:
	git ls-files '*.c' '*.h' '*.cc' | xargs clang-format --dry-run -Werror

clean:
	rm -rf build
