"""Binary lookup, socket directories and spawning the real sidecar."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
import weave_sidecar
from sidecar_bin import sidecar_bin
from weave_sidecar._find import find_in
from weave_sidecar._link import normalize_url
from weave_sidecar._process import SidecarProcess, make_socket_dir

pytestmark = pytest.mark.timeout(60)


def _executable(path: Path) -> str:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _executable(tmp_path / "my-sidecar")
    monkeypatch.setenv("WEAVE_SIDECAR_BIN", exe)
    assert weave_sidecar.find_sidecar_bin() == exe


def test_bad_override_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEAVE_SIDECAR_BIN", str(tmp_path / "nope"))
    with pytest.raises(weave_sidecar.SidecarNotFoundError) as info:
        weave_sidecar.find_sidecar_bin()
    assert str(tmp_path / "nope") in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_bundled_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    on_path = tmp_path / "path"
    (pkg / "bin").mkdir(parents=True)
    on_path.mkdir()
    path_exe = _executable(on_path / "weave-sidecar")
    monkeypatch.setenv("PATH", str(on_path))
    assert find_in(str(pkg)) == path_exe
    bundled = _executable(pkg / "bin" / "weave-sidecar")
    assert find_in(str(pkg)) == bundled


def test_not_found_lists_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(weave_sidecar.SidecarNotFoundError) as info:
        find_in(str(tmp_path / "pkg"))
    message = str(info.value)
    assert "WEAVE_SIDECAR_BIN" in message
    assert str(tmp_path / "pkg" / "bin" / "weave-sidecar") in message
    assert "on PATH" in message
    assert len(info.value.tried) == 3


@pytest.mark.unix_socket
def test_socket_dir_is_private_and_short(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    directory, path = make_socket_dir()
    assert directory.startswith(short_dir)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert len(os.fsencode(path)) < 104


@pytest.mark.unix_socket
def test_socket_dir_falls_back_to_tmp_when_too_long(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = os.path.join(short_dir, "d" * 90)
    os.mkdir(deep)
    monkeypatch.setenv("XDG_RUNTIME_DIR", deep)
    directory, path = make_socket_dir()
    try:
        assert directory.startswith("/tmp/wsc-")
        assert len(os.fsencode(path)) < 104
    finally:
        os.rmdir(directory)


@pytest.mark.unix_socket
def test_socket_dir_unusable_is_a_start_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/proc/no-such-dir")
    with pytest.raises(weave_sidecar.SidecarStartError, match="socket directory"):
        make_socket_dir()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://trace.wandb.ai", "https://TRACE.wandb.ai:443/"),
        ("http://127.0.0.1:8080/traces", "http://user:pw@127.0.0.1:8080/traces/"),
    ],
    ids=["case-port-slash", "userinfo"],
)
def test_normalize_url_same(a: str, b: str) -> None:
    assert normalize_url(a) == normalize_url(b)


def test_normalize_url_different_port() -> None:
    assert normalize_url("http://127.0.0.1:1") != normalize_url("http://127.0.0.1:2")


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_spawn_handshake_and_stop(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    key = "spawn-test-key-not-in-argv"
    proc, sock, hello = SidecarProcess.spawn(
        sidecar_bin(), backend="http://127.0.0.1:9/x", api_key=key, timeout=10
    )
    try:
        assert hello["pid"] == proc.proc.pid
        assert hello["protocol"] == 1
        assert hello["version"] == weave_sidecar.__version__
        assert normalize_url(hello["backend"]) == "http://127.0.0.1:9/x"
        assert key.encode() not in _cmdline(proc.proc.pid)
        assert b"--exit-on-stdin-eof" in _cmdline(proc.proc.pid)
        assert os.getsid(proc.proc.pid) != os.getsid(0)
        assert stat.S_IMODE(os.stat(proc.directory).st_mode) == 0o700
        assert proc.socket_path.startswith(short_dir)
    finally:
        sock.close()
        proc.stop(timeout=10)
    assert proc.proc.returncode is not None
    assert not os.path.exists(proc.directory)


def test_spawn_reports_early_exit(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    fake = Path(short_dir) / "exits"
    fake.write_text("#!/bin/sh\necho cannot start >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(weave_sidecar.SidecarStartError, match="code 3") as info:
        SidecarProcess.spawn(str(fake), backend="http://x", api_key="k", timeout=10)
    assert "cannot start" in str(info.value)
    assert os.listdir(short_dir) == ["exits"]


def test_spawn_handshake_timeout_kills(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    fake = Path(short_dir) / "silent"
    pidfile = Path(short_dir) / "pid"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    fake.chmod(0o755)
    with pytest.raises(weave_sidecar.SidecarStartError, match="did not answer"):
        SidecarProcess.spawn(str(fake), backend="http://x", api_key="k", timeout=0.5)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.unix_socket
def test_handshake_refuses_non_sidecar(short_dir: str) -> None:
    from weave_sidecar._client import handshake

    path = os.path.join(short_dir, "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    peer, _ = server.accept()
    peer.sendall(b'{"success":true,"result":{"name":"other","protocol":1}}\n')
    with pytest.raises(
        weave_sidecar.SidecarProtocolError, match="not from weave-sidecar"
    ):
        handshake(client, 5)
    for s in (client, peer, server):
        s.close()


@pytest.mark.parametrize(
    ("raw", "want"),
    [(None, (1.0, 5.0)), ("0", ()), ("", ()), ("0.5,2", (0.5, 2.0)), ("x", (1.0, 5.0))],
    ids=["default", "off", "empty", "list", "malformed"],
)
def test_respawn_delays(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, want: tuple[float, ...]
) -> None:
    from weave_sidecar._link import RESPAWN_DELAYS_ENV, respawn_delays

    if raw is not None:
        monkeypatch.setenv(RESPAWN_DELAYS_ENV, raw)
    assert respawn_delays() == want


class _Owner:
    def __init__(self) -> None:
        self.direct: list[object] = []

    def send_direct(self, item: object) -> None:
        self.direct.append(item)


def test_lost_sidecar_is_not_restarted_during_exit(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weave_sidecar import _link

    monkeypatch.setenv("XDG_RUNTIME_DIR", short_dir)
    monkeypatch.setenv("WEAVE_SIDECAR_BIN", sidecar_bin())
    monkeypatch.setenv("WEAVE_SIDECAR_SOCKET", os.path.join(short_dir, "none"))
    monkeypatch.setenv(_link.RESPAWN_DELAYS_ENV, "0")
    # Nothing listens at the backend: do not wait for delivery at close.
    monkeypatch.setenv("WEAVE_SIDECAR_FLUSH_TIMEOUT", "0.2")
    monkeypatch.setenv("WEAVE_SIDECAR_EXIT_TIMEOUT", "0.5")
    link = _link.Link("http://127.0.0.1:9", "k")
    try:
        assert link.start()
        status = link.status()
        owner = _Owner()
        # The sidecar is lost with one unconfirmed call: it goes direct.
        os.kill(status["pid"], 9)
        payload = b'{"start":{"id":"a","project_id":"e/p"}}'
        link.submit("call_start", payload, owner, "a")
        deadline = time.monotonic() + 30
        while link.status()["state"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.status()["state"] == "failed"
        assert owner.direct == ["a"]
        # A restart is due, but the exit hook has begun: nothing is started.
        link._retry_at = 0.0
        monkeypatch.setattr(_link, "_exiting", True)
        assert not link.submit("call_start", payload, owner, "b")
        assert link.status()["restarts"] == 0
        assert link.status()["pid"] == status["pid"]
        # Outside exit the same call would restart it.
        monkeypatch.setattr(_link, "_exiting", False)
        assert link.submit("call_start", payload, owner, "c")
        assert link.status()["restarts"] == 1
        assert link.status()["pid"] != status["pid"]
    finally:
        link.close()
