# docs/behaviour.md#retry-queue: at the end the message expires, a failure DSN goes to the envelope
# sender and the SB streak rules apply (a streak of one category spanning 21 days with >= 3 attempts
# suppresses the address for 7 days). A real Service with time as a parameter (its clock), the fake
# MX refusing one mailbox softly on every attempt of the default schedule.
"""A recipient that fails softly for the whole three-week schedule ends suppressed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.retry import DEFAULT_SCHEDULE
from policy.suppression.records import State
from tests.support.fake_mx import FakeMX
from tests.support.smtp_client import send
from tests.support.wait import until

FULL = "full@example.test"


@pytest.mark.timeout(60)
async def test_three_weeks_of_soft_failures_suppress_the_address(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies[FULL] = "452 4.2.2 Mailbox full"
    t0 = datetime.now(UTC)
    clock = {"now": t0}
    overrides = {
        "delivery": {"routes": {"example.test": fake_mx.address, "sender.test": fake_mx.address}},
        "queue": {"poll_interval": 0.02},
    }
    svc = await relay_service(overrides, clock=lambda: clock["now"])
    host, port = svc.addresses[0]
    got = await send(host, port, "app@sender.test", [FULL])
    assert got.data is not None and got.data[0] == 250  # queued: soft_bounce = "queue"
    assert svc.store is not None
    spool = svc.spool
    assert spool is not None

    def settled() -> bool:
        # Advance the clock only once the last attempt is on disk: the runner schedules
        # from the time it settles, and a later clock would skip a slot of the schedule.
        return not any(
            r.recipient == FULL and (r.leased_by or r.next_at <= clock["now"])
            for m in spool.messages()
            for r in m.recipients
        )

    for n, offset in enumerate(DEFAULT_SCHEDULE, start=2):
        await until(settled, f"attempt {n - 1} settled")
        clock["now"] = t0 + offset + timedelta(seconds=1)
        await until(lambda n=n: fake_mx.rcpts.count(FULL) >= n, f"attempt {n}")
    # The last attempt failed: the recipient expired and its DSN went to the sender.
    await until(lambda: any(m.mail_from in ("", "<>") for m in fake_mx.messages), "the DSN")
    assert fake_mx.rcpts.count(FULL) == len(DEFAULT_SCHEDULE) + 1
    rec = svc.store.get(FULL)
    assert rec is not None and rec.soft == len(DEFAULT_SCHEDULE) + 1
    # 10 soft bounces over 21 days with no success between: suppressed for 7 days.
    assert rec.state is State.SUPPRESSED, rec
    assert svc.store.check(FULL, clock["now"]) is not None
