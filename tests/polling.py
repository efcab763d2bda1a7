"""Waiting, bounded, for something the system does on its own time (a sync, an import, a consumer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any], timeout: float = 60, what: str = "condition", every: float = 0.25
) -> Any:
    """Calls `check` until it returns something truthy and returns it; past `timeout` seconds, raises
    TimeoutError naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout} s (last: {last!r})")
