"""Validation of call bodies, the way the trace server checks them.

The real server parses ``/call/start``, ``/call/end`` and ``/call/upsert_batch``
with strict request models: an unknown key in the envelope (``{"start": ...}``,
``{"batch": [...]}``, ``{"mode": ..., "req": ...}``) is an error, while the call
schema inside ignores unknown keys. We check the envelope here and, when
``weave`` is importable, the call itself with the SDK's own validators
(``weave.trace.call_request_validation`` in weave 0.54, the strict
``trace_server_interface`` models in older releases). Without ``weave`` a
plain check of the required fields stands in.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, Callable

_START_REQUIRED: dict[str, type] = {
    "project_id": str,
    "op_name": str,
    "started_at": str,
    "attributes": dict,
    "inputs": dict,
}
_END_REQUIRED: dict[str, type] = {
    "project_id": str,
    "id": str,
    "ended_at": str,
    "summary": dict,
}


class InvalidRequest(ValueError):
    """A request body the trace server would answer with 400."""


_Validator = Callable[[Mapping[str, Any]], None]


@functools.cache
def _sdk_validators() -> tuple[_Validator, _Validator] | None:
    """The SDK's (start, end) request validators, or None without weave."""
    # Importing weave arms its Sentry reporting; a test server must not report.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    try:
        from weave.trace.call_request_validation import (
            validate_call_end,
            validate_call_start,
        )

        return validate_call_start, validate_call_end
    except ImportError:
        pass
    try:  # weave < 0.54: the server's own strict pydantic models.
        from weave.trace_server.trace_server_interface import (  # type: ignore[import-not-found,unused-ignore]
            CallEndReq,
            CallStartReq,
        )
    except ImportError:
        return None

    def start(req: Mapping[str, Any]) -> None:
        CallStartReq.model_validate(req)

    def end(req: Mapping[str, Any]) -> None:
        CallEndReq.model_validate(req)

    return start, end


def sdk_validation_available() -> bool:
    """Whether call bodies are checked with the installed SDK's validators."""
    return _sdk_validators() is not None


def _envelope(obj: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{where}: expected an object, got {type(obj).__name__}")
    extra = sorted(set(obj) - {key})
    if extra:
        raise InvalidRequest(f"{where}: extra inputs are not permitted: {extra}")
    inner = obj.get(key)
    if not isinstance(inner, dict):
        raise InvalidRequest(f"{where}.{key}: field required (an object)")
    return inner


def _plain_check(inner: dict[str, Any], required: dict[str, type], where: str) -> None:
    for name, kind in required.items():
        if name not in inner:
            raise InvalidRequest(f"{where}.{name}: field required")
        if not isinstance(inner[name], kind):
            raise InvalidRequest(f"{where}.{name}: expected {kind.__name__}")


def _sdk_check(req: dict[str, Any], which: int, where: str) -> None:
    validators = _sdk_validators()
    if validators is None:
        return
    try:
        validators[which](req)
    except Exception as exc:  # pydantic.ValidationError, without importing it
        raise InvalidRequest(f"{where}: {exc}") from exc


def check_start(req: Any, where: str = "CallStartReq") -> dict[str, Any]:
    """Return the ``start`` object of a ``CallStartReq`` or raise InvalidRequest."""
    start = _envelope(req, "start", where)
    _plain_check(start, _START_REQUIRED, f"{where}.start")
    for name in ("id", "trace_id", "parent_id"):
        if start.get(name) is not None and not isinstance(start[name], str):
            raise InvalidRequest(f"{where}.start.{name}: expected a string or null")
    _sdk_check(req, 0, where)
    return start


def check_end(req: Any, where: str = "CallEndReq") -> dict[str, Any]:
    """Return the ``end`` object of a ``CallEndReq`` or raise InvalidRequest."""
    end = _envelope(req, "end", where)
    _plain_check(end, _END_REQUIRED, f"{where}.end")
    _sdk_check(req, 1, where)
    return end


def check_batch(body: Any) -> list[tuple[str, dict[str, Any]]]:
    """Return ``[(mode, start_or_end), ...]`` of a ``CallCreateBatchReq``.

    The whole batch is rejected when any item is invalid, as the server does.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("CallCreateBatchReq: expected an object")
    extra = sorted(set(body) - {"batch"})
    if extra:
        raise InvalidRequest(
            f"CallCreateBatchReq: extra inputs are not permitted: {extra}"
        )
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise InvalidRequest("CallCreateBatchReq.batch: field required (a list)")
    items: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(batch):
        where = f"batch[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object")
        extra = sorted(set(item) - {"mode", "req"})
        if extra:
            raise InvalidRequest(f"{where}: extra inputs are not permitted: {extra}")
        mode = item.get("mode")
        if mode == "start":
            items.append((mode, check_start(item.get("req"), f"{where}.req")))
        elif mode == "end":
            items.append((mode, check_end(item.get("req"), f"{where}.req")))
        else:
            raise InvalidRequest(
                f"{where}.mode: expected 'start' or 'end', got {mode!r}"
            )
    return items
