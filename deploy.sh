#!/usr/bin/env bash
# Deploys makenaide-core to AWS with the AWS CLI (v1 or v2) and nothing else.
#
#   ./deploy.sh [deploy] [options]            publish the layer, create/update the four functions, smoke-invoke,
#                                             log retention, dashboard and alarms, optional schedule
#   ./deploy.sh attach FUNCTION [options]     attach the latest published layer to any existing function
#   ./deploy.sh report [--hours N] [options]  per-function table of the last N hours (default 24) from CloudWatch
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
#   4. sets the retention of /aws/lambda/<function> (creating the log group if missing) for the four functions;
#   5. puts the CloudWatch dashboard "<prefix>makenaide-core" and, per function, the alarms "<function>-errors"
#      (AWS/Lambda Errors > 0), "<function>-throttles" (AWS/Lambda Throttles > 0) and "<function>-upbit-418"
#      (<metrics namespace> Upbit418 > 0), Sum over 5 minutes, missing data = OK (--no-monitoring skips step 5);
#   6. smoke-invokes makenaide-db-initializer ({}) and makenaide-scanner ({"limit":1}); a FunctionError fails;
#   7. with --schedule: creates or updates the EventBridge Scheduler schedule (default group)
#      "<prefix>makenaide-integrated-orchestrator" that invokes that function with {} (flexible time window off,
#      retry policy, optional SQS dead-letter queue), as --scheduler-role-arn or as the role
#      "<prefix>makenaide-scheduler" it creates and tags managed-by=makenaide-core/deploy.sh (trusts
#      scheduler.amazonaws.com for this account; may only lambda:InvokeFunction that one function, and
#      sqs:SendMessage to the dead-letter queue). --schedule off deletes the schedule; any role stays. Without
#      --schedule an existing schedule is left as it is.
#   Running it again updates in place: it never creates a second function, layer version, schedule, role,
#   dashboard or alarm.
#   With --python-collector it also creates or updates makenaide-data-collector-python: the data collector moved
#   onto the layer (examples/python/data_collector, zipped reproducibly by layer-build/mkzip.py), runtime python3.13,
#   handler lambda_function.lambda_handler, the same role, memory, timeout, environment and VPC, the same layer
#   version attached (its makenaide_core is /opt/python/makenaide_core). It is not smoke-invoked (it writes candles).
#
# attach: puts the newest "<layer-name>-<arch>" version on FUNCTION (Rust, Python, any zip runtime), replacing an
#   older makenaide-core version and keeping every other layer in place. <arch> defaults to the function's own.
#   The extension reads MAKENAIDE_DATABASE_URL (or MAKENAIDE_DATABASE_SECRET_ID) from that function's environment:
#   set it there.
#
# report: per function over the last --hours (default 24): invocations (AWS/Lambda Invocations), cold-start share
#   and count (ColdStart), init p50 (InitDuration), duration p50/p99 (Duration), max memory (MaxMemoryUsed), and the
#   bytes deployed: code (lambda get-function CodeSize) + the attached makenaide-core layer version (Content.CodeSize).
#   A percentile marked "~" is estimated from per-period averages: CloudWatch returned none for it (statistic sets).
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
#   --python-collector           MAKENAIDE_PYTHON_COLLECTOR=1                      also deploy the Python collector
#                                                                                  on the layer (python3.13)
#   --schedule EXPR|off          MAKENAIDE_SCHEDULE             (unchanged)        rate(1 hour), cron(0 * * * ? *),
#                                                                                  at(...); off deletes the schedule
#   --schedule-timezone TZ       MAKENAIDE_SCHEDULE_TIMEZONE    UTC                for cron() and at(), e.g. Asia/Seoul
#   --scheduler-role-arn ARN     MAKENAIDE_SCHEDULER_ROLE_ARN   (created)          role Scheduler assumes, used as is
#   --schedule-dlq-arn ARN       MAKENAIDE_SCHEDULE_DLQ_ARN                        SQS queue for events that failed
#   --schedule-retries N         MAKENAIDE_SCHEDULE_RETRIES     2                  0..185 retries of a failed invoke
#   --schedule-max-age SECONDS   MAKENAIDE_SCHEDULE_MAX_AGE_S   3600               60..86400, then the DLQ (or dropped)
#   --metrics-namespace NS       MAKENAIDE_METRICS_NAMESPACE    Makenaide          of the extension's EMF metrics;
#                                                                                  set on the functions if not default
#   --alarm-topic-arn ARN        MAKENAIDE_ALARM_TOPIC_ARN                         SNS topic notified by the alarms
#   --log-retention-days N|keep  MAKENAIDE_LOG_RETENTION_DAYS   30                 1 3 5 7 14 30 60 90 120 150 180 365
#                                                                                  400 545 731 1096 1827 ... 3653
#   --no-monitoring              MAKENAIDE_NO_MONITORING=1                         no dashboard, no alarms
#   --hours N                    (report)                       24                 1..10920 (CloudWatch keeps 455 days)
#   --dry-run                                                                      print every AWS CLI call, make none
#   (waiting)                    MAKENAIDE_WAIT_MODE            auto               auto|waiter|poll: `aws lambda wait`,
#                                                                                  or a poll loop (old CLIs lack it)
#                                MAKENAIDE_WAIT_TIMEOUT_S       600                poll loop limit
# The CLI itself also honours AWS_ENDPOINT_URL (CLI v2, and v1 since botocore 1.31).
# python3 writes the dashboard body and the report (deploy --no-monitoring and attach do not need it).
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
# The data collector moved onto the layer (--python-collector): a Python function whose only import beyond the
# standard library is the layer's makenaide_core.
PY_COLLECTOR="makenaide-data-collector-python"
PY_COLLECTOR_SRC="examples/python/data_collector"
PY_RUNTIME="python3.13"
PY_HANDLER="lambda_function.lambda_handler"
# Every runtime the static extension runs in (it needs no libc from the image).
LAYER_RUNTIMES=(provided.al2023 provided.al2 python3.9 python3.10 python3.11 python3.12 python3.13)
LAYER_LICENSE="MIT OR Apache-2.0"
MAX_LAYERS_PER_FUNCTION=5                       # Lambda's limit
# Smoke invocations: "function<TAB>event". db-initializer also applies the schema on a fresh database.
SMOKE=($'makenaide-db-initializer\t{}' $'makenaide-scanner\t{"limit":1}')
DB_URL_ENV="MAKENAIDE_DATABASE_URL"
DB_SECRET_ENV="MAKENAIDE_DATABASE_SECRET_ID"   # what the extension reads (the functions' environment)
DB_IAM_ENV="MAKENAIDE_DB_IAM_AUTH"
# Operations (schedule, dashboard, alarms, logs, report).
ORCHESTRATOR="makenaide-integrated-orchestrator"   # the scheduled function; the schedule has its name
SCHEDULER_ROLE="makenaide-scheduler"               # the role created when no --scheduler-role-arn is given
MANAGED_TAG="managed-by"                           # tag on that role: it is ours to update
MANAGED_VALUE="makenaide-core/deploy.sh"
DEFAULT_METRICS_NAMESPACE="Makenaide"
METRICS_NS_ENV="MAKENAIDE_METRICS_NAMESPACE"       # the extension's variable for its EMF namespace
LOG_RETENTION_VALUES=" 1 3 5 7 14 30 60 90 120 150 180 365 400 545 731 1096 1827 2192 2557 2922 3288 3653 "
ALARM_PERIOD_S=300
SCHEDULE_ROLE_WAIT_S=90                            # a new IAM role takes seconds before Scheduler may assume it

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
  report) CMD="report"; shift ;;
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
PYTHON_COLLECTOR="${MAKENAIDE_PYTHON_COLLECTOR:-0}"
case "$PYTHON_COLLECTOR" in 1|true|yes|on) PYTHON_COLLECTOR=1 ;; *) PYTHON_COLLECTOR=0 ;; esac
WAIT_MODE="${MAKENAIDE_WAIT_MODE:-auto}"
WAIT_TIMEOUT_S="${MAKENAIDE_WAIT_TIMEOUT_S:-600}"
SCHEDULE="${MAKENAIDE_SCHEDULE:-}"
SCHEDULE_TZ="${MAKENAIDE_SCHEDULE_TIMEZONE:-UTC}"
SCHEDULER_ROLE_ARN="${MAKENAIDE_SCHEDULER_ROLE_ARN:-}"
SCHEDULE_DLQ_ARN="${MAKENAIDE_SCHEDULE_DLQ_ARN:-}"
SCHEDULE_RETRIES="${MAKENAIDE_SCHEDULE_RETRIES:-2}"
SCHEDULE_MAX_AGE_S="${MAKENAIDE_SCHEDULE_MAX_AGE_S:-3600}"
METRICS_NAMESPACE="${MAKENAIDE_METRICS_NAMESPACE:-$DEFAULT_METRICS_NAMESPACE}"
ALARM_TOPIC_ARN="${MAKENAIDE_ALARM_TOPIC_ARN:-}"
LOG_RETENTION_DAYS="${MAKENAIDE_LOG_RETENTION_DAYS:-30}"
NO_MONITORING="${MAKENAIDE_NO_MONITORING:-0}"
REPORT_HOURS=24
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
    --python-collector) PYTHON_COLLECTOR=1; shift ;;
    --schedule) need_value "$1" $#; SCHEDULE="$2"; shift 2 ;;
    --schedule-timezone) need_value "$1" $#; SCHEDULE_TZ="$2"; shift 2 ;;
    --scheduler-role-arn) need_value "$1" $#; SCHEDULER_ROLE_ARN="$2"; shift 2 ;;
    --schedule-dlq-arn) need_value "$1" $#; SCHEDULE_DLQ_ARN="$2"; shift 2 ;;
    --schedule-retries) need_value "$1" $#; SCHEDULE_RETRIES="$2"; shift 2 ;;
    --schedule-max-age) need_value "$1" $#; SCHEDULE_MAX_AGE_S="$2"; shift 2 ;;
    --metrics-namespace) need_value "$1" $#; METRICS_NAMESPACE="$2"; shift 2 ;;
    --alarm-topic-arn) need_value "$1" $#; ALARM_TOPIC_ARN="$2"; shift 2 ;;
    --log-retention-days) need_value "$1" $#; LOG_RETENTION_DAYS="$2"; shift 2 ;;
    --no-monitoring) NO_MONITORING=1; shift ;;
    --hours) need_value "$1" $#; REPORT_HOURS="$2"; shift 2 ;;
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

# What deploy creates or updates, one entry per function: name, runtime, handler, code zip, description.
DEPLOYED=(); DEPLOYED_RUNTIME=(); DEPLOYED_HANDLER=(); DEPLOYED_ZIP=(); DEPLOYED_DESC=()
add_deployed() {
  DEPLOYED+=("$1"); DEPLOYED_RUNTIME+=("$2"); DEPLOYED_HANDLER+=("$3"); DEPLOYED_ZIP+=("$4"); DEPLOYED_DESC+=("$5")
}
plan_deployed() {
  local f
  for f in "${FUNCTIONS[@]}"; do
    add_deployed "$f" "$FUNCTION_RUNTIME" "$FUNCTION_HANDLER" "$DIST/$f-$ARCH.zip" "makenaide $f (Rust, makenaide-core layer)"
  done
  [ "$PYTHON_COLLECTOR" = 1 ] || return 0
  have python3 || die "python3 is needed to zip $PY_COLLECTOR_SRC (--python-collector)"
  local zip="$WORK/$PY_COLLECTOR.zip"
  # Reproducible (mkzip.py): the same source gives the same CodeSha256, so an unchanged function is not updated.
  python3 "$ROOT/layer-build/mkzip.py" pack "$zip" "/=$ROOT/$PY_COLLECTOR_SRC/" \
    || die "could not zip $ROOT/$PY_COLLECTOR_SRC"
  add_deployed "$PY_COLLECTOR" "$PY_RUNTIME" "$PY_HANDLER" "$zip" \
    "makenaide data collector (Python on the makenaide-core layer)"
}
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
    [ "${BASH_REMATCH[1]}" != "$METRICS_NS_ENV" ] || die "set the metrics namespace with --metrics-namespace, not --env"
    case "${BASH_REMATCH[1]}" in *TOKEN*|*SECRET*|*PASSWORD*|*PASS|*KEY*|*URL*|*DSN*) add_secret "${BASH_REMATCH[2]}" ;; esac
  done
  check_ops_settings
}

# The options of the operations part (schedule, monitoring, logs); all checked before the first change.
ARN_ROLE_RE='^arn:aws[a-z-]*:iam::[0-9]{12}:role/([A-Za-z0-9+=,.@_/-]+)$'   # IAM's characters: safe inside JSON
ARN_SQS_RE='^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}(\.fifo)?$'   # Scheduler: standard queues only
ARN_SNS_RE='^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$'
SCHEDULE_RE='^(rate|cron|at)\(.+\)$'
NAMESPACE_RE='^[A-Za-z0-9._/#:-]{1,255}$'
check_ops_settings() {
  [[ "$METRICS_NAMESPACE" =~ $NAMESPACE_RE ]] && [[ "$METRICS_NAMESPACE" != AWS/* ]] \
    || die "--metrics-namespace must be 1..255 of A-Z a-z 0-9 . _ / # : - and not start with AWS/ (got '$METRICS_NAMESPACE')"
  [ "$CMD" = deploy ] || return 0
  if [ -n "$SCHEDULE" ] && [ "$SCHEDULE" != off ]; then
    [[ "$SCHEDULE" =~ $SCHEDULE_RE ]] \
      || die "--schedule wants rate(...), cron(...), at(...) or off (got '$SCHEDULE'), e.g. 'rate(1 hour)'"
  fi
  [[ "$SCHEDULE_RETRIES" =~ ^[0-9]+$ ]] && [ "$SCHEDULE_RETRIES" -le 185 ] \
    || die "--schedule-retries must be 0..185 (got '$SCHEDULE_RETRIES')"
  [[ "$SCHEDULE_MAX_AGE_S" =~ ^[0-9]+$ ]] && [ "$SCHEDULE_MAX_AGE_S" -ge 60 ] && [ "$SCHEDULE_MAX_AGE_S" -le 86400 ] \
    || die "--schedule-max-age must be 60..86400 s (got '$SCHEDULE_MAX_AGE_S')"
  SCHEDULE_RETRIES=$((10#$SCHEDULE_RETRIES)); SCHEDULE_MAX_AGE_S=$((10#$SCHEDULE_MAX_AGE_S))   # JSON numbers: no 007
  [ -n "$SCHEDULE_TZ" ] || die "--schedule-timezone must not be empty (e.g. UTC, Asia/Seoul)"
  [ -z "$SCHEDULER_ROLE_ARN" ] || [[ "$SCHEDULER_ROLE_ARN" =~ $ARN_ROLE_RE ]] \
    || die "--scheduler-role-arn '$SCHEDULER_ROLE_ARN' is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
  [ -z "$SCHEDULE_DLQ_ARN" ] || [[ "$SCHEDULE_DLQ_ARN" =~ $ARN_SQS_RE ]] \
    || die "--schedule-dlq-arn '$SCHEDULE_DLQ_ARN' is not an SQS queue ARN (arn:aws:sqs:<region>:<account>:<queue>)"
  [[ "$SCHEDULE_DLQ_ARN" != *.fifo ]] || die "--schedule-dlq-arn: Scheduler's dead-letter queue must be a standard SQS queue, not FIFO"
  [ -z "$ALARM_TOPIC_ARN" ] || [[ "$ALARM_TOPIC_ARN" =~ $ARN_SNS_RE ]] \
    || die "--alarm-topic-arn '$ALARM_TOPIC_ARN' is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"
  if [ "$LOG_RETENTION_DAYS" != keep ] && [[ "$LOG_RETENTION_VALUES" != *" $LOG_RETENTION_DAYS "* ]]; then
    die "--log-retention-days must be keep or one of:$LOG_RETENTION_VALUES(got '$LOG_RETENTION_DAYS')"
  fi
  # With --schedule off, --scheduler-role-arn only says the role is not deploy.sh's.
  if [ -z "$SCHEDULE" ] && [ -n "$SCHEDULER_ROLE_ARN" ]; then warn "--scheduler-role-arn has no effect without --schedule"; fi
  if { [ -z "$SCHEDULE" ] || [ "$SCHEDULE" = off ]; } && [ -n "$SCHEDULE_DLQ_ARN" ]; then
    warn "--schedule-dlq-arn has no effect without --schedule EXPR"
  fi
  [ "$NO_MONITORING" != 1 ] || [ -z "$ALARM_TOPIC_ARN" ] || warn "--alarm-topic-arn has no effect with --no-monitoring"
  return 0
}

check_python() {
  have python3 || die "python3 is needed for the dashboard and the report (deploy --no-monitoring does without it)"
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
  # The extension emits its metrics in MAKENAIDE_METRICS_NAMESPACE (default Makenaide): the dashboard, the alarms
  # and the report read the namespace given here, so the functions must write to it too.
  [ "$METRICS_NAMESPACE" = "$DEFAULT_METRICS_NAMESPACE" ] || body+=",\"$METRICS_NS_ENV\":$(json_string "$METRICS_NAMESPACE")"
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

# Plan phase (reads only, before any change): the current state of every function, one entry per DEPLOYED index;
# a container-image function or one that would end up with too many layers stops the deploy here.
PLAN_EXISTS=(); PLAN_SHA=(); PLAN_ARCH=(); PLAN_LAYERS=(); PLAN_SETTLED=()
plan_functions() {
  local i
  for i in "${!DEPLOYED[@]}"; do
    read_function "$(fn_name "${DEPLOYED[$i]}")"
    PLAN_EXISTS[i]="$FN_EXISTS"; PLAN_SHA[i]="$FN_SHA"; PLAN_ARCH[i]="$FN_ARCH"; PLAN_SETTLED[i]="$FN_SETTLED"
    PLAN_LAYERS[i]="${FN_LAYERS[*]:-}"
    # shellcheck disable=SC2086  # layer ARNs hold no spaces or globs
    merge_layers "<makenaide-core>" ${PLAN_LAYERS[i]}
  done
}

VPC_ARGS=()
KMS_ARGS=()
# deploy_function INDEX LAYER_ARN: creates or updates DEPLOYED[INDEX] as planned.
deploy_function() {
  local i="$1" layer_arn="$2" base fn zip sha
  base="${DEPLOYED[$i]}"
  fn="$(fn_name "$base")"; zip="${DEPLOYED_ZIP[$i]}"; sha="$(code_sha256 "$zip")"
  FN_EXISTS="${PLAN_EXISTS[i]}"; FN_SHA="${PLAN_SHA[i]}"; FN_ARCH="${PLAN_ARCH[i]}"; FN_SETTLED="${PLAN_SETTLED[i]}"
  # shellcheck disable=SC2206  # layer ARNs hold no spaces or globs
  FN_LAYERS=(${PLAN_LAYERS[i]})
  local common=(--role "$ROLE_ARN" --runtime "${DEPLOYED_RUNTIME[$i]}" --handler "${DEPLOYED_HANDLER[$i]}"
    --memory-size "$MEMORY_MB" --timeout "$TIMEOUT_S" --environment "file://$ENV_FILE"
    --description "${DEPLOYED_DESC[$i]}"
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

# --- operations: log retention, dashboard, alarms, schedule ------------------------------------------------
# json_arg NAME CONTENT [SHOWN]: CONTENT in the 0600 file $WORK/NAME; JSON_ARG is its file:// argument, shown in
# --dry-run output as SHOWN (default: the content itself, masked).
JSON_ARG=""
json_arg() {
  printf '%s' "$2" > "$WORK/$1"
  JSON_ARG="file://$WORK/$1"
  DISPLAY_FROM+=("$JSON_ARG"); DISPLAY_TO+=("${3:-$2}")
}

# The python3 helper (no AWS calls: JSON in, JSON or text out), written once per run.
ops_py() {
  [ -s "$WORK/ops.py" ] || write_ops_py
  python3 "$WORK/ops.py" "$@"
}

# One read for the four groups; then only what differs: a missing group is created (Lambda would create it on the
# first log line, with no retention), a different retention is set. A rerun changes nothing.
apply_log_retention() {
  if [ "$LOG_RETENTION_DAYS" = keep ]; then log "log groups: retention left as it is (--log-retention-days keep)"; return 0; fi
  local prefix="/aws/lambda/${FUNCTION_PREFIX}makenaide-" current=" " f group name days changed=0
  must_aws "listing log groups $prefix*" logs describe-log-groups --log-group-name-prefix "$prefix" \
    --query 'logGroups[].[logGroupName, retentionInDays]' --output text
  while IFS=$'\t' read -r name days; do [ -z "$name" ] || current+="$name=$days "; done <<<"$AWS_OUT"
  dry_note "a missing log group is created; put-retention-policy only where the retention differs:"
  for f in "${FUNCTIONS[@]}"; do
    group="/aws/lambda/$(fn_name "$f")"
    [[ "$current" != *" $group=$LOG_RETENTION_DAYS "* ]] || continue
    if [[ "$current" != *" $group="* ]] && ! run_aws logs create-log-group --log-group-name "$group"; then
      case "$AWS_ERR" in
        *ResourceAlreadyExistsException*) ;;   # created meanwhile (by a first invocation)
        *) die "creating log group $group failed: $AWS_ERR" ;;
      esac
    fi
    must_aws "setting the retention of $group" logs put-retention-policy --log-group-name "$group" \
      --retention-in-days "$LOG_RETENTION_DAYS"
    changed=$((changed + 1))
  done
  [ "$DRY_RUN" = 1 ] || log "log groups /aws/lambda/<function>: $LOG_RETENTION_DAYS days retention ($changed changed)"
}

apply_dashboard() {
  local name fns=() f body
  name="$(fn_name "$EXTENSION")"
  for f in "${FUNCTIONS[@]}"; do fns+=("$(fn_name "$f")"); done
  body="$(ops_py dashboard "$REGION" "$METRICS_NAMESPACE" "${fns[@]}")" || die "writing the dashboard body failed"
  local shown=""
  [ "$DRY_RUN" = 0 ] || shown="file://<dashboard body: $(ops_py summary <<<"$body")>"
  json_arg dashboard.json "$body" "$shown"
  must_aws "putting dashboard $name" cloudwatch put-dashboard --dashboard-name "$name" --dashboard-body "$JSON_ARG" \
    --query 'DashboardValidationMessages[].Message' --output text
  [ -z "$AWS_OUT" ] || [ "$AWS_OUT" = None ] || warn "dashboard $name: CloudWatch says: $AWS_OUT"
  [ "$DRY_RUN" = 1 ] || log "dashboard $name: put (namespace $METRICS_NAMESPACE)"
}

# put_alarm NAME DESCRIPTION NAMESPACE METRIC DIMENSION FUNCTION: "METRIC > 0 in 5 minutes" (missing data is OK).
put_alarm() {
  local actions=()
  [ -z "$ALARM_TOPIC_ARN" ] || actions=(--alarm-actions "$ALARM_TOPIC_ARN")
  # put-metric-alarm replaces the whole definition: running it again updates the alarm, never duplicates it.
  must_aws "putting alarm $1" cloudwatch put-metric-alarm --alarm-name "$1" --alarm-description "$2" \
    --namespace "$3" --metric-name "$4" --dimensions "Name=$5,Value=$6" --statistic Sum --period "$ALARM_PERIOD_S" \
    --evaluation-periods 1 --datapoints-to-alarm 1 --threshold 0 --comparison-operator GreaterThanThreshold \
    --treat-missing-data notBreaching ${actions[@]+"${actions[@]}"}
}

apply_alarms() {
  local f fn
  for f in "${FUNCTIONS[@]}"; do
    fn="$(fn_name "$f")"
    put_alarm "$fn-errors" "$fn: an invocation failed (AWS/Lambda Errors > 0)" AWS/Lambda Errors FunctionName "$fn"
    put_alarm "$fn-throttles" "$fn: an invocation was throttled (AWS/Lambda Throttles > 0)" \
      AWS/Lambda Throttles FunctionName "$fn"
    put_alarm "$fn-upbit-418" "$fn: Upbit answered 418, this IP is blocked for a while ($METRICS_NAMESPACE Upbit418 > 0)" \
      "$METRICS_NAMESPACE" Upbit418 function_name "$fn"
  done
  [ "$DRY_RUN" = 1 ] || log "alarms: $((3 * ${#FUNCTIONS[@]})) put${ALARM_TOPIC_ARN:+, notifying $ALARM_TOPIC_ARN}"
}

# Prerequisite (reads only): which role the schedule runs as. SCHED_ROLE_MODE: given | create | update.
SCHED_ROLE_MODE=""; SCHED_ROLE_ARN=""
check_scheduler_role() {
  [ -n "$SCHEDULE" ] && [ "$SCHEDULE" != off ] || return 0
  if [ -n "$SCHEDULER_ROLE_ARN" ]; then
    SCHED_ROLE_MODE=given; SCHED_ROLE_ARN="$SCHEDULER_ROLE_ARN"
    [[ "$SCHEDULER_ROLE_ARN" =~ $ARN_ROLE_RE ]]
    if ! run_aws iam get-role --role-name "${BASH_REMATCH[1]##*/}" --query Role.Arn --output text; then
      case "$AWS_ERR" in
        *NoSuchEntity*) die "the scheduler role $SCHEDULER_ROLE_ARN does not exist" ;;
        *AccessDenied*|*not\ authorized*) warn "cannot read IAM role $SCHEDULER_ROLE_ARN (no iam:GetRole): assuming it exists" ;;
        *) die "checking the scheduler role failed: $AWS_ERR" ;;
      esac
    fi
    [ -z "$SCHEDULE_DLQ_ARN" ] \
      || warn "the scheduler role you gave is used as is: it needs sqs:SendMessage on $SCHEDULE_DLQ_ARN for the dead-letter queue"
    return 0
  fi
  local name tag
  name="$(fn_name "$SCHEDULER_ROLE")"
  if run_aws iam get-role --role-name "$name" --query "Role.[Arn, Tags[?Key=='$MANAGED_TAG'].Value | [0]]" --output text; then
    SCHED_ROLE_MODE=update
    [ "$DRY_RUN" = 0 ] || return 0
    IFS=$'\t' read -r SCHED_ROLE_ARN tag <<<"$AWS_OUT" || true
    [ "$tag" = "$MANAGED_VALUE" ] || die "IAM role $name exists but deploy.sh did not create it (no tag" \
      "$MANAGED_TAG=$MANAGED_VALUE): pass it with --scheduler-role-arn to use it as is, or use another --function-prefix"
  else
    case "$AWS_ERR" in
      *NoSuchEntity*) SCHED_ROLE_MODE=create ;;
      *) die "checking IAM role $name failed: $AWS_ERR" ;;
    esac
  fi
}

# ensure_scheduler_role FUNCTION_ARN: creates or updates the role deploy.sh owns (trust + one inline policy);
# a given role is used as is. Sets SCHED_ROLE_ARN.
SCHEDULER_POLICY="invoke-orchestrator"
ensure_scheduler_role() {
  local fn_arn="$1" name trust policy
  [ "$SCHED_ROLE_MODE" != given ] || return 0
  name="$(fn_name "$SCHEDULER_ROLE")"
  # aws:SourceAccount: only schedules of this account may use the role (the confused-deputy guard AWS documents).
  trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"scheduler.amazonaws.com"},'
  trust+='"Action":"sts:AssumeRole","Condition":{"StringEquals":{"aws:SourceAccount":"'"$ACCOUNT"'"}}}]}'
  policy='{"Version":"2012-10-17","Statement":[{"Sid":"InvokeOrchestrator","Effect":"Allow",'
  policy+='"Action":"lambda:InvokeFunction","Resource":"'"$fn_arn"'"}'
  [ -z "$SCHEDULE_DLQ_ARN" ] \
    || policy+=',{"Sid":"DeadLetterQueue","Effect":"Allow","Action":"sqs:SendMessage","Resource":"'"$SCHEDULE_DLQ_ARN"'"}'
  policy+=']}'
  json_arg scheduler-trust.json "$trust"
  local trust_arg="$JSON_ARG"
  json_arg scheduler-policy.json "$policy"
  local policy_arg="$JSON_ARG"
  [ "$DRY_RUN" = 0 ] || dry_note "role $name absent → create-role; present (tagged $MANAGED_TAG=$MANAGED_VALUE) → update-assume-role-policy:"
  if [ "$SCHED_ROLE_MODE" = create ] || [ "$DRY_RUN" = 1 ]; then
    must_aws "creating IAM role $name" iam create-role --role-name "$name" --assume-role-policy-document "$trust_arg" \
      --description "EventBridge Scheduler invokes $(fn_name "$ORCHESTRATOR") (made by makenaide-core deploy.sh)" \
      --tags "Key=$MANAGED_TAG,Value=$MANAGED_VALUE" --query Role.Arn --output text
    SCHED_ROLE_ARN="${AWS_OUT:-arn:aws:iam::$ACCOUNT:role/$name}"
    [ "$DRY_RUN" = 1 ] || log "IAM role $name: created ($SCHED_ROLE_ARN)"
  fi
  if [ "$SCHED_ROLE_MODE" = update ] || [ "$DRY_RUN" = 1 ]; then
    must_aws "updating the trust policy of $name" iam update-assume-role-policy --role-name "$name" \
      --policy-document "$trust_arg"
  fi
  # put-role-policy replaces the inline policy: a removed dead-letter queue loses its permission too.
  must_aws "putting the policy of $name" iam put-role-policy --role-name "$name" --policy-name "$SCHEDULER_POLICY" \
    --policy-document "$policy_arg"
  [ "$DRY_RUN" = 1 ] || log "IAM role $name: may invoke $fn_arn${SCHEDULE_DLQ_ARN:+ and send to $SCHEDULE_DLQ_ARN}"
}

# schedule_call WHAT ARGS...: a create/update-schedule call; a role made or changed seconds ago may not be assumable
# yet (IAM is eventually consistent, Scheduler answers ValidationException): retry that for a while.
schedule_call() {
  local what="$1" deadline=$((SECONDS + SCHEDULE_ROLE_WAIT_S)); shift
  until run_aws "$@"; do
    if [ "$SCHED_ROLE_MODE" != given ] && [[ "$AWS_ERR" == *ValidationException*role* ]] && [ "$SECONDS" -lt "$deadline" ]; then
      log "Scheduler cannot assume the role yet (IAM is still propagating it): retrying in 5 s"
      sleep 5
      continue
    fi
    die "$what failed: ${AWS_ERR:-no error text}"
  done
}

apply_schedule() {
  [ -n "$SCHEDULE" ] || return 0
  local name fn fn_arn exists=0
  name="$(fn_name "$ORCHESTRATOR")"; fn="$name"
  if [ "$SCHEDULE" = off ]; then remove_schedule "$name"; return 0; fi

  must_aws "reading the ARN of $fn" lambda get-function-configuration --function-name "$fn" --query FunctionArn --output text
  fn_arn="${AWS_OUT:-arn:aws:lambda:$REGION:$ACCOUNT:function:$fn}"
  ensure_scheduler_role "$fn_arn"

  local target
  target='{"Arn":"'"$fn_arn"'","RoleArn":"'"$SCHED_ROLE_ARN"'","Input":"{}",'
  target+='"RetryPolicy":{"MaximumRetryAttempts":'"$SCHEDULE_RETRIES"',"MaximumEventAgeInSeconds":'"$SCHEDULE_MAX_AGE_S"'}'
  [ -z "$SCHEDULE_DLQ_ARN" ] || target+=',"DeadLetterConfig":{"Arn":"'"$SCHEDULE_DLQ_ARN"'"}'
  target+='}'
  json_arg schedule-target.json "$target"
  # create-schedule and update-schedule take the same, full definition.
  local def=(--name "$name" --schedule-expression "$SCHEDULE" --schedule-expression-timezone "$SCHEDULE_TZ"
    --flexible-time-window Mode=OFF --target "$JSON_ARG" --state ENABLED
    --description "makenaide pipeline: invokes $fn (deploy.sh)" --query ScheduleArn --output text)

  if run_aws scheduler get-schedule --name "$name" --query Arn --output text; then
    exists=1
  else
    case "$AWS_ERR" in
      *ResourceNotFoundException*) ;;
      *) die "reading schedule $name failed: $AWS_ERR" ;;
    esac
  fi
  if [ "$DRY_RUN" = 1 ]; then
    dry_note "schedule $name exists → update-schedule (the full definition); absent → create-schedule:"
    run_aws scheduler update-schedule "${def[@]}"
    run_aws scheduler create-schedule "${def[@]}"
    return 0
  fi
  if [ "$exists" = 1 ]; then
    schedule_call "updating schedule $name" scheduler update-schedule "${def[@]}"
    log "schedule $name: updated, $SCHEDULE ($SCHEDULE_TZ) → $fn"
  else
    schedule_call "creating schedule $name" scheduler create-schedule "${def[@]}"
    log "schedule $name: created, $SCHEDULE ($SCHEDULE_TZ) → $fn ($AWS_OUT)"
  fi
}

remove_schedule() {
  local name="$1" role
  if run_aws scheduler get-schedule --name "$name" --query Arn --output text; then
    dry_note "schedule $name exists → delete it:"
    must_aws "deleting schedule $name" scheduler delete-schedule --name "$name"
    [ "$DRY_RUN" = 1 ] || log "schedule $name: deleted"
  else
    case "$AWS_ERR" in
      *ResourceNotFoundException*) log "schedule $name: none to delete" ;;
      *) die "reading schedule $name failed: $AWS_ERR" ;;
    esac
  fi
  if [ -n "$SCHEDULER_ROLE_ARN" ]; then
    log "the scheduler role $SCHEDULER_ROLE_ARN is left as it is"
    return 0
  fi
  role="$(fn_name "$SCHEDULER_ROLE")"
  if run_aws iam get-role --role-name "$role" --query Role.Arn --output text && [ "$DRY_RUN" = 0 ]; then
    log "IAM role $role is kept (it may only invoke $(fn_name "$ORCHESTRATOR")); delete it in IAM if no schedule needs it"
  fi
}

# The python3 helper of the dashboard and the report. It makes no AWS call: deploy.sh makes every call through
# run_aws (so --dry-run shows them all) and hands the answers over as files.
write_ops_py() {
  cat > "$WORK/ops.py" <<'PY'
import json, math, sys, time
from pathlib import Path

LAMBDA = "AWS/Lambda"


def dashboard(region, ns, fns):
    """The dashboard body: one line per function and statistic, in a fixed order (same input, same bytes)."""

    def series(namespace, dimension, metric, stats, axis=None):
        lines = []
        for fn in fns:
            for stat in stats:
                opts = {"label": f"{fn} {metric} {stat}", "stat": stat}
                if axis:
                    opts["yAxis"] = axis
                lines.append([namespace, metric, dimension, fn, opts])
        return lines

    def mk(metric, *stats, axis=None):  # the extension's EMF metrics
        return series(ns, "function_name", metric, stats, axis)

    def lam(metric, *stats):  # Lambda's own metrics
        return series(LAMBDA, "FunctionName", metric, stats)

    share = {"left": {"min": 0, "max": 1, "label": "share"}}
    ms = {"left": {"min": 0, "label": "ms"}}
    count = {"left": {"min": 0, "label": "count"}}
    panels = [
        ("Cold-start rate (ColdStart average: 0 warm, 1 cold)", mk("ColdStart", "Average"), share),
        ("Init duration p50 / p99", mk("InitDuration", "p50", "p99"), ms),
        ("Duration p50 / p99", mk("Duration", "p50", "p99"), ms),
        ("Upbit 429 / 418 answers", mk("Upbit429", "Sum") + mk("Upbit418", "Sum"), count),
        ("DB reconnects: new connections, dead connections replaced",
         mk("DbNewConnections", "Sum") + mk("DbDeadConnectionsReplaced", "Sum"), count),
        ("Rate-slot wait per invocation (average / p99)", mk("RateSlotWaitMs", "Average", "p99"), ms),
        ("Errors: Lambda Errors, DB statement errors", lam("Errors", "Sum") + mk("DbStatementErrors", "Sum"), count),
        ("Requests to the extension, DB round trips", mk("Requests", "Sum") + mk("DbRoundTrips", "Sum"), count),
        ("Upbit requests, retries, cache hits, coalesced",
         mk("UpbitRequests", "Sum") + mk("UpbitRetries", "Sum") + mk("UpbitCacheHits", "Sum")
         + mk("UpbitCoalesced", "Sum"), count),
        ("Billed duration p99 (ms), max memory used (MB, right)",
         mk("BilledDuration", "p99") + mk("MaxMemoryUsed", "Maximum", axis="right"), ms),
    ]
    widgets = []
    for i, (title, metrics, y_axis) in enumerate(panels):
        widgets.append({
            "type": "metric", "x": (i % 2) * 12, "y": (i // 2) * 6, "width": 12, "height": 6,
            "properties": {"title": title, "region": region, "view": "timeSeries", "stacked": False,
                           "period": 300, "metrics": metrics, "yAxis": y_axis},
        })
    return json.dumps({"widgets": widgets}, sort_keys=True, separators=(",", ":"))


def summary(body):
    widgets = json.loads(body)["widgets"]
    return f"{len(widgets)} widgets, {len(body):,} bytes"


def window(hours):
    """[start, end) of the report: the last `hours` up to the current whole minute (UTC), and the fine period that
    keeps each per-period series at 1,440 points at most (which also respects CloudWatch's coarser storage of data
    older than 15 and 63 days)."""
    end = int(time.time()) // 60 * 60
    start = end - hours * 3600
    fine = max(60, math.ceil(hours * 3600 / 1440 / 60) * 60)
    return start, end, fine


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def query(qid, namespace, metric, dimension, fn, stat, period):
    return {"Id": qid, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": [{"Name": dimension, "Value": fn}]},
        "Period": period, "Stat": stat}}


def report_queries(out, hours, ns, fns):
    """One get-metric-data request for every figure of the table but the percentiles (get-metric-statistics asks
    for those), plus per-period averages and counts of the two durations, the fallback when no percentile comes."""
    start, end, fine = window(hours)
    total = end - start
    queries = []
    for i, fn in enumerate(fns):
        queries += [
            query(f"inv{i}", LAMBDA, "Invocations", "FunctionName", fn, "Sum", total),
            query(f"cold{i}", ns, "ColdStart", "function_name", fn, "Average", total),
            query(f"colds{i}", ns, "ColdStart", "function_name", fn, "Sum", total),
            query(f"mem{i}", ns, "MaxMemoryUsed", "function_name", fn, "Maximum", total),
        ]
        for metric in ("InitDuration", "Duration"):
            queries += [
                query(f"{metric.lower()}avg{i}", ns, metric, "function_name", fn, "Average", fine),
                query(f"{metric.lower()}n{i}", ns, metric, "function_name", fn, "SampleCount", fine),
            ]
    Path(out).write_text(json.dumps(queries, separators=(",", ":")))
    return f"{iso(start)} {iso(end)} {fine} {len(queries)}"


def nearest_rank(pairs, q):
    """The q-th percentile (nearest rank) of values given as (value, weight) pairs."""
    pairs = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    rank, seen = math.ceil(q / 100 * total), 0
    for value, weight in pairs:
        seen += weight
        if seen >= rank:
            return value
    return pairs[-1][0]


def report_table(work, hours, start, end, fine, region, ns, layer, fns):
    work = Path(work)
    results = {r["Id"]: r for r in json.loads((work / "metrics.json").read_text() or "{}").get("MetricDataResults", [])}

    def values(qid):
        return results.get(qid, {}).get("Values") or []

    def one(qid, combine):
        v = values(qid)
        return combine(v) if v else None

    def percentile(i, metric, stat):
        """CloudWatch's own percentile when it gives one. It gives none for data sent as statistic sets, and moto
        (the emulator of the tests) implements no percentile at all: get-metric-statistics drops
        ExtendedStatistics, get-metric-data fails on p50. Then: the nearest-rank percentile of the per-period
        averages weighted by their sample counts (exact when each period holds one invocation), marked "~"."""
        answer = json.loads((work / f"pct-{i}-{metric}.json").read_text() or "{}")
        for point in answer.get("Datapoints", []):
            ext = point.get("ExtendedStatistics") or {}
            if stat in ext:
                return ext[stat], False
        avg, cnt = results.get(f"{metric.lower()}avg{i}", {}), results.get(f"{metric.lower()}n{i}", {})
        counts = dict(zip(cnt.get("Timestamps", []), cnt.get("Values", [])))
        pairs = [(v, counts.get(t, 0)) for t, v in zip(avg.get("Timestamps", []), avg.get("Values", []))]
        value = nearest_rank(pairs, float(stat[1:]))
        return value, value is not None

    sizes = {}
    for line in (work / "sizes.tsv").read_text().splitlines():
        fn, code, layer_size, layer_id = (line.split("\t") + ["", "", ""])[:4]
        sizes[fn] = (code, layer_size, layer_id)

    def number(v, unit=""):
        if v is None:
            return "-"
        text = f"{v:,.1f}".rstrip("0").rstrip(".")
        return f"{text} {unit}".rstrip()

    def as_int(text):
        return int(text) if text.isdigit() else None

    estimated = False
    rows, versions = [], {}
    for i, fn in enumerate(fns):
        inv = one(f"inv{i}", sum)
        share, colds = one(f"cold{i}", lambda v: v[0]), one(f"colds{i}", sum)
        cells = {}
        for key, metric, stat in (("init", "InitDuration", "p50"), ("p50", "Duration", "p50"), ("p99", "Duration", "p99")):
            value, approx = percentile(i, metric, stat)
            estimated |= approx
            cells[key] = ("~" if approx else "") + number(value, "ms")
        mem = one(f"mem{i}", max)
        code, layer_size, layer_id = sizes.get(fn, ("", "", ""))
        code_b, layer_b = as_int(code), as_int(layer_size)
        deployed = None if code_b is None else code_b + (layer_b or 0)
        rows.append([
            fn,
            "-" if inv is None else f"{int(inv):,}",
            "-" if share is None else f"{share * 100:.1f}% ({int(colds or 0):,})",
            cells["init"], cells["p50"], cells["p99"],
            "-" if mem is None else number(mem, "MB"),
            "-" if code_b is None else f"{code_b:,}",
            "-" if layer_b is None else f"{layer_b:,}",
            "-" if deployed is None else f"{deployed:,}",
        ])
        if layer_id:
            versions.setdefault(layer_id, []).append(fn)
    header = ["function", "invocations", "cold starts", "init p50", "dur p50", "dur p99", "max mem",
              "code B", "layer B", "deployed B"]
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    left = {0}  # the function column; numbers are right-aligned

    def fmt(row):
        return "  ".join(cell.ljust(w) if c in left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))

    out = [f"makenaide-core report: last {hours} h ({start} .. {end}), region {region}, metrics namespace {ns}", "",
           fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in rows]
    out += [""]
    for layer_id, names in sorted(versions.items()):
        out.append(f"layer {layer_id}: " + ("all functions" if len(names) == len(fns) else ", ".join(names)))
    out += ["invocations: AWS/Lambda Invocations. cold starts: share (and count) of the invocations the extension",
            "reported as cold (ColdStart). init p50: InitDuration; dur: Duration; max mem: MaxMemoryUsed.",
            f"deployed B = function code (get-function CodeSize) + the attached {layer} layer version",
            "(get-layer-version Content.CodeSize). '-': no data in the window, or no such function or layer."]
    if estimated:
        out.append(f"~: CloudWatch returned no percentile; estimated from {fine}-second averages (nearest rank).")
    return "\n".join(out)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dashboard":
        print(dashboard(args[0], args[1], args[2:]))
    elif cmd == "summary":
        print(summary(sys.stdin.read()))
    elif cmd == "report-queries":
        print(report_queries(args[0], int(args[1]), args[2], args[3:]))
    elif cmd == "report-table":
        print(report_table(*args[:8], args[8:]))
    else:
        sys.exit(f"ops.py: unknown command {cmd}")
PY
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
  [ "$NO_MONITORING" = 1 ] || check_python
  check_scheduler_role
  resolve_db
  print_db_policy
  write_environment
  plan_deployed
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
  for i in "${!DEPLOYED[@]}"; do deploy_function "$i" "$fn_layer"; done

  apply_log_retention
  if [ "$NO_MONITORING" = 1 ]; then
    log "dashboard and alarms skipped (--no-monitoring)"
  else
    apply_dashboard
    apply_alarms
  fi

  if [ "$NO_SMOKE" = 1 ]; then
    log "smoke invocations skipped (--no-smoke)"
  else
    local entry
    for entry in "${SMOKE[@]}"; do smoke_invoke "$(fn_name "${entry%%$'\t'*}")" "${entry#*$'\t'}"; done
  fi
  # Last: a deploy whose smoke invocation failed schedules nothing.
  apply_schedule
  if [ "$DRY_RUN" = 1 ]; then log "dry run done: nothing was changed"; return 0; fi
  log "done: layer $fn_layer on ${#DEPLOYED[@]} functions ($ARCH)"
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

cmd_report() {
  dry_note "dry run: every AWS CLI call is printed, none is made"
  [[ "$REPORT_HOURS" =~ ^[0-9]+$ ]] && [ "$REPORT_HOURS" -ge 1 ] && [ "$REPORT_HOURS" -le 10920 ] \
    || die "--hours must be 1..10920 (got '$REPORT_HOURS')"
  REPORT_HOURS=$((10#$REPORT_HOURS))   # "08" is not octal here
  check_ops_settings
  check_cli
  check_python
  check_region
  check_credentials
  local fns=() f fn
  for f in "${FUNCTIONS[@]}"; do fns+=("$(fn_name "$f")"); done

  # Bytes deployed: each function's code and the makenaide-core layer version attached to it.
  local code layers l arn size seen=() seen_size=() k
  : > "$WORK/sizes.tsv"
  for fn in "${fns[@]}"; do
    code="-"; layers=""; arn=""; size="-"
    if run_aws lambda get-function --function-name "$fn" \
        --query '[Configuration.CodeSize, join(`" "`, Configuration.Layers[].Arn || `[]`)]' --output text; then
      [ "$DRY_RUN" = 1 ] || IFS=$'\t' read -r code layers <<<"$AWS_OUT" || true
      for l in $layers; do
        case "$l" in *":layer:$LAYER_NAME-x86_64:"*|*":layer:$LAYER_NAME-arm64:"*) arn="$l" ;; esac
      done
    else
      case "$AWS_ERR" in
        *ResourceNotFoundException*) ;;
        *) die "reading function $fn failed: $AWS_ERR" ;;
      esac
    fi
    [ "$DRY_RUN" = 0 ] || arn="arn:aws:lambda:$REGION:$ACCOUNT:layer:$LAYER_NAME-<arch>:<attached version>"
    if [ -n "$arn" ]; then
      local known=0
      for k in ${seen[@]+"${!seen[@]}"}; do
        if [ "${seen[$k]}" = "$arn" ]; then size="${seen_size[$k]}"; known=1; fi
      done
      if [ "$known" = 0 ]; then
        must_aws "reading layer $arn" lambda get-layer-version --layer-name "${arn%:*}" --version-number "${arn##*:}" \
          --query Content.CodeSize --output text
        size="${AWS_OUT:--}"; seen+=("$arn"); seen_size+=("$size")
      fi
    fi
    printf '%s\t%s\t%s\t%s\n' "$fn" "$code" "$size" "${arn##*:layer:}" >> "$WORK/sizes.tsv"
  done

  # Metrics: one get-metric-data call for totals and per-period series, one get-metric-statistics per percentile set.
  local window start end fine nq
  window="$(ops_py report-queries "$WORK/queries.json" "$REPORT_HOURS" "$METRICS_NAMESPACE" "${fns[@]}")" \
    || die "writing the metric queries failed"
  read -r start end fine nq <<<"$window"
  DISPLAY_FROM+=("file://$WORK/queries.json")
  DISPLAY_TO+=("file://<$nq metric queries, namespaces AWS/Lambda and $METRICS_NAMESPACE>")
  must_aws "reading metrics" cloudwatch get-metric-data --start-time "$start" --end-time "$end" \
    --metric-data-queries "file://$WORK/queries.json" --output json
  printf '%s' "$AWS_OUT" > "$WORK/metrics.json"
  local i metric stats
  for i in "${!fns[@]}"; do
    for metric in InitDuration Duration; do
      stats=(p50); [ "$metric" = InitDuration ] || stats=(p50 p99)
      must_aws "reading the $metric percentiles of ${fns[$i]}" cloudwatch get-metric-statistics \
        --namespace "$METRICS_NAMESPACE" --metric-name "$metric" --dimensions "Name=function_name,Value=${fns[$i]}" \
        --start-time "$start" --end-time "$end" --period "$((REPORT_HOURS * 3600))" --extended-statistics "${stats[@]}" \
        --output json
      printf '%s' "$AWS_OUT" > "$WORK/pct-$i-$metric.json"
    done
  done
  if [ "$DRY_RUN" = 1 ]; then log "dry run done: nothing was read"; return 0; fi
  ops_py report-table "$WORK" "$REPORT_HOURS" "$start" "$end" "$fine" "$REGION" "$METRICS_NAMESPACE" "$LAYER_NAME" \
    "${fns[@]}" || die "writing the report failed"
}

case "$CMD" in
  deploy) cmd_deploy ;;
  attach) cmd_attach ;;
  report) cmd_report ;;
esac
