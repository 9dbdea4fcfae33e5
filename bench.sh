#!/usr/bin/env bash
# Benchmark suite: makenaide-core against the old Python layer and against the physical floor.
#
#   ./bench.sh            full run (~4-5 min on 2 cores after the build)
#   ./bench.sh --quick    fewer samples (warm 50, hop 500, cold 3)
#   ./bench.sh --help     options of makenaide-bench (sample counts, paths)
#
# Builds the release binaries (extension + functions, then the harness in a separate cargo invocation so the
# functions keep their own feature set), creates the benchmark venv (bench-out/venv, pinned bench/requirements.txt)
# once, runs the suite, and writes bench-out/ (results.json, benchmarks.md), docs/benchmarks.md and
# docs/benchmarks.png. It prints figures; it never fails on a timing (only on a broken set-up).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
OUT=$ROOT/bench-out
VENV=$OUT/venv
REQ=$ROOT/bench/requirements.txt

case "${1:-}" in
  -h|--help) exec cargo run -q --release -p makenaide-tests --bin makenaide-bench -- --help ;;
esac

echo "== build (release) =="
mapfile -t FUNCTIONS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' functions/FUNCTIONS)   # the one list
cargo build --release -p makenaide-core "${FUNCTIONS[@]/#/--package=}"
cargo build --release -p makenaide-tests --bin makenaide-bench --bin bench-direct-collector

echo "== python venv ($VENV) =="
mkdir -p "$OUT"
PY=${PYTHON:-python3}
stamp=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  echo "$stamp" > "$VENV/.requirements-sha256"
fi

echo "== run =="
MAKENAIDE_BIN_PROFILE=release "$ROOT/target/release/makenaide-bench" \
  --python "$VENV/bin/python" --out "$OUT" --docs "$ROOT/docs" "$@"

echo "== chart =="
MPLBACKEND=Agg "$VENV/bin/python" "$ROOT/bench/plot.py" "$OUT/results.json" "$ROOT/docs/benchmarks.png"
echo "wrote docs/benchmarks.md, docs/benchmarks.png, bench-out/results.json"
