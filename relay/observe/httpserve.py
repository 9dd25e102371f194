# This module binds an aiohttp application to "host:port" on the running loop; no threads.
"""Serve an aiohttp app for the metrics and API components.

The socket is bound here (port 0 picks a free one) so the caller learns the
real port without reaching into aiohttp's internals.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.config.schema import HostPort
from relay.lifecycle import listen_error


async def serve_app(app: web.Application, address: HostPort) -> tuple[web.AppRunner, int]:
    """Start `app` on `address`; returns its runner (cleanup() stops it) and the bound port."""
    host, port = address.host, address.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=128)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])


async def bind_component(
    serve: Callable[[HostPort], Awaitable[int]], listen: HostPort, section: str
) -> int:
    """Run a component's `serve(listen)`; a port that cannot be bound is a startup error."""
    try:
        return await serve(listen)
    except OSError as exc:  # exit 75 when taken, else 3, like SMTP's
        raise listen_error(f"cannot listen on [{section}] {listen}", exc) from exc
