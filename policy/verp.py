# VERP return paths with a signed token: pure functions, no I/O, no clock.
"""Encode and check `<prefix>+<token>@<bounce_domain>` return paths.

The token names the original recipient and the queue id and carries a short
HMAC-SHA256 (keyed by `[verp] secret`), so only bounces to return paths that
bouncer itself handed out can suppress an address:

    bounces+k3j9x2mq=Q1A2B3=kijitora=example.com@bounces.example.org
            ^mac     ^queue id ^local  ^domain

The recipient is written readably, as classic VERP does (qmail, Postfix
`-V`), with its "@" turned into "=": people reading a bounce can see whom it
is about. The MAC covers the lower-cased queue id and recipient, because some
MTAs change the case of a return path (RFC 5321 §2.4 lets them treat local
parts case-insensitively in practice); 40 bits (8 base32 characters) is more
than enough against guessing over SMTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

MAC_CHARS = 8  # base32 characters = 40 bits
SEPARATOR = "="
# Characters the readable recipient may contain: RFC 5322 atext and "." (dot-atom).
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_QUEUE_ID = re.compile(r"^[A-Za-z0-9]+$")
_DOMAIN = re.compile(r"^[A-Za-z0-9.-]+$")
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1; longer tokens still work with most MTAs


@dataclass(frozen=True)
class VerpKey:
    """What encoding needs: the settings of `[verp]`."""

    prefix: str
    bounce_domain: str
    secret: bytes

    @classmethod
    def from_settings(cls, prefix: str, bounce_domain: str, secret: str) -> VerpKey:
        return cls(prefix, bounce_domain.lower().rstrip("."), secret.encode("utf-8"))


@dataclass(frozen=True)
class VerpToken:
    """What a valid VERP address decodes to."""

    recipient: str  # lower-cased
    queue_id: str


def _mac(key: VerpKey, queue_id: str, recipient: str) -> str:
    msg = f"{queue_id.lower()}\0{recipient.lower()}".encode()
    digest = hmac.new(key.secret, msg, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:MAC_CHARS]


def encodable(recipient: str, queue_id: str) -> bool:
    """True when the recipient and queue id fit the readable token (dot-atom, ASCII)."""
    local, at, domain = recipient.rpartition("@")
    return bool(at and _ATEXT.match(local) and _DOMAIN.match(domain) and _QUEUE_ID.match(queue_id))


def encode(key: VerpKey, recipient: str, queue_id: str) -> str:
    """The VERP return path for one recipient of one message.

    Raises ValueError for a recipient or queue id the token cannot carry
    (quoted local parts, non-ASCII): callers keep the original sender then.
    """
    if not encodable(recipient, queue_id):
        raise ValueError(f"cannot VERP-encode {recipient!r} / {queue_id!r}")
    local, _, domain = recipient.rpartition("@")
    mac = _mac(key, queue_id, recipient)
    token = SEPARATOR.join((mac, queue_id, local, domain.lower()))
    return f"{key.prefix}+{token}@{key.bounce_domain}"


def decode(key: VerpKey, address: str) -> VerpToken | None:
    """The recipient and queue id of a VERP address, or None if it is not one of ours.

    None for another domain or prefix, a malformed token, or a MAC that does
    not match (forged or altered): the intake refuses those at RCPT.
    """
    addr = address.strip().strip("<>")
    local, at, domain = addr.rpartition("@")
    if not at or domain.lower().rstrip(".") != key.bounce_domain:
        return None
    head, plus, token = local.partition("+")
    if not plus or head.lower() != key.prefix.lower():
        return None
    mac, sep1, rest = token.partition(SEPARATOR)
    queue_id, sep2, rest = rest.partition(SEPARATOR)
    rcpt_local, sep3, rcpt_domain = rest.rpartition(SEPARATOR)
    if not (sep1 and sep2 and sep3 and rcpt_local and rcpt_domain and queue_id):
        return None
    recipient = f"{rcpt_local}@{rcpt_domain}"
    expected = _mac(key, queue_id, recipient)
    if len(mac) != MAC_CHARS or not hmac.compare_digest(expected, mac.lower()):
        return None
    return VerpToken(recipient.lower(), queue_id)


def remote_sender(key: VerpKey, sender: str, recipient: str, queue_id: str) -> str:
    """The envelope sender to use towards the remote for `recipient` (interfaces.md §3).

    The null sender stays null (RFC 5321 §4.5.5: never make a bounce bounceable),
    and a recipient the token cannot carry keeps the original sender.
    """
    if not sender or not encodable(recipient, queue_id):
        return sender
    return encode(key, recipient, queue_id)
