"""policy/routing.py: which address literals may be delivered to, and the hop count."""

from __future__ import annotations

import ipaddress

import pytest

from policy.routing import hop_refusal, literal_ip, literal_refusal, received_count
from relay.config.schema import HostPort
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.values import Route

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
DOCS_V6 = (ipaddress.ip_network("2001:db8::/32"),)


@pytest.mark.parametrize(
    ("domain", "ip"),
    [
        ("[127.0.0.1]", "127.0.0.1"),
        ("[IPv6:::ffff:127.0.0.1]", "127.0.0.1"),  # mapped: the IPv4 address it reaches
        ("[ipv6:::1]", "::1"),
        ("[IPv6:2001:db8::25]", "2001:db8::25"),
        ("example.test", None),
        ("[300.1.1.1]", None),
        ("[IPv6:nope]", None),
        ("[127.0.0.1", None),
    ],
)
def test_literal_ip(domain: str, ip: str | None) -> None:
    assert literal_ip(domain) == (ipaddress.ip_address(ip) if ip else None)


def test_literals_are_refused_unless_their_network_is_allowed() -> None:
    for domain in ("[127.0.0.1]", "[IPv6:::ffff:127.0.0.1]", "[ipv6:::1]", "[0.0.0.0]", "[x]"):
        refusal = literal_refusal(domain, ())
        assert refusal is not None and (refusal.code, refusal.enhanced) == (550, "5.7.1")
    assert literal_refusal("example.test", ()) is None  # names are not literals
    assert literal_refusal("[127.0.0.1]", LOOPBACK) is None
    assert literal_refusal("[IPv6:::ffff:127.0.0.2]", LOOPBACK) is None
    assert literal_refusal("[10.0.0.1]", LOOPBACK) is not None
    assert literal_refusal("[IPv6:::1]", LOOPBACK) is not None  # another family, another net
    assert literal_refusal("[IPv6:2001:DB8::1]", DOCS_V6) is None
    assert literal_refusal("[300.1.1.1]", LOOPBACK) is not None  # unparsable: never allowed


async def test_the_resolver_never_turns_a_refused_literal_into_a_target() -> None:
    # The one place a literal becomes a connection: live RCPT, retries and DSNs alike.
    dns = build_resolver([HostPort("127.0.0.1", 9)], 0.1)  # never asked: literals need no DNS
    refused = await MXResolver(dns, port=2525).route("[127.0.0.1]")
    assert not isinstance(refused, Route) and refused.enhanced == "5.7.1"
    allowed = await MXResolver(dns, port=2525, literal_networks=LOOPBACK).route("[127.0.0.1]")
    assert isinstance(allowed, Route) and allowed.targets[0].ip == "127.0.0.1"


def test_received_headers_are_counted_in_the_header_section_only() -> None:
    head = b"Received: a\r\n\tfolded\r\nRECEIVED: b\r\nX-Received: no\r\nSubject: Received: no\r\n"
    assert received_count(head + b"\r\nReceived: in the body\r\n") == 2
    assert received_count(b"Subject: x\r\n\r\nReceived: body\r\n") == 0
    assert received_count(b"\r\nReceived: body after an empty header\r\n") == 0
    assert received_count(b"Received: x\r\nReceived: y\r\n") == 2  # no body at all
    assert hop_refusal(b"Received: x\r\n" * 2 + b"\r\n", 3) is None
    refusal = hop_refusal(b"Received: x\r\n" * 3 + b"\r\n", 3)
    assert refusal is not None and (refusal.code, refusal.enhanced) == (554, "5.4.6")
