"""The real Weave SDK through the sidecar, in subprocesses, against the local server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_bin import package_root, sidecar_bin
from weave_sidecar.testing import TraceServer

pytestmark = pytest.mark.timeout(180)

SCRIPTS = Path(__file__).resolve().parent / "scripts"
WARNING = "weave-sidecar is not used"
PACKAGE_ROOT = package_root()


# Every test here runs over both transports: the Unix socket, and the
# token-checked loopback TCP that Windows uses, forced on this OS.
@pytest.fixture(params=["unix", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(weave_env: dict[str, str], transport: str) -> Iterator[dict[str, str]]:
    """weave_env plus the sidecar switched on, a short runtime dir and our package."""
    runtime = tempfile.mkdtemp(prefix="wst-", dir="/tmp")
    e = dict(weave_env)
    if transport == "tcp":
        e["WEAVE_SIDECAR_TRANSPORT"] = "tcp"
    e.update(
        WEAVE_USE_SIDECAR="true",
        # The binary these tests found or built, in every traced script.
        WEAVE_SIDECAR_BIN=sidecar_bin(),
        XDG_RUNTIME_DIR=runtime,
        PYTHONPATH=PACKAGE_ROOT,
        # No shared sidecar from the developer's machine.
        WEAVE_SIDECAR_SOCKET=os.path.join(runtime, "none.sock"),
    )
    yield e
    subprocess.run(["rm", "-rf", runtime], check=False)


def run_script(
    name: str, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_exactly_once(server: TraceServer, project_id: str, ids: list[str]) -> None:
    assert server.missing(ids) == {"start": [], "end": []}
    assert server.duplicates() == []
    stored = server.calls(project_id)
    assert {c["id"] for c in stored} >= set(ids)
    assert len(set(ids)) == len(ids)
    assert all(c["_has_start"] and c["_has_end"] for c in stored)


def went_through_sidecar(server: TraceServer) -> bool:
    agents = server.user_agents("/call/upsert_batch")
    return bool(agents) and all("weave-sidecar" in ua.lower() for ua in agents)


def wait_gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("finish", [True, False], ids=["flush", "exit-at-once"])
def test_calls_go_through_sidecar(
    trace_server: TraceServer,
    project_id: str,
    env: dict[str, str],
    finish: bool,
    transport: str,
) -> None:
    args = [project_id, "20", "--enable"] + ([] if finish else ["--no-finish"])
    proc = run_script("traced.py", env, *args)
    out = last_json(proc)
    # Top-level calls recorded by the script; with the nested leaf calls the
    # project holds 20 * (3 + 1 + 1) + 2 + 4 * 5 * 3 calls.
    assert len(out["ids"]) == 20 * 3 + 2 + 20
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert len(trace_server.calls(project_id)) == 162
    if finish:
        assert out["read_back"] == len(out["ids"])
    assert out["status"]["state"] == "open"
    if transport == "tcp":
        assert out["status"]["socket"].startswith("127.0.0.1:")
    else:
        assert out["status"]["socket"].startswith("/")
    assert out["alive"] is True
    assert wait_gone(out["status"]["pid"])
    assert went_through_sidecar(trace_server)
    assert WARNING not in proc.stderr
    assert os.listdir(env["XDG_RUNTIME_DIR"]) == []


def test_raising_op_is_stored_with_its_exception(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    out = last_json(run_script("traced.py", env, project_id, "3", "--enable"))
    failed = [c for c in trace_server.calls(project_id) if c["exception"]]
    assert len(failed) == 3
    assert all("boom" in c["exception"] for c in failed)
    assert {c["id"] for c in failed} <= set(out["ids"])


def test_variable_unset_means_no_sidecar_and_no_warning(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    del env["WEAVE_USE_SIDECAR"]
    proc = run_script("traced.py", env, project_id, "5")
    out = last_json(proc)
    assert out["status"] is None
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert WARNING not in proc.stderr
    assert not went_through_sidecar(trace_server)


def _silent_binary(directory: str) -> str:
    path = os.path.join(directory, "silent-sidecar")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize(
    "case", ["binary-missing", "handshake-timeout", "socket-dir-unusable", "killed"]
)
def test_fallback_delivers_everything_and_warns_once(
    trace_server: TraceServer, project_id: str, env: dict[str, str], case: str
) -> None:
    args = [project_id, "20", "--enable"]
    if case == "binary-missing":
        env["WEAVE_SIDECAR_BIN"] = "/nonexistent/weave-sidecar"
    elif case == "handshake-timeout":
        env["WEAVE_SIDECAR_BIN"] = _silent_binary(env["XDG_RUNTIME_DIR"])
        env["WEAVE_SIDECAR_START_TIMEOUT"] = "0.5"
    elif case == "socket-dir-unusable":
        env["XDG_RUNTIME_DIR"] = "/proc/no-such-dir"
    else:
        args += ["--kill-sidecar-after", "7"]
    proc = run_script("traced.py", env, *args)
    out = last_json(proc)
    assert trace_server.missing(out["ids"]) == {"start": [], "end": []}
    if case != "killed":
        # A killed sidecar may have delivered calls it had not yet reported.
        assert trace_server.duplicates() == []
    stored = {c["id"] for c in trace_server.calls(project_id)}
    assert set(out["ids"]) <= stored
    assert out["read_back"] == len(out["ids"])
    assert proc.stderr.count(WARNING) == 1, proc.stderr
    assert "unset WEAVE_USE_SIDECAR" in proc.stderr


@pytest.mark.parametrize("mode", ["fork", "spawn", "osfork"])
def test_forked_and_spawned_children(
    trace_server: TraceServer, project_id: str, env: dict[str, str], mode: str
) -> None:
    if mode != "spawn":
        # weave 0.54's own thread pool does not work in a forked child.
        env["WEAVE_CLIENT_PARALLELISM"] = "0"
    proc = run_script("fork_workers.py", env, project_id, mode, "--enable")
    ids = last_json(proc)["ids"]
    children = 1 if mode == "osfork" else 3
    assert len(ids) == 10 + 10 * children
    assert_exactly_once(trace_server, project_id, ids)
    assert WARNING not in proc.stderr
    assert went_through_sidecar(trace_server)


def test_sigint_to_the_process_group_delivers_the_end(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "interrupted.py"), project_id, "--enable"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("CALL "), proc.stderr.read() if proc.stderr else ""
    call_id = line.split()[1]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    (call,) = [c for c in trace_server.calls(project_id) if c["id"] == call_id]
    assert call["_has_end"]
    assert "KeyboardInterrupt" in (call["exception"] or "")
    assert went_through_sidecar(trace_server)


def test_shared_sidecar_is_used_when_backend_matches(
    trace_server: TraceServer, project_id: str, env: dict[str, str], transport: str
) -> None:
    if transport == "tcp":
        pytest.skip("a shared sidecar is found on its Unix socket only")
    path = os.path.join(env["XDG_RUNTIME_DIR"], "shared.sock")
    shared = subprocess.Popen(
        [sidecar_bin(), "--socket", path, "--backend", trace_server.url + "/"],
        env={**env, "WANDB_API_KEY": env["WANDB_API_KEY"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if os.path.exists(path):
                break
            time.sleep(0.02)
        env["WEAVE_SIDECAR_SOCKET"] = path
        out = last_json(run_script("traced.py", env, project_id, "5", "--enable"))
        assert out["status"]["shared"] is True
        assert out["status"]["pid"] == shared.pid
        assert_exactly_once(trace_server, project_id, out["ids"])
        assert went_through_sidecar(trace_server)
        assert shared.poll() is None  # a shared sidecar outlives its clients
    finally:
        shared.send_signal(signal.SIGTERM)
        shared.wait(30)


def _pth_installed() -> bool:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return any(
        os.path.exists(os.path.join(d, "weave_sidecar_autoload.pth")) for d in dirs
    )


@pytest.mark.skipif(not _pth_installed(), reason="package not installed with its .pth")
def test_pth_hook_needs_no_code_change(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    del env["PYTHONPATH"]  # the installed copy, .pth included
    out = last_json(run_script("traced.py", env, project_id, "5"))
    assert out["status"]["state"] == "open"
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert went_through_sidecar(trace_server)


@pytest.mark.skipif(not _pth_installed(), reason="package not installed with its .pth")
def test_pth_hook_is_inert_when_unset(env: dict[str, str]) -> None:
    del env["PYTHONPATH"]
    del env["WEAVE_USE_SIDECAR"]
    code = "import sys; print('weave_sidecar' in sys.modules, 'weave' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]
    env["WEAVE_USE_SIDECAR"] = "true"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # The hook loads our small module, never weave itself.
    assert out.stdout.split() == ["True", "False"]


# Follow-ups: lazy direct path, restarts, warnings, refusals, returned calls.


def run_faults(
    env: dict[str, str], *args: str
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = run_script("faults.py", env, *args)
    return last_json(proc), proc


def warnings_by_pid(stderr: str) -> dict[int, int]:
    """Fallback warnings per process id (faults.py logs "<pid> <logger> ...")."""
    counts: dict[int, int] = {}
    for line in stderr.splitlines():
        if WARNING in line and " weave_sidecar WARNING " in line:
            pid = int(line.split()[0])
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def via_sidecar(server: TraceServer) -> set[str]:
    """Call ids whose start or end reached the server through the sidecar."""
    sidecar_requests = {
        r["seq"]
        for r in server.requests("/call/upsert_batch")
        if "weave-sidecar" in r["user_agent"].lower()
    }
    return {r["call_id"] for r in server.receipts() if r["request"] in sidecar_requests}


def test_direct_processor_is_not_made_while_the_sidecar_works(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    out, proc = run_faults(env, "healthy", project_id)
    assert out["direct_processor"] is False
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert via_sidecar(trace_server) >= set(out["ids"])
    assert WARNING not in proc.stderr


def test_lost_sidecar_is_restarted_twice_then_the_breaker_trips(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    env["WEAVE_SIDECAR_RESPAWN_DELAYS"] = "0.2,0.4"
    # Nothing is delivered without a flush, so a kill leaves only calls that
    # were never delivered: exactly once even across the kills.
    env["WEAVE_SIDECAR_FLUSH_INTERVAL"] = "60s"
    out, proc = run_faults(env, "respawn", project_id)
    assert len(set(out["pids"])) == 3  # the first sidecar and two restarts
    assert out["status"]["state"] == "failed"
    assert out["status"]["restarts"] == 2
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert out["direct_processor"] is True
    sidecar = via_sidecar(trace_server)
    assert sidecar and not sidecar >= set(out["ids"])  # both paths were used
    assert proc.stderr.count(WARNING) == 1, proc.stderr
    assert "restarted in 0.2s (restart 1 of 2)" in proc.stderr
    for pid in out["pids"]:
        assert wait_gone(pid)


def test_per_call_refusals_warn_once_per_process_forked_child_included(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    env["WEAVE_CLIENT_PARALLELISM"] = "0"  # weave's pool does not survive fork
    env["WEAVE_SIDECAR_FLUSH_INTERVAL"] = "60s"
    env["WEAVE_SIDECAR_MAX_QUEUE_BYTES"] = "6000"  # a few calls, then queue_full
    out, proc = run_faults(env, "refusals", project_id)
    assert len(out["ids"]) == 90
    assert_exactly_once(trace_server, project_id, out["ids"])
    # Both paths carried calls, in the parent and in the child.
    sidecar = via_sidecar(trace_server)
    assert sidecar & set(out["child"]["ids"])
    assert set(out["child"]["ids"]) - sidecar
    assert set(out["ids"]) - set(out["child"]["ids"]) - sidecar
    assert out["direct_processor"] is True
    assert out["status"]["state"] == "open"
    assert out["child"]["status"]["pid"] != out["status"]["pid"]
    counts = warnings_by_pid(proc.stderr)
    # One warning in the parent and one in the forked child, despite many refusals.
    assert out["child_pid"] in counts
    assert sorted(counts.values()) == [1, 1], proc.stderr
    assert "queue_full" in proc.stderr


def test_calls_complete_project_goes_direct_exactly_once(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    other = project_id + "-cc"
    trace_server.faults.require_calls_complete(other)
    out, proc = run_faults(env, "calls-complete", project_id, other)
    ids, other_ids = out["ids"], out["other_ids"]
    assert len(ids) == 15 and len(other_ids) == 10
    assert trace_server.missing(ids + other_ids) == {"start": [], "end": []}
    assert trace_server.duplicates() == []
    # The sidecar delivered every call of the plain project, and none of the
    # calls-complete project's; the latter went the SDK's way.
    sidecar = via_sidecar(trace_server)
    assert sidecar >= set(ids)
    assert not sidecar & set(other_ids)
    assert {c["id"] for c in trace_server.calls(other)} == set(other_ids)
    assert out["status"]["state"] == "open"
    assert proc.stderr.count(WARNING) == 1, proc.stderr


def assert_complete_exactly_once(
    server: TraceServer, project_id: str, ids: list[str]
) -> None:
    """Each call reached the server once, as one completed call."""
    assert_exactly_once(server, project_id, ids)
    assert {c["id"] for c in server.calls(project_id)} == set(ids)
    receipts = [r for r in server.receipts() if r["project_id"] == project_id]
    assert sorted(r["call_id"] for r in receipts) == sorted(ids)
    assert {r["mode"] for r in receipts} == {"complete"}


def test_calls_complete_project_nested_ops_with_flush(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    """A new user's report: nested and raising ops, then client.flush(), in a
    project that requires calls-complete mode stored 75 of 100 calls."""
    trace_server.faults.require_calls_complete(project_id)
    out, proc = run_faults(env, "cc-nested", project_id)
    assert len(out["ids"]) == 20 * 5
    assert out["read_back"] == 100  # all stored when flush() returned
    assert_complete_exactly_once(trace_server, project_id, out["ids"])
    assert out["calls_complete"] is True
    assert out["status"]["state"] == "open"
    assert proc.stderr.count(WARNING) == 1, proc.stderr


def test_calls_complete_project_short_script_without_flush(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    """The same user's short script that just exits stored none of its calls:
    the sidecar hands them back in the exit hook, where no processor may be
    made, and they are sent as completed calls there."""
    trace_server.faults.require_calls_complete(project_id)
    out, proc = run_faults(env, "cc-exit", project_id)
    assert len(out["ids"]) == 10
    assert_complete_exactly_once(trace_server, project_id, out["ids"])
    assert out["direct_processor"] is False
    assert not via_sidecar(trace_server)
    assert proc.stderr.count(WARNING) == 1, proc.stderr


def test_unauthorized_sidecar_hands_back_exactly_once(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    # The sidecar's first batch is refused; the SDK's own requests are not.
    trace_server.faults.script("/call/upsert_batch", [401])
    out, proc = run_faults(env, "unauthorized", project_id)
    assert len(out["ids"]) == 20
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert not via_sidecar(trace_server)
    assert out["status"]["state"] == "direct"
    assert out["direct_processor"] is True
    assert proc.stderr.count(WARNING) == 1, proc.stderr
    assert "401/403" in proc.stderr


def test_calls_returned_during_exit_are_sent_by_the_exit_hook(
    trace_server: TraceServer, project_id: str, env: dict[str, str]
) -> None:
    # Nothing has gone direct before exit, so no direct-path processor exists
    # and none may be made (no threads from an exit hook): the calls the
    # sidecar returns at its final flush are sent synchronously.
    trace_server.faults.script("/call/upsert_batch", [401])
    out, proc = run_faults(env, "exit-401", project_id)
    assert out["direct_processor"] is False
    assert_exactly_once(trace_server, project_id, out["ids"])
    assert not via_sidecar(trace_server)
    assert proc.stderr.count(WARNING) == 1, proc.stderr
