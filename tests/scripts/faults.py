"""Traced calls through a sidecar that fails in one scripted way.

Usage: faults.py MODE PROJECT_ID [OTHER_PROJECT_ID]
  healthy        10 calls, flush
  respawn        kill the sidecar three times (flushing before each kill)
  refusals       a sidecar with a tiny queue refuses calls (queue_full); then a
                 forked child does the same with its own sidecar
  calls-complete calls of PROJECT_ID and OTHER_PROJECT_ID (which the server
                 says needs calls-complete mode), interleaved
  cc-nested      nested and raising ops spread over ~2 s, then client.flush()
                 (PROJECT_ID needs calls-complete mode)
  cc-exit        a few calls, then exit at once, no flush (same)
  unauthorized   calls before and after the server refuses the sidecar's key
  exit-401       calls, then exit at once: the server refuses the sidecar's
                 key while the exit hook flushes it

Prints one JSON line: {"ids": [...], "status": ..., "direct_processor": bool,
...}. Log lines carry the process id, so a test can count warnings per process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Any

import weave
import weave_sidecar
from weave_sidecar import _sdk

logging.basicConfig(format="%(process)d %(name)s %(levelname)s %(message)s")


@weave.op
def work(x: int) -> int:
    return x + 1


# Every call id the nested workload made, children and failed calls included.
nested_ids: list[str] = []


@weave.op
def add(a: int, b: int) -> int:
    nested_ids.append(weave.require_current_call().id)
    return a + b


@weave.op
def boom(x: int) -> int:
    nested_ids.append(weave.require_current_call().id)
    raise ValueError(f"boom {x}")


@weave.op
def outer(n: int) -> int:
    nested_ids.append(weave.require_current_call().id)
    total = 0
    for i in range(n):
        total = add(total, i)
    return total


def cc_nested(project: str, out: dict[str, Any]) -> None:
    """The new user's workload: 20 x (outer with 3 adds, then a raising op)."""
    client = weave.init(project)
    for i in range(20):
        outer(3)
        try:
            boom(i)
        except ValueError:
            pass
        time.sleep(0.1)  # so the sidecar sends (and is refused) mid-run
    client.flush()
    out["ids"] = list(nested_ids)
    # What the trace server holds once flush() has returned.
    out["read_back"] = len({c.id for c in client.get_calls()} & set(nested_ids))


def calls(n: int, ids: list[str]) -> None:
    for i in range(n):
        _, call = work.call(i)
        ids.append(call.id)


def processor() -> Any:
    client = weave.get_client()
    assert client is not None
    return _sdk._find_remote(client.server).call_processor


def state() -> dict[str, Any]:
    return weave_sidecar.status() or {}


def wait_until(pred: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def call_until_open(ids: list[str]) -> bool:
    """Make calls until one finds the sidecar open (a call after the restart
    delay starts the next sidecar)."""

    def open_after_a_call() -> bool:
        calls(1, ids)
        return bool(state()["state"] == "open")

    return wait_until(open_after_a_call)


def respawn(project: str, out: dict[str, Any]) -> None:
    client = weave.init(project)
    ids: list[str] = out["ids"]
    pids = []
    for _ in range(3):
        assert call_until_open(ids)
        pids.append(state()["pid"])
        client.flush()  # nothing unconfirmed: the kill below loses nothing
        calls(5, ids)  # unconfirmed (long flush interval): resent directly
        os.kill(pids[-1], signal.SIGKILL)
        assert wait_until(lambda: state()["state"] == "failed")
    time.sleep(1.5)  # past every restart delay: the breaker has tripped
    calls(5, ids)
    client.flush()
    out["pids"] = pids


def refusals(project: str, out: dict[str, Any]) -> None:
    client = weave.init(project)
    ids: list[str] = out["ids"]
    calls(30, ids)
    client.flush()
    out_dir = tempfile.mkdtemp(prefix="wst-faults-")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child_ids: list[str] = []
            child = weave.init(project)
            calls(30, child_ids)
            child.flush()
            with open(os.path.join(out_dir, "child.json"), "w") as f:
                json.dump({"ids": child_ids, "status": state()}, f)
            code = 0
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with open(os.path.join(out_dir, "child.json")) as f:
        out["child"] = json.load(f)
    os.remove(os.path.join(out_dir, "child.json"))
    os.rmdir(out_dir)
    ids.extend(out["child"]["ids"])
    calls(30, ids)
    client.flush()
    out["child_pid"] = pid


def calls_complete(project: str, other: str, out: dict[str, Any]) -> None:
    ids: list[str] = out["ids"]
    other_ids: list[str] = out["other_ids"]
    clients = []
    for _ in range(2):
        clients.append(weave.init(project))
        calls(5, ids)
        clients.append(weave.init(other))
        calls(5, other_ids)
        # Let the sidecar send (1 s interval): the server drops the other
        # project's calls, which come back by ordinal.
        time.sleep(1.3)
    clients.append(weave.init(project))
    calls(5, ids)
    for client in clients:
        client.flush()


def unauthorized(project: str, out: dict[str, Any]) -> None:
    client = weave.init(project)
    ids: list[str] = out["ids"]
    calls(10, ids)
    client.flush()  # the sidecar's batch is refused (401) and handed back
    calls(10, ids)  # refused by the sidecar: sent directly
    client.flush()


def main() -> None:
    mode, project = sys.argv[1], sys.argv[2]
    weave_sidecar.enable()
    out: dict[str, Any] = {"ids": [], "other_ids": []}
    if mode == "healthy":
        client = weave.init(project)
        calls(10, out["ids"])
        client.flush()
    elif mode == "respawn":
        respawn(project, out)
    elif mode == "refusals":
        refusals(project, out)
    elif mode == "calls-complete":
        calls_complete(project, sys.argv[3], out)
    elif mode == "cc-nested":
        cc_nested(project, out)
    elif mode == "cc-exit":
        weave.init(project)
        calls(10, out["ids"])
    elif mode == "unauthorized":
        unauthorized(project, out)
    elif mode == "exit-401":
        weave.init(project)
        calls(10, out["ids"])
    else:
        raise SystemExit(f"unknown mode {mode}")
    p = processor()
    out["status"] = state()
    out["direct_processor"] = bool(getattr(p, "has_direct_processor", True))
    out["calls_complete"] = bool(getattr(p, "calls_complete", False))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
