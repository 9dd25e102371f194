# End-to-end tests run twice: on asyncio's own loop and on uvloop, which `bouncer serve`
# always uses. The two deliver TCP data differently (and their transports differ in type),
# so what works on one is not proven on the other.
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: every async test in this directory runs on both loops."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
async def _on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    """A test marked [uvloop] that ran on asyncio's loop would prove nothing: check it."""
    callspec = getattr(request.node, "callspec", None)  # absent for a synchronous test
    if callspec is not None:
        on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
        assert on_uvloop == ("uvloop" in callspec.id.split("-"))
