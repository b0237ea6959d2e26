"""The socket client: pipelined NDJSON to one sidecar (protocol version 1).

One connection per process. Callers never wait for the sidecar: `submit` puts
the line on a queue that a writer thread sends in large `sendall`s, and a
reader thread matches the in-order responses against a FIFO of what was sent.

Every call stays in memory until the sidecar reports it `resolved` (delivered
or dropped), in a buffer bounded by count and bytes. When the sidecar refuses a
single call (`queue_full`, `call_too_large`, `line_too_long`, `unauthorized`,
`calls_complete_mode_required`) that call is handed to `on_refused`, and so is
each accepted call the sidecar reports `returned` (dropped for a 401/403 or a
calls-complete project: see docs/protocol.md). When the sidecar becomes
unusable (the connection breaks, it dies, or it answers `shutting_down`, ...)
the client closes and hands every call it still holds to `on_failed`, oldest
first, so the caller can send them another way.

A call the sidecar delivered just before dying, but had not yet reported as
resolved, is handed back too and can therefore reach the trace server twice;
the server upserts by call id. A sidecar that answers `shutting_down` is still
alive and draining, so the calls it already acknowledged stay its own and are
not handed back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from ._exceptions import SidecarProtocolError, SidecarStartError

logger = logging.getLogger("weave_sidecar")

PROTOCOL_VERSION = 1

# Codes that concern one call only: send that call another way, keep going.
PER_CALL_CODES = frozenset(
    {
        "queue_full",
        "spool_full",  # --spool-max-bytes reached or the disk is full
        "call_too_large",
        "line_too_long",
        "invalid_request",
        "unknown_method",
        # The sidecar keeps delivering what it accepted; what it drops for
        # these reasons comes back in `returned`.
        "unauthorized",
        "calls_complete_mode_required",
    }
)
# The code `on_refused` gets for a call the sidecar accepted, then returned.
RETURNED = "returned"
# A live sidecar that is draining keeps the calls it acknowledged.
_DRAINING_CODE = "shutting_down"

_CALL = 0
_FLUSH = 1

# The writer joins queued lines into one sendall up to about this many bytes.
_WRITE_CHUNK = 1 << 20

_HEADS = {
    "call_start": b'{"method":"call_start","payload":',
    "call_end": b'{"method":"call_end","payload":',
}


def handshake(
    sock: socket.socket, timeout: float, token: str | None = None
) -> dict[str, Any]:
    """Send `hello` on a fresh connection and return the checked result.

    `token` is required on a TCP connection (docs/protocol.md); no message
    raised here ever contains it.

    Raises:
        SidecarStartError: no answer within `timeout` or the connection closed.
        SidecarProtocolError: the answer is not a protocol-1 weave-sidecar hello.
    """
    sock.settimeout(timeout)
    try:
        payload: dict[str, Any] = {"protocol": PROTOCOL_VERSION}
        if token is not None:
            payload["token"] = token
        request = {"method": "hello", "payload": payload}
        sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise SidecarStartError(
                    "the sidecar closed the connection during hello"
                )
            buf += chunk
    except socket.timeout as exc:
        raise SidecarStartError(f"no answer to hello within {timeout:g}s") from exc
    except OSError as exc:
        raise SidecarStartError(f"hello failed: {exc}") from exc
    finally:
        sock.settimeout(None)
    line, _, rest = buf.partition(b"\n")
    if rest:
        raise SidecarProtocolError("unexpected data after the hello answer")
    try:
        resp = json.loads(line)
    except ValueError as exc:
        raise SidecarProtocolError("the hello answer is not JSON") from exc
    if not isinstance(resp, dict) or resp.get("success") is not True:
        code = resp.get("code") if isinstance(resp, dict) else None
        raise SidecarProtocolError(f"hello refused ({code or 'no code'})")
    result = resp.get("result")
    if not isinstance(result, dict) or result.get("name") != "weave-sidecar":
        raise SidecarProtocolError("the hello answer is not from weave-sidecar")
    if result.get("protocol") != PROTOCOL_VERSION:
        raise SidecarProtocolError(
            f"sidecar speaks protocol {result.get('protocol')!r}, "
            f"this client speaks {PROTOCOL_VERSION}"
        )
    return result


class _FlushWaiter:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False


class Client:
    """A pipelined connection to one sidecar; see the module docstring.

    `on_refused(token, code)` and `on_failed(tokens, reason)` run with the
    client's lock held, so that calls handed back are queued elsewhere before any
    later call can be; they must not call back into the client.
    """

    def __init__(
        self,
        sock: socket.socket,
        hello: dict[str, Any],
        *,
        on_refused: Callable[[Any, str], None],
        on_failed: Callable[[list[Any], str], None],
        max_items: int,
        max_bytes: int,
    ) -> None:
        limits = hello.get("limits") or {}
        self.hello = hello
        self._sock = sock
        self._on_refused = on_refused
        self._on_failed = on_failed
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_call = int(limits.get("max_call_bytes") or 0)
        self._max_line = int(limits.get("max_line_bytes") or 0)

        self._lock = threading.Lock()
        # Guarded by _lock:
        self._open = True
        self._draining = False  # the sidecar said shutting_down
        self._sent: deque[list[Any]] = (
            deque()
        )  # [kind, token, size] awaiting a response
        # Acked calls not yet resolved: [kind, token, size, ordinal]; the token
        # is None once the call was returned.
        self._accepted: deque[list[Any]] = deque()
        self._accepted_count = 0  # calls acked on this connection
        self._resolved_count = 0
        self._held_items = 0
        self._held_bytes = 0

        self._queue: SimpleQueue[bytes | None] = SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_loop, name="weave-sidecar-writer", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_loop, name="weave-sidecar-reader", daemon=True
        )
        self._writer.start()
        self._reader.start()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def in_flight(self) -> int:
        """Requests written or queued that have no response yet."""
        return len(self._sent)

    @property
    def held(self) -> int:
        """Calls held in memory: not yet resolved by the sidecar."""
        return self._held_items

    def submit(self, method: str, payload: bytes, token: Any) -> bool:
        """Queue one call; False means it was not taken (send it another way).

        `payload` is the JSON of the SDK's CallStartReq/CallEndReq. False comes
        back when the client is closed, the buffer is full, or the call is larger
        than the sidecar accepts.
        """
        size = len(payload) + 40
        if self._max_call and len(payload) > self._max_call:
            return False
        if self._max_line and size > self._max_line:
            return False
        line = b"".join((_HEADS[method], payload, b"}\n"))
        with self._lock:
            if not self._open:
                return False
            if (
                self._held_items >= self._max_items
                or self._held_bytes + size > self._max_bytes
            ):
                return False
            self._held_items += 1
            self._held_bytes += size
            self._sent.append([_CALL, token, size])
            self._queue.put(line)
        return True

    def flush(self, timeout: float | None) -> bool:
        """Wait until the sidecar has delivered (or given up on) every call sent.

        True when the sidecar answered the flush; False when the client is (or
        became) closed, in which case the calls it held went to `on_failed`, or
        when `timeout` ran out.
        """
        waiter = _FlushWaiter()
        with self._lock:
            if not self._open:
                return False
            self._sent.append([_FLUSH, waiter, 0])
            self._queue.put(b'{"method":"flush"}\n')
        if not waiter.event.wait(timeout):
            logger.warning(
                "weave-sidecar did not finish delivering within %gs; it keeps "
                "delivering in the background",
                timeout,
            )
            return False
        return waiter.ok

    def fail(self, reason: str) -> None:
        """Stop using the sidecar and hand every held call to `on_failed`."""
        with self._lock:
            self._fail_locked(reason)

    def close(self) -> None:
        """Close the connection.

        Calls the sidecar acknowledged stay its own (it is alive and delivers
        them); calls still waiting for an answer go to `on_failed`.
        """
        with self._lock:
            self._draining = True
            self._fail_locked("the client was closed")

    def abandon_after_fork(self) -> None:
        """In a forked child: forget the parent's connection without using it.

        The calls held belong to the parent, which delivers them. The socket fd
        is closed in this process only (no shutdown, which would reach the
        parent's connection too). The parent's threads do not exist here.
        """
        self._lock = threading.Lock()
        self._open = False
        self._sent.clear()
        self._accepted.clear()
        try:
            os.close(self._sock.detach())
        except OSError:
            pass

    # Reader side.

    def _apply_resolved_locked(self, resolved: Any) -> None:
        if not isinstance(resolved, int):
            return
        while self._resolved_count < resolved and self._accepted:
            entry = self._accepted.popleft()
            self._resolved_count += 1
            self._held_items -= 1
            self._held_bytes -= entry[2]

    def _apply_returned_locked(self, returned: Any) -> None:
        # Ordinals count this connection's acked calls from 1; the oldest
        # unresolved one is _accepted[0]. Returned calls are still counted in
        # `resolved` later, so they stay in _accepted until then.
        if not isinstance(returned, list) or not self._accepted:
            return
        first = self._accepted[0][3]
        for ordinal in returned:
            if not isinstance(ordinal, int):
                continue
            i = ordinal - first
            if 0 <= i < len(self._accepted):
                entry = self._accepted[i]
                token, entry[1] = entry[1], None
                if token is not None:
                    self._on_refused(token, RETURNED)

    def _handle_locked(self, resp: Any) -> None:
        if not self._sent:
            raise SidecarProtocolError("a response arrived for no request")
        entry = self._sent.popleft()
        if not isinstance(resp, dict):
            raise SidecarProtocolError("a response is not a JSON object")
        ok = resp.get("success") is True
        if entry[0] == _FLUSH:
            waiter = entry[1]
            if ok:
                result = resp.get("result") or {}
                self._apply_returned_locked(result.get("returned"))
                self._apply_resolved_locked(result.get("resolved"))
            waiter.ok = ok
            waiter.event.set()
            return
        if ok:
            self._accepted_count += 1
            entry.append(self._accepted_count)
            self._accepted.append(entry)
            self._apply_returned_locked(resp.get("returned"))
            self._apply_resolved_locked(resp.get("resolved"))
            return
        self._held_items -= 1
        self._held_bytes -= entry[2]
        code = str(resp.get("code") or "unknown")
        if code in PER_CALL_CODES:
            self._on_refused(entry[1], code)
            return
        if code == _DRAINING_CODE:
            self._draining = True
        # This call first, then the calls still held, oldest first: the refused
        # call is older than every call still waiting for an answer but newer
        # than the accepted ones, which go first.
        self._sent.appendleft(entry)
        self._held_items += 1
        self._held_bytes += entry[2]
        self._fail_locked(f"the sidecar refused a call ({code})")

    def _fail_locked(self, reason: str) -> None:
        if not self._open:
            return
        self._open = False
        tokens: list[Any] = []
        if not self._draining:
            tokens.extend(e[1] for e in self._accepted if e[1] is not None)
        for kind, token, _ in self._sent:
            if kind == _CALL:
                tokens.append(token)
            else:
                token.event.set()
        self._accepted.clear()
        self._sent.clear()
        self._held_items = 0
        self._held_bytes = 0
        self._queue.put(None)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._on_failed(tokens, reason)

    def _read_loop(self) -> None:
        reason = "the sidecar closed the connection"
        buf = b""
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")
                with self._lock:
                    if not self._open:
                        break
                    for line in lines:
                        self._handle_locked(json.loads(line))
        except (OSError, ValueError, SidecarProtocolError) as exc:
            reason = f"lost the connection to the sidecar: {exc}"
        self.fail(reason)
        self._writer.join()
        self._sock.close()

    # Writer side.

    def _write_loop(self) -> None:
        queue = self._queue
        while True:
            line = queue.get()
            if line is None:
                return
            parts = [line]
            size = len(line)
            stop = False
            while size < _WRITE_CHUNK:
                try:
                    more = queue.get_nowait()
                except Empty:
                    break
                if more is None:
                    stop = True
                    break
                parts.append(more)
                size += len(more)
            try:
                self._sock.sendall(b"".join(parts))
            except OSError as exc:
                self.fail(f"lost the connection to the sidecar: {exc}")
                return
            if stop:
                return
