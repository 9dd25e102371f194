# The connection-level guard of an SMTP listener: who the peer is, a 421 that works on every
# loop, and a listener whose every client is a stranger (the late-bounce intake). Shared by
# relay/inbound/server.py and relay/intake/listener.py; it imports neither.
"""Admission at connect, EOF that frees the slot, and one deadline per session.

`GuardedSMTP` is aiosmtpd's protocol with what relay/inbound/server.py gives the clients
that may not relay: per-address and total limits at connect (relay/inbound/admission.py),
answered `421` and closed when over; a client's EOF ends its session at once (no slot held
in CLOSE-WAIT); and a deadline from connect after which the session is ended whatever the
client is doing, so trickling a byte at a time does not hold a slot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

from aiosmtpd.smtp import SMTP

from relay.inbound.admission import Admission, AdmissionLimits, IPAddress

log = logging.getLogger(__name__)

# Postfix's wording when a client runs out of time (RFC 5321 §3.8: 421 and the host name).
TIMEOUT_EXCEEDED = "421 4.4.2 {} Error: timeout exceeded"


def peer_address(peer: Any) -> IPAddress | None:
    """The client's address from a transport's `peername`, or None when it has none."""
    if not (isinstance(peer, tuple) and peer):
        return None
    try:
        ip = ipaddress.ip_address(str(peer[0]).split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped  # a dual-stack "::" listener sees IPv4 clients as ::ffff:a.b.c.d
    return ip


def hang_up(transport: asyncio.BaseTransport, line: str) -> None:
    """Say `line` (a 421, RFC 5321 §3.8) and close: only write() and close(), which every
    loop's transports have (uvloop's refuse other calls before the protocol is set up)."""
    transport.write(line.encode("ascii", "replace") + b"\r\n")  # type: ignore[attr-defined]
    transport.close()


def hang_up_in_session(transport: asyncio.BaseTransport, line: str, linger: float = 1.0) -> None:
    """Say `line` to a client in session and close without losing it.

    Closing a socket that still holds unread client bytes (a trickler's) makes the kernel
    send RST, and a RST can discard the 421 before the client reads it. So: stop reading,
    send the line and a FIN, and close after `linger` seconds.
    """
    transport.write(line.encode("ascii", "replace") + b"\r\n")  # type: ignore[attr-defined]
    try:
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError, RuntimeError):
        transport.close()
        return
    asyncio.get_running_loop().call_later(linger, transport.close)


class Gate:
    """One listener's connection slots and session deadline; no client is exempt."""

    def __init__(self, limits: AdmissionLimits, session_timeout: float) -> None:
        self.admission = Admission(limits, lambda ip: False)
        self.session_timeout = session_timeout
        self.protocols: set[GuardedSMTP] = set()

    @property
    def active(self) -> int:
        """Client connections holding a slot."""
        return self.admission.active

    def close_all(self) -> None:
        """Shutdown: close every admitted client's connection."""
        for proto in list(self.protocols):
            if proto.transport is not None:
                proto.transport.close()


class SlotSMTP(SMTP):
    """aiosmtpd's protocol for a connection that holds an admission slot until it is lost.

    A subclass admits in connection_made (`_refuse()` when over a limit), may set `_deadline`,
    and gives the slot back in `_release_slot()`.
    """

    _refused = False
    _deadline: asyncio.TimerHandle | None = None

    def _refuse(self, transport: asyncio.BaseTransport, line: str, who: object) -> None:
        """Over a limit (relay/inbound/admission.py): say so and hang up; no session starts."""
        self._refused = True
        log.info("%s: refused: %s", who, line)
        hang_up(transport, line)

    def _release_slot(self) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        super().eof_received()
        # aiosmtpd keeps a half-closed connection open (StreamReaderProtocol's True), and when
        # EOF comes before its session task first runs (uvloop does that for a client that
        # connects and closes) nothing ever closes it: the slot stayed held, in CLOSE-WAIT,
        # until the idle timeout. A client that has closed its side has nothing more to say.
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)
        self._release_slot()


class GuardedSMTP(SlotSMTP):
    """aiosmtpd's protocol under a `Gate`: admitted at connect, released at close."""

    _admitted = False
    ip: IPAddress | None = None

    def __init__(self, gate: Gate, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = not self._admitted
        if first:
            self.ip = peer_address(transport.get_extra_info("peername"))
            refusal = self.gate.admission.admit(self.ip, time.monotonic())
            if refusal is not None:
                self._refuse(transport, refusal, self.ip)
                return
            self._admitted = True
            self.gate.protocols.add(self)
        super().connection_made(transport)
        if first:
            self._deadline = self.loop.call_later(self.gate.session_timeout, self._expired)

    def _expired(self) -> None:
        if self.transport is None:
            return
        log.info("%s: session deadline reached; closing", self.ip)
        hang_up_in_session(self.transport, TIMEOUT_EXCEEDED.format(self.hostname))

    def _release_slot(self) -> None:
        if self._admitted:
            self._admitted = False
            self.gate.protocols.discard(self)
            self.gate.admission.release(self.ip)
