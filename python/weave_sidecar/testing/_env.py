"""The environment of a Weave-traced subprocess that talks only to a local server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Settings of the SDK and of W&B that a caller's shell could leak into a run.
_SCRUBBED_PREFIXES = ("WEAVE_", "WANDB_", "WF_")
_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def sdk_env(
    url: str,
    home: str | os.PathLike[str],
    api_key: str,
    *,
    base: Mapping[str, str] | None = None,
    keep_prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """Return `base` (default: os.environ) set up to trace into the server at `url`.

    WEAVE_*, WANDB_* and WF_* variables are dropped unless they start with one
    of `keep_prefixes`; HOME points at `home`, so no real netrc or W&B settings
    are read. Nothing the SDK does can leave loopback: weave 0.54 has no switch
    for its PyPI update check, so HTTPS goes to a closed local port.
    """
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if name.startswith(keep_prefixes) or not name.startswith(_SCRUBBED_PREFIXES)
    }
    for name in _PROXY_VARIABLES:
        env.pop(name, None)
    env.update(
        WANDB_BASE_URL=url,
        WF_TRACE_SERVER_URL=url,
        WANDB_API_KEY=api_key,
        HOME=str(home),
        WANDB_CONFIG_DIR=str(Path(home, ".config", "wandb")),
        WANDB_ERROR_REPORTING="false",
        WEAVE_PRINT_CALL_LINK="false",
        WEAVE_USE_SERVER_CACHE="false",
        WEAVE_IMPLICITLY_PATCH_INTEGRATIONS="false",
        WEAVE_ENABLE_DISK_FALLBACK="false",
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env
