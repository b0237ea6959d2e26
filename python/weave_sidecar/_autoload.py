"""Wire the sidecar into weave.init without importing weave.

Imported by the wheel's ``.pth`` line when WEAVE_USE_SIDECAR is true, and by
`weave_sidecar.enable()`. It only adds a finder to ``sys.meta_path`` that
waits for ``weave.trace.weave_init`` to be imported and then wraps its
``init_weave_get_server``; weave's import time is not touched otherwise, and a
program that never imports weave pays one string comparison per import.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "weave.trace.weave_init"
_MARK = "_weave_sidecar_wrapped"


def patch_weave_init(module: ModuleType) -> None:
    """Wrap `init_weave_get_server` so that every server it builds is attached."""
    original = getattr(module, "init_weave_get_server", None)
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def init_weave_get_server(*args: Any, **kwargs: Any) -> Any:
        server = original(*args, **kwargs)
        try:
            from ._sdk import attach

            attach(server)
        except Exception as exc:  # weave.init must work whatever happens here
            from ._link import warn_fallback

            warn_fallback(f"wiring the sidecar into weave failed: {exc!r}")
        return server

    setattr(init_weave_get_server, _MARK, True)
    module.init_weave_get_server = init_weave_get_server  # type: ignore[attr-defined]


class _Loader:
    """Runs the real loader, then patches the module it produced."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        patch_weave_init(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Finder:
    """A meta path finder that only reacts to weave.trace.weave_init."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


def install() -> None:
    """Patch weave now if it is loaded, else when it is; idempotent."""
    module = sys.modules.get(TARGET)
    if module is not None:
        patch_weave_init(module)
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
