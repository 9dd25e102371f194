# This module keeps the retry queue durable in the shared LMDB environment. Every
# change is one write transaction, committed with sync before the call returns; it
# decides nothing about timing itself (policy/retry.py does) and touches no network.
"""The retry queue: message bytes once, per-recipient state, an index by due time.

Named databases in the state environment:

- ``queue_messages``:   queue_id -> envelope (JSON) + the message bytes, stored once.
- ``queue_recipients``: queue_id NUL recipient -> state (JSON): attempts with the
  remotes' replies, first failure, next attempt time, lease owner.
- ``queue_due``:        8-byte big-endian due time (µs) + queue_id NUL recipient -> b"",
  so the runner finds due work with one cursor seek.

A recipient being attempted is *leased*: its due time is pushed to the lease's
end and its owner ("pid:token") recorded, so a crashed runner's work comes due
again by itself; on start, `recover` makes leases of dead processes due at once.
Writers: one thread per process (the service's writer executor, or the CLI's
only thread); LMDB serialises writers across processes.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import lmdb

from policy.dsn import DsnContext, FailedRecipient, compose_dsn, is_null_sender
from policy.retry import DEFAULT_SCHEDULE, next_attempt, schedule_from_seconds
from relay.config import Config
from relay.spool_codec import (
    Attempt,
    Disposition,
    Lease,
    QueuedMessage,
    QueuedRecipient,
    Settlement,
    SpoolMessage,
    attempt_json,
    decode_envelope,
    decode_message,
    decode_rcpt,
    due_key,
    encode_message,
    encode_rcpt,
    from_us,
    message_from_json,
    rcpt_key,
    recipient_from_json,
    split_rcpt_key,
    to_us,
)
from relay.state import StateError

T = TypeVar("T")

__all__ = [
    "Attempt",
    "Disposition",
    "DsnSettings",
    "Lease",
    "QueuedMessage",
    "QueuedRecipient",
    "Settlement",
    "Spool",
    "SpoolMessage",
    "new_queue_id",
    "owner_alive",
    "spool_from_config",
    "utcnow",
]

HISTORY = 20  # attempts kept per recipient; `tries` still counts them all


def new_queue_id() -> str:
    """A Postfix-looking queue id (12 hex digits): unique enough, readable in logs."""
    return secrets.token_hex(6).upper()


@dataclass(frozen=True)
class DsnSettings:
    reporting_mta: str = "localhost"
    dsn_from: str = ""  # default MAILER-DAEMON@reporting_mta

    @property
    def from_header(self) -> str:
        return self.dsn_from or f"MAILER-DAEMON@{self.reporting_mta}"


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
        try:
            self._msgs = env.open_db(b"queue_messages")
            self._rcpts = env.open_db(b"queue_recipients")
            self._due = env.open_db(b"queue_due")
        except lmdb.Error as exc:
            raise StateError(f"cannot open the queue databases: {exc}") from exc

    # -- writes ---------------------------------------------------------------------------

    def accept(self, msg: SpoolMessage, now: datetime) -> None:
        """Queue `msg.deferred` and a DSN for `msg.failed`; durable when this returns."""

        def work(txn: lmdb.Transaction) -> None:
            if msg.deferred:
                self._put_message(
                    txn, msg.queue_id, msg.sender, msg.data, msg.arrived, options=msg.options
                )
                for rcpt, reply in msg.deferred:
                    nxt = next_attempt(now, 1, now, self.schedule) or now
                    self._put_rcpt(txn, msg.queue_id, rcpt, nxt, now, 1, [Attempt(now, reply)])
            failed = [FailedRecipient(r, rep, now) for r, rep in msg.failed]
            self._queue_dsn(txn, msg.queue_id, msg.sender, msg.data, msg.arrived, failed, now)

        self._write(work)

    def lease_due(self, now: datetime, limit: int, owner: str, until: datetime) -> list[Lease]:
        """Take up to `limit` due recipients, grouped by message, for `owner` until `until`."""

        def work(txn: lmdb.Transaction) -> list[Lease]:
            picked: dict[str, list[dict[str, Any]]] = {}
            cur = txn.cursor(db=self._due)
            keys: list[bytes] = []
            if cur.first():
                for key in cur.iternext(values=False):
                    if len(keys) >= limit or struct.unpack(">Q", key[:8])[0] > to_us(now):
                        break
                    keys.append(bytes(key))
            for key in keys:
                txn.delete(key, db=self._due)
                qid, rcpt = split_rcpt_key(key[8:])
                raw = txn.get(rcpt_key(qid, rcpt), db=self._rcpts)
                if raw is None:  # stale index entry
                    continue
                state = decode_rcpt(raw)
                state["next_at"], state["leased_by"] = to_us(until), owner
                txn.put(rcpt_key(qid, rcpt), encode_rcpt(state), db=self._rcpts)
                txn.put(due_key(to_us(until), qid, rcpt), b"", db=self._due)
                picked.setdefault(qid, []).append(state)
            leases = []
            for qid, states in picked.items():
                raw_msg = txn.get(qid.encode(), db=self._msgs)
                if raw_msg is None:
                    continue
                env, data = decode_message(raw_msg)
                rcpts = tuple(recipient_from_json(qid, s) for s in states)
                leases.append(Lease(message_from_json(qid, env, rcpts), data, until))
            return leases

        return self._write(work)

    def settle(self, queue_id: str, results: Sequence[Settlement], now: datetime) -> str | None:
        """Record one attempt's outcomes for a message in one transaction.

        Delivered/failed/expired/dropped recipients leave the queue; deferred ones get
        their attempt and next time; the message goes when its last recipient does.
        Failed and expired ones (and dropped ones with a note asking for it) get one
        DSN, queued in the same transaction. Returns the DSN's queue id, if any.
        """

        def work(txn: lmdb.Transaction) -> str | None:
            raw_msg = txn.get(queue_id.encode(), db=self._msgs)
            if raw_msg is None:
                return None  # dropped by an operator meanwhile
            env, data = decode_message(raw_msg)
            failed: list[FailedRecipient] = []
            for s in results:
                key = rcpt_key(queue_id, s.recipient)
                raw = txn.get(key, db=self._rcpts)
                if raw is None:
                    continue
                state = decode_rcpt(raw)
                txn.delete(due_key(state["next_at"], queue_id, s.recipient), db=self._due)
                if s.attempt is not None:
                    state["tries"] += 1
                    state["attempts"] = (state["attempts"] + [attempt_json(s.attempt)])[-HISTORY:]
                    if state["first_failure"] is None and not s.attempt.reply.is_success:
                        state["first_failure"] = to_us(s.attempt.when)
                if s.disposition is Disposition.DEFERRED:
                    state["next_at"], state["leased_by"] = to_us(s.next_at or now), ""
                    txn.put(key, encode_rcpt(state), db=self._rcpts)
                    txn.put(due_key(state["next_at"], queue_id, s.recipient), b"", db=self._due)
                    continue
                txn.delete(key, db=self._rcpts)
                if s.wants_dsn:
                    rec = recipient_from_json(queue_id, state)
                    last = rec.attempts[-1] if rec.attempts else None
                    failed.append(
                        FailedRecipient(
                            s.recipient,
                            last.reply if last else None,
                            last.when if last else None,
                            expired=s.disposition is Disposition.EXPIRED,
                            note=s.note,
                        )
                    )
            if not self._has_recipients(txn, queue_id):
                txn.delete(queue_id.encode(), db=self._msgs)
            return self._queue_dsn(
                txn, queue_id, env["sender"], data, from_us(env["arrived"]), failed, now
            )

        return self._write(work)

    def retry_now(self, queue_ids: Iterable[str] | None, now: datetime) -> int:
        """Make recipients due at `now` (None = all); leased ones are in flight already."""

        def work(txn: lmdb.Transaction) -> int:
            n = 0
            for qid, rcpt, state in list(self._iter_rcpts(txn, queue_ids)):
                if state["leased_by"]:
                    continue
                txn.delete(due_key(state["next_at"], qid, rcpt), db=self._due)
                state["next_at"] = to_us(now)
                txn.put(rcpt_key(qid, rcpt), encode_rcpt(state), db=self._rcpts)
                txn.put(due_key(state["next_at"], qid, rcpt), b"", db=self._due)
                n += 1
            return n

        return self._write(work)

    def drop(self, queue_id: str, why: str, dsn: bool, now: datetime) -> QueuedMessage | None:
        """Remove a message (all its recipients); with `dsn`, tell the sender why."""
        msg = self.get(queue_id)
        if msg is None:
            return None
        note = f"dropped by the postmaster: {why}"
        drops = [
            Settlement(r.recipient, Disposition.DROPPED, note=note, notify=dsn)
            for r in msg.recipients
        ]
        if not drops:  # a message record left without recipients: remove it directly
            self._write(lambda txn: txn.delete(queue_id.encode(), db=self._msgs))
        self.settle(queue_id, drops, now)
        return msg

    def recover(self, now: datetime, alive: Callable[[str], bool]) -> int:
        """On start: leases whose owner is not `alive` are due again at once."""

        def work(txn: lmdb.Transaction) -> int:
            n = 0
            for qid, rcpt, state in list(self._iter_rcpts(txn, None)):
                if not state["leased_by"] or alive(state["leased_by"]):
                    continue
                txn.delete(due_key(state["next_at"], qid, rcpt), db=self._due)
                state["next_at"], state["leased_by"] = to_us(now), ""
                txn.put(rcpt_key(qid, rcpt), encode_rcpt(state), db=self._rcpts)
                txn.put(due_key(state["next_at"], qid, rcpt), b"", db=self._due)
                n += 1
            return n

        return self._write(work)

    # -- reads (any thread) ---------------------------------------------------------------

    def first_due(self) -> datetime | None:
        """When the earliest recipient is due (leased ones count at their lease's end)."""
        with self.env.begin(db=self._due) as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            return from_us(struct.unpack(">Q", bytes(cur.key())[:8])[0])

    def get(self, queue_id: str) -> QueuedMessage | None:
        """Envelope and recipients; the message bytes are not read (see `data`)."""
        # buffers=True: values are views into the map, so a 30 MB message is not copied.
        with self.env.begin(buffers=True) as txn:
            return self._get(txn, queue_id)

    def _get(self, txn: lmdb.Transaction, queue_id: str) -> QueuedMessage | None:
        raw = txn.get(queue_id.encode(), db=self._msgs)
        if raw is None:
            return None
        env = decode_envelope(raw)
        rcpts = tuple(recipient_from_json(q, s) for q, _, s in self._iter_rcpts(txn, [queue_id]))
        return message_from_json(queue_id, env, rcpts)

    def data(self, queue_id: str) -> bytes | None:
        with self.env.begin() as txn:
            raw = txn.get(queue_id.encode(), db=self._msgs)
            return None if raw is None else decode_message(raw)[1]

    def messages(self) -> list[QueuedMessage]:
        """Every queued message, in queue id order, from one consistent snapshot."""
        with self.env.begin(buffers=True) as txn:
            ids = [bytes(k).decode() for k in txn.cursor(db=self._msgs).iternext(values=False)]
            return [m for m in (self._get(txn, q) for q in ids) if m is not None]

    def count(self) -> tuple[int, int]:
        """(messages, recipients) in the queue."""
        with self.env.begin() as txn:
            return txn.stat(self._msgs)["entries"], txn.stat(self._rcpts)["entries"]

    # -- internals ------------------------------------------------------------------------

    def _write(self, work: Callable[[lmdb.Transaction], T]) -> T:
        try:
            with self.env.begin(write=True) as txn:
                return work(txn)
        except lmdb.Error as exc:  # map full, disk error, read-only directory
            raise StateError(f"queue write failed: {exc}") from exc

    def _put_message(
        self,
        txn: lmdb.Transaction,
        qid: str,
        sender: str,
        data: bytes,
        arrived: datetime,
        kind: str = "mail",
        origin: str = "",
        options: tuple[str, ...] = (),
    ) -> None:
        env: dict[str, Any] = {
            "sender": sender,
            "arrived": to_us(arrived),
            "kind": kind,
            "origin": origin,
            "options": list(options),
        }
        txn.put(qid.encode(), encode_message(env, data), db=self._msgs)

    def _put_rcpt(
        self,
        txn: lmdb.Transaction,
        qid: str,
        rcpt: str,
        next_at: datetime,
        first_failure: datetime | None,
        tries: int,
        attempts: list[Attempt],
    ) -> None:
        state: dict[str, Any] = {
            "rcpt": rcpt,
            "next_at": to_us(next_at),
            "first_failure": None if first_failure is None else to_us(first_failure),
            "tries": tries,
            "attempts": [attempt_json(a) for a in attempts],
            "leased_by": "",
        }
        txn.put(rcpt_key(qid, rcpt), encode_rcpt(state), db=self._rcpts)
        txn.put(due_key(state["next_at"], qid, rcpt), b"", db=self._due)

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
        if not failed or is_null_sender(sender):
            return None
        dsn_id = self.new_id()
        ctx = DsnContext(self.dsn.reporting_mta, self.dsn.from_header, qid, dsn_id, sender, arrived)
        raw = compose_dsn(ctx, failed, data, now)
        if raw is None:
            return None
        self._put_message(txn, dsn_id, "", raw, now, kind="dsn", origin=qid)
        self._put_rcpt(txn, dsn_id, sender, now, None, 0, [])
        return dsn_id

    def _has_recipients(self, txn: lmdb.Transaction, qid: str) -> bool:
        cur = txn.cursor(db=self._rcpts)
        prefix = qid.encode() + b"\0"
        return bool(cur.set_range(prefix)) and bytes(cur.key()).startswith(prefix)

    def _iter_rcpts(
        self, txn: lmdb.Transaction, queue_ids: Iterable[str] | None
    ) -> Iterable[tuple[str, str, dict[str, Any]]]:
        cur = txn.cursor(db=self._rcpts)
        if queue_ids is None:
            for key, raw in cur:
                qid, rcpt = split_rcpt_key(bytes(key))
                yield qid, rcpt, decode_rcpt(bytes(raw))
            return
        for qid in queue_ids:
            prefix = qid.encode() + b"\0"
            if not cur.set_range(prefix):
                continue
            for key, raw in cur:
                if not bytes(key).startswith(prefix):
                    break
                yield qid, split_rcpt_key(bytes(key))[1], decode_rcpt(bytes(raw))


def spool_from_config(env: lmdb.Environment, cfg: Config) -> Spool:
    """The spool as `[queue]` and `[server] hostname` configure it (service and CLI)."""
    return Spool(
        env,
        schedule_from_seconds(cfg.queue_schedule_seconds),
        DsnSettings(cfg.server.hostname, cfg.queue.dsn_from),
    )


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
