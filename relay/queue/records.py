# This module turns queue records into LMDB keys and values and back; it holds no
# state and does no I/O, so the on-disk layout is written down in one place.
"""Queue records, and the key and value formats of its named databases (see relay/queue/queue.py).

Times are integer microseconds since the epoch (UTC), so due-index keys sort by
time as plain bytes. Records are JSON: readable with `mdb_dump`, and a field
added later reads as absent from an older record instead of failing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from policy.decide import Disposition
from policy.reply import Reply

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a damaged record raises while being decoded (bad length prefix, bad JSON or UTF-8,
# missing or mistyped fields); check_* turn any of them into one RecordError.
_UNDECODABLE = (struct.error, ValueError, KeyError, TypeError, IndexError, OverflowError)


class RecordError(ValueError):
    """A queue record that cannot be decoded; it is quarantined (relay/queue/quarantine.py)."""


_HEAD = struct.Struct(">I")  # length of the envelope JSON that precedes the message bytes


def to_us(when: datetime) -> int:
    """An aware datetime -> µs since the epoch (naive ones are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def rcpt_key(queue_id: str, recipient: str) -> bytes:
    # NUL cannot occur in a queue id or an SMTP address, so it separates unambiguously
    # and all recipients of one message sort together under the "queue_id NUL" prefix.
    return queue_id.encode() + b"\0" + recipient.encode("utf-8")


def split_rcpt_key(key: bytes) -> tuple[str, str]:
    qid, _, rcpt = key.partition(b"\0")
    return qid.decode(), rcpt.decode("utf-8")


def due_key(due_us: int, queue_id: str, recipient: str) -> bytes:
    return struct.pack(">Q", max(due_us, 0)) + rcpt_key(queue_id, recipient)


def encode_message(envelope: dict[str, Any], data: bytes) -> bytes:
    head = json.dumps({**envelope, "size": len(data)}, separators=(",", ":")).encode()
    return _HEAD.pack(len(head)) + head + data


def decode_message(raw: bytes | memoryview) -> tuple[dict[str, Any], bytes]:
    raw = bytes(raw)
    (n,) = _HEAD.unpack_from(raw)
    envelope: dict[str, Any] = json.loads(raw[_HEAD.size : _HEAD.size + n])
    return envelope, raw[_HEAD.size + n :]


def decode_envelope(raw: bytes | memoryview) -> dict[str, Any]:
    """Only the envelope: reads the JSON head without touching the message bytes."""
    (n,) = _HEAD.unpack_from(raw)
    envelope: dict[str, Any] = json.loads(bytes(raw[_HEAD.size : _HEAD.size + n]))
    return envelope


@dataclass(slots=True)
class RcptState:
    """A queued recipient's state record: the one mutable record of the queue.

    Stored as a JSON object whose keys are these field names; `held` and
    `delivering` are absent from the record until first set (None here), and keys
    this version does not know are kept in `extra` and written back as they were.
    """

    rcpt: str
    next_at: int  # µs: when it is due (where its due-index entry sits)
    first_failure: int | None  # µs of the first failed attempt
    tries: int
    attempts: list[Attempt]  # the last HISTORY attempts, oldest first
    leased_by: str = ""  # the runner holding it ("pid:token"), "" = nobody
    held: bool | None = None  # `queue hold` / `queue release`; None: never held
    delivering: int | None = None  # µs: marked before the final dot (write-ahead)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_held(self) -> bool:
        return bool(self.held)


_RCPT_KEYS = ("rcpt", "next_at", "first_failure", "tries", "attempts", "leased_by")
_RCPT_OPTIONAL = ("held", "delivering")


def encode_rcpt(state: RcptState) -> bytes:
    record: dict[str, Any] = {
        "rcpt": state.rcpt,
        "next_at": state.next_at,
        "first_failure": state.first_failure,
        "tries": state.tries,
        "attempts": [attempt_json(a) for a in state.attempts],
        "leased_by": state.leased_by,
    }
    if state.held is not None:
        record["held"] = state.held
    if state.delivering is not None:
        record["delivering"] = state.delivering
    record.update(state.extra)
    return json.dumps(record, separators=(",", ":")).encode()


def decode_rcpt(raw: bytes | memoryview) -> RcptState:
    """The state record; KeyError, TypeError or ValueError when it is not one."""
    s: dict[str, Any] = json.loads(bytes(raw))
    return RcptState(
        s["rcpt"],
        s["next_at"],
        s["first_failure"],
        s["tries"],
        [attempt_from_json(a) for a in s["attempts"]],
        s.get("leased_by", ""),
        s.get("held"),
        s.get("delivering"),
        {k: v for k, v in s.items() if k not in _RCPT_KEYS and k not in _RCPT_OPTIONAL},
    )


@dataclass(frozen=True)
class SpoolMessage:
    """A message the pipeline hands over to the queue at DATA."""

    queue_id: str
    sender: str
    data: bytes
    arrived: datetime
    deferred: tuple[tuple[str, Reply], ...] = ()  # soft-failed: retry on the schedule
    failed: tuple[tuple[str, Reply], ...] = ()  # hard-failed in a mixed outcome: DSN now
    options: tuple[str, ...] = ()  # the client's MAIL parameters (BODY=8BITMIME, SMTPUTF8)


@dataclass(frozen=True)
class Attempt:
    when: datetime
    reply: Reply
    relay: str = "none"
    stage: str = "RCPT"


@dataclass(frozen=True)
class QueuedRecipient:
    queue_id: str
    recipient: str
    next_at: datetime
    first_failure: datetime | None
    tries: int
    attempts: tuple[Attempt, ...]
    leased_by: str = ""
    held: bool = False  # `queue hold`: not retried until `queue release`

    @property
    def last_reply(self) -> Reply | None:
        return self.attempts[-1].reply if self.attempts else None


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    sender: str
    arrived: datetime
    size: int
    kind: str  # "mail", or "dsn" for a notification bouncer made itself
    origin: str  # for a DSN: the queue id of the message it reports on
    recipients: tuple[QueuedRecipient, ...]
    options: tuple[str, ...] = ()  # MAIL parameters to pass on again on each retry


@dataclass(frozen=True)
class Lease:
    """Due recipients of one message, now owned by one runner until `until`."""

    message: QueuedMessage
    data: bytes
    until: datetime


@dataclass(frozen=True)
class Settlement:
    recipient: str
    disposition: Disposition  # DELIVERED, BOUNCED, QUEUED, EXPIRED or DROPPED
    attempt: Attempt | None = None
    next_at: datetime | None = None  # for QUEUED
    note: str = ""  # shown in the DSN, e.g. the operator's reason for a drop
    notify: bool = False  # DROPPED only: send a DSN too (BOUNCED and EXPIRED always do)

    @property
    def wants_dsn(self) -> bool:
        if self.disposition is Disposition.DROPPED:
            return self.notify
        return self.disposition in (Disposition.BOUNCED, Disposition.EXPIRED)


def attempt_json(a: Attempt) -> dict[str, Any]:
    r = a.reply
    return {
        "when": to_us(a.when),
        "reply": [r.code, r.enhanced, r.text, r.host],
        "relay": a.relay,
        "stage": a.stage,
    }


def attempt_from_json(d: dict[str, Any]) -> Attempt:
    code, enhanced, text, host = d["reply"]
    return Attempt(from_us(d["when"]), Reply(code, enhanced, text, host), d["relay"], d["stage"])


def recipient_from_state(qid: str, s: RcptState) -> QueuedRecipient:
    ff = s.first_failure
    return QueuedRecipient(
        qid,
        s.rcpt,
        from_us(s.next_at),
        None if ff is None else from_us(ff),
        s.tries,
        tuple(s.attempts),
        s.leased_by,
        s.is_held,
    )


def message_from_json(
    qid: str, env: dict[str, Any], rcpts: tuple[QueuedRecipient, ...]
) -> QueuedMessage:
    return QueuedMessage(
        qid,
        env["sender"],
        from_us(env["arrived"]),
        env["size"],
        env["kind"],
        env["origin"],
        rcpts,
        tuple(env.get("options", ())),
    )


def new_envelope(
    sender: str,
    arrived: datetime,
    kind: str = "mail",
    origin: str = "",
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The envelope record of a message entering the queue (`encode_message` adds the size)."""
    return {
        "sender": sender,
        "arrived": to_us(arrived),
        "kind": kind,
        "origin": origin,
        "options": list(options),
    }


def new_rcpt_state(
    rcpt: str,
    next_at: datetime,
    first_failure: datetime | None,
    tries: int,
    attempts: list[Attempt],
) -> RcptState:
    """The state record of a recipient entering the queue, not leased."""
    ff = None if first_failure is None else to_us(first_failure)
    return RcptState(rcpt, to_us(next_at), ff, tries, list(attempts))


def check_message(queue_id: str, raw: bytes | memoryview) -> None:
    """Raise RecordError unless `raw` decodes to a whole message record (envelope only)."""
    try:
        env = decode_envelope(raw)
        message_from_json(queue_id, env, ())
        from_us(env["arrived"])
        (n,) = _HEAD.unpack_from(raw)
        if len(raw) != _HEAD.size + n + env["size"]:
            raise ValueError(f"{len(raw)} bytes, the envelope says {_HEAD.size + n + env['size']}")
    except _UNDECODABLE as exc:
        raise RecordError(f"message record: {type(exc).__name__}: {exc}") from exc


def check_rcpt(key: bytes, raw: bytes | memoryview) -> tuple[str, str]:
    """(queue id, recipient) of a whole recipient record; RecordError otherwise."""
    try:
        qid, rcpt = split_rcpt_key(bytes(key))
        r = recipient_from_state(qid, decode_rcpt(raw))
        if r.recipient != rcpt or not isinstance(r.tries, int):
            raise ValueError("the record names another recipient than its key")
        return qid, rcpt
    except _UNDECODABLE as exc:
        raise RecordError(f"recipient record: {type(exc).__name__}: {exc}") from exc
