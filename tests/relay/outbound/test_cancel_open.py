"""Review: a client that vanishes while bouncer is still opening the remote session.

The relay's RCPT hook is cancelled then; a remote connection already greeted but not yet
through EHLO (or STARTTLS) was left open by nobody, until the remote timed it out.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def test_remote_connection_is_closed_when_the_client_vanishes_during_ehlo(
    relay_service: Any,
) -> None:
    ehlo_seen = asyncio.Event()
    closed = asyncio.Event()

    async def mute_after_greeting(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 slow.test ESMTP\r\n")
        await reader.readline()
        ehlo_seen.set()  # and never answer it
        while await reader.read(1024):
            pass
        closed.set()
        w.close()

    remote = await asyncio.start_server(mute_after_greeting, "127.0.0.1", 0)
    port = remote.sockets[0].getsockname()[1]
    try:
        svc = await relay_service(
            {"delivery": {"routes": {"example.test": f"127.0.0.1:{port}"}, "command_timeout": 30}}
        )
        host, relay_port = svc.addresses[0]
        reader, writer = await asyncio.open_connection(host, relay_port)
        await reader.readline()
        writer.write(b"HELO client.test\r\nMAIL FROM:<s@sender.test>\r\n")
        await reader.readline()
        await reader.readline()
        writer.write(b"RCPT TO:<a@example.test>\r\n")
        await asyncio.wait_for(ehlo_seen.wait(), 5)
        writer.close()  # the client gives up while bouncer waits for the remote's EHLO reply
        await asyncio.wait_for(closed.wait(), 3)
    finally:
        remote.close()
