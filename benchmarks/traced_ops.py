"""The traced program benchmark.py runs once per mode, in a fresh interpreter.

Usage: python benchmarks/traced_ops.py RESULT_JSON

Settings come from the environment, so the program is the same in every mode:
``BENCH_PROJECT``, ``BENCH_OPS``, ``BENCH_THREADS``, ``BENCH_PAYLOAD_BYTES``,
``BENCH_WARMUP``. The mode is only the SDK's own environment
(``WEAVE_USE_SIDECAR``, ``WEAVE_USE_CALLS_COMPLETE``).

The program calls one ``@weave.op`` BENCH_OPS times (split over BENCH_THREADS
threads), timing each call as the caller sees it, then simply ends: delivery of
what is still queued happens in the SDK's (or the sidecar's) exit path, as in
a user's script. The results are written by the first atexit hook registered,
which runs last, after every flush: op latencies, the monotonic time of the last
op, this process's CPU time and that of its reaped children (the sidecar), the
id of every call the client created, and which path the calls took.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import threading
import time
from typing import Any

_result: dict[str, Any] = {"ok": False}
_created: list[str] = []


def _write_result(path: str) -> None:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    _result["cpu_self_s"] = time.process_time()
    _result["cpu_children_s"] = children.ru_utime + children.ru_stime
    _result["exit_hook_at"] = time.monotonic()
    _result["created"] = list(_created)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_result, f)
    os.replace(tmp, path)


def _record_created_calls() -> None:
    from weave.trace.weave_client import WeaveClient

    create = WeaveClient.create_call

    def create_call(self: WeaveClient, *args: Any, **kwargs: Any) -> Any:
        call = create(self, *args, **kwargs)
        _created.append(call.id)  # list.append is atomic under the GIL
        return call

    WeaveClient.create_call = create_call  # type: ignore[method-assign]


def _time_exit_hooks() -> None:
    """Time every exit hook registered from now on (reported as exit_hooks)."""
    hooks: list[list[Any]] = []
    _result["exit_hooks"] = hooks

    def timed(fn: Any) -> Any:
        name = getattr(fn, "__qualname__", repr(fn))
        module = getattr(fn, "__module__", "") or ""

        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                hooks.append([f"{module}.{name}", t0, time.monotonic() - t0])

        return run

    register = atexit.register
    atexit.register = lambda fn, *a, **k: register(timed(fn), *a, **k)  # type: ignore[assignment]
    thread_register = threading._register_atexit  # type: ignore[attr-defined]
    threading._register_atexit = lambda fn, *a, **k: thread_register(  # type: ignore[attr-defined]
        timed(fn), *a, **k
    )


def _use_sidecar() -> bool:
    value = os.environ.get("WEAVE_USE_SIDECAR", "").strip().lower()
    return value in ("1", "true", "yes", "on")


def main() -> int:
    # Registered before weave is imported, so it runs after every SDK and
    # sidecar exit hook (atexit is LIFO).
    atexit.register(_write_result, sys.argv[1])
    _time_exit_hooks()
    project = os.environ["BENCH_PROJECT"]
    ops = int(os.environ["BENCH_OPS"])
    threads = max(1, int(os.environ.get("BENCH_THREADS", "1")))
    payload = "x" * int(os.environ.get("BENCH_PAYLOAD_BYTES", "0"))
    warmup = int(os.environ.get("BENCH_WARMUP", "10"))

    import weave

    _record_created_calls()
    client = weave.init(project)
    sidecar = None
    if _use_sidecar():
        import weave_sidecar

        weave_sidecar.enable()  # a no-op when the .pth hook already wired it
        sidecar = weave_sidecar.status()
        if sidecar is None or sidecar.get("state") != "open":
            print(f"the sidecar is not in use: {sidecar!r}", file=sys.stderr)
            return 3
    remote = client.server
    while not hasattr(remote, "call_processor") and hasattr(
        remote, "_next_trace_server"
    ):
        remote = remote._next_trace_server
    _result["call_processor"] = type(getattr(remote, "call_processor", None)).__name__

    @weave.op
    def traced_step(i: int, text: str) -> dict[str, Any]:
        return {"i": i, "n": len(text)}

    # Warm up: publishes the op (obj/create, files/create) and, in sidecar
    # mode, opens the connection; flushed so the timed part starts empty.
    for i in range(warmup):
        traced_step(-1 - i, payload)
    client.flush()

    per_thread = [
        ops // threads + (1 if t < ops % threads else 0) for t in range(threads)
    ]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_gate = threading.Barrier(threads + 1 if threads > 1 else 1)

    def worker(t: int) -> None:
        lat = latencies[t]
        base = sum(per_thread[:t])
        clock = time.perf_counter
        start_gate.wait()
        for i in range(base, base + per_thread[t]):
            t0 = clock()
            traced_step(i, payload)
            lat.append(clock() - t0)

    if threads == 1:
        # On the main thread, as most programs call ops (and where a profiler
        # started on the main thread sees them).
        cpu0 = time.process_time()
        t0 = time.monotonic()
        worker(0)
    else:
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        cpu0 = time.process_time()
        start_gate.wait()
        t0 = time.monotonic()
        for w in workers:
            w.join()
    t1 = time.monotonic()

    _result.update(
        ok=True,
        ops=ops,
        threads=threads,
        warmup=warmup,
        first_op_at=t0,
        last_op_at=t1,
        loop_s=t1 - t0,
        cpu_at_first_op=cpu0,
        loop_cpu_s=time.process_time() - cpu0,
        latencies_s=[x for lat in latencies for x in lat],
        sidecar=sidecar,
    )
    # No flush here: the program ends the way a user's script does.
    return 0


if __name__ == "__main__":
    sys.exit(main())
