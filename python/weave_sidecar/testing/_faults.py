"""Fault injection for the local trace server.

Every control is thread-safe and takes effect on the next request. Paths are
the server's request paths (``/call/upsert_batch``); control requests under
``/_test/`` are never faulted.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Response:
    """A scripted answer: a status, an optional Retry-After and JSON body.

    A status below 300 means "serve this request normally".
    """

    status: int
    retry_after: str | None = None
    body: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Response:
        if isinstance(obj, int):
            return cls(obj)
        if not isinstance(obj, dict) or not isinstance(obj.get("status"), int):
            raise ValueError(f"a scripted response is a status or an object: {obj!r}")
        retry_after = obj.get("retry_after")
        return cls(
            obj["status"],
            None if retry_after is None else str(retry_after),
            obj.get("body"),
        )


@dataclasses.dataclass
class _Hang:
    path: str
    remaining: int | None  # None: every request on the path
    then: int | None  # None: serve normally once released
    released: threading.Event = dataclasses.field(default_factory=threading.Event)
    held: int = 0


class Faults:
    """What the server does wrong, set by tests (and /_test/faults)."""

    def __init__(self, latency_ms: float = 0, hang_timeout: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._default_latency_ms = latency_ms
        self._hang_timeout = hang_timeout
        # Guarded by _lock:
        self._latency_ms = latency_ms
        self._scripts: dict[str, collections.deque[Response]] = {}
        self._outage_until: float | None = None
        self._outage = Response(503)
        self._hangs: list[_Hang] = []
        self._reject_ids: set[str] = set()
        self._max_body_bytes: int | None = None
        self._complete_projects: set[str] = set()

    # Setters -----------------------------------------------------------------

    @property
    def latency_ms(self) -> float:
        with self._lock:
            return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("latency_ms must be >= 0")
        with self._lock:
            self._latency_ms = value

    def script(self, path: str, responses: list[Any]) -> None:
        """Answer the next requests on path with these (statuses or Responses)."""
        parsed = [
            r if isinstance(r, Response) else Response.from_json(r) for r in responses
        ]
        with self._lock:
            self._scripts.setdefault(path, collections.deque()).extend(parsed)

    def fail_next(
        self,
        path: str,
        count: int,
        status: int = 503,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next count requests on path with status."""
        self.script(path, [Response(status, retry_after, body)] * count)

    def outage(
        self,
        seconds: float | None = None,
        status: int = 503,
        retry_after: str | None = None,
    ) -> None:
        """Answer every request with status for seconds (None: until cleared)."""
        with self._lock:
            self._outage = Response(status, retry_after, {"reason": "outage"})
            self._outage_until = (
                float("inf") if seconds is None else time.monotonic() + seconds
            )

    def clear_outage(self) -> None:
        with self._lock:
            self._outage_until = None

    def hang(
        self, path: str, count: int | None = None, then: int | None = None
    ) -> None:
        """Hold the next count requests on path (None: all) until release().

        A held request is served normally once released, or answered with the
        status then if it is set. After hang_timeout seconds it is released
        anyway.
        """
        with self._lock:
            self._hangs.append(_Hang(path, count, then))

    def release(self) -> int:
        """Release every held request and stop holding new ones; return how many."""
        with self._lock:
            hangs, self._hangs = self._hangs, []
        for h in hangs:
            h.released.set()
        return sum(h.held for h in hangs)

    def reject_call_ids(self, ids: list[str]) -> None:
        """Answer 400 to any call request that carries one of these call ids."""
        with self._lock:
            self._reject_ids.update(ids)

    def max_body_bytes(self, limit: int | None) -> None:
        """Answer 413 to any request whose body is larger (None: no limit)."""
        with self._lock:
            self._max_body_bytes = limit

    def require_calls_complete(self, project_id: str) -> None:
        """Answer CALLS_COMPLETE_MODE_REQUIRED to legacy call writes for project."""
        with self._lock:
            self._complete_projects.add(project_id)

    def clear(self) -> None:
        """Remove every fault; release held requests."""
        self.release()
        with self._lock:
            self._latency_ms = self._default_latency_ms
            self._scripts.clear()
            self._outage_until = None
            self._reject_ids.clear()
            self._max_body_bytes = None
            self._complete_projects.clear()

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec (the body of POST /_test/faults)."""
        known = {
            "clear", "latency_ms", "script", "fail_next", "outage", "outage_seconds",
            "hang", "release", "reject_call_ids", "max_body_bytes",
            "calls_complete_projects",
        }  # fmt: skip
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {unknown}")
        if spec.get("clear"):
            self.clear()
        if "latency_ms" in spec:
            self.latency_ms = float(spec["latency_ms"])
        for path, responses in (spec.get("script") or {}).items():
            self.script(path, list(responses))
        if "fail_next" in spec:
            f = spec["fail_next"]
            self.fail_next(
                f["path"], int(f["count"]), int(f.get("status", 503)),
                f.get("retry_after"), f.get("body"),
            )  # fmt: skip
        if spec.get("outage") is False:
            self.clear_outage()
        elif spec.get("outage") is True or "outage_seconds" in spec:
            self.outage(spec.get("outage_seconds"))
        if "hang" in spec:
            h = spec["hang"]
            self.hang(h["path"], h.get("count"), h.get("then"))
        if spec.get("release"):
            self.release()
        if "reject_call_ids" in spec:
            self.reject_call_ids(list(spec["reject_call_ids"]))
        if "max_body_bytes" in spec:
            self.max_body_bytes(spec["max_body_bytes"])
        for project in spec.get("calls_complete_projects") or []:
            self.require_calls_complete(project)

    def state(self) -> dict[str, Any]:
        """A JSON description of the active faults."""
        with self._lock:
            now = time.monotonic()
            return {
                "latency_ms": self._latency_ms,
                "script": {
                    p: [r.to_json() for r in q] for p, q in self._scripts.items() if q
                },
                "outage": self._outage_until is not None and now < self._outage_until,
                "hangs": [
                    {"path": h.path, "remaining": h.remaining, "held": h.held}
                    for h in self._hangs
                ],
                "reject_call_ids": sorted(self._reject_ids),
                "max_body_bytes": self._max_body_bytes,
                "calls_complete_projects": sorted(self._complete_projects),
            }  # fmt: skip

    # Used by the server -------------------------------------------------------

    def before(self, path: str, body_len: int) -> Response | None:
        """The fault answer for a request before it is handled, if any.

        Sleeps for the latency and waits out hangs on the calling thread.
        """
        with self._lock:
            latency = self._latency_ms
        if latency > 0:
            time.sleep(latency / 1000)

        with self._lock:
            if self._outage_until is not None:
                if time.monotonic() < self._outage_until:
                    return self._outage
                self._outage_until = None
            if self._max_body_bytes is not None and body_len > self._max_body_bytes:
                return Response(
                    413,
                    body={"reason": f"request body of {body_len} bytes is too large"},
                )
            # An exhausted hang stays listed so release() still frees its requests.
            hang = next(
                (
                    h
                    for h in self._hangs
                    if h.path == path and (h.remaining is None or h.remaining > 0)
                ),
                None,
            )
            if hang is not None:
                hang.held += 1
                if hang.remaining is not None:
                    hang.remaining -= 1
            script = self._scripts.get(path)
            scripted = script.popleft() if script else None

        if hang is not None:
            hang.released.wait(self._hang_timeout)
            if hang.then is not None:
                return Response(hang.then, body={"reason": "held, then failed"})
        if scripted is not None and scripted.status >= 300:
            return scripted
        return None

    def rejected_id(self, ids: list[str]) -> str | None:
        with self._lock:
            return next((i for i in ids if i in self._reject_ids), None)

    def needs_calls_complete(self, project_ids: list[str]) -> str | None:
        with self._lock:
            return next((p for p in project_ids if p in self._complete_projects), None)
