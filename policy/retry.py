# This module decides when a soft-failed recipient is tried next; it performs no I/O
# and reads no clock: `now` is always a parameter (STYLE.md points 1 and 2).
"""The retry schedule of docs/behaviour.md#retry-queue: offsets from the first failure, then expiry.

The schedule is a tuple of offsets measured from the recipient's *first*
failure (default 5m, 30m, 2h, 8h, 1d, 3d, 7d, 14d, 21d). The next attempt is
the first slot that lies after `now`; when no slot is left the recipient
expires. Deciding by time rather than by counting attempts means an extra,
operator-requested attempt (`bouncer queue retry`) never shifts the schedule,
and a server that was down for days does not fire its missed slots in a burst:
it makes one attempt on restart and then waits for the next slot in the future.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

DEFAULT_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=8),
    timedelta(days=1),
    timedelta(days=3),
    timedelta(days=7),
    timedelta(days=14),
    timedelta(days=21),
)


def schedule_from_seconds(seconds: Sequence[float]) -> tuple[timedelta, ...]:
    """Config's parsed durations (seconds) -> the offsets `next_attempt` takes, sorted."""
    return tuple(sorted(timedelta(seconds=s) for s in seconds))


def next_attempt(
    first_failure: datetime | None,
    attempts: int,
    now: datetime,
    schedule: Sequence[timedelta] = DEFAULT_SCHEDULE,
) -> datetime | None:
    """When to try a recipient next, or None when it has expired.

    `attempts` counts the failed attempts so far. With no attempt yet (a DSN
    waiting for its first try, or an entry queued before any try) the answer is
    `now`: due at once. Otherwise the answer is the first
    `first_failure + offset` strictly after `now`; None once every offset has
    passed, i.e. the attempt that just failed was the last one allowed.
    """
    if attempts <= 0 or first_failure is None:
        return now
    for offset in sorted(schedule):
        slot = first_failure + offset
        if slot > now:
            return slot
    return None


def expires_at(
    first_failure: datetime, schedule: Sequence[timedelta] = DEFAULT_SCHEDULE
) -> datetime:
    """The last slot: a recipient still failing after it is given up (for `queue show`)."""
    return first_failure + (max(schedule) if schedule else timedelta(0))
