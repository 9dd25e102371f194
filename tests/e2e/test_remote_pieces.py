"""End to end: a remote that writes every reply in pieces gets exactly its verdicts relayed.

Real TCP cuts a remote's writes anywhere; loopback tests never did, so a reply reader that
took "part of a line arrived" for "a reply arrived" (and answered 451 4.3.0) went unseen.
Here the fake MX writes every reply (greeting, EHLO, MAIL, RCPT, 354, the DATA reply) in
pieces 30 ms apart: cut in thirds (mid-line, mid-code) or a line at a time (Gmail's
three-line 550). bouncer runs on uvloop as in production, and on asyncio's loop.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest

from relay.config.schema import HostPort
from relay.outbound.delivery import Delivery
from relay.outbound.pool import SessionPool
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.values import Route, Target
from tests.e2e.test_relay import MSG, converse, routes, send
from tests.support.fake_mx import FakeMX, by_line, in_thirds

# Gmail's answer for a mailbox that does not exist, as it writes it (three lines).
GMAIL_NO_USER = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
)
DATA_OK = "250-2.0.0 Ok: queued as PIECES\r\n250 2.0.0 Thank you"
SETTINGS = OutboundSettings("relay.test", 2.0, 5.0, "off")

pytestmark = pytest.mark.both_loops  # uvloop as in production, and asyncio's own loop


@pytest.mark.parametrize("cut", [in_thirds, by_line], ids=["thirds", "lines"])
async def test_replies_in_pieces_are_relayed_exactly(
    make_fake_mx: Any, relay_service: Any, cut: Any
) -> None:
    mx: FakeMX = await make_fake_mx(pieces=cut, data_reply=DATA_OK)
    mx.rcpt_replies["dead@example.test"] = GMAIL_NO_USER
    svc = await relay_service(routes(example_test=mx))
    for i in range(2):
        body = MSG + f"message {i}\r\n".encode()
        out = await converse(
            svc, send("a@sender.test", [f"live{i}@example.test", "dead@example.test"], body)
        )
        assert out["rcpt"][f"live{i}@example.test"][0] == 250
        if i == 0:  # the remote's own words, from all three lines
            code, text = out["rcpt"]["dead@example.test"]
            assert code == 550 and text.startswith(b"5.1.1 host 127.0.0.1[127.0.0.1] said:")
            assert b"reach does not exist. Please try double-checking" in text
            assert text.endswith(
                b"unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
            )
        else:  # the hard bounce was recorded: now refused from the store, no remote traffic
            code, text = out["rcpt"]["dead@example.test"]
            assert code == 550 and text.startswith(b"5.1.1"), text
        assert out["data"][0] == 250, out["data"]
    # Exactly one delivery per message, nothing queued for a retry that would duplicate it.
    for i, m in enumerate(mx.messages):
        assert m.data.endswith(MSG + f"message {i}\r\n".encode())
    assert len(mx.messages) == 2, mx.commands
    assert [m.rcpt_tos for m in mx.messages] == [("live0@example.test",), ("live1@example.test",)]
    assert mx.rcpts.count("dead@example.test") == 1
    assert svc.spool is not None and not list(svc.spool.messages())


async def test_the_queue_runners_delivery_reads_replies_in_pieces(make_fake_mx: Any) -> None:
    # Retries and DSNs go through Delivery.deliver_message: the same reader, the same verdicts.
    mx: FakeMX = await make_fake_mx(pieces=in_thirds, data_reply=DATA_OK)
    mx.rcpt_replies["dead@example.test"] = GMAIL_NO_USER
    resolver = MXResolver(
        build_resolver([HostPort("127.0.0.1", 9)], 0.2), routes={"example.test": mx.address}
    )
    delivery = Delivery(resolver, SessionPool(partial(open_session, settings=SETTINGS)))
    try:
        out = await delivery.deliver_message(
            "a@sender.test", ["dead@example.test", "ok@example.test"], MSG
        )
    finally:
        await delivery.pool.close()
    dead, ok = out["dead@example.test"], out["ok@example.test"]
    assert (dead.reply.code, dead.reply.enhanced, dead.stage) == (550, "5.1.1", "RCPT")
    assert len(dead.reply.text.split("\n")) == 3
    assert (ok.reply.code, ok.stage, ok.reply.text) == (
        250,
        "DATA",
        "Ok: queued as PIECES\nThank you",
    )
    assert [m.rcpt_tos for m in mx.messages] == [("ok@example.test",)]


async def test_a_reply_whose_code_changes_mid_reply_is_soft_and_ends_the_session() -> None:
    # RFC 5321 §4.2.1: one code on every line. "550-... / 250 ..." could be read as either;
    # bouncer guesses neither: the command gets a soft 4.4.2 (retried), the session closes.
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 odd.test ESMTP\r\n")
            await reader.readline()
            writer.write(b"250-odd.test\r\n250 PIPELINING\r\n")
            await reader.readline()  # MAIL and RCPT, pipelined
            await reader.readline()
            writer.write(b"250 2.1.0 Ok\r\n550-5.1.1 no such")
            await writer.drain()
            await asyncio.sleep(0.03)  # the remote's pause mid-reply: the case under test
            writer.write(b" user\r\n250 2.1.5 Ok\r\n")
            await reader.read()  # until bouncer hangs up
        finally:
            writer.close()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        route = Route("odd.test", (Target("odd.test", "127.0.0.1", port),))
        session = await open_session(route, SETTINGS)
        assert isinstance(session, RemoteSession)
        mail, rcpt = await session.mail_rcpt("a@sender.test", [], "b@odd.test")
        assert mail.code == 250
        assert rcpt is not None and (rcpt.code, rcpt.enhanced) == (451, "4.4.2"), rcpt
        assert "reply code changed" in rcpt.text and not session.alive
        await asyncio.wait_for(served.wait(), 5)  # bouncer hung up: the remote saw EOF
    finally:
        server.close()
