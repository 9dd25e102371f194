# Remote sessions are expensive (TCP, greeting, EHLO, TLS): this module keeps them per
# destination, lends one out per client transaction, takes it back after RSET, caps how many
# a destination gets at once, and closes those idle too long. It never interprets a reply.
"""Per-destination pool of remote SMTP sessions.

`acquire(route)` returns a live session (an idle one if there is one, else a new one
from `open_session`), the Reply explaining why none could be opened, or `Busy`. The caller
owns it until `release(session)`: a healthy session goes back to the idle list (the
caller has already RSET it or completed DATA), a broken one is closed. At most
`max_per_destination` sessions per route key exist at once (Postfix's
`default_destination_concurrency_limit`); a caller waits for a free one up to the
connect timeout, then gets `Busy` (told to a client as `451 4.4.5`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from policy.reply import Reply
from relay.outbound.session import RemoteSession
from relay.outbound.values import Route

log = logging.getLogger(__name__)

Opener = Callable[[Route], Awaitable[RemoteSession | Reply]]


@dataclass(frozen=True, slots=True)
class Busy:
    """The destination's session cap is reached: no session for now (a later one may find a
    free slot, so this is never cached as the destination's answer)."""

    key: str  # the route key

    @property
    def reply(self) -> Reply:
        return Reply(451, "4.4.5", f"too many concurrent sessions to {self.key}, try later")


@dataclass
class _Destination:
    slots: asyncio.Semaphore
    idle: list[tuple[RemoteSession, asyncio.TimerHandle]] = field(default_factory=list)


class SessionPool:
    """Lends remote sessions per destination; see the module docstring."""

    def __init__(
        self,
        opener: Opener,
        max_per_destination: int = 10,
        idle_timeout: float = 30.0,
        wait_timeout: float = 30.0,
    ) -> None:
        self.opener = opener
        self.max_per_destination = max_per_destination
        self.idle_timeout = idle_timeout
        self.wait_timeout = wait_timeout
        self._dests: dict[str, _Destination] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0  # sessions opened, for tests and metrics
        self.reused = 0  # acquisitions served from the idle list
        self._lent = 0  # sessions handed out and not yet released

    def _dest(self, key: str) -> _Destination:
        dest = self._dests.get(key)
        if dest is None:
            dest = self._dests[key] = _Destination(asyncio.Semaphore(self.max_per_destination))
        return dest

    async def acquire(self, route: Route, wait: bool = True) -> RemoteSession | Reply | Busy:
        """A session for `route`; with `wait=False`, `Busy` at once when the cap is reached
        (a caller already holding sessions there must not wait for itself)."""
        dest = self._dest(route.key)
        busy = Busy(route.key)
        if not wait and dest.slots.locked():
            return busy
        try:
            await asyncio.wait_for(dest.slots.acquire(), self.wait_timeout)
        except TimeoutError:
            return busy
        try:
            while dest.idle:
                session, timer = dest.idle.pop()
                timer.cancel()
                if session.alive:
                    self.reused += 1
                    self._lent += 1
                    return session
                session.close()
            result = await self.opener(route)
        except BaseException:
            dest.slots.release()
            raise
        if isinstance(result, Reply):
            dest.slots.release()
        else:
            self.opened += 1
            self._lent += 1
        return result

    def release(self, session: RemoteSession) -> None:
        """Give a session back: idle for reuse if healthy, closed otherwise. Never blocks."""
        dest = self._dest(session.key)
        dest.slots.release()
        self._lent -= 1
        if not session.alive:
            self._close_later(session)
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.idle_timeout, self._expire, session)
        dest.idle.append((session, timer))

    def discard(self, session: RemoteSession) -> None:
        """Give back a session that must not be reused (after an abort that failed, say)."""
        session.broken = True
        self.release(session)

    def _expire(self, session: RemoteSession) -> None:
        dest = self._dests.get(session.key)
        if dest is not None:
            dest.idle = [(s, t) for s, t in dest.idle if s is not session]
        self._close_later(session)

    def _close_later(self, session: RemoteSession) -> None:
        if not session.connected:
            session.close()
            return
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def idle_count(self) -> int:
        return sum(len(d.idle) for d in self._dests.values())

    @property
    def open_count(self) -> int:
        """Sessions open now: lent out plus idle (those closing with QUIT not counted)."""
        return self._lent + self.idle_count

    async def close(self) -> None:
        """QUIT every idle session (shutdown); sessions still lent out close on release."""
        for dest in self._dests.values():
            for session, timer in dest.idle:
                timer.cancel()
                self._close_later(session)
            dest.idle.clear()
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._closing), timeout=5)
