# Every fixed reply the inbound server gives is named here, as data; what a client hears about
# its recipients and message (the remote's answer, the queue's) is policy/client_reply.py's.
# aiosmtpd's own replies carry no RFC 3463 enhanced status code ("552 Error: Too much mail
# data"), yet bouncer advertises ENHANCEDSTATUSCODES, and clients and log tools classify by
# that code: the table below adds the code aiosmtpd leaves out.
"""The inbound server's fixed replies, and RFC 3463 codes for aiosmtpd's stock lines.

`enhance(line)` leaves a line alone when it already has an enhanced code, when it
is a 3xx or a multi-line part (EHLO's "250-..."), or when nothing below matches.
The aiosmtpd texts this module matches are pinned by tests/relay/inbound/test_aiosmtpd_pins.py.
"""

from __future__ import annotations

import re

from policy.reply import Reply

MAX_REPLY_TEXT = 400  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets


def reply_line(reply: Reply) -> str:
    """A Reply as one SMTP reply line (never multi-line, never over-long)."""
    text = " ".join(reply.text.split())[:MAX_REPLY_TEXT]
    parts = [str(reply.code), reply.enhanced or "", text]
    return " ".join(p for p in parts if p)


# Commands.
OK = Reply(250, "2.0.0", "Ok")  # RSET, NOOP
MAIL_OK = Reply(250, "2.1.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot VRFY; send mail and see")  # RFC 5321 §3.5.3
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
# RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL (Postfix's wording and code).
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
INTERNAL_PROBLEM = Reply(451, "4.3.0", "Error: internal problem, try again later")
CLOSING_BOGUS = Reply(421, "4.7.0", "Too many unrecognized commands, closing connection")


def untrusted_timeout(hostname: str) -> Reply:
    """Postfix's wording when a client runs out of time (RFC 5321 §3.8: 421 and the host)."""
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


# DATA.
BARE_CR_OR_LF = Reply(550, "5.5.2", "Error: bare <CR> or <LF> in message data (see RFC 5321 2.3.8)")
NUL_IN_DATA = Reply(550, "5.5.2", "Error: NUL character in message data")
OVER_BUDGET = Reply(452, "4.3.1", "Insufficient system storage, try again later")  # RFC 3463
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (see RFC 5321 4.5.3.1.6)")
TOO_MUCH_DATA = Reply(552, "5.3.4", "Error: Too much mail data")

# aiosmtpd's stock lines the server matches or repeats (pinned by the test named above).
STOCK_BOGUS_GOODBYE = "502 5.5.1 Too many unrecognized commands"
STOCK_MALFORMED = "553 5.1.3 Error: malformed address"  # for MAIL and RCPT alike
STOCK_NEED_RCPT = "503 Error: need RCPT command"
STOCK_DATA_SYNTAX = "501 Syntax: DATA"
STOCK_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"

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
