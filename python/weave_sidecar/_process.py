"""Spawning a private sidecar and owning its lifetime.

The private sidecar of one Python process:
- listens on `s` in a fresh 0700 directory (`wsc-*` under XDG_RUNTIME_DIR or
  TMPDIR, or /tmp when that path would not fit in a Unix socket address);
- runs in its own session, so a terminal Ctrl-C reaches Python only and the
  sidecar is still there to take the last `call_end`;
- gets the backend and the API key through its environment, never argv;
- watches `--parent-pid` and its stdin, a pipe this process never writes to:
  EOF (this process exited or was killed) makes it drain and exit;
- writes its log to `sidecar.log` in its directory, never to our stdout/stderr.
"""

from __future__ import annotations

import os
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

# Variables only the Python side reads; the binary maps WEAVE_SIDECAR_<FLAG>
# to flags, so these are not passed on.
_PYTHON_ONLY_ENV = (
    "WEAVE_SIDECAR_BIN",
    "WEAVE_SIDECAR_SOCKET",
    START_TIMEOUT_ENV,
    "WEAVE_SIDECAR_EXIT_TIMEOUT",
    "WEAVE_SIDECAR_FLUSH_TIMEOUT",
    "WEAVE_SIDECAR_CLIENT_MAX_BYTES",
)


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


def make_socket_dir() -> tuple[str, str]:
    """Create a private directory for the socket; return (dir, socket path).

    Raises:
        SidecarStartError: the directory cannot be created.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    # mkdtemp adds 8 random characters after the prefix.
    probe = os.path.join(base, "wsc-" + "x" * 8, "s")
    if len(os.fsencode(probe)) >= MAX_SOCKET_PATH:
        base = "/tmp"
    try:
        directory = tempfile.mkdtemp(prefix="wsc-", dir=base)
    except OSError as exc:
        raise SidecarStartError(
            f"cannot create a socket directory in {base}: {exc}"
        ) from exc
    return directory, os.path.join(directory, "s")


def connect(path: str, timeout: float) -> socket.socket:
    """Connect to a Unix socket; OSError when nobody listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class SidecarProcess:
    """A sidecar this process spawned; `stop()` ends it and removes its directory."""

    def __init__(
        self, proc: subprocess.Popen[bytes], directory: str, socket_path: str
    ) -> None:
        self.proc = proc
        self.directory = directory
        self.socket_path = socket_path
        self.log_path = os.path.join(directory, "sidecar.log")
        self.owner_pid = os.getpid()

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
        if not hasattr(socket, "AF_UNIX"):
            raise SidecarStartError("this platform has no Unix sockets")
        directory, path = make_socket_dir()
        env = {k: v for k, v in os.environ.items() if k not in _PYTHON_ONLY_ENV}
        env["WEAVE_SIDECAR_BACKEND"] = backend
        env["WEAVE_SIDECAR_API_KEY"] = api_key
        argv = [
            binary,
            "--socket",
            path,
            "--parent-pid",
            str(os.getpid()),
            "--exit-on-stdin-eof",
        ]
        log: IO[bytes] | None = None
        try:
            log = open(os.path.join(directory, "sidecar.log"), "ab")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise SidecarStartError(f"cannot run {binary}: {exc}") from exc
        finally:
            if log is not None:
                log.close()
        sidecar = cls(proc, directory, path)
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
                raise SidecarStartError(
                    f"the sidecar did not answer on {self.socket_path} "
                    f"within {timeout:g}s"
                )
            try:
                sock = connect(self.socket_path, remaining)
            except OSError:
                time.sleep(min(delay, max(remaining, 0)))
                delay = min(delay * 2, 0.05)
                continue
            try:
                return sock, handshake(sock, max(deadline - time.monotonic(), 0.001))
            except BaseException:
                sock.close()
                raise

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
