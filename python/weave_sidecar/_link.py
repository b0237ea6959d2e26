"""One process's use of one sidecar: connect or spawn, fall back, fork, exit.

A `Link` belongs to one (backend, API key) pair. On `start()` it uses a
shared sidecar if one answers at WEAVE_SIDECAR_SOCKET for the same backend,
else it spawns a private one. Whatever goes wrong, calls are handed to their
owner's direct path and the `weave_sidecar` logger warns once per process.

Fork: a child forgets the parent's connection and sidecar (see
`Client.abandon_after_fork` and `SidecarProcess.abandon_after_fork`) and starts
its own on first use. Exit: `close()` flushes, closes the connection, stops a
private sidecar and removes its directory, all synchronously.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._client import Client, handshake
from ._exceptions import SidecarError
from ._find import find_sidecar_bin
from ._process import (
    DEFAULT_START_TIMEOUT,
    START_TIMEOUT_ENV,
    SidecarProcess,
    connect,
    env_seconds,
)

logger = logging.getLogger("weave_sidecar")

SOCKET_ENV = "WEAVE_SIDECAR_SOCKET"
DEFAULT_SOCKET = "/tmp/weave_sidecar.sock"
FLUSH_TIMEOUT_ENV = "WEAVE_SIDECAR_FLUSH_TIMEOUT"
EXIT_TIMEOUT_ENV = "WEAVE_SIDECAR_EXIT_TIMEOUT"
MAX_BYTES_ENV = "WEAVE_SIDECAR_CLIENT_MAX_BYTES"
DEFAULT_FLUSH_TIMEOUT = 60.0
DEFAULT_EXIT_TIMEOUT = 15.0
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_ITEMS = 200_000
SHARED_CONNECT_TIMEOUT = 1.0

_NEW, _OPEN, _FAILED, _CLOSED = "new", "open", "failed", "closed"

_warn_lock = threading.Lock()
_warned = False


def warn_fallback(reason: str) -> None:
    """Log the one fallback warning of this process; later calls only debug-log."""
    global _warned
    with _warn_lock:
        first = not _warned
        _warned = True
    if first:
        logger.warning(
            "weave-sidecar is not used for some or all calls (%s); traces still go "
            "to the trace server over HTTP. To stop trying the sidecar, unset "
            "WEAVE_USE_SIDECAR.",
            reason,
        )
    else:
        logger.debug("weave-sidecar fallback: %s", reason)


def normalize_url(url: str) -> str:
    """The URL without userinfo, default port, trailing slash or case in the host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


class CallOwner(Protocol):
    """Who a call belongs to: sends it the SDK's direct way when asked."""

    def send_direct(self, item: Any) -> None: ...


class Link:
    """The sidecar used for one backend and key by this process."""

    def __init__(self, backend: str, api_key: str) -> None:
        self.backend = backend
        self._api_key = api_key
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # Guarded by _lock for writes; read without it on the hot path.
        self._state = _NEW
        self._client: Client | None = None
        self._proc: SidecarProcess | None = None
        self._shared = False
        self._closing = False
        self.fallback_reason: str | None = None
        self.sent = 0  # calls the sidecar took (approximate under threads)
        _links.add(self)

    def __repr__(self) -> str:
        return f"Link(backend={self.backend!r}, state={self._state!r})"

    # Public surface used by the SDK integration.

    def start(self) -> bool:
        """Connect or spawn now; False (after one warning) when it cannot."""
        self._check_pid()
        with self._lock:
            if self._state == _NEW:
                self._start_locked()
            return self._state == _OPEN

    def submit(self, method: str, payload: bytes, owner: CallOwner, item: Any) -> bool:
        """Hand one call to the sidecar; False means send it directly instead."""
        if self._pid != os.getpid():
            self._check_pid()
        client = self._client
        if client is None:
            if self._state != _NEW or _exiting:
                return False
            if not self.start():
                return False
            client = self._client
            if client is None:
                return False
        if client.submit(method, payload, (owner, item)):
            self.sent += 1
            return True
        return False

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the sidecar has delivered what this process sent."""
        self._check_pid()
        client = self._client
        if client is not None:
            client.flush(
                timeout
                if timeout is not None
                else env_seconds(FLUSH_TIMEOUT_ENV, DEFAULT_FLUSH_TIMEOUT)
            )

    @property
    def in_flight(self) -> int:
        client = self._client
        return client.in_flight if client is not None else 0

    def status(self) -> dict[str, Any]:
        client = self._client
        hello = client.hello if client is not None else {}
        proc = self._proc
        return {
            "state": self._state,
            "backend": self.backend,
            "shared": self._shared,
            "pid": hello.get("pid"),
            "version": hello.get("version"),
            "socket": proc.socket_path if proc is not None else None,
            "log": proc.log_path if proc is not None else None,
            "sent": self.sent,
            "held": client.held if client is not None else 0,
            "fallback_reason": self.fallback_reason,
        }

    def close(self) -> None:
        """Deliver, disconnect and stop a private sidecar; synchronous, idempotent."""
        if self._pid != os.getpid():
            return
        with self._lock:
            if self._state == _CLOSED:
                return
            self._closing = True
            client, proc = self._client, self._proc
        if client is not None:
            client.flush(env_seconds(FLUSH_TIMEOUT_ENV, DEFAULT_FLUSH_TIMEOUT))
            client.close()
        if proc is not None:
            proc.stop(env_seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT))
        with self._lock:
            self._state = _CLOSED
            self._client = None
            self._proc = None

    # Internals.

    def _start_locked(self) -> None:
        try:
            self._client = self._connect_shared() or self._spawn()
        except (SidecarError, OSError) as exc:
            self._state = _FAILED
            self.fallback_reason = str(exc)
            warn_fallback(f"cannot start the sidecar: {exc}")
            return
        self._state = _OPEN
        self._register_child_finalizer()

    def _new_client(self, sock: Any, hello: dict[str, Any]) -> Client:
        max_bytes = int(env_seconds(MAX_BYTES_ENV, float(DEFAULT_MAX_BYTES)))
        return Client(
            sock,
            hello,
            on_refused=self._on_refused,
            on_failed=self._on_failed,
            max_items=DEFAULT_MAX_ITEMS,
            max_bytes=max_bytes,
        )

    def _connect_shared(self) -> Client | None:
        path = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
        try:
            sock = connect(path, SHARED_CONNECT_TIMEOUT)
        except OSError:
            return None
        try:
            hello = handshake(sock, SHARED_CONNECT_TIMEOUT)
        except SidecarError as exc:
            sock.close()
            logger.info("not using the sidecar at %s: %s", path, exc)
            return None
        theirs = str(hello.get("backend") or "")
        if normalize_url(theirs) != normalize_url(self.backend):
            sock.close()
            logger.info(
                "not using the sidecar at %s: it forwards to %s, not %s",
                path,
                theirs,
                normalize_url(self.backend),
            )
            return None
        self._shared = True
        logger.debug("using the shared sidecar at %s", path)
        return self._new_client(sock, hello)

    def _spawn(self) -> Client:
        binary = find_sidecar_bin()
        timeout = env_seconds(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT)
        proc, sock, hello = SidecarProcess.spawn(
            binary, backend=self.backend, api_key=self._api_key, timeout=timeout
        )
        self._proc = proc
        self._shared = False
        logger.debug("started sidecar pid %s on %s", hello.get("pid"), proc.socket_path)
        return self._new_client(sock, hello)

    def _on_refused(self, token: Any, code: str) -> None:
        warn_fallback(
            f"the sidecar refused a call ({code}); that call was sent directly"
        )
        owner, item = token
        owner.send_direct(item)

    def _on_failed(self, tokens: list[Any], reason: str) -> None:
        if self._closing and not tokens:
            return
        self._state = _FAILED
        self.fallback_reason = reason
        warn_fallback(reason)
        for owner, item in tokens:
            owner.send_direct(item)

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._client is not None:
            self._client.abandon_after_fork()
        if self._proc is not None:
            self._proc.abandon_after_fork()
        self._client = None
        self._proc = None
        self._closing = False
        if self._state in (_OPEN, _CLOSED):
            self._state = _NEW
        self._pid = os.getpid()

    def _register_child_finalizer(self) -> None:
        # multiprocessing children leave through os._exit (fork) and skip
        # atexit; its own exit hook runs Finalize callbacks first.
        mp = sys.modules.get("multiprocessing")
        if mp is None or mp.parent_process() is None:
            return
        from multiprocessing import util

        util.Finalize(None, self.close, exitpriority=100)


_links: weakref.WeakSet[Link] = weakref.WeakSet()
_exiting = False


def close_all_at_exit() -> None:
    """The atexit hook: deliver and stop every link of this process."""
    global _exiting
    _exiting = True
    for link in list(_links):
        try:
            link.close()
        except Exception:  # never break the interpreter's exit
            logger.exception("weave-sidecar: closing the sidecar failed")


def _after_fork_in_child() -> None:
    global _exiting
    _exiting = False
    for link in list(_links):
        link._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
