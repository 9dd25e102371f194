# A line-by-line scripted remote for session-synchronisation tests: it processes commands
# strictly in order, like a real MTA reading a pipelined stream, and keeps the transaction
# state the way Postfix does (a refused DATA command leaves MAIL in effect; MAIL inside it is 503).
"""A tiny sequential SMTP server on a free loopback port, driven by per-test hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Hook = Callable[[str], Awaitable[str | None]]


@dataclass
class ScriptedMX:
    rcpt_delay: dict[str, float] = field(default_factory=dict)  # address -> seconds
    data_command_reply: Callable[[int], str] = lambda n: "354 End data with <CR><LF>.<CR><LF>"
    commands: list[str] = field(default_factory=list)
    messages: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _data_commands: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedMX:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mail: str | None = None
        rcpts: list[str] = []

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        try:
            await say("220 scripted.test ESMTP")
            while line := await reader.readline():
                cmd = line.decode().rstrip("\r\n")
                verb = cmd[:4].upper()
                self.commands.append(cmd)
                if verb in ("EHLO", "HELO"):
                    await say("250-scripted.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES")
                elif verb == "MAIL":
                    if mail is not None:
                        await say("503 5.5.1 Error: nested MAIL command")
                        continue
                    mail = cmd.split(":", 1)[1].strip().strip("<>")
                    await say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    if mail is None:
                        await say("503 5.5.1 Error: need MAIL command")
                        continue
                    addr = cmd.split(":", 1)[1].strip().strip("<>")
                    await asyncio.sleep(self.rcpt_delay.get(addr, 0))
                    rcpts.append(addr)
                    await say("250 2.1.5 Ok")
                elif verb == "DATA":
                    self._data_commands += 1
                    answer = self.data_command_reply(self._data_commands)
                    await say(answer)
                    if not answer.startswith("354"):
                        continue  # Postfix: the transaction stays open
                    body = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        if not chunk:
                            return
                        body += chunk
                    self.messages.append((mail or "", tuple(rcpts), body))
                    mail, rcpts = None, []
                    await say("250 2.0.0 Ok: queued as SCRIPTED")
                elif verb == "RSET":
                    mail, rcpts = None, []
                    await say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await say("221 2.0.0 Bye")
                    return
                else:
                    await say("502 5.5.2 Error: command not recognized")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
