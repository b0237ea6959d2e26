"""`python -m weave_sidecar`: version, help, default backend, serve, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import weave_sidecar
from sidecar_bin import package_root, sidecar_bin
from weave_sidecar.__main__ import default_backend
from weave_sidecar._client import handshake
from weave_sidecar._link import normalize_url

pytestmark = pytest.mark.timeout(60)

PACKAGE_ROOT = package_root()


@pytest.fixture
def env() -> dict[str, str]:
    sidecar_bin()
    return {**os.environ, "PYTHONPATH": PACKAGE_ROOT}


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        ({}, "https://trace.wandb.ai"),
        ({"WANDB_BASE_URL": "https://api.wandb.ai/"}, "https://trace.wandb.ai"),
        (
            {"WANDB_BASE_URL": "https://wb.example.com/"},
            "https://wb.example.com/traces",
        ),
        (
            {
                "WANDB_BASE_URL": "https://api.example.com",
                "WANDB_PUBLIC_BASE_URL": "https://x.io",
            },
            "https://x.io/traces",
        ),
        (
            {
                "WANDB_BASE_URL": "https://wb.example.com",
                "WF_TRACE_SERVER_URL": "http://t:1",
            },
            "http://t:1",
        ),
    ],
    ids=["default", "saas", "dedicated", "public-url", "explicit"],
)
def test_default_backend(
    environ: dict[str, str], want: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert default_backend() == want


def test_default_backend_matches_weave(monkeypatch: pytest.MonkeyPatch) -> None:
    from weave.trace import env as weave_env

    monkeypatch.setenv("WANDB_BASE_URL", "https://wb.example.com/")
    assert default_backend() == weave_env.weave_trace_server_url()


def test_version(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "weave_sidecar", "--version"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert weave_sidecar.__version__ in out.stdout + out.stderr


def test_help_names_flags_and_default(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "weave_sidecar", "--help"],
        env={**env, "WF_TRACE_SERVER_URL": "http://127.0.0.1:7/t"},
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode in (0, 2)
    assert "defaults to http://127.0.0.1:7/t" in text
    for flag in ("-socket", "-backend", "-flush-interval", "-exit-on-stdin-eof"):
        assert flag in text


@pytest.mark.unix_socket
def test_serves_and_stops_on_sigterm(env: dict[str, str], short_dir: str) -> None:
    path = os.path.join(short_dir, "s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "weave_sidecar", "--socket", path],
        env={
            **env,
            "WF_TRACE_SERVER_URL": "http://127.0.0.1:9/x",
            "WANDB_API_KEY": "k",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        sock = None
        for _ in range(500):
            try:
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(path)
                break
            except OSError:
                sock.close()
                sock = None
                time.sleep(0.02)
        assert sock is not None, "the sidecar never listened"
        hello = handshake(sock, 10)
        sock.close()
        # execv: the sidecar is this very process.
        assert hello["pid"] == proc.pid
        assert normalize_url(hello["backend"]) == "http://127.0.0.1:9/x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not os.path.exists(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_missing_binary_exits_1(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "weave_sidecar", "--version"],
        env={**env, "WEAVE_SIDECAR_BIN": "/nonexistent/weave-sidecar"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "/nonexistent/weave-sidecar" in out.stderr
