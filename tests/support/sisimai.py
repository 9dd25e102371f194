"""The Sisimai corpus as test data: labels, Diagnostic-Code fields, and our mapping of reasons.

This module only reads corpus files (the subset in tests/data/sisimai, or the full corpus,
see `corpus_dir`); it decides nothing about bouncer's behaviour. The mapping below is
documentation made executable: it says which verdict we expect for each Sisimai reason;
docs/classifier.md repeats it with reasons.

Sisimai's own hard/soft rule (corpus reasons.md): only userunknown, hostunknown, hasmoved
and a 5xx notaccept are hard. bouncer's verdicts differ on one point: an inactive (suspended,
disabled) mailbox is `hard` for us, so `suspend` maps to hard/inactive-mailbox.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy.reply import Reply, parse_reply
from policy.verdict import BounceClass, Category

H, S, B, U, D = (
    BounceClass.HARD,
    BounceClass.SOFT,
    BounceClass.BLOCK,
    BounceClass.UNDETERMINED,
    BounceClass.DELIVERED,
)

# Sisimai reason -> (our class for a 5xx, our category). A 4xx is always SOFT with the
# same category (docs/behaviour.md#verdicts: "every 4xx" is soft); see expected_verdict().
# Reasons that are not bounces at all (feedback, vacation) map to None.
REASON_MAP: dict[str, tuple[BounceClass, Category] | None] = {
    # -- the address is dead (hard)
    "userunknown": (H, Category.BAD_MAILBOX),  # 5.1.1, "user unknown"
    "hasmoved": (H, Category.BAD_MAILBOX),  # 5.1.6: mailbox moved, no forwarding
    "hostunknown": (H, Category.BAD_DOMAIN),  # 5.1.2: the domain does not exist
    "notaccept": (H, Category.BAD_DOMAIN),  # null MX / 556: the domain takes no mail
    "suspend": (H, Category.INACTIVE_MAILBOX),  # bouncer: inactive is hard; Sisimai: soft
    # -- try again later (soft)
    "mailboxfull": (S, Category.QUOTA_ISSUES),  # 4.2.2 / 5.2.2
    "systemfull": (S, Category.QUOTA_ISSUES),  # 4.3.1: the server's disk is full
    "expired": (S, Category.MESSAGE_EXPIRED),  # 4.4.7: gave up after the queue lifetime
    "networkerror": (S, Category.ROUTING_ERRORS),  # DNS or network failure on the way
    "toomanyconn": (S, Category.BAD_CONNECTION),  # too many concurrent connections
    # -- the sender or the message was refused; the address may be fine (block)
    "blocked": (B, Category.SPAM_RELATED),  # client IP / hostname on a blocklist
    "badreputation": (B, Category.SPAM_RELATED),  # sending IP reputation
    "spamdetected": (B, Category.SPAM_RELATED),  # spam filter
    "authfailure": (B, Category.POLICY_RELATED),  # SPF / DKIM / DMARC
    "requireptr": (B, Category.POLICY_RELATED),  # no or bad PTR of the sending IP
    "rejected": (B, Category.POLICY_RELATED),  # the envelope sender was refused
    "policyviolation": (B, Category.POLICY_RELATED),  # receiver policy
    "securityerror": (B, Category.POLICY_RELATED),  # forged sender, security policy
    "speeding": (B, Category.POLICY_RELATED),  # rate limit
    "failedstarttls": (U, Category.BAD_CONFIGURATION),  # TLS failure (docs/behaviour.md#verdicts)
    "norelaying": (B, Category.RELAYING_ISSUES),  # relaying denied
    "virusdetected": (B, Category.VIRUS_RELATED),  # malware found
    "contenterror": (B, Category.CONTENT_RELATED),  # 5.6.x malformed content
    "notcompliantrfc": (B, Category.CONTENT_RELATED),  # not RFC 5322 compliant
    "filtered": (B, Category.CONTENT_RELATED),  # header/content or recipient's filter
    # -- size: soft/message-too-large (docs/behaviour.md#verdicts)
    "mesgtoobig": (S, Category.MESSAGE_TOO_LARGE),  # 5.3.4 message too big
    "exceedlimit": (S, Category.MESSAGE_TOO_LARGE),  # 5.2.3 message exceeds a limit
    "emailtoolarge": (S, Category.MESSAGE_TOO_LARGE),  # newer name of the two above
    # -- a 5xx that says nothing clear about the address (undetermined)
    "mailererror": (U, Category.BAD_CONFIGURATION),  # the remote's delivery program failed
    "systemerror": (U, Category.BAD_CONFIGURATION),  # remote internal error
    "syntaxerror": (U, Category.PROTOCOL_ERRORS),  # 502/503 command not accepted
    "onhold": (U, Category.OTHER),  # Sisimai could not decide
    "undefined": (U, Category.OTHER),  # Sisimai found no reason
    "suppressed": (U, Category.OTHER),  # the sending MTA's own suppression list
    # -- not bounces
    "delivered": (D, Category.DELIVERED),
    "feedback": None,  # ARF complaint: D's intake turns it into a block of the address
    "vacation": None,  # auto-reply
}


def expected_verdict(
    reason: str, status: str = "", replycode: str = ""
) -> tuple[BounceClass, Category] | None:
    """Our expected (class, category) for a Sisimai label; None for non-bounces.

    A transient label (status "4.x.x" or reply code 4xx) is SOFT whatever the reason,
    because docs/behaviour.md#verdicts makes every 4xx soft and never hard.
    """
    mapped = REASON_MAP.get(reason, (U, Category.OTHER))
    if mapped is None or mapped[0] is D:
        return mapped
    transient = status.startswith("4") or (not status and replycode.startswith("4"))
    if transient:
        return (S, mapped[1])
    return mapped


@dataclass(frozen=True)
class Recipient:
    status: str
    replycode: str
    reason: str
    hardbounce: bool


@dataclass(frozen=True)
class Label:
    file: str
    source_module: str
    recipients: tuple[Recipient, ...]

    @property
    def first(self) -> Recipient:
        return self.recipients[0]


@dataclass(frozen=True)
class Diagnostic:
    """One per-recipient block of a delivery-status report."""

    recipient: str  # Final-Recipient (or Original-Recipient) address, "" if none
    status: str  # Status: field, "" if none
    kind: str  # the diagnostic type before ";", e.g. "smtp", "x-unix"; "" if none
    text: str  # the Diagnostic-Code text, continuation lines joined by one space


# The subset kept in the repository (with its licences and provenance, see its README.md):
# every corpus test runs on it in a fresh clone.
SUBSET_DIR = Path(__file__).resolve().parents[1] / "data" / "sisimai"

FULL_CORPUS_ABSENT = (
    "the full Sisimai corpus is absent: set BOUNCER_SISIMAI_CORPUS to a directory holding its "
    "emails/ and labels.jsonl (tests/data/sisimai/README.md); the subset tests still run"
)


def corpus_dir() -> Path | None:
    """The full labelled corpus, or None when absent.

    `$BOUNCER_SISIMAI_CORPUS` when set; otherwise the copy the development machines keep in a
    directory beside the checkout.
    """
    env = os.environ.get("BOUNCER_SISIMAI_CORPUS")
    if env:
        path = Path(env)
    else:
        path = Path(__file__).resolve().parents[2].parent.joinpath("shared", "corpus", "sisimai")
    return path if (path / "labels.jsonl").is_file() else None


# Parameters for a `corpus` fixture: the subset always, the full corpus when present.
CORPUS_PARAMS = ["subset", pytest.param("full", marks=pytest.mark.corpus)]


def corpus_for(param: str) -> Path:
    """The directory for a CORPUS_PARAMS value; skips the test when the full one is absent."""
    if param == "subset":
        return SUBSET_DIR
    full = corpus_dir()
    if full is None:
        pytest.skip(FULL_CORPUS_ABSENT)
    return full


def load_labels(corpus: Path) -> list[Label]:
    labels = []
    with (corpus / "labels.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            recipients = tuple(
                Recipient(r["status"], r["replycode"], r["reason"], bool(r["hardbounce"]))
                for r in row["recipients"]
            )
            labels.append(Label(row["file"], row["source_module"], recipients))
    return labels


_ADDR = re.compile(r"^\s*(?:[\w.-]+\s*;\s*)?<?([^<>\s;]+@[^<>\s;]+?)>?\s*$")
# A "Diagnostic-Code:" field written in plain text (forwarded or re-quoted reports):
# the field line and its folded continuation lines (RFC 5322 §2.2.3).
_FIELD_IN_TEXT = re.compile(
    r"^(Diagnostic-Code|Status|Final-Recipient|Original-Recipient):[ \t]*(.*(?:\n[ \t]+.*)*)",
    re.IGNORECASE | re.MULTILINE,
)


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _split_kind(value: str) -> tuple[str, str]:
    """ "smtp; 550 5.1.1 No user" -> ("smtp", "550 5.1.1 No user") (RFC 3464 §2.3.6)."""
    value = _unfold(value)
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", kind.strip()):
        return kind.strip().lower(), rest.strip()
    return "", value


def _address(value: str) -> str:
    m = _ADDR.match(_unfold(value))
    return m.group(1).lower() if m else ""


def _from_status_part(part: email.message.Message) -> Iterator[Diagnostic]:
    # message/delivery-status: the payload is a list of header blocks; the first is
    # per-message, the rest per-recipient (RFC 3464 §2.1).
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return
    for block in blocks:
        if not isinstance(block, email.message.Message):
            continue
        diag = block.get("Diagnostic-Code")
        if diag is None:
            continue
        kind, text = _split_kind(str(diag))
        rcpt = block.get("Final-Recipient") or block.get("Original-Recipient") or ""
        yield Diagnostic(_address(str(rcpt)), _unfold(str(block.get("Status", ""))), kind, text)


def _from_text(text: str) -> Iterator[Diagnostic]:
    # Plain-text reports: group fields by the recipient that precedes them.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    rcpt, status = "", ""
    for m in _FIELD_IN_TEXT.finditer(text):
        name, value = m.group(1).lower(), m.group(2)
        if name in ("final-recipient", "original-recipient"):
            if name == "final-recipient" or not rcpt:
                rcpt, status = _address(value), ""
        elif name == "status":
            status = _unfold(value)
        else:
            kind, diag = _split_kind(value)
            yield Diagnostic(rcpt, status, kind, diag)


def diagnostics(path: Path) -> list[Diagnostic]:
    """Every Diagnostic-Code in one bounce email, in order, with its recipient and Status.

    Real delivery-status parts come first; when there are none, the text parts are
    searched for the same fields (some MTAs put the report in text/plain).
    """
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    found: list[Diagnostic] = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            found.extend(_from_status_part(part))
    if found:
        return found
    for part in msg.walk():
        if part.get_content_maintype() in ("text", "message") and not part.is_multipart():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                found.extend(_from_text(payload.decode("utf-8", "replace")))
    return found


def reply_of(diag: Diagnostic) -> Reply:
    """The Diagnostic-Code as a Reply: parsed when its type is smtp (or absent), else text
    only (code 0), so an x-unix exit status "255" is not mistaken for a 2xx reply."""
    if diag.kind in ("smtp", ""):
        return parse_reply(diag.text)
    return Reply(0, None, diag.text)


_IN_REPLY = re.compile(r"[^<>]{0,200}?\(in reply to (end of DATA|DATA|RCPT TO|MAIL FROM) command\)")


def stage_of(path: Path, diag: Diagnostic) -> str | None:
    """The SMTP command the diagnostic answered, when the bounce's text says so.

    Postfix writes "said: 550 ... (in reply to end of DATA command)". Sendmail's
    transcript shows ">>> DATA" and then every pending reply; with pipelining the RCPT
    replies come first, so a "<<<" line answers DATA only when it is the last "<<<"
    line after ">>> DATA", and the ones before it answered RCPT (the DATA reply is then
    "503 Need RCPT" or "554 no valid recipients"). Returns "DATA", "RCPT", "MAIL" or
    None (not stated).
    """
    snippet = " ".join(diag.text.split())[:24].lower()
    if len(snippet) < 8:
        return None
    raw = path.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    flat = " ".join(raw.split())
    low = flat.lower()
    start = 0
    while (i := low.find(snippet, start)) >= 0:
        start = i + 1
        m = _IN_REPLY.match(flat, i)
        if m is not None:
            return {"DATA": "DATA", "TO": "RCPT", "FROM": "MAIL"}[m.group(1).split()[-1]]
    lines = raw.split("\n")
    for n, line in enumerate(lines):
        if line.startswith("<<< ") and " ".join(line[4:].split()).lower().startswith(snippet):
            command = next(
                (
                    lines[k][4:].split()[0].upper()
                    for k in range(n - 1, -1, -1)
                    if lines[k].startswith(">>> ") and lines[k][4:].split()
                ),
                None,
            )
            later = any(ln.startswith("<<< ") for ln in lines[n + 1 : n + 20])
            if command == "DATA":
                # Pipelined: the replies before the last one answered MAIL/RCPT.
                return "RCPT" if later else "DATA"
            if command in ("RCPT", "MAIL") and not later:
                return command
    return None


@dataclass(frozen=True)
class Sample:
    """One corpus email with a Diagnostic-Code: the text to classify and the label."""

    file: str
    diagnostic: Diagnostic
    label: Recipient


def samples(corpus: Path) -> list[Sample]:
    """Pair each labelled email's Diagnostic-Codes with its labelled recipients, in order.

    When the email has fewer Diagnostic-Codes than labelled recipients (or more), the pairs
    are taken positionally up to the shorter list; the first pair always exists.
    """
    out = []
    for label in load_labels(corpus):
        diags = diagnostics(corpus / "emails" / label.file)
        for diag, rcpt in zip(diags, label.recipients, strict=False):
            out.append(Sample(label.file, diag, rcpt))
    return out
