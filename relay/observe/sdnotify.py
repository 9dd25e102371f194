# This module speaks systemd's notify protocol (sd_notify(3)) with the stdlib; no dependency.
"""READY=1 / RELOADING=1 / STOPPING=1 / WATCHDOG=1 to $NOTIFY_SOCKET.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op, so the same
code runs in tests and on a terminal. The watchdog task pings from the event
loop itself, so a loop that is stuck (a blocking call, a livelock) stops the
pings and systemd restarts the service (WatchdogSec= in the unit); it also
stops pinging while the health check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace socket (Linux)
        return "\0" + path[1:]
    return path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification ("READY=1", ...); False when not under systemd or it failed."""
    address = _address(env if env is not None else os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", state, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when no watchdog is set.

    $WATCHDOG_PID, when set, must be our pid (sd_watchdog_enabled(3)), or our parent's:
    with `[server] workers`, worker 0 pings for the supervising main process
    (the unit sets NotifyAccess=all for that).
    """
    env = env if env is not None else os.environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid not in (str(os.getpid()), str(os.getppid())):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Service component: READY=1 once started, watchdog pings, STOPPING=1 at stop.

    `healthy` (optional) is asked before each ping; a False answer skips the
    ping so systemd's watchdog restarts a service that cannot read its store.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        healthy: Callable[[], bool] | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._stop_requested = stopping  # set on the first SIGTERM, before the drain
        self.env = dict(env if env is not None else os.environ)
        self.healthy = healthy
        self._task: asyncio.Task[None] | None = None
        self._signal_task: asyncio.Task[None] | None = None
        self._stopping_sent = False

    def send(self, state: str) -> bool:
        return notify(state, self.env)

    def ready(self) -> None:
        # No MAINPID=: with [server] workers the sender is worker 0, not the main process.
        self.send("READY=1\nSTATUS=serving")

    def reloading(self) -> None:
        # systemd ≥ 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self.send("STOPPING=1\nSTATUS=draining")

    async def _watchdog(self, interval: float) -> None:
        while True:
            try:
                ok = self.healthy is None or self.healthy()
            except Exception as exc:  # e.g. StoreError: unhealthy, not a dead watchdog task
                log.warning("health check raised: %s", exc)
                ok = False
            if ok:
                self.send("WATCHDOG=1")
            else:
                log.warning("health check failed: withholding the systemd watchdog ping")
            await asyncio.sleep(interval)

    async def _stopping_on_signal(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping()

    async def start(self) -> None:
        interval = watchdog_interval(self.env)
        if interval is not None:
            self._task = asyncio.create_task(self._watchdog(interval), name="sd-watchdog")
        # STOPPING=1 as soon as SIGTERM arrives, before the drain (the Service's stop event);
        # the watchdog keeps pinging through the drain.
        if self._stop_requested is not None:
            stop = self._stop_requested
            self._signal_task = asyncio.create_task(self._stopping_on_signal(stop))
        self.ready()

    async def stop(self) -> None:
        self.stopping()
        for task in (self._task, self._signal_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._signal_task = None
