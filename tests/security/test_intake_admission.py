# The late-bounce intake listener faces the internet and anyone may send it a bounce: every
# client is held to the connection admission of relay/inbound/admission.py (a total cap and
# per-address count and rate limits, 421 and close when over), EOF gives the slot back at once,
# and a session ends at a deadline however the client spends it. On uvloop and asyncio.
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policy.suppression.escalate import SuppressionRules
from policy.suppression.store import SuppressionStore
from policy.verp import VerpKey, encode
from relay.config.load import ConfigError, config_from_dict
from relay.inbound.admission import RATE_EXCEEDED, TOO_MANY_CONNECTIONS, TOO_MANY_FROM_YOU
from relay.intake.listener import Intake
from relay.observe.events import EventBus
from relay.store.env import open_state
from tests.security.test_admission import OUTSIDER, connect_then_close, trickle
from tests.support import bounce_samples as samples
from tests.support.rawsmtp import RawClient
from tests.support.wait import until

SECRET = "intake-admission-secret"
BOUNCE_DOMAIN = "bounces.sender.example"
KEY = VerpKey.from_settings("bounces", BOUNCE_DOMAIN, SECRET)

Start = Callable[[dict[str, Any]], Awaitable[Intake]]


@pytest.fixture
async def start_intake(tmp_path: Path) -> AsyncIterator[Start]:
    """`intake = await start_intake({...[intake] settings})`: a listener on 127.0.0.1:0."""
    env = open_state(tmp_path / "state", 1 << 24)
    started: list[Intake] = []

    async def start(settings: dict[str, Any]) -> Intake:
        config = config_from_dict(
            {
                "server": {"hostname": "relay.test"},
                "verp": {"enabled": True, "bounce_domain": BOUNCE_DOMAIN, "secret": SECRET},
                "intake": {"listen": "127.0.0.1:0", **settings},
            }
        )
        store = SuppressionStore(env, SuppressionRules())
        component = Intake(config, store, EventBus())
        await component.start()
        started.append(component)
        return component

    yield start
    for component in started:
        await component.stop()
    env.close()


async def send_bounce(port: int, source: str = "127.0.0.1") -> int:
    """One late DSN to a VERP return path, from `source`; the reply code to its DATA."""
    c = await RawClient.connect("127.0.0.1", port, source=source)
    rcpt = encode(KEY, "gone@dest.example", "Q1A2B3", datetime.now(UTC))
    assert (await c.cmd(b"MAIL FROM:<>")).code == 250
    assert (await c.cmd(f"RCPT TO:<{rcpt}>".encode())).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    body = samples.rfc3464(recipient="gone@dest.example").replace(b"\n", b"\r\n")
    code = (await c.cmd(body + b"\r\n.")).code
    await c.cmd(b"QUIT")
    await c.close()
    return code


async def refusal(port: int, source: str = "127.0.0.1") -> bytes:
    """Connect from `source` and read everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.both_loops
async def test_over_max_clients_421_and_no_traceback(
    start_intake: Start, caplog: pytest.LogCaptureFixture
) -> None:
    intake = await start_intake({"max_clients": 1})
    first = await RawClient.connect("127.0.0.1", intake.port)
    assert await refusal(intake.port) == TOO_MANY_CONNECTIONS.encode() + b"\r\n"
    assert (await first.cmd(b"NOOP")).code == 250
    await first.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.both_loops
async def test_connect_then_close_gives_the_slot_back_at_once(start_intake: Start) -> None:
    # No per-address limits and no deadline to speak of: only EOF can free these slots.
    intake = await start_intake(
        {
            "max_clients": 20,
            "client_connection_count_limit": 0,
            "client_connection_rate_limit": 0,
            "session_timeout": 300,
        }
    )
    await asyncio.gather(*(connect_then_close(intake.port, "127.0.0.1") for _ in range(60)))
    assert intake.gate is not None
    gate = intake.gate
    await until(lambda: gate.active == 0, "every connect-then-close slot given back")
    assert await send_bounce(intake.port) == 250
    # All 20 slots are free again, and 20 is the cap.
    held = [await RawClient.connect("127.0.0.1", intake.port, ehlo=False) for _ in range(20)]
    assert await refusal(intake.port) == TOO_MANY_CONNECTIONS.encode() + b"\r\n"
    for c in held:
        await c.close()


@pytest.mark.both_loops
async def test_flood_from_one_address_leaves_room_for_another_bounce(start_intake: Start) -> None:
    intake = await start_intake({"max_clients": 20, "client_connection_count_limit": 5})
    port = intake.port

    async def idle() -> tuple[bytes, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(OUTSIDER, 0))
        return await asyncio.wait_for(reader.readline(), 10), writer

    flood = await asyncio.gather(*(idle() for _ in range(30)))
    greetings = [line[:3] for line, _ in flood]
    assert greetings.count(b"220") == 5, greetings
    assert greetings.count(b"421") == 25
    assert TOO_MANY_FROM_YOU.encode() + b"\r\n" in {line for line, _ in flood}
    started = time.monotonic()
    assert await send_bounce(port) == 250  # another address: still served, at once
    assert time.monotonic() - started < 10
    assert intake.gate is not None
    assert intake.gate.admission.per_client[ipaddress.ip_address(OUTSIDER)] == 5
    for _, writer in flood:
        writer.close()


@pytest.mark.both_loops
async def test_rate_limit_per_address_answers_421_4_7_0(start_intake: Start) -> None:
    intake = await start_intake({"client_connection_rate_limit": 2})
    for _ in range(2):
        c = await RawClient.connect("127.0.0.1", intake.port, ehlo=False, source=OUTSIDER)
        await c.close()
    assert await refusal(intake.port, OUTSIDER) == RATE_EXCEEDED.encode() + b"\r\n"
    assert await send_bounce(intake.port) == 250


@pytest.mark.both_loops
async def test_trickler_is_cut_at_the_session_deadline(start_intake: Start) -> None:
    intake = await start_intake({"session_timeout": 0.5})
    c = await RawClient.connect("127.0.0.1", intake.port, ehlo=False)
    # One byte at a time, a command completed now and then: the idle timer never fires.
    heard, took = await trickle(c, b"NOOP\r\n", 0.01)
    said = heard.decode()
    assert took < 5
    assert "250 " in said  # it was served while it trickled...
    assert said.endswith("421 4.4.2 relay.test Error: timeout exceeded\r\n"), said  # ...until
    await c.close()
    assert intake.gate is not None
    gate = intake.gate
    await until(lambda: gate.active == 0, "the cut session's slot given back")


@pytest.mark.parametrize(
    ("intake", "problem"),
    [
        ({"max_clients": 0}, "intake.max_clients"),
        ({"client_connection_count_limit": -1}, "intake.client_connection_count_limit"),
        ({"client_connection_rate_limit": -1}, "intake.client_connection_rate_limit"),
        ({"session_timeout": 0}, "intake.session_timeout"),
        ({"session_timeout": float("inf")}, "intake.session_timeout"),
    ],
)
def test_intake_admission_settings_are_validated(intake: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"intake": intake})
    assert [p for p in info.value.problems if p.startswith(problem)], info.value.problems
