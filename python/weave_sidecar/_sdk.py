"""Weave SDK integration: call_start/call_end through the sidecar.

Supported: ``weave>=0.54,<0.55`` (tested with 0.54.0).

Integration point: the server that ``weave.trace.weave_init.init_weave_get_server``
returns, a ``RemoteHTTPTraceServer`` whose ``call_processor`` is the SDK's
``AsyncBatchProcessor``. ``WeaveClient`` enqueues call starts straight onto
that processor (``enqueue_start``) and ``RemoteHTTPTraceServer.call_end``
enqueues ends onto it (``enqueue``), so we replace it with
`SidecarCallProcessor`, which sends each item to the sidecar and keeps the
SDK's processor as the direct path. Because the server still has a
``call_processor``, ``client.flush()`` keeps working: the SDK calls
``stop_accepting_new_work_and_flush_queue()`` on it, which here waits for the
sidecar's delivery and then drains the direct path.

weave 0.54 defaults to the calls-complete write path (``/v2/.../calls/complete``),
which the sidecar does not speak; attaching switches a fresh server back to the
SDK's start/end path (what ``WEAVE_USE_CALLS_COMPLETE=false`` gives). Setting
``WEAVE_USE_CALLS_COMPLETE=true`` explicitly keeps calls-complete and the
sidecar is not used (one warning). Everything else the server does (objects,
files, tables, queries) is untouched. If the direct path later upgrades the
server to calls-complete mode, the SDK replaces our processor with its own and
the sidecar is no longer used for that server.

Exit: the atexit hook registered when the first server is wired runs after the
SDK's executor shutdown and before its processor's drain (atexit is LIFO), so
calls the sidecar hands back at exit still go out over HTTP.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from ._link import Link, close_all_at_exit, normalize_url, warn_fallback

logger = logging.getLogger("weave_sidecar")

SUPPORTED_WEAVE = ">=0.54,<0.55"
CALLS_COMPLETE_ENV = "WEAVE_USE_CALLS_COMPLETE"

_lock = threading.Lock()
_links: dict[tuple[str, str], Link] = {}
_atexit_registered = False


class SidecarCallProcessor:
    """Stands in for the SDK's call processor; see the module docstring."""

    def __init__(self, server: Any, inner: Any, link: Link) -> None:
        from pydantic_core import to_json
        from weave.trace_server_bindings.http_utils import as_params

        self._server = server
        self._inner = inner
        self._link = link
        self._to_json = to_json
        self._as_params = as_params

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here, e.g. the SDK reading
        # `stop_accepting_work_event` or `max_batch_size` on the processor.
        return getattr(self.__dict__["_inner"], name)

    @property
    def link(self) -> Link:
        return self._link

    def enqueue_start(self, item: Any, *, eager_call_start: bool = False) -> None:
        self._submit("call_start", item)

    def enqueue(self, items: list[Any]) -> None:
        for item in items:
            self._submit("call_start" if item.mode == "start" else "call_end", item)

    def _submit(self, method: str, item: Any) -> None:
        try:
            payload = self._to_json(self._as_params(item.req), inf_nan_mode="null")
        except Exception as exc:  # the direct path reports what is wrong with it
            logger.debug("cannot encode a call for the sidecar: %s", exc)
            self.send_direct(item)
            return
        if not self._link.submit(method, payload, self, item):
            self.send_direct(item)

    def send_direct(self, item: Any) -> None:
        """Queue one call on the SDK's own path (its processor, batched HTTP)."""
        target = getattr(self._server, "call_processor", None)
        if target is self or target is None:
            target = self._inner
        if item.mode == "start":
            target.enqueue_start(item)
        else:
            target.enqueue([item])

    @property
    def num_outstanding_jobs(self) -> int:
        return int(self._inner.num_outstanding_jobs) + self._link.in_flight

    def stop_accepting_new_work_and_flush_queue(self) -> None:
        self._link.flush()
        self._inner.stop_accepting_new_work_and_flush_queue()

    def accept_new_work(self) -> None:
        self._inner.accept_new_work()

    def is_accepting_new_work(self) -> bool:
        return bool(self._inner.is_accepting_new_work())


def _find_remote(server: Any) -> Any:
    """The RemoteHTTPTraceServer behind middleware such as the caching one."""
    from weave.trace_server_bindings.remote_http_trace_server import (
        RemoteHTTPTraceServer,
    )

    seen = 0
    while server is not None and seen < 10:
        if isinstance(server, RemoteHTTPTraceServer):
            return server
        server = getattr(server, "_next_trace_server", None)
        seen += 1
    return None


def _calls_complete_requested() -> bool:
    value = os.environ.get(CALLS_COMPLETE_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on")


def _use_legacy_processor(remote: Any, old: Any) -> Any:
    """Put the SDK's start/end processor in place of its calls-complete one.

    weave 0.54 defaults to the calls-complete write path, which the sidecar
    does not speak. A server fresh from init_weave_get_server holds no calls
    yet, so its processor is swapped for the one the SDK builds when
    WEAVE_USE_CALLS_COMPLETE=false. A project that requires calls-complete is
    still handled: the sidecar answers calls_complete_mode_required, the calls
    go back to this processor, and the SDK upgrades itself as it would anyway.
    """
    from weave.trace.settings import max_calls_queue_size, should_enable_disk_fallback
    from weave.trace_server_bindings.async_batch_processor import AsyncBatchProcessor

    if old.num_outstanding_jobs:
        return old
    new = AsyncBatchProcessor(
        remote._flush_calls,
        max_queue_size=max_calls_queue_size(),
        enable_disk_fallback=should_enable_disk_fallback(),
    )
    remote.use_calls_complete = False
    remote.call_processor = new
    # Let its threads end on their next round instead of joining them here.
    old.stop_accepting_work_event.set()
    return new


def attach(server: Any) -> bool:
    """Route this server's call_start/call_end through the sidecar.

    Returns False (after the one warning when something went wrong) if the
    server keeps its direct path: not a batching RemoteHTTPTraceServer,
    credentials that are not an API key, or no usable sidecar.
    """
    from weave.trace_server_bindings.async_batch_processor import AsyncBatchProcessor
    from weave.trace_server_bindings.call_batch_processor import CallBatchProcessor

    global _atexit_registered
    remote = _find_remote(server)
    if remote is None:
        logger.debug("not a RemoteHTTPTraceServer: %r", type(server))
        return False
    processor = getattr(remote, "call_processor", None)
    if isinstance(processor, SidecarCallProcessor):
        return True
    if type(processor) is CallBatchProcessor:
        if _calls_complete_requested():
            warn_fallback(
                "WEAVE_USE_CALLS_COMPLETE is set, and the sidecar does not speak "
                "the calls-complete write path"
            )
            return False
        processor = _use_legacy_processor(remote, processor)
    if type(processor) is not AsyncBatchProcessor:
        # Unbatched (e.g. a disabled client): nothing to route.
        logger.debug("server keeps its own call processor: %r", type(processor))
        return False
    api_key = getattr(getattr(remote, "_credentials", None), "api_key", None)
    if not isinstance(api_key, str) or not api_key:
        warn_fallback("the SDK's credentials are not an API key the sidecar can use")
        return False

    backend = remote.trace_server_url
    with _lock:
        key = (normalize_url(backend), api_key)
        link = _links.get(key)
        if link is None:
            link = _links[key] = Link(backend, api_key)
        if not _atexit_registered:
            atexit.register(close_all_at_exit)
            _atexit_registered = True
    if not link.start():
        return False
    remote.call_processor = SidecarCallProcessor(remote, processor, link)
    return True


def attach_current_client() -> bool:
    """Attach the server of the client weave.init already made, if any."""
    import sys

    context = sys.modules.get("weave.trace.context.weave_client_context")
    if context is None:
        return False
    client = context.get_weave_client()
    if client is None:
        return False
    return attach(client.server)


def status() -> dict[str, Any] | None:
    """What the sidecar link of the current weave client is doing, if any."""
    import sys

    context = sys.modules.get("weave.trace.context.weave_client_context")
    if context is None:
        return None
    client = context.get_weave_client()
    remote = _find_remote(client.server) if client is not None else None
    processor = getattr(remote, "call_processor", None)
    if not isinstance(processor, SidecarCallProcessor):
        return None
    return processor.link.status()
