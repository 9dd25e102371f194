"""The test doubles themselves work: the fake MX answers as scripted, the DNS server answers
real DNS packets to dnspython's resolver (so other tests can trust them)."""

from __future__ import annotations

import asyncio

import aiosmtplib
import dns.asyncresolver
import dns.nameserver
import dns.resolver
import pytest

from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX


async def test_fake_mx_scripted_replies_and_records(fake_mx: FakeMX) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=fake_mx.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("pipelining")
    await client.mail("a@sender.test")
    ok = await client.rcpt("good@example.test")
    assert ok.code == 250
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
        await client.rcpt("dead@example.test")
    assert info.value.code == 550 and "5.1.1" in info.value.message
    reply = await client.data(b"Subject: t\r\n\r\nhello\r\n")
    assert reply.code == 250
    await client.quit()
    assert fake_mx.connections == 1
    assert fake_mx.rcpts == ["good@example.test", "dead@example.test"]
    (msg,) = fake_mx.messages
    assert msg.rcpt_tos == ("good@example.test",)
    assert b"hello" in msg.data


async def test_fake_mx_data_reply_and_hanging_greeting(make_fake_mx) -> None:
    mx = await make_fake_mx(data_reply="554 5.7.1 Spam")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=mx.port, start_tls=False)
    await client.connect()
    await client.mail("a@sender.test")
    await client.rcpt("b@example.test")
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await client.data(b"x\r\n")
    assert info.value.code == 554
    assert mx.messages == []
    await client.quit()

    silent = await make_fake_mx(greeting="hang")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=silent.port, start_tls=False, timeout=0.3)
    with pytest.raises((aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPConnectError)):
        await client.connect()
    assert silent.connections == 1

    busy = await make_fake_mx(greeting="421 4.3.2 Busy")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=busy.port, start_tls=False, timeout=2)
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as cinfo:
        await client.connect()
    assert cinfo.value.code == 421


def _resolver(server: DNSServer, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    r.lifetime = timeout
    r.timeout = timeout
    return r


async def test_dns_server_answers(dns_server: DNSServer) -> None:
    dns_server.mx("example.test", (20, "mx2.example.test"), (10, "mx1.example.test"))
    dns_server.a("mx1.example.test", "127.0.0.1")
    dns_server.aaaa("mx1.example.test", "::1")
    dns_server.null_mx("nomail.test")
    dns_server.servfail("broken.test")
    dns_server.never_answer("slow.test")
    r = _resolver(dns_server)

    answer = await r.resolve("example.test", "MX")
    assert sorted((rr.preference, rr.exchange.to_text()) for rr in answer) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert [rr.address for rr in await r.resolve("MX1.example.test", "A")] == ["127.0.0.1"]
    assert [rr.address for rr in await r.resolve("mx1.example.test", "AAAA")] == ["::1"]
    null = await r.resolve("nomail.test", "MX")
    assert [(rr.preference, rr.exchange.to_text()) for rr in null] == [(0, ".")]
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("mx1.example.test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("gone.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):
        await r.resolve("broken.test", "MX")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await _resolver(dns_server, timeout=0.3).resolve("slow.test", "MX")
    assert loop.time() - started < 2
    assert ("example.test.", "MX") in dns_server.queries


async def test_dns_server_tcp(dns_server: DNSServer) -> None:
    import dns.asyncquery
    import dns.message

    dns_server.a("host.test", "127.0.0.2")
    q = dns.message.make_query("host.test", "A")
    resp = await dns.asyncquery.tcp(q, dns_server.host, port=dns_server.port, timeout=2)
    assert resp.answer[0][0].address == "127.0.0.2"
