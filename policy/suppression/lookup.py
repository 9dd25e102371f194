# The numbers of docs/behaviour.md#suppression-policy, the look-up side (does a record refuse at
# `now`?) and the record primitives every escalation rule builds on. Pure functions; no I/O.
"""Suppression rules and record primitives shared by the escalation rules.

Expiry is never written by a timer: a temporary suppression whose `until` has
passed is simply not refusing any more (`refuses`, `effective_state`), and the
next write materialises the re-admission in the history (`base`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta

from policy.reply import Reply
from policy.suppression.encoding import CODE_ACTIVE, CODE_SUPPRESSED
from policy.suppression.records import (
    MAX_REASON,
    REFUSALS,
    Basis,
    HistoryEvent,
    Scope,
    State,
    SuppressionRecord,
    basis_of,
    refusal_kind,
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
    synthesized_window: float = 86400.0  # seconds: one counted synthesized refusal, one window
    domain_first_days: float = 1.0  # a first bad-domain verdict (NXDOMAIN, x.1.2)
    domain_confirmed_days: float = 90.0  # confirmed a window later, or a null MX at once
    storm_min: int = 20  # distinct addresses answered hard by one remote domain...
    storm_window: float = 600.0  # seconds: ...and half its attempts, within this
    storm_suppress_hours: float = 24.0  # what a hard verdict during a storm suppresses for
    reentry_days: float = 90.0  # after a streak re-admission, one more SB steps up the ladder

    def __post_init__(self) -> None:
        if self.permanent_after_hard < 1 or self.soft_streak_min_attempts < 1:
            raise ValueError("permanent_after_hard and soft_streak_min_attempts must be >= 1")
        if self.hard_suppress_days <= 0 or any(d <= 0 for d in self.soft_suppress_days):
            raise ValueError("suppression durations must be > 0 days")
        if self.soft_streak_days < 0 or self.history_size < 1:
            raise ValueError("soft_streak_days must be >= 0 and history_size >= 1")
        if self.storm_min < 1:
            raise ValueError("storm_min must be >= 1")
        spans = (
            self.synthesized_window,
            self.domain_first_days,
            self.domain_confirmed_days,
            self.storm_window,
            self.storm_suppress_hours,
        )
        if not all(0 < d < float("inf") for d in spans) or not 0 <= self.reentry_days < 1e6:
            raise ValueError(
                "synthesized_window, domain_*_days, storm_window and storm_suppress_hours "
                "must be > 0, reentry_days >= 0"
            )


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
    """The text of the synthesized refusal, e.g. "Recipient suppressed: bad mailbox,
    <bob@example.com>: suppressed (bad-mailbox: 550 5.1.1 user unknown) since 2026-11-01
    until 2027-01-30"."""
    return f"{REFUSALS[refusal_kind(rec)][2]}, <{address}>: {refusal_tail(rec)}"


# refusal_reply runs at every refused RCPT: setting Reply's slots directly costs half of
# its frozen dataclass __init__ (an object.__setattr__ per field). Unpacking fails at import
# if Reply's fields change, rather than leaving a new one unset.
_SET_CODE, _SET_ENHANCED, _SET_TEXT, _SET_HOST = (
    Reply.__dict__[f.name].__set__ for f in fields(Reply)
)


def refusal_reply(address: str, scope: Scope, tail: str, kind: int = 0) -> Reply:
    """The refusal of REFUSALS[kind] (a record from before kinds: by scope); `tail` from the
    record. The same value as `Reply(code, enhanced, f"{phrase}, <{address}>: {tail}")`.
    """
    if kind == 0 and scope is Scope.DOMAIN:
        kind = 2  # records.KIND_BAD_DOMAIN
    code, enhanced, phrase = REFUSALS[kind] if kind < len(REFUSALS) else REFUSALS[0]
    r: Reply = object.__new__(Reply)
    _SET_CODE(r, code)
    _SET_ENHANCED(r, enhanced)
    _SET_TEXT(r, f"{phrase}, <{address}>: {tail}")
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
    """The record to build on: a fresh one, or the old one with any expiry materialised.

    An expired streak suppression leaves the re-entry mark: its level holds for
    `reentry_days`, and one more SB of its category steps up at once.
    """
    if rec is None:
        return SuppressionRecord(key=key, scope=scope, first_seen=now, last_seen=now)
    if effective_state(rec, now) is State.ACTIVE and rec.state is State.SUPPRESSED:
        until = rec.until or now
        history = add_event(rec, rules, until, "readmitted", "suppression expired")
        r = replace(readmitted(rec), history=history)
        if basis_of(rec) is Basis.STREAK and rec.cause is not None and rules.reentry_days > 0:
            r = replace(
                r,
                reentry_until=until + timedelta(days=rules.reentry_days),
                reentry_category=rec.cause,
            )
        return r
    return rec


def readmitted(rec: SuppressionRecord) -> SuppressionRecord:
    """The record with its suppression cleared (state active); counts and history stay."""
    return replace(
        rec, state=State.ACTIVE, since=None, until=None, reason="", cause=None, basis=Basis.NONE
    )


def strike(rec: SuppressionRecord, rules: SuppressionRules, now: datetime) -> SuppressionRecord:
    """One more HB (real or a counted synthesized one); a new window when the last began a
    `synthesized_window` or more ago."""
    windows = rec.windows
    if not windows or (now - windows[-1]).total_seconds() >= rules.synthesized_window:
        windows = (*windows, now)[-max(rules.permanent_after_hard, 1) - 1 :]
    return replace(rec, strikes=rec.strikes + 1, windows=windows)


def permanent_due(rec: SuppressionRecord, rules: SuppressionRules, confirmations: int = 0) -> bool:
    """Enough strikes in enough distinct windows (docs/behaviour.md#suppression-policy).

    `confirmations`: a domain's first window is its first verdict, not a confirmation.
    """
    need = rules.permanent_after_hard
    return rec.strikes >= need + confirmations and len(rec.windows) >= need + confirmations


def suppress(
    rec: SuppressionRecord,
    now: datetime,
    until: datetime | None,
    cause: Category,
    reason: str,
    basis: Basis,
) -> SuppressionRecord:
    """Enter (or extend) a suppression; `until=None` makes it permanent."""
    refusing = rec.state is not State.ACTIVE
    if until is not None and rec.state is State.SUPPRESSED and rec.until is not None:
        until = max(until, rec.until)
    if rec.state in LOCKED_STATES:
        return rec  # already refused for good; the counts still move
    if refusing and rec.cause in HARD_CATEGORIES and cause not in HARD_CATEGORIES:
        # a dead address stays suppressed as dead
        cause, reason, basis = rec.cause, rec.reason, basis_of(rec)
    return replace(
        rec,
        state=State.PERMANENT if until is None else State.SUPPRESSED,
        since=rec.since if refusing and rec.since else now,
        until=until,
        cause=cause,
        reason=one_line(reason),
        basis=basis,
    )
