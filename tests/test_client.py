"""The pipelined client against a real spawned sidecar and the local trace server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sidecar_bin import sidecar_bin
from weave_sidecar._client import Client
from weave_sidecar._process import SidecarProcess
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(90)

KEY = "sidecar-test-key-0123456789"


def start_payload(project_id: str, call_id: str, pad: int = 0) -> bytes:
    start = {
        "project_id": project_id,
        "id": call_id,
        "trace_id": call_id,
        "op_name": f"weave:///{project_id}/op/f:abc",
        "started_at": "2024-01-01T00:00:00Z",
        "attributes": {},
        "inputs": {"pad": "x" * pad},
    }
    return json.dumps({"start": start}, separators=(",", ":")).encode()


def end_payload(project_id: str, call_id: str) -> bytes:
    end = {
        "project_id": project_id,
        "id": call_id,
        "ended_at": "2024-01-01T00:00:01Z",
        "summary": {},
        "output": 1,
    }
    return json.dumps({"end": end}, separators=(",", ":")).encode()


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.refused: list[tuple[Any, str]] = []
        self.failed: list[Any] = []
        self.reasons: list[str] = []

    def on_refused(self, token: Any, code: str) -> None:
        self.refused.append((token, code))

    def on_failed(self, tokens: list[Any], reason: str) -> None:
        self.failed.extend(tokens)
        self.reasons.append(reason)


@pytest.fixture
def spawned(
    trace_server: TraceServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[SidecarProcess, Client, Recorder]]:
    runtime = tempfile.mkdtemp(prefix="wst-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    max_queue = getattr(request, "param", None)
    if max_queue is not None:
        monkeypatch.setenv("WEAVE_SIDECAR_MAX_QUEUE_BYTES", str(max_queue))
    monkeypatch.setenv("WEAVE_SIDECAR_FLUSH_INTERVAL", "50ms")
    proc, sock, hello = SidecarProcess.spawn(
        sidecar_bin(), backend=trace_server.url, api_key=KEY, timeout=10
    )
    rec = Recorder()
    client = Client(
        sock,
        hello,
        on_refused=rec.on_refused,
        on_failed=rec.on_failed,
        max_items=10_000,
        max_bytes=1 << 24,
    )
    yield proc, client, rec
    client.close()
    proc.stop(timeout=10)
    subprocess.run(["rm", "-rf", runtime], check=False)


def test_pipelined_calls_are_delivered_and_resolved(
    spawned: tuple[SidecarProcess, Client, Recorder],
    trace_server: TraceServer,
    project_id: str,
) -> None:
    _, client, rec = spawned
    ids = [f"call-{i}" for i in range(300)]
    for i in ids:
        assert client.submit("call_start", start_payload(project_id, i), i)
        assert client.submit("call_end", end_payload(project_id, i), i)
    assert client.flush(60) is True
    assert client.held == 0
    assert client.in_flight == 0
    assert rec.refused == [] and rec.failed == []
    assert trace_server.missing(ids) == {"start": [], "end": []}
    assert trace_server.duplicates() == []


@pytest.mark.parametrize("spawned", [65536], indirect=True, ids=["64KiB-queue"])
def test_queue_full_refuses_single_calls(
    spawned: tuple[SidecarProcess, Client, Recorder],
    trace_server: TraceServer,
    project_id: str,
) -> None:
    _, client, rec = spawned
    trace_server.faults.hang("/call/upsert_batch")
    ids = [f"big-{i}" for i in range(40)]
    for i in ids:
        assert client.submit("call_start", start_payload(project_id, i, 8000), i)
    trace_server.faults.release()
    trace_server.faults.clear()
    assert client.flush(60) is True
    refused = [token for token, code in rec.refused if code == "queue_full"]
    assert refused, "a 64 KiB queue took 320 KB of calls"
    assert rec.failed == []
    delivered = {r["call_id"] for r in trace_server.receipts()}
    assert delivered == set(ids) - set(refused)
    assert trace_server.duplicates() == []


def test_dead_sidecar_hands_back_unresolved_calls_in_order(
    spawned: tuple[SidecarProcess, Client, Recorder],
    trace_server: TraceServer,
    project_id: str,
) -> None:
    proc, client, rec = spawned
    trace_server.faults.hang("/call/upsert_batch")
    ids = [f"kill-{i}" for i in range(50)]
    for i in ids:
        assert client.submit("call_start", start_payload(project_id, i), i)
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    assert client.flush(30) is False
    trace_server.faults.release()
    assert not client.is_open
    assert rec.failed == ids
    assert len(rec.reasons) == 1
    assert (
        client.submit("call_start", start_payload(project_id, "late"), "late") is False
    )
