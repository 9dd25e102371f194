"""MTA-STS (RFC 8461): the record and policy parsers, then real lookups: the loopback DNS
server serves `_mta-sts` TXT and the MX records, an aiohttp HTTPS server with the test's
CA serves the policy, and the fake MX presents a certificate (or not) for its name."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from policy.mta_sts import StsPolicy, parse_policy, record_id
from relay.config.schema import HostPort
from relay.outbound.mta_sts import StsPolicies
from relay.outbound.routes import build_resolver
from relay.service import Service
from relay.store.env import open_state
from relay.store.writer import Writer
from tests.support.certs import TestCA, self_signed, server_context
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.relay_client import send_one
from tests.support.wait import until

DOMAIN = "dest.test"
MX = "mx.dest.test"


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20260101T1"], "20260101T1"),
        (["v=STSv1;id=abc;"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),
        (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # §3.1: several records: none
        (["v=STSv1; id=not-alnum"], None),
        (["v=STSv2; id=a"], None),
        ([], None),
    ],
)
def test_record_id(records: list[str], expected: str | None) -> None:
    assert record_id(records) == expected


def test_policy_parsing_and_mx_matching() -> None:
    policy = parse_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\n"
        "max_age: 86400\r\n"
    )
    assert (policy.mode, policy.max_age) == ("enforce", 86400)
    assert policy.allows("MX1.example.com.") and policy.allows("a.mail.example.com")
    assert not policy.allows("a.b.mail.example.com")  # "*" is exactly one label (§4.1)
    assert not policy.allows("mail.example.com") and not policy.allows("mx2.example.com")
    assert parse_policy("version: STSv1\nmode: testing\nmx: x\nmax_age: 9999999999").max_age
    for bad, why in [
        ("mode: enforce\nmx: x\nmax_age: 1", "version"),
        ("version: STSv1\nmode: strict\nmx: x\nmax_age: 1", "mode"),
        ("version: STSv1\nmode: enforce\nmx: x\nmax_age: soon", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 1", "no mx"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_policy(bad)
    assert parse_policy("version: STSv1\nmode: enforce\nmx: x\nmax_age: 2000000000").max_age == (
        31_557_600
    )


class PolicyServer:
    """HTTPS on loopback serving /.well-known/mta-sts.txt (the test's CA signs its cert)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.body = ""
        self.content_type = "text/plain"
        self.status = 200
        self.hits = 0
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.status in (301, 302):
            raise web.HTTPFound("https://elsewhere.test/.well-known/mta-sts.txt")
        return web.Response(text=self.body, status=self.status, content_type=self.content_type)

    async def start(self) -> PolicyServer:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
async def policy_server(ca: TestCA, dns_server: DNSServer) -> AsyncIterator[PolicyServer]:
    server = await PolicyServer(server_context(*ca.issue(f"mta-sts.{DOMAIN}"))).start()
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=one"')
    dns_server.a(f"mta-sts.{DOMAIN}", "127.0.0.1")
    dns_server.mx(DOMAIN, (10, MX))
    dns_server.a(MX, "127.0.0.1")
    yield server
    await server.stop()


def _policies(
    dns_server: DNSServer,
    server: PolicyServer,
    ca: TestCA,
    clock: Callable[[], float] = time.time,
    env: Any = None,
    writer: Writer | None = None,
) -> StsPolicies:
    resolver = build_resolver([HostPort.parse(dns_server.nameserver, 53)], 2)
    return StsPolicies(
        resolver, env, writer, port=server.port, timeout=5, ca_file=ca.cert_file, clock=clock
    )


async def _send(svc: Service) -> tuple[int, bytes]:
    return await send_one(svc, f"b@{DOMAIN}")


async def _relay(
    relay_service: Any, dns_server: DNSServer, server: PolicyServer, ca: TestCA, mx: FakeMX
) -> Service:
    return await relay_service(
        {
            # opportunistic: only the policy makes TLS verified and mandatory here
            "delivery": {"starttls": "opportunistic", "ca_file": ca.cert_file, "port": mx.port},
            "dns": {"nameservers": [dns_server.nameserver]},
            "mta_sts": {"enabled": True, "port": server.port, "timeout": 5.0},
            "policy": {"soft_bounce": "pass"},
        }
    )


@pytest.mark.parametrize(
    ("mode", "policy_mx", "cert", "delivered", "why"),
    [
        ("enforce", MX, "trusted", True, ""),
        ("enforce", "*.dest.test", "trusted", True, ""),
        ("enforce", "mx.other.test", "trusted", False, b"allows none of its MX hosts"),
        ("enforce", MX, "self-signed", False, b"self-signed certificate"),
        ("testing", "mx.other.test", "self-signed", True, ""),
    ],
    ids=["enforce-ok", "enforce-wildcard", "enforce-mx-mismatch", "enforce-bad-cert", "testing"],
)
async def test_policies_through_bouncer(
    tmp_path: Path,
    ca: TestCA,
    dns_server: DNSServer,
    policy_server: PolicyServer,
    relay_service: Any,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    policy_mx: str,
    cert: str,
    delivered: bool,
    why: bytes,
) -> None:
    policy_server.body = policy_text(mode, policy_mx)
    pair = ca.issue(MX) if cert == "trusted" else self_signed(tmp_path, MX)
    async with FakeMX(tls_context=server_context(*pair)) as mx:
        svc = await _relay(relay_service, dns_server, policy_server, ca, mx)
        with caplog.at_level(logging.INFO):
            code, text = await _send(svc)
        assert policy_server.hits == 1
        if delivered:
            assert code == 250 and len(mx.messages) == 1
        else:
            assert (code, text[:5]) == (451, b"4.7.5") and why in text, text
            assert mx.messages == [] and mx.commands.count("MAIL") == 0
        if why == b"self-signed certificate":  # kept for a TLS-RPT report too
            failure = svc.delivery.sts.failures[-1]  # type: ignore[union-attr]
            assert failure["result-type"] == "certificate-not-trusted"
            assert failure["receiving-mx-hostname"] == MX
        if mode == "testing":
            assert "MX host mx.dest.test is not in the policy" in caplog.text
            failures = svc.delivery.sts.failures  # type: ignore[union-attr]
            assert failures[-1]["result-type"] == "validation-failure"
            assert failures[-1]["receiving-mx-hostname"] == MX


async def test_no_record_means_no_policy(
    ca: TestCA, dns_server: DNSServer, policy_server: PolicyServer, relay_service: Any
) -> None:
    dns_server.records.pop((f"_mta-sts.{DOMAIN}.", "TXT"))
    policy_server.body = policy_text("enforce", "mx.other.test")
    async with FakeMX() as mx:  # no TLS at all: delivered in clear, as opportunistic says
        svc = await _relay(relay_service, dns_server, policy_server, ca, mx)
        code, _ = await _send(svc)
    assert code == 250 and policy_server.hits == 0


FETCH = "sts-policy-fetch-error"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "result"),
    [(302, "text/plain", "", FETCH), (404, "text/plain", "", FETCH),
     (200, "text/html", "x", FETCH),
     (200, "text/plain", "version: STSv1\nmode: enforce\nmx: m\nmax_age: 1\n" + "#" * 70000,
      FETCH),
     (200, "text/plain", "version: STSv9\nmode: enforce\nmx: m\nmax_age: 1\n",
      "sts-policy-invalid")],
    ids=["redirect", "not-found", "html", "too-large", "invalid"],
)  # fmt: skip
async def test_bad_fetches_are_no_policy_and_are_recorded(
    ca: TestCA, dns_server: DNSServer, policy_server: PolicyServer,
    status: int, content_type: str, body: str, result: str,
) -> None:  # fmt: skip
    policy_server.status, policy_server.content_type = status, content_type
    policy_server.body = body
    sts = _policies(dns_server, policy_server, ca)
    try:
        assert await sts.lookup(DOMAIN) is None
        assert sts.failures[-1]["result-type"] == result
    finally:
        await sts.close()


async def test_the_cache_survives_a_restart_and_outlives_an_outage(
    tmp_path: Path, ca: TestCA, dns_server: DNSServer, policy_server: PolicyServer
) -> None:
    policy_server.body = policy_text("enforce", MX, max_age=3600)
    now = [1_000_000.0]
    stored: list[list[dict[str, Any]]] = []

    async def lookup() -> StsPolicy | None:
        env = open_state(tmp_path / "state", 1 << 24)
        writer = Writer()
        sts = _policies(dns_server, policy_server, ca, lambda: now[0], env, writer)
        try:
            policy = await sts.lookup(DOMAIN)
            sts.record_failure(DOMAIN, "validation-failure", receiving_mx_hostname=MX)
            return policy
        finally:
            await sts.close()
            stored.append(sts.stored_failures())
            await asyncio.get_running_loop().run_in_executor(None, writer.close)
            env.close()

    first = await lookup()
    assert first is not None and first.mode == "enforce" and policy_server.hits == 1
    # A restart, with the policy host and the TXT record gone (an attacker's outage):
    await policy_server.stop()
    dns_server.records.pop((f"_mta-sts.{DOMAIN}.", "TXT"))
    now[0] += 3000
    assert await lookup() == first  # still in force, from the LMDB cache
    now[0] += 700  # past max_age: expired, and nothing to fetch
    assert await lookup() is None
    # The TLS-RPT records outlive restarts too, counted per day, domain, result and host.
    (record,) = stored[-1]
    assert (record["result-type"], record["receiving-mx-hostname"]) == ("validation-failure", MX)
    assert record["failed-session-count"] == 3 and record["policy-domain"] == DOMAIN


async def test_a_policy_in_use_is_refreshed_in_the_background(
    ca: TestCA, dns_server: DNSServer, policy_server: PolicyServer
) -> None:
    policy_server.body = policy_text("enforce", MX, max_age=86400 * 7)
    now = [1_000_000.0]
    sts = _policies(dns_server, policy_server, ca, lambda: now[0])
    try:
        first = await sts.lookup(DOMAIN)
        assert first is not None and policy_server.hits == 1
        now[0] += 3600
        assert await sts.lookup(DOMAIN) == first and policy_server.hits == 1  # fresh enough
        policy_server.body = policy_text("enforce", MX, "mx2.dest.test", max_age=86400 * 7)
        now[0] += 86400  # a day after the fetch: the same id, fetched again meanwhile
        assert await sts.lookup(DOMAIN) == first  # answered from the cache at once
        await until(lambda: not sts.refreshing, "the background refresh")
        assert policy_server.hits == 2
        renewed = await sts.lookup(DOMAIN)
        assert renewed is not None and renewed.mx == (MX, "mx2.dest.test")
        assert sts.memory[DOMAIN][1] == now[0] + 86400 * 7  # the expiry moved on
    finally:
        await sts.close()
