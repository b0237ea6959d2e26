"""The weave-sidecar binary for tests: the bundled one, built from go/ if needed.

SIDECAR_TEST_BIN (read when this module is imported, before the fixtures scrub
``WEAVE_*`` variables) names another binary, e.g. one built from a newer tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN_GO = ROOT / "go" / "cmd" / "weave-sidecar" / "main.go"
_OVERRIDE = os.environ.get("SIDECAR_TEST_BIN")


def package_root() -> str:
    """The directory holding the weave_sidecar package under test (for PYTHONPATH)."""
    import weave_sidecar

    return str(Path(weave_sidecar.__file__).resolve().parents[1])


def sidecar_bin() -> str:
    """Path of a usable binary; builds it into the source tree when Go is here."""
    if _OVERRIDE:
        return _OVERRIDE
    import weave_sidecar
    from weave_sidecar._find import find_in

    package_dir = os.path.dirname(weave_sidecar.__file__)
    saved = os.environ.pop("WEAVE_SIDECAR_BIN", None)
    try:
        return find_in(package_dir)
    except FileNotFoundError:
        pass
    finally:
        if saved is not None:
            os.environ["WEAVE_SIDECAR_BIN"] = saved
    go = shutil.which("go")
    if go is None or not MAIN_GO.exists():
        pytest.skip("no weave-sidecar binary and no Go to build it")
    out = Path(package_dir) / "bin" / "weave-sidecar"
    subprocess.run(
        [go, "build", "-o", str(out), "./cmd/weave-sidecar"],
        cwd=ROOT / "go",
        check=True,
        env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"},
    )
    return str(out)
