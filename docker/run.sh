#!/usr/bin/env bash
# One command for the Docker RIE test bed: builds the zips if missing, builds and starts docker/compose.yaml
# (PostgreSQL, simulated Upbit, one function + the makenaide-core layer under the Runtime Interface Emulator),
# invokes the function through the RIE and prints the result, then stops everything.
#
# Usage: docker/run.sh [--function NAME] [--arch x86_64|arm64] [--event JSON] [--real-upbit] [--keep]
#   --function    makenaide-integrated-orchestrator (default), makenaide-db-initializer, makenaide-scanner,
#                 makenaide-data-collector
#   --arch        default: this machine's architecture
#   --event       the invocation payload (default: {} for the orchestrator, db-initializer and scanner;
#                 {"markets":["KRW-BTC"],"interval":"days","count":3} for the data collector)
#   --real-upbit  call https://api.upbit.com instead of the simulated Upbit
#   --keep        leave the containers running (stop them with: docker compose -f docker/compose.yaml down -v)
# Environment: MAKENAIDE_RIE_PORT (default 9000), MAKENAIDE_DIST_DIR, RUST_LOG.
# Without a Docker engine: docker/assemble-tree.sh builds the same tree for the local harness.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE="$ROOT/docker/compose.yaml"
READY_TIMEOUT_S=120

die() { echo "docker/run.sh: [ERROR] $*" >&2; exit 1; }
log() { echo "docker/run.sh: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

FUNCTION="makenaide-integrated-orchestrator"
case "$(uname -m)" in arm64|aarch64) ARCH=arm64 ;; *) ARCH=x86_64 ;; esac
EVENT=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --function) FUNCTION="${2:?--function needs a value}"; shift 2 ;;
    --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
    --event) EVENT="${2:?--event needs a value}"; shift 2 ;;
    --real-upbit) export MAKENAIDE_UPBIT_BASE_URL="https://api.upbit.com"; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$ARCH" in x86_64) PLATFORM=linux/amd64 ;; arm64) PLATFORM=linux/arm64 ;; *) die "--arch must be x86_64 or arm64" ;; esac
case "$FUNCTION" in
  makenaide-data-collector) : "${EVENT:={\"markets\":[\"KRW-BTC\"],\"interval\":\"days\",\"count\":3\}}" ;;
  makenaide-db-initializer|makenaide-scanner|makenaide-integrated-orchestrator) : "${EVENT:={\}}" ;;
  *) die "unknown function $FUNCTION" ;;
esac

command -v docker >/dev/null 2>&1 || die "docker is not installed (without Docker: docker/assemble-tree.sh + the local harness)"
docker info >/dev/null 2>&1 || die "no Docker engine is reachable (docker info failed); without one use docker/assemble-tree.sh + the local harness"
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose); else die "Docker Compose is not installed (docker compose plugin or docker-compose)"; fi
command -v curl >/dev/null 2>&1 || die "curl is not installed"

DIST="${MAKENAIDE_DIST_DIR:-$ROOT/dist}"
if [ ! -s "$DIST/makenaide-core-layer-$ARCH.zip" ] || [ ! -s "$DIST/$FUNCTION-$ARCH.zip" ]; then
  log "building the $ARCH zips first"
  "$ROOT/layer-build/build.sh" --arch "$ARCH" --dist "$DIST"
fi
# The Docker build context is the repository root: the zips must be in <repo>/dist.
[ "$DIST" -ef "$ROOT/dist" ] || die "the Docker build reads <repo>/dist: build there (unset MAKENAIDE_DIST_DIR)"

export MAKENAIDE_FUNCTION="$FUNCTION" MAKENAIDE_ARCH="$ARCH" MAKENAIDE_DOCKER_PLATFORM="$PLATFORM"
PORT="${MAKENAIDE_RIE_PORT:-9000}"
export MAKENAIDE_RIE_PORT="$PORT"
compose() { "${COMPOSE[@]}" -f "$COMPOSE_FILE" "$@"; }
if [ "$KEEP" = 0 ]; then trap 'compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT; fi

log "building and starting $FUNCTION ($ARCH) with PostgreSQL and ${MAKENAIDE_UPBIT_BASE_URL:-the simulated Upbit}"
compose up -d --build --wait postgres upbit-sim >&2
compose up -d --build function >&2

URL="http://localhost:$PORT/2015-03-31/functions/function/invocations"
# Readiness: the RIE answers any HTTP request once it listens (404 on /).
deadline=$((SECONDS + READY_TIMEOUT_S))
until curl -s -o /dev/null "http://localhost:$PORT/"; do
  [ "$SECONDS" -lt "$deadline" ] || { compose logs function >&2; die "the RIE did not listen on port $PORT within ${READY_TIMEOUT_S}s"; }
  sleep 0.5
done

log "invoking $FUNCTION with $EVENT"
RESULT="$(curl -sS -X POST "$URL" -H 'Content-Type: application/json' -d "$EVENT")" \
  || { compose logs function >&2; die "the invocation request failed"; }
echo "$RESULT"
if [[ "$RESULT" =~ ^[[:space:]]*\{[[:space:]]*\"error(Message|Type)\" ]]; then
  compose logs function >&2
  die "$FUNCTION returned a function error"
fi
