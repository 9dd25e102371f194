# This module keeps the retry queue durable in the shared LMDB environment. Every
# change is one write transaction, committed with sync before the call returns; it
# decides nothing about timing itself (policy/retry.py does) and touches no network.
"""The retry queue: accept, lease, settle, retry, drop and recover queued recipients.

The on-disk layout (message bytes once, per-recipient state, indexes by due
and arrival time) lives in relay/queue/layout.py; this module says what each
queue operation does to it.

A recipient being attempted is *leased*: its due time is pushed to the lease's
end and its owner ("pid:token") recorded, so a crashed runner's work comes due
again by itself; on start, `recover` makes leases of dead processes due at once.
Writers: one thread per process (the service's writer executor, or the CLI's
only thread); LMDB serialises writers across processes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import lmdb

from policy.address import AddressError, normalize_domain
from policy.decide import Disposition
from policy.dsn import FailedRecipient
from policy.retry import DEFAULT_SCHEDULE, next_attempt
from relay.config.load import Config
from relay.queue.layout import QueueTables
from relay.queue.notices import DsnSettings, Report, failed_recipient, queue_dsn
from relay.queue.quarantine import Quarantine
from relay.queue.records import (
    Attempt,
    Lease,
    QueuedMessage,
    QueuedRecipient,
    RcptState,
    RecordError,
    Settlement,
    SpoolMessage,
    check_message,
    check_rcpt,
    decode_envelope,
    decode_message,
    decode_rcpt,
    from_us,
    message_from_json,
    new_envelope,
    new_rcpt_state,
    rcpt_key,
    recipient_from_state,
    to_us,
)

__all__ = [
    "Attempt",
    "DsnSettings",
    "Lease",
    "Recovered",
    "QueuedMessage",
    "QueuedRecipient",
    "Settlement",
    "HELD_US",
    "Spool",
    "SpoolMessage",
    "new_queue_id",
    "owner_alive",
    "rcpt_domain",
    "spool_from_config",
    "utcnow",
]

HISTORY = 20  # attempts kept per recipient; `tries` still counts them all
# A held recipient's due entry: far beyond any schedule, so the runner never takes it, while
# every recipient keeps its one due entry (relay/queue/layout.py).
HELD_US = to_us(datetime(9999, 1, 1, tzinfo=UTC))


def rcpt_domain(address: str) -> str:
    """A recipient's domain as the queue tools match it: lower-case A-labels."""
    domain = address.rpartition("@")[2]
    try:
        return normalize_domain(domain)
    except AddressError:
        return domain.lower()


def new_queue_id() -> str:
    """A Postfix-looking queue id (12 hex digits): unique enough, readable in logs."""
    return secrets.token_hex(6).upper()


class Spool:
    """The durable queue. Writes must come from one thread per process."""

    def __init__(
        self,
        env: lmdb.Environment,
        schedule: Sequence[timedelta] = DEFAULT_SCHEDULE,
        dsn: DsnSettings | None = None,
        new_id: Callable[[], str] = new_queue_id,
    ) -> None:
        self.env = env
        self.schedule = tuple(schedule)
        self.dsn = dsn or DsnSettings()
        self.new_id = new_id
        self._t = QueueTables(env)
        # Undecodable records aside first, so nothing below (or later) trips on them.
        self.quarantine = Quarantine(self._t)
        self.quarantine.sweep()
        self._t.write(self._t.index_arrivals)

    # -- writes ---------------------------------------------------------------------------

    def accept(self, msg: SpoolMessage, now: datetime) -> None:
        """Queue `msg.deferred` and a DSN for `msg.failed`; durable when this returns."""

        def work(txn: lmdb.Transaction) -> None:
            if msg.deferred:
                head = new_envelope(msg.sender, msg.arrived, options=msg.options)
                self._t.put_message(txn, msg.queue_id, head, msg.data)
                for rcpt, reply in msg.deferred:
                    nxt = next_attempt(now, 1, now, self.schedule) or now
                    state = new_rcpt_state(rcpt, nxt, now, 1, [Attempt(now, reply)])
                    self._t.put_rcpt(txn, msg.queue_id, rcpt, state)
            failed = [FailedRecipient(r, rep, now) for r, rep in msg.failed]
            self._queue_dsn(txn, msg.queue_id, msg.sender, msg.data, msg.arrived, failed, now)

        self._t.write(work)

    def lease_due(self, now: datetime, limit: int, owner: str, until: datetime) -> list[Lease]:
        """Take up to `limit` due recipients, grouped by message, for `owner` until `until`."""

        def work(txn: lmdb.Transaction) -> list[Lease]:
            picked: dict[str, list[RcptState]] = {}
            for qid, rcpt in self._t.take_due(txn, to_us(now), limit):
                key = rcpt_key(qid, rcpt)
                raw = txn.get(key, db=self._t.rcpts)
                if raw is None:  # stale index entry: taking it removed it
                    continue
                try:
                    check_rcpt(key, raw)
                except RecordError as exc:  # damaged since the queue was opened
                    self.quarantine.move_rcpt(txn, key, str(exc))
                    continue
                state = decode_rcpt(raw)
                if state.is_held:  # held while in flight, and its lease ran out: on hold now
                    self._t.reschedule(txn, qid, rcpt, state, HELD_US, "")
                    continue
                self._t.reschedule(txn, qid, rcpt, state, to_us(until), owner)
                picked.setdefault(qid, []).append(state)
            leases = []
            for qid, states in picked.items():
                raw_msg = txn.get(qid.encode(), db=self._t.msgs)
                if raw_msg is None:
                    continue
                try:
                    check_message(qid, raw_msg)
                except RecordError as exc:
                    self.quarantine.move_message(txn, qid.encode(), str(exc))
                    continue
                env, data = decode_message(raw_msg)
                rcpts = tuple(recipient_from_state(qid, s) for s in states)
                leases.append(Lease(message_from_json(qid, env, rcpts), data, until))
            return leases

        return self._t.write(work)

    def settle(self, queue_id: str, results: Sequence[Settlement], now: datetime) -> str | None:
        """Record one attempt's outcomes for a message in one transaction (see `settle_in`)."""
        return self._t.write(lambda txn: self.settle_in(txn, queue_id, results, now))

    def settle_in(
        self, txn: lmdb.Transaction, queue_id: str, results: Sequence[Settlement], now: datetime
    ) -> str | None:
        """Record one attempt's outcomes for a message, inside `txn`.

        Delivered/failed/expired/dropped recipients leave the queue; deferred ones get
        their attempt and next time; the message goes when its last recipient does.
        Failed and expired ones (and dropped ones with a note asking for it) get one
        DSN, queued in the same transaction. Returns the DSN's queue id, if any.
        """
        raw_msg = txn.get(queue_id.encode(), db=self._t.msgs)
        if raw_msg is None:
            return None  # dropped by an operator meanwhile
        env, data = decode_message(raw_msg)
        failed: list[FailedRecipient] = []
        for s in results:
            state = self._t.get_rcpt(txn, queue_id, s.recipient)
            if state is None:
                continue
            if s.attempt is not None:
                state.tries += 1
                state.attempts = [*state.attempts, s.attempt][-HISTORY:]
                if state.first_failure is None and not s.attempt.reply.is_success:
                    state.first_failure = to_us(s.attempt.when)
            if s.disposition is Disposition.QUEUED:
                next_us = HELD_US if state.is_held else to_us(s.next_at or now)
                self._t.reschedule(txn, queue_id, s.recipient, state, next_us, "")
                continue
            self._t.delete_rcpt(txn, queue_id, s.recipient, state)
            if s.wants_dsn:
                failed.append(failed_recipient(recipient_from_state(queue_id, state), s))
        if not self._t.has_recipients(txn, queue_id):
            self._t.delete_message(txn, queue_id)
        return self._queue_dsn(
            txn, queue_id, env["sender"], data, from_us(env["arrived"]), failed, now
        )

    def mark_delivering_in(
        self, txn: lmdb.Transaction, queue_id: str, recipients: Sequence[str], now: datetime
    ) -> None:
        """Write ahead, before the message's final dot: these recipients may get it now.

        A recipient still marked at the next start was between the dot and the settle
        when the process died: the remote may have it. It is sent again (at-least-once)
        and `recover` names it; a recipient only leased was certainly not delivered.
        """
        for rcpt in recipients:
            state = self._t.get_rcpt(txn, queue_id, rcpt)
            if state is not None:
                state.delivering = to_us(now)
                self._t.put_rcpt(txn, queue_id, rcpt, state)

    def write_many(self, works: Sequence[Callable[[lmdb.Transaction], Any]]) -> list[Any]:
        """Several queue writes in one transaction, one fsync: a group commit."""
        return self._t.write(lambda txn: [work(txn) for work in works])

    def retry_now(
        self, queue_ids: Iterable[str] | None, now: datetime, domain: str | None = None
    ) -> int:
        """Make recipients due at `now` (None = all, `domain`: only its recipients); leased
        ones are in flight already and held ones wait for `release`."""
        due = to_us(now)
        return self._change(
            queue_ids, domain, lambda st: None if st.leased_by or st.is_held else (due, "")
        )

    def hold(self, queue_ids: Iterable[str] | None, domain: str | None = None) -> int:
        """Put recipients on hold (postsuper -h): the runner leaves them until `release`.

        One in flight now is marked held and keeps its lease; when it settles deferred,
        or its lease runs out, it goes on hold instead of coming due.
        """

        def change(st: RcptState) -> tuple[int, str] | None:
            if st.is_held:
                return None
            st.held = True
            return (st.next_at, st.leased_by) if st.leased_by else (HELD_US, "")

        return self._change(queue_ids, domain, change)

    def release(
        self, queue_ids: Iterable[str] | None, now: datetime, domain: str | None = None
    ) -> int:
        """Release held recipients (postsuper -H): due at `now`, or at their lease's end."""

        def change(st: RcptState) -> tuple[int, str] | None:
            if not st.is_held:
                return None
            st.held = False
            return (st.next_at, st.leased_by) if st.leased_by else (to_us(now), "")

        return self._change(queue_ids, domain, change)

    def drop(
        self, queue_id: str, why: str, dsn: bool, now: datetime, domain: str | None = None
    ) -> QueuedMessage | None:
        """Remove a message (all its recipients, or those at `domain`); with `dsn`, tell the
        sender why. Returns the message with the recipients removed, None if none were."""
        msg = self.get(queue_id)
        if msg is None:
            return None
        gone = tuple(
            r for r in msg.recipients if domain is None or rcpt_domain(r.recipient) == domain
        )
        if domain is not None and not gone:
            return None
        note = f"dropped by the postmaster: {why}"
        drops = [Settlement(r.recipient, Disposition.DROPPED, note=note, notify=dsn) for r in gone]
        if not msg.recipients:  # a message record left without recipients: remove it directly
            self._t.write(lambda txn: self._t.delete_message(txn, queue_id))
        self.settle(queue_id, drops, now)
        return replace(msg, recipients=gone)

    def recover(self, now: datetime, alive: Callable[[str], bool]) -> Recovered:
        """On start: leases whose owner is not `alive` are due again at once (held ones go
        back on hold). Returns how many, and which of them were marked delivering (the
        remote may have the message already)."""
        due = to_us(now)
        maybe: list[tuple[str, str]] = []

        def work(txn: lmdb.Transaction) -> int:
            n = 0
            for qid, rcpt, state in list(self._t.iter_rcpts(txn, None)):
                owner = state.leased_by
                if not owner or alive(owner):
                    continue
                if state.delivering:
                    maybe.append((qid, rcpt))
                self._t.reschedule(txn, qid, rcpt, state, HELD_US if state.is_held else due, "")
                n += 1
            return n

        return Recovered(self._t.write(work), tuple(maybe))

    def _change(
        self,
        queue_ids: Iterable[str] | None,
        domain: str | None,
        change: Callable[[RcptState], tuple[int, str] | None],
    ) -> int:
        """Move each recipient (of `queue_ids`, at `domain`) to the (due µs, lease owner) that
        `change` returns for its state (which it may also edit); None leaves it alone."""

        def work(txn: lmdb.Transaction) -> int:
            n = 0
            for qid, rcpt, state in list(self._t.iter_rcpts(txn, queue_ids)):
                if domain is not None and rcpt_domain(rcpt) != domain:
                    continue
                new = change(state)
                if new is not None:
                    self._t.reschedule(txn, qid, rcpt, state, *new)
                    n += 1
            return n

        return self._t.write(work)

    # -- reads (any thread) ---------------------------------------------------------------

    def first_due(self) -> datetime | None:
        """When the earliest recipient is due (leased ones count at their lease's end)."""
        return self._t.first_due()

    def oldest_arrival(self) -> datetime | None:
        """When the oldest queued message arrived (None when the queue is empty); one seek."""
        return self._t.oldest_arrival()

    def get(self, queue_id: str) -> QueuedMessage | None:
        """Envelope and recipients; the message bytes are not read (see `data`)."""
        # buffers=True: values are views into the map, so a 30 MB message is not copied.
        with self.env.begin(buffers=True) as txn:
            return self._get(txn, queue_id)

    def _get(self, txn: lmdb.Transaction, queue_id: str) -> QueuedMessage | None:
        raw = txn.get(queue_id.encode(), db=self._t.msgs)
        if raw is None:
            return None
        env = decode_envelope(raw)
        rcpts = tuple(recipient_from_state(q, s) for q, _, s in self._t.iter_rcpts(txn, [queue_id]))
        return message_from_json(queue_id, env, rcpts)

    def data(self, queue_id: str) -> bytes | None:
        with self.env.begin() as txn:
            raw = txn.get(queue_id.encode(), db=self._t.msgs)
            return None if raw is None else decode_message(raw)[1]

    def messages(self) -> list[QueuedMessage]:
        """Every queued message, in queue id order, from one consistent snapshot."""
        with self.env.begin(buffers=True) as txn:
            cur = txn.cursor(db=self._t.msgs)
            ids = [bytes(k).decode() for k in cur.iternext(values=False)]
            return [m for m in (self._get(txn, q) for q in ids) if m is not None]

    def _queue_dsn(
        self,
        txn: lmdb.Transaction,
        qid: str,
        sender: str,
        data: bytes,
        arrived: datetime,
        failed: list[FailedRecipient],
        now: datetime,
    ) -> str | None:
        report = Report(qid, sender, data, arrived, failed)
        return queue_dsn(self._t, txn, self.dsn, self.new_id, report, now)

    def count(self) -> tuple[int, int]:
        """(messages, recipients) in the queue."""
        with self.env.begin() as txn:
            return txn.stat(self._t.msgs)["entries"], txn.stat(self._t.rcpts)["entries"]


def spool_from_config(env: lmdb.Environment, cfg: Config) -> Spool:
    """The spool as `[queue]` and `[server] hostname` configure it (service and CLI)."""
    return Spool(
        env,
        tuple(sorted(cfg.queue.offsets)),
        DsnSettings(cfg.server.hostname, cfg.queue.dsn_from),
    )


@dataclass(frozen=True)
class Recovered:
    """What `Spool.recover` found: leases of dead processes made due again."""

    count: int
    possibly_delivered: tuple[tuple[str, str], ...]  # (queue id, recipient) past the final dot


def owner_alive(owner: str) -> bool:
    """Is the process named in a lease owner still running? (signal 0 probes, sends nothing)"""
    try:
        os.kill(int(owner.split(":", 1)[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True  # exists but is not ours, or unreadable: let the lease run out
    return True


def utcnow() -> datetime:
    return datetime.now(UTC)
