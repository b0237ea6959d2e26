"""Build hooks: compile the Go sidecar into the wheel and tag the wheel per platform.

The metadata lives in pyproject.toml. This file only adds what setuptools cannot
express declaratively:

* ``build_py`` also runs ``go build`` and puts the binary at
  ``weave_sidecar/bin/weave-sidecar[.exe]`` (into the source tree for editable
  installs, which would otherwise lose it), and adds the ``.pth`` autoload hook.
* The distribution claims "extension modules" only when a Go toolchain is
  available, so that the binary lands at the wheel root (platlib) with mode 0755.
* ``bdist_wheel`` tags the wheel ``py3-none-<platform of the Go target>``: the
  binary does not depend on the Python ABI, only on GOOS/GOARCH.

Environment:
  WEAVE_SIDECAR_GO              the go command (default: ``go`` on PATH)
  GOOS, GOARCH                  cross-compile for another platform
  WEAVE_SIDECAR_REQUIRE_BINARY  1 = a build without Go is an error (CI, releases)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GO_MODULE = ROOT / "go"
PTH_NAME = "weave_sidecar_autoload.pth"
# One line, run by site.py at every interpreter start: it must cost nothing
# unless WEAVE_USE_SIDECAR is set to a true value.
PTH_LINE = (
    "import os; os.environ.get('WEAVE_USE_SIDECAR', '').strip().lower() "
    "in ('1', 'true', 'yes', 'on') and __import__('weave_sidecar._autoload')\n"
)

# Wheel platform tags per Go target. CGO_ENABLED=0 gives a static ELF, so one
# Linux binary serves glibc and musl. Go >= 1.25 needs macOS 12.
PLATFORM_TAGS = {
    (
        "linux",
        "amd64",
    ): "manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64",
    (
        "linux",
        "arm64",
    ): "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
    ("darwin", "amd64"): "macosx_12_0_x86_64",
    ("darwin", "arm64"): "macosx_12_0_arm64",
    ("windows", "amd64"): "win_amd64",
}


def read_version() -> str:
    text = (ROOT / "python" / "weave_sidecar" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise RuntimeError("no __version__ in python/weave_sidecar/_version.py")
    return match.group(1)


def find_go() -> str | None:
    override = os.environ.get("WEAVE_SIDECAR_GO")
    if override:
        return override
    return shutil.which("go")


def require_binary() -> bool:
    return os.environ.get("WEAVE_SIDECAR_REQUIRE_BINARY", "") not in ("", "0")


def go_target(go: str) -> tuple[str, str]:
    env = dict(os.environ, GOTOOLCHAIN=os.environ.get("GOTOOLCHAIN", "local"))
    out = subprocess.run(
        [go, "env", "GOOS", "GOARCH"],
        cwd=GO_MODULE,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], out[1]


def warn_no_go() -> None:
    message = (
        "\n" + "!" * 72 + "\n"
        "weave-sidecar: no Go toolchain found (set WEAVE_SIDECAR_GO or put `go` on\n"
        "PATH). Building a pure-Python wheel WITHOUT the sidecar binary: at run time\n"
        "traces go straight to the trace server over HTTP, as without this package.\n"
        + "!" * 72
        + "\n"
    )
    if require_binary():
        raise SystemExit(message + "WEAVE_SIDECAR_REQUIRE_BINARY is set: failing.")
    sys.stderr.write(message)


class SidecarDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        # Decided before build_py runs (bdist_wheel asks in finalize_options), so
        # it rests on Go being available; a failing go build is then an error.
        return find_go() is not None


class BuildPyWithSidecar(build_py):
    def run(self) -> None:
        super().run()
        self._write_pth()
        # A binary left in build/ by an earlier build must not ride along in a
        # wheel built for another target, or in a pure wheel.
        shutil.rmtree(Path(self.build_lib, "weave_sidecar", "bin"), ignore_errors=True)
        go = find_go()
        if go is None:
            warn_no_go()
            return
        self._build_binary(go)

    def _write_pth(self) -> None:
        if self.editable_mode:
            return  # editable installs have their own .pth; use enable() there
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def _build_binary(self, go: str) -> None:
        goos, _ = go_target(go)
        name = "weave-sidecar.exe" if goos == "windows" else "weave-sidecar"
        if self.editable_mode:
            out_dir = ROOT / "python" / "weave_sidecar" / "bin"
        else:
            out_dir = Path(self.build_lib).resolve() / "weave_sidecar" / "bin"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / name
        env = dict(
            os.environ,
            CGO_ENABLED="0",
            # Never download another toolchain in the middle of `pip install`.
            GOTOOLCHAIN=os.environ.get("GOTOOLCHAIN", "local"),
        )
        cmd = [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            f"-s -w -X main.version={read_version()}",
            "-o",
            str(out),
            "./cmd/weave-sidecar",
        ]
        print("weave-sidecar: " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, cwd=GO_MODULE, env=env, check=True)
        out.chmod(0o755)


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        go = find_go()
        if go is None:
            return ("py3", "none", "any")
        target = go_target(go)
        if target in PLATFORM_TAGS:
            return ("py3", "none", PLATFORM_TAGS[target])
        if os.environ.get("GOOS") or os.environ.get("GOARCH"):
            message = f"weave-sidecar: no wheel tag for GOOS/GOARCH {target}"
            raise SystemExit(message)
        # A native build where we publish no wheel (e.g. linux/ppc64le, from the
        # sdist): the binary serves this machine, so take its platform tag.
        return ("py3", "none", super().get_tag()[2])


setup(
    distclass=SidecarDistribution,
    cmdclass={"build_py": BuildPyWithSidecar, "bdist_wheel": PlatformWheel},
)
