"""Review: a remote cannot make bouncer hold an unbounded number of replies.

A hostile or broken MX that streams reply lines nobody asked for (while the session is
idle in the pool, or during DATA) had every one parsed and queued in memory until the
next command. The reader must stop at a small bound and drop the connection.
"""

from __future__ import annotations

import asyncio

from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.values import Route, Target
from tests.support.wait import until

FLOOD = b"250 2.0.0 Ok\r\n" * 20_000  # 280 kB per write; the remote keeps writing


async def test_a_flood_of_unsolicited_replies_is_bounded_and_closes_the_session() -> None:
    stop = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 flood.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250 flood.test\r\n")
        await reader.readline()  # the NOOP: the session is in bouncer's own reader now
        try:
            for _ in range(20):  # 400,000 replies in all
                writer.write(FLOOD)
                await writer.drain()
        except ConnectionError:
            pass
        await stop.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        route = Route("flood.test", (Target("flood.test", "127.0.0.1", port),))
        session = await open_session(route, OutboundSettings("relay.test", 2, 2, "off"))
        assert isinstance(session, RemoteSession)
        await session.noop()  # its reply is the first of the flood
        await until(lambda: not session.alive, "the reader to give up on the flood")
        assert session.wire.parser.pending <= 1000, session.wire.parser.pending
        assert not session.alive
    finally:
        stop.set()
        server.close()
