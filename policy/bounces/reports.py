# Structured reports: RFC 3464 delivery-status, RFC 5965 feedback-report, SES JSON. No I/O.
"""Read the machine-readable parts of a report into Findings.

RFC 3464 §2.1: a delivery-status body is one per-message field block followed
by one block per recipient. Real MTAs bend this (blank lines inside a block,
the fields in text/plain, a missing Final-Recipient), so blocks are found by
field names, not by blank lines: a new Final-Recipient starts a new recipient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from policy.bounces.mime import Message, addresses, first_address, header
from policy.bounces.values import Finding, Kind

# "Name: value" with RFC 5322 §2.2.3 folding; names of RFC 3464 §2.2-2.3 and RFC 5965 §3.
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*(?:\n[ \t]+.*)*)", re.MULTILINE)
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _fields(text: str) -> Iterator[tuple[str, str]]:
    for m in _FIELD.finditer(text):
        yield m.group(1).lower(), " ".join(m.group(2).split())


def _after_type(value: str) -> str:
    """ "rfc822; a@b" -> "a@b", "smtp; 550 ..." -> "550 ..." (RFC 3464 §2.3.2, §2.3.6)."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z][\w.-]*\s*", kind):
        return rest.strip()
    return value.strip()


def _recipient_blocks(fields: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Split one blank-line-separated block at each repeated recipient field.

    Fields before the first recipient field belong to it: some MTAs write
    Diagnostic-Code and Status before Final-Recipient (Facebook).
    """
    if not any(name in _RECIPIENT_FIELDS for name, _ in fields):
        return []
    blocks: list[dict[str, str]] = [{}]
    seen_recipient = False
    for name, value in fields:
        current = blocks[-1]
        if name in _RECIPIENT_FIELDS:
            if name in current and seen_recipient:
                current = {}
                blocks.append(current)
            seen_recipient = True
        current.setdefault(name, value)
    return blocks


def delivery_status(text: str, source: str = "rfc3464") -> list[Finding]:
    """Every recipient block in a delivery-status body (or text using its field names)."""
    blocks: list[dict[str, str]] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        blocks.extend(_recipient_blocks(list(_fields(paragraph))))
    found = []
    for block in blocks:
        original = first_address(_after_type(block.get("original-recipient", "")))
        final = first_address(_after_type(block.get("final-recipient", "")))
        actual = first_address(_after_type(block.get("x-actual-recipient", "")))
        recipient = original or final or actual
        if not recipient:
            continue
        status_m = _STATUS.search(block.get("status", ""))
        found.append(
            Finding(
                recipient=recipient,
                kind=Kind.DSN,
                source=source,
                status=status_m.group(0) if status_m else "",
                diagnostic=_after_type(block.get("diagnostic-code", "")),
                action=block.get("action", "").split()[0].lower() if block.get("action") else "",
                remote_mta=_after_type(block.get("remote-mta", "")),
            )
        )
    return found


def feedback_report(text: str, original: Message | None) -> list[Finding]:
    """An RFC 5965 §3 feedback report: who complained, about which message."""
    pairs = list(_fields(text))
    fields = dict(reversed(pairs))  # the first of a repeated field wins
    feedback_type = (fields.get("feedback-type", "") or "abuse").split()[0].lower()
    # RFC 5965 §3.2: Original-Rcpt-To and Removal-Recipient may each appear more than once.
    wanted = ("original-rcpt-to", "removal-recipient")
    recipients = [a for name, value in pairs if name in wanted for a in addresses(value)]
    if not recipients and original is not None:
        recipients = original_recipients(original)
    return [
        Finding(r, Kind.ARF, "rfc5965", feedback_type=feedback_type, remote_mta=_reporter(fields))
        for r in dict.fromkeys(recipients)
    ] or [Finding("", Kind.ARF, "rfc5965", feedback_type=feedback_type)]


def _reporter(fields: dict[str, str]) -> str:
    return _after_type(fields.get("reporting-mta", "")) or fields.get("user-agent", "")


def original_recipients(original: Message) -> list[str]:
    """Whom the returned message was for: provider headers first, then To/Cc."""
    for name in ("X-HmXmrOriginalRecipient", "X-Original-To", "Original-Recipient"):
        found = addresses(header(original, name))
        if found:
            return found
    return addresses(header(original, "To") + " " + header(original, "Cc"))


def ses_notification(text: str) -> list[Finding]:
    """An Amazon SES/SNS JSON notification (bounce or complaint) sent as an email body."""
    start = text.find("{")
    if start < 0 or "notificationType" not in text:
        return []
    data: Any = None
    # Some relays fold long lines ("...@sim!\nulator..."): retry with the folds removed.
    for candidate in (text[start:], re.sub(r"!?\n", "", text[start:])):
        try:
            data = json.JSONDecoder().raw_decode(candidate)[0]
            break
        except ValueError:
            continue
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        try:  # wrapped in an SNS envelope
            data = json.loads(data["Message"])
        except ValueError:
            return []
    if not isinstance(data, dict):
        return []
    kind = str(data.get("notificationType", "")).lower()
    found: list[Finding] = []
    if kind == "bounce":
        bounce = data.get("bounce") or {}
        for r in bounce.get("bouncedRecipients") or []:
            found.append(
                Finding(
                    recipient=str(r.get("emailAddress", "")).lower(),
                    kind=Kind.DSN,
                    source="amazon-ses",
                    status=str(r.get("status", "") or ""),
                    diagnostic=_after_type(str(r.get("diagnosticCode", "") or "")),
                    action=str(r.get("action", "") or "failed"),
                    remote_mta=_after_type(str(bounce.get("reportingMTA", "") or "")),
                )
            )
    elif kind == "complaint":
        complaint = data.get("complaint") or {}
        ftype = str(complaint.get("complaintFeedbackType", "") or "abuse")
        for r in complaint.get("complainedRecipients") or []:
            address = str(r.get("emailAddress", "")).lower()
            found.append(Finding(address, Kind.ARF, "amazon-ses", feedback_type=ftype))
    elif kind == "delivery":
        delivery = data.get("delivery") or {}
        for r in delivery.get("recipients") or []:
            found.append(
                Finding(
                    str(r).lower(),
                    Kind.DSN,
                    "amazon-ses",
                    status="2.0.0",
                    diagnostic=str(delivery.get("smtpResponse", "")),
                    action="delivered",
                )
            )
    return found
