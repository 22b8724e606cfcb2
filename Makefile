# The two commands of the README: `make demo` and `make test`. Both install what is
# missing (scripts/setup.sh) and build first.
.PHONY: setup demo test lint model

setup:
	scripts/setup.sh

demo: setup
	scripts/demo.sh

test:
	scripts/setup.sh --tests
	cargo test --release --workspace

lint:
	cargo clippy --release --workspace --all-targets -- -D warnings
	cargo fmt --all -- --check

# Retrains the ranking model from the demo data (needs the dev tools, see models/ranking/README.md).
model:
	python3 -m pip install --quiet --target .deps/pytools -r scripts/requirements-dev.txt
	PYTHONPATH=.deps/pytools python3 scripts/derive_demo_data.py
	PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py
