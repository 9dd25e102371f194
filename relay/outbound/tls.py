# The TLS contexts bouncer uses towards remotes, and how a failed check is put in words.
# It reads CA files and opens no connection: relay/outbound/session.py does the handshakes.
"""TLS towards remotes: the unauthenticated context ("opportunistic", "required", DANE,
which checks the certificate itself) and the authenticating one ("verify", MTA-STS)."""

from __future__ import annotations

import functools
import ssl


@functools.cache
def verify_context(ca_file: str = "") -> ssl.SSLContext:
    """Authenticated MX TLS (RFC 7672 §1.3's "secure channel" without DANE): the chain must
    reach a trusted CA and the certificate must name the host (RFC 6125). Built once."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)


def failure_reason(exc: BaseException) -> str:
    """The certificate check's own words ("Hostname mismatch, ...", "self-signed ...")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {seen.verify_message}"
        seen = seen.__cause__ or seen.__context__
    return f"handshake failed: {exc}"


def _opportunistic() -> ssl.SSLContext:
    # Opportunistic MX TLS: encrypt, but do not authenticate (RFC 7435; Postfix "may"/"encrypt").
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


OPPORTUNISTIC = _opportunistic()
