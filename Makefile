# The two commands of the README: `make demo` and `make test`. Both install what is
# missing (scripts/setup.sh) and build first.
.PHONY: setup demo test lint deb model quality bench-serving bench-fairness bench-batch fuzz soak

setup:
	scripts/setup.sh

demo: setup
	scripts/demo.sh

test:
	scripts/setup.sh --tests
	cargo test --release --workspace

# target/deb/recd_<version>_amd64.deb: the stripped binary, plugins, ONNX Runtime, config and
# demo jobs under /etc/recd, the systemd unit (scripts/deb/; docs/operations.md, "Debian package").
deb: setup
	scripts/deb/build.sh target/deb

lint:
	cargo clippy --release --workspace --all-targets -- -D warnings
	cargo fmt --all -- --check
	# the SDK reference plugin authors read (cargo doc): no broken links or markup
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps -p recd-plugin-api
	# and the daemon's: its doc links must name items that exist and are public
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps -p recd

# Retrains the ranking model from the demo data (needs the dev tools, see models/ranking/README.md).
model:
	python3 -m pip install --quiet --target .deps/pytools -r scripts/requirements-dev.txt
	PYTHONPATH=.deps/pytools python3 scripts/derive_demo_data.py
	PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py --out models/ranking

# Regenerates docs/quality.md: every strategy trained and run through the daemon on data before a
# cut-off and scored with `recd eval` on what follows (retail demo data and MovieLens 100K, read in
# place from ../shared/data/ml-100k; work files in target/quality/).
quality: setup
	python3 -m pip install --quiet --target .deps/pytools -r scripts/requirements-dev.txt
	PYTHONPATH=.deps/pytools python3 scripts/quality_report.py

# Regenerates docs/performance.md: redis-benchmark against recd and against a local redis-server
# holding the same 100,000 lists (ZREVRANGE and GET, 1 and 50 clients, with and without -P 16);
# then hot-key rows (one key, Zipf-distributed keys, uniform as a check of the client) read by
# benches/loadgen (recd-loadgen) from both servers, pinned and not; work files in
# target/bench-serving/. Needs redis-server and redis-tools (scripts/setup.sh).
# The benchmarks build as `make test` does (`--all-targets`): the same feature set, so one
# build serves both instead of a second one of the whole tree (about 10 minutes here).
bench-serving:
	cargo build --release --workspace --all-targets
	python3 scripts/bench_serving.py

# Adds or replaces the fairness section of docs/performance.md: a client's top-10 reads timed
# while 4 others read a 5,000,000-item list whole, on recd (ZREVRANGE and GET) and on a local
# redis-server holding the same lists (work files in target/bench-fairness/).
bench-fairness:
	cargo build --release --workspace --all-targets
	python3 scripts/bench_fairness.py

# Adds or replaces the batch section of docs/performance.md: the ranking job through recd vs
# scripts/python_pipeline.py (pandas + onnxruntime + redis-py into a local redis-server) on the
# demo data, MovieLens 100K and the generated M workload; recd's scoring stage vs a tight ONNX
# Runtime loop; peak memory for the S, M and L workloads (generated once into target/bench-batch/).
bench-batch:
	scripts/setup.sh --tests
	PYTHONPATH=.deps/pytools python3 -c "import numpy, pandas, pyarrow, onnx, onnxruntime, redis" 2>/dev/null || \
	  python3 -m pip install --quiet --target .deps/pytools -r scripts/requirements-dev.txt
	python3 scripts/bench_batch.py

# Adds or replaces the gate section of docs/performance.md: the same synthetic table (1,000,000
# users x 10 items) published with and without every gate check, alternating in one daemon.
bench-gate:
	scripts/setup.sh
	cargo build --release --workspace --all-targets
	python3 scripts/bench_gate.py

# Fuzzes each target in fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer) for FUZZ_SECONDS
# (default 600), starting from the committed seeds; the growing corpora stay in fuzz/corpus/
# and any crash in fuzz/artifacts/. cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets
# the stable toolchain use them. See fuzz/README.md.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= resp job_file result_stream
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t && \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096) || exit 1; \
	done

# Soak test (not in `make test`): the release daemon for SOAK_MINUTES (default 30) with jobs
# every few seconds, job files edited and broken, plugin files replaced, 50 readers; prints
# errors, memory over time and read latency percentiles (daemon/examples/soak.rs; work files
# and report.md in target/soak/).
# `setup.sh --tests` builds with the dev-dependencies' features, as the soak example needs:
# the same build as `make test`, not a second one.
SOAK_MINUTES ?= 30
soak:
	scripts/setup.sh --tests
	target/release/examples/soak --minutes $(SOAK_MINUTES)
