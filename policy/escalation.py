# The rules of SPEC §4 as pure functions: old record + event + now -> new record. No I/O.
"""Escalation: how each event changes a suppression record.

Every function takes the current record (or None when the store has none),
the event, the rules and `now`, and returns the new record to write, or None
when nothing needs writing. Expiry is never written by a timer: a temporary
suppression whose `until` has passed is simply not refusing any more
(`refuses`), and the next write materialises the re-admission in the history.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from policy.records import (
    CODE_ACTIVE,
    CODE_SUPPRESSED,
    MAX_REASON,
    HistoryEvent,
    Scope,
    SoftStreak,
    State,
    SuppressionRecord,
    refusal_tail,
)
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict

# SPEC §3: the categories that mean the address (or domain) is dead.
HARD_CATEGORIES = frozenset({Category.BAD_MAILBOX, Category.BAD_DOMAIN, Category.INACTIVE_MAILBOX})
# States a hand-made lift must be forced out of (SPEC §4).
LOCKED_STATES = frozenset({State.PERMANENT, State.BLOCKED})
REFUSING_STATES = frozenset({State.SUPPRESSED, State.PERMANENT, State.BLOCKED})


@dataclass(frozen=True)
class SuppressionRules:
    """The numbers of SPEC §4; relay builds this from the [policy] settings."""

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


def refusal_reply(address: str, scope: Scope, tail: str) -> Reply:
    """SPEC §2: `550 5.1.1` for an address, `550 5.1.2` for a domain; `tail` from the record."""
    return Reply(550, "5.1.2" if scope is Scope.DOMAIN else "5.1.1", f"<{address}>: {tail}")


def effective(rec: SuppressionRecord, rules: SuppressionRules, now: datetime) -> SuppressionRecord:
    """The record as of `now`, an expired suppression shown re-admitted (nothing is written)."""
    return _base(rec, rec.key, rec.scope, rules, utc(now))


# ---- write side ------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON]


def _event(
    rec: SuppressionRecord, rules: SuppressionRules, when: datetime, kind: str, detail: str
) -> tuple[HistoryEvent, ...]:
    # Bounded: the newest `history_size` events; what fell off is summarised by the counts.
    hist = (*rec.history, HistoryEvent(when, kind, _one_line(detail)))
    return hist[-rules.history_size :]


def _base(
    rec: SuppressionRecord | None, key: str, scope: Scope, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """The record to build on: a fresh one, or the old one with any expiry materialised."""
    if rec is None:
        return SuppressionRecord(key=key, scope=scope, first_seen=now, last_seen=now)
    if effective_state(rec, now) is State.ACTIVE and rec.state is State.SUPPRESSED:
        until = rec.until or now
        return replace(
            rec,
            state=State.ACTIVE,
            since=None,
            until=None,
            reason="",
            cause=None,
            history=_event(rec, rules, until, "readmitted", "suppression expired"),
        )
    return rec


def _suppress(
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
        reason=_one_line(reason),
    )


def apply_hard(
    rec: SuppressionRecord | None,
    key: str,
    scope: Scope,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """A real HB: suppressed for `hard_suppress_days`, permanent at `permanent_after_hard`."""
    now = utc(now)
    r = _base(rec, key, scope, rules, now)
    line = reply.line()
    r = replace(
        r,
        last_seen=now,
        klass=verdict.klass,
        category=verdict.category,
        last_reply=reply,
        hard=r.hard + 1,
        strikes=r.strikes + 1,
        history=_event(r, rules, now, "hard", f"{verdict.category}: {line}"),
    )
    reason = f"{verdict.category}: {line}"
    if r.strikes >= rules.permanent_after_hard:
        return _suppress(r, now, None, verdict.category, reason)
    until = now + timedelta(days=rules.hard_suppress_days)
    return _suppress(r, now, until, verdict.category, reason)


def apply_synthesized(
    rec: SuppressionRecord, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """bouncer refused the address itself: counted like a HB (SPEC §4).

    Only a suppression caused by a hard category moves toward permanent: a
    soft-streak suppression has its own ladder (7 d, 30 d, 90 d), and the
    address was never known dead, so refusals during it are counted only.
    """
    now = utc(now)
    r = replace(
        rec,
        last_seen=now,
        synthesized=rec.synthesized + 1,
        history=_event(rec, rules, now, "synthesized", "refused by bouncer"),
    )
    if r.state is not State.SUPPRESSED or r.cause not in HARD_CATEGORIES:
        return r
    r = replace(r, strikes=r.strikes + 1)
    if r.strikes >= rules.permanent_after_hard:
        return replace(r, state=State.PERMANENT, until=None)
    return r


def apply_soft(
    rec: SuppressionRecord | None,
    key: str,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """A SB: extend or restart the streak; a long enough streak suppresses (SPEC §4)."""
    now = utc(now)
    r = _base(rec, key, Scope.ADDRESS, rules, now)
    s = r.streak
    if s is not None and s.category == verdict.category:
        streak = SoftStreak(s.category, s.first, now, s.attempts + 1)
    else:
        streak = SoftStreak(verdict.category, now, now, 1)  # a new category starts a new streak
    r = replace(
        r,
        last_seen=now,
        klass=verdict.klass,
        category=verdict.category,
        last_reply=reply,
        soft=r.soft + 1,
        streak=streak,
        history=_event(r, rules, now, "soft", f"{verdict.category}: {reply.line()}"),
    )
    span = streak.last - streak.first
    if span < timedelta(days=rules.soft_streak_days):
        return r
    if streak.attempts < rules.soft_streak_min_attempts:
        return r
    # The streak is long enough: the next rung of the ladder, and a new streak from scratch.
    ladder = rules.soft_suppress_days
    until = now + timedelta(days=ladder[r.soft_level]) if r.soft_level < len(ladder) else None
    reason = f"successive bounces, {verdict.category}: {reply.line()}"
    r = replace(r, streak=None, soft_level=r.soft_level + 1)
    return _suppress(r, now, until, verdict.category, reason)


def apply_other(
    rec: SuppressionRecord | None,
    key: str,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """A block or undetermined verdict: kept for history and counts, never suppresses."""
    now = utc(now)
    r = _base(rec, key, Scope.ADDRESS, rules, now)
    return replace(
        r,
        last_seen=now,
        klass=verdict.klass,
        category=verdict.category,
        last_reply=reply,
        other=r.other + 1,
        history=_event(r, rules, now, str(verdict.klass), f"{verdict.category}: {reply.line()}"),
    )


def apply_alive(
    rec: SuppressionRecord | None, kind: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord | None:
    """A success (2xx) or a recipient activity: the address is alive.

    Resets the soft streak and the HB strikes and lifts a temporary
    suppression; permanent and blocked stay (they need a forced lift). Returns
    None when there is nothing to change, so a busy address costs no write.
    """
    if rec is None:
        return None  # never create records for healthy addresses: the store stays small
    now = utc(now)
    r = _base(rec, rec.key, rec.scope, rules, now)
    lift = r.state is State.SUPPRESSED
    if r is rec and not lift and r.streak is None and r.strikes == 0:
        return None
    r = replace(r, last_seen=now, streak=None, strikes=0)
    if lift:
        r = replace(r, state=State.ACTIVE, since=None, until=None, reason="", cause=None)
    detail = "suppression lifted" if lift else "streak reset"
    return replace(r, history=_event(r, rules, now, kind, detail))


def apply_complaint(
    rec: SuppressionRecord | None, key: str, detail: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """An ARF complaint: blocked until lifted by hand (SPEC §4)."""
    now = utc(now)
    r = _base(rec, key, Scope.ADDRESS, rules, now)
    return replace(
        r,
        last_seen=now,
        state=State.BLOCKED,
        since=r.since if r.state is State.BLOCKED and r.since else now,
        until=None,
        cause=None,
        reason=_one_line(f"complaint: {detail}" if detail else "complaint"),
        history=_event(r, rules, now, "complaint", detail),
    )


def apply_add(
    rec: SuppressionRecord | None,
    key: str,
    scope: Scope,
    category: Category,
    until: datetime | None,
    why: str,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """An operator's (or an import's) suppression: until a date, or permanent without one."""
    now = utc(now)
    r = _base(rec, key, scope, rules, now)
    if r.state in LOCKED_STATES and until is not None:
        raise ForceRequired(f"{key} is {r.state}; lift it with --force --why before adding a date")
    if until is not None and utc(until) <= now:
        raise RuleError(f"--until {until.isoformat()} is not in the future")
    reason = f"{category}: {why or 'added by hand'}"
    detail = f"{category} until {until.isoformat()}" if until else f"{category} permanently"
    r = replace(
        r, last_seen=now, history=_event(r, rules, now, "add", detail + (f": {why}" if why else ""))
    )
    if r.state is State.SUPPRESSED:
        r = replace(r, until=None)  # a hand-set date replaces the old one, even an earlier one
    return _suppress(r, now, None if until is None else utc(until), category, reason)


def apply_remove(
    rec: SuppressionRecord, force: bool, why: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """Lift a suppression by hand; permanent and blocked need `force` and a reason (SPEC §4).

    The record is kept, state active, with the lift and its reason in the history.
    """
    now = utc(now)
    r = _base(rec, rec.key, rec.scope, rules, now)
    if r.state is State.ACTIVE:
        raise NotSuppressed(f"{rec.key} is not suppressed")
    if r.state in LOCKED_STATES and not (force and why.strip()):
        raise ForceRequired(f"{rec.key} is {r.state}: lifting it needs --force and --why REASON")
    detail = f"{r.state} lifted" + (" (forced)" if force else "") + (f": {why}" if why else "")
    return replace(
        r,
        last_seen=now,
        state=State.ACTIVE,
        since=None,
        until=None,
        reason="",
        cause=None,
        strikes=0,
        streak=None,
        soft_level=0,
        history=_event(r, rules, now, "remove", detail),
    )


def apply_verdict(
    rec: SuppressionRecord | None,
    key: str,
    scope: Scope,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord | None:
    """Dispatch a classifier verdict to its rule (SPEC §3's effect column)."""
    if verdict.klass is BounceClass.HARD and reply.code // 100 != 4:
        return apply_hard(rec, key, scope, verdict, reply, rules, now)
    if verdict.klass is BounceClass.SOFT or verdict.klass is BounceClass.HARD:
        return apply_soft(rec, key, verdict, reply, rules, now)  # SPEC §3: 4xx is never hard
    if verdict.klass is BounceClass.DELIVERED:
        return apply_alive(rec, "success", rules, now)
    return apply_other(rec, key, verdict, reply, rules, now)
