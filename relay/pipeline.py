# The flow of one client transaction, top to bottom: suppression check -> route -> remote
# MAIL/RCPT -> reply mapping (policy) -> store -> at DATA: remotes, spool, events.
# Policy decides (classify once per reply, policy/decide.py the outcome, policy/client_reply.py
# what the client hears); this module sequences and records.
"""The in-transaction relay pipeline, independent of the SMTP server library.

What it answers: docs/behaviour.md#the-transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from policy.address import Address
from policy.client_reply import (
    QUEUE_REFUSED,
    TEMP_STORE,
    DataPlan,
    SessionResult,
    data_plan,
    rcpt_decision,
)
from policy.decide import Disposition, Settings, Stage, decide
from policy.lmtp_reply import RecipientPlan, recipient_plan
from policy.reply import Reply
from policy.verdict import Verdict
from relay.config.schema import SoftBounce
from relay.observe.events import EventBus, MessageEvent, RecipientEvent
from relay.outbound.delivery import Delivery, RemoteTransaction
from relay.outbound.values import Classifier, Outcome, SpoolSink, Store, new_queue_id
from relay.queue.records import SpoolMessage
from relay.store.writer import Writer

log = logging.getLogger(__name__)


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
    rcpt: Address
    remote: RemoteTransaction | None  # the remote that accepted it at RCPT
    soft: Reply | None = None  # accepted for the retry queue with this soft reply
    relay: str = "none"
    delays: Delays = (0.0, 0.0, 0.0, 0.0)  # as of its RCPT; DATA adds its transmission time
    verdict: Verdict | None = None  # the classification of `soft`


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
class SentData:
    """What the remotes said to DATA: per session (SMTP's one reply is made from these) and
    per recipient address, with the time its session's DATA took (LMTP answers each)."""

    sessions: list[SessionResult] = field(default_factory=list)
    by_address: dict[str, tuple[Outcome, float]] = field(default_factory=dict)


@dataclass
class Pipeline:
    delivery: Delivery
    classify: Classifier
    writer: Writer
    events: EventBus
    store: Store | None = None
    spool: SpoolSink | None = None
    soft_bounce: SoftBounce = "queue"
    clock: Callable[[], datetime] = utcnow

    async def rcpt(self, txn: ClientTransaction, rcpt: Address) -> Reply:
        """Ask the store, then the remote; answer the client."""
        key = rcpt.key
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
                refused = Outcome(refusal.reply)
                judged = self.classify(refusal.reply)
                self._event(txn, key, Disposition.SUPPRESSED, refused, now, delays, judged)
                return refusal.reply
        outcome, remote, setup = await self._ask_remote(txn, rcpt)
        delays = (before, 0.0, setup, time.monotonic() - started - setup)
        # Classified once: the store, the decision and the event share this verdict.
        verdict = None if outcome.reply.is_success else self.classify(outcome.reply)
        decision = rcpt_decision(outcome.reply, self.soft_bounce, self.spool is not None, verdict)
        if verdict is not None and self.store is not None:
            try:
                await self.writer.run(self.store.record_verdict, key, verdict, outcome.reply, now)
            except Exception:
                log.exception("store: cannot record verdict for %s", key)
                return TEMP_STORE
        if decision.accepted:
            queued = decision.queued
            txn.recipients.append(
                Recipient(
                    rcpt,
                    None if queued else remote,
                    outcome.reply if queued else None,
                    outcome.relay,
                    delays,
                    verdict if queued else None,
                )
            )
        else:
            self._event(txn, key, decision.disposition, outcome, now, delays, verdict)
        return decision.reply

    async def _ask_remote(
        self, txn: ClientTransaction, rcpt: Address
    ) -> tuple[Outcome, RemoteTransaction | None, float]:
        """The remote's (or DNS's) answer for one recipient, and the setup time it took."""
        started = time.monotonic()
        route = await self.delivery.route(rcpt.domain)
        if isinstance(route, Reply):
            return Outcome(route, "none", "connect"), None, time.monotonic() - started
        remote_sender = self.delivery.remote_sender(txn.sender, rcpt.key, txn.queue_id)
        remote = txn.remotes.get((route.key, remote_sender))
        if remote is None:
            # Another remote sender (VERP) to a destination this transaction already holds
            # sessions for: never wait for a slot it holds itself; over the cap it is soft.
            holding = any(k == route.key for k, _ in txn.remotes)
            remote = await self.delivery.open_transaction(
                route, remote_sender, txn.options, wait=not holding, first=rcpt.spelled
            )
            if remote.busy and remote.failure is not None:
                # not cached: a later recipient may find a slot
                return remote.failure, None, time.monotonic() - started
            txn.remotes[(route.key, remote_sender)] = remote
        setup = time.monotonic() - started
        return await remote.rcpt(rcpt.spelled), remote, setup

    async def send_data(self, txn: ClientTransaction, message: bytes) -> SentData:
        """Send `message` (Received: header included) to every remote with accepted
        recipients, at the same time: what each session and each recipient got."""
        sending = [rt for rt in txn.remotes.values() if rt.accepted and not rt.done]
        for rt in txn.remotes.values():
            if rt not in sending:
                await rt.abort()
        timed = await asyncio.gather(*(_timed(rt.data(message)) for rt in sending))
        sent = SentData()
        for rt, (outcome, took) in zip(sending, timed, strict=True):
            sent.sessions.append(SessionResult(tuple(rt.accepted), outcome.reply))
            for address in rt.accepted:
                sent.by_address[address] = (outcome, took)
        return sent

    async def data(self, txn: ClientTransaction, message: bytes) -> Reply:
        """SMTP: the one reply to DATA, from every session's (docs/behaviour.md#at-data)."""
        sent = await self.send_data(txn, message)
        queued = [(r.rcpt.spelled, r.soft) for r in txn.recipients if r.soft is not None]
        plan = data_plan(
            sent.sessions, queued, self.soft_bounce, self.spool is not None, txn.queue_id
        )
        now = self.clock()
        reply = plan.reply
        if plan.needs_spool and not await self._spool(txn, message, plan, now):
            reply = QUEUE_REFUSED
        if reply.is_success:
            self._message_event(txn, message, now)
        spooled = {r.rcpt.spelled for r in txn.recipients} if reply.is_success else set()
        await self._record(txn, sent.by_address, spooled, now)
        return reply

    async def data_per_recipient(self, txn: ClientTransaction, message: bytes) -> list[Reply]:
        """LMTP: one reply to DATA per accepted recipient, in RCPT order, each from its own
        remote (docs/behaviour.md#lmtp). The client hears every failure: no DSN."""
        sent = await self.send_data(txn, message)
        outcomes = [
            (
                r.rcpt.spelled,
                r.soft if r.soft is not None else sent.by_address[r.rcpt.spelled][0].reply,
            )
            for r in txn.recipients
        ]
        plan = recipient_plan(outcomes, self.soft_bounce, self.spool is not None, txn.queue_id)
        now = self.clock()
        replies = list(plan.replies)
        spooled = {address for address, _ in plan.deferred}
        if plan.needs_spool and not await self._spool(txn, message, plan, now):
            replies = [
                QUEUE_REFUSED if address in spooled else reply
                for (address, _), reply in zip(outcomes, replies, strict=True)
            ]
            spooled = set()
        if any(reply.is_success for reply in replies):
            self._message_event(txn, message, now)
        await self._record(txn, sent.by_address, spooled, now)
        return replies

    async def _spool(
        self,
        txn: ClientTransaction,
        message: bytes,
        plan: DataPlan | RecipientPlan,
        now: datetime,
    ) -> bool:
        """Write the message for the retry queue (and failure DSNs); False if that failed."""
        if self.spool is None:
            return False
        try:
            await self.writer.run(self.spool.accept, self._spool_message(txn, message, plan), now)
        except Exception:
            log.exception("%s: spool refused the message; answering 451", txn.queue_id)
            return False
        return True

    def _message_event(self, txn: ClientTransaction, message: bytes, now: datetime) -> None:
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

    async def _record(
        self,
        txn: ClientTransaction,
        by_address: dict[str, tuple[Outcome, float]],
        spooled: Collection[str],
        now: datetime,
    ) -> None:
        """Events and store records for every recipient once DATA is answered; `spooled`
        are the addresses the retry queue took (its soft failures are `queued`, not `deferred`).

        The store writes of one message go to the writer thread as one batch (one hop, not
        one per recipient); the mail is already answered for, so a failed write is logged only.
        """
        writes: list[tuple[str, Callable[[], None]]] = []
        # A soft failure is `queued` exactly when the retry queue took it for that recipient.
        queue_took = Settings(self.soft_bounce, queue_available=True)
        queue_did_not = Settings(self.soft_bounce, queue_available=False)
        verdicts: dict[Reply, Verdict] = {}  # one session's reply is classified once
        for r in txn.recipients:
            settings = queue_took if r.rcpt.spelled in spooled else queue_did_not
            sent = by_address.get(r.rcpt.spelled)
            key = r.rcpt.key
            if sent is None:  # queued at RCPT
                assert r.soft is not None
                soft = Outcome(r.soft, r.relay, "RCPT")
                decided = decide(r.soft, r.verdict, Stage.DATA, settings=settings)
                self._event(txn, key, decided.disposition, soft, now, r.delays, r.verdict)
                continue
            outcome, took = sent
            a, b, c, d = r.delays
            delays = (a, b, c, d + took)
            verdict = None
            if not outcome.reply.is_success:
                verdict = verdicts.get(outcome.reply) or self.classify(outcome.reply)
                verdicts[outcome.reply] = verdict
            decided = decide(
                outcome.reply, verdict, Stage.DATA, answered=outcome.answered, settings=settings
            )
            self._event(txn, key, decided.disposition, outcome, now, delays, decided.verdict)
            if decided.disposition is Disposition.DELIVERED:
                # Most delivered addresses have no record: a read on the loop spares the
                # writer-thread hop per message (seen in the benchmark's profile).
                if self.store is not None and self.store.has_records(key):
                    writes.append((key, partial(self.store.record_success, key, now)))
                elif self.store is not None:  # record_success notes it otherwise
                    self.store.note_delivered(key, now)  # the storm breaker's attempts
            elif self.store is not None and decided.verdict is not None:
                record = partial(
                    self.store.record_verdict, key, decided.verdict, outcome.reply, now
                )
                writes.append((key, record))
        if writes:
            await self.writer.run(_write_all, writes)

    def _spool_message(
        self, txn: ClientTransaction, message: bytes, plan: DataPlan | RecipientPlan
    ) -> SpoolMessage:
        failed = plan.failed if isinstance(plan, DataPlan) else ()  # LMTP: the client bounces
        return SpoolMessage(
            queue_id=txn.queue_id,
            sender=txn.sender,
            data=message,
            arrived=txn.arrived,
            deferred=plan.deferred,
            failed=failed,
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
        disposition: Disposition,
        outcome: Outcome,
        now: datetime,
        delays: Delays,
        verdict: Verdict | None,
    ) -> None:
        self.events.emit(
            RecipientEvent(
                queue_id=txn.queue_id,
                recipient=key,
                status=disposition,
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
