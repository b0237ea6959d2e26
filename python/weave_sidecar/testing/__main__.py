"""Run the local trace server: ``python -m weave_sidecar.testing``.

Prints ``READY http://127.0.0.1:PORT`` once serving and serves until SIGTERM
or SIGINT. The ``/_test/...`` control API is on the same port.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ._server import TraceServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weave_sidecar.testing",
        description="Serve a local Weave trace server on 127.0.0.1.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="added to every request"
    )
    parser.add_argument("--db", default=None, help="SQLite file (default: memory)")
    parser.add_argument("--api-key", default=None, help="require this key")
    parser.add_argument(
        "--ready-file", default=None, help="write the URL here once serving"
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = TraceServer(
            args.host, args.port, args.latency_ms, args.db, api_key=args.api_key
        )
    except ValueError as exc:
        parser.error(str(exc))
    with server:
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(server.url + "\n")
            os.replace(tmp, args.ready_file)
        print(f"READY {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
