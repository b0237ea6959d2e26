"""A traced workload for the tests: nested, raising, large, async and threaded ops.

Usage: traced.py PROJECT_ID N [--enable] [--no-finish] [--kill-sidecar-after K]
Prints one JSON line: {"ids": [call ids], "status": weave_sidecar.status(),
"alive": sidecar pid alive after the calls, "read_back": ids seen by get_calls()}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

import weave


@weave.op
def leaf(x: int) -> int:
    return x * 2


@weave.op
def middle(x: int) -> int:
    return leaf(x) + leaf(x + 1)


@weave.op
def fails(x: int) -> int:
    raise ValueError(f"boom {x}")


@weave.op
def large(blob: str) -> int:
    return len(blob)


@weave.op
async def async_op(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("n", type=int)
    parser.add_argument("--enable", action="store_true")
    parser.add_argument("--no-finish", action="store_true")
    parser.add_argument("--kill-sidecar-after", type=int, default=-1)
    args = parser.parse_args()

    if args.enable:
        import weave_sidecar

        weave_sidecar.enable()
    client = weave.init(args.project)
    import weave_sidecar

    status = weave_sidecar.status()
    ids: list[str] = []

    def record(fn, *a):  # type: ignore[no-untyped-def]
        _, call = fn.call(*a)
        ids.append(call.id)

    for i in range(args.n):
        if i == args.kill_sidecar_after and status and status.get("pid"):
            os.kill(status["pid"], signal.SIGKILL)
        record(middle, i)
        record(fails, i)
        if i % 10 == 0:
            record(large, "x" * 300_000)
        _, call = asyncio.run(async_op.call(i))
        ids.append(call.id)

    lock = threading.Lock()

    def worker(k: int) -> None:
        for j in range(5):
            _, call = middle.call(k * 100 + j)
            with lock:
                ids.append(call.id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    alive = bool(status and status.get("pid") and _alive(status["pid"]))
    read_back = -1
    if not args.no_finish:
        client.flush()
        stored = {c.id for c in client.get_calls()}
        read_back = len(stored & set(ids))
    out = {"ids": ids, "status": status, "alive": alive, "read_back": read_back}
    print(json.dumps(out), flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
