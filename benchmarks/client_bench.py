"""Client microbenchmark: caller cost per 1 KiB call, client vs a bare socket write.

Not a test. Spawns the real sidecar against the local trace server and prints
the parameters next to each number:

    python benchmarks/client_bench.py [--calls 50000] [--size 1024]

"client" is `Client.submit` (what a traced call pays on the calling thread);
"bare" is one `sendall` of the same line on a connected socket, with a thread
draining the sidecar's answers; "end to end" adds `flush` (delivered).
Goal: client under 20 µs per 1 KiB call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from weave_sidecar import find_sidecar_bin  # noqa: E402
from weave_sidecar._client import Client  # noqa: E402
from weave_sidecar._process import SidecarProcess  # noqa: E402
from weave_sidecar.testing import TraceServer  # noqa: E402


def payload(i: int, size: int) -> bytes:
    start = {
        "project_id": "bench-entity/bench",
        "id": f"c{i}",
        "trace_id": f"t{i}",
        "op_name": "weave:///bench-entity/bench/op/f:abc",
        "started_at": "2024-01-01T00:00:00Z",
        "attributes": {},
        "inputs": {},
    }
    base = len(json.dumps({"start": start}, separators=(",", ":")))
    start["inputs"] = {"pad": "x" * max(size - base - 12, 0)}
    return json.dumps({"start": start}, separators=(",", ":")).encode()


def bench_bare(path: str, lines: list[bytes]) -> float:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(b'{"method":"hello"}\n')
    done = threading.Event()
    want = len(lines) + 1

    def drain() -> None:
        seen = 0
        while seen < want:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            seen += chunk.count(b"\n")
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    t0 = time.perf_counter()
    for line in lines:
        sock.sendall(line)
    elapsed = time.perf_counter() - t0
    done.wait(120)
    sock.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("WEAVE_SIDECAR_LOG_LEVEL", "error")
    payloads = [payload(i, args.size) for i in range(args.calls)]
    lines = [b'{"method":"call_start","payload":' + p + b"}\n" for p in payloads]

    with TraceServer() as server:
        runtime = tempfile.mkdtemp(prefix="wsb-", dir="/tmp")
        os.environ["XDG_RUNTIME_DIR"] = runtime
        proc, sock, hello = SidecarProcess.spawn(
            find_sidecar_bin(), backend=server.url, api_key="bench-key", timeout=10
        )
        try:
            refused: list[object] = []
            client = Client(
                sock,
                hello,
                on_refused=lambda token, code: refused.append(token),
                on_failed=lambda tokens, reason: refused.extend(tokens),
                max_items=10**7,
                max_bytes=1 << 31,
            )
            t0 = time.perf_counter()
            for i, p in enumerate(payloads):
                client.submit("call_start", p, i)
            caller = time.perf_counter() - t0
            client.flush(300)
            end_to_end = time.perf_counter() - t0
            client.close()
            bare = bench_bare(proc.socket_path, lines)
        finally:
            proc.stop(30)
    n = args.calls
    print(f"calls={n} payload_bytes={len(payloads[0])} cpus={os.cpu_count()}")
    print(f"client submit (caller):  {caller / n * 1e6:7.2f} us/call")
    print(f"client end to end:       {end_to_end / n * 1e6:7.2f} us/call (delivered)")
    print(f"bare sendall per line:   {bare / n * 1e6:7.2f} us/call")
    print(f"refused or handed back:  {len(refused)}")


if __name__ == "__main__":
    main()
