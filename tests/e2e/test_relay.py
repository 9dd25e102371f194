"""End to end: Python's smtplib -> bouncer (real Service on loopback) -> fake MX / real DNS.

The client runs in a thread (smtplib blocks) while bouncer and the fake remotes run on
the test's loop. Each test asserts the reply the client got AND what the remote saw.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from relay.service import Service
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX

MSG = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello there.\r\n"


def _client(svc: Service) -> smtplib.SMTP:
    host, port = svc.addresses[0]
    return smtplib.SMTP(host, port, local_hostname="client.test", timeout=20)


async def converse(svc: Service, script: Callable[[smtplib.SMTP], Any]) -> Any:
    """Run `script(client)` in a thread against bouncer; returns what it returns."""

    def run() -> Any:
        client = _client(svc)
        try:
            return script(client)
        finally:
            try:
                client.quit()
            except smtplib.SMTPException:
                client.close()

    return await asyncio.to_thread(run)


def send(sender: str, rcpts: list[str], data: bytes = MSG) -> Callable[[smtplib.SMTP], Any]:
    """A script: EHLO, MAIL, each RCPT, DATA if any accepted; returns all replies."""

    def script(c: smtplib.SMTP) -> dict[str, Any]:
        c.ehlo()
        out: dict[str, Any] = {"ehlo": c.esmtp_features, "mail": c.mail(sender), "rcpt": {}}
        for r in rcpts:
            out["rcpt"][r] = c.rcpt(r)
        if any(code == 250 for code, _ in out["rcpt"].values()):
            out["data"] = c.data(data)
        return out

    return script


def routes(**pairs: FakeMX) -> dict[str, Any]:
    return {"delivery": {"routes": {d.replace("_", "."): mx.address for d, mx in pairs.items()}}}


async def test_good_mail_arrives_before_the_client_gets_250(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    svc = await relay_service(routes(example_test=fake_mx))
    out = await converse(svc, send("a@sender.test", ["b@example.test"]))
    assert {"pipelining", "enhancedstatuscodes", "smtputf8", "8bitmime", "size"} <= set(out["ehlo"])
    assert out["rcpt"]["b@example.test"][0] == 250
    code, text = out["data"]
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert 10 <= len(queue_id) <= 12 and queue_id == queue_id.upper()
    # The remote had the message when the client got its 250 (converse returned after DATA).
    (msg,) = fake_mx.messages
    assert msg.rcpt_tos == ("b@example.test",) and msg.mail_from == "a@sender.test"
    head, _, rest = msg.data.partition(b"\r\n\tby relay.test (bouncer) with ESMTP id ")
    assert head == b"Received: from client.test (unknown [127.0.0.1])"
    assert rest.startswith(queue_id.encode()) and rest.count(b"Received:") == 0
    assert msg.data.endswith(MSG)  # the bytes are forwarded unchanged after the header


async def test_rcpt_refusal_reaches_the_client_naming_the_host(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 <dead@example.test>: No such user"
    svc = await relay_service(routes(example_test=fake_mx))
    out = await converse(svc, send("a@sender.test", ["dead@example.test", "ok@example.test"]))
    code, text = out["rcpt"]["dead@example.test"]
    assert code == 550
    assert text.startswith(b"5.1.1 host mx.fake.test[127.0.0.1] said:") or text.startswith(
        b"5.1.1 host 127.0.0.1[127.0.0.1] said:"
    )
    assert b"No such user" in text
    assert out["data"][0] == 250
    assert fake_mx.messages[0].rcpt_tos == ("ok@example.test",)


async def test_data_refusal_comes_back_verbatim(fake_mx: FakeMX, relay_service: Any) -> None:
    fake_mx.data_reply = "554 5.7.1 Message rejected: looks like spam"
    svc = await relay_service(routes(example_test=fake_mx))
    out = await converse(svc, send("a@sender.test", ["b@example.test"]))
    code, text = out["data"]
    assert code == 554
    assert text.startswith(b"5.7.1 host 127.0.0.1[127.0.0.1] said: Message rejected")
    assert fake_mx.messages == []


async def test_mixed_outcomes_across_two_domains_250_and_dsn_queued(
    make_fake_mx: Any, relay_service: Any
) -> None:
    good = await make_fake_mx()
    bad = await make_fake_mx(data_reply="552 5.2.2 Mailbox full")
    svc = await relay_service(routes(one_test=good, two_test=bad))
    out = await converse(svc, send("a@sender.test", ["x@one.test", "y@two.test"]))
    assert out["data"][0] == 250
    assert good.messages and good.messages[0].rcpt_tos == ("x@one.test",)
    assert bad.messages == []
    # The hard-failed recipient became a DSN to the sender in the spool (Q sends it).
    assert svc.spool is not None
    (dsn,) = svc.spool.messages()  # on disk before the 250
    assert dsn.kind == "dsn" and [r.recipient for r in dsn.recipients] == ["a@sender.test"]


async def test_sessions_are_reused_across_messages(fake_mx: FakeMX, relay_service: Any) -> None:
    svc = await relay_service(routes(example_test=fake_mx))
    for i in range(3):
        out = await converse(svc, send("a@sender.test", [f"r{i}@example.test"]))
        assert out["data"][0] == 250
    assert len(fake_mx.messages) == 3
    assert fake_mx.connections == 1  # one remote session carried all three


async def test_suppressed_address_is_refused_without_remote_traffic(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    svc = await relay_service(routes(example_test=fake_mx))
    first = await converse(svc, send("a@sender.test", ["dead@example.test"]))
    assert first["rcpt"]["dead@example.test"][0] == 550
    seen = len(fake_mx.rcpts)
    second = await converse(svc, send("a@sender.test", ["Dead@Example.test"]))
    code, text = second["rcpt"]["Dead@Example.test"]
    assert code == 550 and text.startswith(b"5.1.1")
    assert len(fake_mx.rcpts) == seen  # bouncer answered from the store


async def test_relay_denied_for_a_client_not_allowed(fake_mx: FakeMX, relay_service: Any) -> None:
    overrides = routes(example_test=fake_mx)
    overrides["server"] = {"allowed_clients": ["192.0.2.0/24"]}
    svc = await relay_service(overrides)

    def script(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo()
        return c.mail("a@sender.test")

    code, text = await converse(svc, script)
    assert code == 554 and text.startswith(b"5.7.1")
    assert fake_mx.connections == 0


@pytest.mark.parametrize(
    "body", [b"Subject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<x@y>\r\n", b"a\rb\r\n"]
)
async def test_bare_lf_or_cr_refused_and_never_forwarded(
    fake_mx: FakeMX, relay_service: Any, body: bytes
) -> None:
    svc = await relay_service(routes(example_test=fake_mx))

    def script(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo()
        c.mail("a@sender.test")
        c.rcpt("b@example.test")
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(body + b".\r\n")  # raw: smtplib.data() would repair the line endings
        return c.getreply()

    code, text = await converse(svc, script)
    assert code == 550 and text.startswith(b"5.5.2")
    assert fake_mx.messages == []
    assert "RSET" in fake_mx.commands  # the remote transaction was abandoned, not left open


async def test_syntax_and_recipient_limit(fake_mx: FakeMX, relay_service: Any) -> None:
    overrides = routes(example_test=fake_mx)
    overrides["server"] = {"max_recipients": 2}
    svc = await relay_service(overrides)
    rcpts = ["not-an-address", "a@example.test", "b@example.test", "c@example.test"]
    out = await converse(svc, send("a@sender.test", rcpts))
    assert out["rcpt"]["not-an-address"][0] == 501
    assert out["rcpt"]["not-an-address"][1].startswith(b"5.1.3")
    assert [out["rcpt"][r][0] for r in rcpts[1:]] == [250, 250, 452]
    assert out["rcpt"]["c@example.test"][1].startswith(b"4.5.3")
    assert fake_mx.messages[0].rcpt_tos == ("a@example.test", "b@example.test")


async def test_rset_resets_the_remote_transaction(fake_mx: FakeMX, relay_service: Any) -> None:
    svc = await relay_service(routes(example_test=fake_mx))

    def script(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo()
        c.mail("a@sender.test")
        c.rcpt("b@example.test")
        c.rset()
        c.mail("a@sender.test")
        c.rcpt("c@example.test")
        return c.data(MSG)

    code, _ = await converse(svc, script)
    assert code == 250
    assert fake_mx.commands[:4] == [
        "MAIL a@sender.test",
        "RCPT b@example.test",
        "RSET",
        "MAIL a@sender.test",
    ]
    assert fake_mx.messages[0].rcpt_tos == ("c@example.test",)
    assert fake_mx.connections == 1


async def test_soft_rcpt_pass_mode_returns_the_4xx(fake_mx: FakeMX, relay_service: Any) -> None:
    fake_mx.rcpt_replies["full@example.test"] = "452 4.2.2 Mailbox full, try later"
    overrides = routes(example_test=fake_mx)
    overrides["policy"] = {"soft_bounce": "pass"}
    svc = await relay_service(overrides)
    out = await converse(svc, send("a@sender.test", ["full@example.test"]))
    code, text = out["rcpt"]["full@example.test"]
    assert code == 452 and text.startswith(b"4.2.2 host ")
    assert "data" not in out


async def test_soft_rcpt_queue_mode_accepts_and_spools(fake_mx: FakeMX, relay_service: Any) -> None:
    fake_mx.rcpt_replies["later@example.test"] = "451 4.3.0 Try again later"
    svc = await relay_service(routes(example_test=fake_mx))
    out = await converse(svc, send("a@sender.test", ["later@example.test", "now@example.test"]))
    assert out["rcpt"]["later@example.test"][0] == 250
    assert out["data"][0] == 250
    assert fake_mx.messages[0].rcpt_tos == ("now@example.test",)
    assert svc.spool is not None
    (queued,) = svc.spool.messages()
    assert [r.recipient for r in queued.recipients] == ["later@example.test"]


async def test_hanging_greeting_and_silent_dns_do_not_hang_the_client(
    make_fake_mx: Any, dns_server: DNSServer, relay_service: Any
) -> None:
    silent = await make_fake_mx(greeting="hang")
    dns_server.never_answer("slow.test")
    overrides = routes(hang_test=silent)
    overrides["delivery"].update(connect_timeout=0.5)
    overrides["dns"] = {"nameservers": [dns_server.nameserver], "timeout": 0.5}
    overrides["policy"] = {"soft_bounce": "pass"}
    svc = await relay_service(overrides)
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = await converse(svc, send("a@sender.test", ["x@hang.test", "y@slow.test"]))
    elapsed = loop.time() - started
    code, text = out["rcpt"]["x@hang.test"]
    assert code == 451 and text.startswith(b"4.4.1")
    code, text = out["rcpt"]["y@slow.test"]
    assert code == 451 and text.startswith(b"4.4.3")
    assert elapsed < 4, elapsed  # 0.5 s connect + 0.5 s DNS, with slack for a busy machine


async def test_events_one_per_recipient_outcome(fake_mx: FakeMX, relay_service: Any) -> None:
    from policy.decide import Disposition
    from relay.observe.events import MessageEvent, RecipientEvent

    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    # The remote takes 20 ms over DATA, so the transmission delay is measurable: delays are
    # rounded to milliseconds and a loopback DATA alone can round to 0.
    fake_mx.data_delay = 0.02
    svc = await relay_service(routes(example_test=fake_mx))
    seen: list[Any] = []
    svc.events.subscribe(seen.append)
    out = await converse(svc, send("a@sender.test", ["dead@example.test", "ok@example.test"]))
    queue_id = out["data"][1].decode().rsplit(" ", 1)[1]
    rcpt_events = {e.recipient: e for e in seen if isinstance(e, RecipientEvent)}
    assert set(rcpt_events) == {"dead@example.test", "ok@example.test"}
    dead, ok = rcpt_events["dead@example.test"], rcpt_events["ok@example.test"]
    assert (dead.status, dead.stage, dead.reply.enhanced) == (Disposition.BOUNCED, "RCPT", "5.1.1")
    assert dead.verdict is not None and dead.verdict.klass == "hard"
    assert (ok.status, ok.stage, ok.queue_id) == (Disposition.DELIVERED, "DATA", queue_id)
    assert ok.relay == f"127.0.0.1[127.0.0.1]:{fake_mx.port}"
    # Postfix's delays=a/b/c/d: nothing waits in a queue manager live; the rest is measured.
    assert ok.delays[1] == 0.0 and all(d >= 0 for d in ok.delays)
    assert ok.delays[3] >= 0.02 and sum(ok.delays) <= ok.delay + 0.01
    (msg,) = [e for e in seen if isinstance(e, MessageEvent)]
    assert (msg.queue_id, msg.sender, msg.nrcpt) == (queue_id, "a@sender.test", 1)


class _BrokenStore:
    """A store whose disk is full: reads work, every write fails (as LMDB's MapFullError)."""

    def check(self, address: str, now: Any) -> None:
        return None

    def has_records(self, address: str) -> bool:
        return True  # so the success write is attempted (and fails)

    def note_delivered(self, address: str, now: Any) -> None:
        return None  # memory only: no disk to fail

    def _fail(self, *args: Any) -> None:
        from policy.suppression.store import StoreError

        raise StoreError("map full")

    record_refusal = record_verdict = record_success = _fail


async def test_store_write_failure_is_451_and_the_server_keeps_serving(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    svc = await relay_service(routes(example_test=fake_mx))
    svc.pipeline.store = _BrokenStore()
    out = await converse(svc, send("a@sender.test", ["dead@example.test", "ok@example.test"]))
    code, text = out["rcpt"]["dead@example.test"]
    assert code == 451 and text.startswith(b"4.3.0")
    assert out["data"][0] == 250  # the success record fails too, but the mail was delivered
    again = await converse(svc, send("a@sender.test", ["ok@example.test"]))
    assert again["data"][0] == 250


async def test_size_limit_enforced_and_remote_transaction_released(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    overrides = routes(example_test=fake_mx)
    overrides["server"] = {"max_message_size": 1000}
    svc = await relay_service(overrides)

    def script(c: smtplib.SMTP) -> tuple[Any, Any, Any]:
        c.ehlo()
        declared = c.mail("a@sender.test", ["SIZE=5000"])  # too big by its own account
        c.mail("a@sender.test")
        c.rcpt("b@example.test")
        too_big = c.data(b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 20)
        c.mail("a@sender.test")
        c.rcpt("c@example.test")
        return declared, too_big, c.data(MSG)

    declared, too_big, ok = await converse(svc, script)
    assert declared[0] == 552 and too_big[0] == 552 and ok[0] == 250
    assert fake_mx.messages[0].rcpt_tos == ("c@example.test",)
    assert "RSET" in fake_mx.commands and fake_mx.connections == 1


async def test_dns_verdicts_reach_the_client_and_bad_domains_are_remembered(
    dns_server: DNSServer, fake_mx: FakeMX, relay_service: Any
) -> None:
    dns_server.null_mx("nomail.test")
    dns_server.nxdomain("gone.test")
    dns_server.mx("ok.test", (10, "mx.ok.test"))
    dns_server.a("mx.ok.test", "127.0.0.1")
    svc = await relay_service(
        {"dns": {"nameservers": [dns_server.nameserver]}, "delivery": {"port": fake_mx.port}}
    )
    rcpts = ["a@nomail.test", "b@gone.test", "c@ok.test"]
    out = await converse(svc, send("s@sender.test", rcpts))
    assert out["rcpt"]["a@nomail.test"][0] == 556
    assert out["rcpt"]["a@nomail.test"][1].startswith(b"5.1.10")
    assert out["rcpt"]["b@gone.test"][0] == 550
    assert out["rcpt"]["b@gone.test"][1].startswith(b"5.1.2")
    assert out["data"][0] == 250 and fake_mx.messages[0].rcpt_tos == ("c@ok.test",)
    # The non-existent domain is now suppressed as a domain: another address there is
    # refused from the store (5.1.2) without asking DNS again.
    asked = len(dns_server.queries)
    again = await converse(svc, send("s@sender.test", ["other@gone.test"]))
    code, text = again["rcpt"]["other@gone.test"]
    assert code == 550 and text.startswith(b"5.1.2")
    assert len(dns_server.queries) == asked


async def test_remote_that_stalls_after_greeting_times_out_softly(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_delay = 3
    overrides = routes(example_test=fake_mx)
    overrides["delivery"].update(command_timeout=0.5)
    overrides["policy"] = {"soft_bounce": "pass"}
    svc = await relay_service(overrides)
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = await converse(svc, send("a@sender.test", ["b@example.test"]))
    code, text = out["rcpt"]["b@example.test"]
    assert code == 451 and text.startswith(b"4.4.2") and b"timed out" in text
    assert loop.time() - started < 2.5


async def test_per_recipient_senders_over_the_session_cap_never_wait_for_themselves(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    overrides = routes(example_test=fake_mx)
    overrides["delivery"].update(max_sessions_per_destination=2, connect_timeout=5)
    svc = await relay_service(overrides)
    # VERP-style: every recipient has its own remote envelope sender, so its own session.
    svc.delivery.remote_sender = lambda s, r, q: f"b+{r.split('@')[0]}@sender.test"
    rcpts = [f"r{i}@example.test" for i in range(4)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = await converse(svc, send("a@sender.test", rcpts))
    assert loop.time() - started < 3  # no waiting out the 5 s slot timeout
    assert [out["rcpt"][r][0] for r in rcpts] == [250, 250, 250, 250]
    assert out["data"][0] == 250
    assert sorted(m.rcpt_tos[0] for m in fake_mx.messages) == rcpts[:2]
    assert svc.spool is not None
    (queued,) = svc.spool.messages()  # the two over the cap wait in the retry queue
    assert sorted(r.recipient for r in queued.recipients) == rcpts[2:]
