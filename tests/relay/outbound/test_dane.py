"""DANE-EE(3) (RFC 7672): TLSA matching on its own, then through bouncer against a real
DNSSEC-signed zone (NSD) behind a real validating resolver (Unbound) on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from policy.dane import Tlsa, matches, usable
from relay.service import Service, StartupError
from tests.support import dnssec
from tests.support.certs import TestCA, self_signed, server_context
from tests.support.dns_server import DNSServer
from tests.support.fake_mx import FakeMX
from tests.support.relay_client import send_one

ZONE = "dane.test"
MX = f"mx.{ZONE}"


def _der_and_spki(cert_file: str) -> tuple[bytes, bytes]:
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert.public_bytes(serialization.Encoding.DER), spki


def test_tlsa_matching(tmp_path: Path) -> None:
    der, spki = _der_and_spki(self_signed(tmp_path, "a.test")[0])
    other, _ = _der_and_spki(self_signed(tmp_path, "b.test")[0])
    good = [
        Tlsa(3, 0, 0, der),
        Tlsa(3, 0, 1, hashlib.sha256(der).digest()),
        Tlsa(3, 0, 2, hashlib.sha512(der).digest()),
        Tlsa(3, 1, 0, spki),
        Tlsa(3, 1, 1, hashlib.sha256(spki).digest()),
        Tlsa(3, 1, 2, hashlib.sha512(spki).digest()),
    ]
    for record in good:
        assert matches([record], der) and not matches([record], other)
    # Other usages (PKIX-TA/EE, DANE-TA) and unknown selectors are not used here.
    for record in (Tlsa(1, 1, 1, hashlib.sha256(spki).digest()), Tlsa(2, 1, 1, b"x"),
                   Tlsa(3, 7, 1, b"x"), Tlsa(3, 1, 9, b"x")):  # fmt: skip
        assert not usable([record]) and not matches([record], der)
    assert matches([Tlsa(3, 1, 1, b"wrong"), good[4]], der)  # any one record will do
    assert not matches(good, b"not a certificate")


async def test_dane_refuses_to_start_without_a_validating_resolver(
    dns_server: DNSServer, relay_service: Any
) -> None:
    dns_server.add(".", "SOA", ". hostmaster. 1 3600 600 86400 300")  # answered, no AD bit
    with pytest.raises(StartupError, match="does not validate DNSSEC"):
        await relay_service(
            {"dane": {"enabled": True}, "dns": {"nameservers": [dns_server.nameserver]}}
        )


async def _send(svc: Service) -> tuple[int, bytes]:
    return await send_one(svc, f"b@{ZONE}")


@pytest.mark.skipif(dnssec.skip_reason() is not None, reason=str(dnssec.skip_reason()))
@pytest.mark.parametrize("pinned", [True, False], ids=["matching-tlsa", "other-key"])
async def test_dane_ee_through_bouncer_with_a_validating_resolver(
    tmp_path: Path, relay_service: Any, pinned: bool
) -> None:
    # DANE-EE pins the key: a self-signed certificate for another name is fine (§3.1.1),
    # and a certificate from a CA bouncer would trust is refused when the key differs.
    ca = TestCA(tmp_path)
    cert = self_signed(tmp_path, "not-the-mx.example") if pinned else ca.issue(MX)
    pinned_cert = cert[0] if pinned else self_signed(tmp_path, MX)[0]
    digest = hashlib.sha256(_der_and_spki(pinned_cert)[1]).hexdigest()
    async with FakeMX(tls_context=server_context(*cert)) as mx:
        records = [
            "@ IN MX 10 mx",
            "mx IN A 127.0.0.1",
            f"_{mx.port}._tcp.mx IN TLSA 3 1 1 {digest}",
        ]
        with dnssec.signed_zone(tmp_path, ZONE, records) as nameserver:
            svc = await relay_service(
                {
                    "dane": {"enabled": True, "check_name": ZONE},
                    "dns": {"nameservers": [nameserver], "timeout": 3},
                    "delivery": {"port": mx.port, "starttls": "opportunistic",
                                 "ca_file": ca.cert_file},
                    "policy": {"soft_bounce": "pass"},
                }
            )  # fmt: skip
            code, text = await _send(svc)
    if pinned:
        assert code == 250 and len(mx.messages) == 1
    else:
        assert (code, text[:5]) == (451, b"4.7.5") and b"matches no TLSA record" in text
        assert mx.messages == [] and mx.commands.count("MAIL") == 0


@pytest.mark.skipif(dnssec.skip_reason() is not None, reason=str(dnssec.skip_reason()))
async def test_no_tlsa_record_means_no_dane(tmp_path: Path, relay_service: Any) -> None:
    async with FakeMX() as mx:  # no STARTTLS at all: fine without a TLSA record
        with dnssec.signed_zone(tmp_path, ZONE, ["@ IN MX 10 mx", "mx IN A 127.0.0.1"]) as ns:
            svc = await relay_service(
                {
                    "dane": {"enabled": True, "check_name": ZONE},
                    "dns": {"nameservers": [ns], "timeout": 3},
                    "delivery": {"port": mx.port},
                }
            )
            code, _ = await _send(svc)
    assert code == 250 and len(mx.messages) == 1
