# Is this message an auto-reply or a bounce at all? Tables of header and subject signs; no I/O.
"""Tell auto-replies (never bounces) and bounces apart from ordinary mail.

Bounces themselves often say "Auto-Submitted: auto-replied" (Exim, Postfix),
so the auto-reply test runs only after the bounce parsers found nothing.
"""

from __future__ import annotations

import re

from policy.bounces.mime import Message, header

# RFC 3834 §5 and the vendor headers that mean "I am an automatic answer".
AUTOREPLY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Auto-Submitted", r"^auto-replied"),  # RFC 3834 §5.1 (auto-generated is used by DSNs)
    ("X-Autoreply", r"."),  # Exim/Cyrus vacation
    ("X-Autorespond", r"."),  # various webmails
    ("X-Auto-Response", r"."),
    ("Precedence", r"^auto_reply$"),
    ("X-Mailer", r"vacation"),  # BSD vacation(1)
)

# Subjects of out-of-office replies, in the classifier's languages and a few more.
AUTOREPLY_SUBJECTS: tuple[str, ...] = (
    r"out of (?:the )?office",
    r"auto(?:matic|matische)?[ -]?(?:reply|response|antwort)",
    r"^auto:",
    r"\bvacation\b",
    r"\baway\b",
    r"\babsen(?:ce|t)\b",
    r"abwesen",  # German: Abwesenheitsnotiz
    r"r[ée]ponse automatique|absent du bureau|en cong[ée]",  # French
    r"risposta automatica|fuori ufficio",  # Italian
    r"respuesta autom[áa]tica|fuera de la oficina",  # Spanish
    r"resposta autom[áa]tica|fora do escrit[óo]rio",  # Portuguese
)
_SUBJECTS = re.compile("|".join(AUTOREPLY_SUBJECTS), re.IGNORECASE)

# Who sends bounces (RFC 3464 §2: "MAILER-DAEMON"; RFC 2142 postmaster) and what they title them.
BOUNCE_SENDERS = re.compile(
    r"mailer-daemon|post_?master|mail delivery|mail administrator|mmdf|smtp[-_]?gateway|"
    r"bounce|MAILER_DAEMON|mdaemon|no-reply@sns\.amazonaws",
    re.IGNORECASE,
)
BOUNCE_SUBJECTS = re.compile(
    r"undeliver|delivery (?:status|failure|fail|report|notification)|failure notice|"
    r"returned mail|mail delivery|could not be delivered|non[- ]?delivery|nicht zustellbar|"
    r"non recapitabile|no se puede entregar|non remis|unzustellbar|rejected|bounce|"
    r"error|failed|warning: could not|notification|unable to deliver|"
    r"\u914d\u4fe1|\u30a8\u30e9\u30fc|\u4e0d\u80fd",  # Japanese: haishin, eraa, funou
    re.IGNORECASE,
)


def is_autoreply(msg: Message) -> bool:
    """RFC 3834 headers or an out-of-office subject."""
    for name, pattern in AUTOREPLY_HEADERS:
        value = header(msg, name)
        if value and re.search(pattern, value, re.IGNORECASE):
            return True
    return bool(_SUBJECTS.search(header(msg, "Subject")))


def looks_like_bounce(msg: Message) -> bool:
    """From a mailer daemon, a delivery-status report, or titled like a bounce.

    A null Return-Path alone proves nothing: RFC 3834 §3.3 asks auto-replies
    to use it too.
    """
    if BOUNCE_SENDERS.search(header(msg, "From")):
        return True
    # RFC 3462: a multipart/report of delivery status is a bounce whatever it is titled.
    if msg.get_content_type() == "multipart/report" and "delivery-status" in (
        msg.get_param("report-type") or ""
    ):
        return True
    return bool(BOUNCE_SUBJECTS.search(header(msg, "Subject")))
