"""weave-sidecar: send Weave trace calls through a local Go sidecar.

With the wheel installed and ``WEAVE_USE_SIDECAR=true``, ``weave.init()``
routes ``call_start``/``call_end`` through the sidecar with no code change
(supported SDK: ``weave>=0.54,<0.55``). `enable()` does the same explicitly,
before or after ``weave.init()``. Whatever fails, calls take the SDK's own
HTTP path and the ``weave_sidecar`` logger warns once.
"""

from __future__ import annotations

from typing import Any

from ._exceptions import (
    SidecarError,
    SidecarNotFoundError,
    SidecarProtocolError,
    SidecarStartError,
)
from ._find import find_sidecar_bin
from ._version import __version__

__all__ = [
    "SidecarError",
    "SidecarNotFoundError",
    "SidecarProtocolError",
    "SidecarStartError",
    "__version__",
    "enable",
    "find_sidecar_bin",
    "status",
]


def enable() -> None:
    """Route the Weave SDK's call_start/call_end through the sidecar.

    Call it before or after ``weave.init()``: clients created later are wired
    as they are made, and the current client (if any) is wired now. Never
    raises for sidecar problems; those fall back to HTTP with one warning.
    """
    from . import _autoload, _sdk

    _autoload.install()
    _sdk.attach_current_client()


def status() -> dict[str, Any] | None:
    """The current weave client's sidecar state, or None when it uses none.

    Keys: ``state`` (``open``, ``failed``, ``closed``), ``backend``, ``shared``,
    ``pid`` and ``version`` (from the sidecar's hello), ``socket`` and ``log``
    (private sidecars), ``sent`` (calls the sidecar took), ``held`` (calls not
    yet resolved) and ``fallback_reason``.
    """
    from . import _sdk

    return _sdk.status()
