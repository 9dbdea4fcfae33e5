#!/usr/bin/env bash
# Installs what the build and the tests need, only what is missing (idempotent; safe to run on every test run).
# Grows with the project: add a line per need, each guarded by a check.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
  # apt_install <command-or-path-to-check> <package>...
  local check="$1"; shift
  if have "$check" || [ -e "$check" ]; then return 0; fi
  if ! have apt-get; then log "missing $check and no apt-get: install $* yourself"; return 1; fi
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" = 0 ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pip_install() {
  # pip_install <command-to-check> <pip spec>...
  local check="$1"; shift
  if have "$check"; then return 0; fi
  log "installing $* (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "$@"
}

rust_target() {
  # rust_target <triple>
  if rustup target list --installed 2>/dev/null | grep -qx "$1"; then return 0; fi
  log "adding rust target $1"
  rustup target add "$1"
}

# --- toolchain ---------------------------------------------------------------------------------------------
have cargo || { log "cargo not found: install Rust (rustup) first"; exit 1; }

# --- harness and end-to-end tests ----------------------------------------------------------------------------
apt_install curl curl                                   # bash fixtures of the harness self-tests
apt_install openssl openssl                             # TLS certificates of throwaway PostgreSQL clusters
apt_install psql postgresql-client                      # TLS check of the throwaway cluster
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install /usr/lib/postgresql/15/bin/initdb postgresql
apt_install /usr/sbin/pgbouncer pgbouncer                # reliability_scale: PgBouncer transaction pooling

# The machine's PostgreSQL on 127.0.0.1:5432 (trust auth) is where test databases are made: start it if down.
if [ -z "${MAKENAIDE_TEST_PG:-}" ] && have pg_isready && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if have pg_ctlcluster && [ -d /etc/postgresql ]; then
    log "starting the local PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || log "warning: no PostgreSQL on 127.0.0.1:5432 (set MAKENAIDE_TEST_PG)"
fi

# Python functions run under AWS's runtime interface client (tests/tests/readme_examples.rs): a venv with the pinned
# tests/python/requirements.txt, reinstalled only when that file changed (a copy is kept in the venv).
python_tests_venv() {
  local venv=.venv-python-tests req=tests/python/requirements.txt
  apt_install python3 python3 python3-venv
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    python3 -m venv --system-site-packages "$venv"
  fi
  if ! cmp -s "$req" "$venv/.requirements"; then
    log "installing $req in $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.requirements"
  fi
}
python_tests_venv

# The real Neon driver and drizzle-orm/neon-http (tests/tests/neon_driver.rs) under the machine's Node: `npm ci` from
# tests/node/package-lock.json, rerun only when the lockfile changed (a copy is kept in node_modules).
node_tests_modules() {
  local dir=tests/node
  apt_install node nodejs # the machine's Node 20 (with npm) is there already; the driver needs Node >= 19
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.copy"; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.copy"
  fi
}
node_tests_modules

# --- packaging / deployment (layer-build, deploy.sh) ----------------------------------------------------------
# rustup musl targets + pinned cargo-lambda and zig (PyPI) in .venv-build; pytest + moto in .venv-deploy-tests.
layer-build/build.sh --install-only
tests/deploy/run.sh --setup
: "${SETUP_EXTRA:=}"   # hook: SETUP_EXTRA="rust_target x; pip_install y z" for one-off needs
if [ -n "$SETUP_EXTRA" ]; then eval "$SETUP_EXTRA"; fi

log "ok"
