# This module composes delivery status notifications; it performs no I/O and reads no
# clock or random source: the date, queue id and every reply are parameters.
"""RFC 3464 failure DSNs (multipart/report; report-type=delivery-status).

Three parts, as RFC 3462/6522 orders them: a human-readable explanation, the
machine-readable message/delivery-status (per-message fields, then one block
per failed recipient), and the original message's headers
(text/rfc822-headers; RFC 3462 §2 allows headers only, and a bounce should not
carry the whole message back). The DSN goes from the null sender (RFC 5321
§4.5.5) and is never made for a message whose own sender is null, so bounces
cannot loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime

from policy.reply import Reply

# RFC 3463 §3.5 X.4.7 "Delivery time expired": status when the queue gave up and the
# remote never said anything with a code (e.g. it was never reachable).
EXPIRED_STATUS = "4.4.7"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the DSN reports as `Action: failed`."""

    recipient: str
    reply: Reply | None  # the remote's last reply (with .host), or None if none was heard
    last_attempt: datetime | None = None
    expired: bool = False  # gave up after the retry schedule (vs. a permanent refusal)
    note: str = ""  # e.g. an operator's reason for dropping it

    @property
    def status(self) -> str:
        """RFC 3464 §2.3.4 Status: the remote's enhanced code, else derived from its class."""
        if self.reply is not None and self.reply.enhanced:
            return self.reply.enhanced
        if self.reply is not None and self.reply.is_permanent:
            return "5.0.0"
        if self.reply is not None and self.reply.is_transient:
            return "4.0.0"
        return EXPIRED_STATUS if self.expired else "5.0.0"


@dataclass(frozen=True)
class DsnContext:
    """Who reports, and about which message."""

    reporting_mta: str  # our hostname (Reporting-MTA: dns; ...)
    dsn_from: str  # the DSN's From: header, e.g. MAILER-DAEMON@host
    queue_id: str  # the original message's queue id
    dsn_id: str  # the DSN's own queue id, used for its Message-ID
    sender: str  # the original envelope sender: the DSN's recipient
    arrival: datetime


def original_headers(data: bytes) -> str:
    """The header block of a message (up to the first empty line), as text."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, _ = data.partition(sep)
        if found:
            break
    else:
        head = data
    return head.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")


def is_null_sender(sender: str) -> bool:
    return sender.strip() in ("", "<>")


def _human_part(ctx: DsnContext, failed: Sequence[FailedRecipient]) -> MIMEText:
    lines = [
        f"This is the mail system at host {ctx.reporting_mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
    ]
    for f in failed:
        why = f.reply.line() if f.reply is not None else "no reply from any remote"
        said = f" (said {f.reply.host})" if f.reply is not None and f.reply.host else ""
        if f.expired:
            lines.append(
                f"<{f.recipient}>: gave up after the retry schedule; last reply{said}: {why}"
            )
        else:
            lines.append(f"<{f.recipient}>: refused{said}: {why}")
        if f.note:
            lines.append(f"    {f.note}")
    text = "\n".join(lines) + "\n"
    return MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")


def _recipient_fields(f: FailedRecipient) -> Message:
    block = Message()
    block["Final-Recipient"] = f"rfc822; {f.recipient}"
    block["Action"] = "failed"
    block["Status"] = f.status
    if f.reply is not None and f.reply.host:
        # "name[ip]" (Postfix style) -> the name; RFC 3464 §2.3.5 mta-name-type "dns".
        block["Remote-MTA"] = f"dns; {f.reply.host.split('[')[0] or f.reply.host}"
    if f.reply is not None and f.reply.code:
        # RFC 3464 §2.3.6: the remote's own reply, on one line (folded by the generator).
        block["Diagnostic-Code"] = f"smtp; {f.reply.line()}"
    elif f.note:
        block["Diagnostic-Code"] = f"X-Bouncer; {f.note}"
    if f.last_attempt is not None:
        block["Last-Attempt-Date"] = format_datetime(f.last_attempt)
    return block


def compose_dsn(
    ctx: DsnContext, failed: Sequence[FailedRecipient], original: bytes, now: datetime
) -> bytes | None:
    """The DSN as wire bytes (CRLF line ends), or None for a null-sender message."""
    if is_null_sender(ctx.sender) or not failed:
        return None
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = ctx.dsn_from
    report["To"] = ctx.sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = f"<{ctx.dsn_id}.{int(now.timestamp())}@{ctx.reporting_mta}>"
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5: no auto-replies to this
    report.attach(_human_part(ctx, failed))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {ctx.reporting_mta}"
    per_message["X-Bouncer-Queue-ID"] = ctx.queue_id
    per_message["Arrival-Date"] = format_datetime(ctx.arrival)
    status = MIMEBase("message", "delivery-status")
    status.set_payload([per_message, *(_recipient_fields(f) for f in failed)])
    report.attach(status)

    headers = MIMENonMultipart("text", "rfc822-headers")
    text = original_headers(original).rstrip("\n") + "\n"  # a header block ends in a newline
    if text.isascii():
        headers.set_payload(text)
    else:
        headers.set_payload(text, "utf-8")
    report.attach(headers)
    return report.as_bytes(policy=email_policy.SMTP)
