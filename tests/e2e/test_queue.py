"""The retry queue end to end: a real `bouncer serve` subprocess, fake MXes on loopback,
static routes, the queue CLI beside the running server, kill -9 and SIGTERM.

Each server gets its own state directory and free ports; the schedule is seconds long
so expiry happens within the test, and nothing sleeps to wait for a time rule: the
tests poll for an observable result with a deadline.
"""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.support.fake_mx import FakeMX
from tests.support.mime import status_blocks
from tests.support.wait import until

ROOT = Path(__file__).resolve().parents[2]
SENDER = "alice@a.example"
MESSAGE = b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: e2e\r\n\r\nhello\r\n"
pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One `python -m relay serve` process on a config written for the test."""

    def __init__(self, tmp: Path, routes: dict[str, int], schedule: list[str]) -> None:
        self.port = _free_port()
        self.config = tmp / "bouncer.toml"
        route_lines = "\n".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in routes.items())
        self.config.write_text(
            f"""
[server]
listen = ["127.0.0.1:{self.port}"]
hostname = "relay.test"
[delivery]
helo = "relay.test"
starttls = "off"
connect_timeout = 5.0
command_timeout = 10.0
drain_timeout = 5.0
[delivery.routes]
{route_lines}
[dns]
nameservers = ["127.0.0.1:{_free_port()}"]  # nobody there: no query leaves the machine
timeout = 1.0
[store]
path = "{tmp / "state"}"
map_size = 67108864
[queue]
schedule = {json.dumps(schedule)}
poll_interval = 0.2
"""
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.log = tmp / "server.log"

    async def start(self) -> Server:
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # the child's stderr
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(self.config),
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        os.close(out)
        await until(self._listening, "server to listen", within=30, interval=0.1)
        return self

    async def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        return True

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def cli(self, *argv: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "queue",
            *argv,
            "--config",
            str(self.config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    async def queue(self) -> list[dict[str, Any]]:
        code, out = await self.cli("list", "--json")
        assert code == 0, out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def _send(
    port: int,
    rcpts: list[str],
    data: bytes = MESSAGE,
    after_data: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, str]:
    """Submit like a client would; returns the reply to DATA (`after_data` runs at once)."""
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, timeout=30, start_tls=False, local_hostname="client.test"
    )
    await smtp.connect()
    try:
        code, _ = await smtp.mail(SENDER)
        assert code == 250
        for r in rcpts:
            code, text = await smtp.rcpt(r)
            assert code == 250, f"RCPT {r}: {code} {text}"
        reply = await smtp.data(data)
        if after_data is not None:
            await after_data()
        return reply.code, reply.message
    finally:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc is not None and s.proc.returncode is None:
            await s.stop(signal.SIGKILL)


async def test_soft_failure_queued_then_retry_delivers_exactly_once(
    tmp_path: Path, servers: list[Server]
) -> None:
    async with FakeMX() as mx:
        mx.rcpt_replies["bob@b.example"] = "451 4.3.2 Try again later"
        server = await Server(tmp_path, {"b.example": mx.port}, ["1h", "2h"]).start()
        servers.append(server)
        code, _ = await _send(server.port, ["bob@b.example"])
        assert code == 250  # bouncer took responsibility
        (entry,) = await server.queue()
        assert entry["recipients"][0]["recipient"] == "bob@b.example"
        assert entry["recipients"][0]["last_reply"].startswith("451 4.3.2")
        assert mx.messages == []
        del mx.rcpt_replies["bob@b.example"]  # the remote recovers
        code, out = await server.cli("retry", "--all")
        assert code == 0 and "1 recipient(s) due now" in out

        async def empty() -> bool:
            return await server.queue() == []

        await until(empty, "the queue to empty", within=30, interval=0.1)
        assert len(mx.messages) == 1
        assert mx.messages[0].rcpt_tos == ("bob@b.example",)
        assert mx.messages[0].data.endswith(b"hello\r\n")
        assert await server.stop() == 0
        assert len(mx.messages) == 1  # exactly once


async def test_kill_9_after_the_250_then_restart_delivers(
    tmp_path: Path, servers: list[Server]
) -> None:
    async with FakeMX() as mx:
        mx.rcpt_replies["bob@b.example"] = "452 4.2.2 Mailbox full"
        server = await Server(tmp_path, {"b.example": mx.port}, ["2s", "1h"]).start()
        servers.append(server)
        killed: list[int] = []

        async def kill() -> None:  # the moment the 250 arrives, before QUIT
            killed.append(await server.stop(signal.SIGKILL))

        code, _ = await _send(server.port, ["bob@b.example"], after_data=kill)
        assert code == 250
        assert killed == [-signal.SIGKILL]
        (entry,) = await server.queue()  # on disk, with the server dead
        assert entry["recipients"][0]["recipient"] == "bob@b.example"
        mx.rcpt_replies.clear()
        await server.start()  # the 2s slot comes due by itself after the restart

        async def delivered() -> bool:
            return len(mx.messages) == 1 and await server.queue() == []

        await until(delivered, "delivery after restart", within=30, interval=0.1)
        assert await server.stop() == 0
        assert len(mx.messages) == 1


async def test_expiry_sends_a_dsn_to_the_senders_domain(
    tmp_path: Path, servers: list[Server]
) -> None:
    async with FakeMX() as mx, FakeMX() as sender_mx:
        mx.rcpt_replies["bob@b.example"] = "452 4.2.2 Mailbox full"
        server = Server(tmp_path, {"b.example": mx.port, "a.example": sender_mx.port}, ["1s", "3s"])
        servers.append(await server.start())
        code, _ = await _send(server.port, ["bob@b.example"])
        assert code == 250

        async def dsn_arrived() -> bool:
            return len(sender_mx.messages) >= 1

        await until(dsn_arrived, "the DSN", within=30, interval=0.1)
        dsn = sender_mx.messages[0]
        assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == (SENDER,)
        parsed = email.message_from_bytes(dsn.data)
        assert parsed.get_content_type() == "multipart/report"
        assert parsed.get_param("report-type") == "delivery-status"
        per_message, rcpt = status_blocks(parsed)
        assert per_message["Reporting-MTA"] == "dns; relay.test"
        assert rcpt["Final-Recipient"] == "rfc822; bob@b.example"
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"] == "4.2.2"
        assert rcpt["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"
        headers = next(p for p in parsed.walk() if p.get_content_type() == "text/rfc822-headers")
        assert "Subject: e2e" in headers.get_payload()
        # Retries: the live attempt plus one per slot, then nothing more.
        assert mx.rcpts.count("bob@b.example") == 3

        async def empty() -> bool:
            return await server.queue() == []

        await until(empty, "the queue to empty", within=30, interval=0.1)
        assert await server.stop() == 0


async def test_mixed_data_outcome(tmp_path: Path, servers: list[Server]) -> None:
    async with FakeMX() as good, FakeMX() as hard, FakeMX() as soft, FakeMX() as sender_mx:
        hard.data_reply = "550 5.1.1 <x@c.example>: mailbox unavailable"
        soft.data_reply = "451 4.3.0 Temporary failure, try later"
        routes = {
            "b.example": good.port,
            "c.example": hard.port,
            "d.example": soft.port,
            "a.example": sender_mx.port,
        }
        server = Server(tmp_path, routes, ["1h", "2h"])
        servers.append(await server.start())
        code, text = await _send(server.port, ["ok@b.example", "x@c.example", "y@d.example"])
        assert code == 250, text
        assert [m.rcpt_tos for m in good.messages] == [("ok@b.example",)]

        async def dsn_arrived() -> bool:
            return len(sender_mx.messages) == 1

        await until(dsn_arrived, "the DSN for the hard recipient", within=30, interval=0.1)
        parsed = email.message_from_bytes(sender_mx.messages[0].data)
        blocks = status_blocks(parsed)[1:]
        assert [b["Final-Recipient"] for b in blocks] == ["rfc822; x@c.example"]
        assert blocks[0]["Status"] == "5.1.1"
        queued = await server.queue()
        rcpts = [r["recipient"] for m in queued for r in m["recipients"]]
        assert rcpts == ["y@d.example"]
        assert await server.stop() == 0


async def test_sigterm_drains_exits_0_and_loses_nothing(
    tmp_path: Path, servers: list[Server]
) -> None:
    async with FakeMX() as mx:
        mx.rcpt_replies["bob@b.example"] = "451 4.3.2 Try again later"
        server = await Server(tmp_path, {"b.example": mx.port}, ["1s", "1h"]).start()
        servers.append(server)
        assert (await _send(server.port, ["bob@b.example"]))[0] == 250
        # A retry is in flight (the remote takes its time) when SIGTERM comes.
        mx.rcpt_delay = 3.0  # within the drain time (5 s)
        mx.rcpt_replies.clear()

        async def retrying() -> bool:
            return mx.rcpts.count("bob@b.example") >= 2

        await until(retrying, "the retry to reach the remote", within=30, interval=0.1)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)

        async def refusing() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            except OSError:
                return True
            writer.close()
            return False

        await until(refusing, "the listener to close", within=5, interval=0.1)
        assert server.proc.returncode is None  # still draining, yet no longer accepting
        assert await asyncio.wait_for(server.proc.wait(), 30) == 0  # (a 2nd signal would force)
        # The attempt in flight at SIGTERM finished within the drain time and was recorded:
        # delivered once, and the queue is empty (cut short, it would still be queued).
        assert len(mx.messages) == 1
        assert await server.queue() == []


async def test_kill_9_mid_drain_loses_nothing(tmp_path: Path, servers: list[Server]) -> None:
    """120 queued messages drain to a fake MX; SIGKILL mid-drain; a restart delivers every
    one (at-least-once: a duplicate is allowed, and only for a recipient the restart
    names as possibly delivered or found in flight; a loss is not)."""
    from datetime import UTC, datetime

    from policy.reply import Reply
    from relay.queue.queue import Spool, SpoolMessage
    from relay.store.env import open_state

    n = 120
    async with FakeMX() as mx:
        server = Server(tmp_path, {"b.example": mx.port}, ["1s", "1s", "1s"])
        env = open_state(tmp_path / "state", 1 << 26)
        spool, now = Spool(env), datetime.now(UTC)
        soft = ((f"r{i}@b.example", Reply(452, "4.2.2", "full")) for i in range(n))
        for i, rcpt in enumerate(soft):
            spool.accept(SpoolMessage(f"K{i:04d}", SENDER, MESSAGE, now, (rcpt,)), now)
        spool.retry_now(None, now)
        env.close()
        servers.append(await server.start())

        async def some() -> bool:
            return len(mx.messages) >= n // 4

        await until(some, "a quarter of the drain")
        assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
        await server.start()

        async def all_delivered() -> bool:
            return {r for m in mx.messages for r in m.rcpt_tos} == {
                f"r{i}@b.example" for i in range(n)
            }

        await until(all_delivered, "every message after the restart", 60)
        assert await server.stop() == 0
    assert await server.queue() == []
    log = server.log.read_text()
    # The kill can land between two lease batches, with nothing in flight: then the restart
    # names no recipient, and no duplicate is allowed at all.
    named = re.search(r"queue: (\d+) recipient\(s\) in flight at the last stop", log)
    in_flight = int(named.group(1)) if named else 0
    duplicates = len(mx.messages) - n
    assert duplicates <= in_flight
