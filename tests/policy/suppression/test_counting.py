"""Counting that follows the sendings, not the recipient lines: windows, domain confirmation,
storms, re-entry, what activity may lift, the refusal per reason. Pure functions driven with
explicit `now` values, and the store for what needs it; no sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lmdb
import pytest

from policy.reply import parse_reply
from policy.suppression import escalate as esc
from policy.suppression.encoding import HEADER, decode, encode
from policy.suppression.escalate import SuppressionRules
from policy.suppression.records import (
    Basis,
    HistoryEvent,
    Scope,
    State,
    SuppressionRecord,
    basis_of,
)
from policy.suppression.store import NotFound, SuppressionStore
from policy.suppression.storm import StormTracker
from policy.verdict import BounceClass, Category, Verdict
from relay.store.env import open_state

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
RULES = SuppressionRules()
ADDR = "bob@example.com"
HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t")
INACTIVE = Verdict(BounceClass.HARD, Category.INACTIVE_MAILBOX, "t")
BAD_DOMAIN = Verdict(BounceClass.HARD, Category.BAD_DOMAIN, "t")
QUOTA = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
NOANSWER = Verdict(BounceClass.SOFT, Category.NO_ANSWER_FROM_HOST, "t")
R550 = parse_reply("550 5.1.1 user unknown")
R452 = parse_reply("452 4.2.2 mailbox full")
NXDOMAIN = parse_reply(
    "550 5.1.2 Host or domain name not found. Domain gone.example does not exist"
)
NULL_MX = parse_reply("556 5.1.10 gone.example does not accept mail (null MX)")


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def days(n: float) -> timedelta:
    return timedelta(days=n)


def hard(rec: SuppressionRecord | None, now: datetime) -> SuppressionRecord:
    return esc.apply_hard(rec, ADDR, Scope.ADDRESS, HARD, R550, RULES, now)


def synth(rec: SuppressionRecord, now: datetime) -> SuppressionRecord:
    """A synthesized refusal; the record unchanged when the rule says nothing to write."""
    new = esc.apply_synthesized(rec, RULES, now)
    return rec if new is None else new


def domain(rec: SuppressionRecord | None, now: datetime, reply=NXDOMAIN) -> SuppressionRecord:
    return esc.apply_domain(rec, "gone.example", BAD_DOMAIN, reply, RULES, now)


def streak_suppressed(rules: SuppressionRules = RULES) -> SuppressionRecord:
    """Three weeks of quota bounces: the first rung (7 days) from T0 + 21 d."""
    rec = None
    for d in (0, 7, 14, 21):
        rec = esc.apply_soft(rec, ADDR, QUOTA, R452, rules, T0 + days(d))
    assert rec is not None and rec.state is State.SUPPRESSED
    assert rec.until == T0 + days(28)
    return rec


# ---- synthesized refusals count per window ------------------------------------------------------


def test_one_hard_bounce_and_four_sends_in_a_minute_is_not_permanent() -> None:
    rec = hard(None, T0)
    for s in range(1, 5):
        rec = synth(rec, T0 + timedelta(seconds=15 * s))
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(90)
    assert rec.synthesized == 1  # one counted per window, however many lines
    assert len(rec.windows) == 1
    assert sum(e.kind == "synthesized" for e in rec.history) == 1


def test_a_burst_of_refusals_writes_nothing_after_the_first() -> None:
    rec = synth(hard(None, T0), T0 + minutes(1))
    assert esc.apply_synthesized(rec, RULES, T0 + minutes(2)) is None
    assert esc.apply_synthesized(rec, RULES, T0 + hours(23)) is None
    assert esc.apply_synthesized(rec, RULES, T0 + minutes(1) + hours(24)) is not None


def test_permanent_at_three_strikes_in_three_distinct_windows() -> None:
    rec = synth(hard(None, T0), T0 + minutes(1))  # 2 strikes, 1 window
    rec = synth(rec, T0 + days(1) + minutes(1))  # 3 strikes, 2 windows
    assert rec.state is State.SUPPRESSED and rec.strikes == 3
    rec = synth(rec, T0 + days(2) + minutes(1))  # 4 strikes, 3 windows
    assert rec.state is State.PERMANENT


def test_three_real_hard_bounces_in_one_window_are_not_permanent() -> None:
    rec = hard(hard(hard(None, T0), T0 + minutes(1)), T0 + minutes(2))
    assert rec.state is State.SUPPRESSED and rec.strikes == 3 and len(rec.windows) == 1


def test_the_window_is_a_setting() -> None:
    rules = SuppressionRules(synthesized_window=60.0)
    rec = esc.apply_hard(None, ADDR, Scope.ADDRESS, HARD, R550, rules, T0)
    for m in (1, 2):
        new = esc.apply_synthesized(rec, rules, T0 + minutes(m))
        assert new is not None
        rec = new
    assert rec.state is State.PERMANENT


# ---- domains ------------------------------------------------------------------------------------


def test_nxdomain_suppresses_a_day_then_a_later_verdict_confirms() -> None:
    rec = domain(None, T0)
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(1)
    assert basis_of(rec) is Basis.DOMAIN
    for s in range(1, 5):  # four more addresses of the domain, refused by bouncer
        rec = synth(rec, T0 + timedelta(seconds=s))
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(1) and rec.strikes == 1
    rec = domain(rec, T0 + hours(12))  # same window: counted, not a confirmation
    assert rec.until == T0 + days(1)
    rec = domain(rec, T0 + days(2))  # a day later: confirmed
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(92)
    assert rec.history[-1].kind == "confirmed" or any(e.kind == "confirmed" for e in rec.history)


def test_a_domain_is_permanent_only_after_three_confirmations() -> None:
    rec = domain(None, T0)
    for n, d in enumerate((2, 93, 184), start=1):
        rec = domain(rec, T0 + days(d))
        if n < 3:
            assert rec.state is State.SUPPRESSED, n
    assert rec.state is State.PERMANENT


def test_null_mx_suppresses_90_days_at_once_with_its_own_code() -> None:
    rec = domain(None, T0, NULL_MX)
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(90)
    reply = esc.refusal_reply(ADDR, Scope.DOMAIN, "x", _kind(rec))
    assert (reply.code, reply.enhanced) == (556, "5.1.10")


# ---- storms -------------------------------------------------------------------------------------


def test_storm_trips_on_distinct_addresses_making_half_the_attempts() -> None:
    t = StormTracker(RULES)
    trips = [
        t.observe("big.example", f"u{i}@big.example", True, T0 + timedelta(seconds=i))
        for i in range(30)
    ]
    assert [i for i, trip in enumerate(trips) if trip is not None] == [RULES.storm_min - 1]
    assert t.in_storm("big.example") and t.active(T0 + minutes(1)) == 1
    assert t.active(T0 + minutes(20)) == 0  # quiet for longer than the window: over


def test_no_storm_when_most_attempts_succeed() -> None:
    t = StormTracker(RULES)
    for i in range(30):
        for j in range(2):
            t.observe("big.example", f"ok{i}.{j}@big.example", False, T0 + timedelta(seconds=i))
        assert (
            t.observe("big.example", f"u{i}@big.example", True, T0 + timedelta(seconds=i)) is None
        )
    assert not t.in_storm("big.example")


def test_no_storm_when_spread_beyond_the_window() -> None:
    t = StormTracker(RULES)
    for i in range(40):
        t.observe("big.example", f"u{i}@big.example", True, T0 + minutes(i))
    assert not t.in_storm("big.example")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SuppressionStore]:
    env: lmdb.Environment = open_state(tmp_path / "state", 1 << 24)
    yield SuppressionStore(env, RULES)
    env.close()


def test_a_storm_marks_its_records_24h_and_one_command_releases_them(
    store: SuppressionStore, caplog: pytest.LogCaptureFixture
) -> None:
    old = "early@big.example"
    store.record_verdict(old, HARD, R550, T0 - days(3))  # before the storm: stays hard
    addrs = [f"u{i}@big.example" for i in range(30)]
    for i, a in enumerate(addrs):
        store.record_verdict(a, HARD, R550, T0 + timedelta(seconds=2 * i))
    assert "storm: big.example answered hard for 20 distinct addresses" in caplog.text
    assert store.storms_tripped == 1
    for a in addrs:
        rec = store.get(a)
        assert rec is not None and basis_of(rec) is Basis.STORM, a
        assert rec.until is not None and rec.until - rec.since == hours(24), a  # type: ignore[operator]
        assert rec.strikes == 0
    refusal = store.check(addrs[0], T0 + hours(1))
    assert refusal is not None and "during a storm" in refusal.reply.text
    old_rec = store.get(old)
    assert old_rec is not None and basis_of(old_rec) is Basis.HARD
    groups = store.storms_list(T0 + hours(1))
    assert [(g.domain, len(g.addresses)) for g in groups] == [("big.example", 30)]
    assert store.storm_settle("big.example", False, T0 + hours(1), "remote fixed") == 30
    assert all(store.check(a, T0 + hours(1)) is None for a in addrs)
    assert store.storms_list(T0 + hours(1)) == []
    with pytest.raises(NotFound):
        store.storm_settle("big.example", True, T0 + hours(1))


def test_confirming_a_storm_applies_the_hard_rules(store: SuppressionStore) -> None:
    for i in range(25):
        store.record_verdict(f"u{i}@big.example", HARD, R550, T0 + timedelta(seconds=i))
    assert store.storm_settle("@BIG.example", True, T0 + hours(2)) == 25
    rec = store.get("u3@big.example")
    assert rec is not None and basis_of(rec) is Basis.HARD and rec.strikes == 1
    assert rec.since is not None and rec.until == rec.since + days(90)
    assert store.check("u3@big.example", T0 + days(30)) is not None


# ---- re-entry -----------------------------------------------------------------------------------


def test_after_readmission_one_more_quota_bounce_suppresses_for_30_days() -> None:
    rec = streak_suppressed()
    back = T0 + days(40)  # re-admitted at T0 + 28 d
    rec = esc.apply_soft(rec, ADDR, QUOTA, R452, RULES, back)
    assert rec.state is State.SUPPRESSED and rec.until == back + days(30)
    assert rec.soft_level == 2 and basis_of(rec) is Basis.STREAK


def test_reentry_needs_the_same_category_and_the_time_limit() -> None:
    rec = esc.apply_soft(streak_suppressed(), ADDR, NOANSWER, R452, RULES, T0 + days(40))
    assert rec.state is State.ACTIVE
    late = T0 + days(28) + days(RULES.reentry_days) + days(1)
    rec = esc.apply_soft(streak_suppressed(), ADDR, QUOTA, R452, RULES, late)
    assert rec.state is State.ACTIVE
    off = SuppressionRules(reentry_days=0)
    rec = esc.apply_soft(streak_suppressed(off), ADDR, QUOTA, R452, off, T0 + days(40))
    assert rec.state is State.ACTIVE


# ---- what activity lifts ------------------------------------------------------------------------


def test_activity_never_lifts_a_hard_bounce() -> None:
    before = hard(None, T0)
    rec = esc.apply_alive(before, "activity", RULES, T0 + days(1)) or before
    assert rec.state is State.SUPPRESSED
    note = esc.activity_note(rec, T0 + days(1))
    assert "stays suppressed" in note and "suppression remove" in note


def test_activity_lifts_a_streak_suppression() -> None:
    rec = esc.apply_alive(streak_suppressed(), "activity", RULES, T0 + days(22))
    assert rec is not None and rec.state is State.ACTIVE and rec.streak is None
    assert esc.activity_note(rec, T0 + days(22)) == ""


@pytest.mark.parametrize(
    "rec",
    [
        esc.apply_complaint(None, ADDR, "arf", RULES, T0),
        esc.apply_add(None, ADDR, Scope.ADDRESS, Category.OTHER, T0 + days(9), "x", RULES, T0),
    ],
    ids=["complaint", "manual"],
)
def test_activity_never_lifts_complaint_or_manual(rec: SuppressionRecord) -> None:
    after = esc.apply_alive(rec, "activity", RULES, T0 + days(1)) or rec
    assert after.state is rec.state
    assert "stays" in esc.activity_note(after, T0 + days(1))


# ---- the refusal per reason ---------------------------------------------------------------------


def _kind(rec: SuppressionRecord) -> int:
    from policy.suppression.records import refusal_kind

    return refusal_kind(rec)


def _streak(category: Category) -> SuppressionRecord:
    v = Verdict(BounceClass.SOFT, category, "t")
    rec = None
    for d in (0, 7, 14, 21):
        rec = esc.apply_soft(rec, ADDR, v, R452, RULES, T0 + days(d))
    assert rec is not None
    return rec


REASONS = [
    (hard(None, T0), 550, "5.1.1", "Recipient suppressed: bad mailbox"),
    (
        esc.apply_hard(None, ADDR, Scope.ADDRESS, INACTIVE, R550, RULES, T0),
        550,
        "5.2.1",
        "Recipient suppressed: inactive mailbox",
    ),
    (domain(None, T0), 550, "5.1.2", "Recipient suppressed: bad domain"),
    (domain(None, T0, NULL_MX), 556, "5.1.10", "Recipient suppressed: domain accepts no mail"),
    (_streak(Category.QUOTA_ISSUES), 550, "5.2.2", "Recipient suppressed: mailbox full for weeks"),
    (
        _streak(Category.NO_ANSWER_FROM_HOST),
        550,
        "5.4.1",
        "Recipient suppressed: successive soft bounces",
    ),
    (
        esc.apply_complaint(None, ADDR, "arf", RULES, T0),
        550,
        "5.7.1",
        "Recipient suppressed: complaint",
    ),
    (
        esc.apply_add(None, ADDR, Scope.ADDRESS, Category.OTHER, None, "", RULES, T0),
        550,
        "5.7.1",
        "Recipient suppressed: by the operator",
    ),
]


@pytest.mark.parametrize(("rec", "code", "enhanced", "phrase"), REASONS)
def test_each_reason_has_its_code_and_phrase(
    store: SuppressionStore, rec: SuppressionRecord, code: int, enhanced: str, phrase: str
) -> None:
    # Through the bytes and the hot path, as the relay sees it.
    db = store._dom if rec.scope is Scope.DOMAIN else store._addr
    with store._env.begin(write=True, db=db) as txn:
        txn.put(rec.key.encode(), encode(rec))
    probe = ADDR if rec.scope is Scope.ADDRESS else "someone@gone.example"
    assert rec.since is not None
    refusal = store.check(probe, rec.since + hours(1))
    assert refusal is not None
    assert (refusal.reply.code, refusal.reply.enhanced) == (code, enhanced)
    assert refusal.reply.text.startswith(f"{phrase}, <{probe}>: ")
    assert esc.refusal_text(probe, rec) == refusal.reply.text


# ---- the on-disk format -------------------------------------------------------------------------


def test_a_version_2_record_still_decodes_and_refuses_as_before(store: SuppressionStore) -> None:
    """Format 2 had no refusal kind in the state byte and no basis in the body."""
    rec = SuppressionRecord(
        key=ADDR,
        first_seen=T0,
        last_seen=T0,
        state=State.SUPPRESSED,
        cause=Category.QUOTA_ISSUES,
        reason="successive bounces, quota-issues: 452 4.2.2 mailbox full",
        since=T0,
        until=T0 + days(7),
        soft_level=1,
        history=(HistoryEvent(T0, "soft", "quota"),),
    )
    raw = encode(rec)
    v2 = bytes([2, raw[1] & 3]) + raw[2:]
    assert HEADER.unpack_from(raw)[1] >> 2 != 0  # version 3 carries a kind
    old = decode(v2)
    assert old == rec and basis_of(old) is Basis.STREAK
    with store._env.begin(write=True, db=store._addr) as txn:
        txn.put(ADDR.encode(), v2)
    refusal = store.check(ADDR, T0 + days(1))
    assert refusal is not None and refusal.reply.enhanced == "5.1.1"  # as format 2 answered
    store.record_verdict(ADDR, QUOTA, R452, T0 + days(2))  # any write upgrades it
    refusal = store.check(ADDR, T0 + days(3))
    assert refusal is not None and refusal.reply.enhanced == "5.2.2"
