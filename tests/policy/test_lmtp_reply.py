"""The LMTP reply mapping (policy/lmtp_reply.py), row by row, without any I/O."""

from __future__ import annotations

import pytest

from policy.lmtp_reply import recipient_plan
from policy.reply import Reply

HOST = "mx.example.test[192.0.2.1]"
TAKEN = Reply(250, "2.0.0", "Ok: queued as REMOTE", HOST)
SPAM = Reply(554, "5.7.1", "Rejected as spam", HOST)
BUSY = Reply(451, "4.3.0", "Try again later", HOST)
ODD_SOFT = Reply(354, None, "not a failure code", HOST)  # soft by class, not by its code
QID = "0123456789AB"
QUEUED = Reply(250, "2.0.0", f"Ok: queued as {QID}")


def lines(mode: str, spool: bool, *outcomes: Reply) -> tuple[list[str], list[str]]:
    given = [(f"r{n}@example.test", reply) for n, reply in enumerate(outcomes)]
    plan = recipient_plan(given, mode, spool, QID)
    assert plan.needs_spool == bool(plan.deferred)
    return [r.line() for r in plan.replies], [a for a, _ in plan.deferred]


@pytest.mark.parametrize("mode", ["queue", "pass"])
def test_each_recipient_hears_its_own_remote_in_order(mode: str) -> None:
    replies, deferred = lines(mode, True, TAKEN, SPAM, TAKEN)
    assert replies == [
        QUEUED.line(),
        f"554 5.7.1 host {HOST} said: Rejected as spam",
        QUEUED.line(),
    ]
    assert deferred == []  # a permanent failure the client hears: no DSN, nothing queued


def test_soft_is_queued_with_the_queue_id_in_queue_mode() -> None:
    replies, deferred = lines("queue", True, TAKEN, BUSY)
    assert replies == [QUEUED.line(), QUEUED.line()]
    assert deferred == ["r1@example.test"]


def test_soft_is_the_remotes_4xx_in_pass_mode() -> None:
    replies, deferred = lines("pass", True, BUSY, ODD_SOFT)
    assert replies == [
        f"451 4.3.0 host {HOST} said: Try again later",
        f"451 4.0.0 host {HOST} said: not a failure code",
    ]
    assert deferred == []


def test_soft_without_a_queue_is_451_naming_the_remote() -> None:
    replies, deferred = lines("queue", False, BUSY)
    assert replies == [
        f"451 4.3.0 retry queue unavailable; 451 4.3.0 host {HOST} said: Try again later"
    ]
    assert deferred == []
