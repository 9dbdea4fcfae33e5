#!/usr/bin/env bash
# The main job, one command: build the extension and the four functions (release), then run the integrated
# orchestrator end to end under the local Lambda harness and print a summary.
#
#   ./run.sh              real https://api.upbit.com
#   ./run.sh --offline    simulated Upbit (no internet needed)
#   ./run.sh --help       more options
#
# PostgreSQL: $MAKENAIDE_DATABASE_URL if set; else the local server on 127.0.0.1:5432 (database `makenaide`,
# created if missing); else a throwaway server for the run.
set -euo pipefail
cd "$(dirname "$0")"

TARGET_DIR="${CARGO_TARGET_DIR:-target}"

echo "== building (release): makenaide-core and the four functions" >&2
mapfile -t FUNCTIONS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' functions/FUNCTIONS)   # the one list
cargo build --release --quiet -p makenaide-core "${FUNCTIONS[@]/#/--package=}"
# The harness itself is only a driver: a debug build is quick to compile and shared with ./test.sh.
echo "== building the local harness" >&2
cargo build --quiet -p makenaide-tests --bin makenaide-local

# The harness runs the release binaries (MAKENAIDE_BIN_DIR, when set, wins: e.g. binaries unpacked from the zips).
export MAKENAIDE_BIN_PROFILE="${MAKENAIDE_BIN_PROFILE:-release}"
exec "$TARGET_DIR/debug/makenaide-local" "$@"
