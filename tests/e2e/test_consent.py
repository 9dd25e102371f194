# docs/behaviour.md#suppression-policy, consent: a recipient's own mail to `[intake]
# consent_address` lifts their block only when its DKIM signature verifies for their domain
# (or SPF passes). A running Service; the DKIM key is served by the loopback DNS server
# through bouncer's own resolver ([dns] nameservers).
"""Consent by e-mail: signed lifts, unsigned or wrongly signed does not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policy.suppression.records import State
from relay.intake.consent import aligned
from relay.intake.listener import Intake
from tests.support.dns_server import DNSServer

CONSENT = "unblock@relay.test"
USER = "angry@reader.test"
pytestmark = pytest.mark.timeout(60)


def _key() -> tuple[bytes, str]:
    """A fresh RSA key: (PEM private key, the p= value of its DKIM TXT record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import base64

    return pem, base64.b64encode(der).decode()


def _txt(value: str) -> str:
    """A TXT record in presentation form, in strings of at most 255 octets."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _message(sender: str, message_id: str) -> bytes:
    return (
        f"From: Reader <{sender}>\r\nTo: <{CONSENT}>\r\nSubject: please unblock me\r\n"
        f"Message-ID: <{message_id}>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\n"
        "I want your newsletter again.\r\n"
    ).encode()


def _signed(message: bytes, pem: bytes, domain: str, selector: str = "s1") -> bytes:
    sig = dkim.sign(
        message, selector.encode(), domain.encode(), pem, include_headers=[b"from", b"subject"]
    )
    return sig + message


async def _consent(port: int, data: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, timeout=20, local_hostname="mail.reader.test"
    )
    await client.connect()
    try:
        await client.mail(USER)
        await client.rcpt(CONSENT)
        try:
            reply = await client.data(data)
            return reply.code, reply.message
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    finally:
        await client.quit()


@pytest.fixture
async def running(relay_service: Any, dns_server: DNSServer) -> Any:
    pem, p = _key()
    for domain in ("reader.test", "other.test"):  # other.test's signatures verify too
        dns_server.add(f"s1._domainkey.{domain}", "TXT", _txt(f"v=DKIM1; k=rsa; p={p}"))
    svc = await relay_service(
        {
            "dns": {"nameservers": [dns_server.nameserver]},
            "intake": {"listen": "127.0.0.1:0", "consent_address": CONSENT},
        }
    )
    (intake,) = [c for c in svc.components if isinstance(c, Intake)]
    svc.store.record_complaint(USER, datetime.now(UTC), "abuse report")
    return svc, intake.port, pem


async def test_unsigned_or_wrongly_signed_consent_does_not_lift(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc, port, pem = running
    code, text = await _consent(port, _message(USER, "unsigned@reader.test"))
    assert code == 550 and "Consent not verified" in text
    other, _p = _key()  # a key the DNS does not publish
    code, _ = await _consent(
        port, _signed(_message(USER, "forged@reader.test"), other, "reader.test")
    )
    assert code == 550
    # A good signature, but for another domain: not the address's own word.
    code, _ = await _consent(port, _signed(_message(USER, "third@reader.test"), pem, "other.test"))
    assert code == 550
    rec = svc.store.get(USER, datetime.now(UTC))
    assert rec.state is State.BLOCKED
    assert "no DKIM signature verifies for reader.test" in caplog.text


async def test_dkim_signed_consent_lifts_and_the_history_says_how(running: Any) -> None:
    svc, port, pem = running
    data = _signed(_message(USER, "yes-please@reader.test"), pem, "reader.test")
    code, text = await _consent(port, data)
    assert code == 250 and "may receive mail again" in text, text
    rec = svc.store.get(USER, datetime.now(UTC))
    assert rec.state is State.ACTIVE
    last = rec.history[-1]
    assert last.kind == "consent"
    assert "dkim pass d=reader.test" in last.detail
    assert "<yes-please@reader.test>" in last.detail
    assert svc.store.check(USER, datetime.now(UTC)) is None
    # Once lifted there is nothing more to lift.
    code, text = await _consent(port, data)
    assert code == 250 and "nothing to lift" in text


def test_alignment_is_relaxed_but_never_crosses_domains() -> None:
    assert aligned("reader.test", "reader.test")
    assert aligned("reader.test", "mail.reader.test")
    assert not aligned("mail.reader.test", "reader.test")
    assert not aligned("eader.test", "reader.test")
    assert not aligned("test", "reader.test")


async def test_spf_pass_for_the_senders_domain_lifts(running: Any, dns_server: DNSServer) -> None:
    svc, port, _pem = running
    dns_server.add("reader.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    code, text = await _consent(port, _message(USER, "spf@reader.test"))
    assert code == 250, text
    rec = svc.store.get(USER, datetime.now(UTC))
    assert rec.state is State.ACTIVE
    assert "spf pass ip=127.0.0.1 smtp.mailfrom=angry@reader.test" in rec.history[-1].detail


async def test_spf_that_fails_does_not_lift(running: Any, dns_server: DNSServer) -> None:
    svc, port, _pem = running
    dns_server.add("reader.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    code, _ = await _consent(port, _message(USER, "spf@reader.test"))
    assert code == 550
    assert svc.store.get(USER, datetime.now(UTC)).state is State.BLOCKED
