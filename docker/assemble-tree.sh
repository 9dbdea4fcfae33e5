#!/usr/bin/env bash
# Assembles, from the dist/ zips, the exact file tree of the Docker RIE image (docker/Dockerfile runs this very
# script in its unpack stage), so it can be inspected or run without a Docker engine:
#
#   <dir>/opt/extensions/makenaide-core      the layer zip unpacked under /opt, as Lambda does
#   <dir>/opt/python/makenaide_core/         (same zip) the Python client, on sys.path of a python3.x function
#   <dir>/var/runtime/bootstrap              the function zip's bootstrap (where the provided.al2023 image's
#                                            entrypoint runs it)
#   <dir>/functions/<function>/bootstrap     the same file under its function name: not in the image; lets the
#                                            local harness find it (MAKENAIDE_BIN_DIR=<dir>)
#
# Usage: docker/assemble-tree.sh <dir> <function> <arch>
#   <function>  makenaide-db-initializer | makenaide-scanner | makenaide-data-collector |
#               makenaide-integrated-orchestrator
#   <arch>      x86_64 | arm64
# Zips are read from MAKENAIDE_DIST_DIR (default <repo>/dist; build them with layer-build/build.sh).
# Run it again with another function to add that function's alias to the same <dir>.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTENSION="makenaide-core"
mapfile -t FUNCTIONS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT/functions/FUNCTIONS")   # the one list
MKZIP="${MAKENAIDE_MKZIP:-$ROOT/layer-build/mkzip.py}"

die() { echo "assemble-tree: [ERROR] $*" >&2; exit 1; }

[ $# = 3 ] || die "usage: docker/assemble-tree.sh <dir> <function> <arch>"
DIR="$1"; FUNCTION="$2"; ARCH="$3"
DIST="${MAKENAIDE_DIST_DIR:-$ROOT/dist}"
case " ${FUNCTIONS[*]} " in *" $FUNCTION "*) ;; *) die "unknown function '$FUNCTION' (one of: ${FUNCTIONS[*]})" ;; esac
case "$ARCH" in x86_64|arm64) ;; *) die "arch must be x86_64 or arm64 (got '$ARCH')" ;; esac
LAYER_ZIP="$DIST/$EXTENSION-layer-$ARCH.zip"
FUNCTION_ZIP="$DIST/$FUNCTION-$ARCH.zip"
for zip in "$LAYER_ZIP" "$FUNCTION_ZIP"; do
  [ -s "$zip" ] || die "missing $zip (run layer-build/build.sh --arch $ARCH)"
done

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
STAGE="$(mktemp -d "$DIR/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

# Lambda extracts every layer into /opt; a function zip into /var/task. The image keeps bootstrap in /var/runtime.
python3 "$MKZIP" unpack "$LAYER_ZIP" "$DIR/opt"
python3 "$MKZIP" unpack "$FUNCTION_ZIP" "$STAGE"
[ -f "$STAGE/bootstrap" ] || die "$FUNCTION_ZIP has no bootstrap at its root"
[ -x "$DIR/opt/extensions/$EXTENSION" ] || die "$LAYER_ZIP has no executable extensions/$EXTENSION"
mkdir -p "$DIR/var/runtime" "$DIR/functions/$FUNCTION"
cp -p "$STAGE/bootstrap" "$DIR/var/runtime/bootstrap"
cp -p "$STAGE/bootstrap" "$DIR/functions/$FUNCTION/bootstrap"

echo "assembled $DIR: opt/extensions/$EXTENSION, var/runtime/bootstrap ($FUNCTION, $ARCH)"
echo "run it under the local harness with: MAKENAIDE_BIN_DIR=$DIR"
