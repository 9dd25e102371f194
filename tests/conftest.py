# Shared fixtures: the scripted fake MX and the loopback DNS server (tests/support/).
# Each fixture starts its server on a free loopback port on the test's own loop and
# stops it afterwards, so tests never collide and never touch the internet.
# Every async test runs on uvloop, the loop `bouncer serve` runs on (relay/cli/serve.py):
# transports differ between the two loops (uvloop's are not asyncio.WriteTransport, and
# it reports EOF before a new task has run), and production only ever meets uvloop's.
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """pytest-asyncio's hook: the loop every async test and fixture runs on; a test marked
    `both_loops` (where the two loops' transports behave differently) runs on each."""
    if item.get_closest_marker("both_loops"):
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def _running_loop() -> asyncio.AbstractEventLoop:
    """The loop the requesting test runs on (async fixtures share their test's loop)."""
    return asyncio.get_running_loop()


@pytest.fixture(autouse=True)
def _on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    """A `both_loops` test whose id says [uvloop] but that ran on asyncio's loop (or the
    other way round) would prove nothing: check it. Other tests pay nothing."""
    if request.node.get_closest_marker("both_loops") is None:
        return
    loop = request.getfixturevalue("_running_loop")
    ids = request.node.callspec.id.split("-")
    assert isinstance(loop, uvloop.Loop) == ("uvloop" in ids), (request.node.nodeid, loop)


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


@pytest.fixture
async def relay_service(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start a real bouncer Service on 127.0.0.1:0 with a config built from `overrides`.

    `svc = await relay_service({"delivery": {"routes": {...}}})`; `svc.addresses[0]` is
    where it listens. Defaults: state in tmp_path, small timeouts, hostname relay.test.
    Stopped (drained) after the test.
    """
    from relay.config.load import config_from_dict
    from relay.service import Service

    started: list[Service] = []

    async def start(overrides: dict[str, Any] | None = None, clock: Any = None) -> Service:
        table: dict[str, Any] = {
            "server": {"listen": ["127.0.0.1:0"], "hostname": "relay.test"},
            "delivery": {
                "helo": "relay.test",
                "connect_timeout": 2,
                "command_timeout": 5,
                "drain_timeout": 2,
            },
            "dns": {"timeout": 1},
            "store": {"path": str(tmp_path / f"state{len(started)}")},
        }
        for section, values in (overrides or {}).items():
            table.setdefault(section, {}).update(values)
        config = config_from_dict(table)
        svc = Service(config) if clock is None else Service(config, clock=clock)
        await svc.startup()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        await svc.shutdown()
