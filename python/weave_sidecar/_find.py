"""Finding the weave-sidecar binary."""

from __future__ import annotations

import os
import shutil
import sys

from ._exceptions import SidecarNotFoundError

BIN_ENV = "WEAVE_SIDECAR_BIN"


def _exe_name() -> str:
    return "weave-sidecar.exe" if sys.platform == "win32" else "weave-sidecar"


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_sidecar_bin() -> str:
    """Return the path of the weave-sidecar binary; see `find_in`."""
    return find_in(os.path.dirname(os.path.abspath(__file__)))


def find_in(package_dir: str) -> str:
    """Return the weave-sidecar binary for the package installed at `package_dir`.

    Order: the `WEAVE_SIDECAR_BIN` override, the copy bundled in the wheel
    (`weave_sidecar/bin/`), then `PATH`. An override that is set but does not
    name an executable file is an error rather than a reason to look further:
    the user asked for that binary.

    Raises:
        SidecarNotFoundError: nothing usable was found; lists every place tried.
    """
    tried: list[str] = []

    # An explicit override, e.g. a development build.
    override = os.environ.get(BIN_ENV, "")
    if override:
        if _is_executable(override):
            return os.path.abspath(override)
        raise SidecarNotFoundError(
            [f"{BIN_ENV}={override} (not an executable file)"],
            hint=f"Fix or unset {BIN_ENV}.",
        )
    tried.append(f"{BIN_ENV} (unset)")

    # The copy the platform wheel ships next to this package.
    bundled = os.path.join(package_dir, "bin", _exe_name())
    if _is_executable(bundled):
        return bundled
    tried.append(bundled)

    # Anything on PATH, e.g. a binary installed by hand.
    on_path = shutil.which(_exe_name())
    if on_path:
        return on_path
    tried.append(f"{_exe_name()} on PATH")

    raise SidecarNotFoundError(
        tried,
        hint="This wheel may have been built without Go; set "
        f"{BIN_ENV} to a weave-sidecar binary.",
    )
