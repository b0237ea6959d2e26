"""A local Weave trace server for tests, the demo and the benchmark.

``TraceServer`` serves, on 127.0.0.1 only, what ``weave.init("entity/project")``
and traced ops need, stores calls in SQLite, records every call start and end
it accepted (``receipts``, ``duplicates``, ``missing``) and injects faults
(``faults``: latency, scripted statuses, outages, hangs, per-call rejection,
413 above a size, calls-complete mode). ``python -m weave_sidecar.testing``
runs it in its own process, steered through ``/_test/...`` (``ControlClient``).

Standard library only at import; ``weave`` is imported lazily, to validate call
bodies with the SDK's own validators when it is installed.
"""

from __future__ import annotations

from ._control import ControlClient
from ._env import sdk_env
from ._faults import Faults, Response
from ._server import TEST_USERNAME, TraceServer
from ._validate import sdk_validation_available

__all__ = [
    "TEST_USERNAME",
    "ControlClient",
    "Faults",
    "Response",
    "TraceServer",
    "sdk_env",
    "sdk_validation_available",
]
