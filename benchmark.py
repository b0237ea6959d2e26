#!/usr/bin/env python3
"""Benchmark Weave tracing with and without the sidecar, side by side.

Usage:
    python benchmark.py --compare                      # every mode, 3 runs, medians
    python benchmark.py --project sidecar-test/bench --ops 1000
    WEAVE_USE_SIDECAR=true python benchmark.py --ops 1000
    python benchmark.py --compare --json bench.json --profile /tmp/profiles

Each run of a mode is a fresh interpreter running ``benchmarks/traced_ops.py``:
the real Weave SDK calling one ``@weave.op`` ``--ops`` times, then ending the way
a script does (the exit path delivers what is queued). The modes differ only in
the SDK's environment:

    direct         the SDK as users get it (weave 0.54: the calls-complete path)
    direct-upsert  WEAVE_USE_CALLS_COMPLETE=false: the SDK's start/end path
                   (/call/upsert_batch), the one the sidecar replaces
    sidecar        WEAVE_USE_SIDECAR=true

By default the backend is the local trace server (``python -m
weave_sidecar.testing``) with ``--latency-ms`` added to every request. With
``--backend URL`` it must be such a server too: the benchmark counts what it
stored through its ``/_test/`` API (and resets it between runs). A run fails,
exit status 1, if any call is missing or duplicated, or if the sidecar mode did
not deliver through the sidecar: a fast wrong answer is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
WORKLOAD = ROOT / "benchmarks" / "traced_ops.py"
DEFAULT_PROJECT = "sidecar-test/bench"  # never entity "wandb": it forces calls-complete
API_KEY = "bench-key-0123456789"
CALL_PATH_PREFIXES = ("/call/", "/calls/complete", "/v2/")
CHILD_TIMEOUT = 600.0

MODES = {
    "direct": {},
    "direct-upsert": {"WEAVE_USE_CALLS_COMPLETE": "false"},
    "sidecar": {"WEAVE_USE_SIDECAR": "true"},
}
TITLES = {
    "direct": "Direct (SDK default path)",
    "direct-upsert": "Direct, upsert path (WEAVE_USE_CALLS_COMPLETE=false)",
    "sidecar": "With Go sidecar (WEAVE_USE_SIDECAR=true)",
}


class BenchmarkError(Exception):
    """A run that produced no valid result; the message says why."""


# The backend ------------------------------------------------------------------


class Backend:
    """The trace server the runs talk to, started here unless --backend is given."""

    def __init__(self, url: str | None, latency_ms: float, workdir: Path) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if url is None:
            url = self._start(latency_ms, workdir)
        self.url = url.rstrip("/")
        self.latency_ms = latency_ms if self._proc is not None else None
        sys.path.insert(0, str(ROOT / "python"))
        from weave_sidecar.testing import ControlClient

        self.control = ControlClient(self.url, timeout=60)
        try:
            self.control.health()
        except Exception as exc:
            raise BenchmarkError(
                f"the backend at {self.url} does not answer the local trace server's "
                f"/_test/ API ({exc}); the benchmark needs it to count stored calls: "
                "run `python -m weave_sidecar.testing --latency-ms N` and pass its URL"
            ) from None

    def _start(self, latency_ms: float, workdir: Path) -> str:
        ready = workdir / "server.ready"
        log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed with the proc)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "weave_sidecar.testing",
                "--latency-ms",
                str(latency_ms),
                "--ready-file",
                str(ready),
            ],
            env={**os.environ, "PYTHONPATH": _pythonpath()},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(
                    "the local trace server did not start; its log: "
                    + (workdir / "server.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        return ready.read_text().strip()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _pythonpath() -> str:
    parts = [str(ROOT / "python"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


# One run of one mode ----------------------------------------------------------


@dataclass
class Settings:
    project: str
    ops: int
    threads: int
    payload_bytes: int
    warmup: int
    latency_ms: float | None


@dataclass
class RunResult:
    mode: str
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def _child_env(
    backend: Backend, settings: Settings, mode: str, home: Path
) -> dict[str, str]:
    from weave_sidecar.testing import sdk_env  # on sys.path since Backend started

    # WEAVE_SIDECAR_* pass through (WEAVE_SIDECAR_BIN, daemon settings).
    env = sdk_env(backend.url, home, API_KEY, keep_prefixes=("WEAVE_SIDECAR_",))
    env = {k: v for k, v in env.items() if not k.startswith("BENCH_")}
    env.update(
        PYTHONPATH=_pythonpath(),
        # A private sidecar per process, never a shared one left running here.
        WEAVE_SIDECAR_SOCKET=str(home / "no-shared-sidecar.sock"),
        BENCH_PROJECT=settings.project,
        BENCH_OPS=str(settings.ops),
        BENCH_THREADS=str(settings.threads),
        BENCH_PAYLOAD_BYTES=str(settings.payload_bytes),
        BENCH_WARMUP=str(settings.warmup),
    )
    env.update(MODES[mode])
    return env


def run_mode(
    backend: Backend,
    settings: Settings,
    mode: str,
    workdir: Path,
    profile: Path | None = None,
    workload: Path = WORKLOAD,
) -> RunResult:
    """Run the workload once in mode, in a fresh interpreter; check and measure it."""
    home = Path(tempfile.mkdtemp(prefix="h", dir=workdir))
    result_path = home / "result.json"
    backend.control.reset()
    cmd = [sys.executable, str(workload), str(result_path)]
    if profile is not None:
        cmd = [
            sys.executable, "-m", "pyinstrument", "--renderer", "text",
            "--show-all", "--outfile", str(profile), *cmd[1:],
        ]  # fmt: skip
    with open(home / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            env=_child_env(backend, settings, mode, home),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        status, rusage = _wait4(proc, CHILD_TIMEOUT)
        exited_at = time.monotonic()
    log = (home / "stderr.log").read_text(errors="replace")
    if status != 0 or not result_path.exists():
        raise BenchmarkError(
            f"{mode}: the traced program exited with status {status}; "
            f"its stderr (last lines):\n{log[-3000:]}"
        )
    child = json.loads(result_path.read_text())
    if not child.get("ok"):
        raise BenchmarkError(
            f"{mode}: the traced program did not finish its ops:\n{log[-3000:]}"
        )
    backend_counts = _check_backend(backend, settings, mode, child)
    shutil.rmtree(home, ignore_errors=True)

    lat = sorted(child["latencies_s"])
    calls = len(child["created"])
    cpu = child["cpu_self_s"] - child["cpu_at_first_op"]
    metrics = {
        "ops": float(settings.ops),
        "total_s": child["loop_s"],
        "throughput_ops_s": settings.ops / child["loop_s"],
        "latency_avg_ms": 1000 * statistics.fmean(lat),
        "latency_p50_ms": 1000 * _percentile(lat, 50),
        "latency_p99_ms": 1000 * _percentile(lat, 99),
        "last_op_to_exit_s": exited_at - child["last_op_at"],
        "end_to_end_s": exited_at - child["first_op_at"],
        "python_cpu_s": cpu,
        "python_cpu_us_per_call": 1e6 * cpu / settings.ops,
        "sidecar_cpu_s": child["cpu_children_s"],
        "process_cpu_s": rusage.ru_utime + rusage.ru_stime,
        **backend_counts,
    }
    metrics["exit_hooks_s"] = child["exit_hook_at"] - child["last_op_at"]
    metrics["exit_teardown_s"] = exited_at - child["exit_hook_at"]
    metrics["end_to_end_ops_s"] = settings.ops / metrics["end_to_end_s"]
    metrics["call_requests_per_1000_calls"] = 1000 * metrics["call_requests"] / calls
    hooks = sorted(child.get("exit_hooks") or [], key=lambda h: -h[2])
    details = {
        "call_processor": child.get("call_processor"),
        "sidecar": child.get("sidecar"),
        "slowest_exit_hooks": [[name, round(secs, 4)] for name, _, secs in hooks[:3]],
    }
    return RunResult(mode, metrics, details)


def _wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    """Reap proc and return (exit status, its rusage); kill it after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BenchmarkError(f"the traced program ran longer than {timeout:.0f} s")
        time.sleep(0.002)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _check_backend(
    backend: Backend, settings: Settings, mode: str, child: dict[str, Any]
) -> dict[str, float]:
    """Count what the backend got for this run; raise if a call is lost or doubled."""
    created: list[str] = child["created"]
    expected = settings.ops + settings.warmup
    if len(created) != expected or len(set(created)) != expected:
        raise BenchmarkError(
            f"{mode}: the client created {len(created)} calls "
            f"({len(set(created))} distinct ids), expected {expected}"
        )
    missing = backend.control.missing(created)
    duplicates = [
        d for d in backend.control.duplicates() if d["project_id"] == settings.project
    ]
    stored = [
        c
        for c in backend.control.calls(settings.project)
        if c["_has_start"] and c["_has_end"]
    ]
    problems = []
    if missing["start"] or missing["end"]:
        problems.append(
            f"{len(missing['start'])} call starts and {len(missing['end'])} call ends "
            f"never arrived (first: {(missing['start'] + missing['end'])[:3]})"
        )
    if duplicates:
        problems.append(f"{len(duplicates)} call starts/ends arrived twice or more")
    if len(stored) != expected:
        problems.append(
            f"the backend stored {len(stored)} complete calls, not {expected}"
        )

    requests = backend.control.requests()
    carrying = [r for r in requests if r["calls"] > 0]
    via_sidecar = sum(
        r["calls"] for r in carrying if r["user_agent"].startswith("weave-sidecar/")
    )
    via_sdk = sum(r["calls"] for r in carrying) - via_sidecar
    if mode == "sidecar" and via_sdk:
        problems.append(
            f"{via_sdk} call starts/ends reached the backend without the sidecar "
            "(the client fell back to HTTP; see the traced program's log)"
        )
    if mode != "sidecar" and via_sidecar:
        problems.append(f"{via_sidecar} call starts/ends came through a sidecar")
    if problems:
        raise BenchmarkError(f"{mode}: " + "; ".join(problems))
    paths = sorted({r["path"] for r in carrying})
    return {
        "http_requests": float(len(requests)),
        "call_requests": float(len(carrying)),
        "calls_stored": float(len(stored)),
        "calls_expected": float(expected),
        "_call_paths": paths,  # type: ignore[dict-item]
    }


# Report -----------------------------------------------------------------------

RATIOS = {
    # name: (metric, higher_is_better_for_sidecar)
    "throughput": ("throughput_ops_s", True),
    "end_to_end_throughput": ("end_to_end_ops_s", True),
    "latency_avg": ("latency_avg_ms", False),
    "last_op_to_exit": ("last_op_to_exit_s", False),
    "python_cpu_per_call": ("python_cpu_us_per_call", False),
    "call_requests": ("call_requests", False),
}


def ratio(direct: dict[str, float], sidecar: dict[str, float], name: str) -> float:
    """How many times better the sidecar is on name (>1: sidecar better)."""
    metric, higher = RATIOS[name]
    a, b = direct[metric], sidecar[metric]
    num, den = (b, a) if higher else (a, b)
    return num / den if den else float("inf")


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    keys = [k for k in runs[0].metrics if not k.startswith("_")]
    medians = {k: statistics.median(r.metrics[k] for r in runs) for k in keys}
    return {
        **medians,
        "call_paths": runs[0].metrics["_call_paths"],
        "call_processor": runs[0].details.get("call_processor"),
        "slowest_exit_hooks": [r.details.get("slowest_exit_hooks") for r in runs],
        "runs": [
            {k: v for k, v in r.metrics.items() if not k.startswith("_")} for r in runs
        ],
    }


def speedup(by_run: list[dict[str, RunResult]], base: str) -> dict[str, Any]:
    per_run = [
        {
            name: ratio(run[base].metrics, run["sidecar"].metrics, name)
            for name in RATIOS
        }
        for run in by_run
        if base in run and "sidecar" in run
    ]
    out: dict[str, Any] = {
        name: statistics.median(r[name] for r in per_run) for name in RATIOS
    }
    out["baseline"] = base
    out["per_run"] = per_run
    out["note"] = (
        "ratios > 1 favour the sidecar; each is taken within one run "
        "(both modes back to back), then the median over runs"
    )
    return out


def format_block(mode: str, s: dict[str, Any], settings: Settings, runs: int) -> str:
    title = TITLES[mode]
    hooks = (s["slowest_exit_hooks"][0] or [])[:2]
    backend = (
        f"{settings.latency_ms:g} ms backend"
        if settings.latency_ms is not None
        else "external backend"
    )
    lines = [
        "",
        title,
        "=" * len(title),
        f"  Operations:      {settings.ops:,} ({settings.threads} thread(s), "
        f"{settings.payload_bytes}-byte payload, {backend}; median of {runs} run(s))",
        f"  Total time:      {s['total_s']:.3f} s (first op to last op returned)",
        f"  Throughput:      {s['throughput_ops_s']:,.0f} ops/sec",
        f"  Avg latency:     {s['latency_avg_ms']:.3f} ms",
        f"  p50 latency:     {s['latency_p50_ms']:.3f} ms",
        f"  p99 latency:     {s['latency_p99_ms']:.3f} ms",
        f"  Last op to exit: {s['last_op_to_exit_s']:.3f} s (flush and exit included)",
        f"                   = exit hooks {s['exit_hooks_s']:.3f} s (run 1 slowest: "
        + ", ".join(f"{n.rsplit('.', 1)[-1]} {t:.2f} s" for n, t in hooks)
        + f") + interpreter teardown {s['exit_teardown_s']:.3f} s",
        f"  End to end:      {s['end_to_end_s']:.3f} s "
        f"({s['end_to_end_ops_s']:,.0f} ops/sec, first op to process exit)",
        f"  Python CPU:      {s['python_cpu_s']:.3f} s "
        f"({s['python_cpu_us_per_call']:,.0f} us per call, first op to exit)",
        f"  Sidecar CPU:     {s['sidecar_cpu_s']:.3f} s",
        f"  HTTP requests:   {s['http_requests']:.0f} in all; {s['call_requests']:.0f} "
        f"carrying calls ({s['call_requests_per_1000_calls']:.1f} per 1,000 calls)"
        f" to {', '.join(s['call_paths'])}",
        f"  Calls stored:    {s['calls_stored']:,.0f} of {s['calls_expected']:,.0f} "
        "(none missing, none duplicated)",
    ]
    return "\n".join(lines)


def format_comparison(results: dict[str, Any]) -> str:
    out = ["", "=" * 60, "COMPARISON", "=" * 60]
    for key in ("speedup", "speedup_vs_direct_upsert"):
        sp = results.get(key)
        if sp is None:
            continue
        base = sp["baseline"]
        d, s = results[base.replace("-", "_")], results["sidecar"]
        out += [
            "",
            f"Sidecar vs {TITLES[base]}",
            f"  Throughput:       {d['throughput_ops_s']:>10,.0f} -> "
            f"{s['throughput_ops_s']:>10,.0f} ops/sec   {sp['throughput']:.2f}x"
            f"  (goal >= 5x: {_verdict(sp['throughput'] >= 5)})",
            f"  Avg latency:      {d['latency_avg_ms']:>10.3f} -> "
            f"{s['latency_avg_ms']:>10.3f} ms        {sp['latency_avg']:.2f}x",
            f"  Last op to exit:  {d['last_op_to_exit_s']:>10.3f} -> "
            f"{s['last_op_to_exit_s']:>10.3f} s         {sp['last_op_to_exit']:.2f}x"
            f"  (goal >= 5x: {_verdict(sp['last_op_to_exit'] >= 5)})",
            f"  End to end:       {d['end_to_end_ops_s']:>10,.0f} -> "
            f"{s['end_to_end_ops_s']:>10,.0f} ops/sec   "
            f"{sp['end_to_end_throughput']:.2f}x",
            f"  Python CPU/call:  {d['python_cpu_us_per_call']:>10,.0f} -> "
            f"{s['python_cpu_us_per_call']:>10,.0f} us        "
            f"{sp['python_cpu_per_call']:.2f}x"
            f"  (goal >= 1x: {_verdict(sp['python_cpu_per_call'] >= 1)})",
            f"  Call requests:    {d['call_requests']:>10.0f} -> "
            f"{s['call_requests']:>10.0f}",
        ]
    s = results.get("sidecar")
    if s is not None:
        per_k = s["call_requests_per_1000_calls"]
        out.append(
            f"\nSidecar HTTP requests per 1,000 calls: {per_k:.1f}"
            f"  (goal <= 2: {_verdict(per_k <= 2)})"
        )
    out.append(
        "\nRatios > 1 favour the sidecar; each is the median over runs of the "
        "ratio within one run."
    )
    return "\n".join(out)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            ]
        if names:
            cpu = names[0]
    except OSError:
        pass
    import weave  # noqa: F401 (imported for its version only)

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "weave": getattr(sys.modules["weave"], "__version__", "?"),
    }


# Main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark Weave tracing with and without the weave-sidecar."
    )
    p.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"entity/project to trace into (default {DEFAULT_PROJECT})",
    )
    p.add_argument(
        "--ops", type=int, default=1000, help="traced calls per run (default 1000)"
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run every mode (direct, direct-upsert, sidecar) and compare; without it "
        "only the mode WEAVE_USE_SIDECAR selects runs",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="URL of a running local trace server (python -m weave_sidecar.testing); "
        "default: start one with --latency-ms",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="latency the started trace server adds to every request (default 50)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="threads calling the op (default 1)"
    )
    p.add_argument(
        "--payload-bytes",
        type=int,
        default=256,
        help="size of the string argument each call carries (default 256)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs per mode; medians reported (default 3)",
    )
    p.add_argument(
        "--warmup", type=int, default=10, help="untimed calls before the timed ones"
    )
    p.add_argument(
        "--modes", default=None, help="comma-separated subset of " + ",".join(MODES)
    )
    p.add_argument(
        "--json", default=None, metavar="PATH", help="write every number here"
    )
    p.add_argument(
        "--workload",
        default=str(WORKLOAD),
        help="the traced program to run (default benchmarks/traced_ops.py; for "
        "experiments with a patched copy)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="after measuring, run each mode once more under pyinstrument and write "
        "DIR/<mode>.txt (those runs are not timed)",
    )
    args = p.parse_args(argv)
    if args.ops < 1 or args.threads < 1 or args.runs < 1 or args.payload_bytes < 0:
        p.error("--ops, --threads and --runs must be >= 1, --payload-bytes >= 0")
    if args.project.split("/", 1)[0] == "wandb":
        p.error("entity 'wandb' is forced into the calls-complete mode; use another")
    if "/" not in args.project:
        p.error("--project must be entity/project")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            print(
                f"unknown mode(s) {unknown}; choose from {list(MODES)}", file=sys.stderr
            )
            return 2
    elif args.compare:
        modes = list(MODES)
    else:
        use = os.environ.get("WEAVE_USE_SIDECAR", "").strip().lower()
        modes = ["sidecar" if use in ("1", "true", "yes", "on") else "direct"]

    workdir = Path(tempfile.mkdtemp(prefix="wsbench-", dir="/tmp"))
    backend = None
    try:
        backend = Backend(args.backend, args.latency_ms, workdir)
        settings = Settings(
            project=args.project,
            ops=args.ops,
            threads=args.threads,
            payload_bytes=args.payload_bytes,
            warmup=args.warmup,
            latency_ms=backend.latency_ms,
        )
        print("Running benchmark" + (" comparison..." if len(modes) > 1 else "..."))
        print(f"Project:    {settings.project}")
        print(
            f"Operations: {settings.ops:,} x {args.runs} run(s); "
            f"modes: {', '.join(modes)}"
        )
        print(f"Backend:    {backend.url}" + (
            f" (local trace server, +{settings.latency_ms:g} ms per request)"
            if settings.latency_ms is not None else ""
        ))  # fmt: skip
        by_run: list[dict[str, RunResult]] = []
        for n in range(args.runs):
            run: dict[str, RunResult] = {}
            for mode in modes:
                r = run_mode(
                    backend, settings, mode, workdir, workload=Path(args.workload)
                )
                run[mode] = r
                print(
                    f"  run {n + 1}/{args.runs} {mode:<13} "
                    f"{r.metrics['throughput_ops_s']:>8,.0f} ops/s, "
                    f"exit +{r.metrics['last_op_to_exit_s']:.2f} s, "
                    f"{r.metrics['calls_stored']:,.0f} calls stored",
                    flush=True,
                )
            by_run.append(run)

        results: dict[str, Any] = {
            "parameters": {**vars(settings), "runs": args.runs, "modes": modes},
            "machine": machine_info(),
        }
        for mode in modes:
            results[mode.replace("-", "_")] = summarize([run[mode] for run in by_run])
        if "sidecar" in modes and "direct" in modes:
            results["speedup"] = speedup(by_run, "direct")
        if "sidecar" in modes and "direct-upsert" in modes:
            results["speedup_vs_direct_upsert"] = speedup(by_run, "direct-upsert")
        for mode in modes:
            print(
                format_block(mode, results[mode.replace("-", "_")], settings, args.runs)
            )
        if "speedup" in results or "speedup_vs_direct_upsert" in results:
            print(format_comparison(results))

        if args.profile:
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            for mode in modes:
                run_mode(
                    backend,
                    settings,
                    mode,
                    workdir,
                    profile=out / f"{mode}.txt",
                    workload=Path(args.workload),
                )
                print(f"profile: {out / f'{mode}.txt'}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
            print(f"\nAll numbers: {args.json}")
        return 0
    except BenchmarkError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
