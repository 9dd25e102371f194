# The vocabulary of bounce parsing: value types only, no decisions and no I/O.
"""What a bounce email says about one recipient, before and after classification."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from policy.reply import Reply
from policy.verdict import Verdict


class Kind(StrEnum):
    DSN = "dsn"  # a delivery status notification: RFC 3464 or a known plain-text format
    ARF = "arf"  # a feedback report (RFC 5965) or a provider's complaint / unsubscribe
    AUTOREPLY = "autoreply"  # out of office, vacation (RFC 3834): never a bounce
    UNKNOWN = "unknown"  # looks like a bounce, but no recipient could be found


@dataclass(frozen=True)
class Finding:
    """One recipient as a parser read it: strings from the email, not yet classified."""

    recipient: str  # lower-cased address, "" when not found
    kind: Kind
    source: str  # which parser or format table entry found it, e.g. "rfc3464", "qmail"
    status: str = ""  # RFC 3463 enhanced code from a Status: field or the text
    diagnostic: str = ""  # the remote's reply or the notice's text about this recipient
    action: str = ""  # RFC 3464 §2.3.3: failed, delayed, delivered, relayed, expanded
    remote_mta: str = ""
    feedback_type: str = ""  # RFC 5965 §3.1: abuse, fraud, opt-out, ...
    stage: str = ""  # the SMTP command the remote refused, when the notice says: RCPT, DATA


@dataclass(frozen=True)
class BounceReport:
    """One recipient of a bounce, complaint or auto-reply, with the classifier's verdict.

    `verdict` is None for complaints and auto-replies: they are not delivery failures.
    """

    recipient: str
    kind: Kind
    source: str
    status: str
    reply: Reply
    action: str
    remote_mta: str
    feedback_type: str
    verdict: Verdict | None
    stage: str = ""
