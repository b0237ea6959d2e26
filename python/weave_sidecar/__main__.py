"""``python -m weave_sidecar``: run the sidecar in the foreground.

Arguments go to the binary unchanged (see ``--help``). ``--backend``
defaults to the trace server URL the Weave SDK would use: WF_TRACE_SERVER_URL,
else derived from WANDB_PUBLIC_BASE_URL / WANDB_BASE_URL, else
https://trace.wandb.ai. On POSIX the binary replaces this process, so its
exit code and signals are the process's own.

``python -m weave_sidecar status --socket PATH`` runs the binary's ``status``
command: it prints the counters of a running sidecar and exits 1 when none
answers on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ._exceptions import SidecarNotFoundError
from ._find import find_sidecar_bin

DEFAULT_TRACE_URL = "https://trace.wandb.ai"
DEFAULT_BASE_URL = "https://api.wandb.ai"


def default_backend() -> str:
    """The trace server URL weave 0.54 derives (weave/trace/env.py), without weave."""
    explicit = os.environ.get("WF_TRACE_SERVER_URL")
    if explicit:
        return explicit
    base = os.environ.get("WANDB_PUBLIC_BASE_URL", "").rstrip("/")
    if not base:
        base = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    if base == DEFAULT_BASE_URL:
        return DEFAULT_TRACE_URL
    return base + "/traces"


def _has_backend(args: list[str]) -> bool:
    if os.environ.get("WEAVE_SIDECAR_BACKEND"):
        return True
    return any(
        a in ("--backend", "-backend") or a.startswith(("--backend=", "-backend="))
        for a in args
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        binary = find_sidecar_bin()
    except SidecarNotFoundError as exc:
        print(f"python -m weave_sidecar: {exc}", file=sys.stderr)
        return 1
    if args[:1] == ["status"]:
        return _run(binary, args)
    asks_info = any(
        a in ("-h", "-help", "--help", "-version", "--version") for a in args
    )
    if asks_info and any(a in ("-h", "-help", "--help") for a in args):
        print(
            "python -m weave_sidecar runs the bundled weave-sidecar "
            f"({binary}); --backend defaults to {default_backend()}\n",
            flush=True,
        )
    if not asks_info and not _has_backend(args):
        args = ["--backend", default_backend(), *args]
    return _run(binary, args)


def _run(binary: str, args: list[str]) -> int:
    if sys.platform != "win32":
        os.execv(binary, [binary, *args])
    return subprocess.call([binary, *args])


if __name__ == "__main__":
    sys.exit(main())
