# This module batches the retry runner's queue writes into group commits: whatever is
# waiting when the writer thread frees up goes in one LMDB transaction with one fsync.
# It decides nothing about what is written (relay/queue/scheduler.py and relay/queue/queue.py do).
"""Group commit for the retry runner's queue writes.

Each delivery attempt writes twice: the "delivering" mark before the final dot
and the settlement after the remote's reply. One transaction and one fsync each,
queued behind each other on the one writer thread, would hold a delivered
recipient unrecorded for as long as the queue ahead of it takes; a `kill -9` in
that time makes the next start deliver it again. Here the writes that arrive
while a commit is in progress wait for the next one and share its fsync, so the
time from a remote's 250 to a durable "delivered" stays about one fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import lmdb

from relay.queue.queue import Spool

log = logging.getLogger(__name__)

Work = Callable[[lmdb.Transaction], Any]
After = Callable[[Any], None]  # runs in the writer thread once the batch is durable
RunWrite = Callable[[Callable[[], Any]], Awaitable[Any]]


class GroupCommit:
    """`await commit(work, after)`: `work(txn)` is durable (in a shared commit) on return."""

    def __init__(self, spool: Spool, run_write: RunWrite) -> None:
        self.spool = spool
        self.run_write = run_write
        self._pending: list[tuple[Work, After | None, asyncio.Future[Any]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps weak references
        self.commits = 0  # transactions written (for tests and figures)

    async def commit(self, work: Work, after: After | None = None) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((work, after, future))
        if not self._flushing:
            self._flushing = True
            self._task = asyncio.get_running_loop().create_task(self._flush())
        return await asyncio.shield(future)  # a cancelled attempt: its write still completes

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self.run_write(lambda b=batch: self._write(b))  # type: ignore[misc]
                except Exception as exc:  # the whole batch failed (disk full, I/O error)
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), (error, result) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(result)
        finally:
            self._flushing = False

    def _write(
        self, batch: list[tuple[Work, After | None, asyncio.Future[Any]]]
    ) -> list[tuple[Exception | None, Any]]:
        """In the writer thread: one transaction for the batch, then each `after`.

        When the shared transaction fails, each write is tried alone, so one bad write
        does not take the others down with it.
        """
        results: list[tuple[Exception | None, Any]]
        try:
            results = [(None, r) for r in self.spool.write_many([w for w, _, _ in batch])]
            self.commits += 1
        except Exception:
            results = []
            for work, _, _ in batch:
                try:
                    results.append((None, self.spool.write_many([work])[0]))
                except Exception as exc:
                    results.append((exc, None))
                self.commits += 1
        for (_, after, _), (error, result) in zip(batch, results, strict=True):
            if after is not None and error is None:
                try:
                    after(result)
                except Exception:  # e.g. the suppression store is full: the queue write stands
                    log.exception("queue: a write after the commit failed")
        return results
