"""An op interrupted by SIGINT: prints the call id, then sleeps until interrupted.

Usage: interrupted.py PROJECT_ID [--enable]
"""

from __future__ import annotations

import sys
import time

import weave


@weave.op
def slow() -> None:
    call = weave.get_current_call()
    assert call is not None
    print(f"CALL {call.id}", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    if "--enable" in sys.argv:
        import weave_sidecar

        weave_sidecar.enable()
    weave.init(sys.argv[1])
    slow()
