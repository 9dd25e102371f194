# The operators' hand-made changes (docs/behaviour.md#suppression-policy: add, lift) as pure
# functions: old record + request + now -> new record, or a RuleError saying what to do instead.
"""Manual operations on suppression records: `suppress add` / `suppress rm` and imports."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from policy.suppression.lookup import (
    LOCKED_STATES,
    ForceRequired,
    NotSuppressed,
    RuleError,
    SuppressionRules,
    add_event,
    base,
    readmitted,
    suppress,
    utc,
)
from policy.suppression.records import Basis, Scope, State, SuppressionRecord
from policy.verdict import Category


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
    r = base(rec, key, scope, rules, now)
    if r.state in LOCKED_STATES and until is not None:
        raise ForceRequired(f"{key} is {r.state}; lift it with --force --why before adding a date")
    if until is not None and utc(until) <= now:
        raise RuleError(f"--until {until.isoformat()} is not in the future")
    reason = f"{category}: {why or 'added by hand'}"
    detail = f"{category} until {until.isoformat()}" if until else f"{category} permanently"
    r = replace(
        r,
        last_seen=now,
        history=add_event(r, rules, now, "add", detail + (f": {why}" if why else "")),
    )
    if r.state is State.SUPPRESSED:
        r = replace(r, until=None)  # a hand-set date replaces the old one, even an earlier one
    return suppress(r, now, None if until is None else utc(until), category, reason, Basis.MANUAL)


def apply_remove(
    rec: SuppressionRecord,
    force: bool,
    why: str,
    rules: SuppressionRules,
    now: datetime,
    kind: str = "remove",
) -> SuppressionRecord:
    """Lift a suppression by hand; permanent and blocked need `force` and a reason.

    The record is kept, state active, with the lift and its reason in the history.
    """
    now = utc(now)
    r = base(rec, rec.key, rec.scope, rules, now)
    if r.state is State.ACTIVE:
        raise NotSuppressed(f"{rec.key} is not suppressed")
    if r.state in LOCKED_STATES and not (force and why.strip()):
        raise ForceRequired(f"{rec.key} is {r.state}: lifting it needs --force and --why REASON")
    forced = " (forced)" if force and kind == "remove" else ""
    detail = f"{r.state} lifted" + forced + (f": {why}" if why else "")
    return replace(
        readmitted(r),
        last_seen=now,
        strikes=0,
        windows=(),
        streak=None,
        soft_level=0,
        reentry_until=None,
        reentry_category=None,
        history=add_event(r, rules, now, kind, detail),
    )
