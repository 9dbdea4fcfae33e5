"""deploy.sh's operations part against moto, through the real AWS CLI: the EventBridge Scheduler schedule and its
role, the CloudWatch dashboard and alarms, log retention, and `deploy.sh report`.

The commands docs/in-production.md shows are the constants below, run here as written (the docs' environment:
MAKENAIDE_ROLE_ARN, the region and the database URL); test_documented_commands_are_tested keeps the two in step.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    ACCOUNT,
    DEPLOY,
    EXTENSION,
    FUNCTIONS,
    REGION,
    ROLE_ARN,
    ROOT,
    ConnectionCounter,
    clean_env,
    run_deploy,
)

ORCH = "makenaide-integrated-orchestrator"
SCHEDULER_ROLE = "makenaide-scheduler"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:makenaide-dlq"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:makenaide-alerts"
MY_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/my-scheduler"
DOC = ROOT / "docs" / "in-production.md"

# The metric names the extension emits (namespace Makenaide, dimension function_name).
METRICS = ["ColdStart", "InitDuration", "Duration", "BilledDuration", "MaxMemoryUsed", "Requests", "DbRoundTrips",
           "DbNewConnections", "DbDeadConnectionsReplaced", "DbStatementErrors", "UpbitRequests", "Upbit429",
           "Upbit418", "UpbitRetries", "UpbitCacheHits", "UpbitCoalesced", "RateSlotWaitMs"]

# --- the documented commands (arguments after ./deploy.sh) -------------------------------------------------
HOURLY = ("--schedule", "rate(1 hour)")
CRON_SEOUL_DLQ = ("--schedule", "cron(0 * * * ? *)", "--schedule-timezone", "Asia/Seoul", "--schedule-dlq-arn", DLQ_ARN)
OWN_ROLE = ("--schedule", "rate(1 hour)", "--scheduler-role-arn", MY_ROLE_ARN)
SCHEDULE_OFF = ("--schedule", "off")
MONITORING = ("--alarm-topic-arn", TOPIC_ARN, "--log-retention-days", "14")
PLAIN = ()
DEV_STAGE = ("--function-prefix", "dev-", "--metrics-namespace", "MakenaideDev")
NO_MONITORING = ("--no-monitoring", "--log-retention-days", "keep")
DRY = ("--dry-run", "--schedule", "rate(1 hour)")
REPORT = ("report",)
REPORT_48 = ("report", "--hours", "48")
REPORT_DRY = ("report", "--dry-run")
DOCUMENTED = {HOURLY, CRON_SEOUL_DLQ, OWN_ROLE, SCHEDULE_OFF, MONITORING, PLAIN, DEV_STAGE, NO_MONITORING, DRY,
              REPORT, REPORT_48, REPORT_DRY}

SCHEDULER_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "scheduler.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
    }],
}


def with_role(env: dict) -> dict:
    """The docs export MAKENAIDE_ROLE_ARN once; so do the tests."""
    return {**env, "MAKENAIDE_ROLE_ARN": ROLE_ARN}


def fn_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def ok(res):
    assert res.code == 0, res
    return res


def get_schedule(moto) -> dict:
    schedule = moto.scheduler.get_schedule(Name=ORCH)
    schedule.pop("ResponseMetadata")
    return schedule


def scheduler_policy(moto) -> dict:
    return moto.iam.get_role_policy(RoleName=SCHEDULER_ROLE, PolicyName="invoke-orchestrator")["PolicyDocument"]


def invoke_statement(function: str = ORCH) -> dict:
    return {"Sid": "InvokeOrchestrator", "Effect": "Allow", "Action": "lambda:InvokeFunction",
            "Resource": fn_arn(function)}


def create_dlq(moto) -> str:
    url = moto.sqs.create_queue(QueueName="makenaide-dlq")["QueueUrl"]
    arn = moto.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == DLQ_ARN
    return arn


def role_names(moto) -> list[str]:
    return sorted(r["RoleName"] for r in moto.iam.list_roles()["Roles"])


# --- schedule ----------------------------------------------------------------------------------------------


def test_schedule_created_then_updated_in_place(moto, ops_env, deploy_env):
    moto.create_role()
    create_dlq(moto)
    ok(run_deploy(with_role(ops_env), *HOURLY))

    schedule = get_schedule(moto)
    assert schedule["ScheduleExpression"] == "rate(1 hour)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["State"] == "ENABLED"
    target = schedule["Target"]
    assert target["Arn"] == moto.lam.get_function_configuration(FunctionName=ORCH)["FunctionArn"] == fn_arn(ORCH)
    assert target["Input"] == "{}"
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600}
    assert "DeadLetterConfig" not in target

    # The role deploy.sh made: Scheduler of this account may assume it; it may invoke that one function, nothing else.
    role = moto.iam.get_role(RoleName=SCHEDULER_ROLE)["Role"]
    assert target["RoleArn"] == role["Arn"]
    assert role["AssumeRolePolicyDocument"] == SCHEDULER_TRUST
    assert {"Key": "managed-by", "Value": "makenaide-core/deploy.sh"} in role["Tags"]
    assert moto.iam.list_role_policies(RoleName=SCHEDULER_ROLE)["PolicyNames"] == ["invoke-orchestrator"]
    assert moto.iam.list_attached_role_policies(RoleName=SCHEDULER_ROLE)["AttachedPolicies"] == []
    assert scheduler_policy(moto) == {"Version": "2012-10-17", "Statement": [invoke_statement()]}

    # Again with another expression, a time zone and a dead-letter queue: the same schedule and role, updated.
    res = ok(run_deploy(with_role(ops_env), *CRON_SEOUL_DLQ))
    assert "updated, cron(0 * * * ? *) (Asia/Seoul)" in res.stderr
    assert [s["Name"] for s in moto.scheduler.list_schedules()["Schedules"]] == [ORCH]
    schedule = get_schedule(moto)
    assert schedule["ScheduleExpression"] == "cron(0 * * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "Asia/Seoul"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["DeadLetterConfig"] == {"Arn": DLQ_ARN}
    assert schedule["Target"]["RoleArn"] == role["Arn"]
    assert role_names(moto) == ["makenaide-lambda", SCHEDULER_ROLE]
    assert scheduler_policy(moto) == {"Version": "2012-10-17", "Statement": [
        invoke_statement(),
        {"Sid": "DeadLetterQueue", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": DLQ_ARN},
    ]}

    # Retry policy options; and a deploy without --schedule leaves the schedule as it is.
    ok(run_deploy(with_role(deploy_env), *CRON_SEOUL_DLQ, "--schedule-retries", "0", "--schedule-max-age", "0600"))
    schedule = get_schedule(moto)
    assert schedule["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 600}
    ok(run_deploy(with_role(deploy_env), "--no-smoke"))
    assert get_schedule(moto) == schedule


def test_schedule_off_deletes_it_and_keeps_the_role(moto, ops_env, deploy_env):
    moto.create_role()
    ok(run_deploy(with_role(deploy_env), "--no-smoke", *HOURLY))
    policy = scheduler_policy(moto)

    res = ok(run_deploy(with_role(ops_env), *SCHEDULE_OFF))
    assert moto.scheduler.list_schedules()["Schedules"] == []
    assert f"schedule {ORCH}: deleted" in res.stderr
    assert f"IAM role {SCHEDULER_ROLE} is kept" in res.stderr
    assert scheduler_policy(moto) == policy  # the role stays as it was
    assert sorted(moto.functions()) == sorted(FUNCTIONS)

    res = ok(run_deploy(with_role(deploy_env), "--no-smoke", *SCHEDULE_OFF))
    assert f"schedule {ORCH}: none to delete" in res.stderr

    # Scheduling again reuses the kept role.
    ok(run_deploy(with_role(deploy_env), "--no-smoke", *HOURLY))
    assert get_schedule(moto)["Target"]["RoleArn"] == moto.iam.get_role(
        RoleName=SCHEDULER_ROLE)["Role"]["Arn"]
    assert role_names(moto) == ["makenaide-lambda", SCHEDULER_ROLE]


def test_given_scheduler_role_is_used_as_is(moto, ops_env, deploy_env):
    moto.create_role()
    create_dlq(moto)
    mine = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}]}
    arn = moto.iam.create_role(RoleName="my-scheduler", AssumeRolePolicyDocument=json.dumps(SCHEDULER_TRUST))["Role"]["Arn"]
    assert arn == MY_ROLE_ARN
    moto.iam.put_role_policy(RoleName="my-scheduler", PolicyName="mine", PolicyDocument=json.dumps(mine))

    ok(run_deploy(with_role(ops_env), *OWN_ROLE))
    target = get_schedule(moto)["Target"]
    assert target["RoleArn"] == MY_ROLE_ARN
    assert role_names(moto) == ["makenaide-lambda", "my-scheduler"]  # no role created

    # A dead-letter queue with a given role: the role is not changed, the deploy says what it needs.
    res = ok(run_deploy(with_role(deploy_env), "--no-smoke", *OWN_ROLE, "--schedule-dlq-arn", DLQ_ARN))
    assert f"it needs sqs:SendMessage on {DLQ_ARN}" in res.stderr
    assert get_schedule(moto)["Target"]["DeadLetterConfig"] == {"Arn": DLQ_ARN}
    assert moto.iam.list_role_policies(RoleName="my-scheduler")["PolicyNames"] == ["mine"]
    assert moto.iam.get_role_policy(RoleName="my-scheduler", PolicyName="mine")["PolicyDocument"] == mine
    assert moto.iam.get_role(RoleName="my-scheduler")["Role"]["AssumeRolePolicyDocument"] == SCHEDULER_TRUST

    res = ok(run_deploy(with_role(deploy_env), "--no-smoke", *SCHEDULE_OFF, "--scheduler-role-arn", MY_ROLE_ARN))
    assert moto.scheduler.list_schedules()["Schedules"] == []
    assert f"the scheduler role {MY_ROLE_ARN} is left as it is" in res.stderr
    assert role_names(moto) == ["makenaide-lambda", "my-scheduler"]


# --- dashboard, alarms, log retention ----------------------------------------------------------------------


def dashboard(moto, name: str) -> tuple[str, dict]:
    body = moto.cloudwatch.get_dashboard(DashboardName=name)["DashboardBody"]
    return body, json.loads(body)


def widget(body: dict, title_start: str) -> list[list]:
    """The metric lines of the one widget whose title starts with title_start."""
    (found,) = [w for w in body["widgets"] if w["properties"]["title"].startswith(title_start)]
    return found["properties"]["metrics"]


def lines_of(metrics: list[list]) -> set[tuple]:
    """(namespace, metric, dimension, value, stat) of every line."""
    return {(m[0], m[1], m[2], m[3], m[4]["stat"]) for m in metrics}


def per_function(namespace, metric, stats, functions, dimension="function_name") -> set[tuple]:
    return {(namespace, metric, dimension, f, s) for f in functions for s in stats}


def check_dashboard(body: dict, ns: str, functions: list[str]) -> None:
    assert all(w["properties"]["region"] == REGION for w in body["widgets"])
    every = set().union(*(lines_of(w["properties"]["metrics"]) for w in body["widgets"]))
    assert {m for n, m, *_ in every if n == ns} == set(METRICS)  # every metric of the extension is shown
    assert lines_of(widget(body, "Cold-start rate")) == per_function(ns, "ColdStart", ["Average"], functions)
    assert lines_of(widget(body, "Init duration")) == per_function(ns, "InitDuration", ["p50", "p99"], functions)
    assert lines_of(widget(body, "Duration p50 / p99")) == per_function(ns, "Duration", ["p50", "p99"], functions)
    assert lines_of(widget(body, "Upbit 429 / 418")) == (
        per_function(ns, "Upbit429", ["Sum"], functions) | per_function(ns, "Upbit418", ["Sum"], functions))
    assert lines_of(widget(body, "DB reconnects")) == (
        per_function(ns, "DbNewConnections", ["Sum"], functions)
        | per_function(ns, "DbDeadConnectionsReplaced", ["Sum"], functions))
    assert lines_of(widget(body, "Rate-slot wait")) == per_function(ns, "RateSlotWaitMs", ["Average", "p99"], functions)
    assert lines_of(widget(body, "Errors")) == (
        per_function("AWS/Lambda", "Errors", ["Sum"], functions, "FunctionName")
        | per_function(ns, "DbStatementErrors", ["Sum"], functions))


def alarms(moto) -> dict[str, dict]:
    return {a["AlarmName"]: a for a in moto.cloudwatch.describe_alarms()["MetricAlarms"]}


def check_alarms(moto, ns: str, functions: list[str], actions: list[str]) -> None:
    found = alarms(moto)
    expected = {}
    for f in functions:
        expected[f"{f}-errors"] = ("AWS/Lambda", "Errors", "FunctionName", f)
        expected[f"{f}-throttles"] = ("AWS/Lambda", "Throttles", "FunctionName", f)
        expected[f"{f}-upbit-418"] = (ns, "Upbit418", "function_name", f)
    assert sorted(found) == sorted(expected)
    for name, (namespace, metric, dimension, value) in expected.items():
        a = found[name]
        assert (a["Namespace"], a["MetricName"]) == (namespace, metric), name
        assert a["Dimensions"] == [{"Name": dimension, "Value": value}], name
        assert (a["Statistic"], a["Period"], a["EvaluationPeriods"], a["DatapointsToAlarm"]) == ("Sum", 300, 1, 1)
        assert (a["ComparisonOperator"], a["Threshold"]) == ("GreaterThanThreshold", 0.0), name
        assert a["TreatMissingData"] == "notBreaching"
        assert a["AlarmActions"] == actions, name


def retention(moto) -> dict[str, int | None]:
    groups = moto.logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
    return {g["logGroupName"]: g.get("retentionInDays") for g in groups}


def test_dashboard_alarms_and_log_retention(moto, ops_env):
    moto.create_role()
    assert moto.sns.create_topic(Name="makenaide-alerts")["TopicArn"] == TOPIC_ARN
    # One log group exists already (an earlier invocation made it), with another retention.
    moto.logs.create_log_group(logGroupName="/aws/lambda/makenaide-scanner")
    moto.logs.put_retention_policy(logGroupName="/aws/lambda/makenaide-scanner", retentionInDays=7)

    ok(run_deploy(with_role(ops_env), *MONITORING))
    assert [d["DashboardName"] for d in moto.cloudwatch.list_dashboards()["DashboardEntries"]] == [EXTENSION]
    first_body, body = dashboard(moto, EXTENSION)
    check_dashboard(body, "Makenaide", FUNCTIONS)
    check_alarms(moto, "Makenaide", FUNCTIONS, [TOPIC_ARN])
    assert retention(moto) == {f"/aws/lambda/{f}": 14 for f in FUNCTIONS}

    # Again with the defaults: one dashboard with the same bytes, the same twelve alarms (now without the topic:
    # put-metric-alarm replaces the definition), retention back to the default 30 days.
    res = ok(run_deploy(with_role(ops_env), *PLAIN))
    assert [d["DashboardName"] for d in moto.cloudwatch.list_dashboards()["DashboardEntries"]] == [EXTENSION]
    assert dashboard(moto, EXTENSION)[0] == first_body
    check_alarms(moto, "Makenaide", FUNCTIONS, [])
    assert retention(moto) == {f"/aws/lambda/{f}": 30 for f in FUNCTIONS}
    assert "30 days retention (4 changed)" in res.stderr

    # Nothing differs the third time: the log groups are only read.
    res = ok(run_deploy(with_role(ops_env), "--no-smoke"))
    assert "30 days retention (0 changed)" in res.stderr
    assert len(alarms(moto)) == 12


def test_function_prefix_and_metrics_namespace(moto, ops_env, deploy_env):
    moto.create_role()
    ok(run_deploy(with_role(ops_env), *DEV_STAGE))
    dev = [f"dev-{f}" for f in FUNCTIONS]
    assert sorted(moto.functions()) == sorted(dev)
    for name in dev:
        # The extension writes its metrics where the dashboard and the alarms read them.
        env = moto.lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        assert env["MAKENAIDE_METRICS_NAMESPACE"] == "MakenaideDev"
    assert [d["DashboardName"] for d in moto.cloudwatch.list_dashboards()["DashboardEntries"]] == ["dev-makenaide-core"]
    check_dashboard(dashboard(moto, "dev-makenaide-core")[1], "MakenaideDev", dev)
    check_alarms(moto, "MakenaideDev", dev, [])
    assert retention(moto) == {f"/aws/lambda/{f}": 30 for f in dev}

    # Back to the default namespace: the variable leaves the functions' environment (the extension's default).
    ok(run_deploy(with_role(deploy_env), "--no-smoke", "--function-prefix", "dev-"))
    for name in dev:
        env = moto.lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
        assert "MAKENAIDE_METRICS_NAMESPACE" not in env


def test_no_monitoring_leaves_cloudwatch_and_logs_alone(moto, ops_env):
    moto.create_role()
    res = ok(run_deploy(with_role(ops_env), *NO_MONITORING))
    assert sorted(moto.functions()) == sorted(FUNCTIONS)
    assert moto.cloudwatch.list_dashboards()["DashboardEntries"] == []
    assert moto.cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert retention(moto) == {}
    assert "dashboard and alarms skipped (--no-monitoring)" in res.stderr


# --- report ------------------------------------------------------------------------------------------------


def put_invocations(moto, function: str, minutes_ago: list[float], durations, cold, memory, ns="Makenaide"):
    """One invocation per entry, as the extension reports it (EMF ends as these metrics) plus Lambda's Invocations;
    an init duration for each cold start (the value in `cold`, 0 for a warm start)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    dim = [{"Name": "function_name", "Value": function}]
    for ago, duration, init, mem in zip(minutes_ago, durations, cold, memory):
        at = now - datetime.timedelta(minutes=ago)
        data = [
            {"MetricName": "ColdStart", "Dimensions": dim, "Value": 1 if init else 0, "Timestamp": at},
            {"MetricName": "Duration", "Dimensions": dim, "Value": duration, "Unit": "Milliseconds", "Timestamp": at},
            {"MetricName": "MaxMemoryUsed", "Dimensions": dim, "Value": mem, "Unit": "Megabytes", "Timestamp": at},
        ]
        if init:
            data.append({"MetricName": "InitDuration", "Dimensions": dim, "Value": init, "Unit": "Milliseconds",
                         "Timestamp": at})
        moto.cloudwatch.put_metric_data(Namespace=ns, MetricData=data)
        moto.cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=[{
            "MetricName": "Invocations", "Dimensions": [{"Name": "FunctionName", "Value": function}], "Value": 1,
            "Timestamp": at}])


def table(stdout: str) -> dict[str, list[str]]:
    """The report's rows by function: the cells, split on the two-space column gaps."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].startswith(("makenaide-", "dev-makenaide-")):
            rows[cells[0]] = cells[1:]
    return rows


def test_report_prints_what_cloudwatch_holds(moto, deploy_env, fake_dist):
    moto.create_role()
    ok(run_deploy(with_role(deploy_env), "--no-smoke"))
    moto.lam.delete_function(FunctionName="makenaide-data-collector")

    # Two minutes apart: each invocation alone in its period, also at 48 h (120 s periods), whatever the alignment.
    every_2_min = [2 * k for k in range(1, 11)]
    put_invocations(moto, "makenaide-scanner", every_2_min,
                    durations=[5, 6, 7, 8, 9, 10, 11, 12, 13, 500],
                    cold=[95, 0, 0, 120, 0, 0, 0, 310, 0, 0],
                    memory=[40, 41, 42, 43, 44, 45, 46, 47, 48, 52])
    put_invocations(moto, ORCH, [3, 7], durations=[200, 100], cold=[80, 0], memory=[30, 31])
    # 30 hours ago: outside the default 24 hours.
    put_invocations(moto, "makenaide-scanner", [30 * 60], durations=[9999], cold=[400], memory=[60])

    code = {f: (fake_dist / f"{f}-arm64.zip").stat().st_size for f in FUNCTIONS}
    layer = (fake_dist / f"{EXTENSION}-layer-arm64.zip").stat().st_size
    res = ok(run_deploy(deploy_env, *REPORT))
    rows = table(res.stdout)
    assert "last 24 h" in res.stdout and f"layer {EXTENSION}-arm64:1: " in res.stdout
    # moto has no percentiles: the report estimates them from per-minute averages, marked "~" (exact here).
    assert rows["makenaide-scanner"] == [
        "10", "30.0% (3)", "~120 ms", "~9 ms", "~500 ms", "52 MB",
        f"{code['makenaide-scanner']:,}", f"{layer:,}", f"{code['makenaide-scanner'] + layer:,}"]
    assert rows[ORCH] == ["2", "50.0% (1)", "~80 ms", "~100 ms", "~200 ms", "31 MB",
                          f"{code[ORCH]:,}", f"{layer:,}", f"{code[ORCH] + layer:,}"]
    assert rows["makenaide-db-initializer"] == ["-"] * 6 + [
        f"{code['makenaide-db-initializer']:,}", f"{layer:,}", f"{code['makenaide-db-initializer'] + layer:,}"]
    assert rows["makenaide-data-collector"] == ["-"] * 9  # deleted: no code, no layer
    assert "~: CloudWatch returned no percentile; estimated from 60-second averages" in res.stdout

    res = ok(run_deploy(deploy_env, *REPORT_48))
    assert ok(run_deploy(deploy_env, "report", "--hours", "048")).stdout.splitlines()[2:] == res.stdout.splitlines()[2:]
    rows = table(res.stdout)
    assert rows["makenaide-scanner"][:6] == ["11", "36.4% (4)", "~120 ms", "~10 ms", "~9,999 ms", "60 MB"]
    assert "estimated from 120-second averages" in res.stdout


def ops_py(tmp_path: Path) -> Path:
    """deploy.sh's python3 helper, as deploy.sh writes it."""
    text = DEPLOY.read_text()
    code = text[text.index("<<'PY'\n") + len("<<'PY'\n"):text.index("\nPY\n")]
    path = tmp_path / "ops.py"
    path.write_text(code + "\n")
    return path


def test_report_uses_cloudwatch_percentiles_when_it_has_them(tmp_path):
    """The path moto cannot take: get-metric-statistics answering ExtendedStatistics, as CloudWatch does."""
    work = tmp_path / "work"
    work.mkdir()
    fn = "makenaide-scanner"
    (work / "metrics.json").write_text(json.dumps({"MetricDataResults": [
        {"Id": "inv0", "Values": [1200.0]}, {"Id": "cold0", "Values": [0.025]}, {"Id": "colds0", "Values": [30.0]},
        {"Id": "mem0", "Values": [61.0]},
        # Per-period series that would give other numbers: CloudWatch's percentiles take precedence.
        {"Id": "durationavg0", "Timestamps": ["t1"], "Values": [999.0]}, {"Id": "durationn0", "Timestamps": ["t1"], "Values": [1.0]},
    ]}))
    (work / "pct-0-Duration.json").write_text(json.dumps({"Datapoints": [{"ExtendedStatistics": {"p50": 12.5, "p99": 80.0}}]}))
    (work / "pct-0-InitDuration.json").write_text(json.dumps({"Datapoints": [{"ExtendedStatistics": {"p50": 110.0}}]}))
    (work / "sizes.tsv").write_text(f"{fn}\t1234567\t2345678\t{EXTENSION}-arm64:7\n")
    out = subprocess.run([sys.executable, str(ops_py(tmp_path)), "report-table", str(work), "24", "a", "b", "60",
                          REGION, "Makenaide", EXTENSION, fn], capture_output=True, text=True, check=True).stdout
    assert table(out)[fn] == ["1,200", "2.5% (30)", "110 ms", "12.5 ms", "80 ms", "61 MB", "1,234,567", "2,345,678",
                              "3,580,245"]
    assert "~" not in out
    assert f"layer {EXTENSION}-arm64:7: all functions" in out


# --- dry run, invalid settings, help, docs -----------------------------------------------------------------


def dry_calls(res) -> str:
    return "\n".join(line for line in res.stdout.splitlines() if line.startswith("[dry-run] aws "))


def test_dry_run_shows_every_operations_call_and_makes_none(ops_env):
    counter = ConnectionCounter()
    try:
        env = with_role({**ops_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{counter.port}"})
        res = ok(run_deploy(env, *DRY))
        off = ok(run_deploy(env, "--dry-run", *SCHEDULE_OFF))
        dlq = ok(run_deploy(env, *DRY, "--schedule-dlq-arn", DLQ_ARN, "--alarm-topic-arn", TOPIC_ARN,
                            "--log-retention-days", "14"))
        report = ok(run_deploy(env, *REPORT_DRY))
        assert counter.count == 0, "a dry run connected to the AWS endpoint"
    finally:
        counter.close()

    text = dry_calls(res)
    assert f"iam get-role --role-name {SCHEDULER_ROLE}" in text
    assert f"iam create-role --role-name {SCHEDULER_ROLE}" in text and '"Service":"scheduler.amazonaws.com"' in text
    assert f"iam update-assume-role-policy --role-name {SCHEDULER_ROLE}" in text
    assert (f"iam put-role-policy --role-name {SCHEDULER_ROLE} --policy-name invoke-orchestrator --policy-document "
            f"""'{{"Version":"2012-10-17","Statement":[{{"Sid":"InvokeOrchestrator","Effect":"Allow","""
            f""""Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:{REGION}:<account-id>:function:{ORCH}"}}]}}'""") in text
    assert f"scheduler get-schedule --name {ORCH}" in text
    for verb in ("create-schedule", "update-schedule"):
        assert (f"scheduler {verb} --name {ORCH} --schedule-expression 'rate(1 hour)' --schedule-expression-timezone UTC "
                "--flexible-time-window Mode=OFF --target") in text
    assert '"Input":"{}","RetryPolicy":{"MaximumRetryAttempts":2,"MaximumEventAgeInSeconds":3600}' in text
    assert f"cloudwatch put-dashboard --dashboard-name {EXTENSION} --dashboard-body 'file://<dashboard body: 10 widgets" in text
    assert text.count("cloudwatch put-metric-alarm") == 12
    assert f"logs describe-log-groups --log-group-name-prefix /aws/lambda/makenaide-" in text
    for f in FUNCTIONS:
        assert f"logs create-log-group --log-group-name /aws/lambda/{f}" in text
        assert f"logs put-retention-policy --log-group-name /aws/lambda/{f} --retention-in-days 30" in text

    assert f"scheduler delete-schedule --name {ORCH}" in dry_calls(off)

    text = dry_calls(dlq)
    assert f'{{"Sid":"DeadLetterQueue","Effect":"Allow","Action":"sqs:SendMessage","Resource":"{DLQ_ARN}"}}' in text
    assert f'"DeadLetterConfig":{{"Arn":"{DLQ_ARN}"}}' in text
    assert text.count(f"--alarm-actions {TOPIC_ARN}") == 12
    assert text.count("--retention-in-days 14") == 4

    text = dry_calls(report)
    assert text.count("lambda get-function --function-name") == 4
    assert "lambda get-layer-version" in text
    assert text.count("cloudwatch get-metric-data") == 1 and "'file://<32 metric queries" in text
    assert text.count("cloudwatch get-metric-statistics") == 8 and "--extended-statistics p50 p99" in text
    assert "nothing was read" in report.stderr


def test_invalid_operations_settings_change_nothing(moto, deploy_env):
    moto.create_role()
    env = with_role(deploy_env)
    for args, message in [
        (["--schedule", "every hour"], "--schedule wants rate(...), cron(...), at(...) or off"),
        (["--schedule", "rate(1 hour)", "--schedule-retries", "186"], "--schedule-retries must be 0..185"),
        (["--schedule", "rate(1 hour)", "--schedule-max-age", "30"], "--schedule-max-age must be 60..86400"),
        (["--schedule", "rate(1 hour)", "--scheduler-role-arn", "my-scheduler"], "is not an IAM role ARN"),
        (["--schedule", "rate(1 hour)", "--schedule-dlq-arn", TOPIC_ARN], "is not an SQS queue ARN"),
        (["--schedule", "rate(1 hour)", "--schedule-dlq-arn", DLQ_ARN + ".fifo"], "must be a standard SQS queue"),
        (["--alarm-topic-arn", DLQ_ARN], "is not an SNS topic ARN"),
        (["--log-retention-days", "31"], "--log-retention-days must be keep or one of: 1 3 5 7 14 30"),
        (["--metrics-namespace", "AWS/Lambda"], "not start with AWS/"),
        (["--metrics-namespace", "has space"], "--metrics-namespace must be"),
        (["--env", "MAKENAIDE_METRICS_NAMESPACE=x"], "with --metrics-namespace, not --env"),
        (["--schedule", "rate(1 hour)", "--scheduler-role-arn", MY_ROLE_ARN],
         f"the scheduler role {MY_ROLE_ARN} does not exist"),
        (["report", "--hours", "0"], "--hours must be 1..10920"),
        (["report", "--metrics-namespace", "AWS/X"], "not start with AWS/"),
    ]:
        res = run_deploy(env, *args)
        assert res.code != 0, args
        assert message in res.stderr, (args, res)

    # A role with the name deploy.sh would create, but not made by it: refused, not taken over.
    moto.iam.create_role(RoleName=SCHEDULER_ROLE, AssumeRolePolicyDocument=json.dumps(SCHEDULER_TRUST))
    res = run_deploy(env, *HOURLY)
    assert res.code != 0
    assert f"IAM role {SCHEDULER_ROLE} exists but deploy.sh did not create it" in res.stderr
    assert moto.iam.list_role_policies(RoleName=SCHEDULER_ROLE)["PolicyNames"] == []

    assert moto.snapshot() == ({}, {})
    assert moto.scheduler.list_schedules()["Schedules"] == []
    assert moto.cloudwatch.list_dashboards()["DashboardEntries"] == []
    assert retention(moto) == {}


def test_help_lists_the_operations():
    res = run_deploy(clean_env(), "help")
    assert res.code == 0
    for word in ("report [--hours N]", "--schedule EXPR|off", "--schedule-timezone", "--scheduler-role-arn",
                 "--schedule-dlq-arn", "--schedule-retries", "--schedule-max-age", "--metrics-namespace",
                 "MAKENAIDE_METRICS_NAMESPACE", "--alarm-topic-arn", "--log-retention-days", "--no-monitoring",
                 "--hours N", "<prefix>makenaide-core", "<prefix>makenaide-scheduler"):
        assert word in res.stdout, word


def documented_commands() -> list[tuple[str, ...]]:
    """The arguments of every `./deploy.sh` line in the docs' shell blocks."""
    commands, in_block, pending = [], False, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() in ("```sh", "```bash")
            continue
        if not in_block:
            continue
        line = pending + line.split(" #")[0].strip()
        pending = ""
        if line.endswith("\\"):  # continued on the next line
            pending = line[:-1] + " "
        elif line.startswith("./deploy.sh"):
            commands.append(tuple(shlex.split(line)[1:]))
    return commands


def test_documented_commands_are_tested():
    commands = documented_commands()
    assert commands, f"no ./deploy.sh command in {DOC}"
    untested = [c for c in commands if c not in DOCUMENTED]
    assert not untested, f"{DOC.name} shows commands no test runs: {untested}"
