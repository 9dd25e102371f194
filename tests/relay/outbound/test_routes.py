"""MX and route resolution (RFC 5321 §5.1, RFC 7505) against a real DNS server on loopback,
and host fallback (connect failure, 4xx greeting) end to end."""

from __future__ import annotations

import asyncio
import random
import smtplib
from typing import Any

from policy.reply import Reply
from relay.config.schema import HostPort
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.values import Route
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX


def resolver(dns: DNSServer, timeout: float = 1.0, **kw: Any) -> MXResolver:
    return MXResolver(build_resolver([HostPort.parse(dns.nameserver, 53)], timeout), **kw)


async def test_mx_preference_order_and_addresses(dns_server: DNSServer) -> None:
    dns_server.mx("example.test", (20, "mx2.example.test"), (10, "mx1.example.test"))
    dns_server.a("mx1.example.test", "127.0.0.11")
    dns_server.aaaa("mx1.example.test", "::1")
    dns_server.a("mx2.example.test", "127.0.0.12")
    route = await resolver(dns_server, port=2525).route("Example.TEST")
    assert isinstance(route, Route)
    assert route.key == "example.test"
    assert [(t.name, t.ip, t.port) for t in route.targets] == [
        ("mx1.example.test", "127.0.0.11", 2525),
        ("mx1.example.test", "::1", 2525),
        ("mx2.example.test", "127.0.0.12", 2525),
    ]


async def test_equal_preferences_are_shuffled(dns_server: DNSServer) -> None:
    dns_server.mx("eq.test", (10, "a.eq.test"), (10, "b.eq.test"), (5, "first.eq.test"))
    for host, ip in (("a.eq.test", "127.0.0.21"), ("b.eq.test", "127.0.0.22")):
        dns_server.a(host, ip)
    dns_server.a("first.eq.test", "127.0.0.20")
    mx = resolver(dns_server, rng=random.Random(1))
    orders = set()
    for _ in range(20):
        route = await mx.route("eq.test")
        assert isinstance(route, Route)
        names = tuple(t.name for t in route.targets)
        assert names[0] == "first.eq.test"  # lower preference always first
        orders.add(names[1:])
    assert orders == {("a.eq.test", "b.eq.test"), ("b.eq.test", "a.eq.test")}


async def test_implicit_mx_null_mx_nxdomain_servfail(dns_server: DNSServer) -> None:
    dns_server.a("implicit.test", "127.0.0.30")
    dns_server.null_mx("nomail.test")
    dns_server.servfail("broken.test")
    dns_server.add("bare.test", "TXT", '"v=spf1 -all"')  # exists, but no MX and no address
    mx = resolver(dns_server)
    route = await mx.route("implicit.test")
    assert isinstance(route, Route) and [t.ip for t in route.targets] == ["127.0.0.30"]
    null = await mx.route("nomail.test")
    assert isinstance(null, Reply) and (null.code, null.enhanced) == (556, "5.1.10")
    gone = await mx.route("gone.test")
    assert isinstance(gone, Reply) and (gone.code, gone.enhanced) == (550, "5.1.2")
    broken = await mx.route("broken.test")
    assert isinstance(broken, Reply) and (broken.code, broken.enhanced) == (451, "4.4.3")
    bare = await mx.route("bare.test")
    assert isinstance(bare, Reply) and bare.code == 550


async def test_never_answering_dns_times_out_soft(dns_server: DNSServer) -> None:
    dns_server.never_answer("slow.test")
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await resolver(dns_server, timeout=0.4).route("slow.test")
    assert isinstance(result, Reply) and (result.code, result.enhanced) == (451, "4.4.3")
    assert loop.time() - started < 2


async def test_answers_are_cached_for_their_ttl(dns_server: DNSServer) -> None:
    dns_server.mx("cached.test", (10, "mx.cached.test"), ttl=300)
    dns_server.a("mx.cached.test", "127.0.0.40")
    mx = resolver(dns_server)
    await mx.route("cached.test")
    asked = len(dns_server.queries)
    await mx.route("cached.test")
    assert len(dns_server.queries) == asked  # second lookup served from the cache
    dns_server.mx("short.test", (10, "mx.short.test"), ttl=0)
    dns_server.a("mx.short.test", "127.0.0.41", ttl=0)
    await mx.route("short.test")
    asked = len(dns_server.queries)
    await mx.route("short.test")
    assert len(dns_server.queries) > asked  # TTL 0: never cached


async def test_idn_domain_looked_up_as_a_label(dns_server: DNSServer) -> None:
    dns_server.mx("xn--exmple-cua.test", (10, "mx.xn--exmple-cua.test"))
    dns_server.a("mx.xn--exmple-cua.test", "127.0.0.50")
    route = await resolver(dns_server).route("exämple.test")
    assert isinstance(route, Route) and route.targets[0].ip == "127.0.0.50"
    assert ("xn--exmple-cua.test.", "MX") in dns_server.queries


async def test_static_route_bypasses_dns(dns_server: DNSServer) -> None:
    mx = resolver(dns_server, routes={"Routed.test": "127.0.0.60:2600"})
    route = await mx.route("routed.test")
    assert isinstance(route, Route) and route.key == "[127.0.0.60]:2600"
    assert [(t.ip, t.port) for t in route.targets] == [("127.0.0.60", 2600)]
    assert dns_server.queries == []


async def test_next_host_after_connect_failure_and_4xx_greeting(
    dns_server: DNSServer, make_fake_mx: Any, relay_service: Any
) -> None:
    good: FakeMX = await make_fake_mx()
    port = good.port
    busy: FakeMX = await make_fake_mx(host="127.0.0.2", port=port, greeting="421 4.3.2 Busy")
    # MX 10 -> 127.0.0.3 (nothing listens there), MX 20 -> busy greeting, MX 30 -> good.
    dns_server.mx(
        "fall.test", (10, "dead.fall.test"), (20, "busy.fall.test"), (30, "good.fall.test")
    )
    dns_server.a("dead.fall.test", "127.0.0.3")
    dns_server.a("busy.fall.test", "127.0.0.2")
    dns_server.a("good.fall.test", "127.0.0.1")
    svc = await relay_service(
        {"dns": {"nameservers": [dns_server.nameserver]}, "delivery": {"port": port}}
    )
    host, listen_port = svc.addresses[0]

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP(host, listen_port, local_hostname="client.test", timeout=20) as c:
            c.ehlo()
            c.mail("a@sender.test")
            assert c.rcpt("x@fall.test")[0] == 250
            return c.data(b"Subject: t\r\n\r\nbody\r\n")

    code, _ = await asyncio.to_thread(run)
    assert code == 250
    assert busy.connections == 1
    assert good.messages and good.messages[0].rcpt_tos == ("x@fall.test",)
