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

hard rate = hard / sent, soft rate = soft / sent (None when nothing was sent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from policy.verdict import BounceClass

COUNTER_NAMES = ("sent", "delivered", "hard", "soft", "block", "suppressed")
GroupBy = Literal["day", "domain", "total"]
Phase = Literal["live", "retry", "report"]

# Statuses (relay.events.Status values) are plain strings here: policy/ imports nothing from relay/.
_SUPPRESSED = "suppressed"
_SENT = "sent"
_SOFT_STATUSES = frozenset({"queued", "deferred", "expired"})
_CLASS_COUNTER = {BounceClass.HARD: "hard", BounceClass.SOFT: "soft", BounceClass.BLOCK: "block"}


@dataclass(frozen=True, slots=True)
class Counts:
    sent: int = 0
    delivered: int = 0
    hard: int = 0
    soft: int = 0
    block: int = 0
    suppressed: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, n) + getattr(other, n) for n in COUNTER_NAMES))

    @property
    def hard_rate(self) -> float | None:
        return self.hard / self.sent if self.sent else None

    @property
    def soft_rate(self) -> float | None:
        return self.soft / self.sent if self.sent else None

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, table: dict[str, int]) -> Counts:
        return cls(**{n: int(table.get(n, 0)) for n in COUNTER_NAMES})


def increment(status: str, klass: BounceClass | None, phase: Phase = "live") -> Counts:
    """What one recipient outcome adds to its day's and domain's counters (module docstring).

    `phase`: "live" (in-transaction, attempt 0), "retry" (from the queue) or
    "report" (an asynchronous DSN or complaint).
    """
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
    late_refusal = {counter: 1} if counter in ("hard", "block") else {}
    if phase == "report":
        return Counts(**late_refusal)
    if phase == "retry":
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


def parse_since(text: str, now: datetime) -> date:
    """ "7d" -> the first day counted, `now`'s UTC day included; "2026-11-01" as is.

    Raises ValueError with a message for a person (a period out of range included).
    """
    text = text.strip()
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
        raise ValueError(f"not a period: {text!r} (use e.g. 7d, 4w or 2026-11-01)") from exc


def aggregate(
    rows: Iterable[tuple[date, str, Counts]], by: GroupBy, since: date
) -> list[tuple[str, Counts]]:
    """Sum (day, domain, counts) rows from `since` on, grouped by day, domain or in total.

    Days come oldest first; domains by descending `sent`, then name.
    """
    groups: dict[str, Counts] = {}
    for day, domain, counts in rows:
        if day < since:
            continue
        key = day.isoformat() if by == "day" else domain if by == "domain" else "total"
        groups[key] = groups.get(key, Counts()) + counts
    if by == "domain":
        return sorted(groups.items(), key=lambda kv: (-kv[1].sent, kv[0]))
    return sorted(groups.items())
