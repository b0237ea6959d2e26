"""End-to-end smoke test of an installed weave-sidecar wheel.

Run it with the interpreter of a venv that has the wheel installed (and
nothing else from this checkout on sys.path):

    <venv>/bin/python scripts/wheel_smoke.py

It checks that the bundled binary is the installed package's own and reports
the package version, then starts it against the local trace server that ships
in the wheel, sends 25 call_start/call_end pairs and a flush over the Unix
socket, stops it, and checks that every call was acked, delivered and stored.
The last line of output is a JSON report; the exit status is 0 only if all
checks passed. Where Python has no AF_UNIX (Windows) only the version check
runs, and the report says the round trip was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import weave_sidecar
from weave_sidecar.testing import TraceServer

PAIRS = 25


def check_binary() -> str:
    binary = weave_sidecar.find_sidecar_bin()
    package_dir = Path(weave_sidecar.__file__).resolve().parent
    if Path(binary).resolve().parent != package_dir / "bin":
        raise SystemExit(f"smoke: binary {binary} is not the one in {package_dir}")
    out = subprocess.run(
        [sys.executable, "-m", "weave_sidecar", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0 or weave_sidecar.__version__ not in out.stdout:
        raise SystemExit(
            f"smoke: `python -m weave_sidecar --version` exited {out.returncode} "
            f"with {out.stdout.strip()!r}, want version {weave_sidecar.__version__}"
        )
    return binary


def connect(path: str, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        conn = socket.socket(socket.AF_UNIX)
        try:
            conn.connect(path)
            return conn
        except OSError:
            conn.close()
        if proc.poll() is not None:
            raise SystemExit(f"smoke: sidecar exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("smoke: sidecar did not come up within 30s")
        time.sleep(0.02)


def request_lines() -> list[dict[str, object]]:
    project = "smoke-entity/smoke"
    lines: list[dict[str, object]] = []
    for i in range(PAIRS):
        cid = f"smoke-{i}"
        start = {
            "project_id": project,
            "id": cid,
            "trace_id": cid,
            "op_name": f"weave:///{project}/op/f:abc",
            "started_at": "2026-01-01T00:00:00Z",
            "attributes": {},
            "inputs": {"i": i},
        }
        end = {
            "project_id": project,
            "id": cid,
            "ended_at": "2026-01-01T00:00:01Z",
            "output": i,
            "summary": {},
        }
        lines.append({"method": "call_start", "payload": {"start": start}})
        lines.append({"method": "call_end", "payload": {"end": end}})
    lines.append({"method": "flush"})
    return lines


def round_trip(binary: str) -> dict[str, int]:
    server = TraceServer()
    server.start()
    sock_dir = tempfile.mkdtemp(prefix="wsc-", dir="/tmp")
    env = dict(os.environ, WEAVE_SIDECAR_API_KEY="smoke-key")
    proc = subprocess.Popen(
        [
            binary,
            "--socket",
            os.path.join(sock_dir, "s"),
            "--backend",
            server.url,
            "--flush-interval",
            "50ms",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        conn = connect(os.path.join(sock_dir, "s"), proc)
        with conn, conn.makefile("rb") as reader:
            lines = request_lines()
            conn.sendall(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            answers = [json.loads(reader.readline()) for _ in lines]
        proc.terminate()
        proc.wait(30)
        flush = answers[-1]["result"]
        return {
            "acked": sum(1 for a in answers[:-1] if a["success"]),
            "stored": 2 * len(server.calls()),
            "delivered": flush["delivered"],
            "failed": flush["failed"],
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def main() -> int:
    binary = check_binary()
    if not hasattr(socket, "AF_UNIX"):
        print("smoke: no AF_UNIX in this Python; version checked, round trip skipped")
        print(json.dumps({"version": weave_sidecar.__version__, "round_trip": None}))
        return 0
    report = round_trip(binary)
    print(json.dumps(report))
    n = 2 * PAIRS
    want = {"acked": n, "stored": n, "delivered": n, "failed": 0}
    return 0 if report == want else 1


if __name__ == "__main__":
    sys.exit(main())
