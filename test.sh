#!/usr/bin/env bash
# The test command (README): install what is missing, build everything, run every suite.
#
#   ./test.sh                 all suites
#   ./test.sh -- <filter>     pass a test-name filter to the Rust test runner
#
# Suites: 0) clippy over the workspace, warnings are errors; 1) Rust: `cargo nextest run --workspace` (or `cargo test --workspace` without nextest): unit tests,
# harness self-tests, end-to-end tests of the real binaries under the emulated Lambda environment;
# 2) every executable in scripts/test-suites/ (sorted), e.g. the layer build + deploy tests of the packaging work.
# A suite script exits non-zero on failure and may print a line "N passed, N failed" to be counted.
set -uo pipefail
cd "$(dirname "$0")"

FILTER=()
if [ "${1:-}" = "--" ]; then shift; FILTER=("$@"); fi

START=$SECONDS
./scripts/setup.sh || exit 1

echo "== build (debug): extension, functions, harness"
# The end-to-end tests run the binaries from target/debug, so build them all before the tests.
cargo build --workspace --all-targets || exit 1

PASSED=0; FAILED=0; FAILED_SUITES=()
LOG="$(mktemp)"; trap 'rm -f "$LOG"' EXIT

echo "== suite: lint (clippy, warnings are errors)"
T0=$SECONDS
if cargo clippy --workspace --all-targets --quiet -- -D warnings; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); FAILED_SUITES+=("clippy"); fi
echo "== lint took $((SECONDS - T0)) s"

echo "== suite: rust (workspace)"
T0=$SECONDS
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "${FILTER[@]}" 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  # "Summary [...] N tests run: P passed, F failed, ..." (failed omitted when 0)
  line="$(grep -E '[0-9]+ tests? run:' "$LOG" | tail -1)"
  p="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line")"; f="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")"
  PASSED=$((PASSED + ${p:-0})); FAILED=$((FAILED + ${f:-0}))
else
  cargo test --workspace --no-fail-fast "${FILTER[@]}" 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  while read -r p f; do PASSED=$((PASSED + p)); FAILED=$((FAILED + f)); done < <(
    sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$LOG")
fi
[ "$rc" = 0 ] || FAILED_SUITES+=("rust")
echo "== rust took $((SECONDS - T0)) s"

# Hook for more suites: drop an executable script in scripts/test-suites/ (e.g. 20-layer-build.sh, 30-deploy.sh).
for suite in scripts/test-suites/*; do
  [ -x "$suite" ] || continue
  echo "== suite: $suite"
  T0=$SECONDS
  "$suite" 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  counts="$(grep -E '^([A-Za-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$LOG" | tail -1)"
  if [ -n "$counts" ]; then
    p="$(sed -nE 's/.*([^0-9]|^)([0-9]+) passed.*/\2/p' <<<"$counts")"; f="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$counts")"
    PASSED=$((PASSED + ${p:-0})); FAILED=$((FAILED + ${f:-0}))
  fi
  [ "$rc" = 0 ] || FAILED_SUITES+=("$suite")
  echo "== $suite took $((SECONDS - T0)) s"
done

echo "== done in $((SECONDS - START)) s"
if [ ${#FAILED_SUITES[@]} -gt 0 ]; then
  echo "failed suites: ${FAILED_SUITES[*]}"
  [ "$FAILED" -gt 0 ] || FAILED=1
fi
echo "tests: $PASSED passed, $FAILED failed"
[ ${#FAILED_SUITES[@]} = 0 ]
