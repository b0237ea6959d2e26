"""Chaos scenarios that need a Python process: a forked child on an inherited
socket, and a client killed in the middle of a line.

Both run against one sidecar started here and shared by every process of the
scenario, so its stats cover all of them. Each ends with the accounting
equations (docs/protocol.md, ``stats``) and exactly-once delivery by call id.
The Go side of the chaos suite is go/integration/chaos_test.go.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_API_KEY
from sidecar_bin import sidecar_bin
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(180)

SOURCE = Path(__file__).resolve().parents[1] / "python"


def request(path: str, line: bytes) -> dict[str, Any]:
    """Send one request line on a fresh connection and return its response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the sidecar closed the connection"
            buf += chunk
    resp: dict[str, Any] = json.loads(buf)
    return resp


def settled_stats(path: str) -> dict[str, Any]:
    """Flush, then return stats once the accounting equations hold."""
    assert request(path, b'{"method":"flush"}')["success"] is True
    deadline = time.monotonic() + 30
    while True:
        st: dict[str, Any] = request(path, b'{"method":"stats"}')["result"]
        received = st["accepted"] + st["calls_refused"]
        out = (
            st["delivered"]
            + sum(st["failed"].values())
            + st["queued_items"]
            + st["spooled_items"]
        )
        if st["calls_received"] == received and st["accepted"] + st["replayed"] == out:
            return st
        assert time.monotonic() < deadline, f"accounting does not balance: {st}"
        time.sleep(0.02)


@pytest.fixture
def shared(trace_server: TraceServer) -> Iterator[tuple[str, dict[str, str]]]:
    """A sidecar on a short socket path, and an environment whose Python
    processes use it (the source tree's weave_sidecar on PYTHONPATH)."""
    runtime = tempfile.mkdtemp(prefix="wsc-", dir="/tmp")
    path = os.path.join(runtime, "s")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": runtime,
        "WANDB_API_KEY": TEST_API_KEY,
        "PYTHONPATH": str(SOURCE),
        "WEAVE_SIDECAR_SOCKET": path,
    }
    proc = subprocess.Popen(
        [sidecar_bin(), "--socket", path, "--backend", trace_server.url],
        env={**env, "WEAVE_SIDECAR_FLUSH_INTERVAL": "50ms"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None, "the sidecar exited at start"
            assert time.monotonic() < deadline, "the sidecar is not listening"
            time.sleep(0.01)
        yield path, env
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        shutil.rmtree(runtime, ignore_errors=True)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert TEST_API_KEY not in err.decode(errors="replace")


def payloads(project_id: str, call_id: str, pad: int) -> tuple[bytes, bytes]:
    start = {
        "project_id": project_id,
        "id": call_id,
        "trace_id": call_id,
        "op_name": f"weave:///{project_id}/op/f:abc",
        "started_at": "2024-01-01T00:00:00Z",
        "attributes": {},
        "inputs": {"pad": "x" * pad},
    }
    end = {
        "project_id": project_id,
        "id": call_id,
        "ended_at": "2024-01-01T00:00:01Z",
        "summary": {},
        "output": 1,
    }
    return (
        json.dumps({"start": start}, separators=(",", ":")).encode(),
        json.dumps({"end": end}, separators=(",", ":")).encode(),
    )


def script_text(body: str) -> str:
    """A standalone script: body with payloads() defined above it."""
    return "import json\n" + inspect.getsource(payloads) + textwrap.dedent(body)


# The parent streams calls from a thread through the real client while the
# main thread forks; the child sends its own calls through the same Link, and
# each side reports its ids and any call the client handed back to be sent
# directly (there must be none).
FORK_SCRIPT = """
import json, os, sys, threading, time
from weave_sidecar._link import Link

project, url, key = sys.argv[1], sys.argv[2], sys.argv[3]
direct = []

class Owner:
    def send_direct(self, item):
        direct.append(item)

owner = Owner()
link = Link(url, key)
assert link.start(), link.status()
assert link.status()["shared"], link.status()

def send(prefix, n, pad):
    ids = []
    for i in range(n):
        call_id = f"{prefix}-{i}"
        start, end = payloads(project, call_id, pad)
        assert link.submit("call_start", start, owner, call_id)
        assert link.submit("call_end", end, owner, call_id)
        ids.append(call_id)
    return ids

parent_ids = []
streaming = threading.Event()

def stream():
    for k in range(40):
        parent_ids.extend(send(f"parent-{k}", 100, 2000))
        streaming.set()

t = threading.Thread(target=stream)
t.start()
streaming.wait()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        ids = send("child", 500, 500)
        link.flush(60)
        with open(sys.argv[4], "w") as f:
            json.dump({"ids": ids, "direct": len(direct),
                       "shared": link.status()["shared"]}, f)
        code = 0
    finally:
        os._exit(code)
t.join()
_, status = os.waitpid(pid, 0)
link.close()
with open(sys.argv[4]) as f:
    child = json.load(f)
print(json.dumps({"parent": parent_ids, "child": child,
                  "child_exit": os.waitstatus_to_exitcode(status),
                  "parent_direct": len(direct)}))
"""


def test_forked_child_does_not_touch_the_parents_stream(
    trace_server: TraceServer,
    project_id: str,
    shared: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    path, env = shared
    script = tmp_path / "fork.py"
    script.write_text(script_text(FORK_SCRIPT))
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            project_id,
            trace_server.url,
            TEST_API_KEY,
            str(tmp_path / "child.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["child_exit"] == 0
    assert out["child"]["shared"] is True
    assert out["parent_direct"] == 0 and out["child"]["direct"] == 0
    ids = out["parent"] + out["child"]["ids"]
    assert len(ids) == 4000 + 500

    st = settled_stats(path)
    # A byte of the child's on the parent's connection would have broken a
    # line of the parent's: refused as invalid, or a call lost.
    assert st["refused"]["invalid_request"] == 0
    assert st["calls_refused"] == 0
    assert st["accepted"] == 2 * len(ids)
    assert st["delivered"] == 2 * len(ids)
    assert trace_server.missing(ids) == {"start": [], "end": []}
    assert trace_server.duplicates() == []


KILLED_SCRIPT = """
import json, socket, sys, threading, time

path, project, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.settimeout(60)  # acks held back would otherwise hang this script
lines = []
for i in range(n):
    start, _ = payloads(project, f"whole-{i}", 200)
    lines.append(b'{"method":"call_start","payload":' + start + b"}\\n")
start, _ = payloads(project, "cut", 200)
cut = b'{"method":"call_start","payload":' + start + b"}\\n"
# Acks are read while writing, or both sides block on full buffers.
data = b"".join(lines) + cut[: len(cut) // 2]
writer = threading.Thread(target=s.sendall, args=(data,))
writer.start()
acks = b""
while acks.count(b"\\n") < n:
    acks += s.recv(65536)
writer.join()
assert acks.count(b'"success":true') == n, acks[:300]
print("READY", flush=True)
time.sleep(120)
"""


def test_client_killed_mid_line(
    trace_server: TraceServer,
    project_id: str,
    shared: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    path, env = shared
    script = tmp_path / "killed.py"
    script.write_text(script_text(KILLED_SCRIPT))
    n = 2000
    proc = subprocess.Popen(
        [sys.executable, str(script), path, project_id, str(n)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "READY\n", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    st = settled_stats(path)
    assert st["calls_received"] == n, "the cut line is not a call"
    assert st["calls_refused"] == 0
    assert sum(st["refused"].values()) == 0, st["refused"]
    assert st["delivered"] == n
    ids = [f"whole-{i}" for i in range(n)]
    assert trace_server.missing(ids)["start"] == []
    assert trace_server.duplicates() == []
    stored = {c["id"] for c in trace_server.calls(project_id)}
    assert stored == set(ids), "the cut call must not arrive"
