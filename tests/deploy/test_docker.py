"""Docker RIE files. No Docker engine runs here, so: the image's tree is assembled from the same zips by the same
script the Dockerfile runs (docker/assemble-tree.sh), checked, and (when the real zips and the local harness are
built) run under the local Lambda harness; the Dockerfile and compose file are checked for consistency."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ASSEMBLE, EXTENSION, FUNCTIONS, ROOT

DOCKER = ROOT / "docker"


def assemble(dist: Path, out: Path, function: str, arch: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ASSEMBLE), str(out), function, arch],
                          env={**os.environ, "MAKENAIDE_DIST_DIR": str(dist)},
                          capture_output=True, text=True, timeout=60)


def test_assemble_tree_matches_the_zips(fake_dist, tmp_path):
    tree = tmp_path / "tree"
    res = assemble(fake_dist, tree, "makenaide-scanner", "arm64")
    assert res.returncode == 0, res.stderr
    assert f"MAKENAIDE_BIN_DIR={tree}" in res.stdout

    ext = tree / "opt" / "extensions" / EXTENSION
    boot = tree / "var" / "runtime" / "bootstrap"
    alias = tree / "functions" / "makenaide-scanner" / "bootstrap"
    for path in (ext, boot, alias):
        assert path.stat().st_mode & 0o777 == 0o755, path
    with zipfile.ZipFile(fake_dist / f"{EXTENSION}-layer-arm64.zip") as zf:
        assert ext.read_bytes() == zf.read(f"extensions/{EXTENSION}")
    with zipfile.ZipFile(fake_dist / "makenaide-scanner-arm64.zip") as zf:
        assert boot.read_bytes() == zf.read("bootstrap") == alias.read_bytes()

    # The layer's Python client lands in /opt/python as on Lambda (0644), byte for byte the repo's.
    with zipfile.ZipFile(fake_dist / f"{EXTENSION}-layer-arm64.zip") as zf:
        python_files = sorted(n for n in zf.namelist() if n.startswith("python/") and not n.endswith("/"))
    assert "python/makenaide_core/__init__.py" in python_files
    for name in python_files:
        assert (tree / "opt" / name).read_bytes() == (ROOT / name).read_bytes()
        assert (tree / "opt" / name).stat().st_mode & 0o777 == 0o644, name

    # Nothing else in the image tree (the alias dir is for the harness only).
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert files == sorted(["functions/makenaide-scanner/bootstrap", f"opt/extensions/{EXTENSION}",
                            "var/runtime/bootstrap", *(f"opt/{n}" for n in python_files)])

    # A second function into the same directory: its alias is added, the image's bootstrap is now that function.
    res = assemble(fake_dist, tree, "makenaide-db-initializer", "arm64")
    assert res.returncode == 0, res.stderr
    assert (tree / "functions" / "makenaide-scanner" / "bootstrap").read_bytes() != boot.read_bytes()
    assert (tree / "functions" / "makenaide-db-initializer" / "bootstrap").read_bytes() == boot.read_bytes()


def test_assemble_tree_errors(fake_dist, tmp_path):
    res = assemble(fake_dist, tmp_path / "t", "makenaide-unknown", "arm64")
    assert res.returncode != 0 and "unknown function" in res.stderr
    res = assemble(fake_dist, tmp_path / "t", "makenaide-scanner", "sparc")
    assert res.returncode != 0 and "arch must be" in res.stderr
    res = assemble(tmp_path / "empty", tmp_path / "t", "makenaide-scanner", "x86_64")
    assert res.returncode != 0 and "missing" in res.stderr and "layer-build/build.sh" in res.stderr


def test_dockerfile_and_compose_agree():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM public\.ecr\.aws/lambda/provided:al2023\s*$", dockerfile, re.M)
    assert "docker/assemble-tree.sh" in dockerfile
    assert "COPY --from=unpack /tree/opt/ /opt/" in dockerfile
    assert "/var/runtime/bootstrap" in dockerfile

    # The build context admits exactly what the Dockerfile copies.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for needed in ("!dist/*.zip", "!layer-build/mkzip.py", "!docker/assemble-tree.sh"):
        assert needed in ignore

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "upbit-sim", "function"}
    fn = services["function"]
    assert fn["build"]["dockerfile"] == "docker/Dockerfile" and fn["build"]["context"] == ".."
    assert set(fn["build"]["args"]) == {"FUNCTION", "ARCH"}
    assert any("9000" in p and p.endswith(":8080") for p in fn["ports"])
    env = fn["environment"]
    assert env["MAKENAIDE_DATABASE_URL"].startswith("postgres://makenaide:makenaide@postgres:5432/")
    assert "upbit-sim" in env["MAKENAIDE_UPBIT_BASE_URL"]
    assert fn["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["upbit-sim"]["build"]["dockerfile"] == "docker/upbit-sim.Dockerfile"
    assert services["upbit-sim"]["environment"]["UPBIT_SIM_ADDR"].endswith(":8080")
    assert env["MAKENAIDE_UPBIT_BASE_URL"].endswith("upbit-sim:8080}")
    assert "--bin upbit-sim" in (DOCKER / "upbit-sim.Dockerfile").read_text()

    run = (DOCKER / "run.sh").read_text()
    assert "http://localhost:$PORT/2015-03-31/functions/function/invocations" in run


def test_run_script_without_docker_engine_explains():
    res = subprocess.run(["bash", str(DOCKER / "run.sh"), "--function", "makenaide-scanner"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert res.returncode != 0
    assert "assemble-tree.sh" in res.stderr


def host_arch() -> str | None:
    return {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())


def harness_binary() -> Path | None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    for profile in ("debug", "release"):
        path = target / profile / "makenaide-local"
        if path.is_file():
            return path
    return None


def real_dist() -> Path | None:
    arch = host_arch()
    dist = Path(os.environ.get("MAKENAIDE_REAL_DIST", ROOT / "dist"))
    if arch and (dist / f"{EXTENSION}-layer-{arch}.zip").is_file() and \
            (dist / f"makenaide-integrated-orchestrator-{arch}.zip").is_file():
        return dist
    return None


@pytest.mark.skipif(real_dist() is None or harness_binary() is None,
                    reason="needs the real zips for this machine's arch and the harness (cargo build -p makenaide-tests)")
def test_image_tree_runs_under_the_local_harness(tmp_path):
    """The tree the Docker image would hold, run as a Lambda environment by the local harness (simulated Upbit,
    throwaway PostgreSQL): the released binaries, exactly as unpacked from the zips, do the whole job."""
    tree = tmp_path / "tree"
    res = assemble(real_dist(), tree, "makenaide-integrated-orchestrator", host_arch())
    assert res.returncode == 0, res.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKENAIDE_")}
    env["MAKENAIDE_BIN_DIR"] = str(tree)
    proc = subprocess.run([str(harness_binary()), "--offline", "--throwaway-db", "--invocations", "1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "invocation 1: success" in proc.stdout + proc.stderr
