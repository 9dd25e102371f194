# Reading a message's header section for the log: pure parsing of bytes, no I/O.
"""What the mail log quotes from a message's headers: its Message-ID."""

from __future__ import annotations

import re

_MESSAGE_ID = re.compile(
    rb"^message-id:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
HEADER_SCAN = 65536  # bytes of the header section searched; a Message-ID sits near the top
MAX_MESSAGE_ID = 998  # RFC 5322 §2.1.1: a header line's limit


def message_id_of(message: bytes) -> str:
    """The message's Message-ID header (RFC 5322 §3.6.4) as logged, "" when it has none.

    Only the header section is read (up to the first empty line, at most HEADER_SCAN
    bytes); folding is unfolded and the value is kept as the client sent it, as
    Postfix's cleanup logs `message-id=<...>`.
    """
    head = message[:HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 2]
    m = _MESSAGE_ID.search(head)
    if m is None:
        return ""
    value = re.sub(rb"\r\n[ \t]+", b" ", m.group(1)).strip()
    return value[:MAX_MESSAGE_ID].decode("utf-8", "replace")
