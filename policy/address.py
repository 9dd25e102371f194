# Addresses as store keys: one spelling per mailbox, and the RFC 5321 syntax check. No I/O.
"""Address normalisation and syntax.

`normalize_address` gives the key every store record is filed under (lower-cased, domain in IDNA
A-labels; docs/behaviour.md#suppression-policy), so "Bob@Exämple.COM" and
"bob@xn--exmple-cua.com" are the same record. `is_valid_address` is the
syntax check behind the relay's `501 5.1.3` (RFC 5321 §4.1.2, with the
UTF-8 extension of RFC 6531 §3.3).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import idna

# RFC 5321 §4.5.3.1.1-3: size limits in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63

# RFC 5321 §4.1.2 atext (RFC 5322 §3.2.3) plus any non-ASCII character (RFC 6531 §3.3).
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_DOT_STRING = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
# RFC 5321 §4.1.2 Quoted-string: qtextSMTP or a backslash pair, non-ASCII per RFC 6531.
_QUOTED_STRING = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"$')
# RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str], checked after IDNA encoding.
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class AddressError(ValueError):
    """An address that cannot be normalised (no "@", a domain IDNA rejects)."""


def strip_brackets(address: str) -> str:
    """ "<a@b>" -> "a@b"; reverse-paths arrive with their angle brackets."""
    a = address.strip()
    if len(a) >= 2 and a[0] == "<" and a[-1] == ">":
        return a[1:-1]
    return a


@lru_cache(maxsize=65536)
def normalize_domain(domain: str) -> str:
    """Lower-case `domain` and convert U-labels to A-labels (IDNA 2008 with UTS #46 mapping).

    Cached: the relay sees the same few thousand domains over and over, and the
    look-up hot path must not pay for IDNA each time.
    """
    d = domain.strip().rstrip(".").lower()
    if d.startswith("[") or d.isascii():
        return d  # address literals and plain ASCII names need nothing more
    try:
        return idna.encode(d, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"domain {domain!r} is not a valid IDN: {exc}") from exc


class AddressKey(str):
    """A normalised address: the store's key, made only by `normalize_address`, which
    hands one back unchanged (an address is normalised once, where it enters)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Address:
    """One recipient, made once at RCPT: as the client spelled it, and its key."""

    spelled: str  # what the remote is given (and the Received: header names)
    key: AddressKey  # what the store files it under, events and logs name

    @classmethod
    def parse(cls, address: str) -> Address:
        """Raises AddressError, as `normalize_address` does."""
        return cls(address, normalize_address(address))

    @property
    def domain(self) -> str:
        return domain_of(self.key)


def normalize_address(address: str) -> AddressKey:
    """The store key for `address`: lower-cased, domain in A-labels, brackets stripped.

    Raises AddressError when there is no "@" or the domain is not a valid IDN.
    """
    if isinstance(address, AddressKey):
        return address
    a = strip_brackets(address)
    local, at, domain = a.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(f"not an address: {address!r}")
    normalized = normalize_domain(domain)
    if not normalized:  # "a@." would become the key "a@", which nothing could look up again
        raise AddressError(f"not an address: {address!r}")
    return AddressKey(f"{local.lower()}@{normalized}")


def domain_of(normalized: str) -> str:
    """The domain part of an already normalised address."""
    return normalized[normalized.rfind("@") + 1 :]


def _valid_literal(literal: str) -> bool:
    # RFC 5321 §4.1.3 address-literal: [IPv4] or [IPv6:...]; General-address-literal unused.
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def is_valid_domain(domain: str) -> bool:
    """RFC 5321 §4.1.2 Domain (after IDNA), or an address literal."""
    if domain.startswith("[") and domain.endswith("]"):
        return _valid_literal(domain)
    try:
        d = normalize_domain(domain)
    except AddressError:
        return False
    if not d or len(d) > MAX_DOMAIN:
        return False
    return all(_valid_label(label) for label in d.split("."))


def _valid_label(label: str) -> bool:
    if len(label) > MAX_LABEL or not _LABEL.match(label):
        return False
    if label.startswith("xn--"):  # an A-label must decode (RFC 5891 §5.4)
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError):
            return False
    return True


def is_valid_address(address: str) -> bool:
    """True if `address` (brackets allowed) is a syntactically valid RFC 5321/6531 Mailbox.

    The null reverse-path "<>" is not a mailbox: callers allow it for MAIL only.
    """
    a = strip_brackets(address)
    local, at, domain = a.rpartition("@")
    if not at or not local or not domain or not a.isprintable():
        return False  # also a lone surrogate: bytes that were not UTF-8 (surrogateescape)
    if len(a.encode("utf-8")) > MAX_PATH - 2 or len(local.encode("utf-8")) > MAX_LOCAL_PART:
        return False
    if not (_DOT_STRING.match(local) or _QUOTED_STRING.match(local)):
        return False
    return is_valid_domain(domain)
