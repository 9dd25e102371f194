"""The reply mapping (policy/client_reply.py), row by row, without any I/O."""

from __future__ import annotations

import pytest

from policy.client_reply import SessionResult, data_plan, rcpt_decision
from policy.reply import Reply

HOST = "mx.example.test[192.0.2.1]"
OK = Reply(250, "2.1.5", "Ok", HOST)
DEAD = Reply(550, "5.1.1", "No such user", HOST)
FULL = Reply(452, "4.2.2", "Mailbox full", HOST)
DNS_TEMP = Reply(451, "4.4.3", "Name service error")
NXDOMAIN = Reply(550, "5.1.2", "Domain does not exist")
NULL_MX = Reply(556, "5.1.10", "null MX")


def test_rcpt_2xx_is_250_2_1_5() -> None:
    d = rcpt_decision(OK, "queue", True)
    assert (d.reply.code, d.reply.enhanced, d.accepted, d.queued) == (250, "2.1.5", True, False)


@pytest.mark.parametrize("mode", ["queue", "pass"])
def test_rcpt_5xx_passes_code_enhanced_text_and_host(mode: str) -> None:
    d = rcpt_decision(DEAD, mode, True)
    assert (d.reply.code, d.reply.enhanced) == (550, "5.1.1")
    assert d.reply.text == f"host {HOST} said: No such user"
    assert not d.accepted


@pytest.mark.parametrize("reply", [NXDOMAIN, NULL_MX])
def test_rcpt_dns_hard_failures_pass_unchanged(reply: Reply) -> None:
    d = rcpt_decision(reply, "queue", True)
    assert (d.reply.code, d.reply.enhanced, d.reply.text) == (
        reply.code,
        reply.enhanced,
        reply.text,
    )


@pytest.mark.parametrize("reply", [FULL, DNS_TEMP])
def test_rcpt_soft_queue_mode_accepts_for_the_spool(reply: Reply) -> None:
    d = rcpt_decision(reply, "queue", True)
    assert d.reply.code == 250 and d.accepted and d.queued


def test_rcpt_soft_queue_mode_without_spool_is_451_4_3_0() -> None:
    d = rcpt_decision(FULL, "queue", False)
    assert (d.reply.code, d.reply.enhanced, d.accepted) == (451, "4.3.0", False)


@pytest.mark.parametrize("reply", [FULL, DNS_TEMP])
def test_rcpt_soft_pass_mode_returns_the_4xx(reply: Reply) -> None:
    d = rcpt_decision(reply, "pass", True)
    assert (d.reply.code, d.reply.enhanced) == (reply.code, reply.enhanced)
    assert not d.accepted and not d.queued


def test_data_all_accepted_is_250_with_queue_id() -> None:
    plan = data_plan(
        [SessionResult(("a@x",), Reply(250, "2.0.0", "ok", HOST))],
        [],
        "queue",
        True,
        "ABC123DEF456",
    )
    assert plan.reply.line() == "250 2.0.0 Ok: queued as ABC123DEF456"
    assert plan.delivered == ("a@x",) and not plan.needs_spool


def test_data_single_refusal_comes_back_verbatim_with_host() -> None:
    spam = Reply(554, "5.7.1", "spam", HOST)
    plan = data_plan([SessionResult(("a@x", "b@x"), spam)], [], "queue", True, "Q")
    assert plan.reply.line() == f"554 5.7.1 host {HOST} said: spam"
    assert not plan.needs_spool


def test_data_mixed_is_250_with_spool_dsn_and_retry() -> None:
    results = [
        SessionResult(("a@one",), Reply(250, "2.0.0", "ok", HOST)),
        SessionResult(("b@two",), Reply(552, "5.2.2", "full", HOST)),
        SessionResult(("c@three",), Reply(451, "4.3.0", "later", HOST)),
    ]
    plan = data_plan(results, [], "pass", True, "Q")
    assert plan.reply.code == 250 and plan.needs_spool
    assert [r for r, _ in plan.failed] == ["b@two"]
    assert [r for r, _ in plan.deferred] == ["c@three"]


def test_data_mixed_without_spool_never_says_250() -> None:
    results = [
        SessionResult(("a@one",), Reply(250, "2.0.0", "ok", HOST)),
        SessionResult(("b@two",), Reply(550, "5.0.0", "no", HOST)),
    ]
    plan = data_plan(results, [], "queue", False, "Q")
    assert plan.reply.code == 451


def test_data_soft_only_queue_mode_spools_pass_mode_returns_4xx() -> None:
    results = [SessionResult(("a@one",), Reply(451, "4.3.0", "later", HOST))]
    queued = data_plan(results, [], "queue", True, "Q")
    assert queued.reply.code == 250 and queued.deferred and queued.needs_spool
    passed = data_plan(results, [], "pass", True, "Q")
    assert passed.reply.code == 451 and not passed.needs_spool


def test_data_with_only_rcpt_time_soft_recipients_spools_them() -> None:
    plan = data_plan([], [("a@one", FULL)], "queue", True, "Q")
    assert plan.reply.code == 250 and plan.deferred == (("a@one", FULL),) and plan.needs_spool
