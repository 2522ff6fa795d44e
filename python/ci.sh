#!/usr/bin/env bash
# Build the r1_rewards wheel from this checkout with the pinned tools (requirements-dev.txt, Cargo.lock)
# and run its Python tests (after rustfmt and clippy on the binding crate).
# Usage: bash python/ci.sh        (R1_PY_VENV=DIR reuses a virtual environment)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${R1_PY_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements-dev.txt"
export PYO3_PYTHON="$venv/bin/python"
(cd "$here" && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
(cd "$here" && "$venv/bin/maturin" build --release --locked -o "$out")
"$venv/bin/pip" install -q --force-reinstall "$out"/r1_rewards-*.whl
cd "$out" && "$venv/bin/python" -m pytest -q "$here/tests"
