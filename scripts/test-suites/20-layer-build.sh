#!/usr/bin/env bash
# Suite: build the layer and function zips for both architectures (static musl, reproducible, size budgets).
# The deploy suite after it also runs its real-artifact checks on what this writes to dist/.
set -euo pipefail
cd "$(dirname "$0")/../.."
if layer-build/build.sh --arch all; then echo "layer-build: 1 passed, 0 failed"; else echo "layer-build: 0 passed, 1 failed"; exit 1; fi
