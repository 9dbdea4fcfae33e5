"""deploy.sh against a real AWS-compatible API (moto server on 127.0.0.1), through the real AWS CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import (
    ACCOUNT,
    ARCHS,
    DB_URL,
    EXTENSION,
    FUNCTIONS,
    LAYER_RUNTIMES,
    REGION,
    ROLE_ARN,
    ConnectionCounter,
    clean_env,
    run_deploy,
)


def code_sha(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def deploy(env, *args):
    return run_deploy(env, "--role-arn", ROLE_ARN, *args)


def layer_arn(arch: str, version: int) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{EXTENSION}-{arch}:{version}"


def test_first_deploy_publishes_layers_and_creates_functions(moto, deploy_env, fake_dist):
    moto.create_role()
    res = deploy(deploy_env, "--memory", "512", "--timeout", "120", "--env", "RUST_LOG=debug")
    assert res.code == 0, res

    # One layer per architecture, with that architecture and every runtime the static extension runs in.
    for arch in ARCHS:
        versions = moto.layer_versions(f"{EXTENSION}-{arch}")
        assert len(versions) == 1, versions
        full = moto.lam.get_layer_version(LayerName=f"{EXTENSION}-{arch}", VersionNumber=1)
        assert full["CompatibleArchitectures"] == [arch]
        assert full["CompatibleRuntimes"] == LAYER_RUNTIMES
        assert full["Content"]["CodeSha256"] == code_sha(fake_dist / f"{EXTENSION}-layer-{arch}.zip")

    fns = moto.functions()
    assert sorted(fns) == sorted(FUNCTIONS)
    for name, cfg in fns.items():
        assert cfg["Runtime"] == "provided.al2023"
        assert cfg["Handler"] == "bootstrap"
        assert cfg["Architectures"] == ["arm64"]  # the default
        assert cfg["Role"] == ROLE_ARN
        assert cfg["MemorySize"] == 512
        assert cfg["Timeout"] == 120
        assert cfg["Environment"]["Variables"] == {"MAKENAIDE_DATABASE_URL": DB_URL, "RUST_LOG": "debug"}
        assert [l["Arn"] for l in cfg["Layers"]] == [layer_arn("arm64", 1)]
        assert cfg["CodeSha256"] == code_sha(fake_dist / f"{name}-arm64.zip")
        assert cfg["State"] == "Active"

    # Smoke invocations ran (moto's invoke echoes the event).
    assert "smoke makenaide-db-initializer: ok" in res.stderr
    assert "smoke makenaide-scanner: ok" in res.stderr


def test_second_run_updates_instead_of_duplicating(moto, deploy_env, fake_dist_v2):
    moto.create_role()
    assert deploy(deploy_env, "--no-smoke").code == 0
    before = moto.snapshot()

    # Same zips again: no new layer version, no new function, code untouched.
    res = deploy(deploy_env, "--no-smoke", "--memory", "1024")
    assert res.code == 0, res
    assert "unchanged: reusing" in res.stderr
    fns, layers = moto.snapshot()
    assert layers == before[1] == {f"{EXTENSION}-x86_64": [1], f"{EXTENSION}-arm64": [1]}
    assert sorted(fns) == sorted(FUNCTIONS)
    assert all(moto.lam.get_function_configuration(FunctionName=f)["MemorySize"] == 1024 for f in FUNCTIONS)

    # A new release: one new layer version per architecture, the functions updated in place to use it.
    env = {**deploy_env, "MAKENAIDE_DIST_DIR": str(fake_dist_v2)}
    res = deploy(env, "--no-smoke")
    assert res.code == 0, res
    fns, layers = moto.snapshot()
    assert layers == {f"{EXTENSION}-x86_64": [1, 2], f"{EXTENSION}-arm64": [1, 2]}
    assert sorted(fns) == sorted(FUNCTIONS)
    for name in FUNCTIONS:
        cfg = moto.lam.get_function_configuration(FunctionName=name)
        assert [l["Arn"] for l in cfg["Layers"]] == [layer_arn("arm64", 2)]
        assert cfg["CodeSha256"] == code_sha(fake_dist_v2 / f"{name}-arm64.zip")


def test_deploy_keeps_foreign_layers_on_its_functions(moto, deploy_env, fake_dist_v2):
    moto.create_role()
    assert deploy(deploy_env, "--no-smoke").code == 0
    other = moto.lam.publish_layer_version(LayerName="monitoring", Content={"ZipFile": b"PK\x05\x06" + bytes(18)})
    fn = FUNCTIONS[1]
    moto.lam.update_function_configuration(FunctionName=fn, Layers=[other["LayerVersionArn"], layer_arn("arm64", 1)])

    res = deploy({**deploy_env, "MAKENAIDE_DIST_DIR": str(fake_dist_v2)}, "--no-smoke")
    assert res.code == 0, res
    cfg = moto.lam.get_function_configuration(FunctionName=fn)
    assert [l["Arn"] for l in cfg["Layers"]] == [other["LayerVersionArn"], layer_arn("arm64", 2)]


def test_too_many_layers_stops_before_any_change(moto, deploy_env):
    moto.create_role()
    foreign = [moto.lam.publish_layer_version(LayerName=f"other-{n}", Content={"ZipFile": b"PK\x05\x06" + bytes(18)})
               ["LayerVersionArn"] for n in range(5)]
    moto.lam.create_function(
        FunctionName="makenaide-scanner", Runtime="provided.al2023", Handler="bootstrap", Role=ROLE_ARN,
        Code={"ZipFile": b"PK\x05\x06" + bytes(18)}, Architectures=["arm64"], Layers=foreign)
    before = moto.snapshot()
    res = deploy(deploy_env, "--no-smoke")
    assert res.code != 0
    assert "at most 5 layers" in res.stderr
    assert moto.snapshot() == before  # no layer published, no function created


def test_x86_64_functions(moto, deploy_env):
    moto.create_role()
    res = deploy(deploy_env, "--no-smoke", "--arch", "x86_64")
    assert res.code == 0, res
    for name in FUNCTIONS:
        cfg = moto.lam.get_function_configuration(FunctionName=name)
        assert cfg["Architectures"] == ["x86_64"]
        assert [l["Arn"] for l in cfg["Layers"]] == [layer_arn("x86_64", 1)]


def python_function(moto, name: str, layers: list[str], arch: str = "x86_64") -> None:
    moto.lam.create_function(
        FunctionName=name, Runtime="python3.12", Handler="app.handler", Role=ROLE_ARN,
        Code={"ZipFile": b"PK\x05\x06" + bytes(18)}, Architectures=[arch], Layers=layers,
        Environment={"Variables": {"KEEP": "me"}},
    )


def test_attach_keeps_existing_layers(moto, deploy_env, fake_dist_v2):
    moto.create_role()
    assert deploy(deploy_env, "--no-smoke").code == 0
    a = moto.lam.publish_layer_version(LayerName="psycopg", Content={"ZipFile": b"PK\x05\x06" + bytes(18)})
    b = moto.lam.publish_layer_version(LayerName="pyupbit", Content={"ZipFile": b"PK\x05\x06" + bytes(18)})
    python_function(moto, "legacy-scanner", [a["LayerVersionArn"], b["LayerVersionArn"]])

    res = run_deploy(deploy_env, "attach", "legacy-scanner")
    assert res.code == 0, res
    cfg = moto.lam.get_function_configuration(FunctionName="legacy-scanner")
    # The function is x86_64: its architecture's layer is appended, the others stay in order.
    assert [l["Arn"] for l in cfg["Layers"]] == [a["LayerVersionArn"], b["LayerVersionArn"], layer_arn("x86_64", 1)]
    assert cfg["Environment"]["Variables"] == {"KEEP": "me"}
    assert "has neither MAKENAIDE_DATABASE_URL nor MAKENAIDE_DATABASE_SECRET_ID" in res.stderr  # a hint, not an error

    # A newer release replaces the old makenaide-core version in place; nothing is duplicated.
    assert deploy({**deploy_env, "MAKENAIDE_DIST_DIR": str(fake_dist_v2)}, "--no-smoke").code == 0
    moto.lam.update_function_configuration(
        FunctionName="legacy-scanner",
        Layers=[a["LayerVersionArn"], layer_arn("x86_64", 1), b["LayerVersionArn"]])
    res = run_deploy(deploy_env, "attach", "legacy-scanner", "--arch", "x86_64")
    assert res.code == 0, res
    cfg = moto.lam.get_function_configuration(FunctionName="legacy-scanner")
    assert [l["Arn"] for l in cfg["Layers"]] == [a["LayerVersionArn"], layer_arn("x86_64", 2), b["LayerVersionArn"]]

    # Running it again is a no-op.
    res = run_deploy(deploy_env, "attach", "legacy-scanner")
    assert res.code == 0, res
    assert "already has" in res.stderr


def test_attach_refuses_wrong_architecture_and_unknown_function(moto, deploy_env):
    moto.create_role()
    assert deploy(deploy_env, "--no-smoke").code == 0
    python_function(moto, "legacy", [])
    before = moto.snapshot()

    res = run_deploy(deploy_env, "attach", "legacy", "--arch", "arm64")
    assert res.code != 0
    assert "runs on x86_64 but --arch is arm64" in res.stderr

    res = run_deploy(deploy_env, "attach", "no-such-function")
    assert res.code != 0
    assert "does not exist" in res.stderr

    res = run_deploy(deploy_env, "attach")
    assert res.code != 0
    assert "usage: ./deploy.sh attach FUNCTION" in res.stderr
    assert moto.snapshot() == before


def test_attach_without_published_layer(moto, deploy_env):
    moto.create_role()
    python_function(moto, "legacy", [])
    res = run_deploy(deploy_env, "attach", "legacy")
    assert res.code != 0
    assert "has no published version" in res.stderr
    assert moto.lam.get_function_configuration(FunctionName="legacy").get("Layers", []) == []


# --- prerequisites: clear errors, nothing changed ----------------------------------------------------------


def assert_unchanged(moto, before):
    assert moto.snapshot() == before


def test_missing_role_changes_nothing(moto, deploy_env):
    before = moto.snapshot()
    res = run_deploy(deploy_env)  # no --role-arn
    assert res.code != 0
    assert "no execution role: pass --role-arn" in res.stderr
    assert_unchanged(moto, before)

    res = deploy(deploy_env)  # the role ARN names a role that does not exist
    assert res.code != 0
    assert f"the execution role {ROLE_ARN} does not exist" in res.stderr
    assert_unchanged(moto, before)

    res = run_deploy(deploy_env, "--role-arn", "makenaide-lambda")
    assert res.code != 0
    assert "is not an IAM role ARN" in res.stderr
    assert_unchanged(moto, before)


def test_missing_artifact_changes_nothing(moto, deploy_env, fake_dist, tmp_path):
    moto.create_role()
    partial = tmp_path / "dist"
    shutil.copytree(fake_dist, partial)
    (partial / "makenaide-scanner-arm64.zip").unlink()
    (partial / f"{EXTENSION}-layer-x86_64.zip").unlink()
    before = moto.snapshot()
    res = deploy({**deploy_env, "MAKENAIDE_DIST_DIR": str(partial)})
    assert res.code != 0
    assert "missing build artifacts" in res.stderr
    assert "makenaide-scanner-arm64.zip" in res.stderr and "makenaide-core-layer-x86_64.zip" in res.stderr
    assert "layer-build/build.sh" in res.stderr
    assert_unchanged(moto, before)

    # Only the arm64 layer is needed when only arm64 is published.
    (partial / "makenaide-scanner-arm64.zip").write_bytes((fake_dist / "makenaide-scanner-arm64.zip").read_bytes())
    res = deploy({**deploy_env, "MAKENAIDE_DIST_DIR": str(partial)}, "--layer-archs", "arm64", "--no-smoke")
    assert res.code == 0, res
    assert moto.layers() == {f"{EXTENSION}-arm64": [1]}


def test_missing_database_url_region_credentials_and_cli(moto, deploy_env):
    moto.create_role()
    before = moto.snapshot()

    env = {k: v for k, v in deploy_env.items() if k != "MAKENAIDE_DATABASE_URL"}
    res = deploy(env)
    assert res.code != 0 and "no database: set MAKENAIDE_DATABASE_URL" in res.stderr

    res = deploy({**deploy_env, "MAKENAIDE_DATABASE_URL": "mysql://u:p@h/db"})
    assert res.code != 0 and "does not start with postgres://" in res.stderr

    env = {k: v for k, v in deploy_env.items() if k != "AWS_DEFAULT_REGION"}
    res = deploy(env)
    assert res.code != 0 and "no AWS region" in res.stderr

    env = {k: v for k, v in deploy_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    res = deploy(env)
    assert res.code != 0 and "no usable AWS credentials" in res.stderr

    bare = Path(shutil.which("bash")).parent
    if (bare / "aws").exists():
        pytest.skip("aws is installed next to bash: cannot hide it")
    res = run_deploy({**deploy_env, "PATH": f"{bare}:/bin"}, "--role-arn", ROLE_ARN)
    assert res.code != 0 and "the AWS CLI is not installed" in res.stderr

    assert_unchanged(moto, before)


def test_invalid_settings(moto, deploy_env):
    moto.create_role()
    for args, message in [
        (["--memory", "64"], "--memory must be 128..10240"),
        (["--timeout", "901"], "--timeout must be 1..900"),
        (["--arch", "riscv"], "--arch must be x86_64 or arm64"),
        (["--subnet-ids", "subnet-1"], "give both --subnet-ids and --security-group-ids"),
        (["--env", "no-equals"], "--env wants KEY=VALUE"),
        (["--env", f"MAKENAIDE_DATABASE_URL={DB_URL}"], "not --env"),
        (["--bogus"], "unknown option --bogus"),
    ]:
        res = deploy(deploy_env, *args)
        assert res.code != 0, args
        assert message in res.stderr, (args, res)
    assert moto.snapshot() == ({}, {})


# --- dry run -----------------------------------------------------------------------------------------------


def test_dry_run_prints_every_call_and_makes_none(deploy_env, tmp_path):
    counter = ConnectionCounter()
    try:
        env = {**deploy_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{counter.port}"}
        res = run_deploy(env, "--role-arn", ROLE_ARN, "--dry-run", "--subnet-ids", "subnet-a,subnet-b",
                         "--security-group-ids", "sg-1", "--env", "MAKENAIDE_CORE_TOKEN=tok-123456")
        assert res.code == 0, res
        assert counter.count == 0, "dry run connected to the AWS endpoint"
    finally:
        counter.close()
    calls = [line for line in res.stdout.splitlines() if line.startswith("[dry-run] aws ")]
    text = "\n".join(calls)
    for arch in ARCHS:
        assert f"lambda publish-layer-version --layer-name {EXTENSION}-{arch}" in text
    for name in FUNCTIONS:
        assert f"lambda create-function --function-name {name}" in text
        assert f"lambda update-function-configuration --function-name {name}" in text
        assert f"lambda wait function-active --function-name {name}" in text
    assert "--vpc-config SubnetIds=subnet-a,subnet-b,SecurityGroupIds=sg-1" in text
    assert "lambda invoke --function-name makenaide-db-initializer" in text
    # The read-only checks are printed too (and not made either).
    assert "sts get-caller-identity" in text and "iam get-role --role-name makenaide-lambda" in text
    # The environment is shown, masked.
    assert '"MAKENAIDE_DATABASE_URL":"****"' in text
    assert "tok-123456" not in res.out
    assert "nothing was changed" in res.stderr


def test_dry_run_attach(deploy_env):
    counter = ConnectionCounter()
    try:
        env = {**deploy_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{counter.port}"}
        res = run_deploy(env, "attach", "legacy", "--arch", "x86_64", "--dry-run")
        assert res.code == 0, res
        assert counter.count == 0
    finally:
        counter.close()
    assert "lambda update-function-configuration --function-name legacy --layers" in res.stdout


# --- secrets -----------------------------------------------------------------------------------------------


def policy_of(res) -> dict:
    """The IAM policy deploy.sh printed for the execution role (one JSON line on stdout)."""
    lines = [l for l in res.stdout.splitlines() if l.startswith('{"Version"')]
    assert len(lines) == 1, res
    return json.loads(lines[0])


def test_secret_id_goes_into_the_environment_never_the_url(moto, deploy_env):
    moto.create_role()
    arn = moto.secrets.create_secret(Name="makenaide/db", SecretString=DB_URL)["ARN"]
    env = {k: v for k, v in deploy_env.items() if k != "MAKENAIDE_DATABASE_URL"}
    res = deploy(env, "--db-secret-id", "makenaide/db", "--no-smoke")
    assert res.code == 0, res
    for name in FUNCTIONS:
        assert moto.lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"] == {
            "MAKENAIDE_DATABASE_SECRET_ID": "makenaide/db"}
    assert policy_of(res) == {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn}]}
    assert "execution role makenaide-lambda needs this policy" in res.stderr

    # The secret's value is never read at deploy time: a JSON secret (RDS's form) deploys the same way.
    moto.secrets.create_secret(Name="makenaide/json", SecretString=json.dumps({"password": "x", "host": "h"}))
    res = deploy(env, "--db-secret-id", "makenaide/json", "--no-smoke")
    assert res.code == 0, res

    res = deploy(env, "--db-secret-id", "makenaide/missing", "--no-smoke")
    assert res.code != 0 and "secret 'makenaide/missing' does not exist in ap-northeast-2" in res.stderr, res

    res = deploy(deploy_env, "--db-secret-id", "makenaide/db", "--no-smoke")
    assert res.code != 0 and "both MAKENAIDE_DATABASE_URL and --db-secret-id are set" in res.stderr, res
    res = deploy(env, "--db-secret-id", "makenaide/db", "--db-iam-auth", "--no-smoke")
    assert res.code != 0 and "do not combine" in res.stderr, res
    res = deploy(env, "--env", "MAKENAIDE_DATABASE_SECRET_ID=makenaide/db", "--no-smoke")
    assert res.code != 0 and "not --env MAKENAIDE_DATABASE_SECRET_ID" in res.stderr, res


def test_iam_auth_stores_a_password_less_url(moto, deploy_env):
    moto.create_role()
    url = "postgres://iam_user@mydb.abc.ap-northeast-2.rds.amazonaws.com:5432/makenaide?sslmode=verify-full"
    env = {**deploy_env, "MAKENAIDE_DATABASE_URL": url}
    res = deploy(env, "--db-iam-auth", "--no-smoke")
    assert res.code == 0, res
    for name in FUNCTIONS:
        assert moto.lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"] == {
            "MAKENAIDE_DATABASE_URL": url, "MAKENAIDE_DB_IAM_AUTH": "true"}
    assert policy_of(res) == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "rds-db:connect",
        "Resource": f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:RESOURCE_ID/iam_user"}]}
    assert "DbiResourceId" in res.stderr and "GRANT rds_iam TO iam_user" in res.stderr

    res = deploy(deploy_env, "--db-iam-auth", "--no-smoke")  # DB_URL has a password
    assert res.code != 0 and "remove the password" in res.stderr, res
    res = deploy({**env, "MAKENAIDE_DATABASE_URL": "postgres://iam_user@h:5432/db?sslmode=disable"},
                 "--db-iam-auth", "--no-smoke")
    assert res.code != 0 and "requires TLS" in res.stderr, res
    res = deploy({**env, "MAKENAIDE_DB_IAM_AUTH": "1"}, "--dry-run")
    assert res.code == 0, res
    assert policy_of(res)["Statement"][0]["Resource"].endswith(":dbuser:RESOURCE_ID/iam_user")


def test_secret_never_printed_even_with_xtrace(moto, deploy_env):
    moto.create_role()
    res = run_deploy(deploy_env, "--role-arn", ROLE_ARN, "--dry-run", shell=("bash", "-x"))
    assert res.code == 0, res
    assert "xtrace switched off" in res.stderr


def test_smoke_invocation_error_fails_the_deploy(moto, deploy_env):
    moto.create_role()
    moto.queue_invoke_result({
        "errorType": "DatabaseError",
        "errorMessage": f"could not connect to {DB_URL}",
    })
    res = deploy(deploy_env)
    assert res.code != 0
    assert "smoke invocation of makenaide-db-initializer failed (Unhandled" in res.stderr
    assert "DatabaseError" in res.stderr
    assert "could not connect to ****" in res.stderr  # the function's own error text, masked


def test_fallback_poll_loop_and_makenaide_endpoint_variable(moto, deploy_env):
    """MAKENAIDE_AWS_ENDPOINT_URL is passed as --endpoint-url (for CLIs that ignore AWS_ENDPOINT_URL); the poll
    loop replaces `aws lambda wait` on CLIs without the waiters."""
    moto.create_role()
    env = {k: v for k, v in deploy_env.items() if k != "AWS_ENDPOINT_URL"}
    env.update({"MAKENAIDE_AWS_ENDPOINT_URL": moto.url, "MAKENAIDE_WAIT_MODE": "poll"})
    res = deploy(env, "--no-smoke")
    assert res.code == 0, res
    assert sorted(moto.functions()) == sorted(FUNCTIONS)
    res = deploy(env, "--no-smoke", "--timeout", "30")
    assert res.code == 0, res
    assert moto.lam.get_function_configuration(FunctionName=FUNCTIONS[0])["Timeout"] == 30


def test_vpc_prefix_and_layer_name(moto, deploy_env):
    moto.create_role()
    vpc = moto.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = moto.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = moto.ec2.create_security_group(GroupName="makenaide", Description="d", VpcId=vpc)["GroupId"]
    res = deploy(deploy_env, "--no-smoke", "--subnet-ids", subnet, "--security-group-ids", sg,
                 "--function-prefix", "dev-", "--layer-name", "mk-core")
    assert res.code == 0, res
    assert sorted(moto.functions()) == sorted("dev-" + f for f in FUNCTIONS)
    cfg = moto.lam.get_function_configuration(FunctionName="dev-makenaide-scanner")
    assert cfg["VpcConfig"]["SubnetIds"] == [subnet]
    assert cfg["VpcConfig"]["SecurityGroupIds"] == [sg]
    assert [l["Arn"] for l in cfg["Layers"]] == [f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:mk-core-arm64:1"]


def test_help(deploy_env):
    res = run_deploy(clean_env(), "help")
    assert res.code == 0
    for word in ("--role-arn", "--db-secret-id", "--db-iam-auth", "MAKENAIDE_DATABASE_URL", "attach FUNCTION", "--dry-run",
                 "MAKENAIDE_AWS_ENDPOINT_URL", "--no-smoke"):
        assert word in res.stdout


def test_python_collector_on_the_layer(moto, deploy_env, tmp_path):
    """--python-collector: examples/python/data_collector as a python3.13 function with the layer attached, its zip
    holding exactly the example's lambda_function.py; a second run leaves its code as it is."""
    moto.create_role()
    res = deploy(deploy_env, "--python-collector", "--no-smoke", "--arch", "x86_64", "--layer-archs", "x86_64",
                 "--memory", "512")
    assert res.code == 0, res
    fns = moto.functions()
    assert sorted(fns) == sorted([*FUNCTIONS, "makenaide-data-collector-python"])
    cfg = fns["makenaide-data-collector-python"]
    assert (cfg["Runtime"], cfg["Handler"]) == ("python3.13", "lambda_function.lambda_handler")
    assert cfg["Architectures"] == ["x86_64"] and cfg["MemorySize"] == 512 and cfg["Role"] == ROLE_ARN
    assert cfg["Environment"]["Variables"] == {"MAKENAIDE_DATABASE_URL": DB_URL}
    assert [l["Arn"] for l in cfg["Layers"]] == [layer_arn("x86_64", 1)]
    assert "python3.13" in moto.lam.get_layer_version(LayerName=f"{EXTENSION}-x86_64", VersionNumber=1)[
        "CompatibleRuntimes"]
    # The code Lambda got is the example, as is: the same bytes as mkzip.py's zip of the example folder.
    import subprocess
    import zipfile
    root = Path(__file__).resolve().parents[2]
    zip_path = tmp_path / "collector.zip"
    subprocess.run(["python3", str(root / "layer-build/mkzip.py"), "pack", str(zip_path),
                    f"/={root}/examples/python/data_collector/"], check=True)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["lambda_function.py"]
        assert zf.read("lambda_function.py") == (root / "examples/python/data_collector/lambda_function.py").read_bytes()
    assert cfg["CodeSha256"] == code_sha(zip_path)
    # The Rust functions are unchanged by the option.
    assert all(fns[f]["Runtime"] == "provided.al2023" for f in FUNCTIONS)

    # Again: the reproducible zip has the same CodeSha256, so the code is not updated.
    sha = cfg["CodeSha256"]
    res = deploy(deploy_env, "--python-collector", "--no-smoke", "--arch", "x86_64", "--layer-archs", "x86_64")
    assert res.code == 0, res
    assert "makenaide-data-collector-python: code unchanged" in res.stderr
    assert moto.lam.get_function_configuration(FunctionName="makenaide-data-collector-python")["CodeSha256"] == sha
