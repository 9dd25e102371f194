# This module reads MIME structure for the bounce parser; it decides nothing and does no I/O.
"""MIME helpers shared by the bounce parsers (RFC 3464, RFC 5965 and plain-text formats).

Bounces arrive with CRLF, LF or (old Macs) bare CR line endings; everything
here works on text whose lines end in "\\n" only, so the format tables can be
written once.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import re
from dataclasses import dataclass

Message = email.message.Message

# A conservative addr-spec finder for free text (RFC 5322 §3.4.1 dot-atom local parts, and
# the doubled or trailing dots some mobile carriers allowed: "neko....nyaan....@", corpus
# lhost-postfix-32). The lookbehind keeps a match from starting inside a longer atom run.
ADDRESS = re.compile(
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
# Address-type prefixes some MTAs glue to an address (Exchange "SMTP=user@dom", X.400
# gateways "RFC822=user@dom"): the type, not part of the local part (RFC 3464 §2.3.2
# writes it "rfc822;").
_TYPE_PREFIX = re.compile(r"^(?:smtp|rfc822|internet|x400)=", re.IGNORECASE)


def clean_address(found: str) -> str:
    """A matched address lower-cased, without a trailing dot, an opening single quote
    (notices write 'user@dom') or an address-type prefix."""
    return _TYPE_PREFIX.sub("", found.rstrip(".").lstrip("'`")).lower()


# Parts that carry the returned original message (RFC 3462 §1: third part of a report).
ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
REPORT_TYPES = (
    "message/delivery-status",  # RFC 3464 §2
    "message/global-delivery-status",  # RFC 6533 §6.1
    "message/feedback-report",  # RFC 5965 §2
)
TAG = re.compile(r"<[^>]*>")


def normalize_newlines(data: bytes) -> bytes:
    """CRLF and bare CR both become LF: the corpus has dos__ (CRLF) and mac__ (CR) variants."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def load(data: bytes) -> Message:
    """Parse bytes into a Message with the permissive compat32 policy (never raises on junk)."""
    return email.message_from_bytes(normalize_newlines(data), policy=email.policy.compat32)


def header(msg: Message, name: str) -> str:
    """A header decoded from RFC 2047 words into one line of text ("" when absent).

    Raw 8-bit header bytes (common in Japanese bounces) are read as UTF-8.
    """
    raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
    if raw is None:
        return ""
    if isinstance(raw, str):
        raw = raw.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    try:
        parts = email.header.decode_header(str(raw))
    except (ValueError, LookupError):
        return " ".join(str(raw).split())
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(_decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return " ".join("".join(out).split())


def _decode_bytes(raw: bytes, charset: str | None) -> str:
    for cs in (charset, "utf-8", "latin-1"):
        if not cs:
            continue
        try:
            return raw.decode(cs)
        except (LookupError, UnicodeDecodeError):
            continue
    return raw.decode("latin-1")  # pragma: no cover - latin-1 decodes any byte


def part_text(part: Message) -> str:
    """The decoded body of a non-multipart part as text with "\\n" line endings."""
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        text = _decode_bytes(payload, part.get_content_charset())
    elif isinstance(payload, list):  # message/* parsed into sub-messages
        text = "\n\n".join(str(p) for p in payload)
    else:
        text = str(part.get_payload() or "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if part.get_content_type() == "text/html":
        text = TAG.sub(" ", re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text))
    return text


def addresses(text: str) -> list[str]:
    """Every address in `text`, lower-cased, in order, without duplicates."""
    seen: dict[str, None] = {}
    for m in ADDRESS.finditer(text):
        seen.setdefault(clean_address(m.group(0)), None)
    return list(seen)


def first_address(text: str) -> str:
    found = addresses(text)
    return found[0] if found else ""


@dataclass(frozen=True)
class Parts:
    """A bounce split into what the notice says and what it returns."""

    notice: str  # the human-readable text parts, in order, before any returned message
    structured: tuple[tuple[str, str], ...]  # (content type, text) of report parts
    original: Message | None  # the returned message or its headers, when present


def split(msg: Message) -> Parts:
    """Walk `msg`, separating the readable notice, report parts and the returned original."""
    notice: list[str] = []
    structured: list[tuple[str, str]] = []
    original: Message | None = None
    html: list[str] = []
    returned = _returned_parts(msg)
    for part in msg.walk():
        ctype = part.get_content_type()
        if id(part) in returned:
            continue
        if ctype in REPORT_TYPES:
            structured.append((ctype, _report_text(part)))
            returned.update(id(p) for p in part.walk() if p is not part)
        elif ctype in ORIGINAL_TYPES:
            if original is None:
                original = _as_message(part)
        elif part.is_multipart():
            continue
        elif ctype == "text/plain" or ctype.startswith(("text/x-", "multipart/")):
            # multipart/* lands here only without a usable boundary: read it as text.
            notice.append(part_text(part))
        elif ctype == "text/html":
            html.append(part_text(part))
    if not notice and html:
        notice = html
    return Parts("\n".join(notice), tuple(structured), original)


def _report_text(part: Message) -> str:
    # compat32 parses message/delivery-status into one Message per field block;
    # joining their string forms gives back the blocks separated by blank lines.
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n".join(_block_text(p) for p in payload if isinstance(p, email.message.Message))
    return part_text(part)


def _block_text(block: Message) -> str:
    lines = [f"{k}: {' '.join(str(v).split())}" for k, v in block.items()]
    body = block.get_payload()
    if isinstance(body, str) and body.strip():
        lines.append(body.strip())  # fields after a stray blank line land in the body
    return "\n".join(lines) + "\n"


def _as_message(part: Message) -> Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        return payload[0]
    return email.message_from_string(part_text(part).lstrip("\n"), policy=email.policy.compat32)


def _returned_parts(root: Message) -> set[int]:
    """ids of every part nested inside a message/rfc822 part: the returned mail's own parts."""
    inside: set[int] = set()
    for part in root.walk():
        if part is not root and part.get_content_type() == "message/rfc822":
            inside.update(id(p) for p in part.walk() if p is not part)
    return inside
