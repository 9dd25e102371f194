# A scripted remote MX for tests: an aiosmtpd server on a free loopback port that
# answers each recipient as the test says and records what it received.
#
# It runs on the test's own event loop (loop.create_server, port 0), never a thread,
# so tests stay deterministic and parallel runs never collide on ports.
"""Fake remote MX for tests.

Usage::

    async with FakeMX() as mx:
        mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
        mx.data_reply = "554 5.7.1 Message rejected as spam"
        ... point bouncer at ("127.0.0.1", mx.port) ...
        assert mx.messages[0].data.startswith(b"Received:")
        assert mx.connections == 1

Knobs (all may be changed while the server runs):

- ``rcpt_replies``: lower-cased address -> reply line ("550 5.1.1 No such user");
  others get ``default_rcpt_reply``.
- ``mail_reply``: reply to MAIL FROM (default accept).
- ``data_reply``: reply at end of DATA (default ``250 2.0.0 Ok: queued as FAKE``).
- ``greeting``: "ok" (normal 220), "hang" (accept the TCP connection and never
  speak), or a reply line such as "421 4.3.2 Busy" (sent, then the connection closes).
- ``rcpt_delay`` / ``data_delay``: seconds to wait before answering (timeouts).
- ``tls_context``: an ``ssl.SSLContext`` to offer STARTTLS with.
- ``pieces``: write every reply (greeting, EHLO lines, MAIL, RCPT, DATA...) cut by this
  function, one write per piece, ``piece_gap`` seconds apart (default 30 ms), as real TCP
  delivers them: ``in_thirds`` cuts mid-line, ``by_line`` one line of a multi-line reply at
  a time. Reply lines may be multi-line strings ("550-5.1.1 a\r\n550 5.1.1 b").

Records: ``connections`` (TCP connections accepted), ``messages`` (one
``ReceivedMessage`` per accepted DATA), ``rcpts`` (every RCPT address seen, in
order), ``commands`` (every MAIL/RCPT/DATA/RSET/NOOP/QUIT, in order).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session

DEFAULT_DATA_REPLY = "250 2.0.0 Ok: queued as FAKE"
DEFAULT_RCPT_REPLY = "250 2.1.5 Ok"

Cutter = Callable[[bytes], list[bytes]]


def in_thirds(reply: bytes) -> list[bytes]:
    """Three writes cut at a third and two thirds of the bytes: mid-line, mid-code even."""
    n = len(reply)
    return [reply[: n // 3], reply[n // 3 : 2 * n // 3], reply[2 * n // 3 :]]


def by_line(reply: bytes) -> list[bytes]:
    """One write per line, and the last line cut in two after its code's first digit."""
    lines = reply.splitlines(keepends=True)
    return [*lines[:-1], lines[-1][:1], lines[-1][1:]]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the fake MX accepted at DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int  # the 1-based number of the TCP connection it came on


class _Handler:
    def __init__(self, mx: FakeMX, connection: int) -> None:
        self.mx = mx
        self.connection = connection

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mx.commands.append(f"MAIL {address}")
        if self.mx.mail_reply is not None and not self.mx.mail_reply.startswith("2"):
            return self.mx.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return self.mx.mail_reply or "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mx.commands.append(f"RCPT {address}")
        self.mx.rcpts.append(address)
        if self.mx.rcpt_delay:
            await asyncio.sleep(self.mx.rcpt_delay)
        reply = self.mx.rcpt_replies.get(address.lower(), self.mx.default_rcpt_reply)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mx.commands.append("DATA")
        if self.mx.data_delay:
            await asyncio.sleep(self.mx.data_delay)
        if self.mx.data_reply.startswith("2"):
            content = envelope.original_content or b""
            self.mx.messages.append(
                ReceivedMessage(
                    str(envelope.mail_from), tuple(envelope.rcpt_tos), content, self.connection
                )
            )
        return self.mx.data_reply

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mx.commands.append("RSET")
        return "250 2.0.0 Ok"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.mx.commands.append("NOOP")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mx.commands.append("QUIT")
        return "221 2.0.0 Bye"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.mx.helos.append(hostname)
        # Advertise what a real MX does, so the client's pipelining/ESMTP paths run.
        return responses[:-1] + ["250-ENHANCEDSTATUSCODES", "250-PIPELINING", responses[-1]]


class _PiecesSMTP(SMTP):
    """aiosmtpd's server writing each reply in pieces, with a pause between them."""

    def __init__(self, *args: Any, cut: Cutter, gap: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut = cut
        self.gap = gap

    async def push(self, status: Any) -> None:
        response = status.encode("utf-8") if isinstance(status, str) else status
        pieces = [p for p in self.cut(response + b"\r\n") if p]
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(self.gap)  # the point: separate TCP segments
            self._writer.write(piece)
            await self._writer.drain()


class _SilentProtocol(asyncio.Protocol):
    """A peer that accepts TCP and never says a word: the hanging greeting."""

    def __init__(self, mx: FakeMX) -> None:
        self.mx = mx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.mx._silent.append(transport)


class _RefusingProtocol(asyncio.Protocol):
    """A peer that greets with a non-220 reply and hangs up (RFC 5321 §3.1 / §4.2)."""

    def __init__(self, line: str) -> None:
        self.line = line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.WriteTransport
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(self.line.encode() + b"\r\n")
        writer.close()


@dataclass
class FakeMX:
    """The scripted remote; see the module docstring."""

    host: str = "127.0.0.1"
    hostname: str = "mx.fake.test"
    greeting: str = "ok"
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    default_rcpt_reply: str = DEFAULT_RCPT_REPLY
    mail_reply: str | None = None
    data_reply: str = DEFAULT_DATA_REPLY
    rcpt_delay: float = 0.0
    data_delay: float = 0.0
    tls_context: ssl.SSLContext | None = None
    pieces: Cutter | None = None
    piece_gap: float = 0.03
    # Records.
    connections: int = 0
    messages: list[ReceivedMessage] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    helos: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _silent: list[asyncio.BaseTransport] = field(default_factory=list)
    _protocols: list[SMTP] = field(default_factory=list)

    def _factory(self) -> asyncio.BaseProtocol:
        self.connections += 1
        if self.greeting == "hang":
            return _SilentProtocol(self)
        if self.greeting != "ok":
            return _RefusingProtocol(self.greeting)
        handler = _Handler(self, self.connections)
        options: dict[str, Any] = {
            "hostname": self.hostname,
            "enable_SMTPUTF8": True,
            "tls_context": self.tls_context,
            "loop": asyncio.get_running_loop(),
        }
        proto = (
            SMTP(handler, **options)
            if self.pieces is None
            else _PiecesSMTP(handler, cut=self.pieces, gap=self.piece_gap, **options)
        )
        self._protocols.append(proto)
        return proto

    async def start(self) -> FakeMX:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for transport in self._silent:
            transport.close()
        for proto in self._protocols:
            if proto.transport is not None:
                proto.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT", the form `[delivery.routes]` takes."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> FakeMX:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
