# Connection admission: per-address limits after Postfix's anvil, a
# 421 (never a bare close or a traceback) over any limit, slots given back the moment a peer
# closes, and a deadline for clients that may not relay. The server runs on uvloop
# (tests/conftest.py), where a connect-then-close reached EOF before aiosmtpd's session
# task ran and kept its slot in CLOSE-WAIT until idle_timeout.
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any

import pytest

from relay.inbound.admission import (
    RATE_EXCEEDED,
    RATE_WINDOW,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_YOU,
    Admission,
    AdmissionLimits,
)
from relay.service import Service
from tests.support.rawsmtp import RawClient

OUTSIDER = "127.0.0.2"  # a loopback source address outside allowed_clients
ONLY_LOCALHOST = {"allowed_clients": ["127.0.0.1/32"]}

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
MINE = ipaddress.ip_address("127.0.0.1")


def admission(**limits: int) -> Admission:
    return Admission(AdmissionLimits(**limits), lambda ip: ip == MINE)


def test_count_limit_per_address_leaves_room_for_others() -> None:
    adm = admission(max_clients=10, per_client=2, rate=0)
    assert [adm.admit(A, 0.0) for _ in range(3)] == [None, None, TOO_MANY_FROM_YOU]
    assert adm.admit(B, 0.0) is None
    assert adm.admit(MINE, 0.0) is None
    adm.release(A)
    assert adm.admit(A, 0.0) is None  # a slot given back is a slot to take
    assert adm.active == 4


def test_allowed_clients_are_exempt_but_the_total_holds() -> None:
    adm = admission(max_clients=3, per_client=1, rate=1)
    assert [adm.admit(MINE, 0.0) for _ in range(4)] == [None, None, None, TOO_MANY_CONNECTIONS]
    assert adm.admit(A, 0.0) == TOO_MANY_CONNECTIONS


def test_rate_limit_per_minute_counts_refused_attempts_too() -> None:
    adm = admission(max_clients=100, per_client=0, rate=3)
    assert [adm.admit(A, t) for t in (0.0, 1.0, 2.0, 3.0)] == [None, None, None, RATE_EXCEEDED]
    assert adm.admit(B, 3.0) is None
    assert adm.admit(A, RATE_WINDOW - 1) == RATE_EXCEEDED  # hammering does not wait it out
    assert adm.admit(A, RATE_WINDOW + 0.5) is None  # a new minute
    assert adm.admit(A, 10 * RATE_WINDOW) is None
    assert set(adm._rates) == {A}  # quiet addresses are forgotten


def test_release_forgets_addresses_with_nothing_open() -> None:
    adm = admission(max_clients=10, per_client=5, rate=0)
    adm.admit(A, 0.0)
    adm.release(A)
    assert adm.per_client == {} and adm.active == 0


def port_of(svc: Service) -> int:
    return int(svc.addresses[0][1])


async def wait_until(predicate: Any, limit: float = 10.0) -> None:
    """Poll a server-side condition that has no event to wait on (a bounded wait)."""
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def connect_then_close(port: int, source: str) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as s:
        s.setblocking(False)
        s.bind((source, 0))
        await loop.sock_connect(s, ("127.0.0.1", port))


async def trickle(c: RawClient, pattern: bytes, gap: float) -> tuple[bytes, float]:
    """Send `pattern` a byte every `gap` seconds, over and over, until the server hangs up
    (5 s at most); what the server said, and how long it took to hang up."""
    started = time.monotonic()
    heard = asyncio.ensure_future(c.closed(limit=10))
    while not heard.done() and time.monotonic() - started < 5:
        for byte in pattern:
            try:
                c.send(bytes([byte]))
                await c.writer.drain()
            except (ConnectionError, OSError):
                break
            await asyncio.sleep(gap)
    said = await heard
    return said, time.monotonic() - started


@pytest.mark.both_loops
async def test_over_max_clients_421_and_no_traceback(
    relay_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc = await relay_service({"server": {"max_clients": 1}})
    first = await RawClient.connect("127.0.0.1", port_of(svc))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(svc))
    refused = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert refused == TOO_MANY_CONNECTIONS.encode() + b"\r\n"
    assert (await first.cmd(b"NOOP")).code == 250
    await first.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.both_loops
async def test_per_address_limit_answers_421_from_the_outsider_only(relay_service: Any) -> None:
    svc = await relay_service({"server": {**ONLY_LOCALHOST, "client_connection_count_limit": 2}})
    port = port_of(svc)
    held = [await RawClient.connect("127.0.0.1", port, ehlo=False, source=OUTSIDER)]
    held.append(await RawClient.connect("127.0.0.1", port, ehlo=False, source=OUTSIDER))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(OUTSIDER, 0))
    assert await asyncio.wait_for(reader.read(), 10) == TOO_MANY_FROM_YOU.encode() + b"\r\n"
    writer.close()
    held.append(await RawClient.connect("127.0.0.1", port))  # allowed_clients: exempt
    for client in held:
        await client.close()


@pytest.mark.both_loops
async def test_rate_limit_answers_421_4_7_0(relay_service: Any) -> None:
    svc = await relay_service({"server": {**ONLY_LOCALHOST, "client_connection_rate_limit": 2}})
    port = port_of(svc)
    for _ in range(2):
        c = await RawClient.connect("127.0.0.1", port, ehlo=False, source=OUTSIDER)
        await c.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(OUTSIDER, 0))
    assert await asyncio.wait_for(reader.read(), 10) == RATE_EXCEEDED.encode() + b"\r\n"
    writer.close()


@pytest.mark.both_loops
async def test_connect_then_close_gives_the_slot_back_at_once(relay_service: Any) -> None:
    # idle_timeout is the default 300 s: only EOF can free these slots within the test.
    svc = await relay_service({"server": {"max_clients": 20}})
    port = port_of(svc)
    await asyncio.gather(*(connect_then_close(port, "127.0.0.1") for _ in range(60)))
    await wait_until(lambda: svc.inbound.active == 0)
    c = await RawClient.connect("127.0.0.1", port)
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()


@pytest.mark.both_loops
async def test_client_that_may_not_relay_is_cut_off_at_the_deadline_even_trickling(
    relay_service: Any,
) -> None:
    svc = await relay_service({"server": {**ONLY_LOCALHOST, "untrusted_timeout": 0.5}})
    c = await RawClient.connect("127.0.0.1", port_of(svc), ehlo=False, source=OUTSIDER)
    # One byte at a time, a command completed now and then: the idle timer never fires.
    heard, took = await trickle(c, b"NOOP\r\n", 0.01)
    said = heard.decode()
    assert took < 5
    assert "250 2.0.0 Ok" in said  # it was served while it trickled...
    assert said.endswith("421 4.4.2 relay.test Error: timeout exceeded\r\n"), said  # ...until
    await c.close()
    # An allowed client has no such deadline.
    mine = await RawClient.connect("127.0.0.1", port_of(svc))
    await asyncio.sleep(0.7)
    assert (await mine.cmd(b"NOOP")).code == 250
    await mine.close()


@pytest.mark.both_loops
async def test_a_trickled_command_line_has_idle_timeout_in_all_not_per_byte(
    relay_service: Any,
) -> None:
    """Any client: the idle timer restarts on a complete command only, so bytes that never
    make a line do not keep the session (a deadline per command line, not per read)."""
    svc = await relay_service({"server": {"idle_timeout": 0.5}})
    c = await RawClient.connect("127.0.0.1", port_of(svc), ehlo=False)
    _, took = await trickle(c, b"X", 0.05)  # never a whole line
    assert took < 2
    await c.close()


@pytest.mark.both_loops
@pytest.mark.parametrize("rate", [0, 60])
async def test_flood_from_one_outsider_does_not_lock_out_an_allowed_client(
    relay_service: Any, fake_mx: Any, rate: int
) -> None:
    """The acceptance case: 150 idle plus 150 connect-then-close connections from an
    address that may not relay, max_clients = 100: another client still sends in 10 s."""
    svc = await relay_service(
        {
            "server": {
                **ONLY_LOCALHOST,
                "max_clients": 100,
                "client_connection_rate_limit": rate,
            },
            "delivery": {"routes": {"example.test": fake_mx.address}},
        }
    )
    port = port_of(svc)

    async def idle() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(OUTSIDER, 0))
        return writer

    idlers = await asyncio.gather(*(idle() for _ in range(150)))
    await asyncio.gather(*(connect_then_close(port, OUTSIDER) for _ in range(150)))
    started = time.monotonic()
    c = await RawClient.connect("127.0.0.1", port)
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    assert (await c.cmd(b"Subject: hi\r\n\r\nbody\r\n.")).code == 250
    assert time.monotonic() - started < 10
    assert len(fake_mx.messages) == 1
    assert svc.inbound.admission.per_client[ipaddress.ip_address(OUTSIDER)] <= 50
    await c.close()
    for writer in idlers:
        writer.close()


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ({"client_connection_count_limit": -1}, "server.client_connection_count_limit"),
        ({"client_connection_rate_limit": -5}, "server.client_connection_rate_limit"),
        ({"untrusted_timeout": float("nan")}, "server.untrusted_timeout"),
        ({"untrusted_timeout": 0}, "server.untrusted_timeout"),
        ({"max_data_in_flight": 1000}, "server.max_data_in_flight"),
    ],
)
def test_admission_settings_are_validated(server: dict[str, Any], problem: str) -> None:
    from relay.config.load import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": server})
    assert [p for p in info.value.problems if p.startswith(problem)], info.value.problems


def test_zero_turns_a_per_address_limit_off() -> None:
    adm = admission(max_clients=1000, per_client=0, rate=0)
    assert all(adm.admit(A, 0.0) is None for _ in range(500))
