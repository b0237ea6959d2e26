"""The local trace server: the real SDK against it, validation, faults, CLI."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import TEST_API_KEY, TEST_ENTITY
from weave_sidecar.testing import ControlClient, TraceServer

AUTH = "Basic " + base64.b64encode(f"api:{TEST_API_KEY}".encode()).decode()
PROJECT = f"{TEST_ENTITY}/unit"


def post(
    server: TraceServer | str,
    path: str,
    body: Any,
    *,
    auth: str | None = AUTH,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST JSON (or raw bytes); return status, headers and the decoded body."""
    url = server if isinstance(server, str) else server.url
    port = int(url.rsplit(":", 1)[1])
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    c.request("POST", path, body=data, headers=headers)
    resp = c.getresponse()
    raw = resp.read()
    if conn is None:
        c.close()
    text = raw.decode()
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = text
    return resp.status, dict(resp.getheaders()), decoded


def start(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": PROJECT,
        "id": call_id,
        "trace_id": call_id,
        "op_name": f"weave:///{PROJECT}/op/f:abc",
        "started_at": "2026-01-01T00:00:00.000Z",
        "attributes": {},
        "inputs": {"x": 1},
        **extra,
    }


def end(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": PROJECT,
        "id": call_id,
        "ended_at": "2026-01-01T00:00:01.000Z",
        "summary": {},
        "output": 2,
        **extra,
    }


def batch(*call_ids: str) -> dict[str, Any]:
    items = []
    for i in call_ids:
        items.append({"mode": "start", "req": {"start": start(i)}})
        items.append({"mode": "end", "req": {"end": end(i)}})
    return {"batch": items}


TRACED_PROGRAM = """
import asyncio, json, threading, weave

client = weave.init({project!r})

@weave.op
def add(a, b):
    return a + b

@weave.op
def outer(x):
    return add(x, 1) * 2

@weave.op
def boom():
    raise ValueError("expected failure")

@weave.op
async def slow_double(x):
    await asyncio.sleep(0)
    return 2 * x

made = 0
outer(3); made += 2
try:
    boom()
except ValueError:
    pass
made += 1
threads = [threading.Thread(target=outer, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
made += 8
asyncio.run(slow_double(5)); made += 1
add("x" * 100_000, "y"); made += 1

client.flush()
calls = list(client.get_calls())
print(json.dumps({{
    "made": made,
    "read_back": [c.id for c in calls],
    "errors": [c.id for c in calls if c.exception],
}}))
"""


def test_sdk_direct_path_stores_every_call_once(
    trace_server: TraceServer,
    run_python: Callable[..., subprocess.CompletedProcess[str]],
    project_id: str,
) -> None:
    """When a traced program runs against it, every call is stored exactly once
    and client.get_calls() reads them all back."""
    out = run_python(TRACED_PROGRAM.format(project=project_id))
    result = json.loads(out.stdout.strip().splitlines()[-1])

    stored = trace_server.calls(project_id)
    assert len(stored) == result["made"] == 13
    assert sorted(result["read_back"]) == sorted(c["id"] for c in stored)
    assert all(c["_has_start"] and c["_has_end"] for c in stored)
    assert trace_server.duplicates() == []
    assert trace_server.missing(result["read_back"]) == {"start": [], "end": []}
    assert len(result["errors"]) == 1
    (err,) = [c for c in stored if c["exception"]]
    assert "expected failure" in err["exception"]
    assert err["summary"]["weave"]["status"] == "error"
    counts = trace_server.request_counts()
    assert counts["/server_info"] == 1
    assert counts["/calls/stream_query"] >= 1
    assert all(r["status"] < 300 for r in trace_server.requests())


def test_upsert_batch_stores_and_answers_ids(trace_server: TraceServer) -> None:
    status, _, body = post(trace_server, "/call/upsert_batch", batch("a", "b"))

    assert status == 200
    assert body == {
        "res": [{"id": "a", "trace_id": "a"}, {}, {"id": "b", "trace_id": "b"}, {}]
    }
    assert [c["id"] for c in trace_server.calls(PROJECT)] == ["a", "b"]
    assert [(r["call_id"], r["mode"]) for r in trace_server.receipts()] == [
        ("a", "start"), ("a", "end"), ("b", "start"), ("b", "end"),
    ]  # fmt: skip


def _with(obj: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    """A deep copy of obj with value set (or the key deleted, for ...) at path."""
    out: Any = json.loads(json.dumps(obj))
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (["extra"], 1, "extra inputs are not permitted"),
        (["batch", 0, "extra"], 1, "extra inputs are not permitted"),
        (["batch", 0, "req", "extra"], 1, "extra inputs are not permitted"),
        (["batch", 0, "mode"], "middle", "expected 'start' or 'end'"),
        (["batch", 0, "req", "start", "started_at"], ..., "started_at"),
        (["batch", 0, "req", "start", "inputs"], "not a dict", "inputs"),
        (["batch", 1, "req", "end", "summary"], ..., "summary"),
        (["batch", 1, "req", "end", "id"], ..., "id"),
        (["batch"], ..., "batch"),
    ],
    ids=[
        "extra-top", "extra-item", "extra-req", "bad-mode", "no-started_at",
        "inputs-not-object", "no-summary", "no-end-id", "no-batch",
    ],
)  # fmt: skip
def test_invalid_batch_is_rejected_whole(
    trace_server: TraceServer, path: list[Any], value: Any, reason: str
) -> None:
    """When one item is invalid, then the batch answers 400 with a reason and
    nothing of it is stored."""
    body = _with(batch("good", "bad"), path, value)

    status, _, answer = post(trace_server, "/call/upsert_batch", body)

    assert status == 400
    assert reason in answer["reason"]
    assert trace_server.calls() == []
    assert trace_server.receipts() == []


def test_single_start_and_end_are_validated(trace_server: TraceServer) -> None:
    status, _, answer = post(trace_server, "/call/start", {"start": start("s"), "x": 1})
    assert (status, "extra inputs" in answer["reason"]) == (400, True)
    status, _, answer = post(
        trace_server, "/call/end", {"end": _with(end("s"), ["ended_at"], ...)}
    )
    assert (status, "ended_at" in answer["reason"]) == (400, True)

    assert post(trace_server, "/call/start", {"start": start("s")})[0] == 200
    assert post(trace_server, "/call/end", {"end": end("s")})[0] == 200
    (row,) = trace_server.calls()
    assert (row["id"], row["output"], row["summary"]["weave"]["status"]) == (
        "s",
        2,
        "success",
    )


def test_not_json_is_a_clear_400(trace_server: TraceServer) -> None:
    status, _, answer = post(trace_server, "/call/upsert_batch", b"{not json")
    assert status == 400
    assert "not valid JSON" in answer["reason"]


def test_missing_credentials_get_401(trace_server: TraceServer) -> None:
    status, _, answer = post(trace_server, "/call/upsert_batch", batch("a"), auth=None)
    assert status == 401
    assert "credentials" in answer["reason"]
    assert trace_server.calls() == []


def test_keep_alive_serves_many_requests_on_one_connection(
    trace_server: TraceServer,
) -> None:
    port = int(trace_server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        statuses = [
            post(trace_server, "/call/upsert_batch", batch(f"k{i}"), conn=conn)[0]
            for i in range(5)
        ]
        statuses.append(post(trace_server, "/call/upsert_batch", b"{", conn=conn)[0])
        statuses.append(
            post(trace_server, "/call/upsert_batch", batch("k5"), conn=conn)[0]
        )
    finally:
        conn.close()
    assert statuses == [200] * 5 + [400, 200]
    assert len(trace_server.calls()) == 6


def test_duplicates_and_missing_are_reported(trace_server: TraceServer) -> None:
    """When a start arrives twice, it is a duplicate even though storage upserts."""
    post(trace_server, "/call/upsert_batch", batch("a"))
    post(trace_server, "/call/upsert_batch", {"batch": [batch("a")["batch"][0]]})

    assert len(trace_server.calls()) == 1
    assert trace_server.duplicates() == [
        {"project_id": PROJECT, "call_id": "a", "mode": "start", "count": 2}
    ]
    assert trace_server.missing(["a", "zz"]) == {"start": ["zz"], "end": ["zz"]}


def test_fail_next_then_recover(trace_server: TraceServer) -> None:
    trace_server.faults.fail_next("/call/upsert_batch", 2, status=429, retry_after="3")

    first = post(trace_server, "/call/upsert_batch", batch("a"))
    second = post(trace_server, "/call/upsert_batch", batch("a"))
    third = post(trace_server, "/call/upsert_batch", batch("a"))

    assert [first[0], second[0], third[0]] == [429, 429, 200]
    assert first[1]["Retry-After"] == "3"
    assert trace_server.duplicates() == []
    assert trace_server.request_counts()["/call/upsert_batch"] == 3


def test_script_mixes_statuses_and_passes(trace_server: TraceServer) -> None:
    trace_server.faults.script(
        "/call/upsert_batch",
        [500, 200, {"status": 503, "body": {"reason": "busy"}}],
    )
    results = [
        post(trace_server, "/call/upsert_batch", batch(f"s{i}")) for i in range(4)
    ]
    assert [r[0] for r in results] == [500, 200, 503, 200]
    assert results[2][2] == {"reason": "busy"}
    assert [c["id"] for c in trace_server.calls()] == ["s1", "s3"]


def test_outage_until_cleared(trace_server: TraceServer) -> None:
    trace_server.faults.outage()
    assert post(trace_server, "/call/upsert_batch", batch("a"))[0] == 503
    assert post(trace_server, "/obj/create", {})[0] == 503
    trace_server.faults.clear_outage()
    assert post(trace_server, "/call/upsert_batch", batch("a"))[0] == 200


def test_hang_holds_until_released(trace_server: TraceServer) -> None:
    trace_server.faults.hang("/call/upsert_batch", count=1)
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(
            post(trace_server, "/call/upsert_batch", batch("h"))[0]
        )
    )
    t.start()
    # Not a timing assertion: the request is known held once the fault says so.
    while not any(h["held"] for h in trace_server.faults.state()["hangs"]):
        t.join(0.01)
    assert result == []
    assert trace_server.calls() == []

    assert trace_server.faults.release() == 1
    t.join(30)
    assert result == [200]
    assert [c["id"] for c in trace_server.calls()] == ["h"]


def test_hang_then_fail(trace_server: TraceServer) -> None:
    trace_server.faults.hang("/call/upsert_batch", count=1, then=504)
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(
            post(trace_server, "/call/upsert_batch", batch("h"))[0]
        )
    )
    t.start()
    while not any(h["held"] for h in trace_server.faults.state()["hangs"]):
        t.join(0.01)
    trace_server.faults.release()
    t.join(30)
    assert result == [504]
    assert trace_server.calls() == []


def test_reject_call_id_fails_only_its_batch(trace_server: TraceServer) -> None:
    trace_server.faults.reject_call_ids(["poison"])

    status, _, answer = post(trace_server, "/call/upsert_batch", batch("ok1", "poison"))
    assert (status, "poison" in answer["reason"]) == (400, True)
    assert post(trace_server, "/call/upsert_batch", batch("ok1"))[0] == 200
    assert [c["id"] for c in trace_server.calls()] == ["ok1"]


def test_body_over_limit_gets_413(trace_server: TraceServer) -> None:
    trace_server.faults.max_body_bytes(1000)
    big = batch(*[f"c{i}" for i in range(20)])
    status, _, answer = post(trace_server, "/call/upsert_batch", big)
    assert status == 413
    assert "too large" in answer["reason"]
    assert post(trace_server, "/call/upsert_batch", batch("small"))[0] == 200


def test_calls_complete_mode_required(trace_server: TraceServer) -> None:
    trace_server.faults.require_calls_complete(PROJECT)
    status, _, answer = post(trace_server, "/call/upsert_batch", batch("a"))
    assert status == 400
    assert answer["error_code"] == "CALLS_COMPLETE_MODE_REQUIRED"

    complete = {**start("a"), **end("a")}
    status, _, _ = post(
        trace_server, f"/v2/{PROJECT}/calls/complete", {"batch": [complete]}
    )
    assert status == 200
    assert trace_server.missing(["a"]) == {"start": [], "end": []}


def test_reset_clears_calls_and_faults(trace_server: TraceServer) -> None:
    post(trace_server, "/call/upsert_batch", batch("a"))
    trace_server.faults.outage()
    trace_server.reset()
    assert trace_server.calls() == []
    assert trace_server.request_counts() == {}
    assert post(trace_server, "/call/upsert_batch", batch("b"))[0] == 200


def test_user_agent_recorded_per_request(trace_server: TraceServer) -> None:
    port = int(trace_server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST", "/call/upsert_batch", body=json.dumps(batch("u")),
        headers={"Authorization": AUTH, "User-Agent": "weave-sidecar/9.9.9"},
    )  # fmt: skip
    assert conn.getresponse().status == 200
    conn.close()
    assert trace_server.user_agents("/call/upsert_batch") == {"weave-sidecar/9.9.9": 1}
    (entry,) = trace_server.requests("/call/upsert_batch")
    assert (entry["calls"], entry["status"]) == (2, 200)


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TraceServer(host="0.0.0.0")


def test_cli_serves_control_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "python")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "weave_sidecar.testing", "--port", "0",
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        assert ready.read_text().strip() == url

        control = ControlClient(url)
        assert control.health()
        control.faults(fail_next={"path": "/call/upsert_batch", "count": 1})
        assert post(url, "/call/upsert_batch", batch("c"))[0] == 503
        assert post(url, "/call/upsert_batch", batch("c"))[0] == 200
        assert [c["id"] for c in control.calls(PROJECT)] == ["c"]
        assert control.request_counts() == {"/call/upsert_batch": 2}
        assert control.duplicates() == []
        assert control.missing(["c", "d"]) == {"start": ["d"], "end": ["d"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


def test_unique_ids_across_threads(trace_server: TraceServer) -> None:
    """Concurrent batches from many threads are all stored, none twice."""
    ids = [uuid.uuid4().hex for _ in range(40)]

    def send(chunk: list[str]) -> None:
        assert post(trace_server, "/call/upsert_batch", batch(*chunk))[0] == 200

    threads = [
        threading.Thread(target=send, args=(ids[i : i + 5],)) for i in range(0, 40, 5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(c["id"] for c in trace_server.calls()) == sorted(ids)
    assert trace_server.duplicates() == []
