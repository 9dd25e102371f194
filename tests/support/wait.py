"""Waiting for a condition with a deadline, instead of sleeping a fixed time.

A test that needs something to have happened waits for that very thing, so it runs as
fast as the code allows and fails with the name of what never came, rather than passing
or failing by the length of a sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

INTERVAL = 0.01


async def until(
    check: Callable[[], object] | Callable[[], Awaitable[object]],
    what: str,
    within: float = 10.0,
    interval: float = INTERVAL,
) -> None:
    """Poll `check` (sync or async) on the running loop until it is truthy, or fail.

    `interval` is for costly checks (one that runs a CLI subprocess, say).
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def until_sync(check: Callable[[], object], what: str, within: float = 10.0) -> None:
    """The same for code outside an event loop (threads, subprocess tests)."""
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(INTERVAL)
