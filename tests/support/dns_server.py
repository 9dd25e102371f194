# A small authoritative DNS responder on loopback (UDP + TCP, same port) for tests.
#
# Built from dnspython's message API so bouncer's real resolver code is exercised
# against real packets: no resolver mocks. Runs on the test's own event loop.
"""Loopback DNS server for tests.

Usage::

    async with DNSServer() as dns:
        dns.mx("example.test", (10, "mx1.example.test"), (20, "mx2.example.test"))
        dns.a("mx1.example.test", "127.0.0.1")
        dns.null_mx("nomail.test")
        dns.nxdomain("gone.test")            # names nobody added are NXDOMAIN too
        dns.servfail("broken.test")
        dns.never_answer("slow.test")
        config nameservers = [dns.nameserver]   # "127.0.0.1:PORT"

Records: ``queries`` lists every (name, type) asked, e.g. ("example.test.", "MX").
Names are matched case-insensitively, with or without the trailing dot.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import typing
from dataclasses import dataclass, field
from typing import Any, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


@dataclass
class DNSServer:
    """UDP+TCP responder; see the module docstring."""

    host: str = "127.0.0.1"
    ttl: int = 300
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    ttls: dict[tuple[str, str], int] = field(default_factory=dict)
    nxdomains: set[str] = field(default_factory=set)
    servfails: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.base_events.Server | None = None

    # --- zone building -------------------------------------------------------------

    def add(self, name: str, rdtype: str, *values: str, ttl: int | None = None) -> None:
        """Add records in presentation form: add("x.test", "MX", "10 mx.x.test.")."""
        key = (_key(name), rdtype.upper())
        self.records.setdefault(key, []).extend(values)
        if ttl is not None:
            self.ttls[key] = ttl

    def mx(self, domain: str, *prefs: tuple[int, str], ttl: int | None = None) -> None:
        self.add(domain, "MX", *(f"{p} {_key(h)}" for p, h in prefs), ttl=ttl)

    def a(self, name: str, *ips: str, ttl: int | None = None) -> None:
        self.add(name, "A", *ips, ttl=ttl)

    def aaaa(self, name: str, *ips: str, ttl: int | None = None) -> None:
        self.add(name, "AAAA", *ips, ttl=ttl)

    def null_mx(self, domain: str) -> None:
        """RFC 7505: a single MX of preference 0 with the root as exchange."""
        self.add(domain, "MX", "0 .")

    def nxdomain(self, name: str) -> None:
        self.nxdomains.add(_key(name))

    def servfail(self, name: str) -> None:
        self.servfails.add(_key(name))

    def never_answer(self, name: str) -> None:
        self.silent.add(_key(name))

    @property
    def nameserver(self) -> str:
        """The `[dns] nameservers` entry that reaches this server: "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    # --- answering -----------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        return any(n == name for n, _ in self.records)

    def answer(self, wire: bytes) -> bytes | None:
        """Build the response to one query, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if not query.question:
            return None
        q = query.question[0]
        name = _key(q.name.to_text())
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfails:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.nxdomains or not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            values = self.records.get((name, rdtype), [])
            if values:
                ttl = self.ttls.get((name, rdtype), self.ttl)
                rrset = dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, q.rdtype, values)
                response.answer.append(rrset)
        return response.to_wire()

    # --- transport -----------------------------------------------------------------

    async def start(self) -> DNSServer:
        loop = asyncio.get_running_loop()
        # UDP and TCP must share one port number (the resolver retries over TCP on the
        # same port); bind UDP on port 0, then TCP on that number, retrying on a clash.
        # A port given up front (53, for a tool that only asks the system resolver) is used
        # as is.
        for _ in range(1 if self.port else 20):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.host, self.port))
            port = sock.getsockname()[1]
            try:
                self._tcp = await loop.create_server(lambda: _TCPProtocol(self), self.host, port)
            except OSError:
                sock.close()
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), sock=sock
            )
            self._udp = transport
            self.port = port
            return self
        raise RuntimeError(f"no free UDP+TCP port pair on {self.host}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> DNSServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class _TCPProtocol(asyncio.Protocol):
    """RFC 1035 §4.2.2: each message is preceded by a two-byte length."""

    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + length:
                return
            wire, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            reply = self.server.answer(wire)
            if reply is not None and self.transport is not None:
                with contextlib.suppress(Exception):
                    self.transport.write(struct.pack("!H", len(reply)) + reply)
