# Consent by e-mail (docs/behaviour.md#suppression-policy): a recipient writes to
# `[intake] consent_address` to lift their own block. This module checks who really wrote
# (DKIM with dkimpy, SPF with pyspf) through bouncer's own resolver; the lift is the store's.
"""Recipient consent: DKIM or SPF aligned with the address's domain lifts a block.

A message to the consent address lifts the record of its From: address only
when that record is blocked or permanent, and only when a DKIM signature of
the message verifies for the address's domain (d= the domain or a parent of
it), or SPF passes for the connecting IP with a MAIL FROM in that domain. The
history keeps the Message-ID and which check passed. Anything else changes
nothing and is logged.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver
import spf

from policy.address import AddressError, domain_of, normalize_address
from policy.suppression.records import State
from policy.suppression.store import SuppressionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Consent:
    """What a consent message showed, and what it did."""

    address: str  # the From: address, normalised ("" when there is none)
    lifted: bool
    how: str  # "dkim pass d=example.com", "spf pass ...", or why not
    message_id: str


def aligned(signer: str, domain: str) -> bool:
    """Relaxed alignment: the signer is the address's domain or a parent of it."""
    s, d = signer.lower().rstrip("."), domain.lower().rstrip(".")
    return bool(s) and "." in s and (d == s or d.endswith("." + s))


class Checker:
    """DKIM and SPF over bouncer's resolver (its [dns] nameservers and timeout).

    dkimpy and pyspf are synchronous: they run in a worker thread, and each DNS
    question they ask is answered by the service's async resolver on its loop.
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop

    def _ask(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(
            timeout=float(self.resolver.lifetime) + 1
        )

    def txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's dnsfunc: the first TXT record of `name`, its strings joined."""
        qname = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = self._ask(self.resolver.resolve(qname, "TXT", search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return None
        except (dns.exception.Timeout, TimeoutError) as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    def spf_lookup(
        self, name: str, qtype: str, strict: bool = True, timeout: float = 20
    ) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's DNSLookup, answered by bouncer's resolver."""
        try:
            answer = self._ask(self.resolver.resolve(name, qtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, TimeoutError, dns.resolver.NoNameservers) as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        out: list[tuple[tuple[str, str], Any]] = []
        for r in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), r.address))
            elif qtype == "MX":
                out.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), r.strings))
        return out

    def dkim_result(self, message: bytes, domain: str) -> str:
        """ "dkim pass d=DOMAIN" when a signature aligned with `domain` verifies, else ""."""
        try:
            d = dkim.DKIM(message)
            sigs = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
            for idx in range(sigs):
                if d.verify(idx=idx, dnsfunc=self.txt):
                    signer = (d.domain or b"").decode("ascii", "replace")
                    if aligned(signer, domain):
                        return f"dkim pass d={signer}"
        except (dkim.DKIMException, ValueError, IndexError) as exc:
            log.info("consent: DKIM check failed: %s", exc)
        return ""

    def spf_result(self, ip: str, mail_from: str, helo: str, domain: str) -> str:
        """ "spf pass ..." when SPF passes for `ip` with a MAIL FROM in `domain`, else ""."""
        try:
            sender_domain = domain_of(normalize_address(mail_from)) if mail_from else ""
        except AddressError:
            return ""
        if not ip or not aligned(sender_domain, domain):
            return ""
        previous = spf.DNSLookup
        spf.DNSLookup = self.spf_lookup  # pyspf reads its module's DNSLookup per question
        try:
            result, _explanation = spf.check2(i=ip, s=mail_from, h=helo or sender_domain)
        except Exception as exc:  # pyspf raises its own errors for broken records
            log.info("consent: SPF check failed: %s", exc)
            return ""
        finally:
            spf.DNSLookup = previous
        return f"spf pass ip={ip} smtp.mailfrom={mail_from}" if result == "pass" else ""


def from_address(message: bytes) -> tuple[str, str]:
    """(the From: address normalised or "", the Message-ID or "")."""
    head = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    _name, addr = email.utils.parseaddr(str(head.get("From", "")))
    message_id = " ".join(str(head.get("Message-ID", "")).split())
    try:
        return normalize_address(addr), message_id
    except AddressError:
        return "", message_id


async def consent(
    checker: Checker,
    store: SuppressionStore,
    write: Callable[..., Any],
    message: bytes,
    ip: str,
    mail_from: str,
    helo: str,
    now: datetime,
) -> Consent:
    """Check a consent message and lift its sender's block when the checks allow it."""
    address, message_id = from_address(message)
    if not address:
        log.warning("consent: message %s has no usable From: address; ignored", message_id)
        return Consent("", False, "no From: address", message_id)
    rec = store.get(address, now)
    if rec is None or rec.state not in (State.BLOCKED, State.PERMANENT):
        log.info("consent: %s is not blocked or permanently suppressed; nothing to lift", address)
        return Consent(address, False, "nothing to lift", message_id)
    domain = domain_of(address)
    how = await asyncio.to_thread(checker.dkim_result, message, domain)
    if not how:
        how = await asyncio.to_thread(checker.spf_result, ip, mail_from, helo, domain)
    if not how:
        log.warning(
            "consent: from %s (Message-ID %s, client %s): no DKIM signature verifies for %s "
            "and SPF does not pass for it; not lifted",
            address,
            message_id or "none",
            ip or "unknown",
            domain,
        )
        return Consent(address, False, "no aligned DKIM signature or SPF pass", message_id)
    why = f"consent by e-mail: {how}; Message-ID {message_id or 'none'}"
    await write(store.consent, address, now, why)
    log.info("consent: %s lifted (%s)", address, why)
    return Consent(address, True, how, message_id)
