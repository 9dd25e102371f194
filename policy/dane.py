# This module decides whether a server certificate matches TLSA records (RFC 6698, as
# SMTP uses them: RFC 7672). Pure: the records come from relay/outbound/dane.py's lookup.
"""DANE-EE(3) matching: does the certificate the MX presented match one of its TLSA records?

Only certificate usage 3 (DANE-EE) is supported: the record pins the server's own
certificate or key, and neither the chain nor the name is checked (RFC 7672 §3.1.1).
Records of other usages are "unusable" here; with none usable, DANE does not apply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

DANE_EE = 3
SELECTORS = {0: "cert", 1: "spki"}  # RFC 6698 §2.1.2
MATCHING = {0: "full", 1: "sha256", 2: "sha512"}  # RFC 6698 §2.1.3


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage == DANE_EE and self.selector in SELECTORS and self.mtype in MATCHING


def usable(records: Sequence[Tlsa]) -> tuple[Tlsa, ...]:
    return tuple(r for r in records if r.usable)


def matches(records: Sequence[Tlsa], cert_der: bytes) -> bool:
    """Whether `cert_der` (the peer's leaf certificate, DER) matches a usable record."""
    try:
        spki = (
            x509.load_der_x509_certificate(cert_der)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except ValueError:
        return False
    for record in usable(records):
        selected = cert_der if record.selector == 0 else spki
        if record.mtype == 1:
            selected = hashlib.sha256(selected).digest()
        elif record.mtype == 2:
            selected = hashlib.sha512(selected).digest()
        if selected == record.data:
            return True
    return False
