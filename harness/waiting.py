"""Waiting, bounded, for something the system does on its own time (a sync, an import, a consumer).

One helper in two forms, for tests, benchmarks and the local journey alike: `wait_for` (blocking) and
`wait_for_async` (for a running event loop). Both call `check` until it gives a truthy value (or one that
`until` accepts) and return that value; past `timeout` seconds they raise TimeoutError naming `what` and
the last value seen. The check runs at least once, and once more at the deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object) -> TimeoutError:
    return TimeoutError(f"{what}: not within {timeout:g} s (last: {last!r})")


def wait_for(
    check: Callable[[], T],
    timeout: float = 60,
    what: str = "condition",
    every: float = 0.25,
    *,
    until: Callable[[T], object] = bool,
) -> T:
    """Calls `check` every `every` seconds until `until(value)` (by default: the value is truthy) and
    returns the value; past `timeout` seconds, raises TimeoutError naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if until(last):
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(max(0.0, min(every, deadline - time.monotonic())))


@overload
async def wait_for_async(
    check: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    what: str = ...,
    every: float = ...,
    *,
    until: Callable[[T], object] = ...,
) -> T: ...


@overload
async def wait_for_async(
    check: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    what: str = ...,
    every: float = ...,
    *,
    until: Callable[[T], object] = ...,
) -> T: ...


async def wait_for_async(
    check: Callable[[], Any],
    # the bound of the wait itself, named like the blocking form's (asyncio.timeout would not say what
    # was awaited nor the last value seen)
    timeout: float = 60,  # noqa: ASYNC109
    what: str = "condition",
    every: float = 0.25,
    *,
    until: Callable[[Any], object] = bool,
) -> Any:
    """`wait_for` inside an event loop: `check` may be a plain function or a coroutine function, and the
    pause between calls is `asyncio.sleep` (the loop goes on meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if until(last):
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(max(0.0, min(every, deadline - time.monotonic())))
