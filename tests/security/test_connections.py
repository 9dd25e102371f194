# Connection limits: max_clients answers 421 4.3.2 and hangs up, and frees its
# slot when a client leaves; a silent client is dropped after idle_timeout (a transport
# timeout of the SMTP session, set tiny here; no policy clock is involved).
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.service import Service
from tests.support.rawsmtp import RawClient
from tests.support.wait import until


def port_of(svc: Service) -> int:
    return svc.addresses[0][1]


@pytest.mark.both_loops
async def test_max_clients_421_then_slot_is_freed(relay_service: Any) -> None:
    svc = await relay_service({"server": {"max_clients": 2}})
    port = port_of(svc)
    first = await RawClient.connect("127.0.0.1", port)
    second = await RawClient.connect("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = await asyncio.wait_for(reader.read(), 10)  # the server closes after its line
    assert refused.startswith(b"421 4.3.2"), refused
    writer.close()
    # The two admitted sessions still work.
    assert (await first.cmd(b"NOOP")).code == 250
    assert (await second.cmd(b"NOOP")).code == 250
    await first.cmd(b"QUIT")
    await first.close()

    # A slot is free again once a client has left.
    async def admitted() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return line.startswith(b"220")

    await until(admitted, "a free client slot", within=5)
    await second.close()


@pytest.mark.both_loops
async def test_idle_client_is_dropped(relay_service: Any) -> None:
    svc = await relay_service({"server": {"idle_timeout": 0.5}})
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    started = time.monotonic()
    rest = await c.closed(limit=10)  # bounded: a missing timeout fails here, not hangs
    assert time.monotonic() - started < 5
    assert rest == b"" or rest.startswith(b"421"), rest
    await c.close()


@pytest.mark.both_loops
async def test_idle_client_mid_data_is_dropped_and_nothing_forwarded(
    relay_service: Any, fake_mx: Any
) -> None:
    svc = await relay_service(
        {
            "server": {"idle_timeout": 0.5},
            "delivery": {"routes": {"example.test": fake_mx.address}},
            "policy": {"soft_bounce": "pass"},
        }
    )
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    c.send(b"Subject: half a message\r\n\r\nand then silence")
    await c.closed(limit=10)
    await c.close()
    # The half transaction is taken back at the remote (RSET, or QUIT on a closed session).
    await until(lambda: fake_mx.commands[-1:] in (["RSET"], ["QUIT"]), "the remote cleanup")
    assert fake_mx.messages == [] and "DATA" not in fake_mx.commands
