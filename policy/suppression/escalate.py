# The rules of docs/behaviour.md#suppression-policy as pure functions: old record + event
# + now -> new record. No I/O.
"""Escalation: how each delivery event changes a suppression record.

Every function takes the current record (or None when the store has none),
the event, the rules and `now`, and returns the new record to write, or None
when nothing needs writing. The shared numbers, the look-up side and the
record primitives live in `policy.suppression.lookup`, the operators' changes in
`policy.suppression.manual`; both are re-exported here, so `policy.suppression.escalate`
stays the one name callers use.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from policy.reply import Reply
from policy.suppression.lookup import (
    HARD_CATEGORIES,
    LOCKED_STATES,
    REFUSING_STATES,
    ForceRequired,
    NotSuppressed,
    RuleError,
    SuppressionRules,
    add_event,
    base,
    effective,
    effective_state,
    one_line,
    readmitted,
    refusal_reply,
    refusal_text,
    refuses,
    suppress,
    utc,
)
from policy.suppression.manual import apply_add, apply_remove
from policy.suppression.records import Scope, SoftStreak, State, SuppressionRecord
from policy.verdict import BounceClass, Category, Verdict

__all__ = [
    "HARD_CATEGORIES",
    "LOCKED_STATES",
    "REFUSING_STATES",
    "ForceRequired",
    "NotSuppressed",
    "RuleError",
    "SuppressionRules",
    "apply_add",
    "apply_alive",
    "apply_complaint",
    "apply_hard",
    "apply_other",
    "apply_remove",
    "apply_soft",
    "apply_synthesized",
    "apply_verdict",
    "effective",
    "effective_state",
    "refusal_reply",
    "refusal_text",
    "refuses",
    "utc",
]


def _observe(
    rec: SuppressionRecord | None,
    key: str,
    scope: Scope,
    verdict: Verdict,
    reply: Reply,
    kind: str,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """The record with a remote verdict noted: last seen, class, reply and a history line."""
    r = base(rec, key, scope, rules, now)
    return replace(
        r,
        last_seen=now,
        klass=verdict.klass,
        category=verdict.category,
        last_reply=reply,
        history=add_event(r, rules, now, kind, f"{verdict.category}: {reply.line()}"),
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
    r = _observe(rec, key, scope, verdict, reply, "hard", rules, now)
    r = replace(r, hard=r.hard + 1, strikes=r.strikes + 1)
    reason = f"{verdict.category}: {reply.line()}"
    if r.strikes >= rules.permanent_after_hard:
        return suppress(r, now, None, verdict.category, reason)
    until = now + timedelta(days=rules.hard_suppress_days)
    return suppress(r, now, until, verdict.category, reason)


def apply_synthesized(
    rec: SuppressionRecord, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """bouncer refused the address itself: counted like a HB (docs/behaviour.md#suppression-policy).

    Only a suppression caused by a hard category moves toward permanent: a
    soft-streak suppression has its own ladder (7 d, 30 d, 90 d), and the
    address was never known dead, so refusals during it are counted only.
    """
    now = utc(now)
    r = replace(
        rec,
        last_seen=now,
        synthesized=rec.synthesized + 1,
        history=add_event(rec, rules, now, "synthesized", "refused by bouncer"),
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
    """A SB: extend or restart the streak; a long enough streak suppresses."""
    now = utc(now)
    r = _observe(rec, key, Scope.ADDRESS, verdict, reply, "soft", rules, now)
    s = r.streak
    # An expiry (docs/behaviour.md#retry-queue) closes the run of failures it ends, so it extends
    # that streak instead of starting a message-expired one that could never reach three weeks.
    continues = verdict.category is Category.MESSAGE_EXPIRED
    if s is not None and (s.category == verdict.category or continues):
        streak = SoftStreak(s.category, s.first, now, s.attempts + 1)
    else:
        streak = SoftStreak(verdict.category, now, now, 1)  # a new category starts a new streak
    r = replace(r, soft=r.soft + 1, streak=streak)
    span = streak.last - streak.first
    if span < timedelta(days=rules.soft_streak_days):
        return r
    if streak.attempts < rules.soft_streak_min_attempts:
        return r
    # The streak is long enough: the next rung of the ladder, and a new streak from scratch.
    ladder = rules.soft_suppress_days
    until = now + timedelta(days=ladder[r.soft_level]) if r.soft_level < len(ladder) else None
    reason = f"successive bounces, {streak.category}: {reply.line()}"
    r = replace(r, streak=None, soft_level=r.soft_level + 1)
    return suppress(r, now, until, streak.category, reason)


def apply_other(
    rec: SuppressionRecord | None,
    key: str,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """A block or undetermined verdict: kept for history and counts, never suppresses."""
    r = _observe(rec, key, Scope.ADDRESS, verdict, reply, str(verdict.klass), rules, utc(now))
    return replace(r, other=r.other + 1)


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
    r = base(rec, rec.key, rec.scope, rules, now)
    lift = r.state is State.SUPPRESSED
    if r is rec and not lift and r.streak is None and r.strikes == 0:
        return None
    r = replace(readmitted(r) if lift else r, last_seen=now, streak=None, strikes=0)
    detail = "suppression lifted" if lift else "streak reset"
    return replace(r, history=add_event(r, rules, now, kind, detail))


def apply_complaint(
    rec: SuppressionRecord | None, key: str, detail: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    """An ARF complaint: blocked until lifted by hand (docs/behaviour.md#suppression-policy)."""
    now = utc(now)
    r = base(rec, key, Scope.ADDRESS, rules, now)
    return replace(
        r,
        last_seen=now,
        state=State.BLOCKED,
        since=r.since if r.state is State.BLOCKED and r.since else now,
        until=None,
        cause=None,
        reason=one_line(f"complaint: {detail}" if detail else "complaint"),
        history=add_event(r, rules, now, "complaint", detail),
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
    """Dispatch a classifier verdict to its rule (docs/behaviour.md#verdicts effect column)."""
    if verdict.klass is BounceClass.HARD and reply.code // 100 != 4:
        return apply_hard(rec, key, scope, verdict, reply, rules, now)
    if verdict.category is Category.MESSAGE_TOO_LARGE:
        # docs/behaviour.md#verdicts: the message was too large, not the address;
        # no SB streak, never suppresses.
        return apply_other(rec, key, verdict, reply, rules, now)
    if verdict.klass is BounceClass.SOFT or verdict.klass is BounceClass.HARD:
        return apply_soft(rec, key, verdict, reply, rules, now)  # 4xx is never hard
    if verdict.klass is BounceClass.DELIVERED:
        return apply_alive(rec, "success", rules, now)
    return apply_other(rec, key, verdict, reply, rules, now)
