"""Weave SDK integration: call_start/call_end through the sidecar.

Supported: ``weave>=0.54,<0.55`` (tested with 0.54.0).

Integration point: the server that ``weave.trace.weave_init.init_weave_get_server``
returns, a ``RemoteHTTPTraceServer`` whose ``call_processor`` is the SDK's
``AsyncBatchProcessor``. ``WeaveClient`` enqueues call starts straight onto
that processor (``enqueue_start``) and ``RemoteHTTPTraceServer.call_end``
enqueues ends onto it (``enqueue``), so we replace it with
`SidecarCallProcessor`, which sends each item to the sidecar and uses an SDK
``AsyncBatchProcessor`` as the direct path. Because the server still has a
``call_processor``, ``client.flush()`` keeps working: the SDK calls
``stop_accepting_new_work_and_flush_queue()`` on it, which here waits for the
sidecar's delivery and then drains the direct path.

The direct-path processor is made on the first call that goes direct, not at
attach time: an idle one costs up to its 1 s batch interval in every
``client.flush()`` and again at exit (it sleeps before it sees the stop
event; docs/performance.md). During exit no processor is made (that would
start threads in an atexit hook): calls handed back then are sent
synchronously by the exit hook, after the sidecar is closed.

weave 0.54 defaults to the calls-complete write path (``/v2/.../calls/complete``),
which the sidecar does not speak; attaching switches a fresh server back to the
SDK's start/end path (what ``WEAVE_USE_CALLS_COMPLETE=false`` gives). Setting
``WEAVE_USE_CALLS_COMPLETE=true`` explicitly keeps calls-complete and the
sidecar is not used (one warning). Everything else the server does (objects,
files, tables, queries) is untouched. If the direct path later upgrades the
server to calls-complete mode, the SDK replaces our processor with its own and
the sidecar is no longer used for that server.

Exit: the atexit hook registered when the first server is wired runs after the
SDK's executor shutdown (atexit is LIFO). It closes every sidecar link; calls
handed back meanwhile go to a direct-path processor that still accepts work
(its own atexit drain runs later) or, if there is none, are sent synchronously
at the end of the hook.

Fork: weave 0.54's own thread pools do not survive ``fork``: futures pending in
the parent never finish in a child and its thread pool starts no workers, so a
forked child's ops would never reach this module. That is the SDK's limit, not
the sidecar's; a forked child needs ``WEAVE_CLIENT_PARALLELISM=0`` and the
parent should flush before forking. The cost: the SDK then runs its deferred
per-op work (saving the op and new input objects, which can mean HTTP
requests, and handing the call to this processor) on the calling thread, so
each op returns later. ``spawn`` children are unaffected. The sidecar side is
fork-safe on its own (see ``_link``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any

from ._link import Link, close_all_at_exit, exiting, normalize_url, warn_fallback

logger = logging.getLogger("weave_sidecar")

SUPPORTED_WEAVE = ">=0.54,<0.55"
CALLS_COMPLETE_ENV = "WEAVE_USE_CALLS_COMPLETE"

_lock = threading.Lock()
_links: dict[tuple[str, str], Link] = {}
_atexit_registered = False
_processors: weakref.WeakSet[SidecarCallProcessor] = weakref.WeakSet()
_DEFAULT_BATCH = 100  # the SDK's default max_batch_size


class SidecarCallProcessor:
    """Stands in for the SDK's call processor; see the module docstring."""

    def __init__(self, server: Any, link: Link, inner: Any = None) -> None:
        from pydantic_core import to_json
        from weave.trace_server_bindings.http_utils import as_params

        self._server = server
        self._link = link
        self._to_json = to_json
        self._as_params = as_params
        self._inner_lock = threading.Lock()
        # Guarded by _inner_lock: the direct-path processor once made, and the
        # calls handed back during exit with nothing running to send them.
        self._inner: Any = inner
        self._at_exit: list[Any] = []
        # Stands in for the processor's stop event while there is none.
        self._idle_stop = threading.Event()
        _processors.add(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here.
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def stop_accepting_work_event(self) -> threading.Event:
        # The SDK sets it when it upgrades the server to calls-complete.
        inner = self._inner
        return inner.stop_accepting_work_event if inner is not None else self._idle_stop

    @property
    def max_batch_size(self) -> int:
        inner = self._inner
        return int(inner.max_batch_size) if inner is not None else _DEFAULT_BATCH

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        # The SDK tunes it on whatever the server's call_processor is.
        inner = self._inner
        if inner is not None:
            inner.max_batch_size = value

    @property
    def has_direct_processor(self) -> bool:
        """Whether the direct-path processor has been made (for tests)."""
        return self._inner is not None

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
        """Queue one call on the SDK's own path (its processor, batched HTTP).

        Never blocks: it may run on the client's reader thread. During exit,
        a call with no running processor to take it waits for
        `send_pending_at_exit`.
        """
        target = getattr(self._server, "call_processor", None)
        if target is self or target is None:
            target = self._direct_processor()
        if target is None or (exiting() and not target.is_accepting_new_work()):
            with self._inner_lock:
                self._at_exit.append(item)
            return
        if item.mode == "start":
            target.enqueue_start(item)
        else:
            target.enqueue([item])

    def _direct_processor(self) -> Any:
        """The direct-path processor, made now if needed; None during exit."""
        inner = self._inner
        if inner is not None:
            return inner
        with self._inner_lock:
            if self._inner is None and not exiting():
                self._inner = _new_direct_processor(self._server)
                logger.debug("made the direct-path call processor")
            return self._inner

    def send_pending_at_exit(self) -> None:
        """Send the calls handed back during exit, synchronously (exit hook only)."""
        with self._inner_lock:
            items, self._at_exit = self._at_exit, []
        if not items:
            return
        server = self._server
        # Upgraded to calls-complete: its processor has stopped; the SDK's
        # eager v2 start/end sender needs no thread.
        send = (
            server._flush_calls_eager
            if getattr(server, "use_calls_complete", False)
            else server._flush_calls
        )
        size = max(1, self.max_batch_size)
        for i in range(0, len(items), size):
            try:
                send(items[i : i + size])
            except Exception:  # the interpreter's exit must go on
                logger.exception("weave-sidecar: sending calls directly at exit failed")

    @property
    def num_outstanding_jobs(self) -> int:
        inner = self._inner
        queued = int(inner.num_outstanding_jobs) if inner is not None else 0
        return queued + self._link.in_flight

    def stop_accepting_new_work_and_flush_queue(self) -> None:
        self._link.flush()
        # The flush may have handed calls back and so made the processor.
        inner = self._inner
        if inner is not None:
            inner.stop_accepting_new_work_and_flush_queue()

    def accept_new_work(self) -> None:
        inner = self._inner
        if inner is not None:
            inner.accept_new_work()

    def is_accepting_new_work(self) -> bool:
        inner = self._inner
        if inner is not None:
            return bool(inner.is_accepting_new_work())
        return not exiting()


def _new_direct_processor(remote: Any) -> Any:
    """The processor the SDK builds for its start/end path."""
    from weave.trace.settings import max_calls_queue_size, should_enable_disk_fallback
    from weave.trace_server_bindings.async_batch_processor import AsyncBatchProcessor

    return AsyncBatchProcessor(
        remote._flush_calls,
        max_queue_size=max_calls_queue_size(),
        enable_disk_fallback=should_enable_disk_fallback(),
    )


def _exit_hook() -> None:
    """Close every link, then send what came back with nothing left to take it."""
    close_all_at_exit()
    for processor in list(_processors):
        processor.send_pending_at_exit()


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


def _retire_idle(remote: Any, old: Any) -> bool:
    """Leave the SDK's start/end path with no processor until one is needed.

    weave 0.54 defaults to the calls-complete write path, which the sidecar
    does not speak. A server fresh from init_weave_get_server holds no calls
    yet, so it is switched to the start/end path (what
    WEAVE_USE_CALLS_COMPLETE=false gives) and its idle processor is stopped;
    `SidecarCallProcessor` makes a start/end one when a call first goes
    direct. A project that requires calls-complete is still handled: the
    sidecar answers calls_complete_mode_required or returns its calls, they go
    direct, and the SDK upgrades itself as it would anyway. False when the
    processor holds calls (then it is kept).
    """
    if old.num_outstanding_jobs:
        return False
    remote.use_calls_complete = False
    # Let its threads end on their next round instead of joining them here.
    old.stop_accepting_work_event.set()
    return True


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
                "the calls-complete write path; this process will not retry"
            )
            return False
        if processor.num_outstanding_jobs:
            logger.debug("the calls-complete processor already holds calls")
            return False
    elif type(processor) is not AsyncBatchProcessor:
        # Unbatched (e.g. a disabled client): nothing to route.
        logger.debug("server keeps its own call processor: %r", type(processor))
        return False
    api_key = getattr(getattr(remote, "_credentials", None), "api_key", None)
    if not isinstance(api_key, str) or not api_key:
        warn_fallback(
            "the SDK's credentials are not an API key the sidecar can use; this "
            "process will not retry"
        )
        return False

    backend = remote.trace_server_url
    with _lock:
        key = (normalize_url(backend), api_key)
        link = _links.get(key)
        if link is None:
            link = _links[key] = Link(backend, api_key)
        if not _atexit_registered:
            atexit.register(_exit_hook)
            _atexit_registered = True
    if not link.start():
        return False
    inner = None if _retire_idle(remote, processor) else processor
    remote.call_processor = SidecarCallProcessor(remote, link, inner)
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
