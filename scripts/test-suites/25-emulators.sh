#!/usr/bin/env bash
# Suite: the release binaries (unpacked from the dist/ zips 20-layer-build.sh wrote) under cargo-lambda's own
# emulator, `cargo lambda watch --only-lambda-apis` (tests/tests/emulator_cargo_lambda.rs, ignored in the normal
# run). Ends with "cargo-lambda: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."

summary() { echo "cargo-lambda: $1 passed, $2 failed"; }

case "$(uname -m)" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) echo "cargo-lambda: unsupported machine $(uname -m)" >&2; summary 0 1; exit 1 ;;
esac

CARGO_LAMBDA="${MAKENAIDE_CARGO_LAMBDA:-}"
if [ -z "$CARGO_LAMBDA" ]; then
  if [ -x .venv-build/bin/cargo-lambda ]; then CARGO_LAMBDA="$PWD/.venv-build/bin/cargo-lambda"
  else CARGO_LAMBDA="$(command -v cargo-lambda || true)"; fi
fi
if [ -z "$CARGO_LAMBDA" ] || [ ! -x "$CARGO_LAMBDA" ]; then
  echo "cargo-lambda: no cargo-lambda executable (run layer-build/build.sh --install-only, or set MAKENAIDE_CARGO_LAMBDA)" >&2
  summary 0 1; exit 1
fi

BIN_DIR="$(mktemp -d)"
trap 'rm -rf "$BIN_DIR"' EXIT

# unpack <zip> <member> <dest>: one member of a zip to dest, mode 0755 (python3: no unzip needed).
unpack() {
  python3 - "$@" <<'PY'
import os, sys, zipfile
zip_path, member, dest = sys.argv[1:4]
with zipfile.ZipFile(zip_path) as z, z.open(member) as src, open(dest, "wb") as out:
    out.write(src.read())
os.chmod(dest, 0o755)
PY
}

fail_unpack() { echo "cargo-lambda: $1 (run layer-build/build.sh --arch $ARCH first)" >&2; summary 0 1; exit 1; }

layer="dist/makenaide-core-layer-$ARCH.zip"
[ -f "$layer" ] || fail_unpack "$layer is missing"
unpack "$layer" extensions/makenaide-core "$BIN_DIR/makenaide-core" || fail_unpack "cannot unpack $layer"
while read -r fn; do
  zip="dist/$fn-$ARCH.zip"
  [ -f "$zip" ] || fail_unpack "$zip is missing"
  unpack "$zip" bootstrap "$BIN_DIR/$fn" || fail_unpack "cannot unpack $zip"
done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' functions/FUNCTIONS | grep -v '^$')
echo "cargo-lambda: binaries from dist/*-$ARCH.zip in $BIN_DIR: $(cd "$BIN_DIR" && ls | tr '\n' ' ')"

export MAKENAIDE_EMULATOR_BIN_DIR="$BIN_DIR" MAKENAIDE_CARGO_LAMBDA="$CARGO_LAMBDA"
LOG="$(mktemp)"
trap 'rm -rf "$BIN_DIR" "$LOG"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p makenaide-tests --test emulator_cargo_lambda --run-ignored only --no-fail-fast 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  # "Summary [...] N tests run: P passed, F failed, ..." (failed omitted when 0)
  line="$(grep -E '[0-9]+ tests? run:' "$LOG" | tail -1)"
  passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line")"
  failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")"
else
  cargo test -p makenaide-tests --test emulator_cargo_lambda --no-fail-fast -- --ignored 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  line="$(grep -E '^test result: ' "$LOG" | tail -1)"
  passed="$(sed -nE 's/.* ([0-9]+) passed;.*/\1/p' <<<"$line")"
  failed="$(sed -nE 's/.* ([0-9]+) failed;.*/\1/p' <<<"$line")"
fi
passed="${passed:-0}"; failed="${failed:-0}"
# A build failure or a crash runs no test: count it as one failure.
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
summary "$passed" "$failed"
exit "$rc"
