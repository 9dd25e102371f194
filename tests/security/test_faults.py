# Faults: remotes that never greet, stall in DATA, drop the line after DATA or
# answer 421 and hang up; DNS timeouts, SERVFAIL and answers pointing at a closed port.
# The client always gets a bounded, correct answer (4xx in soft_bounce="pass"; a 250 only
# when the message is durably queued in soft_bounce="queue"), never a hang, never a false 250.
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.service import Service
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.postfix import free_port
from tests.support.rawsmtp import RawClient, RawReply

MSG = b"From: a@sender.test\r\nSubject: fault\r\n\r\nHello.\r\n"
TIMEOUT = 1.0  # bouncer's connect/command timeouts in these tests
BOUND = 8.0  # seconds any single client step may take


def port_of(svc: Service) -> int:
    return svc.addresses[0][1]


def fast(mode: str = "pass", **delivery: Any) -> dict[str, Any]:
    return {
        "delivery": {"connect_timeout": TIMEOUT, "command_timeout": TIMEOUT, **delivery},
        "dns": {"timeout": TIMEOUT},
        "policy": {"soft_bounce": mode},
    }


async def send(svc: Service, rcpt: str) -> tuple[RawReply, RawReply | None, float]:
    """MAIL, RCPT and (if RCPT was accepted) DATA; the RCPT and DATA replies and the time."""
    started = time.monotonic()
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    rcpt_reply = await c.cmd(f"RCPT TO:<{rcpt}>".encode(), limit=BOUND)
    data_reply = None
    if rcpt_reply.code == 250:
        assert (await c.cmd(b"DATA")).code == 354
        c.send(MSG + b".\r\n")
        data_reply = await c.reply(limit=BOUND)
    assert (await c.cmd(b"QUIT")).code == 221
    await c.close()
    return rcpt_reply, data_reply, time.monotonic() - started


def assert_soft(reply: RawReply | None, family: str = "4.") -> None:
    assert reply is not None
    assert 400 <= reply.code < 500, str(reply)
    assert reply.text.startswith(family), str(reply)


class DroppingRemote:
    """Says yes to everything, reads the message, then closes without a final reply."""

    def __init__(self, after: bytes = b"\r\n.\r\n", reply_421_at: bytes | None = None) -> None:
        self.after = after
        self.reply_421_at = reply_421_at
        self.port = 0
        self.received = 0
        self._server: asyncio.base_events.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 drop.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if self.reply_421_at and verb == self.reply_421_at:
                    writer.write(b"421 4.3.2 Service shutting down\r\n")
                    await writer.drain()
                    break
                if verb == b"EHLO":
                    writer.write(b"250-drop.test\r\n250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.readuntil(self.after)
                    self.received += 1
                    break  # the fault: hang up instead of answering the final dot
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def __aenter__(self) -> DroppingRemote:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()


# --- remotes -------------------------------------------------------------------------------


async def test_remote_never_greets(relay_service: Any, make_fake_mx: Any) -> None:
    mx: FakeMX = await make_fake_mx(greeting="hang")
    svc = await relay_service(fast(routes={"example.test": mx.address}))
    rcpt, _, took = await send(svc, "b@example.test")
    assert_soft(rcpt, "4.4.")
    assert took < BOUND
    assert mx.connections >= 1  # it really was tried


async def test_remote_stalls_in_data(relay_service: Any, make_fake_mx: Any) -> None:
    mx: FakeMX = await make_fake_mx(data_delay=TIMEOUT * 5)
    svc = await relay_service(fast(routes={"example.test": mx.address}))
    rcpt, data, took = await send(svc, "b@example.test")
    assert rcpt.code == 250
    assert_soft(data, "4.4.")
    assert took < BOUND


async def test_remote_drops_after_data_before_replying(relay_service: Any) -> None:
    async with DroppingRemote() as remote:
        svc = await relay_service(fast(routes={"example.test": f"127.0.0.1:{remote.port}"}))
        rcpt, data, took = await send(svc, "b@example.test")
    assert rcpt.code == 250
    assert remote.received == 1  # the remote had the whole message...
    assert_soft(data, "4.")  # ...but never said 250, so neither may we
    assert took < BOUND


async def test_remote_greets_421_and_closes(relay_service: Any, make_fake_mx: Any) -> None:
    mx: FakeMX = await make_fake_mx(greeting="421 4.3.2 Too busy, try later")
    svc = await relay_service(fast(routes={"example.test": mx.address}))
    rcpt, _, took = await send(svc, "b@example.test")
    assert_soft(rcpt)
    assert took < BOUND


async def test_remote_answers_421_at_rcpt_and_closes(relay_service: Any) -> None:
    async with DroppingRemote(reply_421_at=b"RCPT") as remote:
        svc = await relay_service(fast(routes={"example.test": f"127.0.0.1:{remote.port}"}))
        rcpt, _, took = await send(svc, "b@example.test")
    assert_soft(rcpt)
    assert took < BOUND


async def test_queue_mode_250_only_when_spooled(relay_service: Any, make_fake_mx: Any) -> None:
    mx: FakeMX = await make_fake_mx(greeting="hang")
    svc = await relay_service(fast("queue", routes={"example.test": mx.address}))
    rcpt, data, took = await send(svc, "b@example.test")
    assert rcpt.code == 250  # bouncer takes responsibility (soft_bounce = "queue")
    assert data is not None and data.code == 250, str(data)
    queue_id = data.text.rsplit(" ", 1)[-1]
    assert svc.spool is not None
    queued = svc.spool.get(queue_id)
    assert queued is not None, f"250 for {queue_id} but nothing in the spool"
    assert svc.spool.data(queue_id) is not None
    assert took < BOUND


# --- DNS -----------------------------------------------------------------------------------


@pytest.fixture
async def dns() -> AsyncIterator[DNSServer]:
    async with DNSServer() as server:
        yield server


def via(dns: DNSServer, mode: str = "pass", **delivery: Any) -> dict[str, Any]:
    table = fast(mode, **delivery)
    table["dns"]["nameservers"] = [dns.nameserver]
    return table


async def test_dns_timeout(relay_service: Any, dns: DNSServer) -> None:
    dns.never_answer("slow.test")
    svc = await relay_service(via(dns))
    rcpt, _, took = await send(svc, "b@slow.test")
    assert_soft(rcpt, "4.4.3")
    assert took < BOUND
    assert any(name == "slow.test." for name, _ in dns.queries)


async def test_dns_servfail(relay_service: Any, dns: DNSServer) -> None:
    dns.servfail("broken.test")
    svc = await relay_service(via(dns))
    rcpt, _, took = await send(svc, "b@broken.test")
    assert_soft(rcpt, "4.4.3")
    assert took < BOUND


async def test_dns_answer_points_at_a_closed_port(relay_service: Any, dns: DNSServer) -> None:
    dns.mx("closed.test", (10, "mx.closed.test"))
    dns.a("mx.closed.test", "127.0.0.1")
    svc = await relay_service(via(dns, port=free_port()))  # nobody listens there
    rcpt, _, took = await send(svc, "b@closed.test")
    assert_soft(rcpt, "4.4.")
    assert took < BOUND


async def test_nxdomain_is_a_hard_bad_domain(relay_service: Any, dns: DNSServer) -> None:
    svc = await relay_service(via(dns))
    rcpt, _, _ = await send(svc, "b@gone.test")  # unknown names are NXDOMAIN
    assert rcpt.code == 550 and rcpt.text.startswith("5.1.2"), str(rcpt)
