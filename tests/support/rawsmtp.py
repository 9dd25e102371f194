# A byte-exact SMTP client for hostile-input tests: it sends exactly the bytes a test gives
# (bare LF, bare CR, over-long lines), which smtplib and aiosmtplib would "fix" for us.
# Every read is bounded, so a server that hangs fails the test instead of hanging it.
from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass

READ_TIMEOUT = 15.0


@dataclass
class RawReply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        """The last line's text after the code (e.g. "5.5.2 Error: ..."), as tests quote it."""
        return self.lines[-1][4:]

    def __str__(self) -> str:
        return " | ".join(self.lines)


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, ehlo: bool = True, source: str | None = None
    ) -> RawClient:
        """Connect (from the local address `source`, e.g. "127.0.0.2", when given)."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        client = cls(reader, writer)
        greeting = await client.reply()
        assert greeting.code == 220, str(greeting)
        if ehlo:
            assert (await client.cmd(b"EHLO client.test")).code == 250
        return client

    async def reply(self, limit: float = READ_TIMEOUT) -> RawReply:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), limit)
            if not raw:
                raise ConnectionResetError(f"server closed the connection after {lines}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                return RawReply(int(line[:3]), lines)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def cmd(self, line: bytes, limit: float = READ_TIMEOUT) -> RawReply:
        self.writer.write(line + b"\r\n")
        return await self.reply(limit)

    async def closed(self, limit: float = READ_TIMEOUT) -> bytes:
        """Everything the server still sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), limit)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# A reply line as RFC 5321 §4.2 has it: three digits, then space (last line) or hyphen.
REPLY_LINE = re.compile(r"^[2-5]\d\d[ -]")


class LineClient:
    """The blocking twin of RawClient for hypothesis tests (which run outside the loop):
    sends exactly the given bytes, returns each reply as its lines (decoded with
    "replace"), and fails on a line that is not a reply line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.file = self.sock.makefile("rb")
        assert self.reply()[0].startswith("220")

    def reply(self) -> list[str]:
        lines: list[str] = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionResetError(f"closed after {lines}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            assert REPLY_LINE.match(line), f"malformed reply line {line!r}"
            lines.append(line)
            if line[3] == " ":
                return lines

    def cmd(self, line: bytes) -> list[str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()
