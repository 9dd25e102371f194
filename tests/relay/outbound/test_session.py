"""Remote sessions: STARTTLS levels, dead pooled sessions, client aborts, client limits, and
Delivery.deliver_message (the queue runner's entry point). Real sockets on loopback only."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from relay.config.schema import HostPort, StartTLS
from relay.outbound.delivery import Delivery
from relay.outbound.pool import Busy, SessionPool
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.values import Route, Target
from tests.support.fake_mx import FakeMX
from tests.support.wait import until


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "2", "-subj", "/CN=mx.fake.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(crt), str(key)


def server_tls(cert: tuple[str, str], broken: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if broken:
        # Offer STARTTLS but only speak TLS 1.0, which modern clients refuse: the handshake fails.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = ssl.TLSVersion.TLSv1
    return ctx


def settings(starttls: StartTLS = "opportunistic") -> OutboundSettings:
    return OutboundSettings("relay.test", 2.0, 5.0, starttls)


def route_to(mx: FakeMX) -> Route:
    return Route(f"[{mx.host}]:{mx.port}", (Target(mx.host, mx.host, mx.port),))


async def test_opportunistic_starttls_is_used(make_fake_mx: Any, cert: tuple[str, str]) -> None:
    mx = await make_fake_mx(tls_context=server_tls(cert))
    session = await open_session(route_to(mx), settings())
    assert isinstance(session, RemoteSession) and session.tls
    assert (await session.mail("a@sender.test")).code == 250
    assert (await session.rcpt("b@example.test")).code == 250
    assert (await session.data(b"Subject: tls\r\n\r\nx\r\n")).code == 250
    await session.quit()
    assert len(mx.messages) == 1
    assert mx.helos.count("relay.test") == 2  # EHLO again after STARTTLS (RFC 3207 §4.2)


async def test_failed_handshake_falls_back_to_plain(
    make_fake_mx: Any, cert: tuple[str, str]
) -> None:
    mx = await make_fake_mx(tls_context=server_tls(cert, broken=True))
    session = await open_session(route_to(mx), settings())
    assert isinstance(session, RemoteSession) and not session.tls
    assert (await session.mail("a@sender.test")).code == 250
    await session.quit()
    assert mx.connections == 2  # the failed TLS connection, then a fresh plain one


async def test_required_tls_refuses_a_host_without_it(make_fake_mx: Any) -> None:
    mx = await make_fake_mx()
    result = await open_session(route_to(mx), settings("required"))
    assert not isinstance(result, RemoteSession)
    assert (result.code, result.enhanced) == (451, "4.7.4")


async def test_off_never_tries_starttls(make_fake_mx: Any, cert: tuple[str, str]) -> None:
    mx = await make_fake_mx(tls_context=server_tls(cert))
    session = await open_session(route_to(mx), settings("off"))
    assert isinstance(session, RemoteSession) and not session.tls
    await session.quit()


async def test_connection_refused_is_a_synthetic_4_4_1() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    route = Route("x", (Target("nothing.test", "127.0.0.1", port),))
    result = await open_session(route, settings())
    assert not isinstance(result, RemoteSession)
    assert (result.code, result.enhanced) == (451, "4.4.1")
    assert f"127.0.0.1]:{port}" in result.text


def _pool() -> SessionPool:
    async def opener(route: Route) -> Any:
        return await open_session(route, settings())

    return SessionPool(opener, max_per_destination=2, idle_timeout=5, wait_timeout=0.3)


async def test_pool_reuses_caps_and_reconnects_a_dead_session(fake_mx: FakeMX) -> None:
    pool = _pool()
    resolver = MXResolver(
        build_resolver([HostPort("127.0.0.1", 9)], 0.2), routes={"example.test": fake_mx.address}
    )
    delivery = Delivery(resolver, pool)
    route = await delivery.route("example.test")
    assert isinstance(route, Route)
    a, b = await pool.acquire(route), await pool.acquire(route)
    assert isinstance(a, RemoteSession) and isinstance(b, RemoteSession)
    capped = await pool.acquire(route)  # the third waits for a slot, then gives up softly
    assert isinstance(capped, Busy) and capped.reply.code == 451
    pool.release(a)
    pool.release(b)
    assert pool.idle_count == 2
    # The remote drops every connection while they sit idle in the pool.
    for proto in fake_mx._protocols:
        if proto.transport is not None:
            proto.transport.close()
    await until(lambda: not a.connected and not b.connected, "the pooled sessions to see EOF")
    out = await delivery.deliver_message(
        "a@sender.test", ["b@example.test"], b"Subject: x\r\n\r\ny\r\n"
    )
    assert out["b@example.test"].reply.code == 250 and out["b@example.test"].stage == "DATA"
    assert len(fake_mx.messages) == 1 and fake_mx.connections == 3
    await pool.close()


async def test_deliver_message_per_recipient_outcomes(make_fake_mx: Any) -> None:
    one = await make_fake_mx()
    two = await make_fake_mx()
    two.rcpt_replies["dead@two.test"] = "550 5.1.1 No such user"
    resolver = MXResolver(
        build_resolver([HostPort("127.0.0.1", 9)], 0.2),
        routes={"one.test": one.address, "two.test": two.address},
    )
    delivery = Delivery(resolver, _pool())
    out = await delivery.deliver_message(
        "a@sender.test", ["x@one.test", "dead@two.test", "ok@two.test"], b"Subject: x\r\n\r\ny\r\n"
    )
    assert out["x@one.test"].reply.code == 250 and out["x@one.test"].relay.endswith(f":{one.port}")
    assert (out["dead@two.test"].reply.code, out["dead@two.test"].stage) == (550, "RCPT")
    assert out["dead@two.test"].reply.host == "127.0.0.1[127.0.0.1]"
    assert out["ok@two.test"].reply.code == 250
    assert two.messages[0].rcpt_tos == ("ok@two.test",)
    await delivery.pool.close()


async def test_client_vanishing_during_slow_rcpt_leaves_no_remote_transaction(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_delay = 0.5
    svc = await relay_service({"delivery": {"routes": {"example.test": fake_mx.address}}})
    host, port = svc.addresses[0]

    def send_rcpt() -> socket.socket:
        s = socket.create_connection((host, port), timeout=5)
        s.recv(1000)
        s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\n")
        seen = b""
        while b"2.1.0" not in seen:
            seen += s.recv(1000)
        s.sendall(b"RCPT TO:<b@example.test>\r\n")
        return s

    s = await asyncio.to_thread(send_rcpt)
    await until(lambda: "RCPT b@example.test" in fake_mx.commands, "the RCPT at the remote")
    s.close()  # gone while bouncer waits for the remote's RCPT reply
    await until(lambda: "QUIT" in fake_mx.commands, "the remote session's QUIT")
    # The RCPT in flight was cut off, so its reply would desynchronise a reused session:
    # the session is closed (QUIT), not returned to the pool.
    assert fake_mx.commands == ["MAIL a@sender.test", "RCPT b@example.test", "QUIT"]
    assert svc.delivery.pool.idle_count == 0
    assert fake_mx.messages == []


async def test_max_clients_answers_421(relay_service: Any) -> None:
    svc = await relay_service({"server": {"max_clients": 1}})
    host, port = svc.addresses[0]

    def two_clients() -> tuple[int, int]:
        first = smtplib.SMTP(host, port, timeout=5)
        try:
            with pytest.raises(smtplib.SMTPConnectError) as info:
                smtplib.SMTP(host, port, timeout=5)
            return first.noop()[0], info.value.smtp_code
        finally:
            first.quit()

    assert await asyncio.to_thread(two_clients) == (250, 421)


async def test_idle_client_is_disconnected(relay_service: Any) -> None:
    svc = await relay_service({"server": {"idle_timeout": 0.3}})
    host, port = svc.addresses[0]

    def idle() -> bytes:
        with socket.create_connection((host, port), timeout=5) as s:
            s.recv(1000)
            s.settimeout(3)
            return s.recv(1000)  # b"" when the server hangs up

    assert await asyncio.to_thread(idle) == b""


def test_serve_help_lists_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--config" in out.stdout


async def test_multiline_remote_reply_keeps_one_enhanced_code(make_fake_mx: Any) -> None:
    mx = await make_fake_mx()
    mx.rcpt_replies["dead@example.test"] = "550-5.1.1 No such user\r\n550 5.1.1 see https://help"
    session = await open_session(route_to(mx), settings("off"))
    assert isinstance(session, RemoteSession)
    await session.mail("a@sender.test")
    reply = await session.rcpt("dead@example.test")
    assert (reply.code, reply.enhanced, reply.text) == (
        550,
        "5.1.1",
        "No such user\nsee https://help",
    )
    assert reply.host == "127.0.0.1[127.0.0.1]"
    await session.quit()


async def test_idle_sessions_are_closed(fake_mx: FakeMX) -> None:
    async def opener(route: Route) -> Any:
        return await open_session(route, settings("off"))

    pool = SessionPool(opener, max_per_destination=2, idle_timeout=0.2, wait_timeout=1)
    session = await pool.acquire(route_to(fake_mx))
    assert isinstance(session, RemoteSession)
    pool.release(session)
    assert pool.idle_count == 1
    await until(lambda: fake_mx.commands[-1:] == ["QUIT"], "the idle session's QUIT")
    assert pool.idle_count == 0
    await pool.close()


async def test_too_many_unknown_commands_end_with_421(relay_service: Any) -> None:
    svc = await relay_service()
    host, port = svc.addresses[0]

    def bogus() -> list[bytes]:
        with socket.create_connection((host, port), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()
            replies = []
            for _ in range(6):
                s.sendall(b"BOGUS\r\n")
                line = f.readline()
                if not line:
                    break
                replies.append(line)
                if line.startswith(b"421"):
                    assert f.readline() == b""  # and the server hung up
                    break
            return replies

    replies = await asyncio.to_thread(bogus)
    assert replies[-1].startswith(b"421 4.7.0 ")
    assert all(r.startswith(b"500 5.5.2") for r in replies[:-1])


@pytest.mark.parametrize("line", [b"VRFY 0@", b"MAIL FROM:0@", b"RCPT TO:0@"])
async def test_addresses_that_break_the_stdlib_parser_get_a_clean_reply(
    relay_service: Any, line: bytes
) -> None:
    svc = await relay_service()
    host, port = svc.addresses[0]

    def talk() -> bytes:
        with socket.create_connection((host, port), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()
            for cmd in (b"EHLO c.test", b"MAIL FROM:<a@sender.test>"):
                s.sendall(cmd + b"\r\n")
                while f.readline()[3:4] == b"-":  # skip to the last line of the reply
                    pass
            s.sendall(line + b"\r\n")
            return f.readline()

    reply = await asyncio.to_thread(talk)
    assert reply[:1] in (b"2", b"5") and b"Error: (" not in reply, reply
