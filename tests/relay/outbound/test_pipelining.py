"""Remote PIPELINING (RFC 2920) and the DATA encoding of relay/outbound/session.py.

The pipelining server below answers MAIL FROM only once it has read the RCPT TO line
after it: a client that waits for the MAIL reply before sending RCPT would hang there,
so the test can only pass when both commands really go out in one flight.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib.protocol
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config.schema import HostPort
from relay.inbound.server import has_bare_cr_or_lf
from relay.outbound.delivery import Delivery
from relay.outbound.pool import SessionPool
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.values import Route, Target
from relay.outbound.wire import data_done_timeout, wire_message


class PipeliningMX:
    """A raw SMTP server that advertises PIPELINING and holds MAIL's reply until RCPT."""

    def __init__(self, rcpt_reply: bytes = b"250 2.1.5 Ok", mail_reply: bytes = b"250 2.1.0 Ok"):
        self.rcpt_reply = rcpt_reply
        self.mail_reply = mail_reply
        self.lines: list[bytes] = []
        self.data: list[bytes] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 pipe.test ESMTP\r\n")
        held: bytes | None = None
        in_mail = False
        while line := await reader.readline():
            self.lines.append(line.rstrip(b"\r\n"))
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-pipe.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                held = self.mail_reply  # answered after the next command arrived
                continue
            elif verb == b"RCPT":
                if held is not None:
                    writer.write(held + b"\r\n")
                    in_mail, held = held.startswith(b"2"), None
                writer.write((self.rcpt_reply if in_mail else b"503 5.5.1 no MAIL") + b"\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                self.data.append(body)
                in_mail = False
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                break
            else:
                in_mail = False  # RSET, NOOP
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> PipeliningMX:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def pipe_mx() -> AsyncIterator[PipeliningMX]:
    async with PipeliningMX() as mx:
        yield mx


def settings() -> OutboundSettings:
    return OutboundSettings("relay.test", 2.0, 2.0, "off")


def route(mx: PipeliningMX) -> Route:
    return Route(f"[127.0.0.1]:{mx.port}", (Target("127.0.0.1", "127.0.0.1", mx.port),))


async def test_mail_and_first_rcpt_go_in_one_flight(pipe_mx: PipeliningMX) -> None:
    session = await open_session(route(pipe_mx), settings())
    assert isinstance(session, RemoteSession) and session.pipelining
    mail, rcpt = await asyncio.wait_for(
        session.mail_rcpt("a@s.test", ["BODY=8BITMIME"], "b@d.test"), 2
    )
    assert (mail.code, rcpt and rcpt.code) == (250, 250)
    reply = await session.data(b"Subject: x\r\n\r\n.dot\r\n")
    assert reply.code == 250 and pipe_mx.data == [b"Subject: x\r\n\r\n..dot\r\n"]
    await session.quit()
    assert pipe_mx.lines[-1] == b"QUIT"


async def test_refused_mail_gives_no_rcpt_outcome_and_keeps_the_session_in_step() -> None:
    async with PipeliningMX(mail_reply=b"550 5.7.1 sender refused") as mx:
        session = await open_session(route(mx), settings())
        assert isinstance(session, RemoteSession)
        mail, rcpt = await session.mail_rcpt("a@s.test", [], "b@d.test")
        assert (mail.code, mail.enhanced, rcpt) == (550, "5.7.1", None)
        assert await session.rset() and session.alive  # the 503 to RCPT was read, not left over
        await session.quit()


async def test_delivery_pipelines_the_first_recipient_only(pipe_mx: PipeliningMX) -> None:
    pipe_mx.rcpt_reply = b"250 2.1.5 Ok"
    resolver = MXResolver(
        build_resolver([HostPort("127.0.0.1", 9)], 0.2),
        routes={"d.test": f"127.0.0.1:{pipe_mx.port}"},
    )

    async def opener(r: Route) -> Any:
        return await open_session(r, settings())

    delivery = Delivery(resolver, SessionPool(opener))
    out = await asyncio.wait_for(
        delivery.deliver_message("a@s.test", ["x@d.test", "y@d.test"], b"Subject: x\r\n\r\ny\r\n"),
        5,
    )
    assert {r: o.reply.code for r, o in out.items()} == {"x@d.test": 250, "y@d.test": 250}
    verbs = [line.split(b":")[0] for line in pipe_mx.lines[1:5]]
    assert verbs == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA"]
    await delivery.pool.close()


_LINE_ENDINGS = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@given(st.binary(max_size=40).map(lambda b: b.translate(bytes.maketrans(b"abc", b"\r\n."))))
def test_wire_message_and_bare_check_agree_with_the_regex_versions(content: bytes) -> None:
    proto = aiosmtplib.protocol
    expected = proto.PERIOD_REGEX.sub(b"..", proto.normalize_message_line_endings(content))
    assert b"".join(wire_message(content)) == expected + b".\r\n"
    assert has_bare_cr_or_lf(content) == bool(_LINE_ENDINGS.search(content))


async def test_pool_open_count_counts_lent_and_idle_sessions(pipe_mx: PipeliningMX) -> None:
    async def opener(r: Route) -> Any:
        return await open_session(r, settings())

    pool = SessionPool(opener, max_per_destination=3)
    a, b = await pool.acquire(route(pipe_mx)), await pool.acquire(route(pipe_mx))
    assert isinstance(a, RemoteSession) and isinstance(b, RemoteSession)
    assert (pool.open_count, pool.idle_count) == (2, 0)
    pool.release(a)
    assert (pool.open_count, pool.idle_count) == (2, 1)
    pool.discard(b)  # closed, not kept
    assert (pool.open_count, pool.idle_count) == (1, 1)
    again = await pool.acquire(route(pipe_mx))
    assert again is a and pool.open_count == 1
    pool.release(again)
    await pool.close()
    assert pool.open_count == 0


async def test_an_unsolicited_reply_breaks_the_session_instead_of_answering_the_next_command(
    pipe_mx: PipeliningMX,
) -> None:
    session = await open_session(route(pipe_mx), settings())
    assert isinstance(session, RemoteSession)
    # As the transport delivers it: a remote's idle-timeout notice while the session sat idle.
    session.wire.data_received(b"421 4.4.2 pipe.test idle too long\r\n")
    reply = await session.mail("a@s.test")
    assert (reply.code, reply.enhanced, reply.host) == (451, "4.4.2", None)
    assert session.broken and not session.alive
    assert not any(line.startswith(b"MAIL") for line in pipe_mx.lines)  # never sent


def test_the_wait_after_data_grows_with_the_message() -> None:
    # A 35 MB message at the slowest rate granted needs more than a minute to drain.
    assert data_done_timeout(60.0, 0) == 60.0
    assert data_done_timeout(60.0, 36_700_160) == pytest.approx(60.0 + 560.0)
    assert data_done_timeout(1.0, 5_000) < 1.1  # small messages keep the command timeout
