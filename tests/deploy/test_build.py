"""layer-build/build.sh: artifact layout, reproducible zips, static-binary checks and size budgets.

The packaging runs on tiny fake static ELF files (`build.sh --bins`), so these tests take seconds; the cargo-lambda
build itself is checked by test_real_artifacts_are_static when real zips are present (MAKENAIDE_REAL_DIST, or
<repo>/dist after `layer-build/build.sh`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import ARCHS, EXTENSION, FUNCTIONS, ROOT, fake_elf, run_build, write_fake_bins

PYTHON_PACKAGE = ROOT / "python" / "makenaide_core"

ALL_ZIPS = [f"{EXTENSION}-layer-{a}.zip" for a in ARCHS] + [f"{f}-{a}.zip" for f in FUNCTIONS for a in ARCHS]


def sha256s(dist: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dist.glob("*.zip"))}


def test_artifact_layout_and_modes(fake_dist):
    assert sorted(p.name for p in fake_dist.glob("*.zip")) == sorted(ALL_ZIPS)
    for arch in ARCHS:
        with zipfile.ZipFile(fake_dist / f"{EXTENSION}-layer-{arch}.zip") as zf:
            infos = {i.filename: i for i in zf.infolist()}
            # The Python client, as in the repo (Lambda unpacks it to /opt/python, on sys.path in python3.x).
            package = sorted(f"python/makenaide_core/{p.name}" for p in PYTHON_PACKAGE.iterdir()
                             if p.is_file() and not p.name.endswith(".pyc"))
            assert "python/makenaide_core/__init__.py" in package and "python/makenaide_core/py.typed" in package
            assert sorted(infos) == sorted(["extensions/", f"extensions/{EXTENSION}", "python/",
                                            "python/makenaide_core/", *package])
            for name in package:
                assert infos[name].external_attr >> 16 == 0o100644
                assert zf.read(name) == (ROOT / name).read_bytes()
            ext = infos[f"extensions/{EXTENSION}"]
            assert ext.external_attr >> 16 == 0o100755
            assert ext.create_system == 3  # Unix: the mode bits are honoured when Lambda unpacks the layer
            assert infos["extensions/"].external_attr >> 16 == 0o040755
            assert zf.read(ext).startswith(b"\x7fELF")
        for name in FUNCTIONS:
            with zipfile.ZipFile(fake_dist / f"{name}-{arch}.zip") as zf:
                (info,) = zf.infolist()
                assert info.filename == "bootstrap"
                assert info.external_attr >> 16 == 0o100755
                assert info.date_time == (1980, 1, 1, 0, 0, 0)
                assert name.encode() in zf.read(info)


def test_zips_are_reproducible(tmp_path):
    """Same binaries → byte-identical zips, whatever the files' mtimes, the umask or the directory order."""
    bins = write_fake_bins(tmp_path / "bins", "same")
    first = tmp_path / "dist1"
    res = run_build("--bins", str(bins), "--dist", str(first), "--no-install")
    assert res.returncode == 0, res.stderr

    # Touch every binary (new mtimes), copy them elsewhere in reverse order and with other permissions.
    moved = tmp_path / "elsewhere"
    for arch in ARCHS:
        (moved / arch).mkdir(parents=True)
        for src in sorted((bins / arch).iterdir(), reverse=True):
            dst = moved / arch / src.name
            dst.write_bytes(src.read_bytes())
            dst.chmod(0o700)
            os.utime(dst, (1_900_000_000, 1_900_000_000))
    second = tmp_path / "dist2"
    res = subprocess.run(["bash", "-c", 'umask 077; exec bash "$0" "$@"', str(ROOT / "layer-build" / "build.sh"),
                          "--bins", str(moved), "--dist", str(second), "--no-install"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sha256s(first) == sha256s(second)
    assert len(sha256s(first)) == 10
    assert (first / "SHA256SUMS").read_text() == (second / "SHA256SUMS").read_text()


def test_size_table_and_budgets(tmp_path):
    bins = write_fake_bins(tmp_path / "bins", "x")
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "d1"), "--no-install")
    assert res.returncode == 0
    rows = [line for line in res.stdout.splitlines() if line.endswith(" ok")]
    assert len(rows) == 10
    assert res.stdout.splitlines()[0].split() == ["artifact", "zip", "unzipped", "budget", "status"]
    assert any("2048.0 KiB" in r and "layer" in r for r in rows)  # layer budget 2 MiB
    assert any("560.0 KiB" in r and "scanner" in r for r in rows)  # function budget 560 KiB

    # An incompressible 600 KiB function binary breaks the 560 KiB budget.
    big = bins / "arm64" / "makenaide-scanner"
    big.write_bytes(fake_elf("arm64", os.urandom(600 * 1024)))
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "d2"), "--no-install")
    assert res.returncode != 0
    over = [line for line in res.stdout.splitlines() if "OVER BUDGET" in line]
    assert len(over) == 1 and over[0].startswith("makenaide-scanner-arm64.zip")
    assert "size budget exceeded" in res.stderr

    # Budgets can be tightened from the environment.
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "d3"), "--arch", "x86_64", "--no-install",
                    env={"MAKENAIDE_LAYER_BUDGET_BYTES": "100"})
    assert res.returncode != 0
    assert "makenaide-core-layer-x86_64.zip" in [l.split()[0] for l in res.stdout.splitlines() if "OVER" in l]


def test_single_arch(tmp_path):
    bins = write_fake_bins(tmp_path / "bins", "x")
    dist = tmp_path / "dist"
    res = run_build("--bins", str(bins), "--dist", str(dist), "--arch", "arm64", "--no-install")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in dist.glob("*.zip")) == sorted(z for z in ALL_ZIPS if z.endswith("-arm64.zip"))


def test_rejects_dynamic_binaries(tmp_path):
    """A binary with an ELF interpreter / NEEDED libc would not start in provided.al2 or python3.x images
    with an older glibc: the build refuses it."""
    host = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())
    if host is None:
        pytest.skip("unknown host architecture")
    bins = write_fake_bins(tmp_path / "bins", "x")
    shutil.copy(shutil.which("true") or "/bin/true", bins / host / EXTENSION)
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "dist"), "--arch", host, "--no-install")
    assert res.returncode != 0
    assert "not a static build" in res.stderr or "links shared libraries" in res.stderr


def test_rejects_wrong_architecture(tmp_path):
    bins = write_fake_bins(tmp_path / "bins", "x")
    (bins / "arm64" / "makenaide-data-collector").write_bytes(fake_elf("x86_64", b"x"))
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "dist"), "--arch", "arm64", "--no-install")
    assert res.returncode != 0
    assert "not arm64" in res.stderr

    (bins / "arm64" / "makenaide-data-collector").write_text("#!/bin/sh\n")
    res = run_build("--bins", str(bins), "--dist", str(tmp_path / "dist"), "--arch", "arm64", "--no-install")
    assert res.returncode != 0
    assert "is not an ELF binary" in res.stderr


def test_bad_arguments():
    res = run_build("--arch", "mips")
    assert res.returncode != 0 and "--arch must be x86_64, arm64 or all" in res.stderr
    res = run_build("--help")
    assert res.returncode == 0 and "--arch" in res.stdout and "budget" in res.stdout.lower()


def real_dist() -> Path | None:
    dist = Path(os.environ.get("MAKENAIDE_REAL_DIST", ROOT / "dist"))
    return dist if all((dist / z).is_file() for z in ALL_ZIPS) else None


@pytest.mark.skipif(real_dist() is None, reason="no real artifacts (run layer-build/build.sh, or set MAKENAIDE_REAL_DIST)")
def test_real_artifacts_are_static(tmp_path):
    """The cargo-lambda output: right machine, no interpreter, no shared library, within the budgets."""
    dist = real_dist()
    machine = {"x86_64": "X86-64", "arm64": "AArch64"}
    for name in ALL_ZIPS:
        arch = "arm64" if name.endswith("-arm64.zip") else "x86_64"
        with zipfile.ZipFile(dist / name) as zf:
            # The one binary: the extension of a layer zip (beside the Python client), a function's bootstrap.
            (member,) = [i for i in zf.infolist() if i.filename in (f"extensions/{EXTENSION}", "bootstrap")]
            out = tmp_path / name
            out.write_bytes(zf.read(member))
        header = subprocess.run(["readelf", "-h", str(out)], capture_output=True, text=True).stdout
        assert machine[arch] in header, name
        programs = subprocess.run(["readelf", "-lW", str(out)], capture_output=True, text=True).stdout
        assert "INTERP" not in programs, name
        dynamic = subprocess.run(["readelf", "-dW", str(out)], capture_output=True, text=True).stdout
        assert "(NEEDED)" not in dynamic, name
