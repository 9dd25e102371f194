# This module frames SMTP on the wire to a remote and decides nothing: commands out, replies
# in, in order, with bounded memory and a timeout per reply. Sessions live in outbound.py.
"""The transaction half of a remote SMTP session: a pipelining-capable reply reader."""

from __future__ import annotations

import asyncio
import re
from collections import deque


class WireLost(Exception):
    """The connection closed or a reply was malformed (internal to this module)."""


class Wire(asyncio.Protocol):
    """The transaction half of a session: writes commands, queues replies in order.

    aiosmtplib's protocol keeps one reply waiter and drops data that arrives while a
    parsed reply waits for pickup, so it cannot pipeline; after the greeting, EHLO and
    STARTTLS the transport is handed to this protocol (`transport.set_protocol`).
    """

    def __init__(self, transport: asyncio.Transport, command_timeout: float) -> None:
        self.transport = transport
        self.command_timeout = command_timeout
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._replies: deque[tuple[int, str] | Exception] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            if end - start > MAX_LINE or len(self._replies) >= MAX_PENDING_REPLIES:
                # A line longer than any reply's, or far more replies than we ever have
                # commands outstanding: a remote streaming at us. Hold none of it.
                self._give_up("reply line too long, or too many replies nobody asked for")
                return
            line = bytes(self._buffer[start : end + 1])
            start = end + 1
            self._lines.append(line)
            if line[3:4] == b"-" and len(self._lines) < MAX_REPLY_LINES:
                continue
            lines, self._lines = self._lines, []
            self._replies.append(_parse(lines))
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            self._give_up("reply line too long")
            return
        self._wake()

    def _give_up(self, why: str) -> None:
        """The remote broke the protocol's bounds: drop what it sent and the connection."""
        self._buffer.clear()
        self._lines = []
        self._replies.append(WireLost(why))
        self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._replies.append(WireLost(f"connection closed{f': {exc}' if exc else ''}"))
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def unsolicited(self) -> bool:
        """Something arrived (or the connection ended) while no command was outstanding."""
        return bool(self._replies or self._lines or self._buffer)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.lost or self.transport.is_closing():
            raise WireLost("connection closed")
        self.transport.write(data)

    async def reply(self, limit: float | None = None) -> tuple[int, str]:
        """The next reply in order; raises WireLost, or TimeoutError after `limit` seconds
        (default: the command timeout). A timer, not asyncio.timeout: this is per command."""
        if not self._replies:
            waiter = self._waiter = self._loop.create_future()
            wait = self.command_timeout if limit is None else limit
            timer = self._loop.call_later(wait, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        item = self._replies.popleft()
        if isinstance(item, Exception):
            self._replies.appendleft(item)  # every later read fails the same way
            raise item
        return item


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


# A reply line is at most 512 octets (RFC 5321 §4.5.3.1.5); be generous with odd servers,
# but bound the memory a remote can make us hold (aiosmtplib's limits).
MAX_LINE = 8192
MAX_REPLY_LINES = 100
# We pipeline at most MAIL + RCPT (RFC 2920): more replies waiting than this is a flood.
MAX_PENDING_REPLIES = 100
# RFC 5321 §4.5.2: a line starting with "." gets one more (after CRLF normalisation).
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def _parse(lines: list[bytes]) -> tuple[int, str] | Exception:
    try:
        code = int(lines[-1][:3])
    except ValueError:
        return WireLost(f"malformed reply {lines[-1][:80]!r}")
    text = b"\n".join(line[4:].strip(b" \t\r\n") for line in lines)
    return code, text.decode("utf-8", "surrogateescape")


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
    is not copied again on its way out (issue 10).
    """
    crlf = content.count(b"\r\n")
    if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
        content = _LINE_ENDINGS.sub(b"\r\n", content)
    if content.startswith(b".") or b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n..")
        if content.startswith(b"."):
            content = b"." + content
    return content, (b".\r\n" if content.endswith(b"\r\n") else b"\r\n.\r\n")
