#!/usr/bin/env bash
# Deploys makenaide-core to AWS with the AWS CLI (v1 or v2) and nothing else.
#
#   ./deploy.sh [deploy] [options]            publish the layer, create/update the four functions, smoke-invoke
#   ./deploy.sh attach FUNCTION [options]     attach the latest published layer to any existing function
#   ./deploy.sh help
#
# deploy:
#   1. publishes dist/makenaide-core-layer-<arch>.zip as layer "<layer-name>-<arch>" for every --layer-archs
#      (compatible runtimes: provided.al2023 provided.al2 python3.9 ... python3.13; compatible architecture <arch>);
#      an unchanged zip reuses the latest version instead of publishing a duplicate;
#   2. creates or updates makenaide-db-initializer, makenaide-scanner, makenaide-data-collector and
#      makenaide-integrated-orchestrator from dist/<function>-<arch>.zip (runtime provided.al2023, handler bootstrap,
#      role, memory, timeout, environment, optional VPC), with the new layer version attached (other layers kept);
#   3. waits until every function is Active and its last update Successful;
#   4. smoke-invokes makenaide-db-initializer ({}) and makenaide-scanner ({"limit":1}); a FunctionError fails.
#   Running it again updates in place: it never creates a second function or an identical layer version.
#
# attach: puts the newest "<layer-name>-<arch>" version on FUNCTION (Rust, Python, any zip runtime), replacing an
#   older makenaide-core version and keeping every other layer in place. <arch> defaults to the function's own.
#   The extension reads MAKENAIDE_DATABASE_URL (or MAKENAIDE_DATABASE_SECRET_ID) from that function's environment:
#   set it there.
#
# Options (flag / environment variable / default):
#   --arch x86_64|arm64          MAKENAIDE_ARCH                 arm64 (Graviton)   functions' architecture
#   --layer-archs LIST           MAKENAIDE_LAYER_ARCHS          "x86_64 arm64"     layers to publish ("all" = both)
#   --region REGION              AWS_REGION, AWS_DEFAULT_REGION, or the CLI profile's region
#   --profile NAME               AWS_PROFILE
#   --role-arn ARN               MAKENAIDE_ROLE_ARN             (required)         functions' execution role
#   (database URL)               MAKENAIDE_DATABASE_URL                            postgres://user:pass@host:5432/db
#                                                                                  (the password then sits in the
#                                                                                  functions' environment)
#   --db-secret-id ID            MAKENAIDE_DB_SECRET_ID                            Secrets Manager secret (ARN or
#                                                                                  name) holding the URL or RDS JSON:
#                                                                                  only its id goes into the functions'
#                                                                                  environment, the extension reads it
#                                                                                  (checked with describe-secret)
#   --db-iam-auth                MAKENAIDE_DB_IAM_AUTH=1                           RDS IAM authentication: the URL has
#                                                                                  no password, the extension signs a
#                                                                                  token per connection
#   --memory MB                  MAKENAIDE_MEMORY_MB            256
#   --timeout SECONDS            MAKENAIDE_TIMEOUT_S            300
#   --subnet-ids a,b             MAKENAIDE_SUBNET_IDS                              VPC (both or neither)
#   --security-group-ids a,b     MAKENAIDE_SECURITY_GROUP_IDS
#   --kms-key-arn ARN            MAKENAIDE_KMS_KEY_ARN                             key for the environment at rest
#   --env KEY=VALUE              (repeatable)                                      more function environment
#   --function-prefix P          MAKENAIDE_FUNCTION_PREFIX      ""                 e.g. "dev-" → dev-makenaide-scanner
#   --layer-name NAME            MAKENAIDE_LAYER_NAME           makenaide-core     layers are NAME-x86_64, NAME-arm64
#   --dist DIR                   MAKENAIDE_DIST_DIR             <repo>/dist
#   --endpoint-url URL           MAKENAIDE_AWS_ENDPOINT_URL                        passed to every call (tests, LocalStack)
#   --no-smoke                   MAKENAIDE_NO_SMOKE=1                              skip the smoke invocations
#   --dry-run                                                                      print every AWS CLI call, make none
#   (waiting)                    MAKENAIDE_WAIT_MODE            auto               auto|waiter|poll: `aws lambda wait`,
#                                                                                  or a poll loop (old CLIs lack it)
#                                MAKENAIDE_WAIT_TIMEOUT_S       600                poll loop limit
# The CLI itself also honours AWS_ENDPOINT_URL (CLI v2, and v1 since botocore 1.31).
#
# With --db-secret-id or --db-iam-auth the script prints the IAM policy the execution role needs for it
# (secretsmanager:GetSecretValue on the secret, or rds-db:connect on the database user).
#
# Secrets: the database URL never appears on a command line (it reaches the CLI through a 0600 file:// argument),
# in --dry-run output, or in anything this script prints (values are masked); xtrace is switched off.
set -euo pipefail
umask 077   # the temporary files hold the function environment
# `bash -x deploy.sh` would print the database URL in variable assignments: refuse to trace.
case "$-" in *x*) set +x; echo "deploy: xtrace switched off (this script handles a secret)" >&2 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- fixed facts ---------------------------------------------------------------------------------------------
EXTENSION="makenaide-core"
mapfile -t FUNCTIONS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT/functions/FUNCTIONS")   # the one list
FUNCTION_RUNTIME="provided.al2023"
FUNCTION_HANDLER="bootstrap"
# Every runtime the static extension runs in (it needs no libc from the image).
LAYER_RUNTIMES=(provided.al2023 provided.al2 python3.9 python3.10 python3.11 python3.12 python3.13)
LAYER_LICENSE="MIT OR Apache-2.0"
MAX_LAYERS_PER_FUNCTION=5                       # Lambda's limit
# Smoke invocations: "function<TAB>event". db-initializer also applies the schema on a fresh database.
SMOKE=($'makenaide-db-initializer\t{}' $'makenaide-scanner\t{"limit":1}')
DB_URL_ENV="MAKENAIDE_DATABASE_URL"
DB_SECRET_ENV="MAKENAIDE_DATABASE_SECRET_ID"   # what the extension reads (the functions' environment)
DB_IAM_ENV="MAKENAIDE_DB_IAM_AUTH"

log() { echo "deploy: $*" >&2; }
warn() { echo "deploy: [WARN] $*" >&2; }
die() { echo "deploy: [ERROR] $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# --- configuration -------------------------------------------------------------------------------------------
CMD="deploy"
case "${1:-}" in
  deploy) shift ;;
  attach) CMD="attach"; shift ;;
  help|-h|--help) usage; exit 0 ;;
esac

ARCH="${MAKENAIDE_ARCH:-arm64}"
LAYER_ARCHS="${MAKENAIDE_LAYER_ARCHS:-x86_64 arm64}"
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
PROFILE=""
ROLE_ARN="${MAKENAIDE_ROLE_ARN:-}"
DB_SECRET_ID="${MAKENAIDE_DB_SECRET_ID:-}"
DB_IAM_AUTH="${MAKENAIDE_DB_IAM_AUTH:-0}"
case "$DB_IAM_AUTH" in 1|true|yes|on) DB_IAM_AUTH=1 ;; *) DB_IAM_AUTH=0 ;; esac
MEMORY_MB="${MAKENAIDE_MEMORY_MB:-256}"
TIMEOUT_S="${MAKENAIDE_TIMEOUT_S:-300}"
SUBNET_IDS="${MAKENAIDE_SUBNET_IDS:-}"
SECURITY_GROUP_IDS="${MAKENAIDE_SECURITY_GROUP_IDS:-}"
KMS_KEY_ARN="${MAKENAIDE_KMS_KEY_ARN:-}"
FUNCTION_PREFIX="${MAKENAIDE_FUNCTION_PREFIX:-}"
LAYER_NAME="${MAKENAIDE_LAYER_NAME:-$EXTENSION}"
DIST="${MAKENAIDE_DIST_DIR:-$ROOT/dist}"
ENDPOINT_URL="${MAKENAIDE_AWS_ENDPOINT_URL:-}"
NO_SMOKE="${MAKENAIDE_NO_SMOKE:-0}"
WAIT_MODE="${MAKENAIDE_WAIT_MODE:-auto}"
WAIT_TIMEOUT_S="${MAKENAIDE_WAIT_TIMEOUT_S:-600}"
DRY_RUN=0
EXTRA_ENV=()
TARGET=""
ARCH_GIVEN=0
[ -n "${MAKENAIDE_ARCH:-}" ] && ARCH_GIVEN=1

need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (see ./deploy.sh help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) need_value "$1" $#; ARCH="$2"; ARCH_GIVEN=1; shift 2 ;;
    --layer-archs) need_value "$1" $#; LAYER_ARCHS="$2"; shift 2 ;;
    --region) need_value "$1" $#; REGION="$2"; shift 2 ;;
    --profile) need_value "$1" $#; PROFILE="$2"; shift 2 ;;
    --role-arn) need_value "$1" $#; ROLE_ARN="$2"; shift 2 ;;
    --db-secret-id) need_value "$1" $#; DB_SECRET_ID="$2"; shift 2 ;;
    --db-iam-auth) DB_IAM_AUTH=1; shift ;;
    --memory) need_value "$1" $#; MEMORY_MB="$2"; shift 2 ;;
    --timeout) need_value "$1" $#; TIMEOUT_S="$2"; shift 2 ;;
    --subnet-ids) need_value "$1" $#; SUBNET_IDS="$2"; shift 2 ;;
    --security-group-ids) need_value "$1" $#; SECURITY_GROUP_IDS="$2"; shift 2 ;;
    --kms-key-arn) need_value "$1" $#; KMS_KEY_ARN="$2"; shift 2 ;;
    --env) need_value "$1" $#; EXTRA_ENV+=("$2"); shift 2 ;;
    --function-prefix) need_value "$1" $#; FUNCTION_PREFIX="$2"; shift 2 ;;
    --layer-name) need_value "$1" $#; LAYER_NAME="$2"; shift 2 ;;
    --dist) need_value "$1" $#; DIST="$2"; shift 2 ;;
    --endpoint-url) need_value "$1" $#; ENDPOINT_URL="$2"; shift 2 ;;
    --no-smoke) NO_SMOKE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see ./deploy.sh help)" ;;
    *)
      [ "$CMD" = attach ] && [ -z "$TARGET" ] || die "unexpected argument '$1' (see ./deploy.sh help)"
      TARGET="$1"; shift ;;
  esac
done

case "$ARCH" in amd64) ARCH=x86_64 ;; aarch64) ARCH=arm64 ;; esac
case "$ARCH" in x86_64|arm64) ;; *) die "--arch must be x86_64 or arm64 (got '$ARCH')" ;; esac
[ "$LAYER_ARCHS" = all ] && LAYER_ARCHS="x86_64 arm64"
for a in $LAYER_ARCHS; do case "$a" in x86_64|arm64) ;; *) die "--layer-archs: unknown architecture '$a'" ;; esac; done

# The database URL lives in a non-exported variable from here on: child processes (the AWS CLI) never see it.
DB_URL="${MAKENAIDE_DATABASE_URL:-}"
unset MAKENAIDE_DATABASE_URL

# AWS CLI v2 would page output through `less` and may prompt; v1 ignores both variables.
export AWS_PAGER="" AWS_CLI_AUTO_PROMPT=off

WORK="$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/makenaide-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- secrets masking -----------------------------------------------------------------------------------------
SECRETS=()
add_secret() { [ -n "$1" ] && SECRETS+=("$1"); return 0; }
# mask TEXT: TEXT with every known secret replaced by ****.
mask() {
  local s="$1" v
  for v in ${SECRETS[@]+"${SECRETS[@]}"}; do s="${s//"$v"/****}"; done
  printf '%s' "$s"
}
register_db_url() {
  add_secret "$1"
  # The password alone too, in case an error message quotes only it.
  if [[ "$1" =~ ^[a-zA-Z]+://[^:/@]*:([^@]+)@ ]] && [ ${#BASH_REMATCH[1]} -ge 4 ]; then add_secret "${BASH_REMATCH[1]}"; fi
}

# --- AWS CLI calls -------------------------------------------------------------------------------------------
AWS_GLOBAL=()
DISPLAY_FROM=()   # arguments shown differently in --dry-run output (a file:// path → its masked content)
DISPLAY_TO=()

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
print_call() {
  local line="aws" arg i shown
  for arg in ${AWS_GLOBAL[@]+"${AWS_GLOBAL[@]}"} "$@"; do
    shown="$arg"
    for i in ${DISPLAY_FROM[@]+"${!DISPLAY_FROM[@]}"}; do
      [ "$arg" = "${DISPLAY_FROM[$i]}" ] && shown="${DISPLAY_TO[$i]}"
    done
    line+=" $(quote "$(mask "$shown")")"
  done
  echo "[dry-run] $line"
}

# run_aws ARGS...: one AWS CLI call. Output → $AWS_OUT (never printed unmasked), masked stderr → $AWS_ERR.
# Under --dry-run: prints the call and succeeds with empty output.
run_aws() {
  AWS_OUT=""; AWS_ERR=""
  if [ "$DRY_RUN" = 1 ]; then print_call "$@"; return 0; fi
  local rc=0
  AWS_OUT="$(aws ${AWS_GLOBAL[@]+"${AWS_GLOBAL[@]}"} "$@" 2>"$WORK/stderr")" || rc=$?
  AWS_ERR="$(mask "$(cat "$WORK/stderr")")"
  AWS_ERR="${AWS_ERR#"${AWS_ERR%%[![:space:]]*}"}"   # the CLI starts its errors with an empty line
  return "$rc"
}
# must_aws WHAT ARGS...: run_aws, and stop with the (masked) AWS error when it fails.
must_aws() {
  local what="$1"; shift
  run_aws "$@" || die "$what failed: ${AWS_ERR:-no error text}"
}
dry_note() { [ "$DRY_RUN" = 1 ] && echo "[dry-run] # $*"; return 0; }

# --- helpers -------------------------------------------------------------------------------------------------
fn_name() { echo "$FUNCTION_PREFIX$1"; }
layer_name() { echo "$LAYER_NAME-$1"; }

# CodeSha256 as Lambda reports it: base64 of the raw SHA-256 digest.
code_sha256() {
  local hex
  if have sha256sum; then hex="$(sha256sum "$1")"; elif have shasum; then hex="$(shasum -a 256 "$1")";
  else hex="$(openssl dgst -sha256 -r "$1")"; fi
  hex="${hex%% *}"
  printf '%b' "$(sed 's/../\\x&/g' <<<"$hex")" | base64
}

# json_string VALUE: VALUE as a JSON string literal (fails on control characters other than tab/newline/CR).
json_string() {
  local s="$1"
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"
  s="${s//$'\t'/\\t}"; s="${s//$'\n'/\\n}"; s="${s//$'\r'/\\r}"
  [[ ! "$s" =~ [[:cntrl:]] ]] || return 1
  printf '"%s"' "$s"
}

# --- prerequisites (all checked before the first change) ----------------------------------------------------
check_cli() {
  have aws || die "the AWS CLI is not installed (v2: see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html; v1: pip install awscli)"
  aws --version >/dev/null 2>&1 || die "the AWS CLI does not run: $(aws --version 2>&1 | head -1)"
}

check_region() {
  if [ -z "$REGION" ]; then
    REGION="$(aws ${PROFILE:+--profile "$PROFILE"} configure get region 2>/dev/null || true)"
  fi
  [ -n "$REGION" ] || die "no AWS region: pass --region, or set AWS_REGION (or a region in your CLI profile)"
  AWS_GLOBAL=(--region "$REGION")
  [ -z "$PROFILE" ] || AWS_GLOBAL+=(--profile "$PROFILE")
  [ -z "$ENDPOINT_URL" ] || AWS_GLOBAL+=(--endpoint-url "$ENDPOINT_URL")
}

ACCOUNT="<account-id>"
check_credentials() {
  run_aws sts get-caller-identity --query Account --output text \
    || die "no usable AWS credentials for region $REGION (configure a profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or SSO): $AWS_ERR"
  ACCOUNT="${AWS_OUT:-<account-id>}"
}

check_artifacts() {
  local missing=() a f
  for a in $LAYER_ARCHS; do
    f="$DIST/$EXTENSION-layer-$a.zip"; [ -s "$f" ] || missing+=("$f")
  done
  for f in "${FUNCTIONS[@]}"; do
    f="$DIST/$f-$ARCH.zip"; [ -s "$f" ] || missing+=("$f")
  done
  [ ${#missing[@]} = 0 ] || die "missing build artifacts: ${missing[*]} (run layer-build/build.sh --arch all first)"
}

check_role() {
  [ -n "$ROLE_ARN" ] || die "no execution role: pass --role-arn arn:aws:iam::<account>:role/<name> (or set MAKENAIDE_ROLE_ARN); it needs AWSLambdaBasicExecutionRole, plus AWSLambdaVPCAccessExecutionRole for a VPC"
  [[ "$ROLE_ARN" =~ ^arn:aws[a-z-]*:iam::[0-9]{12}:role/(.+)$ ]] || die "--role-arn '$ROLE_ARN' is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
  local role_name="${BASH_REMATCH[1]##*/}"
  if ! run_aws iam get-role --role-name "$role_name" --query Role.Arn --output text; then
    case "$AWS_ERR" in
      *NoSuchEntity*) die "the execution role $ROLE_ARN does not exist (create it first; see README, Deploy)" ;;
      *AccessDenied*|*UnauthorizedOperation*|*not\ authorized*)
        warn "cannot read IAM role $role_name (no iam:GetRole permission): assuming it exists" ;;
      *) die "checking the execution role failed: $AWS_ERR" ;;
    esac
  fi
}

check_settings() {
  [[ "$MEMORY_MB" =~ ^[0-9]+$ ]] && [ "$MEMORY_MB" -ge 128 ] && [ "$MEMORY_MB" -le 10240 ] \
    || die "--memory must be 128..10240 MB (got '$MEMORY_MB')"
  [[ "$TIMEOUT_S" =~ ^[0-9]+$ ]] && [ "$TIMEOUT_S" -ge 1 ] && [ "$TIMEOUT_S" -le 900 ] \
    || die "--timeout must be 1..900 s (got '$TIMEOUT_S')"
  if { [ -n "$SUBNET_IDS" ] && [ -z "$SECURITY_GROUP_IDS" ]; } || { [ -z "$SUBNET_IDS" ] && [ -n "$SECURITY_GROUP_IDS" ]; }; then
    die "VPC: give both --subnet-ids and --security-group-ids (or neither)"
  fi
  local kv
  for kv in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    [[ "$kv" =~ ^([A-Za-z][A-Za-z0-9_]*)=(.*)$ ]] || die "--env wants KEY=VALUE (got a value without a valid KEY=)"
    case "${BASH_REMATCH[1]}" in
      "$DB_URL_ENV"|"$DB_SECRET_ENV"|"$DB_IAM_ENV")
        die "set the database with $DB_URL_ENV, --db-secret-id or --db-iam-auth, not --env ${BASH_REMATCH[1]}" ;;
    esac
    case "${BASH_REMATCH[1]}" in *TOKEN*|*SECRET*|*PASSWORD*|*PASS|*KEY*|*URL*|*DSN*) add_secret "${BASH_REMATCH[2]}" ;; esac
  done
}

# The database, one of three ways; DB_ENV_KEYS/DB_ENV_VALUES are what goes into the functions' environment:
# - $MAKENAIDE_DATABASE_URL (password included);
# - --db-secret-id: only the secret's id (the extension reads the secret); the secret must exist (describe-secret);
# - --db-iam-auth: a password-less $MAKENAIDE_DATABASE_URL plus MAKENAIDE_DB_IAM_AUTH=true.
DB_ENV_KEYS=(); DB_ENV_VALUES=(); DB_POLICY=""
resolve_db() {
  register_db_url "$DB_URL"
  if [ -n "$DB_SECRET_ID" ] && [ "$DB_IAM_AUTH" = 1 ]; then
    die "--db-secret-id and --db-iam-auth do not combine: IAM authentication needs no secret (use one of them)"
  fi
  if [ -n "$DB_SECRET_ID" ]; then
    [ -z "$DB_URL" ] || die "both $DB_URL_ENV and --db-secret-id are set: unset $DB_URL_ENV (the secret holds the database URL or RDS JSON)"
    local arn
    if run_aws secretsmanager describe-secret --secret-id "$DB_SECRET_ID" --query ARN --output text; then
      arn="${AWS_OUT:-arn:aws:secretsmanager:$REGION:$ACCOUNT:secret:$DB_SECRET_ID-*}"
      [ "$DRY_RUN" = 1 ] || log "database secret: $arn"
    else
      case "$AWS_ERR" in
        *ResourceNotFound*) die "secret '$DB_SECRET_ID' does not exist in $REGION: create it first (the database URL, or RDS's JSON with username, password, host, port, dbname), or pass its ARN" ;;
        *AccessDenied*|*not\ authorized*)
          warn "cannot check secret '$DB_SECRET_ID' (no secretsmanager:DescribeSecret): assuming it exists"
          arn="arn:aws:secretsmanager:$REGION:$ACCOUNT:secret:$DB_SECRET_ID*"
          [[ "$DB_SECRET_ID" != arn:* ]] || arn="$DB_SECRET_ID" ;;
        *) die "checking secret '$DB_SECRET_ID' failed: $AWS_ERR" ;;
      esac
    fi
    DB_ENV_KEYS=("$DB_SECRET_ENV"); DB_ENV_VALUES=("$DB_SECRET_ID")
    DB_POLICY="$(printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"%s"}]}' "$arn")"
    DB_POLICY_NOTE="(add kms:Decrypt on the secret's key if it uses a customer managed KMS key)"
    return 0
  fi
  [ -n "$DB_URL" ] || die "no database: set $DB_URL_ENV=postgres://user:pass@host:5432/db?sslmode=require, or pass --db-secret-id (or --db-iam-auth with a password-less $DB_URL_ENV)"
  case "$DB_URL" in
    postgres://*|postgresql://*) ;;
    *) die "the database URL does not start with postgres:// or postgresql:// (value not shown)" ;;
  esac
  if [ "$DB_IAM_AUTH" = 1 ]; then
    # postgres://user[:password]@host[:port]/...
    [[ "$DB_URL" =~ ^[a-z]+://([^:@/]+)(:[^@]*)?@([^:/?]+)(:([0-9]+))? ]] \
      || die "--db-iam-auth: $DB_URL_ENV must be postgres://user@host:5432/db (it names the database user)"
    [ -z "${BASH_REMATCH[2]}" ] \
      || die "--db-iam-auth: remove the password from $DB_URL_ENV (the extension generates an IAM token per connection)"
    local user="${BASH_REMATCH[1]}" host="${BASH_REMATCH[3]}"
    case "$DB_URL" in
      *sslmode=disable*|*sslmode=allow*|*sslmode=prefer*)
        die "--db-iam-auth: RDS IAM authentication requires TLS: use sslmode=require or verify-full in $DB_URL_ENV" ;;
    esac
    DB_ENV_KEYS=("$DB_URL_ENV" "$DB_IAM_ENV"); DB_ENV_VALUES=("$DB_URL" "true")
    DB_POLICY="$(printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"rds-db:connect","Resource":"arn:aws:rds-db:%s:%s:dbuser:RESOURCE_ID/%s"}]}' "$REGION" "$ACCOUNT" "$user")"
    DB_POLICY_NOTE="(RESOURCE_ID: the instance's DbiResourceId or the cluster's DbClusterResourceId, e.g. aws rds describe-db-instances --query \"DBInstances[?Endpoint.Address=='$host'].DbiResourceId\" --output text; and in the database: GRANT rds_iam TO $user)"
    return 0
  fi
  DB_ENV_KEYS=("$DB_URL_ENV"); DB_ENV_VALUES=("$DB_URL")
}

# The execution role's policy for the database credentials (printed before any change, also under --dry-run).
DB_POLICY_NOTE=""
print_db_policy() {
  [ -n "$DB_POLICY" ] || return 0
  log "the execution role ${ROLE_ARN##*/} needs this policy for the database $DB_POLICY_NOTE:"
  echo "$DB_POLICY"
  log "e.g. aws iam put-role-policy --role-name ${ROLE_ARN##*/} --policy-name makenaide-db --policy-document '<the JSON above>'"
}

# The function environment as a 0600 JSON file for `--environment file://...`; --dry-run shows it masked.
ENV_FILE=""
write_environment() {
  local json body="" kv key val i
  for i in "${!DB_ENV_KEYS[@]}"; do
    json="$(json_string "${DB_ENV_VALUES[$i]}")" || die "${DB_ENV_KEYS[$i]} contains control characters"
    body+="${body:+,}\"${DB_ENV_KEYS[$i]}\":$json"
  done
  for kv in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    key="${kv%%=*}"; val="${kv#*=}"
    json="$(json_string "$val")" || die "--env $key: the value contains control characters"
    body+="${body:+,}\"$key\":$json"
  done
  ENV_FILE="$WORK/environment.json"
  printf '{"Variables":{%s}}' "$body" > "$ENV_FILE"
  DISPLAY_FROM+=("file://$ENV_FILE"); DISPLAY_TO+=("$(mask "$(cat "$ENV_FILE")")")
}

# --- layers --------------------------------------------------------------------------------------------------
# publish_layer ARCH: publishes the layer zip unless the newest version already holds the same bytes (and the same
# runtimes/architecture); prints nothing, sets LAYER_ARN.
LAYER_ARN=""
publish_layer() {
  local arch="$1" name zip sha want latest got
  name="$(layer_name "$arch")"; zip="$DIST/$EXTENSION-layer-$arch.zip"
  sha="$(code_sha256 "$zip")"
  want="$sha ${LAYER_RUNTIMES[*]} $arch"
  must_aws "listing versions of layer $name" lambda list-layer-versions --layer-name "$name" \
    --query 'max_by(LayerVersions, &Version).Version' --output text
  latest="$AWS_OUT"
  if [ "$DRY_RUN" = 0 ] && [ -n "$latest" ] && [ "$latest" != None ]; then
    must_aws "reading layer $name:$latest" lambda get-layer-version --layer-name "$name" --version-number "$latest" \
      --query '[Content.CodeSha256, join(`" "`, CompatibleRuntimes || `[]`), join(`" "`, CompatibleArchitectures || `[]`), LayerVersionArn]' \
      --output text
    got="$(cut -f1-3 <<<"$AWS_OUT" | tr '\t' ' ')"
    if [ "$got" = "$want" ]; then
      LAYER_ARN="$(cut -f4 <<<"$AWS_OUT")"
      log "layer $name unchanged: reusing $LAYER_ARN"
      return 0
    fi
  fi
  dry_note "publishes a new version unless the newest one has CodeSha256 $sha"
  local desc="makenaide-core extension ($arch, sha256 ${sha:0:12})"
  if have git && git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
    desc+=", git $(git -C "$ROOT" describe --always --dirty 2>/dev/null)"
  fi
  must_aws "publishing layer $name" lambda publish-layer-version --layer-name "$name" --description "$desc" \
    --license-info "$LAYER_LICENSE" --zip-file "fileb://$zip" \
    --compatible-runtimes "${LAYER_RUNTIMES[@]}" --compatible-architectures "$arch" \
    --query LayerVersionArn --output text
  LAYER_ARN="${AWS_OUT:-arn:aws:lambda:$REGION:$ACCOUNT:layer:$name:<new-version>}"
  [ "$DRY_RUN" = 1 ] || log "published $LAYER_ARN"
}

# merge_layers NEW_ARN EXISTING_ARNS...: EXISTING with any makenaide-core version (either architecture) replaced by
# NEW_ARN in place, or NEW_ARN appended; result in MERGED.
MERGED=()
merge_layers() {
  local new="$1" arn replaced=0; shift
  MERGED=()
  for arn in "$@"; do
    case "$arn" in
      *":layer:$LAYER_NAME-x86_64:"*|*":layer:$LAYER_NAME-arm64:"*)
        [ "$replaced" = 1 ] || MERGED+=("$new"); replaced=1 ;;
      *) MERGED+=("$arn") ;;
    esac
  done
  [ "$replaced" = 1 ] || MERGED+=("$new")
  [ ${#MERGED[@]} -le "$MAX_LAYERS_PER_FUNCTION" ] \
    || die "a function can have at most $MAX_LAYERS_PER_FUNCTION layers; these would be ${#MERGED[@]}: ${MERGED[*]}"
}

# --- waiting -------------------------------------------------------------------------------------------------
state_of() {
  run_aws lambda get-function-configuration --function-name "$1" \
    --query '[State, LastUpdateStatus, StateReason, LastUpdateStatusReason]' --output text
}

# wait_function active|updated NAME: until State=Active (and LastUpdateStatus=Successful for "updated").
wait_function() {
  local kind="$1" fn="$2"
  if [ "$WAIT_MODE" != poll ]; then
    if run_aws lambda wait "function-$kind" --function-name "$fn"; then return 0; fi
    case "$AWS_ERR" in
      *"nvalid choice"*)
        [ "$WAIT_MODE" = auto ] || die "this AWS CLI has no 'aws lambda wait function-$kind'"
        warn "this AWS CLI has no 'aws lambda wait function-$kind': polling instead"; WAIT_MODE=poll ;;
      *)
        state_of "$fn" || true
        die "$fn did not become ready: $AWS_ERR (state: $(mask "$AWS_OUT"))" ;;
    esac
  fi
  local deadline=$((SECONDS + WAIT_TIMEOUT_S)) state update reason1 reason2
  while :; do
    must_aws "reading the state of $fn" lambda get-function-configuration --function-name "$fn" \
      --query '[State, LastUpdateStatus, StateReason, LastUpdateStatusReason]' --output text
    IFS=$'\t' read -r state update reason1 reason2 <<<"$AWS_OUT" || true
    if [ "$state" = Failed ] || [ "$update" = Failed ]; then die "$fn: $state/$update: $(mask "$reason1 $reason2")"; fi
    if [ "$state" = Active ] && { [ "$kind" = active ] || [ "$update" != InProgress ]; }; then return 0; fi
    [ "$SECONDS" -lt "$deadline" ] || die "$fn still $state/$update after ${WAIT_TIMEOUT_S}s"
    sleep 3   # Lambda's own waiters poll every 5 s
  done
}

# --- functions -----------------------------------------------------------------------------------------------
# Read phase of one function: sets FN_EXISTS (0/1), FN_SHA, FN_ARCH, FN_LAYERS (array).
# FN_SETTLED=1 when no update is in progress (another one would be refused with ResourceConflictException).
FN_EXISTS=0; FN_SHA=""; FN_ARCH=""; FN_LAYERS=(); FN_SETTLED=1
read_function() {
  local fn="$1" layers
  FN_EXISTS=0; FN_SHA=""; FN_ARCH=""; FN_LAYERS=(); FN_SETTLED=1
  if run_aws lambda get-function-configuration --function-name "$fn" \
      --query '[CodeSha256, Architectures[0], PackageType, State, LastUpdateStatus, join(`" "`, Layers[].Arn || `[]`)]' \
      --output text; then
    [ "$DRY_RUN" = 1 ] && return 0
    local ptype state update
    IFS=$'\t' read -r FN_SHA FN_ARCH ptype state update layers <<<"$AWS_OUT" || true
    [ "$ptype" != Image ] || die "$fn is a container-image function: layers cannot be attached (bake /opt/extensions into the image)"
    FN_EXISTS=1
    if [ "$state" != Active ] || [ "$update" = InProgress ]; then FN_SETTLED=0; fi
    # shellcheck disable=SC2206  # layer ARNs hold no spaces or globs
    [ -z "$layers" ] || FN_LAYERS=($layers)
  else
    case "$AWS_ERR" in
      *ResourceNotFoundException*) ;;
      *) die "reading function $fn failed: $AWS_ERR" ;;
    esac
  fi
}

# Plan phase (reads only, before any change): the current state of every function, one entry per FUNCTIONS index;
# a container-image function or one that would end up with too many layers stops the deploy here.
PLAN_EXISTS=(); PLAN_SHA=(); PLAN_ARCH=(); PLAN_LAYERS=(); PLAN_SETTLED=()
plan_functions() {
  local i
  for i in "${!FUNCTIONS[@]}"; do
    read_function "$(fn_name "${FUNCTIONS[$i]}")"
    PLAN_EXISTS[i]="$FN_EXISTS"; PLAN_SHA[i]="$FN_SHA"; PLAN_ARCH[i]="$FN_ARCH"; PLAN_SETTLED[i]="$FN_SETTLED"
    PLAN_LAYERS[i]="${FN_LAYERS[*]:-}"
    # shellcheck disable=SC2086  # layer ARNs hold no spaces or globs
    merge_layers "<makenaide-core>" ${PLAN_LAYERS[i]}
  done
}

VPC_ARGS=()
KMS_ARGS=()
# deploy_function INDEX LAYER_ARN: creates or updates FUNCTIONS[INDEX] as planned.
deploy_function() {
  local i="$1" layer_arn="$2" base fn zip sha
  base="${FUNCTIONS[$i]}"
  fn="$(fn_name "$base")"; zip="$DIST/$base-$ARCH.zip"; sha="$(code_sha256 "$zip")"
  FN_EXISTS="${PLAN_EXISTS[i]}"; FN_SHA="${PLAN_SHA[i]}"; FN_ARCH="${PLAN_ARCH[i]}"; FN_SETTLED="${PLAN_SETTLED[i]}"
  # shellcheck disable=SC2206  # layer ARNs hold no spaces or globs
  FN_LAYERS=(${PLAN_LAYERS[i]})
  local common=(--role "$ROLE_ARN" --runtime "$FUNCTION_RUNTIME" --handler "$FUNCTION_HANDLER"
    --memory-size "$MEMORY_MB" --timeout "$TIMEOUT_S" --environment "file://$ENV_FILE"
    --description "makenaide $base (Rust, makenaide-core layer)"
    ${VPC_ARGS[@]+"${VPC_ARGS[@]}"} ${KMS_ARGS[@]+"${KMS_ARGS[@]}"})
  if [ "$DRY_RUN" = 1 ]; then
    dry_note "$fn exists → update code (unless CodeSha256 is already $sha) and configuration:"
    wait_function updated "$fn"
    run_aws lambda update-function-code --function-name "$fn" --zip-file "fileb://$zip" --architectures "$ARCH" \
      --query LastUpdateStatus --output text
    wait_function updated "$fn"
    merge_layers "$layer_arn"
    run_aws lambda update-function-configuration --function-name "$fn" "${common[@]}" --layers "${MERGED[@]}" \
      --query LastUpdateStatus --output text
    wait_function updated "$fn"
    dry_note "$fn does not exist → create it:"
  fi
  if [ "$FN_EXISTS" = 1 ]; then
    merge_layers "$layer_arn" ${FN_LAYERS[@]+"${FN_LAYERS[@]}"}
    # An update still in progress (an interrupted deploy, a console edit) would refuse ours: ResourceConflict.
    [ "$FN_SETTLED" = 1 ] || wait_function updated "$fn"
    if [ "$FN_SHA" = "$sha" ] && [ "$FN_ARCH" = "$ARCH" ]; then
      log "$fn: code unchanged"
    else
      must_aws "updating the code of $fn" lambda update-function-code --function-name "$fn" \
        --zip-file "fileb://$zip" --architectures "$ARCH" --query LastUpdateStatus --output text
      wait_function updated "$fn"
      log "$fn: code updated"
    fi
    # The configuration is always applied: it is the source of truth (environment included).
    must_aws "updating the configuration of $fn" lambda update-function-configuration --function-name "$fn" \
      "${common[@]}" --layers "${MERGED[@]}" --query LastUpdateStatus --output text
    wait_function updated "$fn"
    log "$fn: configuration updated (layers: ${MERGED[*]})"
  else
    must_aws "creating $fn" lambda create-function --function-name "$fn" "${common[@]}" \
      --architectures "$ARCH" --zip-file "fileb://$zip" --layers "$layer_arn" --query FunctionArn --output text
    local created="$AWS_OUT"
    wait_function active "$fn"
    [ "$DRY_RUN" = 1 ] || log "$fn: created ($created)"
  fi
}

# smoke_invoke NAME EVENT: invokes NAME synchronously; a FunctionError (or an error-shaped payload) fails.
smoke_invoke() {
  local fn="$1" event="$2" out="$WORK/smoke-out.json" status ferr logs payload
  printf '%s' "$event" > "$WORK/smoke-event.json"
  dry_note "smoke event for $fn: $event"
  # fileb:// sends the bytes as they are with CLI v1 and v2 alike (v2 would base64-decode a plain --payload).
  must_aws "invoking $fn" lambda invoke --function-name "$fn" --payload "fileb://$WORK/smoke-event.json" \
    --log-type Tail --cli-read-timeout "$((TIMEOUT_S + 60))" \
    --query '[StatusCode, FunctionError, LogResult]' --output text "$out"
  [ "$DRY_RUN" = 0 ] || return 0
  IFS=$'\t' read -r status ferr logs <<<"$AWS_OUT" || true
  payload="$(mask "$(head -c 2000 "$out")")"
  if [ "${ferr:-None}" != None ] || [[ "$payload" =~ ^[[:space:]]*\{[[:space:]]*\"error(Message|Type)\" ]]; then
    echo "--- $fn response ---" >&2; echo "$payload" >&2
    if [ -n "$logs" ] && [ "$logs" != None ]; then
      echo "--- $fn log tail ---" >&2; mask "$(printf '%s' "$logs" | base64 -d 2>/dev/null || true)" >&2; echo >&2
    fi
    die "smoke invocation of $fn failed (${ferr:-FunctionError}, status $status)"
  fi
  log "smoke $fn: ok (${payload:0:200})"
}

# --- commands ------------------------------------------------------------------------------------------------
cmd_deploy() {
  dry_note "dry run: every AWS CLI call is printed, none is made"
  check_cli
  check_region
  check_settings
  check_artifacts
  check_credentials
  check_role
  resolve_db
  print_db_policy
  write_environment
  plan_functions
  if [ -n "$SUBNET_IDS" ]; then VPC_ARGS=(--vpc-config "SubnetIds=$SUBNET_IDS,SecurityGroupIds=$SECURITY_GROUP_IDS"); fi
  if [ -n "$KMS_KEY_ARN" ]; then KMS_ARGS=(--kms-key-arn "$KMS_KEY_ARN"); fi
  log "region $REGION, functions $ARCH, layers for: $LAYER_ARCHS"

  local arch fn_layer=""
  for arch in $LAYER_ARCHS; do
    publish_layer "$arch"
    [ "$arch" = "$ARCH" ] && fn_layer="$LAYER_ARN"
  done
  if [ -z "$fn_layer" ]; then
    # The functions' architecture was not published this run: use its newest published version.
    must_aws "finding layer $(layer_name "$ARCH")" lambda list-layer-versions --layer-name "$(layer_name "$ARCH")" \
      --query 'max_by(LayerVersions, &Version).LayerVersionArn' --output text
    fn_layer="${AWS_OUT:-arn:aws:lambda:$REGION:$ACCOUNT:layer:$(layer_name "$ARCH"):<latest>}"
    [ "$fn_layer" != None ] || die "no published layer $(layer_name "$ARCH"): include $ARCH in --layer-archs"
  fi

  local i
  for i in "${!FUNCTIONS[@]}"; do deploy_function "$i" "$fn_layer"; done

  if [ "$NO_SMOKE" = 1 ]; then
    log "smoke invocations skipped (--no-smoke)"
  else
    local entry
    for entry in "${SMOKE[@]}"; do smoke_invoke "$(fn_name "${entry%%$'\t'*}")" "${entry#*$'\t'}"; done
  fi
  if [ "$DRY_RUN" = 1 ]; then log "dry run done: nothing was changed"; return 0; fi
  log "done: layer $fn_layer on ${#FUNCTIONS[@]} functions ($ARCH)"
}

cmd_attach() {
  [ -n "$TARGET" ] || die "usage: ./deploy.sh attach FUNCTION [--arch x86_64|arm64]"
  dry_note "dry run: every AWS CLI call is printed, none is made"
  check_cli
  check_region
  check_credentials
  read_function "$TARGET"
  if [ "$DRY_RUN" = 0 ]; then
    [ "$FN_EXISTS" = 1 ] || die "function $TARGET does not exist in $REGION"
    if [ "$ARCH_GIVEN" = 1 ] && [ "$FN_ARCH" != "$ARCH" ]; then
      die "$TARGET runs on $FN_ARCH but --arch is $ARCH: a layer of the wrong architecture cannot start (Extension.LaunchError)"
    fi
    ARCH="$FN_ARCH"
  fi
  [ "$DRY_RUN" = 0 ] || [ "$ARCH_GIVEN" = 1 ] || dry_note "the layer follows the function's architecture; $ARCH assumed here (--arch to choose)"
  local name; name="$(layer_name "$ARCH")"
  must_aws "finding layer $name" lambda list-layer-versions --layer-name "$name" \
    --query 'max_by(LayerVersions, &Version).LayerVersionArn' --output text
  local arn="${AWS_OUT:-arn:aws:lambda:$REGION:$ACCOUNT:layer:$name:<latest>}"
  [ "$arn" != None ] || die "layer $name has no published version in $REGION: run ./deploy.sh first"
  merge_layers "$arn" ${FN_LAYERS[@]+"${FN_LAYERS[@]}"}
  dry_note "--layers: the function's current layers, with $arn in place of any makenaide-core version"
  if [ "$DRY_RUN" = 0 ] && [ "${MERGED[*]}" = "${FN_LAYERS[*]:-}" ]; then
    log "$TARGET already has $arn"
  else
    [ "$FN_SETTLED" = 1 ] || wait_function updated "$TARGET"
    must_aws "attaching $arn to $TARGET" lambda update-function-configuration --function-name "$TARGET" \
      --layers "${MERGED[@]}" --query LastUpdateStatus --output text
    wait_function updated "$TARGET"
    [ "$DRY_RUN" = 1 ] || log "$TARGET layers: ${MERGED[*]}"
  fi
  if [ "$DRY_RUN" = 0 ]; then
    run_aws lambda get-function-configuration --function-name "$TARGET" \
      --query "contains(keys(Environment.Variables || \`{}\`), '$DB_URL_ENV') || contains(keys(Environment.Variables || \`{}\`), '$DB_SECRET_ENV')" --output text || true
    [ "$AWS_OUT" = True ] || warn "$TARGET has neither $DB_URL_ENV nor $DB_SECRET_ENV: the extension's database routes answer 503 db_not_configured until one is set"
  fi
}

case "$CMD" in
  deploy) cmd_deploy ;;
  attach) cmd_attach ;;
esac
