"""The spool through the launcher: WEAVE_SIDECAR_SPOOL_DIR reaches the sidecar.

The launcher passes the user's environment on to the sidecar it spawns, so
``WEAVE_SIDECAR_SPOOL_DIR`` turns the spool on with no launcher code. The spool's
own behaviour (SIGKILL and restart, outage, damage, disk full) is tested against
the binary in go/integration/spool_test.go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_bin import package_root, sidecar_bin
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(180)

TRACED = Path(__file__).resolve().parent / "scripts" / "traced.py"
PACKAGE_ROOT = package_root()


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="wsp-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_spool_dir_from_the_environment(
    trace_server: TraceServer,
    project_id: str,
    weave_env: dict[str, str],
    runtime_dir: str,
) -> None:
    spool_dir = os.path.join(runtime_dir, "spool")
    env = dict(weave_env)
    env.update(
        WEAVE_USE_SIDECAR="true",
        WEAVE_SIDECAR_BIN=sidecar_bin(),
        WEAVE_SIDECAR_SPOOL_DIR=spool_dir,
        XDG_RUNTIME_DIR=runtime_dir,
        PYTHONPATH=PACKAGE_ROOT,
        WEAVE_SIDECAR_SOCKET=os.path.join(runtime_dir, "none.sock"),
    )
    proc = subprocess.run(
        [sys.executable, str(TRACED), project_id, "10", "--enable"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # Every call arrived once, through the sidecar.
    assert trace_server.missing(out["ids"]) == {"start": [], "end": []}
    assert trace_server.duplicates() == []
    agents = trace_server.user_agents("/call/upsert_batch")
    assert agents and all("weave-sidecar" in ua.lower() for ua in agents)

    # The sidecar exits once the traced program has: then its spool is final.
    deadline = time.monotonic() + 30
    while _alive(out["status"]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(out["status"]["pid"])

    # The sidecar made its spool there: a lock, a cursor, and no segment
    # left once everything was delivered at exit.
    files = sorted(os.listdir(spool_dir))
    assert "cursor" in files and "lock" in files
    assert [f for f in files if f.endswith(".seg")] == []
    assert (os.stat(spool_dir).st_mode & 0o777) == 0o700
    key = env["WANDB_API_KEY"].encode()
    for name in files:
        assert key not in Path(spool_dir, name).read_bytes()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
