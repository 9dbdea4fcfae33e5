#!/usr/bin/env bash
# Does musl's allocator keep the memory of a large response? Prints, for the release musl extension built with
# musl's own malloc and with each alternative allocator (features of makenaide-core, off in the layer):
#   - the layer zip's size (layer-build/mkzip.py, as the layer build packs it) and the bytes added vs musl;
#   - VmRSS of the extension before, at the peak of (VmHWM) and after a 1M-row `/db/query`, and after 1,100
#     distinct Upbit candle GETs (the cache's byte bound applies), from /proc/<pid>/status.
#
#   bench/allocator.sh              build the variants (x86_64 musl, ~3-5 min each on 2 cores), then measure
#   bench/allocator.sh --no-build   measure the binaries of the last build (bench-out/allocator/<variant>/)
#   ALLOCATOR_VARIANTS="musl" bench/allocator.sh   only these variants
#
# Needs what layer-build/build.sh needs (cargo-lambda + zig in .venv-build: scripts/setup.sh or
# `layer-build/build.sh --install-only`) and the local PostgreSQL the tests use. It prints figures; it never fails
# on a figure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench-out/allocator
TRIPLE=x86_64-unknown-linux-musl
LAMBDA_TARGET=${CARGO_TARGET_DIR:-$ROOT/target-lambda}
read -r -a VARIANTS <<<"${ALLOCATOR_VARIANTS:-musl mimalloc mimalloc-v2 dlmalloc}"
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0

mkdir -p "$OUT"
if [ "$BUILD" = 1 ]; then
  export PATH="${MAKENAIDE_BUILD_VENV:-$ROOT/.venv-build}/bin:$PATH"
  for v in "${VARIANTS[@]}"; do
    features=()
    [ "$v" != musl ] && features=(--features "alloc-$v")
    echo "== build $v ==" >&2
    # The layer's exact build (layer-build/build.sh build_arch), one variant at a time.
    CARGO_TARGET_DIR=$LAMBDA_TARGET cargo lambda build --release --disable-optimizations --target "$TRIPLE" \
      --lambda-dir "$LAMBDA_TARGET/alloc-$v" -p makenaide-core "${features[@]}" >&2
    mkdir -p "$OUT/$v"
    cp "$LAMBDA_TARGET/alloc-$v/makenaide-core/bootstrap" "$OUT/$v/makenaide-core"
  done
fi

# The function next to each extension (the harness runs both from MAKENAIDE_BIN_DIR); the probe test itself.
cargo build -q -p makenaide-data-collector
cargo build -q -p makenaide-tests --test reliability_hostile_http
echo
printf '%-10s %12s %12s %14s\n' variant binary layer_zip zip_vs_musl
base_zip=
for v in "${VARIANTS[@]}"; do
  ln -sf "$ROOT/target/debug/makenaide-data-collector" "$OUT/$v/makenaide-data-collector"
  python3 layer-build/mkzip.py pack "$OUT/$v.zip" "extensions/makenaide-core=$OUT/$v/makenaide-core" >/dev/null
  bin=$(stat -c %s "$OUT/$v/makenaide-core")
  zip=$(stat -c %s "$OUT/$v.zip")
  [ -z "$base_zip" ] && base_zip=$zip
  printf '%-10s %12s %12s %+14d\n' "$v" "$bin" "$zip" $((zip - base_zip))
done
echo
for v in "${VARIANTS[@]}"; do
  MAKENAIDE_ALLOCATOR_LABEL=$v MAKENAIDE_BIN_DIR=$OUT/$v \
    cargo nextest run -p makenaide-tests --test reliability_hostile_http --run-ignored only -E 'test(rss_after_large_responses)' \
    --no-capture 2>&1 | grep '^rss ' || echo "$v: probe failed (rerun with --no-capture to see why)"
done
