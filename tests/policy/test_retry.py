"""The retry schedule: each slot, expiry, no burst after downtime, time as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.retry import DEFAULT_SCHEDULE, expires_at, next_attempt, schedule_from_seconds
from relay.config.load import Config, ConfigError, config_from_dict

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_default_schedule_matches_the_spec_and_the_config_default() -> None:
    assert schedule_from_seconds(Config().queue_schedule_seconds) == DEFAULT_SCHEDULE
    assert [s.total_seconds() for s in DEFAULT_SCHEDULE] == [
        300,
        1800,
        7200,
        28800,
        86400,
        3 * 86400,
        7 * 86400,
        14 * 86400,
        21 * 86400,
    ]


def test_walks_every_slot_then_expires() -> None:
    """Attempt on time at each slot, fail each: the next slots come in order, then None."""
    now = T0
    seen = []
    attempts = 1
    while True:
        nxt = next_attempt(T0, attempts, now, DEFAULT_SCHEDULE)
        if nxt is None:
            break
        seen.append(nxt - T0)
        now = nxt + timedelta(seconds=2)  # the attempt takes a moment and fails
        attempts += 1
    assert tuple(seen) == DEFAULT_SCHEDULE
    assert attempts == len(DEFAULT_SCHEDULE) + 1  # the live attempt plus one per slot


def test_no_attempt_yet_is_due_now() -> None:
    assert next_attempt(None, 0, T0) == T0
    assert next_attempt(T0, 0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


def test_manual_retry_does_not_shift_the_schedule() -> None:
    # 10 days in, after the 7d slot: an operator retry fails; the 14d slot still comes next.
    now = T0 + timedelta(days=10)
    assert next_attempt(T0, 9, now) == T0 + timedelta(days=14)


def test_downtime_skips_missed_slots_and_may_expire() -> None:
    # Down from day 2 to day 5: one attempt on restart, then the 7d slot, not the missed 3d one.
    assert next_attempt(T0, 6, T0 + timedelta(days=5)) == T0 + timedelta(days=7)
    # Down past the last slot: the restart attempt was the last one.
    assert next_attempt(T0, 6, T0 + timedelta(days=25)) is None


def test_boundary_is_strict() -> None:
    # An attempt made exactly at the last slot that fails expires the recipient.
    assert next_attempt(T0, 9, T0 + timedelta(days=21)) is None
    assert next_attempt(T0, 1, T0 + timedelta(minutes=5)) == T0 + timedelta(minutes=30)


def test_seconds_schedule_for_tests_and_unsorted_input() -> None:
    sched = schedule_from_seconds([2.0, 1.0])
    assert sched == (timedelta(seconds=1), timedelta(seconds=2))
    assert next_attempt(T0, 1, T0, sched) == T0 + timedelta(seconds=1)
    assert next_attempt(T0, 2, T0 + timedelta(seconds=1.5), sched) == T0 + timedelta(seconds=2)
    assert next_attempt(T0, 3, T0 + timedelta(seconds=2), sched) is None
    assert expires_at(T0, sched) == T0 + timedelta(seconds=2)


@pytest.mark.parametrize("empty", [(), []])
def test_empty_schedule_expires_after_the_first_failure(empty: tuple[timedelta, ...]) -> None:
    assert next_attempt(T0, 1, T0, empty) is None


@given(
    attempts=st.integers(min_value=1, max_value=50),
    elapsed=st.integers(min_value=0, max_value=30 * 86400),
)
def test_next_is_always_in_the_future_and_within_the_schedule(attempts: int, elapsed: int) -> None:
    now = T0 + timedelta(seconds=elapsed)
    nxt = next_attempt(T0, attempts, now)
    if nxt is None:
        assert now >= T0 + DEFAULT_SCHEDULE[-1]
    else:
        assert now < nxt <= T0 + DEFAULT_SCHEDULE[-1]
        assert nxt - T0 in DEFAULT_SCHEDULE


def test_config_refuses_an_empty_schedule() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"queue": {"schedule": []}})
    assert err.value.problems == ['queue.schedule: needs at least one offset (e.g. ["5m"])']
