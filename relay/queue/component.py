# This module wires the retry scheduler into the service: it turns the config into
# RunnerSettings, recovers leases at start, polls or wakes, and drains at stop. What one
# attempt does is relay/queue/scheduler.py's.
"""The retry queue as a service component (`async start()` / `stop()`).

Each poll (every `[queue] poll_interval` seconds, or at once after `wake()`) the
worker leases due recipients up to `[queue] max_concurrent` in flight. On stop it
finishes in-flight attempts within the drain time; attempts cut short stay
leased and are due again at the next start (`Spool.recover`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from relay.config.load import Config
from relay.queue.scheduler import RetryWorker, RunnerSettings

log = logging.getLogger(__name__)


def runner_settings(cfg: Config, schedule: tuple[timedelta, ...]) -> RunnerSettings:
    """The scheduler's settings from `[queue]` and `[delivery]`."""
    # A lease must outlast one attempt: connects to every MX target plus the commands.
    attempt = 4 * cfg.delivery.connect_timeout + 8 * cfg.delivery.command_timeout
    return RunnerSettings(
        schedule=schedule,
        max_concurrent=cfg.queue.max_concurrent,
        per_domain=max(1, cfg.delivery.max_sessions_per_destination // 2),
        poll_interval=cfg.queue.poll_interval,
        lease=timedelta(seconds=max(600.0, attempt)),
        drain_timeout=cfg.delivery.drain_timeout,
    )


class QueueRunner:
    """The service component: recover at start, poll and wake, drain at stop.

    Runs in the primary worker only (relay.workers): one scheduler per machine.
    """

    def __init__(self, worker: RetryWorker) -> None:
        self.worker = worker
        self.clock = worker.clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        # A little under the service's own bound on stop(), so our drain ends first.
        self._drain = worker.settings.drain_timeout * 0.9

    async def start(self) -> None:
        self.worker.on_free = self.wake
        await self.worker.recover(self.clock())
        self._task = asyncio.create_task(self._loop(), name="bouncer-queue-runner")

    def wake(self) -> None:
        """Look for due work now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
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
        await self.worker.drain(self._drain)
