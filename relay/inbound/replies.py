# aiosmtpd's own replies carry no RFC 3463 enhanced status code ("552 Error: Too much mail
# data"), yet bouncer advertises ENHANCEDSTATUSCODES, and clients and log tools classify by
# that code. This table adds the code aiosmtpd leaves out; it is data, decided here once.
"""Add RFC 3463 enhanced status codes to aiosmtpd's stock reply lines (RFC 2034 §3).

`enhance(line)` leaves a line alone when it already has an enhanced code, when it
is a 3xx or a multi-line part (EHLO's "250-..."), or when nothing below matches.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")

# Exact 2xx stock lines (never EHLO's "250 HELP": its replies carry no codes, RFC 2034 §3).
_EXACT: dict[str, str] = {
    "250 OK": "2.0.0",
    "221 Bye": "2.0.0",
    "220 Ready to start TLS": "2.0.0",
}

# Specific texts first, then the reply code's generic meaning (RFC 3463 §3).
_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("552 ", "5.3.4"),  # message too big for system (SIZE parameter and actual bytes)
    ("500 Line too long", "5.5.2"),  # RFC 5321 §4.5.3.1.6 text line
    ("500 Command line too long", "5.5.2"),  # RFC 5321 §4.5.3.1.4 command line
    ("500 Error: strict ASCII mode", "5.6.7"),  # non-ASCII without SMTPUTF8 (RFC 6531)
    ("500 ", "5.5.2"),  # syntax error, command unrecognized
    ("501 ", "5.5.4"),  # invalid command arguments
    ("502 ", "5.5.1"),  # invalid command
    ("503 ", "5.5.1"),  # bad sequence of commands
    ("504 ", "5.5.4"),
    ("530 ", "5.7.0"),  # STARTTLS first
    ("554 ", "5.7.0"),  # refused for lack of security
    ("555 ", "5.5.4"),  # MAIL/RCPT parameters not recognized
    ("454 ", "4.7.0"),  # TLS not available
    ("421 ", "4.3.2"),  # closing
)


def enhance(line: str) -> str:
    """`line` with an enhanced status code inserted after its reply code, if it lacks one."""
    if len(line) < 4 or line[3] != " " or _HAS_ENHANCED.match(line):
        return line
    if line in _EXACT:
        return f"{line[:3]} {_EXACT[line]} {line[4:]}"
    if line[0] not in "45":
        return line
    for prefix, code in _BY_PREFIX:
        if line.startswith(prefix):
            return f"{line[:3]} {code} {line[4:]}"
    return line
