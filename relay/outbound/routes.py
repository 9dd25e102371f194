# This module only resolves: domain -> ordered delivery targets, or the Reply that says why
# there are none. dnspython exceptions become Replies here and nowhere further in.
"""Routes and MX lookup (RFC 5321 §5.1, RFC 7505), with dnspython's asyncio resolver.

Static `[delivery.routes]` win over DNS (like Postfix transport_maps; the target is
used as is, no MX lookup, as Postfix's "[host]:port"). Otherwise: MX records by
preference, random order among equal preferences, implicit MX (the domain's own
A/AAAA) when there is no MX, null MX -> `556 5.1.10`, NXDOMAIN -> `550 5.1.2`, an address
literal outside `[delivery] allowed_address_literals` -> `550 5.7.1` (policy/routing.py),
SERVFAIL or timeout -> `451 4.4.3`. Answers are cached for their TTL by dnspython's
cache. Domains are looked up in their IDNA A-label form.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Mapping, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from policy.address import AddressError, normalize_domain
from policy.reply import Reply
from policy.routing import IPNetwork, literal_refusal
from relay.config.schema import HostPort
from relay.outbound.values import Route, Target

log = logging.getLogger(__name__)

# Postfix's smtp_mx_address_limit is 5; a few more costs nothing when hosts fail fast.
MAX_TARGETS = 10


def _temp(domain: str, why: str) -> Reply:
    # RFC 3463 X.4.3: directory server failure (DNS is the directory here).
    return Reply(
        451, "4.4.3", f"Host or domain name not found. Name service error for {domain}: {why}"
    )


def build_resolver(nameservers: Sequence[HostPort], timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver for `[dns] nameservers` (parsed; empty = the system's)."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for entry in nameservers:
            servers.append(dns.nameserver.Do53Nameserver(entry.host, entry.port))
        resolver.nameservers = servers
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.timeout = timeout
    resolver.lifetime = timeout  # the whole lookup, retries included, within [dns] timeout
    resolver.cache = dns.resolver.Cache()  # honours each answer's TTL
    return resolver


class MXResolver:
    """domain -> Route (ordered targets) or a Reply explaining why mail cannot go there."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        routes: Mapping[str, str] | None = None,
        port: int = 25,
        rng: random.Random | None = None,
        literal_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self.resolver = resolver
        self.literal_networks = tuple(literal_networks)  # where address literals may go
        self.port = port
        self.routes = routes or {}
        self.rng = rng or random.Random()

    @property
    def routes(self) -> dict[str, str]:
        """`[delivery.routes]`: domain -> "host[:port]", as configured (domains normalised)."""
        return self._routes

    @routes.setter
    def routes(self, routes: Mapping[str, str]) -> None:
        """Replace the table (at a reload too); each target is parsed here, once."""
        self._routes = {normalize_domain(d): t for d, t in routes.items()}
        self._targets = {d: HostPort.parse(t, self.port) for d, t in self._routes.items()}

    async def route(self, domain: str) -> Route | Reply:
        """The route for `domain`, or the Reply (5xx hard, 4xx soft) when there is none."""
        try:
            domain = normalize_domain(domain)
        except AddressError as exc:
            return Reply(501, "5.1.3", str(exc))
        static = self._targets.get(domain)
        if static is not None:
            return await self._static(domain, static)
        if domain.startswith("["):  # address literal: RFC 5321 §4.1.3, deliver to that IP
            # ... only in an allowed network: the one place a literal becomes a connection
            # (live RCPT, queue retries and DSNs alike). Else 550 5.7.1, nothing connects.
            refusal = literal_refusal(domain, self.literal_networks)
            if refusal is not None:
                return refusal
            ip = domain[1:-1].removeprefix("IPv6:").removeprefix("ipv6:")
            return Route(domain, (Target(ip, ip, self.port),))
        return await self._mx(domain)

    async def _static(self, domain: str, target: HostPort) -> Route | Reply:
        host, port = target.host, target.port
        key = f"[{host}]:{port}"
        if _is_ip(host):
            return Route(key, (Target(host, host, port),))
        addresses = await self._addresses(host)
        if isinstance(addresses, Reply):
            return addresses
        if not addresses:
            return _temp(domain, f"route host {host} has no address")
        return Route(key, tuple(Target(host, ip, port) for ip in addresses))

    async def _mx(self, domain: str) -> Route | Reply:
        try:
            answer = await self.resolver.resolve(domain, "MX", search=False)
            records = [(rr.preference, rr.exchange.to_text(omit_final_dot=True)) for rr in answer]
        except dns.resolver.NXDOMAIN:
            return Reply(
                550, "5.1.2", f"Host or domain name not found. Domain {domain} does not exist"
            )
        except dns.resolver.NoAnswer:
            records = []  # RFC 5321 §5.1: no MX, so the domain itself is the implicit MX
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            return _temp(domain, type(exc).__name__)
        except dns.exception.DNSException as exc:
            return _temp(domain, str(exc) or type(exc).__name__)
        if any(exchange in ("", ".") for _, exchange in records):
            # RFC 7505 §3: a null MX (preference 0, exchange ".") says: this domain takes no mail.
            return Reply(
                556,
                "5.1.10",
                f"Recipient address rejected: domain {domain} accepts no mail (null MX)",
            )
        implicit = not records
        hosts = [domain] if implicit else self._order(records)
        targets: list[Target] = []
        temp_failures = 0
        for host, addresses in zip(
            hosts, await asyncio.gather(*(self._addresses(h) for h in hosts)), strict=True
        ):
            if isinstance(addresses, Reply):
                temp_failures += 1
                continue
            targets.extend(Target(host, ip, self.port) for ip in addresses)
        if targets:
            return Route(domain, tuple(targets[:MAX_TARGETS]))
        if temp_failures:
            return _temp(domain, "MX host lookup failed")
        if implicit:
            # The name exists but has neither MX nor address: nothing can ever deliver there.
            return Reply(
                550, "5.1.2", f"Host or domain name not found. {domain} has no MX or address record"
            )
        return Reply(451, "4.4.4", f"Unable to route: no address for any MX host of {domain}")

    def _order(self, records: list[tuple[int, str]]) -> list[str]:
        """RFC 5321 §5.1: lowest preference first; equal preferences in random order."""
        shuffled = list(records)
        self.rng.shuffle(shuffled)
        shuffled.sort(key=lambda r: r[0])  # stable: the shuffle survives within a preference
        seen: set[str] = set()
        ordered: list[str] = []
        for _, host in shuffled:
            if host.lower() not in seen:
                seen.add(host.lower())
                ordered.append(host)
        return ordered

    async def _addresses(self, host: str) -> list[str] | Reply:
        """IPv4 then IPv6 addresses of `host`; [] when it has none, a Reply on a DNS failure."""
        if _is_ip(host):
            return [host]
        results = await asyncio.gather(
            self._lookup(host, "A"), self._lookup(host, "AAAA"), return_exceptions=False
        )
        if all(isinstance(r, Reply) for r in results):
            return results[0]
        return [ip for r in results if not isinstance(r, Reply) for ip in r]

    async def _lookup(self, host: str, rdtype: str) -> list[str] | Reply:
        try:
            answer = await self.resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            log.info("address lookup %s %s failed: %s", host, rdtype, exc)
            return _temp(host, type(exc).__name__)
        return [rr.address for rr in answer]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
