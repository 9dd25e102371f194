# VERP return paths with a signed, dated token: pure functions, no I/O; time is a parameter.
"""Encode and check `<prefix>+<token>@<bounce_domain>` return paths.

The token names the original recipient and the queue id, the day it was
issued, and carries a short HMAC-SHA256 (keyed by `[verp] secret`), so only
bounces to return paths that bouncer itself handed out, recently, can change
an address:

    bounces+b7k3j9x2mq=Q1A2B3=kijitora=example.com@bounces.example.org
            ^^day (2 base32 characters, days since 1970 mod 1024)
              ^mac (8)  ^queue id ^local  ^domain

The recipient is written readably, as classic VERP does (qmail, Postfix
`-V`), with its "@" turned into "=": people reading a bounce can see whom it
is about. The MAC covers the day and the lower-cased queue id and recipient,
because some MTAs change the case of a return path (RFC 5321 §2.4 lets them
treat local parts case-insensitively in practice); 40 bits (8 base32
characters) is more than enough against guessing over SMTP. The day stamp
(as in SRS, the Sender Rewriting Scheme) bounds replay: a genuine return path
that leaks (a forwarded message, a list archive) stops working after
`max_age_days`, long after any real bounce would have come back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime

MAC_CHARS = 8  # base32 characters = 40 bits
DAY_CHARS = 2  # base32 characters = 10 bits: the day number modulo 1024
_DAY_MOD = 1024  # 32 ** DAY_CHARS
_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 §6 alphabet, lower-cased
SEPARATOR = "="
# Characters the readable recipient may contain: RFC 5322 atext and "." (dot-atom).
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_QUEUE_ID = re.compile(r"^[A-Za-z0-9]+$")
_DOMAIN = re.compile(r"^[A-Za-z0-9.-]+$")


@dataclass(frozen=True)
class VerpKey:
    """What encoding needs: the settings of `[verp]`."""

    prefix: str
    bounce_domain: str
    secret: bytes
    max_age_days: int = 30

    @classmethod
    def from_settings(
        cls, prefix: str, bounce_domain: str, secret: str, max_age_days: int = 30
    ) -> VerpKey:
        return cls(prefix, bounce_domain.lower().rstrip("."), secret.encode("utf-8"), max_age_days)


@dataclass(frozen=True)
class VerpToken:
    """What a valid VERP address decodes to."""

    recipient: str  # lower-cased
    queue_id: str


def _day(now: datetime) -> int:
    days: int = int(now.timestamp()) // 86400
    return days % _DAY_MOD


def _day_text(day: int) -> str:
    return "".join(_B32[(day >> (5 * i)) & 31] for i in reversed(range(DAY_CHARS)))


def _day_value(text: str) -> int | None:
    value = 0
    for ch in text.lower():
        i = _B32.find(ch)
        if i < 0:
            return None
        value = value * 32 + i
    return value


def _mac(key: VerpKey, day: str, queue_id: str, recipient: str) -> str:
    msg = f"{day.lower()}\0{queue_id.lower()}\0{recipient.lower()}".encode()
    digest = hmac.new(key.secret, msg, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:MAC_CHARS]


def encodable(recipient: str, queue_id: str) -> bool:
    """True when the recipient and queue id fit the readable token (dot-atom, ASCII)."""
    local, at, domain = recipient.rpartition("@")
    return bool(at and _ATEXT.match(local) and _DOMAIN.match(domain) and _QUEUE_ID.match(queue_id))


def encode(key: VerpKey, recipient: str, queue_id: str, now: datetime) -> str:
    """The VERP return path for one recipient of one message, issued at `now`.

    Raises ValueError for a recipient or queue id the token cannot carry
    (quoted local parts, non-ASCII): callers keep the original sender then.
    """
    if not encodable(recipient, queue_id):
        raise ValueError(f"cannot VERP-encode {recipient!r} / {queue_id!r}")
    local, _, domain = recipient.rpartition("@")
    day = _day_text(_day(now))
    stamp = day + _mac(key, day, queue_id, recipient)
    token = SEPARATOR.join((stamp, queue_id, local, domain.lower()))
    return f"{key.prefix}+{token}@{key.bounce_domain}"


def decode(key: VerpKey, address: str, now: datetime) -> VerpToken | None:
    """The recipient and queue id of a VERP address, or None if it is not one of ours.

    None for another domain or prefix, a malformed token, a MAC that does not
    match (forged or altered), or a token older than `key.max_age_days` at `now`
    (0 = no limit): the intake refuses those at RCPT.
    """
    addr = address.strip().strip("<>")
    local, at, domain = addr.rpartition("@")
    if not at or domain.lower().rstrip(".") != key.bounce_domain:
        return None
    head, plus, token = local.partition("+")
    if not plus or head.lower() != key.prefix.lower():
        return None
    stamp, sep1, rest = token.partition(SEPARATOR)
    queue_id, sep2, rest = rest.partition(SEPARATOR)
    rcpt_local, sep3, rcpt_domain = rest.rpartition(SEPARATOR)
    if not (sep1 and sep2 and sep3 and rcpt_local and rcpt_domain and queue_id):
        return None
    if len(stamp) != DAY_CHARS + MAC_CHARS:
        return None
    day, mac = stamp[:DAY_CHARS], stamp[DAY_CHARS:]
    recipient = f"{rcpt_local}@{rcpt_domain}"
    if not hmac.compare_digest(_mac(key, day, queue_id, recipient), mac.lower()):
        return None
    issued = _day_value(day)
    if issued is None:
        return None
    age = (_day(now) - issued) % _DAY_MOD  # days since issue; wraps every 1024 days
    if key.max_age_days and age > key.max_age_days:
        return None
    return VerpToken(recipient.lower(), queue_id)


def remote_sender(key: VerpKey, sender: str, recipient: str, queue_id: str, now: datetime) -> str:
    """The envelope sender to use towards the remote for `recipient`.

    The null sender stays null (RFC 5321 §4.5.5: never make a bounce bounceable),
    and a recipient the token cannot carry keeps the original sender.
    """
    if not sender or not encodable(recipient, queue_id):
        return sender
    return encode(key, recipient, queue_id, now)
