# Plain-text bounce formats (qmail, Exim, Sendmail, Exchange, ...): tables of patterns, no I/O.
"""Find the bounced recipients and their diagnostics in a bounce written for humans.

Most MTAs that predate RFC 3464, and many that ignore it, write the same
shape: a greeting, a list of failed addresses each followed by what the remote
said, then a marker and the returned message. The scanner is generic; the
tables below carry what varies between formats (markers, greetings), each
row citing the format it comes from, so a new format is a new row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policy.bounces.mime import ADDRESS, clean_address

# Where the returned message starts: nothing after it is the notice. One row per format.
ORIGINAL_MARKERS: tuple[str, ...] = (
    r"^-+ ?Below this line is a copy of the message",  # qmail
    r"^-+ ?This is a copy of the message",  # Exim
    r"^-+ ?(?:The )?original message",  # Gmail, Google Groups, Outlook
    r"^(?:Original message follows|Message headers follow)",  # IMail, DragonFly
    r"^Original message headers:",  # Exchange 2007
    r"^-+ ?Returned Message",  # Lotus Notes
    r"^-+ ?START OF RETURNED MESSAGE",  # Demon Internet's Exim 2 (flufl.bounce bounce_03)
    r"^Original message details:",  # Vade Secure (flufl.bounce simple_45)
    r"^-+ ?Original message header",  # various
    r"^-+ ?The header of the original message",  # Yahoo, KDDI
    r"^-+ ?Undelivered message headers follow",  # Postfix (no MIME)
    r"^-+ ?Original mail as follows",  # X4
    r"^Original Message:\s*$",  # Verizon
    r"^\s*--- Mensaje original",  # Spanish webmails
    r"^Content-Type: message/rfc822",  # a MIME part written into a text body
    r"^Return-Path: <",  # the returned headers themselves, when no marker precedes them
    r"^The attachment contains the original mail headers",  # X6
)
_ORIGINAL = re.compile("|".join(f"(?:{m})" for m in ORIGINAL_MARKERS), re.IGNORECASE | re.MULTILINE)

# Format signatures: the first row whose pattern occurs in the notice names the source.
FORMATS: tuple[tuple[str, str], ...] = (
    ("qmail", r"This is the qmail-send program|\(#[45]\.\d+\.\d+\)"),
    ("exim", r"created automatically by mail delivery software|SMTP error from remote mail server"),
    ("postfix", r"This is the (?:Postfix program|mail system) at host"),
    ("sendmail", r"following addresses had (?:permanent fatal|transient non-fatal) errors"),
    ("sendmail", r"Transcript of session follows"),
    ("exchange", r"did not reach the following recipient|MSEXCH:|Delivery has failed to these"),
    ("domino", r"not listed in Domino Directory|Lotus Domino"),
    ("notes", r"^-+ Failure Reasons"),
    ("gmail", r"Delivery to the following recipient|Google tried to deliver your message"),
    ("yahoo", r"Sorry, we were unable to deliver your message"),
    ("dragonfly", r"This is the DragonFly Mail Agent"),
    ("opensmtpd", r"This is the MAILER-DAEMON, please DO NOT REPLY"),
    ("courier", r"Courier mail server at"),
    ("imail", r"^Unknown user:|Original message follows\."),
    ("kddi", r"Could not be delivered to:"),
)
_FORMATS = tuple((name, re.compile(p, re.IGNORECASE | re.MULTILINE)) for name, p in FORMATS)

# Lines that name an address but not a recipient: help desks (Japanese renraku, "contact",
# and toiawase, "inquiry", corpus lhost-postfix-49), our own headers.
_IGNORE_LINE = re.compile(
    r"contact|assistance|questions|\u9023\u7d61|\u554f\u3044?\u5408\u308f?\u305b|^\s*(?:from|reply-to|sender|return-path|message-id"
    r"|in-reply-to|references|received|envelope-from|x-[\w-]+)\s*:|MAIL FROM\s*:",
    re.IGNORECASE,
)
# A line that starts with the address is a recipient line in nearly every format.
# Not a positive reply quoting an address ("250 <a@b>, Sender ok" in a session transcript).
_LEADING = re.compile(
    r"^(?![\s>]*[23]\d\d[ -])[\s>]*(?:[\w .\"-]*<)?(?:mailto:|RCPT TO:\s*<?)?("
    + ADDRESS.pattern
    + ")"
)
_QUOTE = re.compile(r"^[ \t]*>+ ?", re.MULTILINE)
# Sendmail's "<code> <host> (<mailer>)... <reply>" line: the status of the host that the
# recipient line after it was sent to (sendmail V5 transcripts, corpus lhost-v5sendmail).
_NEXT_HOST = re.compile(r"^\s*[45]\d\d \S+ \(\w+\)\.\.\. ")

# Reply code, enhanced status, qmail's "(#5.1.1)" (RFC 5321 §4.2, RFC 3463 §2).
_CODE_ENHANCED = re.compile(r"(?<![\d.])([245]\d\d)[ -]#?([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d)")
_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# Zoho writes "ERROR_CODE :550, ERROR_CODE :Requested action ..." (corpus lhost-zoho-03).
_CODE = re.compile(r"(?:^|said:?|[:(\[#]|<<<)\s*([45][0-5]\d)(?=[ ,-]|$)", re.MULTILINE)
MAX_SEGMENT_LINES = 15
# Bounds on work per message: the intake reads mail from anyone, and a notice is short.
MAX_NOTICE_CHARS = 64 * 1024
MAX_RECIPIENTS = 100

# Which SMTP command the remote refused, as notices word it (first match wins).
STAGES: tuple[tuple[str, str], ...] = (
    # Postfix, Exim, Sendmail transcript, qmail/DragonFly, X3 "SMTP:RCPT", Yahoo "[RCPT_TO]"
    # m-FILTER "-------SMTP command" with the command on the next line
    ("RCPT", r"in reply to RCPT|after RCPT|>>> RCPT|RCPT[ _]TO|RCPT command|our RCPT|SMTP:RCPT"),
    ("DATA", r"end of data|in reply to DATA|>>> DATA|SMTP command\s+DATA|after DATA|final DATA"),
    ("MAIL", r"in reply to MAIL|after MAIL FROM|>>> MAIL"),
)
_STAGES = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in STAGES)


# Notices that say delivery is still being tried: a warning, not a failure (RFC 3464
# §2.3.3 "delayed"). One row per wording; the first four are Exim's and Sendmail's.
DELAY_NOTICES: tuple[str, ...] = (
    r"has not yet been delivered",
    r"(?:delivery|message) (?:to the following recipients? )?(?:has been|was) delayed",
    r"will continue (?:to )?(?:try|attempt)",
    r"delivery attempts will continue",
    r"(?:is|was) still awaiting delivery",
    r"this is (?:just |only )?a warning|warning message only|advisory[- ]only",
    r"has been postponed",
    r"will be retried|will (?:retry|try again) (?:for|until|later)",
)
_DELAY = re.compile("|".join(DELAY_NOTICES), re.IGNORECASE)
# The alias a failed address was reached through, which Sendmail names as failed too:
# "b (expanded from: a)". Exim's "(generated from a)" under a failed forward target is
# not (Sisimai labels only the target, corpus rhost-franceptt-03).
_ALIAS = re.compile(r"\(expanded from:?\s*<?(" + ADDRESS.pattern + r")>?\s*\)")


def says_delayed(notice: str) -> bool:
    """True when the notice is a delay warning (delivery is still being tried)."""
    return _DELAY.search(" ".join(notice.split())) is not None


@dataclass(frozen=True)
class TextHit:
    recipient: str
    diagnostic: str
    code: int
    status: str
    stage: str = ""


def stage_of(text: str) -> str:
    """ "RCPT", "DATA", "MAIL" when `text` says which command was refused, else ""."""
    for name, pattern in _STAGES:
        if pattern.search(text):
            return name
    return ""


def notice_only(text: str) -> str:
    """Cut the notice at the first marker of a returned message; drop "> " quoting."""
    text = _QUOTE.sub("", text)
    m = _ORIGINAL.search(text)
    if m and m.start() > 0:
        return text[: m.start()]
    return text


def returned_text(text: str) -> str:
    """What follows the returned-message marker (the quoted original), "" when no marker."""
    text = _QUOTE.sub("", text)
    m = _ORIGINAL.search(text)
    if not m or m.start() == 0:
        return ""
    end = text.find("\n", m.start())
    return text[end + 1 :] if end >= 0 else ""


def format_name(notice: str) -> str:
    for name, pattern in _FORMATS:
        if pattern.search(notice):
            return name
    return "text"


def reply_parts(text: str) -> tuple[int, str]:
    """The first SMTP reply code and enhanced status code in `text` (0 / "" when none)."""
    m = _CODE_ENHANCED.search(text)
    if m:
        return int(m.group(1)), m.group(2)
    code_m = _CODE.search(text)
    enh_m = _ENHANCED.search(text)
    return (int(code_m.group(1)) if code_m else 0), (enh_m.group(1) if enh_m else "")


def scan(notice: str, exclude: set[str], failed: list[str]) -> list[TextHit]:
    """Recipients and their diagnostics in a notice already cut by `notice_only`.

    `failed` (e.g. Exim's X-Failed-Recipients header) names the recipients when
    the bounce says so; otherwise addresses at the start of a line win over
    addresses mentioned inside sentences.
    """
    lines = notice[:MAX_NOTICE_CHARS].split("\n")
    first_line: dict[str, int] = {}
    leading: set[str] = set()
    for i, line in enumerate(lines):
        if _IGNORE_LINE.search(line):
            continue
        lead = _LEADING.match(line)
        if lead:
            # A recipient line counts even for an excluded address: people mail themselves.
            leading.add(clean_address(lead.group(1)))
        for m in ADDRESS.finditer(line):
            addr = clean_address(m.group(0))
            if addr.split("@")[0] in _ROBOTS or (addr in exclude and addr not in leading):
                continue
            first_line.setdefault(addr, i)
    if failed:
        chosen = list(failed)  # the MTA says so explicitly: no exclusions apply
    else:
        chosen = [a for a in first_line if a in leading] or list(first_line)
    starts = sorted((first_line.get(a, len(lines)), a) for a in chosen[:MAX_RECIPIENTS])
    hits = []
    for n, (start, addr) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        if end <= start:
            end = start + 1
        segment = lines[start : min(end, start + MAX_SEGMENT_LINES)]
        while n + 1 < len(starts) and len(segment) > 1 and _NEXT_HOST.match(segment[-1]):
            segment.pop()  # sendmail's "550 host (smtp)... reply" introduces the next recipient
        # Lines elsewhere that mention the address (Sendmail's transcript) belong to it too.
        for j, line in enumerate(lines):
            if (j < start or j >= end) and addr in line.lower() and j != first_line.get(addr):
                segment.extend(lines[j : j + 2])
        diagnostic = "\n".join(s.strip() for s in segment if s.strip())
        code, status = reply_parts(diagnostic)
        if not code and not status and len(starts) == 1:
            # One recipient: the reason may be written before the address (X1, KDDI, Notes).
            code, status = reply_parts(notice)
            before = _paragraph_before(lines, start)
            diagnostic = "\n".join(x for x in (_reply_line(notice), before, diagnostic) if x)
        hits.append(TextHit(addr, diagnostic, code, status, stage_of(diagnostic)))
    named = {h.recipient for h in hits}
    for hit in list(hits):
        for m in _ALIAS.finditer(hit.diagnostic):
            alias = clean_address(m.group(1))
            if alias not in named and alias not in exclude:
                named.add(alias)
                hits.append(TextHit(alias, hit.diagnostic, hit.code, hit.status, hit.stage))
    return hits


def _paragraph_before(lines: list[str], start: int, limit: int = 3) -> str:
    """Up to `limit` non-blank lines of the paragraph right above line `start`.

    When line `start` is the bare address, or past the end, blank lines above it are
    skipped first (au/EZweb writes "The user(s) account is disabled.", a blank line, the
    address).
    """
    out: list[str] = []
    bare = start < len(lines) and ADDRESS.fullmatch(lines[start].strip().strip("<>")) is not None
    # A recipient the notice never names (X-Failed-Recipients only, Exim's "save to xxxx"
    # for a local delivery, lhost-exim-07): the reason is the notice's last paragraph.
    bare = bare or start >= len(lines)
    start = min(start, len(lines))
    while bare and start > 0 and not lines[start - 1].strip():
        start -= 1
    for line in reversed(lines[max(0, start - limit) : start]):
        if not line.strip():
            break
        out.insert(0, line.strip())
    return "\n".join(out)


def _reply_line(text: str) -> str:
    m = _CODE_ENHANCED.search(text) or _CODE.search(text)
    if not m:
        return ""
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start : end if end >= 0 else len(text)].strip()


# Local parts that only robots use (postmaster is a real recipient: RFC 5321 §4.5.1).
_ROBOTS = frozenset({"mailer-daemon", "mail-daemon", "mailerdaemon"})
