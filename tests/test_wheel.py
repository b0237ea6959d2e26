"""The wheel: built from a clean copy of the tree, installed into a fresh venv.

These tests build real wheels (with and without Go on PATH) and install them
into new virtualenvs with no network access (``--no-index``), so they take a
few seconds each.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "python" / "weave_sidecar" / "_version.py"
# The end-to-end smoke test, shared with `make check-wheels` and wheels.yml.
SMOKE = ROOT / "scripts" / "wheel_smoke.py"

# POSIX venv layout, AF_UNIX smoke test.
pytestmark = pytest.mark.unix_socket


def _version() -> str:
    namespace: dict[str, str] = {}
    exec(VERSION_FILE.read_text(), namespace)
    return namespace["__version__"]


def _clean_copy(dest: Path) -> Path:
    """Copy the files git tracks (plus uncommitted edits) without build output."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if not src.is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def _build_wheel(
    src: Path, out: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _path_without_go() -> str:
    """PATH with every directory holding a `go` executable removed."""
    keep = [
        d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "go").exists()
    ]
    return os.pathsep.join(keep)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wsc-wheel-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def platform_wheel(workdir: Path) -> Path:
    src = _clean_copy(workdir / "src-go")
    env = dict(os.environ, WEAVE_SIDECAR_REQUIRE_BINARY="1")
    result = _build_wheel(src, workdir / "dist-go", env)
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = (workdir / "dist-go").glob("*.whl")
    return wheel


@pytest.mark.timeout(600)
def test_platform_wheel_holds_an_executable_binary_at_the_root(
    platform_wheel: Path,
) -> None:
    name = platform_wheel.name
    assert name.startswith(f"weave_sidecar-{_version()}-py3-none-")
    assert not name.endswith("-any.whl")
    with zipfile.ZipFile(platform_wheel) as wheel:
        names = wheel.namelist()
        binary = wheel.getinfo("weave_sidecar/bin/weave-sidecar")
        wheel_meta = wheel.read(f"weave_sidecar-{_version()}.dist-info/WHEEL").decode()
    assert stat.S_IMODE(binary.external_attr >> 16) == 0o755
    assert "weave_sidecar_autoload.pth" in names
    assert not any(".data/" in n for n in names), "binary must sit at the wheel root"
    assert "Root-Is-Purelib: false" in wheel_meta


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


@pytest.mark.timeout(600)
def test_wheel_installs_and_forwards_calls_without_go(
    platform_wheel: Path, workdir: Path
) -> None:
    python = _fresh_venv(workdir / "venv-smoke")
    env = dict(os.environ, PATH=_path_without_go())
    for key in list(env):
        if key.startswith(("WEAVE_", "WANDB_", "WF_")):
            del env[key]
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", str(platform_wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    # The module and the console script both run the bundled binary.
    for command in (
        [str(python), "-m", "weave_sidecar"],
        [str(python.parent / "weave-sidecar")],
    ):
        version = subprocess.run(
            [*command, "--version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert version.returncode == 0, version.stderr
        assert _version() in version.stdout

    smoke = subprocess.run(
        [str(python), str(SMOKE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    report = json.loads(smoke.stdout.strip().splitlines()[-1])
    assert report == {"acked": 50, "stored": 50, "delivered": 50, "failed": 0}


@pytest.mark.timeout(600)
def test_build_without_go_warns_and_makes_a_pure_wheel(workdir: Path) -> None:
    src = _clean_copy(workdir / "src-nogo")
    env = dict(os.environ, PATH=_path_without_go())
    env.pop("WEAVE_SIDECAR_GO", None)
    env.pop("WEAVE_SIDECAR_REQUIRE_BINARY", None)
    result = _build_wheel(src, workdir / "dist-nogo", env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "no Go toolchain found" in result.stderr
    (wheel,) = (workdir / "dist-nogo").glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not any("/bin/" in n for n in archive.namelist())


@pytest.mark.timeout(600)
def test_build_without_go_fails_when_the_binary_is_required(workdir: Path) -> None:
    src = _clean_copy(workdir / "src-required")
    env = dict(os.environ, PATH=_path_without_go(), WEAVE_SIDECAR_REQUIRE_BINARY="1")
    env.pop("WEAVE_SIDECAR_GO", None)
    result = _build_wheel(src, workdir / "dist-required", env)
    assert result.returncode != 0
    assert "WEAVE_SIDECAR_REQUIRE_BINARY" in result.stdout + result.stderr
