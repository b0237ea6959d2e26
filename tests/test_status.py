"""`python -m weave_sidecar status`: the counters of a running sidecar."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from sidecar_bin import package_root, sidecar_bin
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(60)

PACKAGE_ROOT = package_root()


@pytest.fixture
def env() -> dict[str, str]:
    sidecar_bin()
    return {**os.environ, "PYTHONPATH": PACKAGE_ROOT}


def _status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weave_sidecar", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _connect(path: str) -> socket.socket:
    for _ in range(500):
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(0.02)
    raise AssertionError(f"the sidecar never listened on {path}")


def _request(
    sock: socket.socket, reader: io.BufferedReader, line: str
) -> dict[str, object]:
    sock.sendall(line.encode() + b"\n")
    answer: dict[str, object] = json.loads(reader.readline())
    return answer


def test_status_of_running_sidecar(
    env: dict[str, str], short_dir: str, trace_server: TraceServer, project_id: str
) -> None:
    path = os.path.join(short_dir, "s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "weave_sidecar", "--socket", path],
        env={**env, "WF_TRACE_SERVER_URL": trace_server.url, "WANDB_API_KEY": "k"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sock = _connect(path)
        reader = sock.makefile("rb")
        start = {
            "method": "call_start",
            "payload": {
                "start": {
                    "project_id": project_id,
                    "id": "c-status",
                    "trace_id": "t-status",
                    "op_name": "status_op",
                    "started_at": "2025-01-02T03:04:05.000001",
                    "attributes": {},
                    "inputs": {},
                }
            },
        }
        assert _request(sock, reader, json.dumps(start))["success"] is True
        assert _request(sock, reader, '{"method":"nope"}')["success"] is False
        flushed = _request(sock, reader, '{"method":"flush"}')
        assert flushed["result"] == {"delivered": 1, "failed": 0, "resolved": 1}

        out = _status(env, "--socket", path)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert f"pid {proc.pid}, protocol 1" in text
        assert f"socket   {path}" in text
        assert re.search(r"\n  accepted +1\n", text), text
        assert re.search(r"\n  delivered +1\n", text), text
        assert re.search(r"\n  refused +1 \(unknown_method 1\)\n", text), text
        assert re.search(r"\n  open +2\n", text), text  # ours and the status one

        out = _status({**env, "WEAVE_SIDECAR_SOCKET": path}, "--json")
        assert out.returncode == 0, out.stderr
        stats = json.loads(out.stdout)
        assert stats["accepted"] == 1
        assert stats["delivered"] == 1
        assert stats["refused"]["unknown_method"] == 1
        reader.close()
        sock.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_status_without_sidecar_exits_1(env: dict[str, str], short_dir: str) -> None:
    path = os.path.join(short_dir, "none")
    out = _status(env, "--socket", path, "--timeout", "2s")
    assert out.returncode == 1
    assert out.stdout == ""
    assert f"no sidecar answering at {path}" in out.stderr


def test_status_help(env: dict[str, str]) -> None:
    out = _status(env, "--help")
    assert out.returncode == 0
    assert "usage: weave-sidecar status" in out.stderr
    assert "-socket" in out.stderr
