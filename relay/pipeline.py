# The flow of one client transaction, top to bottom: suppression check -> route -> remote
# MAIL/RCPT -> reply mapping (policy) -> store -> at DATA: remotes, spool, events.
# Policy decides (policy/client_reply.py, classify); this module sequences and records.
"""The in-transaction relay pipeline, independent of the SMTP server library.

What it answers: docs/behaviour.md#the-transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from policy.address import domain_of
from policy.classify.classify import shared_data_verdict
from policy.client_reply import DataPlan, SessionResult, data_plan, rcpt_decision
from policy.reply import Reply
from policy.verdict import Verdict
from relay.observe.events import EventBus, MessageEvent, RecipientEvent, Status
from relay.outbound.delivery import Delivery, RemoteTransaction
from relay.outbound.values import Classifier, Outcome, SpoolSink, Store, new_queue_id
from relay.queue.records import SpoolMessage
from relay.store.writer import Writer

log = logging.getLogger(__name__)

TEMP_STORE = Reply(451, "4.3.0", "Temporary local problem (state store); try again later")


def utcnow() -> datetime:
    return datetime.now(UTC)


# Postfix's delays=a/b/c/d: before delivery started (here: MAIL to this RCPT), queue manager
# (always 0 live), connection setup (route, session, MAIL FROM), transmission (RCPT, DATA).
Delays = tuple[float, float, float, float]


def _write_all(writes: list[tuple[str, Callable[[], None]]]) -> None:
    """Writer thread: run each store write; one failing does not stop the others."""
    for key, write in writes:
        try:
            write()
        except Exception:
            log.exception("store: cannot record the outcome for %s", key)


@dataclass
class Recipient:
    address: str  # as the client spelled it (what the remote is given)
    key: str  # normalised (what the store files it under)
    remote: RemoteTransaction | None  # the remote that accepted it at RCPT
    soft: Reply | None = None  # accepted for the retry queue with this soft reply
    relay: str = "none"
    delays: Delays = (0.0, 0.0, 0.0, 0.0)  # as of its RCPT; DATA adds its transmission time


@dataclass
class ClientTransaction:
    """One MAIL..DATA exchange of a client, with the remote transactions it opened."""

    sender: str  # "" for the null reverse-path
    options: tuple[str, ...]
    client: str  # "name[ip]"
    queue_id: str = field(default_factory=new_queue_id)
    sasl_username: str = ""  # the AUTH login the client relays with, "" without AUTH
    message_id: str = ""  # the message's Message-ID header, once DATA has arrived
    arrived: datetime = field(default_factory=utcnow)
    started: float = field(default_factory=time.monotonic)
    remotes: dict[tuple[str, str], RemoteTransaction] = field(default_factory=dict)
    recipients: list[Recipient] = field(default_factory=list)

    def delay(self) -> float:
        return round(time.monotonic() - self.started, 3)


@dataclass
class Pipeline:
    delivery: Delivery
    classify: Classifier
    writer: Writer
    events: EventBus
    store: Store | None = None
    spool: SpoolSink | None = None
    soft_bounce: str = "queue"
    clock: Callable[[], datetime] = utcnow

    async def rcpt(self, txn: ClientTransaction, address: str, key: str) -> Reply:
        """Ask the store, then the remote; answer the client. `key` is the normalised address."""
        now = self.clock()
        started = time.monotonic()
        before = started - txn.started
        if self.store is not None:
            refusal = self.store.check(key, now)
            if refusal is not None:
                try:
                    await self.writer.run(self.store.record_refusal, refusal, now)
                except Exception:
                    log.exception("store: cannot record refusal of %s", key)
                    return TEMP_STORE
                delays = (before, 0.0, 0.0, 0.0)
                self._event(txn, key, Status.SUPPRESSED, Outcome(refusal.reply), now, delays)
                return refusal.reply
        outcome, remote, setup = await self._ask_remote(txn, address, key)
        delays = (before, 0.0, setup, time.monotonic() - started - setup)
        decision = rcpt_decision(outcome.reply, self.soft_bounce, self.spool is not None)
        if not outcome.reply.is_success and self.store is not None:
            try:
                verdict = self.classify(outcome.reply)
                await self.writer.run(self.store.record_verdict, key, verdict, outcome.reply, now)
            except Exception:
                log.exception("store: cannot record verdict for %s", key)
                return TEMP_STORE
        if decision.accepted:
            txn.recipients.append(
                Recipient(
                    address,
                    key,
                    None if decision.queued else remote,
                    outcome.reply if decision.queued else None,
                    outcome.relay,
                    delays,
                )
            )
        elif outcome.reply.is_permanent:
            self._event(txn, key, Status.BOUNCED, outcome, now, delays)
        else:
            self._event(txn, key, Status.DEFERRED, outcome, now, delays)
        return decision.reply

    async def _ask_remote(
        self, txn: ClientTransaction, address: str, key: str
    ) -> tuple[Outcome, RemoteTransaction | None, float]:
        """The remote's (or DNS's) answer for one recipient, and the setup time it took."""
        started = time.monotonic()
        route = await self.delivery.route(domain_of(key))
        if isinstance(route, Reply):
            return Outcome(route, "none", "connect"), None, time.monotonic() - started
        remote_sender = self.delivery.remote_sender(txn.sender, key, txn.queue_id)
        remote = txn.remotes.get((route.key, remote_sender))
        if remote is None:
            # Another remote sender (VERP) to a destination this transaction already holds
            # sessions for: never wait for a slot it holds itself; over the cap it is soft.
            holding = any(k == route.key for k, _ in txn.remotes)
            remote = await self.delivery.open_transaction(
                route, remote_sender, txn.options, wait=not holding, first=address
            )
            if remote.failure is not None and remote.failure.reply.enhanced == "4.4.5":
                # not cached: a later recipient may find a slot
                return remote.failure, None, time.monotonic() - started
            txn.remotes[(route.key, remote_sender)] = remote
        setup = time.monotonic() - started
        return await remote.rcpt(address), remote, setup

    async def data(self, txn: ClientTransaction, message: bytes) -> Reply:
        """Send `message` (Received: header included) to every remote with accepted recipients."""
        sending = [rt for rt in txn.remotes.values() if rt.accepted and not rt.done]
        for rt in txn.remotes.values():
            if rt not in sending:
                await rt.abort()
        timed = await asyncio.gather(*(_timed(rt.data(message)) for rt in sending))
        by_address: dict[str, tuple[Outcome, float]] = {}
        results = []
        for rt, (outcome, took) in zip(sending, timed, strict=True):
            results.append(SessionResult(tuple(rt.accepted), outcome.reply))
            for address in rt.accepted:
                by_address[address] = (outcome, took)
        queued = [(r.address, r.soft) for r in txn.recipients if r.soft is not None]
        plan = data_plan(results, queued, self.soft_bounce, self.spool is not None, txn.queue_id)
        now = self.clock()
        reply = plan.reply
        if plan.needs_spool and self.spool is not None:
            try:
                await self.writer.run(
                    self.spool.accept, self._spool_message(txn, message, plan), now
                )
            except Exception:
                log.exception("%s: spool refused the message; answering 451", txn.queue_id)
                reply = Reply(451, "4.3.0", "Temporary local problem (queue); try again later")
        if reply.is_success:
            self.events.emit(
                MessageEvent(
                    txn.queue_id,
                    txn.sender,
                    len(message),
                    len(txn.recipients),
                    now,
                    txn.client,
                    txn.message_id,
                    txn.sasl_username,
                )
            )
        await self._record(txn, by_address, reply, now)
        return reply

    async def _record(
        self,
        txn: ClientTransaction,
        by_address: dict[str, tuple[Outcome, float]],
        reply: Reply,
        now: datetime,
    ) -> None:
        """Events and store records for every recipient once DATA is answered.

        The store writes of one message go to the writer thread as one batch (one hop, not
        one per recipient); the mail is already answered for, so a failed write is logged only.
        """
        writes: list[tuple[str, Callable[[], None]]] = []
        for r in txn.recipients:
            sent = by_address.get(r.address)
            if sent is None:  # queued at RCPT
                assert r.soft is not None
                soft = Outcome(r.soft, r.relay, "RCPT")
                status = Status.QUEUED if reply.is_success else Status.DEFERRED
                self._event(txn, r.key, status, soft, now, r.delays)
                continue
            outcome, took = sent
            a, b, c, d = r.delays
            delays = (a, b, c, d + took)
            if outcome.reply.is_success:
                self._event(txn, r.key, Status.SENT, outcome, now, delays)
                # Most delivered addresses have no record: a read on the loop spares the
                # writer-thread hop per message (seen in the benchmark's profile).
                if self.store is not None and self.store.has_records(r.key):
                    writes.append((r.key, partial(self.store.record_success, r.key, now)))
                elif self.store is not None:  # record_success notes it otherwise
                    self.store.note_delivered(r.key, now)  # the storm breaker's attempts
                continue
            if outcome.reply.is_permanent:
                status = Status.BOUNCED
            else:
                status = Status.QUEUED if reply.is_success else Status.DEFERRED
            verdict = shared_data_verdict(self.classify(outcome.reply), outcome.answered)
            self._event(txn, r.key, status, outcome, now, delays, verdict)
            if self.store is not None:
                record = partial(self.store.record_verdict, r.key, verdict, outcome.reply, now)
                writes.append((r.key, record))
        if writes:
            await self.writer.run(_write_all, writes)

    def _spool_message(
        self, txn: ClientTransaction, message: bytes, plan: DataPlan
    ) -> SpoolMessage:
        return SpoolMessage(
            queue_id=txn.queue_id,
            sender=txn.sender,
            data=message,
            arrived=txn.arrived,
            deferred=plan.deferred,
            failed=plan.failed,
            options=txn.options,
        )

    async def abort(self, txn: ClientTransaction) -> None:
        """The client reset, quit or vanished: no remote transaction stays open."""
        for rt in txn.remotes.values():
            try:
                await rt.abort()
            except Exception:
                log.exception("abort of remote transaction to %s failed", rt.route.key)

    def _event(
        self,
        txn: ClientTransaction,
        key: str,
        status: Status,
        outcome: Outcome,
        now: datetime,
        delays: Delays,
        verdict: Verdict | None = None,
    ) -> None:
        if verdict is None and not outcome.reply.is_success:
            verdict = self.classify(outcome.reply)
        self.events.emit(
            RecipientEvent(
                queue_id=txn.queue_id,
                recipient=key,
                status=status,
                reply=outcome.reply,
                when=now,
                relay=outcome.relay,
                stage=outcome.stage,
                delay=txn.delay(),
                delays=(round(delays[0], 3), 0.0, round(delays[2], 3), round(delays[3], 3)),
                verdict=verdict,
                sender=txn.sender,
                client=txn.client,
            )
        )


async def _timed(step: Awaitable[Outcome]) -> tuple[Outcome, float]:
    started = time.monotonic()
    outcome = await step
    return outcome, time.monotonic() - started
