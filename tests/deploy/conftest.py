"""Shared fixtures of the packaging and deployment tests (tests/deploy).

- `fake_dist`: the ten dist/ zips, made by the real layer-build/build.sh (`--bins`) from tiny static ELF files, so
  the tests do not depend on the slow Rust release build;
- `moto`: a moto server on a free 127.0.0.1 port (started once, state reset for every test), with boto3 clients to
  assert what deploy.sh did;
- `deploy_env` / `run_deploy`: deploy.sh run as a user would, with dummy credentials and `AWS_ENDPOINT_URL`;
  `deploy_env` leaves out the monitoring part (dashboard, alarms, log retention: ~20 more CLI calls per deploy),
  `ops_env` has deploy.sh's defaults (test_operations.py);
- `ConnectionCounter`: an endpoint that counts connections, for runs that must make no call (--dry-run).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEPLOY = ROOT / "deploy.sh"
BUILD = ROOT / "layer-build" / "build.sh"
MKZIP = ROOT / "layer-build" / "mkzip.py"
ASSEMBLE = ROOT / "docker" / "assemble-tree.sh"

EXTENSION = "makenaide-core"
# The one list of functions (functions/FUNCTIONS), as the scripts read it.
FUNCTIONS = [
    line.split("#", 1)[0].strip()
    for line in (ROOT / "functions" / "FUNCTIONS").read_text().splitlines()
    if line.split("#", 1)[0].strip()
]
ARCHS = ["x86_64", "arm64"]
LAYER_RUNTIMES = [
    "provided.al2023",
    "provided.al2",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
]
REGION = "ap-northeast-2"
ACCOUNT = "123456789012"  # moto's default account
ROLE_NAME = "makenaide-lambda"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
DB_PASSWORD = "pw-S3cr3t-7f1e"
DB_URL = f"postgres://makenaide:{DB_PASSWORD}@db.internal.example:5432/makenaide?sslmode=require"

ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64


def fake_elf(arch: str, payload: bytes) -> bytes:
    """A minimal ELF64 executable with one PT_LOAD and no PT_INTERP/PT_DYNAMIC, i.e. what readelf shows for a
    static musl binary; `payload` makes each file's bytes distinct."""
    size = 64 + 56 + len(payload)
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
        2, ELF_MACHINE[arch], 1, 0x400078, 64, 0, 0, 64, 56, 1, 64, 0, 0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, size, size, 0x1000)
    return ehdr + phdr + payload


def write_fake_bins(dest: Path, tag: str) -> Path:
    """dest/<arch>/<binary> for the extension and the four functions (layout of build.sh --bins)."""
    for arch in ARCHS:
        (dest / arch).mkdir(parents=True, exist_ok=True)
        for name in [EXTENSION, *FUNCTIONS]:
            path = dest / arch / name
            path.write_bytes(fake_elf(arch, f"{name} {arch} {tag}\n".encode() * 64))
            path.chmod(0o755)
    return dest


def run_build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(BUILD), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_dist(tmp: Path, tag: str) -> Path:
    bins = write_fake_bins(tmp / f"bins-{tag}", tag)
    dist = tmp / f"dist-{tag}"
    res = run_build("--bins", str(bins), "--dist", str(dist), "--no-install")
    assert res.returncode == 0, res.stdout + res.stderr
    return dist


@pytest.fixture(scope="session")
def fake_dist(tmp_path_factory) -> Path:
    """The ten zips from fake binaries (version 1)."""
    return make_dist(tmp_path_factory.mktemp("fake"), "v1")


@pytest.fixture(scope="session")
def fake_dist_v2(tmp_path_factory) -> Path:
    """Same names, different binaries: a new release."""
    return make_dist(tmp_path_factory.mktemp("fake"), "v2")


# --- moto --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Readiness = the port accepts a connection (the process must still be alive)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not listening on {port} after {timeout}s:\n{log.read_text()}")
            time.sleep(0.05)


class Moto:
    """A running moto server plus boto3 clients pointed at it."""

    def __init__(self, url: str):
        self.url = url
        kw = dict(
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.lam = boto3.client("lambda", **kw)
        self.iam = boto3.client("iam", **kw)
        self.secrets = boto3.client("secretsmanager", **kw)
        self.ec2 = boto3.client("ec2", **kw)
        self.scheduler = boto3.client("scheduler", **kw)
        self.cloudwatch = boto3.client("cloudwatch", **kw)
        self.logs = boto3.client("logs", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.sns = boto3.client("sns", **kw)

    def post(self, path: str, body: dict | None = None) -> None:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body or {}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def reset(self) -> None:
        self.post("/moto-api/reset")

    def queue_invoke_result(self, result: dict) -> None:
        """The next Invoke returns `result` (see moto_server.py)."""
        self.post("/moto-api/static/lambda-simple/response",
                  {"results": [json.dumps(result)], "region": REGION, "account_id": ACCOUNT})

    def create_role(self) -> str:
        return self.iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                           "Action": "sts:AssumeRole"}],
        }))["Role"]["Arn"]

    # --- state snapshots ---
    def functions(self) -> dict[str, dict]:
        out = {}
        for page in self.lam.get_paginator("list_functions").paginate():
            for fn in page["Functions"]:
                out[fn["FunctionName"]] = self.lam.get_function_configuration(FunctionName=fn["FunctionName"])
        return out

    def layer_versions(self, name: str) -> list[dict]:
        return self.lam.list_layer_versions(LayerName=name)["LayerVersions"]

    def layers(self) -> dict[str, list[int]]:
        return {
            layer["LayerName"]: sorted(v["Version"] for v in self.layer_versions(layer["LayerName"]))
            for layer in self.lam.list_layers()["Layers"]
        }

    def snapshot(self) -> tuple:
        fns = {name: (c["CodeSha256"], c.get("LastModified"), tuple(l["Arn"] for l in c.get("Layers", [])))
               for name, c in self.functions().items()}
        return fns, self.layers()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(HERE / "moto_server.py"), str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def moto(moto_server) -> Moto:
    m = Moto(moto_server)
    m.reset()
    return m


# --- running deploy.sh -------------------------------------------------------------------------------------


def clean_env() -> dict:
    """The caller's environment without anything AWS or makenaide, so a developer's real profile never leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAKENAIDE_"))}
    env.update({
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


@pytest.fixture
def ops_env(moto, fake_dist) -> dict:
    """deploy.sh's defaults, monitoring included."""
    env = clean_env()
    env.update({
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "MAKENAIDE_DATABASE_URL": DB_URL,
        "MAKENAIDE_DIST_DIR": str(fake_dist),
    })
    return env


@pytest.fixture
def deploy_env(ops_env) -> dict:
    """Without the dashboard, the alarms and the log retention, which test_operations.py covers: they would add
    about 20 CLI calls (~15 s here) to every deploy of the other tests."""
    return {**ops_env, "MAKENAIDE_NO_MONITORING": "1", "MAKENAIDE_LOG_RETENTION_DAYS": "keep"}


class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.out = proc.stdout + proc.stderr

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def assert_no_secret(res: Result) -> None:
    assert DB_URL not in res.out, "the database URL leaked into the output"
    assert DB_PASSWORD not in res.out, "the database password leaked into the output"


def run_deploy(env: dict, *args: str, shell: tuple[str, ...] = ("bash",)) -> Result:
    proc = subprocess.run([*shell, str(DEPLOY), *args], env=env, capture_output=True, text=True, timeout=600)
    res = Result(proc)
    assert_no_secret(res)
    return res


class ConnectionCounter:
    """A TCP listener that counts connections (and answers none): the endpoint for a run that must make no call."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self):
        self.sock.close()
