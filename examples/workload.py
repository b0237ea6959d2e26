"""The demo's traced program: a real Weave workload, run by examples/demo.py.

Usage: python examples/workload.py ENTITY/PROJECT RESULT_JSON

It records the id of every call the Weave client creates and finishes (by
wrapping ``WeaveClient.create_call`` and ``finish_call``), so the count of calls
made does not depend on what the server stored, and writes them to RESULT_JSON.
Nothing in the workload itself refers to the sidecar.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import weave
from weave.trace.weave_client import WeaveClient

_lock = threading.Lock()
_created: list[str] = []
_finished: list[str] = []


def _record_calls() -> None:
    create, finish = WeaveClient.create_call, WeaveClient.finish_call

    def create_call(self: WeaveClient, *args: Any, **kwargs: Any) -> Any:
        call = create(self, *args, **kwargs)
        with _lock:
            _created.append(call.id)
        return call

    def finish_call(self: WeaveClient, call: Any, *args: Any, **kwargs: Any) -> Any:
        result = finish(self, call, *args, **kwargs)
        with _lock:
            _finished.append(call.id)
        return result

    WeaveClient.create_call = create_call  # type: ignore[method-assign]
    WeaveClient.finish_call = finish_call  # type: ignore[method-assign]


@weave.op
def normalize(text: str) -> str:
    return " ".join(text.lower().split())


@weave.op
def lookup(word: str) -> str:
    capitals = {"france": "paris", "japan": "tokyo", "peru": "lima"}
    return capitals.get(word, "unknown")


@weave.op
def flaky_tool(question: str) -> str:
    if "peru" in question:
        raise RuntimeError("the tool is down for peru")
    return "ok"


class CapitalModel(weave.Model):
    prefix: str = "capital of"

    @weave.op
    def predict(self, question: str) -> str:
        q = normalize(question)
        try:
            flaky_tool(q)
        except RuntimeError:
            pass  # the op that raises: its call ends with the exception
        return lookup(q.replace(self.prefix, "").strip())


@weave.op
def exact_match(expected: str, output: str) -> dict[str, bool]:
    return {"correct": expected == output}


class LengthScorer(weave.Scorer):
    @weave.op
    def score(self, output: str) -> dict[str, int]:
        return {"length": len(output)}


@weave.op
def background_task(i: int) -> int:
    return len(normalize(f"  Task   {i} "))


@weave.op
async def summarize(numbers: list[int]) -> int:
    await asyncio.sleep(0)
    return sum(numbers)


def main() -> int:
    project, result_path = sys.argv[1], sys.argv[2]
    _record_calls()
    client = weave.init(project)

    dataset = [
        {"question": "Capital of France", "expected": "paris"},
        {"question": "capital of  Japan", "expected": "tokyo"},
        {"question": "capital of Peru", "expected": "lima"},
        {"question": "capital of Atlantis", "expected": "unknown"},
    ]
    evaluation = weave.Evaluation(
        name="capitals", dataset=dataset, scorers=[exact_match, LengthScorer()]
    )
    summary = asyncio.run(evaluation.evaluate(CapitalModel()))

    with ThreadPoolExecutor(max_workers=4) as pool:
        lengths = list(pool.map(background_task, range(8)))
    asyncio.run(summarize(lengths))

    client.flush()
    with _lock:
        result = {
            "created": list(_created),
            "finished": list(_finished),
            "summary": summary,
        }
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)
    print(f"workload: made {len(result['created'])} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
