# The intake's trust rules (policy.bounces.effect.plan): what a received report may change.
from __future__ import annotations

from policy.bounces.effect import Target, plan
from policy.bounces.values import BounceReport, Kind
from policy.decide import Disposition
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict

HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t")
SOFT = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
VAGUE = Verdict(BounceClass.UNDETERMINED, Category.OTHER, "t")
REPLY = Reply(550, "5.1.1", "User unknown")


def report(
    rcpt: str, kind: Kind = Kind.DSN, verdict: Verdict | None = HARD, action: str = "failed"
) -> BounceReport:
    return BounceReport(rcpt, kind, "t", "5.1.1", REPLY, action, "mx.dest.example", "", verdict)


VERP = Target("user@dest.example", "Q1")
FBL = Target("")


def test_verp_bounce_for_its_recipient() -> None:
    (action,) = plan([report("user@dest.example")], VERP)
    assert (action.disposition, action.address, action.queue_id) == (
        Disposition.BOUNCED,
        "user@dest.example",
        "Q1",
    )
    assert action.verdict is HARD and action.reply == REPLY


def test_verp_bounce_never_touches_other_listed_addresses() -> None:
    # A report listing a victim beside our recipient changes only our recipient.
    actions = plan([report("victim@dest.example"), report("user@dest.example", verdict=SOFT)], VERP)
    assert [(a.disposition, a.address) for a in actions] == [
        (Disposition.DEFERRED, "user@dest.example")  # a soft report: retried, not bounced
    ]
    assert actions[0].verdict is SOFT


def test_single_report_about_an_alias_applies_to_the_token_recipient() -> None:
    (action,) = plan([report("alias@elsewhere.example")], VERP)
    assert (action.disposition, action.address) == (Disposition.BOUNCED, "user@dest.example")


def test_several_strangers_are_ignored() -> None:
    actions = plan([report("a@x.example"), report("b@x.example")], VERP)
    assert {a.disposition for a in actions} == {Disposition.IGNORED}


def test_unknown_vague_report_is_ignored_clear_one_is_used() -> None:
    assert plan([report("", Kind.UNKNOWN, VAGUE)], VERP)[0].disposition is Disposition.IGNORED
    assert plan([report("", Kind.UNKNOWN, HARD)], VERP)[0].disposition is Disposition.BOUNCED


def test_worst_block_wins_for_one_recipient() -> None:
    actions = plan([report("user@dest.example", verdict=SOFT), report("user@dest.example")], VERP)
    assert [a.verdict for a in actions] == [HARD]


def test_delivered_and_relayed() -> None:
    delivered = Verdict(BounceClass.DELIVERED, Category.DELIVERED, "t")
    assert (
        plan([report("user@dest.example", verdict=delivered)], VERP)[0].disposition
        is Disposition.DELIVERED
    )
    relayed = report("user@dest.example", verdict=SOFT, action="relayed")
    assert plan([relayed], VERP)[0].disposition is Disposition.IGNORED


def test_autoreply_changes_nothing() -> None:
    actions = plan([report("user@dest.example", Kind.AUTOREPLY, None)], VERP)
    assert [a.disposition for a in actions] == [Disposition.IGNORED]


def test_complaint_at_verp_address_blocks_the_token_recipient() -> None:
    (action,) = plan([report("someone@else.example", Kind.ARF, None)], VERP)
    assert (action.disposition, action.address) == (Disposition.SUPPRESSED, "user@dest.example")
    assert "complaint" in action.detail


def test_feedback_address_takes_complaints_only() -> None:
    actions = plan(
        [report("angry@dest.example", Kind.ARF, None), report("victim@dest.example")], FBL
    )
    assert [(a.disposition, a.address) for a in actions] == [
        (Disposition.SUPPRESSED, "angry@dest.example")
    ]
    assert plan([report("victim@dest.example")], FBL) == []
