"""The suppression rules, driven with explicit `now` values: no sleeping, no clock mocks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from policy.address import is_valid_address, normalize_address
from policy.reply import Reply, parse_reply
from policy.suppression import escalate as esc
from policy.suppression.encoding import STATE_CODE, decode, encode, peek
from policy.suppression.escalate import ForceRequired, NotSuppressed, RuleError, SuppressionRules
from policy.suppression.records import (
    HistoryEvent,
    Scope,
    SoftStreak,
    State,
    SuppressionRecord,
    as_dict,
    refusal_tail,
)
from policy.verdict import BounceClass, Category, Verdict

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
RULES = SuppressionRules()
ADDR = "bob@example.com"
HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t")
QUOTA = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
NOANSWER = Verdict(BounceClass.SOFT, Category.NO_ANSWER_FROM_HOST, "t")
SPAM = Verdict(BounceClass.BLOCK, Category.SPAM_RELATED, "t")
OTHER = Verdict(BounceClass.UNDETERMINED, Category.OTHER, "t")
R550 = parse_reply("550 5.1.1 user unknown")
R452 = parse_reply("452 4.2.2 mailbox full")
R554 = parse_reply("554 5.7.1 listed at a DNSBL")


def days(n: float) -> timedelta:
    return timedelta(days=n)


def refusing(rec: SuppressionRecord, now: datetime) -> bool:
    until = rec.until.timestamp() if rec.until else math.nan
    return esc.refuses(STATE_CODE[rec.state], until, now.timestamp())


def hard(rec: SuppressionRecord | None, now: datetime, rules: SuppressionRules = RULES):
    return esc.apply_hard(rec, ADDR, Scope.ADDRESS, HARD, R550, rules, now)


def synth(rec: SuppressionRecord, rules: SuppressionRules, now: datetime) -> SuppressionRecord:
    """A counted synthesized refusal (each call here is a window or more after the last)."""
    new = esc.apply_synthesized(rec, rules, now)
    assert new is not None
    return new


def soft(rec, now, verdict=QUOTA, rules=RULES):
    return esc.apply_soft(rec, ADDR, verdict, R452, rules, now)


# ---- hard bounces ---------------------------------------------------------------------------


def test_first_hard_bounce_suppresses_for_90_days_then_readmits() -> None:
    rec = hard(None, T0)
    assert rec.state is State.SUPPRESSED
    assert rec.until == T0 + days(90) and rec.since == T0
    assert (rec.hard, rec.strikes) == (1, 1)
    assert refusing(rec, T0 + days(89.9))
    assert not refusing(rec, T0 + days(90))  # re-admitted automatically, nothing written
    assert esc.effective_state(rec, T0 + days(90)) is State.ACTIVE
    view = esc.effective(rec, RULES, T0 + days(91))
    assert view.state is State.ACTIVE and view.history[-1].kind == "readmitted"


def test_refusal_reply_names_reason_since_and_until() -> None:
    rec = hard(None, T0)
    reply = esc.refusal_reply(ADDR, Scope.ADDRESS, refusal_tail(rec))
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == (
        "Recipient suppressed: bad mailbox, <bob@example.com>: suppressed "
        "(bad-mailbox: 550 5.1.1 user unknown) since 2026-11-01 until 2027-01-30"
    )
    assert reply.text == esc.refusal_text(ADDR, rec)
    dom = SuppressionRecord(
        key="example.com",
        first_seen=T0,
        last_seen=T0,
        scope=Scope.DOMAIN,
        state=State.PERMANENT,
        since=T0,
        reason="x",
    )
    reply = esc.refusal_reply(ADDR, Scope.DOMAIN, refusal_tail(dom))
    assert reply.enhanced == "5.1.2"
    assert (
        reply.text == "Recipient suppressed: bad domain, <bob@example.com>: "
        "domain example.com suppressed permanently (x) since 2026-11-01"
    )
    assert refusal_tail(esc.apply_remove(rec, False, "", RULES, T0)) == ""


def test_synthesized_hard_bounces_count_to_permanent() -> None:
    rec = hard(None, T0)
    rec = synth(rec, RULES, T0 + days(1))
    assert rec.state is State.SUPPRESSED and (rec.synthesized, rec.strikes) == (1, 2)
    rec = synth(rec, RULES, T0 + days(2))
    assert rec.state is State.PERMANENT and rec.until is None
    assert rec.since == T0  # the suppression began with the first HB
    assert refusing(rec, T0 + days(10_000))
    assert [e.kind for e in rec.history] == ["hard", "synthesized", "synthesized"]


def test_three_real_hard_bounces_across_readmissions_make_it_permanent() -> None:
    rec = hard(None, T0)
    rec = hard(rec, T0 + days(100))  # after re-admission
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(190) and rec.strikes == 2
    assert rec.since == T0 + days(100)
    assert [e.kind for e in rec.history] == ["hard", "readmitted", "hard"]
    rec = hard(rec, T0 + days(200))
    assert rec.state is State.PERMANENT and rec.hard == 3


def test_a_success_between_hard_bounces_resets_the_strikes() -> None:
    rec = hard(None, T0)
    rec = esc.apply_alive(rec, "success", RULES, T0 + days(100))
    assert rec is not None and rec.strikes == 0
    rec = hard(hard(rec, T0 + days(101)), T0 + days(200))
    assert rec.state is State.SUPPRESSED and rec.strikes == 2


def test_hard_bounce_settings_are_honoured() -> None:
    rules = SuppressionRules(hard_suppress_days=10, permanent_after_hard=1)
    assert hard(None, T0, rules).state is State.PERMANENT
    rules = SuppressionRules(hard_suppress_days=10, permanent_after_hard=2)
    assert hard(None, T0, rules).until == T0 + days(10)


def test_a_4xx_is_never_hard() -> None:
    rec = esc.apply_verdict(None, ADDR, Scope.ADDRESS, HARD, R452, RULES, T0)
    assert rec is not None and rec.state is State.ACTIVE and rec.hard == 0 and rec.soft == 1


# ---- soft streaks ---------------------------------------------------------------------------


def test_soft_streak_of_three_weeks_and_three_attempts_suppresses_for_7_days() -> None:
    rec = soft(None, T0)
    rec = soft(rec, T0 + days(10))
    assert rec.state is State.ACTIVE and rec.streak == SoftStreak(
        Category.QUOTA_ISSUES, T0, T0 + days(10), 2
    )
    rec = soft(rec, T0 + days(21))
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(28)
    assert rec.reason.startswith("successive bounces, quota-issues: 452 4.2.2")
    assert rec.streak is None and rec.soft_level == 1


def test_soft_streak_needs_both_span_and_attempts() -> None:
    rec = soft(soft(None, T0), T0 + days(21))  # 21 days but 2 attempts
    assert rec.state is State.ACTIVE
    rec = soft(soft(soft(None, T0), T0 + days(10)), T0 + days(20.9))  # 3 attempts, 20.9 days
    assert rec.state is State.ACTIVE


def test_a_different_category_starts_a_new_streak() -> None:
    rec = soft(soft(None, T0), T0 + days(10))
    rec = soft(rec, T0 + days(21), NOANSWER)
    assert rec.state is State.ACTIVE
    assert rec.streak == SoftStreak(Category.NO_ANSWER_FROM_HOST, T0 + days(21), T0 + days(21), 1)


@pytest.mark.parametrize("kind", ["success", "activity"])
def test_success_or_activity_resets_the_streak(kind: str) -> None:
    rec = soft(soft(None, T0), T0 + days(10))
    rec = esc.apply_alive(rec, kind, RULES, T0 + days(11))
    assert rec is not None and rec.streak is None and rec.history[-1].kind == kind
    rec = soft(rec, T0 + days(21))
    assert rec.state is State.ACTIVE and rec.streak is not None and rec.streak.attempts == 1


def _streak_suppression(rec: SuppressionRecord | None, start: datetime) -> SuppressionRecord:
    for d in (0, 10, 21):
        rec = soft(rec, start + days(d))
    assert rec is not None
    return rec


def test_successive_streak_suppressions_climb_7_30_90_then_permanent() -> None:
    rec = None
    start = T0
    for expected in (7, 30, 90):
        rec = _streak_suppression(rec, start)
        end = start + days(21)
        assert rec.state is State.SUPPRESSED and rec.until == end + days(expected)
        start = rec.until + days(RULES.reentry_days)  # a new streak, past the re-entry time
    rec = _streak_suppression(rec, start)
    assert rec.state is State.PERMANENT and rec.soft_level == 4
    assert esc.refusal_text(ADDR, rec).startswith(
        "Recipient suppressed: mailbox full for weeks, <bob@example.com>: suppressed permanently"
    )


def test_soft_ladder_settings_are_honoured() -> None:
    rules = SuppressionRules(
        soft_streak_days=2, soft_streak_min_attempts=2, soft_suppress_days=(1,)
    )
    rec = soft(soft(None, T0, rules=rules), T0 + days(2), rules=rules)
    assert rec.until == T0 + days(3)
    rec = soft(soft(rec, T0 + days(4), rules=rules), T0 + days(6), rules=rules)
    assert rec.state is State.PERMANENT


def test_refusals_during_a_streak_suppression_do_not_make_it_permanent() -> None:
    rec = _streak_suppression(None, T0)
    for d in range(22, 27):
        rec = synth(rec, RULES, T0 + days(d))
    assert rec.state is State.SUPPRESSED and rec.synthesized == 5 and rec.strikes == 0
    assert not refusing(rec, T0 + days(28))


def test_success_lifts_a_temporary_suppression_but_not_a_permanent_one() -> None:
    rec = esc.apply_alive(hard(None, T0), "success", RULES, T0 + days(1))
    assert (
        rec is not None
        and rec.state is State.ACTIVE
        and rec.history[-1].detail == ("suppression lifted")
    )
    perm = hard(hard(hard(None, T0), T0 + days(91)), T0 + days(182))
    after = esc.apply_alive(perm, "success", RULES, T0 + days(183))
    assert after is not None and after.state is State.PERMANENT


def test_success_on_a_clean_record_or_no_record_writes_nothing() -> None:
    assert esc.apply_alive(None, "success", RULES, T0) is None
    clean = esc.apply_alive(soft(None, T0), "success", RULES, T0 + days(1))
    assert clean is not None
    assert esc.apply_alive(clean, "success", RULES, T0 + days(2)) is None


# ---- block, undetermined, complaint, manual --------------------------------------------------


@pytest.mark.parametrize(("verdict", "reply"), [(SPAM, R554), (OTHER, parse_reply("554 error"))])
def test_block_and_undetermined_never_suppress(verdict: Verdict, reply: Reply) -> None:
    rec = None
    for d in range(30):
        rec = esc.apply_verdict(rec, ADDR, Scope.ADDRESS, verdict, reply, RULES, T0 + days(d))
    assert rec is not None and rec.state is State.ACTIVE and rec.other == 30
    assert rec.klass is verdict.klass and rec.last_reply == reply


def test_complaint_blocks_and_lifting_needs_force_and_a_reason() -> None:
    rec = esc.apply_complaint(None, ADDR, "abuse report from feedback@isp", RULES, T0)
    assert rec.state is State.BLOCKED and refusing(rec, T0 + days(10_000))
    assert rec.reason == "complaint: abuse report from feedback@isp"
    with pytest.raises(ForceRequired):
        esc.apply_remove(rec, False, "", RULES, T0 + days(1))
    with pytest.raises(ForceRequired):
        esc.apply_remove(rec, True, "  ", RULES, T0 + days(1))
    lifted = esc.apply_remove(rec, True, "customer asked again", RULES, T0 + days(1))
    assert lifted.state is State.ACTIVE
    assert lifted.history[-1] == HistoryEvent(
        T0 + days(1), "remove", "blocked lifted (forced): customer asked again"
    )
    assert lifted.history[0].kind == "complaint"  # the history keeps both
    with pytest.raises(NotSuppressed):
        esc.apply_remove(lifted, False, "", RULES, T0 + days(2))


def test_temporary_suppression_lifts_without_force() -> None:
    rec = esc.apply_remove(hard(None, T0), False, "", RULES, T0 + days(1))
    assert rec.state is State.ACTIVE and rec.strikes == 0


def test_manual_add_until_a_date_or_permanent() -> None:
    rec = esc.apply_add(
        None, ADDR, Scope.ADDRESS, Category.INACTIVE_MAILBOX, T0 + days(5), "", RULES, T0
    )
    assert rec.state is State.SUPPRESSED and rec.until == T0 + days(5)
    assert rec.reason == "inactive-mailbox: added by hand"
    rec = esc.apply_add(rec, ADDR, Scope.ADDRESS, Category.BAD_MAILBOX, None, "left", RULES, T0)
    assert rec.state is State.PERMANENT and rec.reason == "bad-mailbox: left"
    with pytest.raises(RuleError):
        esc.apply_add(None, ADDR, Scope.ADDRESS, Category.BAD_MAILBOX, T0, "", RULES, T0)


def test_history_is_bounded() -> None:
    rules = SuppressionRules(history_size=5)
    rec = None
    for d in range(12):
        rec = esc.apply_verdict(rec, ADDR, Scope.ADDRESS, SPAM, R554, rules, T0 + days(d))
    assert rec is not None and len(rec.history) == 5 and rec.history[-1].when == T0 + days(11)


def test_rules_reject_nonsense_numbers() -> None:
    with pytest.raises(ValueError):
        SuppressionRules(permanent_after_hard=0)
    with pytest.raises(ValueError):
        SuppressionRules(soft_suppress_days=(7, -1))


# ---- records and addresses ------------------------------------------------------------------


def test_record_round_trips_through_bytes_and_peek_reads_the_header() -> None:
    rec = synth(soft(hard(None, T0), T0 + days(1)), RULES, T0 + days(2))
    raw = encode(rec)
    assert decode(raw) == rec
    code, since, until, reason, tail = peek(raw)
    assert code == STATE_CODE[State.SUPPRESSED]
    assert (since, until) == (T0.timestamp(), (T0 + days(90)).timestamp())
    assert (reason, tail) == (rec.reason, refusal_tail(rec))
    bare = SuppressionRecord(key="x.example", first_seen=T0, last_seen=T0, scope=Scope.DOMAIN)
    assert decode(encode(bare)) == bare


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Bob@Example.COM", "bob@example.com"),
        ("<bob@example.com>", "bob@example.com"),
        ("bob@EXAMPLE.com.", "bob@example.com"),
        ("bob@exämple.com", "bob@xn--exmple-cua.com"),
        ("bob@BÜCHER.de", "bob@xn--bcher-kva.de"),
        ('"a@b"@example.com', '"a@b"@example.com'),
    ],
)
def test_normalize_address(raw: str, key: str) -> None:
    assert normalize_address(raw) == key


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("bob@example.com", True),
        ("<first.last+tag@sub.example.co.uk>", True),
        ('"john doe"@example.com', True),
        ("bob@[192.0.2.1]", True),
        ("bob@[IPv6:2001:db8::1]", True),
        ("jörg@bücher.de", True),
        ("bob", False),
        ("@example.com", False),
        ("bob@", False),
        ("bob..x@example.com", False),
        (".bob@example.com", False),
        ("bob@exa mple.com", False),
        ("bob@-example.com", False),
        ("bob@[300.1.1.1]", False),
        ("a" * 65 + "@example.com", False),
        ("bob@" + "a" * 64 + ".com", False),
        ("bob@example..com", False),
        ("bob smith@example.com", False),
    ],
)
def test_is_valid_address(address: str, ok: bool) -> None:
    assert is_valid_address(address) is ok


# ---- properties over random event sequences ---------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["hard", "soft", "soft2", "block", "other", "synth", "success", "complaint"]
        ),
        st.floats(min_value=0, max_value=40),  # days since the previous event
    ),
    max_size=40,
)


def _play(events: list[tuple[str, float]]) -> tuple[SuppressionRecord | None, datetime]:
    rec: SuppressionRecord | None = None
    now = T0
    for kind, gap in events:
        now += days(gap)
        if kind == "hard":
            rec = hard(rec, now)
        elif kind in ("soft", "soft2"):
            rec = soft(rec, now, QUOTA if kind == "soft" else NOANSWER)
        elif kind == "block":
            rec = esc.apply_verdict(rec, ADDR, Scope.ADDRESS, SPAM, R554, RULES, now)
        elif kind == "other":
            rec = esc.apply_verdict(rec, ADDR, Scope.ADDRESS, OTHER, R554, RULES, now)
        elif (
            kind == "synth"
            and rec is not None
            and esc.effective_state(rec, now) is not State.ACTIVE
        ):
            rec = esc.apply_synthesized(rec, RULES, now) or rec
        elif kind == "success":
            rec = esc.apply_alive(rec, "success", RULES, now) or rec
        elif kind == "complaint":
            rec = esc.apply_complaint(rec, ADDR, "arf", RULES, now)
    return rec, now


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_invariants_hold_for_any_event_sequence(events: list[tuple[str, float]]) -> None:
    rec, now = _play(events)
    if rec is None:
        return
    # until is set exactly for temporary suppressions; since for every refusing state.
    assert (rec.until is not None) == (rec.state is State.SUPPRESSED)
    assert (rec.since is not None) == (rec.state is not State.ACTIVE)
    assert len(rec.history) <= RULES.history_size
    assert decode(encode(rec)) == rec
    kinds = {k for k, _ in events}
    if not kinds & {"hard", "soft", "soft2", "complaint"}:
        assert rec.state is State.ACTIVE  # block/undetermined/success alone never suppress
    if rec.state is State.BLOCKED:
        assert "complaint" in kinds


def test_a_delivered_verdict_is_a_success() -> None:
    delivered = Verdict(BounceClass.DELIVERED, Category.DELIVERED, "t")
    rec = esc.apply_verdict(
        soft(None, T0), ADDR, Scope.ADDRESS, delivered, parse_reply("250 ok"), RULES, T0
    )
    assert rec is not None and rec.streak is None and rec.history[-1].kind == "success"


def test_adding_a_date_to_a_locked_record_needs_a_forced_lift_first() -> None:
    blocked = esc.apply_complaint(None, ADDR, "arf", RULES, T0)
    with pytest.raises(ForceRequired):
        esc.apply_add(
            blocked, ADDR, Scope.ADDRESS, Category.BAD_MAILBOX, T0 + days(9), "", RULES, T0
        )


def test_naive_times_are_utc_and_json_view_has_the_streak() -> None:
    naive = soft(None, datetime(2026, 11, 1, 12, 0))
    assert naive.first_seen == T0
    d = as_dict(soft(naive, T0 + days(1)))
    assert d["streak"] == {
        "category": "quota-issues",
        "first": "2026-11-01T12:00:00Z",
        "last": "2026-11-02T12:00:00Z",
        "attempts": 2,
    }
    assert d["counts"]["soft"] == 2 and d["state"] == "active"


def test_unknown_record_format_is_refused() -> None:
    raw = bytearray(encode(soft(None, T0)))
    raw[0] = 99
    with pytest.raises(ValueError, match="format 99"):
        decode(bytes(raw))


@pytest.mark.parametrize(
    "address", ["bob@xn--a.com", "bob@ü-.de", "bob@exa_mple.com", "bob@" + "ü" * 70 + ".de"]
)
def test_bad_idns_are_invalid(address: str) -> None:
    assert is_valid_address(address) is False


_ATEXT = st.sampled_from(list("abcXYZ019!#$%&'*+-/=?^_`{|}~é"))
_LOCAL = st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join)
_LABEL = st.sampled_from(["example", "EXAMPLE", "bücher", "xn--bcher-kva", "mail-1", "ÉCOLE", "b"])
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "com"]))


@settings(max_examples=300, deadline=None)
@given(_LOCAL, _DOMAIN)
def test_normalisation_is_idempotent_and_keeps_validity(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    key = normalize_address(address)
    assert normalize_address(key) == key
    assert key == key.lower() and key.split("@")[-1].isascii()
    assert is_valid_address(address) == is_valid_address(key)


def test_a_soft_streak_ending_during_a_hard_suppression_keeps_the_hard_cause() -> None:
    rec = soft(soft(None, T0), T0 + days(10))
    rec = hard(rec, T0 + days(15))
    rec = soft(rec, T0 + days(21))  # the streak completes while hard-suppressed (queue retry)
    assert rec.state is State.SUPPRESSED and rec.cause is Category.BAD_MAILBOX
    assert rec.until == T0 + days(105) and rec.since == T0 + days(15)
    assert rec.reason.startswith("bad-mailbox: 550 5.1.1")
    rec = synth(rec, RULES, T0 + days(22))
    assert rec.strikes == 2  # refusals still escalate toward permanent


def test_format_1_records_without_compression_still_decode() -> None:
    import zlib

    from policy.suppression.encoding import _WBITS, _ZDICT, HEADER

    rec = synth(hard(None, T0), RULES, T0 + days(1))
    raw = encode(rec)
    tlen = HEADER.unpack_from(raw)[4]
    start = HEADER.size + tlen
    body = zlib.decompressobj(_WBITS, zdict=_ZDICT).decompress(raw[start:])
    v1 = bytes([1, raw[1] & 3]) + raw[2:start] + body
    assert decode(v1) == rec
    assert len(raw) < len(v1)  # the deflated body is smaller
    with pytest.raises(ValueError, match="inflate"):
        decode(raw[:start] + b"\xff" * 20)


def test_an_expiry_completes_the_streak_it_ends() -> None:
    """The expiry after three weeks of quota failures suppresses, as that streak's end."""
    rules = SuppressionRules()
    full = Reply(452, "4.2.2", "Mailbox full")
    quota = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "code-x.2.2")
    expired = Verdict(BounceClass.SOFT, Category.MESSAGE_EXPIRED, "queue-expired")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rec = esc.apply_soft(None, "a@b.example", quota, full, rules, t0)
    rec = esc.apply_soft(rec, "a@b.example", quota, full, rules, t0 + timedelta(days=7))
    rec = esc.apply_soft(rec, "a@b.example", expired, full, rules, t0 + timedelta(days=21))
    assert rec.state is State.SUPPRESSED
    assert rec.cause is Category.QUOTA_ISSUES  # the streak that ended, not the expiry
    assert rec.until == t0 + timedelta(days=28)


def test_message_too_large_never_starts_a_soft_streak() -> None:
    # docs/behaviour.md#verdicts: message-too-large is soft but has no SB streak; the
    # address is never
    # suppressed for it, however long it goes on.
    big = parse_reply("552 5.3.4 Message too big for system")
    verdict = Verdict(BounceClass.SOFT, Category.MESSAGE_TOO_LARGE, "code-x.3.4")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rec = None
    for day in range(0, 60, 3):
        rec = esc.apply_verdict(
            rec, ADDR, Scope.ADDRESS, verdict, big, RULES, t0 + timedelta(days=day)
        )
    assert rec is not None and rec.streak is None and rec.soft == 0
    assert rec.state is State.ACTIVE
