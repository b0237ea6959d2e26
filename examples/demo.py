"""The `make demo` workload: a real Weave program through the sidecar.

Starts the local trace server (or uses the one at --backend), runs
examples/workload.py in a subprocess with WEAVE_USE_SIDECAR=true (a
weave.Evaluation with scorers, nested ops, an op that raises, ops from threads,
an async op), then prints how many calls were made, how many the server
stored, and the evidence that they came through the sidecar: the
/call/upsert_batch requests that carried them had `User-Agent: weave-sidecar/...`.

Exit status: 0 when every call arrived exactly once through the sidecar;
1 when a call is missing or duplicated, or the sidecar was not used;
2 when the workload itself failed.

    python examples/demo.py [--backend URL] [--project ENTITY/PROJECT] [--direct]

--direct runs the same workload without the sidecar (for comparison); the
sidecar check is then skipped, the others still apply.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
try:
    from weave_sidecar.testing import ControlClient, TraceServer, sdk_env
except ImportError:  # run from a source tree that is not installed
    sys.path.insert(0, str(HERE.parent / "python"))
    from weave_sidecar.testing import ControlClient, TraceServer, sdk_env

SIDECAR_AGENT = "weave-sidecar/"
ENTITY = "sidecar-demo"


@contextlib.contextmanager
def trace_server(backend: str | None) -> Iterator[ControlClient]:
    if backend:
        yield ControlClient(backend)
        return
    with TraceServer() as server:
        yield ControlClient(server.url)


def workload_env(url: str, home: str, direct: bool) -> dict[str, str]:
    env = sdk_env(url, home, "sidecar-demo-key")
    if not direct:
        env["WEAVE_USE_SIDECAR"] = "true"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", help="use this running local trace server")
    parser.add_argument("--project", default=f"{ENTITY}/demo-{int(time.time())}")
    parser.add_argument("--direct", action="store_true", help="no sidecar")
    args = parser.parse_args()
    if args.project.split("/")[0] == "wandb":
        parser.error("use another entity than wandb")

    with (
        trace_server(args.backend) as control,
        tempfile.TemporaryDirectory(prefix="wsc-demo-") as home,
    ):
        result_path = Path(home) / "result.json"
        env = workload_env(control.url, home, args.direct)
        print(f"demo: trace server {control.url}, project {args.project}")
        switch = env.get("WEAVE_USE_SIDECAR", "unset")
        print(f"demo: running the workload (WEAVE_USE_SIDECAR={switch})")
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HERE / "workload.py"), args.project, str(result_path)],
            env=env,
            cwd=home,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0 or not result_path.exists():
            print(f"demo: FAIL: the workload exited {proc.returncode}")
            return 2
        result = json.loads(result_path.read_text())
        return report(control, args.project, result, elapsed, args.direct)


def report(
    control: ControlClient,
    project: str,
    result: dict[str, Any],
    elapsed: float,
    direct: bool,
) -> int:
    made = result["created"]
    stored = control.calls(project)
    receipts = [r for r in control.receipts() if r["project_id"] == project]
    duplicates = [d for d in control.duplicates() if d["project_id"] == project]
    missing = control.missing(made)
    unfinished = sorted(set(made) - set(result["finished"]))
    unexpected = sorted({c["id"] for c in stored} - set(made))
    errors = [c for c in stored if c.get("exception")]

    requests = control.requests()
    by_request = {r["seq"]: r for r in requests}
    via: Counter[str] = Counter()
    for r in receipts:
        agent = by_request.get(r["request"], {}).get("user_agent", "")
        via["sidecar" if agent.startswith(SIDECAR_AGENT) else "direct"] += 1
    agents = Counter(
        r["user_agent"] for r in requests if r["path"] == "/call/upsert_batch"
    )

    print()
    print(f"calls made by the program:     {len(made)}")
    print(f"calls stored by the server:    {len(stored)}")
    print(f"  ended with an exception:     {len(errors)}")
    print(f"starts/ends received:          {len(receipts)}")
    print(f"  through the sidecar:         {via['sidecar']}")
    print(f"  direct from the SDK:         {via['direct']}")
    print(f"duplicates:                    {len(duplicates)}")
    n_start, n_end = len(missing["start"]), len(missing["end"])
    print(f"missing starts / ends:         {n_start} / {n_end}")
    print(f"workload wall time:            {elapsed:.1f} s")
    print("HTTP requests by path:")
    for path, n in sorted(control.request_counts().items()):
        print(f"  {n:6d}  {path}")
    print("/call/upsert_batch by User-Agent:")
    for agent, n in sorted(agents.items()) or [("(none)", 0)]:
        print(f"  {n:6d}  {agent}")

    problems = []
    if not made:
        problems.append("the program made no calls")
    if missing["start"] or missing["end"]:
        problems.append(
            f"missing: {len(missing['start'])} starts, {len(missing['end'])} ends"
        )
    if duplicates:
        problems.append(f"{len(duplicates)} starts/ends arrived more than once")
    if unfinished:
        problems.append(f"{len(unfinished)} calls were never finished by the SDK")
    if unexpected:
        problems.append(f"{len(unexpected)} stored calls the program did not make")
    if not direct and (via["sidecar"] == 0 or via["direct"] > 0):
        problems.append(
            f"the sidecar was not used for every call: {via['sidecar']} through it,"
            f" {via['direct']} direct"
        )
    print()
    if problems:
        for p in problems:
            print(f"demo: FAIL: {p}")
        return 1
    how = "directly (--direct)" if direct else "through the sidecar"
    print(f"demo: OK: {len(made)} calls made, {len(stored)} stored exactly once, {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
