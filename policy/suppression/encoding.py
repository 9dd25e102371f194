# The suppression record's byte format, in one place: values in, bytes out and back.
# No I/O; changing the format means a new FORMAT_VERSION that still reads the old ones.
"""Suppression records as bytes.

The format puts what a look-up needs first, in a fixed struct header
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
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from policy.reply import Reply
from policy.suppression.records import (
    Basis,
    HistoryEvent,
    Scope,
    SoftStreak,
    State,
    SuppressionRecord,
    refusal_kind,
    tail_parts,
)
from policy.verdict import BounceClass, Category

# 1: JSON body as is; 2: JSON body deflated with _ZDICT; 3: as 2, and the state byte
# carries the refusal kind (records.REFUSALS) above the state code: kind << 2 | state.
FORMAT_VERSION = 3
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
STATE_BITS = 3  # the state code is the state byte's low two bits; the refusal kind above


def split_state(byte: int, version: int) -> tuple[int, int]:
    """(state code, refusal kind) from a header's state byte; kind 0 before version 3."""
    if version < 3:
        return byte, 0
    return byte & STATE_BITS, byte >> 2


# version, state code, since (epoch s, NaN = none), until (epoch s, NaN = none), then the
# text that follows the header: its byte length, and where the reason sits inside it (offset,
# length). The text is the refusal tail when the record refuses (the reason is quoted in it,
# so it is stored once), else just the reason.
HEADER = struct.Struct("<BBddHHH")


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


def encode(rec: SuppressionRecord) -> bytes:
    """Record -> bytes: fixed header, text (refusal tail or reason), then a JSON body."""
    before, reason, after = (p.encode("utf-8") for p in tail_parts(rec))
    text = before + reason + after
    head = HEADER.pack(
        FORMAT_VERSION,
        STATE_CODE[rec.state] | (refusal_kind(rec) << 2 if rec.state is not State.ACTIVE else 0),
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
    # Version 3's keys, written only when set: a record without them reads as before.
    if rec.basis is not Basis.NONE:
        body["b"] = rec.basis.value
    if rec.windows:
        body["w"] = [w.timestamp() for w in rec.windows]
    if rec.last_synthesized is not None:
        body["ly"] = rec.last_synthesized.timestamp()
    if rec.reentry_until is not None and rec.reentry_category is not None:
        body["re"] = [rec.reentry_category.value, rec.reentry_until.timestamp()]
    z = zlib.compressobj(6, zlib.DEFLATED, _WBITS, zdict=_ZDICT)
    packed = z.compress(json.dumps(body, separators=(",", ":")).encode("utf-8")) + z.flush()
    return head + text + packed


def decode(raw: bytes) -> SuppressionRecord:
    """bytes -> Record; raises ValueError on a format this code does not know."""
    version, byte, since, until, tlen, roff, rlen = HEADER.unpack_from(raw)
    code, _kind = split_state(byte, version)
    if version not in (1, 2, FORMAT_VERSION):
        raise ValueError(f"suppression record format {version} is not {FORMAT_VERSION}")
    start = HEADER.size
    reason = bytes(raw[start + roff : start + roff + rlen]).decode("utf-8")
    packed = bytes(raw[start + tlen :])
    if version >= 2:
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
        basis=Basis(b.get("b", "")),
        windows=tuple(_utc(w) for w in b.get("w", ())),
        last_synthesized=_dt(b.get("ly")),
        reentry_until=_dt(b["re"][1]) if "re" in b else None,
        reentry_category=Category(b["re"][0]) if "re" in b else None,
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def peek(raw: bytes) -> tuple[int, float, float, str, str]:
    """The look-up's view of a record, no JSON: (state code, since, until, reason, refusal tail).

    since/until are epoch seconds, NaN when absent.
    """
    version, byte, since, until, tlen, roff, rlen = HEADER.unpack_from(raw)
    code, _kind = split_state(byte, version)
    start = HEADER.size
    reason = raw[start + roff : start + roff + rlen].decode("utf-8")
    tail = raw[start : start + tlen].decode("utf-8") if code != CODE_ACTIVE else ""
    return code, since, until, reason, tail
