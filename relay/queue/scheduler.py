# This module schedules retries: it leases due recipients from the spool, hands them to
# the same delivery code as live traffic, and records what policy makes of each reply.
# It decides nothing itself: classify() judges a reply, policy/decide.py settles the
# recipient (delivered, bounced, queued again at the schedule's next slot, expired).
"""The retry queue's scheduler: lease due recipients, deliver, settle.

`RetryWorker.run_once(now)` leases due recipients up to `[queue] max_concurrent`
in flight, one delivery per message, so retries never take more than that share
of remote sessions away from live mail. Spool and store writes go through the
one writer thread of the process (`run_write`); the event loop only reads.
`drain` lets in-flight attempts finish within the drain time; attempts cut short
stay leased and are due again at the next start (`Spool.recover`), so a stop can
duplicate a delivery but never lose one. Before DATA the recipients are marked
"delivering" (write-ahead), so that start can name the ones that may be at the
remote already; marks and settlements share group commits (relay/queue/commit.py),
which keeps the time from a remote's 250 to a durable record about one fsync. The
service component around it (config, poll loop, stop) is relay/queue/component.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from policy.decide import Disposition, Settings, Stage, decide
from policy.reply import Reply
from policy.verdict import Verdict
from relay.observe.events import EventBus, MessageEvent, RecipientEvent
from relay.observe.headers import message_id_of
from relay.outbound.values import Outcome
from relay.queue.commit import GroupCommit
from relay.queue.queue import (
    Attempt,
    Lease,
    QueuedRecipient,
    Recovered,
    Settlement,
    Spool,
    owner_alive,
    utcnow,
)
from relay.store.env import StateError

log = logging.getLogger(__name__)
T = TypeVar("T")

BeforeData = Callable[[Sequence[str]], Awaitable[None]]


class Deliver(Protocol):
    """The deliver step (Delivery.deliver_message): one Outcome per recipient.

    `before_data(recipients)` is awaited before the message's final dot is sent to
    those recipients; when it raises, they are not sent the message.
    """

    def __call__(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        queue_id: str,
        options: Sequence[str],
        *,
        before_data: BeforeData | None = None,
    ) -> Awaitable[Mapping[str, Outcome]]: ...


RunWrite = Callable[[Callable[[], Any]], Awaitable[Any]]
INTERNAL = Reply(451, "4.3.0", "Internal error while retrying; will try again")


class StoreWrites(Protocol):
    """The store writes a retry outcome makes (policy.suppression.store.SuppressionStore)."""

    def record_verdict(
        self, address: str, verdict: Verdict, reply: Reply, now: datetime
    ) -> None: ...
    def record_success(self, address: str, now: datetime) -> None: ...


@dataclass(frozen=True)
class RunnerSettings:
    schedule: tuple[timedelta, ...]
    max_concurrent: int = 20
    # Retries in flight to one recipient domain at once: a share of the per-destination
    # session cap, so a backlog for one busy remote leaves sessions for live mail to it.
    per_domain: int = 5
    poll_interval: float = 1.0
    lease: timedelta = timedelta(minutes=10)  # longer than any one delivery attempt
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class _Result:
    rcpt: QueuedRecipient
    outcome: Outcome
    verdict: Verdict
    settlement: Settlement


class RetryWorker:
    """Lease → deliver → settle, with time as a parameter (`run_once(now)`)."""

    def __init__(
        self,
        spool: Spool,
        deliver: Deliver,
        classify: Callable[[Reply], Verdict],
        store: StoreWrites | None,
        events: EventBus,
        run_write: RunWrite,
        settings: RunnerSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.spool, self.deliver, self.classify = spool, deliver, classify
        self.store, self.events, self.run_write = store, events, run_write
        self.settings, self.clock = settings, clock
        self.decide_settings = Settings(schedule=settings.schedule)
        self.owner = f"{os.getpid()}:{secrets.token_hex(4)}"
        self.commits = GroupCommit(spool, run_write)
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._domains: dict[str, tuple[asyncio.Semaphore, int]] = {}  # (slots, users)
        self.on_free: Callable[[], None] = lambda: None  # a slot freed: look for more work

    async def recover(self, now: datetime) -> int:
        """Leases of dead processes (and of earlier runners in this one) are due now."""
        mine = self.owner.split(":", 1)[0] + ":"

        def alive(owner: str) -> bool:
            return owner == self.owner or (not owner.startswith(mine) and owner_alive(owner))

        found: Recovered = await self.run_write(lambda: self.spool.recover(now, alive))
        if found.count:
            log.info("queue: %d recipient(s) in flight at the last stop are due again", found.count)
        for qid, rcpt in found.possibly_delivered:
            # Past the final dot when the process died: the remote may have it. Sent again
            # (at-least-once, as every MTA does); the log says which ones might be twice.
            log.warning(
                "queue %s: to=<%s> was being delivered when bouncer stopped; "
                "sending again (the remote may already have it)",
                qid,
                rcpt,
            )
        return found.count

    async def run_once(self, now: datetime) -> int:
        """Start attempts for due recipients (up to the free slots); returns how many."""
        free = self.settings.max_concurrent - self.in_flight
        due = self.spool.first_due()
        if free <= 0 or due is None or due > now:
            return 0
        until = now + self.settings.lease
        leases: list[Lease] = await self.run_write(
            lambda: self.spool.lease_due(now, free, self.owner, until)
        )
        started = 0
        for lease in leases:
            n = len(lease.message.recipients)
            self.in_flight += n
            started += n
            task = asyncio.create_task(self.attempt(lease))
            self.tasks.add(task)
            task.add_done_callback(self._done(n))
        return started

    def _done(self, n: int) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self.in_flight -= n
            self.tasks.discard(task)
            self.on_free()

        return done

    async def attempt(self, lease: Lease) -> None:
        """One delivery attempt for a leased message, then one settle transaction."""
        msg = lease.message
        rcpts = [r.recipient for r in msg.recipients]
        if msg.kind == "dsn" and all(r.tries == 0 for r in msg.recipients):
            # A DSN bouncer made (at DATA or at expiry) enters the mail log on its first
            # try, as Postfix's qmgr logs `from=<>` for a bounce it is about to send.
            self.events.emit(
                MessageEvent(
                    msg.queue_id,
                    "",
                    msg.size,
                    len(rcpts),
                    self.clock(),
                    message_id=message_id_of(lease.data),
                )
            )
        started = time.monotonic()
        try:
            async with AsyncExitStack() as stack:
                # Sorted, so two messages needing the same domains never wait on each other.
                for domain in sorted({r.rpartition("@")[2].lower() for r in rcpts}):
                    await stack.enter_async_context(self._domain_slot(domain))
                outcomes = await self.deliver(
                    msg.sender,
                    rcpts,
                    lease.data,
                    msg.queue_id,
                    msg.options,
                    before_data=self._mark_delivering(msg.queue_id),
                )
        except asyncio.CancelledError:
            raise  # stopped: the lease stays and comes due again
        except Exception:  # the one top-level catch: a bug must not kill the scheduler
            log.exception("queue %s: delivery attempt failed", msg.queue_id)
            outcomes = {}
        took = time.monotonic() - started
        now = self.clock()
        verdicts: dict[Reply, Verdict] = {}
        results = [self._judge(r, outcomes.get(r.recipient), now, verdicts) for r in msg.recipients]
        try:
            dsn_id = await self.commits.commit(
                lambda txn: self.spool.settle_in(
                    txn, msg.queue_id, [r.settlement for r in results], now
                ),
                lambda _: self._record_store(msg.queue_id, results, now),
            )
        except StateError:
            # Not recorded: the lease stays, so it is tried again when the lease ends (a
            # delivered recipient may then get a duplicate; nothing is lost).
            log.exception("queue %s: cannot record the attempt", msg.queue_id)
            return
        delay = (now - msg.arrived).total_seconds()
        for res in results:
            self.events.emit(
                RecipientEvent(
                    queue_id=msg.queue_id,
                    recipient=res.rcpt.recipient,
                    status=res.settlement.disposition,
                    reply=res.outcome.reply,
                    when=now,
                    relay=res.outcome.relay,
                    stage=res.outcome.stage,
                    delay=delay,
                    delays=retry_delays(delay, took),
                    verdict=res.verdict,
                    attempt=res.rcpt.tries + (1 if msg.kind == "dsn" else 0),
                    sender=msg.sender,
                    notice=msg.kind == "dsn",
                )
            )
        if dsn_id is not None:
            log.info("queue %s: sender non-delivery notification: %s", msg.queue_id, dsn_id)

    @asynccontextmanager
    async def _domain_slot(self, domain: str) -> AsyncIterator[None]:
        """One of `per_domain` slots; the semaphore goes when its last user does."""
        sem, users = self._domains.get(domain, (asyncio.Semaphore(self.settings.per_domain), 0))
        self._domains[domain] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._domains[domain]
            if users == 1:
                del self._domains[domain]
            else:
                self._domains[domain] = (sem, users - 1)

    def _judge(
        self,
        r: QueuedRecipient,
        out: Outcome | None,
        now: datetime,
        verdicts: dict[Reply, Verdict],
    ) -> _Result:
        out = out or Outcome(INTERNAL)
        verdict = verdicts.get(out.reply)
        if verdict is None:  # one session's reply is classified once for all it answered
            verdict = verdicts[out.reply] = self.classify(out.reply)
        decided = decide(
            out.reply,
            verdict,
            Stage.RETRY,
            answered=out.answered,
            attempt=r.tries + 1,
            first_failure=r.first_failure,
            now=now,
            settings=self.decide_settings,
        )
        attempt = Attempt(now, out.reply, out.relay, out.stage)
        s = Settlement(r.recipient, decided.disposition, attempt, next_at=decided.next_at)
        # QUEUED is logged "deferred (queued for retry)"; EXPIRED carries the expiry verdict.
        return _Result(r, out, decided.verdict or verdict, s)

    def _mark_delivering(self, queue_id: str) -> BeforeData:
        async def mark(recipients: Sequence[str]) -> None:
            now = self.clock()
            await self.commits.commit(
                lambda txn: self.spool.mark_delivering_in(txn, queue_id, recipients, now)
            )

        return mark

    def _record_store(self, queue_id: str, results: list[_Result], now: datetime) -> None:
        """In the writer thread, once the settlement is durable: the suppression store."""
        if self.store is not None:
            for res in results:
                try:
                    if res.settlement.disposition is Disposition.DELIVERED:
                        self.store.record_success(res.rcpt.recipient, now)
                    else:
                        self.store.record_verdict(
                            res.rcpt.recipient, res.verdict, res.outcome.reply, now
                        )
                except Exception:  # the queue outcome stands even when the store is full
                    log.exception("queue %s: store write for %s failed", queue_id, res.rcpt)

    async def drain(self, within: float) -> None:
        """Let in-flight attempts finish for up to `within` seconds, then cancel the rest."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "queue: %d attempt(s) cut short by the stop; due again at start", len(pending)
            )
            await asyncio.gather(*pending, return_exceptions=True)


def retry_delays(delay: float, took: float) -> tuple[float, float, float, float]:
    """Postfix's delays=a/b/c/d for a retry: a (before the queue) is 0, b is the time the
    message waited in the queue, and the attempt itself is d: the connection setup and
    the transmission are one step here (c = 0). a+b+c+d = delay, as in Postfix."""
    took = min(max(took, 0.0), max(delay, 0.0))
    return (0.0, round(max(delay - took, 0.0), 3), 0.0, round(took, 3))
