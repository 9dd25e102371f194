# What the store keeps per address or domain, and how a record reads to people. Values
# only, no I/O; the byte format is policy/suppression/encoding.py's.
"""Suppression records (docs/behaviour.md#suppression-policy).

The record, its refusal text and its JSON shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from policy.reply import Reply
from policy.verdict import BounceClass, Category

MAX_REASON = 200  # characters; the refusal line must stay under RFC 5321's 512 octets


class State(StrEnum):
    ACTIVE = "active"  # mail goes through (never suppressed, re-admitted, or lifted)
    SUPPRESSED = "suppressed"  # refused until `until`, then re-admitted automatically
    PERMANENT = "permanent"  # refused until lifted by hand with --force and a reason
    BLOCKED = "blocked"  # a complaint: refused until lifted by hand with --force and a reason


class Basis(StrEnum):
    """What the current suppression rests on: it picks the refusal code and phrase, and
    what may lift it (docs/behaviour.md#suppression-policy)."""

    NONE = ""  # not suppressed, or a record from before bases were kept (derived on read)
    HARD = "hard"  # a real HB of the address, or synthesized strikes on one
    DOMAIN = "domain"  # bad-domain verdicts (NXDOMAIN, a remote's x.1.2) on the domain record
    NULL_MX = "null-mx"  # the domain's own RFC 7505 statement
    STREAK = "streak"  # successive soft bounces
    STORM = "storm"  # a hard verdict while its remote domain was in a storm: 24 h, doubtful
    MANUAL = "manual"  # an operator's add or an import
    COMPLAINT = "complaint"  # an ARF feedback report


class Scope(StrEnum):
    ADDRESS = "address"
    DOMAIN = "domain"


@dataclass(frozen=True, slots=True)
class SoftStreak:
    """Consecutive soft bounces of one category with no success between."""

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
    basis: Basis = Basis.NONE  # what the current suppression rests on
    windows: tuple[datetime, ...] = ()  # starts of the distinct windows strikes fell in
    last_synthesized: datetime | None = None  # the last synthesized refusal that was counted
    reentry_until: datetime | None = None  # after a streak re-admission: the level holds until
    reentry_category: Category | None = None  # ...for one more SB of this category


_WHAT = {
    State.SUPPRESSED: "suppressed",
    State.PERMANENT: "suppressed permanently",
    State.BLOCKED: "blocked",
}


@lru_cache(maxsize=4096)
def _day(epoch_day: int) -> str:
    return datetime.fromtimestamp(epoch_day * 86400, UTC).strftime("%Y-%m-%d")


# The refusal per reason (docs/behaviour.md#suppression-policy): code, enhanced code, and the
# fixed phrase the text starts with, so log tools (pflogsumm's reject summary) group by it.
# The index is the on-disk refusal kind (policy/suppression/encoding.py): never renumber.
REFUSALS: tuple[tuple[int, str, str], ...] = (
    (550, "5.1.1", "Recipient suppressed: bad mailbox"),  # 0: records written before kinds
    (550, "5.1.1", "Recipient suppressed: bad mailbox"),
    (550, "5.1.2", "Recipient suppressed: bad domain"),
    (556, "5.1.10", "Recipient suppressed: domain accepts no mail"),
    (550, "5.2.1", "Recipient suppressed: inactive mailbox"),
    (550, "5.2.2", "Recipient suppressed: mailbox full for weeks"),
    (550, "5.4.1", "Recipient suppressed: successive soft bounces"),
    (550, "5.7.1", "Recipient suppressed: complaint"),
    (550, "5.7.1", "Recipient suppressed: by the operator"),
    (550, "5.1.1", "Recipient suppressed: hard bounce during a storm"),
)
(
    KIND_LEGACY,
    KIND_BAD_MAILBOX,
    KIND_BAD_DOMAIN,
    KIND_NULL_MX,
    KIND_INACTIVE,
    KIND_STREAK_QUOTA,
    KIND_STREAK_OTHER,
    KIND_COMPLAINT,
    KIND_MANUAL,
    KIND_STORM,
) = range(len(REFUSALS))
_STREAK_PREFIX = "successive bounces"


def basis_of(rec: SuppressionRecord) -> Basis:
    """The record's basis; for a record written before bases were kept, read from the rest."""
    if rec.basis is not Basis.NONE or rec.state is State.ACTIVE:
        return rec.basis
    if rec.state is State.BLOCKED:
        return Basis.COMPLAINT
    if rec.reason.startswith(_STREAK_PREFIX):
        return Basis.STREAK
    if rec.scope is Scope.DOMAIN:
        return Basis.DOMAIN
    return Basis.HARD if rec.cause in _DEAD else Basis.MANUAL


_DEAD = frozenset({Category.BAD_MAILBOX, Category.BAD_DOMAIN, Category.INACTIVE_MAILBOX})


def refusal_kind(rec: SuppressionRecord) -> int:
    """Which of REFUSALS a refusing record answers with."""
    b = basis_of(rec)
    if b is Basis.COMPLAINT:
        return KIND_COMPLAINT
    if b is Basis.MANUAL:
        return KIND_MANUAL
    if b is Basis.NULL_MX:
        return KIND_NULL_MX
    if b is Basis.STORM:
        return KIND_STORM
    if b is Basis.STREAK:
        return KIND_STREAK_QUOTA if rec.cause is Category.QUOTA_ISSUES else KIND_STREAK_OTHER
    if b is Basis.DOMAIN or rec.scope is Scope.DOMAIN or rec.cause is Category.BAD_DOMAIN:
        return KIND_BAD_DOMAIN
    if rec.cause is Category.INACTIVE_MAILBOX:
        return KIND_INACTIVE
    return KIND_BAD_MAILBOX


def tail_parts(rec: SuppressionRecord) -> tuple[str, str, str]:
    """(before the reason, the reason, after it) of the refusal tail."""
    reason = rec.reason[:MAX_REASON]
    if rec.state is State.ACTIVE:
        return "", reason, ""
    what = _WHAT[rec.state]
    if rec.scope is Scope.DOMAIN:
        what = f"domain {rec.key} {what}"
    before, after = what, ""
    if reason:
        before, after = before + " (", ")"
    if rec.since is not None:
        after += f" since {_day(int(rec.since.timestamp() // 86400))}"
    if rec.state is State.SUPPRESSED and rec.until is not None:
        after += f" until {_day(int(rec.until.timestamp() // 86400))}"
    return before, reason, after


def refusal_tail(rec: SuppressionRecord) -> str:
    """What a refusal says after the phrase and "<address>: ", e.g. "suppressed
    (bad-mailbox: 550 5.1.1 user unknown) since 2026-11-01 until 2027-01-30". Empty when
    active.

    It depends only on the record, so it is written with it: a refusal at RCPT
    then costs a slice, not date formatting (the look-up's hot path).
    """
    if rec.state is State.ACTIVE:
        return ""
    return "".join(tail_parts(rec))


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
        "basis": rec.basis.value or None,
        "windows": [t(w) for w in rec.windows],
        "reentry": None
        if rec.reentry_until is None or rec.reentry_category is None
        else {"category": rec.reentry_category.value, "until": t(rec.reentry_until)},
        "first_seen": t(rec.first_seen),
        "last_seen": t(rec.last_seen),
        "history": [{"when": t(e.when), "kind": e.kind, "detail": e.detail} for e in rec.history],
    }
