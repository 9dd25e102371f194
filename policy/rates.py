# This module decides what each outcome adds to the bounce-rate counters; it performs no I/O.
"""Bounce-rate arithmetic (docs/behaviour.md#what-operators-see).

Counters, what one outcome adds, aggregation, rates.

Counting rule (one recipient of one message counts once in `sent`):

- a live outcome (attempt 0) that went to a remote, or tried to, adds 1 to
  `sent`, and 1 to `hard`, `soft` or `block` by its verdict's class
  (`delivered` too when it was delivered);
- a retry from the queue (attempt > 0) adds only its final result: `delivered`
  for a late success, `hard`/`block` for a late refusal; its soft failures
  were counted once already, at attempt 0;
- a suppressed recipient (refused by bouncer before any network traffic)
  adds 1 to `suppressed` only: nothing was sent;
- a report that arrives later (an asynchronous DSN or an ARF complaint read
  by the intake) adds only `hard` or `block`: the recipient was counted in
  `sent` when the message went out.
- an undetermined refusal (a 5xx that says nothing clear) counts in
  `undetermined`, live or as a retry's final result, so a domain refusing
  everything that way never shows as failing nothing;
- a recipient whose retry schedule ran out adds 1 to `expired` (its soft
  failure was counted at attempt 0);
- a notice bouncer wrote itself (a DSN to a sender) was never sent by a
  client: it adds `dsn` when delivered and `dsn_failed` when it finally
  failed, never `sent` or `delivered`.

hard rate = hard / sent, soft rate = soft / sent, refused rate =
(hard + block + undetermined) / sent (None when nothing was sent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from policy.decide import Disposition
from policy.verdict import BounceClass

COUNTER_NAMES = (
    "sent",
    "delivered",
    "hard",
    "soft",
    "block",
    "undetermined",
    "expired",
    "suppressed",
    "dsn",
    "dsn_failed",
)
GroupBy = Literal["day", "domain", "day,domain", "total"]
GROUPINGS: tuple[GroupBy, ...] = ("day", "domain", "day,domain", "total")
Phase = Literal["live", "retry", "report"]

# An event's status arrives as its Disposition's word (policy/decide.py).
_SUPPRESSED = str(Disposition.SUPPRESSED)
_SENT = str(Disposition.DELIVERED)
_EXPIRED = str(Disposition.EXPIRED)
_FINAL_FAILURES = frozenset({str(Disposition.BOUNCED), _EXPIRED})
_SOFT_STATUSES = frozenset({str(Disposition.QUEUED), str(Disposition.DEFERRED), _EXPIRED})
_CLASS_COUNTER = {
    BounceClass.HARD: "hard",
    BounceClass.SOFT: "soft",
    BounceClass.BLOCK: "block",
    BounceClass.UNDETERMINED: "undetermined",
}
_REFUSALS = ("hard", "block", "undetermined")


@dataclass(frozen=True, slots=True)
class Counts:
    sent: int = 0
    delivered: int = 0
    hard: int = 0
    soft: int = 0
    block: int = 0
    undetermined: int = 0
    expired: int = 0
    suppressed: int = 0
    dsn: int = 0  # bouncer's own notices delivered
    dsn_failed: int = 0  # ... and those that finally failed

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, n) + getattr(other, n) for n in COUNTER_NAMES))

    @property
    def hard_rate(self) -> float | None:
        return self.hard / self.sent if self.sent else None

    @property
    def soft_rate(self) -> float | None:
        return self.soft / self.sent if self.sent else None

    @property
    def refused_rate(self) -> float | None:
        refused = self.hard + self.block + self.undetermined
        return refused / self.sent if self.sent else None

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, table: dict[str, int]) -> Counts:
        return cls(**{n: int(table.get(n, 0)) for n in COUNTER_NAMES})


def increment(
    status: str, klass: BounceClass | None, phase: Phase = "live", notice: bool = False
) -> Counts:
    """What one recipient outcome adds to its day's and domain's counters (module docstring).

    `phase`: "live" (in-transaction, attempt 0), "retry" (from the queue) or
    "report" (an asynchronous DSN or complaint). `notice`: the message is a DSN
    bouncer wrote itself.
    """
    if notice:
        if status == _SENT:
            return Counts(dsn=1)
        return Counts(dsn_failed=1) if status in _FINAL_FAILURES else Counts()
    if status == _SUPPRESSED and phase != "report":
        return Counts(suppressed=1)
    if klass is None:  # no verdict attached: the status word still says delivered or soft
        klass = (
            BounceClass.DELIVERED
            if status == _SENT
            else BounceClass.SOFT
            if status in _SOFT_STATUSES
            else BounceClass.UNDETERMINED
        )
    delivered = 1 if klass is BounceClass.DELIVERED else 0
    counter = _CLASS_COUNTER.get(klass)
    # A late undetermined reply counts only as a retry's final refusal (a report naming
    # no clear cause adds nothing, as before).
    final = counter != "undetermined" or (phase == "retry" and status in _FINAL_FAILURES)
    late_refusal = {counter: 1} if counter in _REFUSALS and final else {}
    if phase == "report":
        return Counts(**late_refusal)
    if phase == "retry":
        if status == _EXPIRED:
            return Counts(expired=1)
        return Counts(delivered=delivered, **late_refusal)
    bump = {counter: 1} if counter else {}
    return Counts(sent=1, delivered=delivered, **bump)


def domain_of(address: str) -> str:
    """The recipient's domain as counted: lower-case, "" for an address without one."""
    return address.rpartition("@")[2].lower() if "@" in address else ""


def day_of(when: datetime) -> date:
    """The counting day: the UTC date, so every host agrees on day boundaries."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.date()


MAX_SINCE_DAYS = 36_600  # a century of counts is more than anyone keeps; also date's range
_PERIOD = re.compile(r"([0-9]{1,9})([dw])")
_NAMED = {"today": 0, "yesterday": 1}


def parse_since(text: str, now: datetime) -> date:
    """ "7d" -> the first day counted, `now`'s UTC day included; "yesterday", "today",
    "2026-11-01" as said.

    Raises ValueError with a message for a person (a period out of range included).
    """
    text = text.strip()
    if text.lower() in _NAMED:
        return day_of(now) - timedelta(days=_NAMED[text.lower()])
    m = _PERIOD.fullmatch(text)
    if m:
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        if days < 1:
            raise ValueError("--since needs at least 1d")
        if days > MAX_SINCE_DAYS:
            raise ValueError(f"--since goes back at most {MAX_SINCE_DAYS}d, got {text!r}")
        return day_of(now) - timedelta(days=days - 1)
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"not a period: {text!r} (use e.g. 7d, 4w, yesterday or 2026-11-01)"
        ) from exc


def parse_period(since: str, until: str | None, now: datetime) -> tuple[date, date]:
    """The first and last UTC day counted, both included; `until` defaults to today.

    `until` reads like `since` ("yesterday", "2026-11-30"; "3d" is the last day of the
    3 days up to today). A `since` after today or after `until` is a ValueError that
    says so, rather than a table of zeros.
    """
    first = parse_since(since, now)
    last = day_of(now) if until is None else parse_since(until, now)
    if first > day_of(now):
        raise ValueError(f"--since {first.isoformat()} is in the future (today is {day_of(now)})")
    if first > last:
        raise ValueError(f"--since {first.isoformat()} is after --until {last.isoformat()}")
    if (last - first).days >= MAX_SINCE_DAYS:
        raise ValueError(f"a period of at most {MAX_SINCE_DAYS} days, please")
    return first, last


def group_key(day: date, domain: str, by: GroupBy) -> str:
    """The row key: "2026-11-01", "example.com", "2026-11-01 example.com" or "total"."""
    if by == "day":
        return day.isoformat()
    if by == "domain":
        return domain
    return f"{day.isoformat()} {domain}" if by == "day,domain" else "total"


def key_fields(key: str, by: GroupBy) -> dict[str, str]:
    """A row key split into its named parts, for CSV and JSON columns."""
    if by == "day,domain":
        day, _, domain = key.partition(" ")
        return {"day": day, "domain": domain}
    return {by: key} if by != "total" else {}


def aggregate(
    rows: Iterable[tuple[date, str, Counts]],
    by: GroupBy,
    since: date,
    until: date | None = None,
    domain: str | None = None,
) -> list[tuple[str, Counts]]:
    """Sum (day, domain, counts) rows from `since` to `until` (both included), grouped by
    day, domain, day and domain, or in total; `domain` keeps that domain's rows only.

    With `until`, a day without traffic still gets a row of zeros when grouping by day
    (and by day and domain: one row for the day, under `domain` or ""), so a chart or a
    spreadsheet shows the quiet day instead of skipping it. Days come oldest first;
    domains by descending `sent`, then name.
    """
    groups: dict[str, Counts] = {}
    for day, dom, counts in rows:
        if day < since or (until is not None and day > until):
            continue
        if domain is not None and dom != domain:
            continue
        key = group_key(day, dom, by)
        groups[key] = groups.get(key, Counts()) + counts
    if until is not None and by in ("day", "day,domain"):
        seen = {k.partition(" ")[0] for k in groups}
        for n in range((until - since).days + 1):
            day = since + timedelta(days=n)
            if day.isoformat() not in seen:
                groups[group_key(day, domain or "", by)] = Counts()
    if by == "domain":
        return sorted(groups.items(), key=lambda kv: (-kv[1].sent, kv[0]))
    if by == "day,domain":
        return sorted(groups.items(), key=lambda kv: (kv[0].partition(" ")[0], -kv[1].sent, kv[0]))
    return sorted(groups.items())
