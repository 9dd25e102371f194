# This module moves queue records that cannot be decoded out of the queue, into a table of
# their own, so one damaged record never stops the runner or the CLI; it decides nothing
# about delivery and never deletes what it moves (the postmaster does, after a look).
"""The queue's quarantine: undecodable records kept aside, logged and reported.

- ``queue_quarantine``: table NUL original key -> JSON head (why, when, table) +
  the record's raw bytes, so `mdb_dump` or `bouncer store check` can show them.

`sweep()` runs whenever the queue is opened (the server's start and every
`bouncer queue ...`): one read pass that decodes every envelope (not the message
bytes) and every recipient record; only when something is bad does a write
transaction move it. A message goes with all its recipients (they cannot be
delivered without it); a recipient whose message keeps no other recipient takes
the message with it. Index entries pointing at moved records are removed too.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any

import lmdb

from relay.queue.layout import QueueTables
from relay.queue.records import RecordError, check_message, check_rcpt

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">I")
MESSAGES, RECIPIENTS = "messages", "recipients"


@dataclass(frozen=True)
class Quarantined:
    """One record kept aside: which table, its key (as text), why, when, how big."""

    table: str
    key: str
    why: str
    when: float
    size: int


def _printable(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace").replace("\0", " ")


class Quarantine:
    """The quarantine table beside the queue's four (see relay/queue/layout.py)."""

    def __init__(self, tables: QueueTables) -> None:
        self.t = tables
        try:
            self.db = tables.env.open_db(b"queue_quarantine")
        except lmdb.Error as exc:
            from relay.store.env import StateError

            raise StateError(f"cannot open the queue quarantine: {exc}") from exc

    def sweep(self) -> int:
        """Move every undecodable message and recipient record aside; returns how many."""
        bad_msgs: dict[bytes, str] = {}
        bad_rcpts: dict[bytes, str] = {}
        with self.t.env.begin(buffers=True) as txn:
            for key, raw in txn.cursor(db=self.t.msgs):
                try:
                    check_message(bytes(key).decode("ascii"), raw)
                except (RecordError, UnicodeDecodeError) as exc:
                    bad_msgs[bytes(key)] = str(exc)
            for key, raw in txn.cursor(db=self.t.rcpts):
                try:
                    check_rcpt(bytes(key), raw)
                except RecordError as exc:
                    bad_rcpts[bytes(key)] = str(exc)
        if not bad_msgs and not bad_rcpts:
            return 0

        def work(txn: lmdb.Transaction) -> int:
            n = sum(self.move_message(txn, k, why) for k, why in bad_msgs.items())
            return n + sum(self.move_rcpt(txn, k, why) for k, why in bad_rcpts.items())

        return self.t.write(work)

    def move_message(self, txn: lmdb.Transaction, key: bytes, why: str) -> int:
        """Move a message record and all its recipients aside; returns records moved."""
        if not self._take(txn, MESSAGES, key, why):
            return 0
        prefix = key + b"\0"
        cur = txn.cursor(db=self.t.rcpts)
        keys = []
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not bytes(k).startswith(prefix):
                    break
                keys.append(bytes(k))
        why = "its message record was quarantined"
        return 1 + sum(self.move_rcpt(txn, k, why, follow=False) for k in keys)

    def move_rcpt(self, txn: lmdb.Transaction, key: bytes, why: str, follow: bool = True) -> int:
        """Move a recipient record aside (and, with `follow`, a message left without any)."""
        if not self._take(txn, RECIPIENTS, key, why):
            return 0
        qid = key.partition(b"\0")[0]
        if follow and txn.get(qid, db=self.t.msgs) is not None:
            if not self.t.has_recipients(txn, qid.decode("ascii", "replace")):
                return 1 + self.move_message(txn, qid, "its recipients were quarantined")
        return 1

    def _take(self, txn: lmdb.Transaction, table: str, key: bytes, why: str) -> bool:
        """Move one record and its index entry (arrival or due) aside; False if absent."""
        db, index = (
            (self.t.msgs, self.t.arrived) if table == MESSAGES else (self.t.rcpts, self.t.due)
        )
        raw = txn.get(key, db=db)
        if raw is None:
            return False
        self._keep(txn, table, key, raw, why)
        txn.delete(key, db=db)
        _delete_index(txn, index, key)
        return True

    def _keep(
        self, txn: lmdb.Transaction, table: str, key: bytes, raw: bytes | memoryview, why: str
    ) -> None:
        log.error(
            "queue: quarantined an undecodable %s record %s: %s (see `bouncer store check`)",
            table,
            _printable(key),
            why,
        )
        head = json.dumps({"table": table, "why": why, "when": time.time()}).encode()
        qkey = table.encode() + b"\0" + key
        txn.put(qkey, _HEAD.pack(len(head)) + head + bytes(raw), db=self.db)

    def entries(self) -> list[Quarantined]:
        """Every record in quarantine, in table and key order."""
        out = []
        with self.t.env.begin(buffers=True) as txn:
            for qkey, raw in txn.cursor(db=self.db):
                table, _, key = bytes(qkey).partition(b"\0")
                (n,) = _HEAD.unpack_from(raw)
                head = json.loads(bytes(raw[_HEAD.size : _HEAD.size + n]))
                size = len(raw) - _HEAD.size - n
                why, when = head["why"], head["when"]
                out.append(Quarantined(table.decode(), _printable(key), why, when, size))
        return out

    def count(self) -> int:
        with self.t.env.begin() as txn:
            n: int = txn.stat(self.db)["entries"]
            return n


def _delete_index(txn: lmdb.Transaction, index: Any, key: bytes) -> None:
    """Remove the entries of a due or arrival index (8-byte time + key) that name `key`."""
    cur = txn.cursor(db=index)
    stale = [bytes(k) for k in cur.iternext(values=False) if bytes(k)[8:] == key]
    for k in stale:
        txn.delete(k, db=index)
