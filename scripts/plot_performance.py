#!/usr/bin/env python3
"""Chart throughput and time-to-exit against --ops for every benchmark mode.

Usage:
    python scripts/plot_performance.py                       # sweep, then plot
    python scripts/plot_performance.py --ops 100,1000 --runs 3
    python scripts/plot_performance.py --from benchmarks/results/sweep.json

The sweep runs ``benchmark.py --compare --json ...`` once per --ops value and
keeps every result in ``benchmarks/results/sweep.json``, so the chart can be
redrawn without measuring again. The chart goes to ``docs/performance.png``.
Needs matplotlib (requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEP_JSON = ROOT / "benchmarks" / "results" / "sweep.json"
CHART = ROOT / "docs" / "performance.png"
STYLES = {
    "direct": ("Direct (SDK default, calls-complete)", "tab:blue", "o"),
    "direct_upsert": ("Direct, upsert path", "tab:orange", "s"),
    "sidecar": ("Sidecar", "tab:green", "^"),
}


def sweep(ops_values: list[int], runs: int, extra: list[str]) -> list[dict[str, Any]]:
    results = []
    for ops in ops_values:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                sys.executable,
                str(ROOT / "benchmark.py"),
                "--compare",
                "--ops",
                str(ops),
                "--runs",
                str(runs),
                "--json",
                out.name,
                *extra,
            ]
            print("+", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            results.append(json.loads(Path(out.name).read_text()))
    return results


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, (label, color, marker) in STYLES.items():
        points = sorted((r["parameters"]["ops"], r[mode]) for r in results if mode in r)
        if not points:
            continue
        xs = [ops for ops, _ in points]
        left.plot(
            xs,
            [m["throughput_ops_s"] for _, m in points],
            marker=marker,
            color=color,
            label=label,
        )
        right.plot(
            xs,
            [m["last_op_to_exit_s"] for _, m in points],
            marker=marker,
            color=color,
            label=label,
        )
    p = results[0]["parameters"]
    latency = p.get("latency_ms")
    note = (
        f"{p['threads']} thread(s), {p['payload_bytes']}-byte payload, "
        f"{f'{latency:g} ms' if latency is not None else 'external'} backend, "
        f"median of {p['runs']} run(s)"
    )
    for ax, title, unit in (
        (left, "Throughput (first op to last op)", "ops/s"),
        (right, "Last op to process exit (flush included)", "seconds"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("--ops")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.suptitle(f"weave-sidecar benchmark ({note})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default="100,300,1000,3000", help="comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per point")
    parser.add_argument("--from", dest="source", default=None, help="plot this sweep")
    parser.add_argument("--out", default=str(CHART), help="PNG to write")
    args, extra = parser.parse_known_args(argv)
    if args.source:
        results = json.loads(Path(args.source).read_text())
    else:
        ops_values = [int(x) for x in args.ops.split(",") if x.strip()]
        results = sweep(ops_values, args.runs, extra)
        SWEEP_JSON.parent.mkdir(parents=True, exist_ok=True)
        SWEEP_JSON.write_text(json.dumps(results, indent=1))
        print(f"sweep: {SWEEP_JSON}")
    plot(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
