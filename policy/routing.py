# What bouncer refuses to route, decided from the address or the message alone; no I/O.
"""Routing refusals: address literals outside the allowed networks, and mail loops.

An address literal (`user@[127.0.0.1]`, RFC 5321 §4.1.3) names the IP to connect to: any
client allowed to relay could make bouncer connect to the host's own loopback services or
its private network (server-side request forgery). Literals are refused (`550 5.7.1`)
unless their network is listed in `[delivery] allowed_address_literals`. An IPv4-mapped
IPv6 literal (`[IPv6:::ffff:127.0.0.1]`) is the IPv4 address it maps to. Source routes
(`<@a,@b:user@[127.0.0.1]>`) are ignored as RFC 5321 §3.3 asks: the mailbox decides.

RFC 5321 §6.3: a message that has passed through more relays than any legitimate route
needs is in a loop; it is refused (`554 5.4.6`) once it carries `max_hops` Received:
headers (Postfix's hopcount_limit).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from policy.reply import Reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def literal_ip(domain: str) -> IPAddress | None:
    """The IP an address-literal domain names ("[192.0.2.1]", "[IPv6:2001:db8::1]"), IPv4
    for an IPv4-mapped IPv6 literal; None for a domain name or a literal that does not parse."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ip6 = ipaddress.IPv6Address(inner[5:])
            return ip6.ipv4_mapped or ip6
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


def literal_refusal(domain: str, allowed: Sequence[IPNetwork]) -> Reply | None:
    """None for a domain name or an allowed literal; else the `550 5.7.1` refusal."""
    if not domain.startswith("["):
        return None
    ip = literal_ip(domain)
    if ip is not None and any(ip in net for net in allowed if net.version == ip.version):
        return None
    return Reply(
        550,
        "5.7.1",
        f"Recipient address rejected: delivery to the address literal {domain} is not allowed",
    )


def received_count(message: bytes) -> int:
    """How many Received: header fields the message's header section has (RFC 5322 §3.6.7)."""
    if message.startswith(b"\r\n"):
        return 0  # an empty header section: the body starts at once
    end = message.find(b"\r\n\r\n")
    head = (message if end < 0 else message[: end + 2]).lower()
    return head.count(b"\r\nreceived:") + head.startswith(b"received:")


def hop_refusal(message: bytes, max_hops: int) -> Reply | None:
    """None when the message may take one more hop; else the `554 5.4.6` mail-loop refusal."""
    hops = received_count(message)
    if hops < max_hops:
        return None
    return Reply(554, "5.4.6", f"Too many hops ({hops} Received: headers): mail forwarding loop")
