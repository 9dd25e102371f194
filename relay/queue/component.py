# This module wires the retry scheduler into the service: it turns the config into
# RunnerSettings, recovers leases at start, polls or wakes, and drains at stop. What one
# attempt does is relay/queue/scheduler.py's.
"""The retry queue as a service component (`async start(service)` / `stop()`).

Each poll (every `[queue] poll_interval` seconds, or at once after `wake()`) the
worker leases due recipients up to `[queue] max_concurrent` in flight. On stop it
finishes in-flight attempts within the drain time; attempts cut short stay
leased and are due again at the next start (`Spool.recover`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from relay.queue.queue import utcnow
from relay.queue.scheduler import RetryWorker, RunnerSettings

log = logging.getLogger(__name__)


class QueueRunner:
    """The service component: recover at start, poll and wake, drain at stop.

    Runs in the primary worker only (relay.workers): one scheduler per machine.
    """

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self.worker: RetryWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._drain = 30.0

    async def start(self, service: Any) -> None:
        from policy.classify.classify import classify
        from relay.workers import is_primary

        if service.spool is None or not is_primary():
            return
        cfg = service.config
        self.clock = getattr(service, "clock", self.clock)
        # A little under the service's own bound on stop(), so our drain ends first.
        self._drain = cfg.delivery.drain_timeout * 0.9
        # A lease must outlast one attempt: connects to every MX target plus the commands.
        attempt = 4 * cfg.delivery.connect_timeout + 8 * cfg.delivery.command_timeout
        settings = RunnerSettings(
            schedule=service.spool.schedule,
            max_concurrent=cfg.queue.max_concurrent,
            per_domain=max(1, cfg.delivery.max_sessions_per_destination // 2),
            poll_interval=cfg.queue.poll_interval,
            lease=timedelta(seconds=max(600.0, attempt)),
            drain_timeout=cfg.delivery.drain_timeout,
        )
        self.worker = RetryWorker(
            service.spool,
            service.delivery.deliver_message,
            classify,
            service.store,
            service.events,
            service.writer.run,
            settings,
            self.clock,
        )
        self.worker.on_free = self.wake
        await self.worker.recover(self.clock())
        self._task = asyncio.create_task(self._loop(), name="bouncer-queue-runner")

    def wake(self) -> None:
        """Look for due work now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        assert self.worker is not None
        while not self._stopping:
            try:
                await self.worker.run_once(self.clock())
            except Exception:  # a full disk must not end retries for good: try next poll
                log.exception("queue: scheduling failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.worker.settings.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self) -> None:
        """Stop leasing, then let in-flight attempts finish within the drain time."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self.worker is not None:
            await self.worker.drain(self._drain)


def queue_runner(service: Any) -> QueueRunner | None:
    """The factory relay.service's COMPONENTS names: a runner whenever there is a spool."""
    return QueueRunner() if service.spool is not None else None
