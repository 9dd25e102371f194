# docs/behaviour.md#the-transaction rows that had a policy-level test but no end-to-end one: each
# test runs a real Service (tests/conftest.py) against the fake MX / loopback DNS and checks the
# wire reply AND what the store or the remote shows afterwards.
"""The reply mapping, end to end: store effects and remote cleanup behind each reply."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from policy.reply import parse_reply
from policy.verdict import BounceClass, Category, Verdict
from relay.service import Service
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient
from tests.support.smtp_client import open_client, send, transaction
from tests.support.wait import until

SENDER = "app@sender.test"


def routes(**pairs: FakeMX) -> dict[str, Any]:
    return {"delivery": {"routes": {d.replace("_", "."): mx.address for d, mx in pairs.items()}}}


def where(svc: Service) -> tuple[str, int]:
    host, port = svc.addresses[0]
    return host, port


async def test_suppressed_refusal_names_reason_and_since_and_counts_a_synthesized_hb(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    """§2: suppressed -> 550 5.1.1 with the reason and since-date in the text; synthesized HB."""
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 <dead@example.test>: No such user"
    svc = await relay_service(routes(example_test=fake_mx))
    await send(*where(svc), SENDER, ["dead@example.test"])
    asked = len(fake_mx.rcpts)
    got = await send(*where(svc), SENDER, ["dead@example.test"])
    code, text = got.rcpt["dead@example.test"]
    assert code == 550 and text.startswith("5.1.1 ")
    today = datetime.now(UTC).date().isoformat()
    assert text.startswith("5.1.1 Recipient suppressed: bad mailbox, <")  # the reason's phrase
    assert f") since {today}" in text  # the since-date
    assert "bad-mailbox" in text and "No such user" in text  # the reason
    assert len(fake_mx.rcpts) == asked  # no remote traffic for a suppressed address
    assert svc.store is not None
    rec = svc.store.get("dead@example.test")
    assert rec is not None and (rec.hard, rec.synthesized) == (1, 1)


@pytest.mark.parametrize("mode", ["pass", "queue"])
async def test_soft_bounces_are_tracked_in_both_modes(
    fake_mx: FakeMX, relay_service: Any, mode: str
) -> None:
    """§2: "SB tracking happens in both modes" (a remote 4xx at RCPT)."""
    fake_mx.rcpt_replies["full@example.test"] = "452 4.2.2 Mailbox full, try later"
    overrides = routes(example_test=fake_mx)
    overrides["policy"] = {"soft_bounce": mode}
    svc = await relay_service(overrides)
    got = await send(*where(svc), SENDER, ["full@example.test"])
    code, _ = got.rcpt["full@example.test"]
    assert code == (452 if mode == "pass" else 250)
    assert svc.store is not None
    rec = svc.store.get("full@example.test")
    assert rec is not None and rec.soft == 1
    assert rec.streak is not None and rec.streak.category is Category.QUOTA_ISSUES
    assert rec.streak.attempts == 1


async def test_dns_temporary_failure_is_a_soft_bounce(
    dns_server: DNSServer, relay_service: Any
) -> None:
    """§2: DNS temporary failure -> soft handling, 451 4.4.x, SB recorded."""
    dns_server.servfail("flaky.test")
    svc = await relay_service(
        {"dns": {"nameservers": [dns_server.nameserver]}, "policy": {"soft_bounce": "pass"}}
    )
    got = await send(*where(svc), SENDER, ["x@flaky.test"])
    code, text = got.rcpt["x@flaky.test"]
    assert code == 451 and re.match(r"4\.4\.\d+ ", text), text
    assert svc.store is not None
    rec = svc.store.get("x@flaky.test")
    assert rec is not None and rec.soft == 1 and rec.klass is BounceClass.SOFT


async def test_remote_2xx_clears_the_soft_streak(fake_mx: FakeMX, relay_service: Any) -> None:
    """§2: RCPT remote 2xx -> 250 2.1.5, soft streak cleared (once the mail is delivered)."""
    svc = await relay_service(routes(example_test=fake_mx))
    assert svc.store is not None
    now = datetime.now(UTC)
    soft = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "test")
    svc.store.record_verdict("bob@example.test", soft, parse_reply("452 4.2.2 full"), now)
    before = svc.store.get("bob@example.test")
    assert before is not None and before.streak is not None
    got = await send(*where(svc), SENDER, ["bob@example.test"])
    assert got.rcpt["bob@example.test"] == (250, "2.1.5 Ok")
    assert got.data is not None and got.data[0] == 250

    # The success is written before DATA is answered (pipeline._record runs before the reply).
    after = svc.store.get("bob@example.test")
    assert after is not None and after.streak is None


async def test_null_mx_is_a_bad_domain_hard_bounce_remembered_for_the_domain(
    dns_server: DNSServer, relay_service: Any
) -> None:
    """§2: null MX -> 556 5.1.10 and a bad-domain HB (the domain is then refused from the store)."""
    dns_server.null_mx("nomail.test")
    svc = await relay_service({"dns": {"nameservers": [dns_server.nameserver]}})
    got = await send(*where(svc), SENDER, ["a@nomail.test"])
    assert got.rcpt["a@nomail.test"][0] == 556
    assert got.rcpt["a@nomail.test"][1].startswith("5.1.10")
    asked = len(dns_server.queries)
    again = await send(*where(svc), SENDER, ["someone.else@nomail.test"])
    code, text = again.rcpt["someone.else@nomail.test"]
    # The domain's own statement: refused from the store with the null MX code.
    assert code == 556 and text.startswith("5.1.10 Recipient suppressed: domain accepts no mail")
    assert "nomail.test" in text
    assert len(dns_server.queries) == asked  # answered from the store, not DNS


async def test_refusal_at_data_is_recorded_per_verdict(fake_mx: FakeMX, relay_service: Any) -> None:
    """§2: DATA, one remote session refused -> its reply verbatim, store per verdict.

    With one recipient the DATA reply is about that address: a 5.1.1 is hard.
    """
    fake_mx.data_reply = "550 5.1.1 <gone@example.test>: mailbox unavailable"
    svc = await relay_service(routes(example_test=fake_mx))
    got = await send(*where(svc), SENDER, ["gone@example.test"])
    assert got.data is not None
    code, text = got.data
    assert code == 550 and text.startswith("5.1.1 host ") and "mailbox unavailable" in text
    assert svc.store is not None
    rec = svc.store.get("gone@example.test")
    assert rec is not None and rec.last_reply is not None
    assert rec.last_reply.code == 550 and "mailbox unavailable" in rec.last_reply.text
    assert (rec.hard, rec.other) == (1, 0)
    assert svc.store.check("gone@example.test", svc.clock()) is not None


async def test_a_data_refusal_shared_by_recipients_suppresses_none(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    """One DATA reply answers for every recipient of the remote transaction: a 5.1.1 there
    cannot be pinned on either address, so both are recorded as block, neither suppressed."""
    fake_mx.data_reply = "550 5.1.1 mailbox unavailable"
    svc = await relay_service(routes(example_test=fake_mx))
    rcpts = ["one@example.test", "two@example.test"]
    got = await send(*where(svc), SENDER, rcpts)
    assert got.data is not None and got.data[0] == 550
    assert svc.store is not None
    for address in rcpts:
        rec = svc.store.get(address)
        assert rec is not None and (rec.hard, rec.other) == (0, 1), rec
        assert svc.store.check(address, svc.clock()) is None


async def test_quit_mid_transaction_leaves_no_remote_transaction_open(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    """A client that QUITs after RCPT: its remote session is reset and returned."""
    svc = await relay_service(routes(example_test=fake_mx))
    c = await RawClient.connect(*where(svc))
    assert (await c.cmd(b"MAIL FROM:<app@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"QUIT")).code == 221
    await c.close()
    # The reset may finish just after the 221 went out.
    await until(lambda: "RSET" in fake_mx.commands, "the remote's RSET")
    assert fake_mx.commands[-1] == "RSET" and "DATA" not in fake_mx.commands
    # The reset session went back to the pool: the next message reuses it.
    got = await send(*where(svc), SENDER, ["c@example.test"])
    assert got.data is not None and got.data[0] == 250
    assert fake_mx.connections == 1 and fake_mx.messages[0].rcpt_tos == ("c@example.test",)


async def test_a_retried_message_carries_exactly_one_received_header(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    """§2: the bytes are forwarded unchanged apart from ONE Received: header, retries too."""
    fake_mx.rcpt_replies["later@example.test"] = "451 4.3.0 Try again later"
    overrides = routes(example_test=fake_mx)
    overrides["queue"] = {"poll_interval": 0.05}
    svc = await relay_service(overrides)
    body = b"From: app@sender.test\r\nSubject: once\r\n\r\nhello\r\n"
    client = await open_client(*where(svc))
    try:
        got = await transaction(client, SENDER, ["later@example.test"], body)
    finally:
        await client.quit()
    assert got.data is not None and got.data[0] == 250 and fake_mx.messages == []
    fake_mx.rcpt_replies.clear()
    assert svc.spool is not None
    assert svc.spool.retry_now(None, datetime.now(UTC)) == 1
    await until(lambda: fake_mx.messages, "the retried message at the remote")
    (msg,) = fake_mx.messages
    assert msg.data.count(b"Received: ") == 1 and msg.data.startswith(b"Received: from ")
    assert msg.data.endswith(body)
