"""Errors raised by weave_sidecar.

    SidecarError
    ├── SidecarNotFoundError     (also FileNotFoundError) no binary in any place tried
    ├── SidecarStartError        the sidecar could not be started or did not answer
    └── SidecarProtocolError     the sidecar answered, but not in a way we understand

The launcher never lets these reach traced code: a failure becomes a fallback to
the SDK's own HTTP path plus one warning. They surface only from the public
helpers (`find_sidecar_bin`) and from `python -m weave_sidecar`.
"""

from __future__ import annotations

from collections.abc import Sequence


class SidecarError(Exception):
    """Base class for every weave_sidecar error."""


class SidecarNotFoundError(SidecarError, FileNotFoundError):
    """No weave-sidecar binary was found; `tried` lists each place looked at."""

    def __init__(self, tried: Sequence[str], hint: str = "") -> None:
        self.tried = list(tried)
        lines = ["weave-sidecar binary not found; tried:"]
        lines += [f"  - {place}" for place in self.tried]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class SidecarStartError(SidecarError):
    """The sidecar process could not be spawned, exited early or never answered."""


class SidecarProtocolError(SidecarError):
    """The sidecar's answer broke the wire protocol (docs/protocol.md)."""
