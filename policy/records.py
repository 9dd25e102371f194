# What the store keeps per address or domain, and its byte format. Values only, no I/O.
"""Suppression records (SPEC §4) and their serialisation.

The byte format puts what a look-up needs first, in a fixed struct header
(version, state, since, until, reason length) followed by the reason text, and
only then the JSON body with everything else. `check()` on the relay's hot
path reads the header and, only when it refuses, the reason; it never decodes
the JSON.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from functools import lru_cache
from typing import Any

from policy.reply import Reply
from policy.verdict import BounceClass, Category

FORMAT_VERSION = 2  # 1: JSON body as is; 2: JSON body deflated with _ZDICT
# A preset dictionary for the deflated body (RFC 1950 §2.2 FDICT): the record's JSON keys
# and common reply phrasing, so even a 300-byte body compresses. Changing it means a new
# FORMAT_VERSION: records written with it must stay readable.
_ZDICT = (
    b'"sc":"domain","sc":"address","fs":1,"ls":1,"cl":"soft","cl":"block","cl":"undetermined",'
    b'"ca":"quota-issues","cu":"bad-domain","ca":"bad-domain","ca":"spam-related","cu":null,'
    b'"cl":"hard","ca":"bad-mailbox","cu":"bad-mailbox","lr":[550,"5.1.1","","mx.","n":[1,0,0,'
    b'"st":null,"st":["quota-issues",1,"h":[[1,"hard","bad-mailbox: 550 5.1.1 "],[1,"soft",'
    b'"quota-issues: 452 4.2.2 Mailbox full"],[1,"synthesized","refused by bouncer"]]}'
    b"Recipient address rejected: User unknown in virtual mailbox table"
    b"The email account that you tried to reach does not exist. Please try "
    b"double-checking the recipient's email address for typos or unnecessary spaces."
    b"mailbox unavailable: user unknown; No such user here; 5.1.1 "
)
_WBITS = -15  # raw deflate: no zlib header or Adler-32 (6 bytes a record); damage still
# shows, as a body that does not inflate or does not parse as JSON.
MAX_REASON = 200  # characters; the refusal line must stay under RFC 5321's 512 octets


class State(StrEnum):
    ACTIVE = "active"  # mail goes through (never suppressed, re-admitted, or lifted)
    SUPPRESSED = "suppressed"  # refused until `until`, then re-admitted automatically
    PERMANENT = "permanent"  # refused until lifted by hand with --force and a reason
    BLOCKED = "blocked"  # a complaint: refused until lifted by hand with --force and a reason


class Scope(StrEnum):
    ADDRESS = "address"
    DOMAIN = "domain"


class _StateCode(IntEnum):
    # On-disk codes; never renumber.
    ACTIVE = 0
    SUPPRESSED = 1
    PERMANENT = 2
    BLOCKED = 3


STATE_CODE = {s: _StateCode[s.name].value for s in State}
CODE_STATE = {v: k for k, v in STATE_CODE.items()}
CODE_ACTIVE = STATE_CODE[State.ACTIVE]
CODE_SUPPRESSED = STATE_CODE[State.SUPPRESSED]

# version, state code, since (epoch s, NaN = none), until (epoch s, NaN = none), then the
# text that follows the header: its byte length, and where the reason sits inside it (offset,
# length). The text is the refusal tail when the record refuses (the reason is quoted in it,
# so it is stored once), else just the reason.
HEADER = struct.Struct("<BBddHHH")


@dataclass(frozen=True, slots=True)
class SoftStreak:
    """Consecutive soft bounces of one category with no success between (SPEC §4)."""

    category: Category
    first: datetime
    last: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    when: datetime
    kind: str  # "hard", "soft", "synthesized", "success", "activity", "complaint", "add", ...
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SuppressionRecord:
    """Everything known about one address (or, scope domain, one domain)."""

    key: str  # normalised address, or A-label domain
    first_seen: datetime
    last_seen: datetime
    scope: Scope = Scope.ADDRESS
    state: State = State.ACTIVE
    klass: BounceClass | None = None  # class of the last verdict recorded
    category: Category | None = None  # category of the last verdict recorded
    reason: str = ""  # why it is refused, quoted in the synthesized reply
    cause: Category | None = None  # the category behind the current suppression
    last_reply: Reply | None = None
    since: datetime | None = None  # when the current suppression began
    until: datetime | None = None  # when a temporary suppression ends
    hard: int = 0  # real hard bounces, lifetime
    synthesized: int = 0  # bouncer's own refusals, lifetime
    soft: int = 0  # soft bounces, lifetime
    other: int = 0  # block and undetermined verdicts: counted, never suppress
    strikes: int = 0  # HBs (real + synthesized) counting toward permanent; reset by success
    streak: SoftStreak | None = None
    soft_level: int = 0  # how many streak suppressions so far: picks 7 d, 30 d, 90 d, permanent
    history: tuple[HistoryEvent, ...] = field(default=())


def _ts(when: datetime | None) -> float:
    return math.nan if when is None else when.timestamp()


def _dt(ts: float | None) -> datetime | None:
    if ts is None or math.isnan(ts):
        return None
    return datetime.fromtimestamp(ts, UTC)


def _reply_out(r: Reply | None) -> list[Any] | None:
    return None if r is None else [r.code, r.enhanced, r.text, r.host]


def _reply_in(v: list[Any] | None) -> Reply | None:
    return None if v is None else Reply(int(v[0]), v[1], v[2], v[3])


_WHAT = {
    State.SUPPRESSED: "suppressed",
    State.PERMANENT: "suppressed permanently",
    State.BLOCKED: "blocked",
}


@lru_cache(maxsize=4096)
def _day(epoch_day: int) -> str:
    return datetime.fromtimestamp(epoch_day * 86400, UTC).strftime("%Y-%m-%d")


def _tail_parts(rec: SuppressionRecord) -> tuple[str, str, str]:
    """(before the reason, the reason, after it) of the refusal tail."""
    reason = rec.reason[:MAX_REASON]
    if rec.state is State.ACTIVE:
        return "", reason, ""
    what = _WHAT[rec.state]
    if rec.scope is Scope.DOMAIN:
        what = f"domain {rec.key} {what}"
    before, after = what, ""
    if rec.since is not None:
        before += f" since {_day(int(rec.since.timestamp() // 86400))}"
    if reason:
        before, after = before + " (", ")"
    if rec.state is State.SUPPRESSED and rec.until is not None:
        after += f"; until {_day(int(rec.until.timestamp() // 86400))}"
    return before, reason, after


def refusal_tail(rec: SuppressionRecord) -> str:
    """What a refusal says after "<address>: ", e.g. "suppressed since 2026-11-01
    (bad-mailbox: 550 5.1.1 user unknown); until 2027-01-30". Empty when active.

    It depends only on the record, so it is written with it: a refusal at RCPT
    then costs a slice, not date formatting (the look-up's hot path).
    """
    if rec.state is State.ACTIVE:
        return ""
    return "".join(_tail_parts(rec))


def encode(rec: SuppressionRecord) -> bytes:
    """Record -> bytes: fixed header, text (refusal tail or reason), then a JSON body."""
    before, reason, after = (p.encode("utf-8") for p in _tail_parts(rec))
    text = before + reason + after
    head = HEADER.pack(
        FORMAT_VERSION,
        STATE_CODE[rec.state],
        _ts(rec.since),
        _ts(rec.until),
        len(text),
        len(before),
        len(reason),
    )
    body: dict[str, Any] = {
        "k": rec.key,
        "sc": rec.scope.value,
        "fs": rec.first_seen.timestamp(),
        "ls": rec.last_seen.timestamp(),
        "cl": rec.klass.value if rec.klass else None,
        "ca": rec.category.value if rec.category else None,
        "cu": rec.cause.value if rec.cause else None,
        "lr": _reply_out(rec.last_reply),
        "n": [rec.hard, rec.synthesized, rec.soft, rec.other, rec.strikes, rec.soft_level],
        "st": None
        if rec.streak is None
        else [
            rec.streak.category.value,
            rec.streak.first.timestamp(),
            rec.streak.last.timestamp(),
            rec.streak.attempts,
        ],
        "h": [[e.when.timestamp(), e.kind, e.detail] for e in rec.history],
    }
    z = zlib.compressobj(6, zlib.DEFLATED, _WBITS, zdict=_ZDICT)
    packed = z.compress(json.dumps(body, separators=(",", ":")).encode("utf-8")) + z.flush()
    return head + text + packed


def decode(raw: bytes) -> SuppressionRecord:
    """bytes -> Record; raises ValueError on a format this code does not know."""
    version, code, since, until, tlen, roff, rlen = HEADER.unpack_from(raw)
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"suppression record format {version} is not {FORMAT_VERSION}")
    start = HEADER.size
    reason = bytes(raw[start + roff : start + roff + rlen]).decode("utf-8")
    packed = bytes(raw[start + tlen :])
    if version == FORMAT_VERSION:
        try:
            packed = zlib.decompressobj(_WBITS, zdict=_ZDICT).decompress(packed)
        except zlib.error as exc:
            raise ValueError(f"record body does not inflate: {exc}") from exc
    b = json.loads(packed)
    hard, synthesized, soft, other, strikes, soft_level = b["n"]
    st = b["st"]
    streak = (
        None if st is None else SoftStreak(Category(st[0]), _utc(st[1]), _utc(st[2]), int(st[3]))
    )
    return SuppressionRecord(
        key=b["k"],
        scope=Scope(b["sc"]),
        state=CODE_STATE[code],
        klass=BounceClass(b["cl"]) if b["cl"] else None,
        category=Category(b["ca"]) if b["ca"] else None,
        reason=reason,
        cause=Category(b["cu"]) if b["cu"] else None,
        last_reply=_reply_in(b["lr"]),
        since=_dt(since),
        until=_dt(until),
        hard=hard,
        synthesized=synthesized,
        soft=soft,
        other=other,
        strikes=strikes,
        streak=streak,
        soft_level=soft_level,
        first_seen=_utc(b["fs"]),
        last_seen=_utc(b["ls"]),
        history=tuple(HistoryEvent(_utc(w), k, d) for w, k, d in b["h"]),
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def peek(raw: bytes) -> tuple[int, float, float, str, str]:
    """The look-up's view of a record, no JSON: (state code, since, until, reason, refusal tail).

    since/until are epoch seconds, NaN when absent.
    """
    _version, code, since, until, tlen, roff, rlen = HEADER.unpack_from(raw)
    start = HEADER.size
    reason = raw[start + roff : start + roff + rlen].decode("utf-8")
    tail = raw[start : start + tlen].decode("utf-8") if code != CODE_ACTIVE else ""
    return code, since, until, reason, tail


def as_dict(rec: SuppressionRecord) -> dict[str, Any]:
    """The record as JSON-ready values, one shape for `bouncer suppression --format json` and
    the HTTP API: times ISO 8601 UTC, enums as their strings."""

    def t(when: datetime | None) -> str | None:
        return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")

    lr = rec.last_reply
    return {
        "address": rec.key,
        "scope": rec.scope.value,
        "state": rec.state.value,
        "class": rec.klass.value if rec.klass else None,
        "category": rec.category.value if rec.category else None,
        "cause": rec.cause.value if rec.cause else None,
        "reason": rec.reason,
        "since": t(rec.since),
        "until": t(rec.until),
        "last_reply": None if lr is None else {"line": lr.line(), "host": lr.host},
        "counts": {
            "hard": rec.hard,
            "synthesized": rec.synthesized,
            "soft": rec.soft,
            "other": rec.other,
            "strikes": rec.strikes,
        },
        "streak": None
        if rec.streak is None
        else {
            "category": rec.streak.category.value,
            "first": t(rec.streak.first),
            "last": t(rec.streak.last),
            "attempts": rec.streak.attempts,
        },
        "soft_level": rec.soft_level,
        "first_seen": t(rec.first_seen),
        "last_seen": t(rec.last_seen),
        "history": [{"when": t(e.when), "kind": e.kind, "detail": e.detail} for e in rec.history],
    }
