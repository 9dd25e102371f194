# One writer: every LMDB write (store records, spool accepts) runs on this single thread, so
# the event loop never blocks on an fsync and writes never contend for LMDB's write lock
# inside this process (Postfix: each durable store has one writer).
"""The single-thread executor for durable writes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Writer:
    """Runs blocking write functions one at a time, off the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bouncer-writer")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the writer thread and wait for it; exceptions propagate.

        Shielded: a client that disconnects mid-write does not cancel a write that has been
        handed to the thread (it completes; only our wait for it is abandoned).
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        return await asyncio.shield(future)

    def close(self) -> None:
        """Finish queued writes, then stop the thread."""
        self._executor.shutdown(wait=True)
