"""Spawning a private sidecar and owning its lifetime.

The private sidecar of one Python process:
- listens on `s` in a fresh 0700 directory (`wsc-*` under XDG_RUNTIME_DIR or
  TMPDIR, or /tmp when that path would not fit in a Unix socket address);
- or, where Python has no `socket.AF_UNIX` (Windows) or
  WEAVE_SIDECAR_TRANSPORT=tcp, listens on 127.0.0.1 at a port the OS picks,
  reported through its ready file in that directory, and serves only
  connections whose `hello` carries a random token made for this launch;
- runs in its own session (process group on Windows), so a terminal Ctrl-C
  reaches Python only and the sidecar is still there to take the last
  `call_end`;
- gets the backend, the API key and the token through its environment, never
  argv;
- watches `--parent-pid` and its stdin, a pipe this process never writes to:
  EOF (this process exited or was killed) makes it drain and exit;
- writes its log to `sidecar.log` in its directory, never to our stdout/stderr.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from ._client import handshake
from ._exceptions import SidecarStartError

# macOS allows 104 bytes in sun_path, Linux 108; stay under both.
MAX_SOCKET_PATH = 104
START_TIMEOUT_ENV = "WEAVE_SIDECAR_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 5.0
# "tcp" forces the loopback TCP transport where Unix sockets exist too.
TRANSPORT_ENV = "WEAVE_SIDECAR_TRANSPORT"
TOKEN_ENV = "WEAVE_SIDECAR_TOKEN"

# Variables only the Python side reads; the binary maps WEAVE_SIDECAR_<FLAG>
# to flags, so these are not passed on.
_PYTHON_ONLY_ENV = (
    "WEAVE_SIDECAR_BIN",
    "WEAVE_SIDECAR_SOCKET",
    START_TIMEOUT_ENV,
    "WEAVE_SIDECAR_EXIT_TIMEOUT",
    "WEAVE_SIDECAR_FLUSH_TIMEOUT",
    "WEAVE_SIDECAR_CLIENT_MAX_BYTES",
    TRANSPORT_ENV,
)
# How the binary listens is ours to decide, whatever the environment says.
_LAUNCHER_SET_ENV = (
    TOKEN_ENV,
    "WEAVE_SIDECAR_LISTEN_TCP",
    "WEAVE_SIDECAR_READY_FILE",
)


def use_tcp() -> bool:
    """True where the sidecar must be reached over loopback TCP, not a socket file."""
    if not hasattr(socket, "AF_UNIX"):
        return True
    return os.environ.get(TRANSPORT_ENV, "").strip().lower() == "tcp"


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment, else `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def make_socket_dir(for_socket: bool = True) -> tuple[str, str]:
    """Create a private directory for the socket; return (dir, socket path).

    Without `for_socket` (TCP) the path length does not matter.

    Raises:
        SidecarStartError: the directory cannot be created.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    # mkdtemp adds 8 random characters after the prefix.
    probe = os.path.join(base, "wsc-" + "x" * 8, "s")
    if for_socket and len(os.fsencode(probe)) >= MAX_SOCKET_PATH:
        base = "/tmp"
    try:
        directory = tempfile.mkdtemp(prefix="wsc-", dir=base)
    except OSError as exc:
        raise SidecarStartError(
            f"cannot create a socket directory in {base}: {exc}"
        ) from exc
    return directory, os.path.join(directory, "s")


def connect(path: str, timeout: float) -> socket.socket:
    """Connect to a Unix socket; OSError when nobody listens there.

    Also OSError when `use_tcp()`: then no Unix socket is used at all, not
    even a shared sidecar's.
    """
    if use_tcp():
        raise OSError(f"not using Unix sockets ({TRANSPORT_ENV}=tcp or no AF_UNIX)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_tcp(address: str, timeout: float) -> socket.socket:
    """Connect to `127.0.0.1:PORT`; OSError when nobody listens there."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout)
    try:
        # Lines are joined into large writes already; never wait on Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class SidecarProcess:
    """A sidecar this process spawned; `stop()` ends it and removes its directory.

    `socket_path` is where it listens: the socket file, or `127.0.0.1:PORT`
    once a TCP sidecar is ready.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        directory: str,
        socket_path: str,
        token: str | None = None,
    ) -> None:
        self.proc = proc
        self.directory = directory
        self.socket_path = socket_path
        self.log_path = os.path.join(directory, "sidecar.log")
        self.ready_path = os.path.join(directory, "ready")
        self.owner_pid = os.getpid()
        self._token = token  # TCP only; never logged or put in a message

    @classmethod
    def spawn(
        cls, binary: str, *, backend: str, api_key: str, timeout: float
    ) -> tuple[SidecarProcess, socket.socket, dict[str, Any]]:
        """Start a sidecar and wait for its hello; return it, the connection, hello.

        Raises:
            SidecarStartError: spawn failed, the sidecar exited, or it did not
                answer `hello` within `timeout` seconds.
            SidecarProtocolError: it answered with another protocol.
        """
        tcp = use_tcp()
        directory, path = make_socket_dir(for_socket=not tcp)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _PYTHON_ONLY_ENV and k not in _LAUNCHER_SET_ENV
        }
        env["WEAVE_SIDECAR_BACKEND"] = backend
        env["WEAVE_SIDECAR_API_KEY"] = api_key
        token: str | None = None
        if tcp:
            token = secrets.token_urlsafe(32)
            env[TOKEN_ENV] = token
            path = ""  # known once the ready file names the port
            listen = ["--listen-tcp", "127.0.0.1:0"]
            listen += ["--ready-file", os.path.join(directory, "ready")]
        else:
            listen = ["--socket", path]
        argv = [
            binary,
            *listen,
            "--parent-pid",
            str(os.getpid()),
            "--exit-on-stdin-eof",
        ]
        log: IO[bytes] | None = None
        try:
            log = open(os.path.join(directory, "sidecar.log"), "ab")
            creationflags = 0
            if sys.platform == "win32":
                creationflags = subprocess.CREATE_NEW_PROCESS_GROUP
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                start_new_session=sys.platform != "win32",
                creationflags=creationflags,
            )
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise SidecarStartError(f"cannot run {binary}: {exc}") from exc
        finally:
            if log is not None:
                log.close()
        sidecar = cls(proc, directory, path, token)
        try:
            sock, hello = sidecar._wait_ready(timeout)
        except BaseException:
            sidecar.stop(timeout=1.0)
            raise
        return sidecar, sock, hello

    def _wait_ready(self, timeout: float) -> tuple[socket.socket, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            code = self.proc.poll()
            if code is not None:
                raise SidecarStartError(
                    f"the sidecar exited with code {code} before answering; "
                    f"last log line: {self.last_log_line()!r}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                where = self.socket_path or "127.0.0.1"
                raise SidecarStartError(
                    f"the sidecar did not answer on {where} within {timeout:g}s"
                )
            try:
                if self._token is None:
                    sock = connect(self.socket_path, remaining)
                else:
                    sock = self._connect_tcp(remaining)
            except OSError:
                time.sleep(min(delay, max(remaining, 0)))
                delay = min(delay * 2, 0.05)
                continue
            try:
                left = max(deadline - time.monotonic(), 0.001)
                return sock, handshake(sock, left, self._token)
            except BaseException:
                sock.close()
                raise

    def _connect_tcp(self, timeout: float) -> socket.socket:
        """Connect to the port the ready file names; OSError until it exists."""
        if not self.socket_path:
            with open(self.ready_path, "rb") as f:  # renamed into place whole
                data = f.read()
            try:
                ready = json.loads(data)
            except ValueError:
                ready = None
            address = str(ready.get("tcp")) if isinstance(ready, dict) else ""
            host, _, port = address.rpartition(":")
            if host != "127.0.0.1" or not port.isdigit():
                raise SidecarStartError(
                    f"the sidecar's ready file {self.ready_path} names no "
                    "127.0.0.1 address"
                )
            self.socket_path = address
        return connect_tcp(self.socket_path, timeout)

    def last_log_line(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read()[-2000:].decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, timeout: float) -> None:
        """Close its stdin (it drains and exits), wait up to `timeout`, then kill.

        Synchronous and thread-free, so it is safe in an atexit handler.
        """
        if os.getpid() != self.owner_pid:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def abandon_after_fork(self) -> None:
        """In a forked child: close the inherited stdin pipe and forget the process.

        The parent still owns the sidecar. Holding its stdin open here would
        keep the sidecar alive until this child exits too.
        """
        stdin = self.proc.stdin
        if stdin is not None:
            try:
                stdin.close()  # this process's copy of the fd only
            except (OSError, ValueError):
                pass
        if sys.platform != "win32":
            # Popen's __del__ would not reap the parent's child from here.
            self.proc.returncode = 0
