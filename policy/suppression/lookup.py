# The numbers of docs/behaviour.md#suppression-policy, the look-up side (does a record refuse at
# `now`?) and the record primitives every escalation rule builds on. Pure functions; no I/O.
"""Suppression rules and record primitives shared by the escalation rules.

Expiry is never written by a timer: a temporary suppression whose `until` has
passed is simply not refusing any more (`refuses`, `effective_state`), and the
next write materialises the re-admission in the history (`base`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from policy.reply import Reply
from policy.suppression.encoding import CODE_ACTIVE, CODE_SUPPRESSED
from policy.suppression.records import (
    MAX_REASON,
    HistoryEvent,
    Scope,
    State,
    SuppressionRecord,
    refusal_tail,
)
from policy.verdict import Category

# docs/behaviour.md#verdicts: the categories that mean the address (or domain) is dead.
HARD_CATEGORIES = frozenset({Category.BAD_MAILBOX, Category.BAD_DOMAIN, Category.INACTIVE_MAILBOX})
# States a hand-made lift must be forced out of (docs/behaviour.md#suppression-policy).
LOCKED_STATES = frozenset({State.PERMANENT, State.BLOCKED})
REFUSING_STATES = frozenset({State.SUPPRESSED, State.PERMANENT, State.BLOCKED})


@dataclass(frozen=True)
class SuppressionRules:
    """The numbers of the suppression policy; relay builds this from the [policy] settings."""

    hard_suppress_days: float = 90.0
    permanent_after_hard: int = 3
    soft_streak_days: float = 21.0
    soft_streak_min_attempts: int = 3
    soft_suppress_days: tuple[float, ...] = (7.0, 30.0, 90.0)
    history_size: int = 20

    def __post_init__(self) -> None:
        if self.permanent_after_hard < 1 or self.soft_streak_min_attempts < 1:
            raise ValueError("permanent_after_hard and soft_streak_min_attempts must be >= 1")
        if self.hard_suppress_days <= 0 or any(d <= 0 for d in self.soft_suppress_days):
            raise ValueError("suppression durations must be > 0 days")
        if self.soft_streak_days < 0 or self.history_size < 1:
            raise ValueError("soft_streak_days must be >= 0 and history_size >= 1")


class RuleError(ValueError):
    """An operation the rules forbid; the message says what to do instead."""


class ForceRequired(RuleError):
    """Lifting a permanent or blocked record needs --force and a reason."""


class NotSuppressed(RuleError):
    """Nothing to lift: the record is not refusing."""


def utc(when: datetime) -> datetime:
    """Times are compared in UTC; a naive datetime is taken to be UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ---- look-up side ----------------------------------------------------------------------------


def refuses(state_code: int, until_ts: float, now_ts: float) -> bool:
    """Does a record in this state refuse mail at `now`? Expiry is decided here, at look-up."""
    if state_code == CODE_ACTIVE:
        return False
    if state_code == CODE_SUPPRESSED:
        return not until_ts <= now_ts  # NaN (no end) never expires
    return True


def effective_state(rec: SuppressionRecord, now: datetime) -> State:
    """The state as of `now`: a temporary suppression past its `until` reads as active."""
    if rec.state is State.SUPPRESSED and rec.until is not None and rec.until <= utc(now):
        return State.ACTIVE
    return rec.state


def refusal_text(address: str, rec: SuppressionRecord) -> str:
    """The text of the synthesized 550, e.g. "<bob@example.com>: suppressed since 2026-11-01
    (bad-mailbox: 550 5.1.1 user unknown); until 2027-01-30"."""
    return f"<{address}>: {refusal_tail(rec)}"


# refusal_reply runs at every refused RCPT: setting Reply's slots directly costs half of
# its frozen dataclass __init__ (an object.__setattr__ per field). Unpacking fails at import
# if Reply's fields change, rather than leaving a new one unset.
_SET_CODE, _SET_ENHANCED, _SET_TEXT, _SET_HOST = (
    Reply.__dict__[f.name].__set__ for f in fields(Reply)
)


def refusal_reply(address: str, scope: Scope, tail: str) -> Reply:
    """`550 5.1.1` for an address, `550 5.1.2` for a domain; `tail` from the record.

    The same value as `Reply(550, "5.1.1" or "5.1.2", f"<{address}>: {tail}")`.
    """
    r: Reply = object.__new__(Reply)
    _SET_CODE(r, 550)
    _SET_ENHANCED(r, "5.1.2" if scope is Scope.DOMAIN else "5.1.1")
    _SET_TEXT(r, f"<{address}>: {tail}")
    _SET_HOST(r, None)
    return r


def effective(rec: SuppressionRecord, rules: SuppressionRules, now: datetime) -> SuppressionRecord:
    """The record as of `now`, an expired suppression shown re-admitted (nothing is written)."""
    return base(rec, rec.key, rec.scope, rules, utc(now))


# ---- write side ------------------------------------------------------------------------------


def one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON]


def add_event(
    rec: SuppressionRecord, rules: SuppressionRules, when: datetime, kind: str, detail: str
) -> tuple[HistoryEvent, ...]:
    # Bounded: the newest `history_size` events; what fell off is summarised by the counts.
    hist = (*rec.history, HistoryEvent(when, kind, one_line(detail)))
    return hist[-rules.history_size :]


def base(
    rec: SuppressionRecord | None, key: str, scope: Scope, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """The record to build on: a fresh one, or the old one with any expiry materialised."""
    if rec is None:
        return SuppressionRecord(key=key, scope=scope, first_seen=now, last_seen=now)
    if effective_state(rec, now) is State.ACTIVE and rec.state is State.SUPPRESSED:
        until = rec.until or now
        history = add_event(rec, rules, until, "readmitted", "suppression expired")
        return replace(readmitted(rec), history=history)
    return rec


def readmitted(rec: SuppressionRecord) -> SuppressionRecord:
    """The record with its suppression cleared (state active); counts and history stay."""
    return replace(rec, state=State.ACTIVE, since=None, until=None, reason="", cause=None)


def suppress(
    rec: SuppressionRecord, now: datetime, until: datetime | None, cause: Category, reason: str
) -> SuppressionRecord:
    """Enter (or extend) a suppression; `until=None` makes it permanent."""
    refusing = rec.state is not State.ACTIVE
    if until is not None and rec.state is State.SUPPRESSED and rec.until is not None:
        until = max(until, rec.until)
    if rec.state in LOCKED_STATES:
        return rec  # already refused for good; the counts still move
    if refusing and rec.cause in HARD_CATEGORIES and cause not in HARD_CATEGORIES:
        cause, reason = rec.cause, rec.reason  # a dead address stays suppressed as dead
    return replace(
        rec,
        state=State.PERMANENT if until is None else State.SUPPRESSED,
        since=rec.since if refusing and rec.since else now,
        until=until,
        cause=cause,
        reason=one_line(reason),
    )
