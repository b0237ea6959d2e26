"""Traced calls from multiprocessing children (fork or spawn) and a bare os.fork().

Usage: fork_workers.py PROJECT_ID MODE [--enable]   MODE: fork | spawn | osfork
Prints {"ids": [...]} with the ids of every call made in any process.
Forked children need WEAVE_CLIENT_PARALLELISM=0: weave 0.54's thread pool does
not start new workers in a forked child, so deferred sends would never run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile

import weave


@weave.op
def work(x: int) -> int:
    return x * 3


def child(project: str, k: int, out_dir: str) -> None:
    client = weave.init(project)
    ids = []
    for j in range(10):
        _, call = work.call(k * 100 + j)
        ids.append(call.id)
    client.flush()
    with open(os.path.join(out_dir, f"{os.getpid()}.json"), "w") as f:
        json.dump(ids, f)


def main() -> None:
    project, mode = sys.argv[1], sys.argv[2]
    if "--enable" in sys.argv:
        import weave_sidecar

        weave_sidecar.enable()
    client = weave.init(project)
    out_dir = tempfile.mkdtemp(prefix="wst-fork-")
    ids = []
    for j in range(5):
        _, call = work.call(j)
        ids.append(call.id)

    # weave 0.54's executors do not survive fork: futures pending in the parent
    # at fork time never finish in the child, and the child's weave.init waits
    # for them. Flushing first leaves nothing pending.
    client.flush()
    if mode == "osfork":
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(project, 7, out_dir)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        ctx = multiprocessing.get_context(mode)
        procs = [
            ctx.Process(target=child, args=(project, k, out_dir)) for k in range(3)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0, p.exitcode

    for j in range(5):
        _, call = work.call(1000 + j)
        ids.append(call.id)
    for name in os.listdir(out_dir):
        with open(os.path.join(out_dir, name)) as f:
            ids.extend(json.load(f))
    shutil.rmtree(out_dir)
    client.flush()
    print(json.dumps({"ids": ids}), flush=True)


if __name__ == "__main__":
    main()
