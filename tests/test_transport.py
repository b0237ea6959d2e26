"""The loopback TCP transport (forced on Linux) and keeping the key out of sight.

WEAVE_SIDECAR_TRANSPORT=tcp makes the launcher do what it does where Python
has no AF_UNIX (Windows): the sidecar listens on 127.0.0.1 at a port the OS
picks, and every connection must open with a hello carrying the per-launch
token. The SDK scenario below is test_sdk.py's main one, over TCP.

The API key (and the token) must never appear in argv, in the sidecar's log,
in spool files or in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_bin import sidecar_bin
from test_sdk import (
    WARNING,
    assert_exactly_once,
    last_json,
    run_script,
    wait_gone,
    went_through_sidecar,
)
from weave_sidecar import SidecarProtocolError, SidecarStartError
from weave_sidecar._client import handshake
from weave_sidecar._process import SidecarProcess, connect_tcp
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(180)

KEY = "transport-test-key-3b9f0c6d1e2a"
TRANSPORTS = [pytest.param("unix", marks=pytest.mark.unix_socket), "tcp"]


@pytest.fixture
def tcp_env(weave_env: dict[str, str], short_dir: str) -> dict[str, str]:
    """test_sdk.py's environment with the TCP transport forced."""
    e = dict(weave_env)
    e.update(
        WEAVE_SIDECAR_BIN=sidecar_bin(),
        WEAVE_USE_SIDECAR="true",
        WEAVE_SIDECAR_TRANSPORT="tcp",
        XDG_RUNTIME_DIR=short_dir,
        PYTHONPATH=str(Path(__file__).resolve().parents[1] / "python"),
        # A shared sidecar is never used over TCP; make sure none could be.
        WEAVE_SIDECAR_SOCKET=os.path.join(short_dir, "none.sock"),
    )
    return e


@pytest.fixture
def spawn(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """spawn(transport, backend, **env) starts a private sidecar in this process."""
    started: list[tuple[SidecarProcess, socket.socket]] = []
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)

    def start(
        transport: str, backend: str, **env: str
    ) -> tuple[SidecarProcess, socket.socket, dict[str, Any]]:
        if transport == "tcp":
            monkeypatch.setenv("WEAVE_SIDECAR_TRANSPORT", "tcp")
        else:
            monkeypatch.delenv("WEAVE_SIDECAR_TRANSPORT", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        proc, sock, hello = SidecarProcess.spawn(
            sidecar_bin(), backend=backend, api_key=KEY, timeout=20
        )
        started.append((proc, sock))
        return proc, sock, hello

    yield start
    for proc, sock in started:
        sock.close()
        proc.stop(timeout=20)


def request(sock: socket.socket, *lines: str, timeout: float = 60) -> list[Any]:
    """Send request lines and read one response per line."""
    sock.settimeout(timeout)
    sock.sendall("".join(line + "\n" for line in lines).encode())
    buf = b""
    while buf.count(b"\n") < len(lines):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    sock.settimeout(None)
    return [json.loads(line) for line in buf.splitlines()]


def call_lines(project: str, n: int) -> list[str]:
    lines = []
    for i in range(n):
        start: dict[str, Any] = {
            "project_id": project,
            "id": f"c{i}",
            "trace_id": f"t{i}",
            "op_name": "weave:///e/p/op/f:0",
            "started_at": "2025-01-02T03:04:05.123456",
            "attributes": {},
            "inputs": {"i": i},
        }
        end: dict[str, Any] = {
            "project_id": project,
            "id": f"c{i}",
            "ended_at": "2025-01-02T03:04:06.5",
            "output": None,
            "summary": {},
        }
        lines.append(json.dumps({"method": "call_start", "payload": {"start": start}}))
        lines.append(json.dumps({"method": "call_end", "payload": {"end": end}}))
    return lines


def secrets_of(proc: SidecarProcess) -> list[bytes]:
    token = proc._token
    return [KEY.encode()] + ([token.encode()] if token else [])


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize("finish", [True, False], ids=["flush", "exit-at-once"])
def test_sdk_calls_over_tcp(
    trace_server: TraceServer, project_id: str, tcp_env: dict[str, str], finish: bool
) -> None:
    args = [project_id, "20", "--enable"] + ([] if finish else ["--no-finish"])
    proc = run_script("traced.py", tcp_env, *args)
    out = last_json(proc)
    assert len(out["ids"]) == 20 * 3 + 2 + 20
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert len(trace_server.calls(project_id)) == 162
    if finish:
        assert out["read_back"] == len(out["ids"])
    assert out["status"] is not None, proc.stderr
    assert out["status"]["state"] == "open", proc.stderr
    assert out["status"]["shared"] is False
    assert out["status"]["socket"].startswith("127.0.0.1:")
    assert out["alive"] is True
    if sys.platform != "win32":  # wait_gone probes with os.kill(pid, 0)
        assert wait_gone(out["status"]["pid"])
    assert went_through_sidecar(trace_server)
    assert WARNING not in proc.stderr
    assert os.listdir(tcp_env["XDG_RUNTIME_DIR"]) == []


def test_tcp_needs_the_token(trace_server: TraceServer, spawn: Any) -> None:
    proc, sock, hello = spawn("tcp", trace_server.url)
    address = proc.socket_path
    assert address.startswith("127.0.0.1:")
    assert not os.path.exists(os.path.join(proc.directory, "s"))

    wrong = "x" * 43
    other = connect_tcp(address, 10)
    with pytest.raises(SidecarProtocolError, match="forbidden") as info:
        handshake(other, 10, wrong)
    other.close()
    assert wrong not in str(info.value)
    assert str(proc._token) not in str(info.value)

    # A call before hello: one error line, then the connection is closed.
    other = connect_tcp(address, 10)
    (answer,) = request(other, call_lines("e/p", 1)[0])
    assert answer["success"] is False
    assert answer["code"] == "forbidden"
    other.settimeout(30)
    try:
        assert other.recv(100) == b""
    except ConnectionResetError:  # Windows reports the close as a reset
        pass
    other.close()

    (stats,) = request(sock, '{"method":"stats"}')
    assert stats["result"]["rejected_connections"] == {
        "peer_uid": 0,
        "peer_unknown": 0,
        "no_token": 1,
        "bad_token": 1,
    }
    assert stats["result"]["accepted"] == 0


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_not_in_argv(trace_server: TraceServer, spawn: Any, transport: str) -> None:
    proc, _, _ = spawn(transport, trace_server.url)
    argv = cmdline(proc.proc.pid)
    for secret in secrets_of(proc):
        assert secret not in argv
    if transport == "tcp":
        assert b"--listen-tcp" in argv


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_not_in_logs_or_errors(
    trace_server: TraceServer,
    spawn: Any,
    transport: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="weave_sidecar")
    # Deliveries that work, then the trace server refusing the key.
    proc, sock, _ = spawn(transport, trace_server.url, WEAVE_SIDECAR_LOG_LEVEL="debug")
    answers = request(sock, *call_lines("sidecar-test/keys", 5), '{"method":"flush"}')
    assert all(a["success"] for a in answers), answers
    trace_server.faults.script("/call/upsert_batch", [401] * 20)
    answers = request(
        sock, *call_lines("sidecar-test/keys", 5)[:2], '{"method":"flush"}'
    )
    answers += request(sock, call_lines("sidecar-test/keys", 1)[0])
    assert any(a.get("code") == "unauthorized" for a in answers), answers
    if transport == "tcp":
        other = connect_tcp(proc.socket_path, 10)
        with pytest.raises(SidecarProtocolError):
            handshake(other, 10, "wrong-token-" + "y" * 30)
        other.close()

    log = Path(proc.log_path).read_bytes()
    assert b"401" in log or b"unauthorized" in log.lower()  # the log has the story
    wire = json.dumps(answers).encode()
    for secret in secrets_of(proc):
        assert secret not in log
        assert secret not in wire
        assert secret.decode() not in caplog.text


def test_key_not_in_start_errors(spawn: Any) -> None:
    with pytest.raises(SidecarStartError) as info:
        spawn("tcp", "ftp://not-a-trace-server")
    assert "backend" in str(info.value)
    assert KEY not in str(info.value)


def _has_spool(binary: str) -> bool:
    help_text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, timeout=30
    )
    return "-spool-dir" in help_text.stdout + help_text.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_key_not_in_spool_files(spawn: Any, short_dir: str, transport: str) -> None:
    if not _has_spool(sidecar_bin()):
        pytest.skip("this sidecar has no --spool-dir")
    spool = tempfile.mkdtemp(prefix="wts-", dir=short_dir)
    try:
        # Nothing listens on port 9, so every call stays in the spool.
        proc, sock, _ = spawn(
            transport,
            "http://127.0.0.1:9/traces",
            WEAVE_SIDECAR_SPOOL_DIR=spool,
            WEAVE_SIDECAR_SHUTDOWN_TIMEOUT="1s",
        )
        answers = request(sock, *call_lines("sidecar-test/spool", 20))
        assert all(a["success"] for a in answers), answers
        secrets = secrets_of(proc)
        sock.close()
        proc.stop(timeout=20)
        files = [p for p in Path(spool).rglob("*") if p.is_file()]
        data = b"".join(p.read_bytes() for p in files)
        assert b"sidecar-test/spool" in data, "the calls are not in the spool"
        for secret in secrets:
            assert secret not in data
    finally:
        shutil.rmtree(spool, ignore_errors=True)


@pytest.mark.unix_socket  # the fake sidecar is a shell script
@pytest.mark.parametrize(
    "content", ['{"tcp":"0.0.0.0:80"}', "not json", '{"unix":"/tmp/s"}']
)
def test_bad_ready_file_is_a_start_error(
    short_dir: str, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    monkeypatch.setenv("WEAVE_SIDECAR_TRANSPORT", "tcp")
    fake = Path(short_dir) / "fake"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != --ready-file ]; do shift; done\n'
        f"echo '{content}' > \"$2\"\n"
        "exec sleep 60\n"
    )
    fake.chmod(0o755)
    with pytest.raises(SidecarStartError, match="names no 127.0.0.1 address"):
        SidecarProcess.spawn(str(fake), backend="http://x", api_key=KEY, timeout=10)
    assert os.listdir(short_dir) == ["fake"]


def test_no_af_unix_means_tcp(
    trace_server: TraceServer, short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Windows gets: no AF_UNIX, so a Link starts a TCP sidecar."""
    from weave_sidecar import _link

    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    monkeypatch.setenv("WEAVE_SIDECAR_BIN", sidecar_bin())
    monkeypatch.delattr(socket, "AF_UNIX")
    link = _link.Link(trace_server.url, KEY)
    try:
        assert link.start()
        status = link.status()
        assert status["state"] == "open"
        assert status["shared"] is False
        assert status["socket"].startswith("127.0.0.1:")
    finally:
        link.close()
    assert os.listdir(short_dir) == []
