# Connection admission, after Postfix's anvil(8): counts client connections, in total and per
# client address, and decides at connect time whether one more is admitted. It decides; it
# performs no I/O and reads no clock of its own (the caller passes `now`).
"""Who may hold a connection slot: the total limit, and per-address count and rate limits.

A client address inside `allowed_clients` is exempt from the per-address limits, as Postfix
exempts `$mynetworks` (`smtpd_client_event_limit_exceptions`): the application bouncer relays
for may open as many connections as the total allows. Every other address may hold at most
`client_connection_count_limit` connections at once and open at most
`client_connection_rate_limit` per minute, so one address cannot take every slot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 5321 §3.8: a server that will not serve a client says 421 and closes. RFC 3463: 4.3.2
# "system not accepting network messages"; 4.7.0 a policy refusal (Postfix's wording for
# smtpd_client_connection_rate_limit).
TOO_MANY_CONNECTIONS = "421 4.3.2 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.3.2 Too many connections from your address, try again later"
RATE_EXCEEDED = "421 4.7.0 Connection rate limit exceeded, try again later"

RATE_WINDOW = 60.0  # seconds: client_connection_rate_limit counts connections per minute


@dataclass(frozen=True)
class AdmissionLimits:
    """The [server] limits admission applies; 0 turns a per-address limit off."""

    max_clients: int = 500
    per_client: int = 50  # Postfix smtpd_client_connection_count_limit
    rate: int = 0  # new connections per address per RATE_WINDOW


class Admission:
    """Connection slots: `admit()` at connect (None or the 421 line), `release()` at close."""

    def __init__(self, limits: AdmissionLimits, exempt: Callable[[IPAddress | None], bool]):
        self.limits = limits
        self.exempt = exempt
        self.active = 0
        self.per_client: dict[IPAddress | None, int] = {}
        # address -> (start of its current one-minute window, connections opened in it)
        self._rates: dict[IPAddress | None, tuple[float, int]] = {}
        self._pruned = 0.0

    def admit(self, ip: IPAddress | None, now: float) -> str | None:
        """Take a slot for a new connection from `ip`, or return the reply refusing it."""
        limits = self.limits
        if self.active >= limits.max_clients:
            return TOO_MANY_CONNECTIONS
        if not self.exempt(ip):
            if limits.rate and not self._count_rate(ip, now):
                return RATE_EXCEEDED
            if limits.per_client and self.per_client.get(ip, 0) >= limits.per_client:
                return TOO_MANY_FROM_YOU
        self.active += 1
        self.per_client[ip] = self.per_client.get(ip, 0) + 1
        return None

    def release(self, ip: IPAddress | None) -> None:
        """Give back the slot of a connection from `ip` that admit() let in."""
        self.active -= 1
        left = self.per_client[ip] - 1
        if left:
            self.per_client[ip] = left
        else:
            del self.per_client[ip]  # the table holds only addresses with a connection open

    def _count_rate(self, ip: IPAddress | None, now: float) -> bool:
        """Count one connection attempt from `ip`; False when it is over the rate.

        Refused attempts count too (anvil does the same): hammering does not wait out the limit.
        """
        if now - self._pruned > RATE_WINDOW:  # forget addresses quiet for a whole window
            self._pruned = now
            self._rates = {a: w for a, w in self._rates.items() if now - w[0] < RATE_WINDOW}
        start, count = self._rates.get(ip, (now, 0))
        if now - start >= RATE_WINDOW:
            start, count = now, 0
        self._rates[ip] = (start, count + 1)
        return count < self.limits.rate
