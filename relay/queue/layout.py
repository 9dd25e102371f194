# This module owns the queue's LMDB layout: its named databases, and the due and
# arrival indexes kept in step with the records in the same transaction. It decides
# nothing about what a queue operation means (relay/queue/queue.py does).
"""The queue's named databases and the invariants between them.

- ``queue_messages``:   queue_id -> envelope (JSON) + the message bytes, stored once.
- ``queue_recipients``: queue_id NUL recipient -> state (JSON): attempts with the
  remotes' replies, first failure, next attempt time, lease owner.
- ``queue_due``:        8-byte big-endian due time (µs) + queue_id NUL recipient -> b"",
  so the runner finds due work with one cursor seek.
- ``queue_arrived``:    8-byte big-endian arrival time (µs) + queue_id -> b"", so the
  oldest message is one cursor seek too (the metrics gauge asks on every scrape).

Every recipient record has exactly one due entry and every message exactly one
arrival entry; the methods here are the only writers of all four, so that holds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import lmdb

from relay.queue.records import (
    RcptState,
    decode_envelope,
    decode_rcpt,
    due_key,
    encode_message,
    encode_rcpt,
    from_us,
    rcpt_key,
    split_rcpt_key,
)
from relay.store.env import StateError

T = TypeVar("T")
_TIME = struct.Struct(">Q")  # the 8-byte time prefix of the index keys


def _arrival_key(arrived_us: int, queue_id: str) -> bytes:
    return _TIME.pack(max(arrived_us, 0)) + queue_id.encode()


class QueueTables:
    """The four named databases of the queue, opened in the shared state environment."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        try:
            self.msgs = env.open_db(b"queue_messages")
            self.rcpts = env.open_db(b"queue_recipients")
            self.due = env.open_db(b"queue_due")
            self.arrived = env.open_db(b"queue_arrived")
        except lmdb.Error as exc:
            raise StateError(f"cannot open the queue databases: {exc}") from exc

    def write(self, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run `work` in one write transaction; LMDB errors become StateError."""
        try:
            with self.env.begin(write=True) as txn:
                return work(txn)
        except lmdb.Error as exc:  # map full, disk error, read-only directory
            raise StateError(f"queue write failed: {exc}") from exc

    def index_arrivals(self, txn: lmdb.Transaction) -> None:
        # A queue written before the arrival index existed: build it once, on open.
        if txn.stat(self.arrived)["entries"] == txn.stat(self.msgs)["entries"]:
            return
        txn.drop(self.arrived, delete=False)
        for key, raw in txn.cursor(db=self.msgs):
            arrived = decode_envelope(raw)["arrived"]
            txn.put(_arrival_key(arrived, bytes(key).decode()), b"", db=self.arrived)

    # -- messages -------------------------------------------------------------------------

    def put_message(
        self, txn: lmdb.Transaction, queue_id: str, envelope: dict[str, Any], data: bytes
    ) -> None:
        """Store a new message; `envelope["arrived"]` is in µs."""
        txn.put(queue_id.encode(), encode_message(envelope, data), db=self.msgs)
        txn.put(_arrival_key(envelope["arrived"], queue_id), b"", db=self.arrived)

    def delete_message(self, txn: lmdb.Transaction, queue_id: str) -> None:
        raw = txn.get(queue_id.encode(), db=self.msgs)
        if raw is None:
            return
        txn.delete(_arrival_key(decode_envelope(raw)["arrived"], queue_id), db=self.arrived)
        txn.delete(queue_id.encode(), db=self.msgs)

    def oldest_arrival(self) -> datetime | None:
        """When the oldest queued message arrived: one cursor seek on the arrival index."""
        return self._first_time(self.arrived)

    def first_due(self) -> datetime | None:
        """The earliest due time in the index (leased recipients at their lease's end)."""
        return self._first_time(self.due)

    def _first_time(self, index: Any) -> datetime | None:
        with self.env.begin(db=index) as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            return from_us(_TIME.unpack_from(bytes(cur.key()))[0])

    # -- recipients -----------------------------------------------------------------------

    def put_rcpt(self, txn: lmdb.Transaction, queue_id: str, rcpt: str, state: RcptState) -> None:
        """Write a recipient's state and its due entry at `state.next_at` (µs).

        The due entry may exist already (a rewrite in place): the put then changes nothing.
        """
        txn.put(rcpt_key(queue_id, rcpt), encode_rcpt(state), db=self.rcpts)
        txn.put(due_key(state.next_at, queue_id, rcpt), b"", db=self.due)

    def reschedule(
        self,
        txn: lmdb.Transaction,
        queue_id: str,
        rcpt: str,
        state: RcptState,
        next_us: int,
        leased_by: str,
    ) -> None:
        """Move a recipient's due entry to `next_us` and record who holds it ("" = nobody)."""
        txn.delete(due_key(state.next_at, queue_id, rcpt), db=self.due)
        state.next_at, state.leased_by = next_us, leased_by
        state.delivering = None  # a new lease, a deferral or a recovery: not past the dot
        self.put_rcpt(txn, queue_id, rcpt, state)

    def delete_rcpt(
        self, txn: lmdb.Transaction, queue_id: str, rcpt: str, state: RcptState
    ) -> None:
        txn.delete(due_key(state.next_at, queue_id, rcpt), db=self.due)
        txn.delete(rcpt_key(queue_id, rcpt), db=self.rcpts)

    def get_rcpt(self, txn: lmdb.Transaction, queue_id: str, rcpt: str) -> RcptState | None:
        raw = txn.get(rcpt_key(queue_id, rcpt), db=self.rcpts)
        return None if raw is None else decode_rcpt(raw)

    def take_due(self, txn: lmdb.Transaction, now_us: int, limit: int) -> list[tuple[str, str]]:
        """Remove and return up to `limit` due entries (queue_id, recipient), earliest first.

        The caller puts each back where it belongs (`reschedule` from the state, or
        nothing for a stale entry whose recipient is gone).
        """
        keys: list[bytes] = []
        cur = txn.cursor(db=self.due)
        if cur.first():
            for key in cur.iternext(values=False):
                if len(keys) >= limit or _TIME.unpack_from(key)[0] > now_us:
                    break
                keys.append(bytes(key))
        for key in keys:
            txn.delete(key, db=self.due)
        return [split_rcpt_key(key[8:]) for key in keys]

    def has_recipients(self, txn: lmdb.Transaction, queue_id: str) -> bool:
        cur = txn.cursor(db=self.rcpts)
        prefix = queue_id.encode() + b"\0"
        return bool(cur.set_range(prefix)) and bytes(cur.key()).startswith(prefix)

    def iter_rcpts(
        self, txn: lmdb.Transaction, queue_ids: Iterable[str] | None
    ) -> Iterator[tuple[str, str, RcptState]]:
        """(queue_id, recipient, state) of the given messages, or of all (None)."""
        cur = txn.cursor(db=self.rcpts)
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
