# This module frames SMTP on the wire to a remote and decides nothing: commands out, replies
# in, in order, with bounded memory and a timeout per reply. Parsing is reply_parser's
# (sans-IO); sessions live in outbound.py.
"""The transaction half of a remote SMTP session: a pipelining-capable reply reader."""

from __future__ import annotations

import asyncio
import re

from policy.reply import Reply
from relay.outbound.reply_reader import ReplyError, ReplyParser


class WireLost(Exception):
    """The connection closed or a reply was malformed (internal to this module)."""


class Wire(asyncio.Protocol):
    """The transaction half of a session: writes commands, hands out replies in order.

    aiosmtplib's protocol keeps one reply waiter and drops data that arrives while a
    parsed reply waits for pickup, so it cannot pipeline; after the greeting, EHLO and
    STARTTLS the transport is handed to this protocol (`transport.set_protocol`).
    """

    def __init__(
        self, transport: asyncio.Transport, command_timeout: float, host: str | None = None
    ) -> None:
        self.transport = transport
        self.command_timeout = command_timeout
        self._loop = asyncio.get_running_loop()
        self.parser = ReplyParser(host)
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        if parser.failed and not self.lost:
            # Malformed, or a remote streaming at us past the bounds: nothing it says later
            # can be trusted to answer our commands. Hang up (connection_lost follows).
            self.transport.close()
        if parser.ready():
            self._wake()  # only for a complete reply: part of one is no answer yet

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.parser.end(f"connection closed{f': {exc}' if exc else ''}")
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def unsolicited(self) -> bool:
        """Something arrived (or the connection ended) while no command was outstanding."""
        return self.parser.holding()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.lost or self.transport.is_closing():
            raise WireLost("connection closed")
        self.transport.write(data)

    async def reply(self, limit: float | None = None) -> Reply:
        """The next reply in order; raises WireLost, or TimeoutError after `limit` seconds
        (default: the command timeout). A timer, not asyncio.timeout: this is per command."""
        if not self.parser.ready():
            waiter = self._waiter = self._loop.create_future()
            wait = self.command_timeout if limit is None else limit
            timer = self._loop.call_later(wait, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        try:
            reply = self.parser.next_reply()
        except ReplyError as exc:
            raise WireLost(str(exc)) from None  # every later read fails the same way
        if reply is None:  # woken with no complete reply: cannot happen (see data_received)
            raise WireLost("woken without a complete reply")
        return reply


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


# RFC 5321 §4.5.2: a line starting with "." gets one more (after CRLF normalisation).
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


# The slowest transfer a remote is granted for DATA (bytes/s; 512 kbit/s): the message sits in
# our transport buffer while it drains, so the wait for the final reply must cover that time
# too (RFC 5321 §4.5.3.2.5-6 give the whole transfer 3 + 10 minutes; Postfix's
# smtp_data_xfer_timeout / smtp_data_done_timeout).
DATA_MIN_RATE = 64 * 1024


def data_done_timeout(command_timeout: float, size: int) -> float:
    """Seconds to wait for the reply to "." after sending `size` bytes of message."""
    return command_timeout + size / DATA_MIN_RATE


def wire_message(content: bytes) -> tuple[bytes, bytes]:
    """`content` as DATA transmits it, in two pieces to write one after the other: the message
    with CRLF line endings, dot-stuffed, and the CRLF . CRLF that ends it.

    The common case (CRLF only, which bouncer's own intake guarantees; no line starting with
    a dot) costs three counts and a search and hands back `content` itself: a large message
    is not copied again on its way out.
    """
    crlf = content.count(b"\r\n")
    if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
        content = _LINE_ENDINGS.sub(b"\r\n", content)
    if content.startswith(b".") or b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n..")
        if content.startswith(b"."):
            content = b"." + content
    return content, (b".\r\n" if content.endswith(b"\r\n") else b"\r\n.\r\n")
