# This module looks up TLSA records for MX hosts and trusts them only when the resolver
# says it validated them (the AD bit): DANE on unvalidated records would let whoever
# forges DNS pin their own certificate. What matches is policy/dane.py's decision.
"""DANE for SMTP (RFC 7672), DANE-EE(3) only.

`DaneLookup.validating()` asks the `[dns]` resolver for a name that is signed
(`[dane] check_name`, the root by default) and says whether the answer came back with the
AD bit: bouncer refuses to start with `[dane] enabled` otherwise. `tlsa(host, port)`
returns the usable records at `_port._tcp.host` when the answer is authenticated, () when
there are none or the zone is unsigned (no DANE for that host), and None when the lookup
failed (RFC 7672 §2.2.2: the host is not used, softly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver

from policy.dane import Tlsa, usable
from relay.config.schema import HostPort
from relay.outbound.routes import build_resolver

log = logging.getLogger(__name__)


class DaneLookup:
    def __init__(
        self, nameservers: Sequence[HostPort], timeout: float, check_name: str = "."
    ) -> None:
        self.resolver: dns.asyncresolver.Resolver = build_resolver(nameservers, timeout)
        # Ask for authenticated data (RFC 6840 §5.7) and signatures' room (EDNS0, DO).
        self.resolver.flags = dns.flags.RD | dns.flags.AD
        self.resolver.use_edns(0, dns.flags.DO, 1232)
        self.check_name = check_name

    async def validating(self) -> bool:
        """Whether the resolver validated the answer for `check_name` (AD bit set)."""
        try:
            answer = await self.resolver.resolve(self.check_name, "SOA")
        except dns.exception.DNSException as exc:
            log.warning("DANE check: %s SOA: %s", self.check_name, exc)
            return False
        return bool(answer.response.flags & dns.flags.AD)

    async def tlsa(self, host: str, port: int) -> tuple[Tlsa, ...] | None:
        name = f"_{port}._tcp.{host.rstrip('.')}"
        try:
            answer = await self.resolver.resolve(name, "TLSA")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except dns.exception.DNSException as exc:
            log.warning("DANE: TLSA lookup for %s failed: %s", name, exc)
            return None
        if not answer.response.flags & dns.flags.AD:
            return ()  # an unsigned (insecure) zone: no DANE for this host (RFC 7672 §2.2)
        records = [Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in answer]
        return usable(records)
