#!/usr/bin/env bash
# Installs what recd needs on a fresh machine, if missing, then builds the workspace:
# - ONNX Runtime 1.31.1 from PyPI into .deps/py (git-ignored; the worker loads its
#   libonnxruntime.so and the tests use its Python binding as an independent scorer);
# - Debian's redis-tools (redis-cli, redis-benchmark) and redis-server (the reference
#   server the protocol tests compare against);
# - with --tests, redis-py from PyPI into .deps/py (a client the tests drive recd with), and
#   the training scripts' imports (scripts/requirements-train.txt) into .deps/pytools (the
#   tests run a training command job end to end), and Debian's chromium (the dashboard's
#   browser test) and dpkg-dev (the package test).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ORT_LIB=".deps/py/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"

if [ ! -f "$ORT_LIB" ]; then
  echo "setup: installing onnxruntime==${ORT_VERSION} into .deps/py"
  python3 -m pip install --quiet --disable-pip-version-check --target .deps/py "onnxruntime==${ORT_VERSION}"
fi
[ -f "$ORT_LIB" ] || { echo "setup: $ORT_LIB is missing after install" >&2; exit 1; }

# redis-py: one of the client libraries the tests drive recd with (RESP2 and RESP3).
if [ "${1:-}" = "--tests" ] && ! PYTHONPATH=.deps/py python3 -c "import redis, sys; sys.exit(redis.__version__ != '6.4.0')" 2>/dev/null; then
  echo "setup: installing redis==6.4.0 (redis-py, for the client tests) into .deps/py"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target .deps/py "redis==6.4.0"
fi

if [ "${1:-}" = "--tests" ] && ! PYTHONPATH=.deps/pytools python3 -c "import numpy, pandas, pyarrow, onnx" 2>/dev/null; then
  echo "setup: installing the training scripts' packages (scripts/requirements-train.txt) into .deps/pytools"
  python3 -m pip install --quiet --disable-pip-version-check --target .deps/pytools -r scripts/requirements-train.txt
fi

if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-tools and redis-server (clients for the demo, a reference server for the tests)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-tools redis-server >/dev/null
fi

# Headless Chromium for the dashboard's browser test (tests/integration/dashboard.rs), and
# dpkg-dev's dpkg-shlibdeps for the package test (tests/integration/package.rs, make deb).
if [ "${1:-}" = "--tests" ]; then
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (the dashboard's browser test, the package test)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# `--tests` builds the test targets too: dev-dependencies change the feature set of shared
# crates, so building them in the same pass saves `cargo test` a second build of the tree.
targets=()
[ "${1:-}" = "--tests" ] && targets=(--all-targets)
echo "setup: building (release)"
cargo build --release --workspace --quiet "${targets[@]}"
# The shipped binary and plugins without debug info; it is kept beside them in *.debug.
scripts/split-debug.sh
