"""LMTP (RFC 2033): a raw client -> bouncer's LMTP listener (real Service) -> fake remotes.

After DATA each accepted recipient gets its own reply, in RCPT order, from its own remote;
a failure the client hears is never also a DSN. And what relay/inbound/lmtp.py relies on
from aiosmtpd's `LMTP` class is pinned here, against aiosmtpd itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from relay.config.load import ConfigError, config_from_dict
from relay.inbound.lmtp import InboundLMTP
from relay.inbound.server import InboundSMTP
from relay.observe.probes import health_checks
from relay.service import Service
from tests.support.fake_mx import FakeMX

MSG = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello there.\r\n"
REFUSED = "554 5.7.1 Message rejected: looks like spam"
BUSY = "451 4.3.0 Try again later"


class Client:
    """A raw LMTP (or SMTP) client on asyncio streams: write lines, read whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.features: list[str] = []

    async def reply(self) -> tuple[int, str]:
        """One reply: its code and its lines' text joined by newlines."""
        texts = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 20)).decode()
            assert line.endswith("\r\n"), f"connection closed mid-reply: {line!r}"
            texts.append(line[4:].rstrip("\r\n"))
            if line[3] == " ":
                return int(line[:3]), "\n".join(texts)

    async def send(self, *lines: str | bytes) -> None:
        """Write `lines` in one go (a pipelined group when there are several)."""
        data = b"".join(x if isinstance(x, bytes) else x.encode() + b"\r\n" for x in lines)
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> tuple[int, str]:
        await self.send(line)
        return await self.reply()

    async def replies(self, n: int) -> list[tuple[int, str]]:
        return [await self.reply() for _ in range(n)]

    async def transaction(
        self,
        rcpts: list[str],
        message: bytes = MSG,
        sender: str = "a@sender.test",
        smtp: bool = False,
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """MAIL, each RCPT, DATA and the message: (the RCPT replies, the replies after the
        message: one per accepted recipient, or over `smtp` the one)."""
        assert (await self.command(f"MAIL FROM:<{sender}>"))[0] == 250
        rcpt = [await self.command(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = sum(code == 250 for code, _ in rcpt)
        assert (await self.command("DATA"))[0] == 354
        await self.send(message + b".\r\n")
        return rcpt, await self.replies(1 if smtp else accepted)


@pytest.fixture
async def lmtp() -> AsyncIterator[Any]:
    """`client = await lmtp(svc)`: connected and greeted with LHLO; closed after the test."""
    opened: list[Client] = []

    async def connect(svc: Service, lhlo: bool = True) -> Client:
        host, port = svc.lmtp_addresses[0]
        client = Client(*await asyncio.open_connection(host, port))
        opened.append(client)
        code, text = await client.reply()
        assert code == 220 and "LMTP" in text
        if lhlo:
            code, text = await client.command("LHLO client.test")
            assert code == 250, text
            client.features = text.upper().split("\n")
        return client

    yield connect
    for client in opened:
        client.writer.close()


def config(
    *, policy: dict[str, Any] | None = None, server: dict[str, Any] | None = None, **routes: FakeMX
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "server": {"lmtp_listen": ["127.0.0.1:0"], **(server or {})},
        "delivery": {"routes": {d.replace("_", "."): mx.address for d, mx in routes.items()}},
    }
    if policy:
        table["policy"] = policy
    return table


async def two_remotes(
    make_fake_mx: Any, relay_service: Any, data_reply: str = REFUSED, **policy: str
) -> tuple[Service, FakeMX, FakeMX]:
    """A service routing one.test to a remote that takes mail, two.test to one that
    answers DATA with `data_reply`."""
    good = await make_fake_mx()
    other = await make_fake_mx(data_reply=data_reply)
    return await relay_service(config(one_test=good, two_test=other, policy=policy)), good, other


def ok(reply: tuple[int, str], queue_id: str) -> bool:
    return reply == (250, f"2.0.0 Ok: queued as {queue_id}")


# --- the per-recipient replies ---------------------------------------------------------------


async def test_three_recipients_two_remotes_one_refusing_at_data_three_replies_no_dsn(
    make_fake_mx: Any, relay_service: Any, lmtp: Any
) -> None:
    svc, good, bad = await two_remotes(make_fake_mx, relay_service)
    client = await lmtp(svc)
    assert {"PIPELINING", "ENHANCEDSTATUSCODES"} <= set(client.features)
    # RCPT order differs from the order of the remote sessions: replies follow RCPT order.
    rcpt, data = await client.transaction(["a@one.test", "c@two.test", "b@one.test"])
    assert [code for code, _ in rcpt] == [250, 250, 250]
    first, refused, third = data
    assert first[0] == 250 and first[1].startswith("2.0.0 Ok: queued as ")
    queue_id = first[1].rsplit(" ", 1)[1]
    assert third == first
    assert refused == (
        554,
        "5.7.1 host 127.0.0.1[127.0.0.1] said: Message rejected: looks like spam",
    )
    (msg,) = good.messages
    assert msg.rcpt_tos == ("a@one.test", "b@one.test")
    assert b"with LMTP id " + queue_id.encode() in msg.data  # RFC 3848's keyword
    assert bad.messages == []
    assert svc.spool is not None and svc.spool.messages() == []  # the client bounces it: no DSN
    # The connection goes on: the next transaction is answered as usual.
    _, again = await client.transaction(["d@one.test"])
    assert again[0][0] == 250 and again[0][1] != first[1]  # a new queue id


async def test_the_same_mixed_outcome_over_smtp_is_one_250_and_a_dsn(
    make_fake_mx: Any, relay_service: Any, lmtp: Any
) -> None:
    """The contrast LMTP exists for, on one service: SMTP's one reply needs the DSN."""
    svc, good, bad = await two_remotes(make_fake_mx, relay_service)
    host, port = svc.addresses[0]
    smtp = Client(*await asyncio.open_connection(host, port))
    try:
        await smtp.reply()
        assert (await smtp.command("EHLO client.test"))[0] == 250
        rcpts = ["a@one.test", "c@two.test", "b@one.test"]
        _, data = await smtp.transaction(rcpts, smtp=True)
        assert (await smtp.command("NOOP"))[0] == 250  # no further DATA reply was pending
    finally:
        smtp.writer.close()
    assert data[0][0] == 250
    assert svc.spool is not None
    (dsn,) = svc.spool.messages()
    assert dsn.kind == "dsn"


async def test_soft_failure_at_data_queue_mode_is_250_and_queued_pass_mode_is_the_4xx(
    make_fake_mx: Any, relay_service: Any, lmtp: Any
) -> None:
    svc, good, busy = await two_remotes(make_fake_mx, relay_service, BUSY)
    _, data = await (await lmtp(svc)).transaction(["a@one.test", "b@two.test"])
    queue_id = data[0][1].rsplit(" ", 1)[1]
    assert ok(data[0], queue_id) and ok(data[1], queue_id)
    assert svc.spool is not None
    (queued,) = svc.spool.messages()
    assert queued.kind != "dsn" and [r.recipient for r in queued.recipients] == ["b@two.test"]

    svc, _, _ = await two_remotes(make_fake_mx, relay_service, BUSY, soft_bounce="pass")
    _, data = await (await lmtp(svc)).transaction(["a@one.test", "b@two.test"])
    assert data[0][0] == 250
    assert data[1] == (451, "4.3.0 host 127.0.0.1[127.0.0.1] said: Try again later")
    assert svc.spool is not None and svc.spool.messages() == []


async def test_recipient_queued_at_rcpt_gets_250_with_the_queue_id(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    fake_mx.rcpt_replies["later@one.test"] = "452 4.2.2 Mailbox full, try later"
    svc = await relay_service(config(one_test=fake_mx))
    rcpt, data = await (await lmtp(svc)).transaction(["later@one.test", "now@one.test"])
    assert rcpt[0][0] == 250 and "will retry" in rcpt[0][1]
    queue_id = data[1][1].rsplit(" ", 1)[1]
    assert ok(data[0], queue_id) and ok(data[1], queue_id)
    assert fake_mx.messages[0].rcpt_tos == ("now@one.test",)


async def test_refused_rcpt_gets_no_data_reply(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    fake_mx.rcpt_replies["dead@one.test"] = "550 5.1.1 No such user"
    svc = await relay_service(config(one_test=fake_mx))
    client = await lmtp(svc)
    rcpt, data = await client.transaction(["dead@one.test", "ok@one.test"])
    assert [code for code, _ in rcpt] == [550, 250]
    assert len(data) == 1 and data[0][0] == 250
    assert (await client.command("NOOP"))[0] == 250  # nothing more was pending


# --- the same hygiene and limits as the SMTP listener -------------------------------------


async def test_pipelined_group_mail_rcpts_data(
    make_fake_mx: Any, relay_service: Any, lmtp: Any
) -> None:
    svc, good, bad = await two_remotes(make_fake_mx, relay_service)
    client = await lmtp(svc)
    # RFC 2920: MAIL, the RCPTs and DATA in one write; then the message.
    await client.send(
        "MAIL FROM:<a@sender.test>",
        "RCPT TO:<a@one.test>",
        "RCPT TO:<b@two.test>",
        "RCPT TO:<c@one.test>",
        "DATA",
    )
    group = await client.replies(5)
    assert [code for code, _ in group] == [250, 250, 250, 250, 354]
    await client.send(MSG + b".\r\n", "QUIT")
    data = await client.replies(3)
    assert [code for code, _ in data] == [250, 554, 250]
    assert (await client.reply())[0] == 221
    assert good.messages[0].rcpt_tos == ("a@one.test", "c@one.test")


async def test_rset_resets_the_remote_transaction(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    svc = await relay_service(config(one_test=fake_mx))
    client = await lmtp(svc)
    assert (await client.command("MAIL FROM:<a@sender.test>"))[0] == 250
    assert (await client.command("RCPT TO:<b@one.test>"))[0] == 250
    assert (await client.command("RSET"))[0] == 250
    _, data = await client.transaction(["c@one.test"])
    assert len(data) == 1 and data[0][0] == 250
    assert fake_mx.commands[:3] == ["MAIL a@sender.test", "RCPT b@one.test", "RSET"]
    assert fake_mx.messages[0].rcpt_tos == ("c@one.test",)


async def test_size_limit_is_one_552_per_recipient_and_the_session_goes_on(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    client = await lmtp(
        await relay_service(config(one_test=fake_mx, server={"max_message_size": 1000}))
    )
    code, _ = await client.command("MAIL FROM:<a@sender.test> SIZE=5000")
    assert code == 552  # declared too big: refused at MAIL, as over SMTP
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 20
    _, data = await client.transaction(["a@one.test", "b@one.test"], big)
    assert [code for code, _ in data] == [552, 552]
    assert all(text.startswith("5.3.4 ") for _, text in data)
    _, data = await client.transaction(["c@one.test"])
    assert data[0][0] == 250
    assert [m.rcpt_tos for m in fake_mx.messages] == [("c@one.test",)]


async def test_recipient_limit_and_content_refusal_are_answered_per_recipient(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    client = await lmtp(await relay_service(config(one_test=fake_mx, server={"max_recipients": 2})))
    rcpt, data = await client.transaction(["a@one.test", "b@one.test", "c@one.test"])
    assert [code for code, _ in rcpt] == [250, 250, 452] and rcpt[2][1].startswith("4.5.3")
    assert [code for code, _ in data] == [250, 250]
    # Bare LF (SMTP smuggling) refuses the whole message: each recipient hears it.
    _, data = await client.transaction(["d@one.test", "e@one.test"], b"Subject: x\n\nbody\r\n")
    assert [code for code, _ in data] == [550, 550]
    assert all(text.startswith("5.5.2 ") for _, text in data)
    assert [m.rcpt_tos for m in fake_mx.messages] == [("a@one.test", "b@one.test")]


async def test_helo_and_ehlo_refused_and_relay_access_as_over_smtp(
    fake_mx: FakeMX, relay_service: Any, lmtp: Any
) -> None:
    table = config(one_test=fake_mx)
    table["server"]["allowed_clients"] = ["192.0.2.0/24"]  # not us: we must authenticate
    svc = await relay_service(table)
    client = await lmtp(svc, lhlo=False)
    assert (await client.command("EHLO client.test"))[0] == 500
    assert (await client.command("HELO client.test"))[0] == 500
    assert (await client.command("LHLO client.test"))[0] == 250
    code, text = await client.command("MAIL FROM:<a@sender.test>")
    assert (code, text) == (554, "5.7.1 Relay access denied")
    assert fake_mx.connections == 0


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lmtp_listen", "problem"),
    [
        (["127.0.0.1:25"], "must not use port 25"),
        (["127.0.0.1"], "give host:port"),
        (["127.0.0.1:2525"], "also in server.listen"),
        (["127.0.0.1:99999"], "not host:port"),
    ],
)
def test_lmtp_listen_checked(lmtp_listen: list[str], problem: str) -> None:
    table = {"server": {"listen": ["127.0.0.1:2525"], "lmtp_listen": lmtp_listen}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(table)
    (found,) = err.value.problems
    assert found.startswith("server.lmtp_listen[0]: ") and problem in found


def test_lmtp_listen_empty_by_default() -> None:
    assert config_from_dict({}).server.lmtp_listen == ()


# --- what relay/inbound/lmtp.py relies on from aiosmtpd ---------------------------------------


class _Stock:
    """A handler for aiosmtpd's own LMTP class: accepts everything, counts EHLO hooks."""

    def __init__(self) -> None:
        self.ehlo_hooks = 0

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        self.ehlo_hooks += 1
        session.host_name = hostname
        return list(responses)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok"


async def test_aiosmtpd_lmtp_answers_data_once_and_routes_lhlo_through_the_ehlo_hook() -> None:
    """If aiosmtpd starts answering DATA per recipient itself (aiosmtpd/aiosmtpd#517 on
    GitHub), InboundLMTP's own answers would come twice: this test fails first, and
    relay/inbound/lmtp.py must change. LHLO must reach handle_EHLO (bouncer adds
    PIPELINING there), and HELO and EHLO must be refused by aiosmtpd's class, which
    InboundLMTP inherits them from."""
    handler = _Stock()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LMTP(handler, loop=loop), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    client = Client(*await asyncio.open_connection(host, port))
    try:
        await client.reply()
        assert (await client.command("EHLO a.test"))[0] == 500
        assert (await client.command("HELO a.test"))[0] == 500
        assert (await client.command("LHLO a.test"))[0] == 250
        assert handler.ehlo_hooks == 1
        await client.send(
            "MAIL FROM:<a@b.test>", "RCPT TO:<x@c.test>", "RCPT TO:<y@c.test>", "DATA"
        )
        assert [code for code, _ in await client.replies(4)] == [250, 250, 250, 354]
        await client.send(MSG + b".\r\n", "NOOP")
        # One reply to DATA for two recipients, then NOOP's: aiosmtpd does not do RFC 2033 §4.2.
        assert await client.replies(2) == [(250, "2.0.0 Ok"), (250, "OK")]
    finally:
        client.writer.close()
        server.close()
        await server.wait_closed()


def test_inbound_lmtp_takes_lhlo_from_aiosmtpd_and_data_from_bouncer() -> None:
    mro = InboundLMTP.__mro__
    assert mro.index(LMTP) < mro.index(InboundSMTP)  # LMTP's LHLO/HELO/EHLO come first
    assert InboundLMTP.smtp_LHLO is LMTP.smtp_LHLO
    assert InboundLMTP.smtp_DATA is InboundSMTP.smtp_DATA  # bouncer's reader, not aiosmtpd's
    assert "answer_data" in InboundLMTP.__dict__


async def test_queue_write_failure_is_451_for_the_queued_recipients_only(
    make_fake_mx: Any, relay_service: Any, lmtp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, good, busy = await two_remotes(make_fake_mx, relay_service, BUSY)
    assert svc.spool is not None

    def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(svc.spool, "accept", broken)
    _, data = await (await lmtp(svc)).transaction(["a@one.test", "b@two.test"])
    assert data[0][0] == 250  # its remote has it: that stays true
    assert data[1] == (451, "4.3.0 Temporary local problem (queue); try again later")


async def test_startup_line_names_the_lmtp_listener_and_health_counts_it(
    fake_mx: FakeMX, relay_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="relay.service")
    svc = await relay_service(config(one_test=fake_mx))
    (host, port), (lhost, lport) = svc.addresses[0], svc.lmtp_addresses[0]
    assert port != lport
    assert f"listening on {host}:{port}, LMTP on {lhost}:{lport}" in caplog.text
    listener = health_checks(svc.store, [*svc.servers, *svc.lmtp_servers])["listener"]
    assert listener()
    for server in svc.lmtp_servers:
        server.close()
        await server.wait_closed()
    assert not listener()  # the LMTP listener down is the service unhealthy
