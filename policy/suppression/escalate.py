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
    permanent_due,
    readmitted,
    refusal_reply,
    refusal_text,
    refuses,
    strike,
    suppress,
    utc,
)
from policy.suppression.manual import apply_add, apply_remove
from policy.suppression.records import Basis, Scope, SoftStreak, State, SuppressionRecord, basis_of
from policy.verdict import BounceClass, Category, Verdict

__all__ = [
    "HARD_CATEGORIES",
    "LOCKED_STATES",
    "REFUSING_STATES",
    "ACTIVITY_LIFTS",
    "ForceRequired",
    "NotSuppressed",
    "RuleError",
    "SuppressionRules",
    "apply_add",
    "apply_alive",
    "activity_note",
    "apply_complaint",
    "apply_domain",
    "apply_hard",
    "apply_other",
    "apply_remove",
    "apply_soft",
    "apply_storm_confirm",
    "apply_storm_mark",
    "apply_storm_release",
    "apply_synthesized",
    "basis_of",
    "is_null_mx",
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


def is_null_mx(reply: Reply) -> bool:
    """The domain said it takes no mail (RFC 7505): bouncer's routing answers `556 5.1.10`."""
    return reply.enhanced == "5.1.10" or reply.code == 556


def apply_hard(
    rec: SuppressionRecord | None,
    key: str,
    scope: Scope,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
    storm: bool = False,
) -> SuppressionRecord:
    """A real HB: suppressed for `hard_suppress_days`; permanent at `permanent_after_hard`
    strikes in as many distinct windows. During a storm of its remote: 24 h, no strike."""
    now = utc(now)
    if scope is Scope.DOMAIN:
        return apply_domain(rec, key, verdict, reply, rules, now)
    r = _observe(rec, key, scope, verdict, reply, "storm" if storm else "hard", rules, now)
    r = replace(r, hard=r.hard + 1)
    reason = f"{verdict.category}: {reply.line()}"
    if storm:
        if r.state is not State.ACTIVE and basis_of(r) is not Basis.STORM:
            return r  # suppressed on firmer grounds already
        until = now + timedelta(hours=rules.storm_suppress_hours)
        return suppress(r, now, until, verdict.category, reason, Basis.STORM)
    r = strike(r, rules, now)
    if permanent_due(r, rules):
        return suppress(r, now, None, verdict.category, reason, Basis.HARD)
    if basis_of(r) is Basis.STORM:
        r = replace(r, until=None)  # the storm's 24 h gives way to the full term
    until = now + timedelta(days=rules.hard_suppress_days)
    return suppress(r, now, until, verdict.category, reason, Basis.HARD)


def apply_domain(
    rec: SuppressionRecord | None,
    key: str,
    verdict: Verdict,
    reply: Reply,
    rules: SuppressionRules,
    now: datetime,
) -> SuppressionRecord:
    """A bad-domain verdict on the domain's record (docs/behaviour.md#suppression-policy).

    NXDOMAIN or a remote's x.1.2: `domain_first_days` at first (a lapsed
    registration or a DNS outage looks the same); a verdict a window or more
    later confirms it (`domain_confirmed_days`); permanent after
    `permanent_after_hard` confirmations in distinct windows. A null MX is the
    domain's own statement: `domain_confirmed_days` at once.
    """
    now = utc(now)
    r = _observe(rec, key, Scope.DOMAIN, verdict, reply, "hard", rules, now)
    r = replace(r, hard=r.hard + 1)
    r = strike(r, rules, now)
    opened = r.windows[-1] == now  # this verdict began a new window
    reason = f"{verdict.category}: {reply.line()}"
    if permanent_due(r, rules, confirmations=1):
        return suppress(r, now, None, verdict.category, reason, basis_of(r) or Basis.DOMAIN)
    if is_null_mx(reply):
        until = now + timedelta(days=rules.domain_confirmed_days)
        return suppress(r, now, until, verdict.category, reason, Basis.NULL_MX)
    if opened and len(r.windows) == 1:
        until = now + timedelta(days=rules.domain_first_days)
        return suppress(r, now, until, verdict.category, reason, Basis.DOMAIN)
    if opened:  # a window or more after the last: this verdict confirms it
        until = now + timedelta(days=rules.domain_confirmed_days)
        r = replace(r, history=add_event(r, rules, now, "confirmed", "bad domain confirmed"))
        return suppress(r, now, until, verdict.category, reason, basis_of(r) or Basis.DOMAIN)
    return r  # the same window again: counted, no longer


def apply_synthesized(
    rec: SuppressionRecord, rules: SuppressionRules, now: datetime
) -> SuppressionRecord | None:
    """bouncer refused the address itself (docs/behaviour.md#suppression-policy).

    Counted at most once per `synthesized_window`, however many messages or
    recipient lines hit it (None: nothing to write). Only an address's hard
    suppression moves toward permanent: a soft streak has its own ladder, a
    storm is doubtful, and a domain needs real verdicts to be confirmed.
    """
    now = utc(now)
    last = rec.last_synthesized
    if last is not None and (now - last).total_seconds() < rules.synthesized_window:
        return None
    r = replace(
        rec,
        last_seen=now,
        last_synthesized=now,
        synthesized=rec.synthesized + 1,
        history=add_event(rec, rules, now, "synthesized", "refused by bouncer"),
    )
    if r.scope is Scope.DOMAIN or r.state is not State.SUPPRESSED:
        return r
    if basis_of(r) is not Basis.HARD or r.cause not in HARD_CATEGORIES:
        return r
    r = strike(r, rules, now)
    if permanent_due(r, rules):
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
    ladder = rules.soft_suppress_days
    if (
        r.state is State.ACTIVE
        and r.reentry_until is not None
        and now < r.reentry_until
        and r.reentry_category == verdict.category
    ):
        # Re-entry: re-admitted from a streak suppression not long ago, and the same
        # trouble again: the next rung at once, without a new three-week streak.
        until = now + timedelta(days=ladder[r.soft_level]) if r.soft_level < len(ladder) else None
        reason = f"successive bounces, {verdict.category}: {reply.line()}"
        r = replace(
            r,
            soft=r.soft + 1,
            streak=None,
            soft_level=r.soft_level + 1,
            reentry_until=None,
            reentry_category=None,
        )
        return suppress(r, now, until, verdict.category, reason, Basis.STREAK)
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
    until = now + timedelta(days=ladder[r.soft_level]) if r.soft_level < len(ladder) else None
    reason = f"successive bounces, {streak.category}: {reply.line()}"
    r = replace(r, streak=None, soft_level=r.soft_level + 1)
    return suppress(r, now, until, streak.category, reason, Basis.STREAK)


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


# What a recorded activity may lift: the suppressions that never said the address is dead.
ACTIVITY_LIFTS = frozenset({Basis.STREAK, Basis.STORM})


def apply_alive(
    rec: SuppressionRecord | None, kind: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord | None:
    """A success (2xx) or a recipient activity: the address is alive.

    A success resets the soft streak and the HB strikes and lifts any
    temporary suppression. An activity (open, click, reply: an image
    pre-fetcher or a link scanner can fake one) resets the soft streak and
    lifts only a streak (or unconfirmed storm) suppression; never a hard,
    domain, complaint or manual one. Permanent and blocked stay either way.
    Returns None when there is nothing to change, so a busy address costs no
    write.
    """
    if rec is None:
        return None  # never create records for healthy addresses: the store stays small
    now = utc(now)
    r = base(rec, rec.key, rec.scope, rules, now)
    success = kind != "activity"
    lift = r.state is State.SUPPRESSED and (success or basis_of(r) in ACTIVITY_LIFTS)
    strikes = 0 if success else r.strikes
    if r is rec and not lift and r.streak is None and r.strikes == strikes:
        if r.reentry_until is None or not success:
            return None
    r = replace(
        readmitted(r) if lift else r,
        last_seen=now,
        streak=None,
        strikes=strikes,
        windows=() if success else r.windows,
        reentry_until=None if success else r.reentry_until,
        reentry_category=None if success else r.reentry_category,
    )
    if lift:
        detail = "suppression lifted"
    elif r.state is not State.ACTIVE:
        detail = f"streak reset; stays {r.state} ({basis_of(r) or 'by hand'})"
    else:
        detail = "streak reset"
    return replace(r, history=add_event(r, rules, now, kind, detail))


def activity_note(rec: SuppressionRecord, now: datetime) -> str:
    """Why a record still refuses after an activity, for the CLI and the API ("" if it does
    not refuse)."""
    state = effective_state(rec, now)
    if state is State.ACTIVE:
        return ""
    basis = basis_of(rec)
    return (
        f"{rec.key} stays {state}: an activity lifts only a soft-streak suppression, "
        f"not a {basis.value or 'manual'} one; lift it with `bouncer suppression remove`"
        + (" --force --why REASON" if state in LOCKED_STATES else "")
    )


def apply_storm_mark(
    rec: SuppressionRecord, rules: SuppressionRules, now: datetime, window_start: datetime
) -> SuppressionRecord | None:
    """A storm has just been detected: a hard suppression its remote caused within the
    window becomes a storm one (24 h, its strike taken back). None: nothing to change."""
    now = utc(now)
    r = base(rec, rec.key, rec.scope, rules, now)
    if r.state is not State.SUPPRESSED or basis_of(r) is not Basis.HARD or r.since is None:
        return None
    if r.since < utc(window_start):
        return None  # suppressed before the storm began
    windows = r.windows[:-1] if r.windows and r.windows[-1] >= r.since else r.windows
    until = r.since + timedelta(hours=rules.storm_suppress_hours)
    return replace(
        r,
        basis=Basis.STORM,
        until=until,
        strikes=max(0, r.strikes - 1),
        windows=windows,
        history=add_event(
            r, rules, now, "storm", "marked storm: its remote answered hard for many"
        ),
    )


def apply_storm_confirm(
    rec: SuppressionRecord, why: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord | None:
    """The operator confirms a storm record: the normal hard rules apply from its start."""
    now = utc(now)
    r = base(rec, rec.key, rec.scope, rules, now)
    if r.state is not State.SUPPRESSED or basis_of(r) is not Basis.STORM or r.since is None:
        return None
    since = r.since
    r = strike(replace(r, until=None), rules, since)
    detail = "storm confirmed" + (f": {why}" if why else "")
    r = replace(r, history=add_event(r, rules, now, "storm-confirm", detail))
    until = None if permanent_due(r, rules) else since + timedelta(days=rules.hard_suppress_days)
    assert r.cause is not None
    return suppress(r, now, until, r.cause, r.reason, Basis.HARD)


def apply_storm_release(
    rec: SuppressionRecord, why: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord | None:
    """The operator releases a storm record: re-admitted, as if the storm never happened."""
    now = utc(now)
    r = base(rec, rec.key, rec.scope, rules, now)
    if r.state is not State.SUPPRESSED or basis_of(r) is not Basis.STORM:
        return None
    detail = "storm released" + (f": {why}" if why else "")
    return replace(
        readmitted(r), last_seen=now, history=add_event(r, rules, now, "storm-release", detail)
    )


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
        basis=Basis.COMPLAINT,
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
    storm: bool = False,
) -> SuppressionRecord | None:
    """Dispatch a classifier verdict to its rule (docs/behaviour.md#verdicts effect column)."""
    if verdict.klass is BounceClass.HARD and reply.code // 100 != 4:
        return apply_hard(rec, key, scope, verdict, reply, rules, now, storm)
    if verdict.category is Category.MESSAGE_TOO_LARGE:
        # docs/behaviour.md#verdicts: the message was too large, not the address;
        # no SB streak, never suppresses.
        return apply_other(rec, key, verdict, reply, rules, now)
    if verdict.klass is BounceClass.SOFT or verdict.klass is BounceClass.HARD:
        return apply_soft(rec, key, verdict, reply, rules, now)  # 4xx is never hard
    if verdict.klass is BounceClass.DELIVERED:
        return apply_alive(rec, "success", rules, now)
    return apply_other(rec, key, verdict, reply, rules, now)
