# The Received: trace header bouncer adds to every message (RFC 5321 §4.4): pure formatting,
# strings at the edge. The only change bouncer makes to a message's bytes.
"""Build the one Received: header."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime

from aiosmtpd.smtp import Envelope, Session


def protocol_keyword(session: Session, envelope: Envelope, lmtp: bool = False) -> str:
    """RFC 3848 / RFC 6531 §4.3 WITH keywords."""
    base = "ESMTP" if session.extended_smtp else "SMTP"
    if lmtp:
        base = "LMTP"  # RFC 3848 §2: LMTP, LMTPS, LMTPA, LMTPSA
    if envelope.smtp_utf8:
        base = "UTF8LMTP" if lmtp else "UTF8SMTP"
    return base + ("S" if session.ssl else "") + ("A" if session.authenticated else "")


_HELO_UNSAFE = re.compile(r"[^\x21-\x7e]")
_stamp: tuple[datetime, str] | None = None  # the last second formatted: one per second, not message


def _date(when: datetime) -> str:
    """RFC 5322 date-time of `when`, to the second, formatted once per second."""
    global _stamp
    second = when.replace(microsecond=0)
    # Equal datetimes in different zones print differently: the zone is part of the key.
    if _stamp is None or _stamp[0] != second or _stamp[0].tzinfo is not second.tzinfo:
        _stamp = (second, format_datetime(second))
    return _stamp[1]


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    queue_id: str,
    protocol: str,
    recipients: Sequence[str],
    when: datetime,
) -> bytes:
    """RFC 5321 §4.4 trace line; "for" only with a single recipient (privacy, as Postfix)."""
    helo = _HELO_UNSAFE.sub("?", helo)[:255] or "unknown"
    lines = [
        f"Received: from {helo} (unknown [{client_ip}])",
        f"\tby {hostname} (bouncer) with {protocol} id {queue_id}",
    ]
    stamp = _date(when)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n"
