#!/usr/bin/env bash
# The packaging and deployment test suite: layer-build/build.sh (on fake static binaries), deploy.sh against a
# moto server on 127.0.0.1 through the real AWS CLI, and the Docker RIE tree (docker/assemble-tree.sh).
#
#   tests/deploy/run.sh              install what is missing, run the suite, end with "deploy: N passed, N failed"
#   tests/deploy/run.sh --setup      only install (pytest, moto[server], awscli: tests/deploy/requirements.txt)
#   tests/deploy/run.sh -k attach    other arguments go to pytest
#
# Python packages go to a venv (MAKENAIDE_TEST_VENV, default <repo>/.venv-deploy-tests) that also sees the
# machine's site-packages, so pinned versions already installed are not downloaded again.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MAKENAIDE_TEST_VENV:-$ROOT/.venv-deploy-tests}"
REQUIREMENTS="$ROOT/tests/deploy/requirements.txt"

log() { echo "deploy-tests: $*" >&2; }

setup() {
  command -v python3 >/dev/null 2>&1 || { log "python3 is required"; return 1; }
  if ! command -v readelf >/dev/null 2>&1; then
    log "installing binutils (readelf)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null || return 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv --system-site-packages "$VENV" || return 1
  fi
  if ! cmp -s "$REQUIREMENTS" "$VENV/.requirements"; then
    log "installing $REQUIREMENTS"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" || return 1
    cp "$REQUIREMENTS" "$VENV/.requirements"
  fi
}

setup || { echo "deploy: 0 passed, 1 failed"; exit 1; }
[ "${1:-}" = "--setup" ] && exit 0

LOG="$(mktemp)"; trap 'rm -f "$LOG"' EXIT
# The venv's bin first: its aws/moto if it installed them, else the machine's.
PATH="$VENV/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m pytest "$ROOT/tests/deploy" -p no:cacheprovider -q -rfEs -n "${MAKENAIDE_DEPLOY_TEST_WORKERS:-2}" "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
summary="$(grep -E '^=* ?[0-9]+ (passed|failed|error)|^[0-9]+ (passed|failed)' "$LOG" | tail -1)"
count() { grep -oE "[0-9]+ $1" <<<"$summary" | head -1 | cut -d' ' -f1; }
passed="$(count passed)"; failed="$(count failed)"; errors="$(count 'errors?')"
failed=$(( ${failed:-0} + ${errors:-0} ))
# pytest exits 5 when it collected nothing: that is a failure here.
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "deploy: ${passed:-0} passed, $failed failed"
exit "$rc"
