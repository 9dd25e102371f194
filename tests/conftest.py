# Shared fixtures: the scripted fake MX and the loopback DNS server (tests/support/).
# Each fixture starts its server on a free loopback port on the test's own loop and
# stops it afterwards, so tests never collide and never touch the internet.
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture
async def fake_mx() -> AsyncIterator[FakeMX]:
    """One running fake MX with default (accept everything) script."""
    async with FakeMX() as mx:
        yield mx


@pytest.fixture
async def make_fake_mx() -> AsyncIterator[Callable[..., Awaitable[FakeMX]]]:
    """A factory for more fake MXes: `mx = await make_fake_mx(greeting="hang")`."""
    started: list[FakeMX] = []

    async def make(**kwargs: Any) -> FakeMX:
        mx = await FakeMX(**kwargs).start()
        started.append(mx)
        return mx

    yield make
    for mx in started:
        await mx.stop()


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    """A running loopback DNS server with an empty zone (every name NXDOMAIN)."""
    async with DNSServer() as server:
        yield server
