"""One process's use of one sidecar: connect or spawn, fall back, fork, exit.

A `Link` belongs to one (backend, API key) pair. On `start()` it uses a
shared sidecar if one answers at WEAVE_SIDECAR_SOCKET for the same backend,
else it spawns a private one. Whatever goes wrong, calls are handed to their
owner's direct path and the `weave_sidecar` logger warns once per process.

Restarts: when a running sidecar is lost (it crashed, was killed, or the
connection broke), the calls it had not confirmed go direct, and so do new
calls until a delay has passed (1 s, then 5 s; WEAVE_SIDECAR_RESPAWN_DELAYS);
the next call after it starts a new one. After the last delay's restart is
lost too, the breaker trips and the process stays direct. A sidecar that
never started is not retried, and nothing is started once the process is
exiting. A trace server that refuses the key (`unauthorized`) also keeps the
process direct: a new sidecar would be refused as well.

Fork: a child forgets the parent's connection and sidecar (see
`Client.abandon_after_fork` and `SidecarProcess.abandon_after_fork`), its
warning and its restart budget, and starts its own sidecar on first use
(unless the parent's failure was one a new sidecar would hit again). Exit:
`close()` flushes, closes the connection, stops a private sidecar and removes
its directory, all synchronously.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._client import RETURNED, Client, handshake
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
RESPAWN_DELAYS_ENV = "WEAVE_SIDECAR_RESPAWN_DELAYS"
DEFAULT_RESPAWN_DELAYS = (1.0, 5.0)
# How long a restart waits for the lost sidecar process to end.
_REAP_TIMEOUT = 1.0

# new: not started; open: calls go to the sidecar; failed: calls go direct
# (until a restart, if one is scheduled); direct: the trace server refused the
# sidecar's key, so calls go direct for good while the sidecar finishes what it
# holds; closed: after close().
_NEW, _OPEN, _FAILED, _DIRECT, _CLOSED = "new", "open", "failed", "direct", "closed"

_warn_lock = threading.Lock()
_warned = False


def respawn_delays() -> tuple[float, ...]:
    """Delays before each restart after a lost sidecar; their count is the budget.

    WEAVE_SIDECAR_RESPAWN_DELAYS is a comma-separated list of seconds; empty
    or "0" means never restart. A malformed value gives the default.
    """
    raw = os.environ.get(RESPAWN_DELAYS_ENV)
    if raw is None:
        return DEFAULT_RESPAWN_DELAYS
    raw = raw.strip()
    if raw in ("", "0"):
        return ()
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        return DEFAULT_RESPAWN_DELAYS
    if any(d < 0 for d in delays):
        return DEFAULT_RESPAWN_DELAYS
    return delays


def warn_fallback(reason: str) -> None:
    """Log the one fallback warning of this process; later calls only debug-log.

    A forked child is a new process and gets its own warning.
    """
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
        self._restarts = 0  # sidecars started after the first one was lost
        self._retry_at: float | None = None  # monotonic; None: no restart due
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
        if self._state != _OPEN or client is None:
            client = self._reopen()
            if client is None:
                return False
        if client.submit(method, payload, (owner, item)):
            self.sent += 1
            return True
        if client.is_open:
            warn_fallback(
                "a call was larger than the sidecar takes or its buffer of "
                "unconfirmed calls was full; that call was sent directly"
            )
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
            "restarts": self._restarts,
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
            self._retry_at = None
            self.fallback_reason = str(exc)
            warn_fallback(
                f"cannot start the sidecar: {exc}; this process will not retry"
            )
            return
        self._state = _OPEN
        self._register_child_finalizer()

    def _reopen(self) -> Client | None:
        """The client to use when the link is not open: start or restart if due."""
        if _exiting or self._closing:
            return None  # never start a sidecar from an exit hook
        state = self._state
        if state == _NEW:
            self.start()
        elif state == _FAILED:
            retry_at = self._retry_at
            if retry_at is None or time.monotonic() < retry_at:
                return None
            # One thread restarts; the others send directly meanwhile.
            if not self._lock.acquire(blocking=False):
                return None
            try:
                if self._state == _FAILED and self._retry_at is not None:
                    self._restart_locked()
            finally:
                self._lock.release()
        return self._client if self._state == _OPEN else None

    def _restart_locked(self) -> None:
        old = self._proc
        self._proc = None
        self._client = None
        self._retry_at = None
        self._restarts += 1
        if old is not None:
            old.stop(_REAP_TIMEOUT)
        try:
            self._client = self._connect_shared() or self._spawn()
        except (SidecarError, OSError) as exc:
            self._schedule_restart(f"cannot restart the sidecar: {exc}")
            return
        self._state = _OPEN
        logger.info(
            "weave-sidecar restarted (restart %d of %d); calls go through it again",
            self._restarts,
            len(respawn_delays()),
        )

    def _schedule_restart(self, reason: str) -> None:
        """Mark the link failed; restart later if the budget allows. Warns once."""
        self.fallback_reason = reason
        delays = respawn_delays()
        if self._closing or _exiting:
            self._retry_at = None
            plan = "the process is exiting, so it is not restarted"
        elif self._restarts < len(delays):
            delay = delays[self._restarts]
            self._retry_at = time.monotonic() + delay
            plan = (
                f"calls go directly until it is restarted in {delay:g}s "
                f"(restart {self._restarts + 1} of {len(delays)})"
            )
        else:
            self._retry_at = None
            plan = (
                f"it was restarted {self._restarts} times already, so this "
                "process will not retry"
                if self._restarts
                else "restarts are off, so this process will not retry"
            )
        self._state = _FAILED
        warn_fallback(f"{reason}; {plan}")

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
        # Runs on the client's reader thread with its lock held: no waiting.
        owner, item = token
        owner.send_direct(item)
        if code == "unauthorized":
            if self._state == _OPEN:
                self._state = _DIRECT
            self.fallback_reason = "the trace server refused the sidecar's API key"
            warn_fallback(
                "the trace server refused the sidecar's API key (401/403); this "
                "process sends its calls directly and will not retry the sidecar"
            )
        elif code == "calls_complete_mode_required":
            warn_fallback(
                "a project needs the calls-complete write path, which the sidecar "
                "does not speak; that project's calls were sent directly"
            )
        elif code == RETURNED:
            warn_fallback(
                "the trace server refused calls the sidecar had accepted (401/403 "
                "or a calls-complete project); they were sent directly"
            )
        else:
            warn_fallback(
                f"the sidecar refused a call ({code}); that call was sent directly"
            )

    def _on_failed(self, tokens: list[Any], reason: str) -> None:
        # Runs with the client's lock held: hand back first, start nothing.
        for owner, item in tokens:
            owner.send_direct(item)
        if self._closing and not tokens:
            return
        if self._state == _DIRECT or self._closing:
            self.fallback_reason = reason
            warn_fallback(reason)
            return
        self._schedule_restart(reason)

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
        # A new process with its own restart budget. A sidecar that never
        # started, a tripped breaker or a refused key would fail the same way
        # here, so those stay direct.
        permanent = self._state == _DIRECT or (
            self._state == _FAILED and self._retry_at is None
        )
        if not permanent:
            self._state = _NEW
        self._restarts = 0
        self._retry_at = None
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


def exiting() -> bool:
    """True once the exit hook has started: start nothing, send synchronously."""
    return _exiting


def _after_fork_in_child() -> None:
    global _exiting, _warned, _warn_lock
    _exiting = False
    # The parent's warning was the parent's; a thread may have held the lock.
    _warn_lock = threading.Lock()
    _warned = False
    for link in list(_links):
        link._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
