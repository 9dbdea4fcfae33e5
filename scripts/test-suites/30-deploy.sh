#!/usr/bin/env bash
# Suite: deploy.sh against moto_server on 127.0.0.1, the Docker files' consistency, and the Docker image's tree
# (assembled from the dist/ zips) run under the local Lambda harness.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tests/deploy/run.sh
