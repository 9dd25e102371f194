"""policy/decide.py: the one mapping from a reply to a recipient's Disposition, row by row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from policy.decide import EXPIRED_VERDICT, Disposition, Settings, Stage, decide
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict

OK = Reply(250, "2.0.0", "Ok")
DEAD = Reply(550, "5.1.1", "No such user")
FULL = Reply(452, "4.2.2", "Mailbox full")
HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t")
SOFT = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
QUEUE = Settings("queue", queue_available=True)
NO_QUEUE = Settings("queue", queue_available=False)
PASS = Settings("pass", queue_available=True)


@pytest.mark.parametrize(
    ("reply", "settings", "expected"),
    [
        (OK, QUEUE, Disposition.ACCEPTED),
        (DEAD, QUEUE, Disposition.BOUNCED),
        (DEAD, PASS, Disposition.BOUNCED),
        (FULL, QUEUE, Disposition.QUEUED),
        (FULL, NO_QUEUE, Disposition.DEFERRED),
        (FULL, PASS, Disposition.DEFERRED),
    ],
)
def test_rcpt(reply: Reply, settings: Settings, expected: Disposition) -> None:
    assert decide(reply, None, Stage.RCPT, settings=settings).disposition is expected


@pytest.mark.parametrize(
    ("reply", "took_it", "expected"),
    [
        (OK, True, Disposition.DELIVERED),
        (OK, False, Disposition.DELIVERED),
        (DEAD, True, Disposition.BOUNCED),
        (FULL, True, Disposition.QUEUED),  # the client heard 2xx: the queue has it
        (FULL, False, Disposition.DEFERRED),  # the client heard 4xx: it keeps the message
    ],
)
def test_data(reply: Reply, took_it: bool, expected: Disposition) -> None:
    # At DATA soft_bounce has already chosen the client's reply; only its outcome counts.
    for mode in ("queue", "pass"):
        settings = Settings(mode, queue_available=took_it)
        assert decide(reply, None, Stage.DATA, settings=settings).disposition is expected


def test_a_data_reply_for_several_recipients_is_hard_for_none() -> None:
    alone = decide(DEAD, HARD, Stage.DATA, answered=1)
    shared = decide(DEAD, HARD, Stage.DATA, answered=3)
    assert alone.verdict == HARD
    assert shared.verdict is not None and shared.verdict.klass is BounceClass.BLOCK
    assert shared.disposition is Disposition.BOUNCED
    # RCPT answers one recipient by definition.
    assert decide(DEAD, HARD, Stage.RCPT, answered=3).verdict == HARD


def test_retry_follows_the_schedule_then_expires() -> None:
    settings = Settings(schedule=(timedelta(minutes=5), timedelta(hours=1)))
    early = decide(FULL, SOFT, Stage.RETRY, attempt=1, first_failure=T0, now=T0, settings=settings)
    assert early.disposition is Disposition.QUEUED and early.verdict == SOFT
    assert early.next_at == T0 + timedelta(minutes=5)
    late = T0 + timedelta(hours=2)
    gone = decide(FULL, SOFT, Stage.RETRY, attempt=3, first_failure=T0, now=late, settings=settings)
    assert (gone.disposition, gone.verdict, gone.next_at) == (
        Disposition.EXPIRED,
        EXPIRED_VERDICT,
        None,
    )
    assert decide(OK, None, Stage.RETRY, now=late).disposition is Disposition.DELIVERED
    assert decide(DEAD, HARD, Stage.RETRY, now=late).disposition is Disposition.BOUNCED


@pytest.mark.parametrize(
    ("klass", "expected"),
    [
        (BounceClass.DELIVERED, Disposition.DELIVERED),
        (BounceClass.SOFT, Disposition.DEFERRED),
        (BounceClass.HARD, Disposition.BOUNCED),
        (BounceClass.BLOCK, Disposition.BOUNCED),
        (BounceClass.UNDETERMINED, Disposition.BOUNCED),
    ],
)
def test_a_late_report_is_decided_by_its_verdict(klass: BounceClass, expected: Disposition) -> None:
    # A DSN's quoted reply may carry no code at all: the class decides.
    verdict = Verdict(klass, Category.OTHER, "t")
    assert decide(Reply(0, None, "text"), verdict, Stage.REPORT).disposition is expected
    assert decide(Reply(0, None, ""), None, Stage.REPORT).disposition is Disposition.IGNORED


def test_a_complaint_suppresses() -> None:
    assert decide(Reply(0, None, ""), None, Stage.COMPLAINT).disposition is Disposition.SUPPRESSED


def test_values_are_the_words_stats_and_metrics_print() -> None:
    words = {d.name: str(d) for d in Disposition}
    assert words["DELIVERED"] == "sent" and words["QUEUED"] == "queued"
    assert words["DEFERRED"] == "deferred" and words["BOUNCED"] == "bounced"
