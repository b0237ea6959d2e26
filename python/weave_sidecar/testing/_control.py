"""A client for the trace server's control API, for use from another process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ControlClient:
    """Query and steer a trace server at url through ``/_test/...``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"trace server control {path} answered {exc.code}: {exc.read()!r}"
            ) from None

    def health(self) -> bool:
        return bool(self._call("/_test/health").get("ok"))

    def calls(self, project_id: str | None = None) -> list[dict[str, Any]]:
        query = "" if project_id is None else "?project_id=" + project_id
        result: list[dict[str, Any]] = self._call("/_test/calls" + query)["calls"]
        return result

    def receipts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("/_test/receipts")["receipts"]
        return result

    def duplicates(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("/_test/duplicates")["duplicates"]
        return result

    def missing(self, ids: list[str]) -> dict[str, list[str]]:
        result: dict[str, list[str]] = self._call("/_test/missing", {"ids": ids})[
            "missing"
        ]
        return result

    def request_counts(self) -> dict[str, int]:
        result: dict[str, int] = self._call("/_test/request_counts")["counts"]
        return result

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        query = "" if path is None else "?path=" + path
        result: list[dict[str, Any]] = self._call("/_test/requests" + query)["requests"]
        return result

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("/_test/summary")
        return result

    def reset(self, everything: bool = False) -> None:
        self._call("/_test/reset", {"everything": everything})

    def faults(self, **spec: Any) -> dict[str, Any]:
        """Apply a fault spec (see ``Faults.apply``); no arguments: read them."""
        result: dict[str, Any] = self._call("/_test/faults", spec if spec else None)
        return result

    def release(self) -> int:
        return int(self._call("/_test/release", {})["released"])
