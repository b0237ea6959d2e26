"""Shared fixtures: a clean environment, a local trace server, a traced subprocess.

Fixtures
--------
``_clean_env`` (autouse)
    Removes every ``WEAVE_*``, ``WANDB_*``, ``WF_*`` (so ``WEAVE_SIDECAR_*`` too)
    variable for the test and restores them after; sets
    ``WANDB_ERROR_REPORTING=false``.

``trace_server`` -> ``weave_sidecar.testing.TraceServer``
    A started local trace server on 127.0.0.1 (in memory), stopped after the
    test. Inspect it with ``.calls(project_id)``, ``.receipts()``,
    ``.duplicates()``, ``.missing(ids)``, ``.request_counts()``,
    ``.requests(path)`` (each with ``user_agent``), and steer it with
    ``.faults`` (``latency_ms``, ``fail_next``, ``script``, ``outage``, ``hang``
    / ``release``, ``reject_call_ids``, ``max_body_bytes``,
    ``require_calls_complete``).

``project_id`` -> str
    ``"sidecar-test/<test name>"``: a project of the test entity, unique per test.

``weave_env`` -> dict[str, str]
    A full environment for a traced subprocess talking to ``trace_server``:
    the scrubbed ``os.environ`` plus ``WANDB_BASE_URL`` and
    ``WF_TRACE_SERVER_URL`` (the server), ``WANDB_API_KEY`` (``TEST_API_KEY``),
    ``HOME`` (a fresh temp dir, so no real netrc or W&B settings are read) and
    the switches that keep weave off the network and quiet. weave 0.54 has no
    setting for its PyPI update check, so ``HTTPS_PROXY`` points at a closed
    loopback port (with ``NO_PROXY`` for 127.0.0.1) and the check fails fast.
    Add ``WEAVE_USE_SIDECAR=true`` yourself to go through the sidecar.

``run_python`` -> callable
    ``run_python(code, env=None, timeout=120, check=True, args=())`` writes
    code to a file in a temp dir and runs it with this interpreter
    (cwd = that dir, env defaults to ``weave_env``); returns the
    ``subprocess.CompletedProcess`` (text stdout/stderr). With check, a non-zero
    exit fails the test and shows both streams.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    import weave_sidecar.testing  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from weave_sidecar.testing import TEST_USERNAME, TraceServer, sdk_env

TEST_ENTITY = TEST_USERNAME  # never "wandb": that entity is forced into another mode
TEST_API_KEY = "sidecar-test-key-0123456789"
_SCRUBBED_PREFIXES = ("WEAVE_", "WANDB_", "WF_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip tests marked unix_socket where Python has no AF_UNIX (Windows)."""
    if hasattr(socket, "AF_UNIX"):
        return
    skip = pytest.mark.skip(reason="needs AF_UNIX sockets, which this Python lacks")
    for item in items:
        if item.get_closest_marker("unix_socket") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_SCRUBBED_PREFIXES):
            monkeypatch.delenv(name)
    # weave, once imported here (the trace server validates with it), must not
    # report to Sentry.
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A fresh private directory under /tmp: short enough for a socket path."""
    d = tempfile.mkdtemp(prefix="wst-", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def trace_server() -> Iterator[TraceServer]:
    with TraceServer() as server:
        yield server


@pytest.fixture
def project_id(request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)
    return f"{TEST_ENTITY}/{name.strip('-')[:60]}"


def weave_env_for(url: str, home: Path) -> dict[str, str]:
    """The environment weave_env builds, for a server at url (importable helper)."""
    return sdk_env(url, home, TEST_API_KEY)


@pytest.fixture
def weave_env(trace_server: TraceServer, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return weave_env_for(trace_server.url, home)


@pytest.fixture
def run_python(
    tmp_path: Path, weave_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    counter = iter(range(1_000_000))

    def run(
        code: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        check: bool = True,
        args: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        script = tmp_path / f"script_{next(counter)}.py"
        script.write_text(textwrap.dedent(code))
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            env=weave_env if env is None else env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{script.name} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    return run
