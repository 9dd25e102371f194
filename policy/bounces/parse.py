# Bounce email in, typed reports out: parsing only; every verdict comes from policy.classify.
"""Parse a late bounce, a complaint or an auto-reply (bytes) into `BounceReport`s.

The order matters and follows how much each kind of evidence can be trusted:
a feedback report (RFC 5965) first, then an RFC 3464 delivery-status part,
then provider JSON, then the plain-text formats of `bounce_text`, and only
when none of them found a recipient, the auto-reply test (bounces carry
auto-reply headers too). The intake and `bouncer parse` both call
`parse_bounce`, so what the CLI prints is what the intake records.
"""

from __future__ import annotations

import re
from dataclasses import replace

from policy.bounces import reports as bounce_dsn
from policy.bounces import text as bounce_text
from policy.bounces.autoreply import is_autoreply, looks_like_bounce
from policy.bounces.mime import Message, Parts, addresses, header, load, split
from policy.bounces.values import BounceReport, Finding, Kind
from policy.classify.classify import classify
from policy.classify.rules import RuleSet
from policy.reply import Reply, parse_reply
from policy.verdict import BounceClass, Category, Verdict

__all__ = ["BounceReport", "Kind", "find", "parse_bounce", "report_for", "returned_sender"]

# Provider complaints that are not RFC 5965 reports: (From pattern, Subject pattern, type).
COMPLAINT_FORMATS: tuple[tuple[str, str, str], ...] = (
    ("@hotmail.com", "complaint about message", "abuse"),  # Outlook.com JMRP without ARF part
    ("@icloud.com", "unsubscribe", "opt-out"),  # Apple Mail "unsubscribe" mail to List-Unsubscribe
)


def parse_bounce(data: bytes, rules: RuleSet | None = None) -> list[BounceReport]:
    """Every recipient `data` reports on, each classified; [] for mail that is none of these."""
    return [report_for(f, rules) for f in find(load(data))]


def find(msg: Message) -> list[Finding]:
    """The unclassified findings of a parsed message (see the module docstring for the order)."""
    parts = split(msg)
    for ctype, text in parts.structured:
        if "feedback-report" in ctype:
            return bounce_dsn.feedback_report(text, parts.original)
    complaint = _provider_complaint(msg, parts)
    if complaint:
        return complaint
    found: list[Finding] = []
    for ctype, text in parts.structured:
        if "delivery-status" in ctype:
            found.extend(bounce_dsn.delivery_status(text))
    if found:
        return _with_text_diagnostics(found, msg, parts)
    found = bounce_dsn.ses_notification(parts.notice)
    if found:
        return found
    notice = bounce_text.notice_only(parts.notice)
    # Some MTAs write RFC 3464 fields into the text itself (or forward a DSN inline).
    found = bounce_dsn.delivery_status(notice, source="rfc3464-text")
    if found:
        return _with_text_diagnostics(found, msg, parts)
    auto = is_autoreply(msg)
    # A null Return-Path is a bounce sign only when nothing says auto-reply (RFC 3834 §3.3).
    bounce = looks_like_bounce(msg) or (header(msg, "Return-Path").strip() == "<>" and not auto)
    if bounce or not auto:
        hits = bounce_text.scan(notice, _excluded(msg, parts), _failed(msg))
        source = bounce_text.format_name(parts.notice)
        delayed = bounce_text.says_delayed(notice)
        texts = [_from_hit(h, source, delayed) for h in hits if bounce or h.code >= 400 or h.status]
        if not any(h.code or h.status for h in hits):
            # A notice with no reason that returns a bounce (a gateway passing on the DSN
            # it got, lhost-x5-01): the returned report says who failed and why.
            texts = _returned_report(parts) or texts
        if texts:
            return texts
        if bounce and not auto:
            # The notice names nobody: the returned message says whom it was for (Verizon).
            diagnostic = " ".join(notice.split())[:500]
            who = _returned_recipients(parts)
            if len(who) == 1:
                return [Finding(who[0], Kind.DSN, source, diagnostic=diagnostic)]
            return [Finding("", Kind.UNKNOWN, source, diagnostic=diagnostic)]
    if auto:
        who = addresses(header(msg, "From"))
        return [Finding(who[0] if who else "", Kind.AUTOREPLY, "rfc3834")]
    return []


def returned_sender(data: bytes, ignore_domain: str = "") -> str:
    """Who sent the message a bounce returns: its Return-Path, Sender or From ("" if none).

    Addresses in `ignore_domain` (our own VERP domain) are skipped: they are
    the return path bouncer wrote, not the person who should see the bounce.
    """
    original = split(load(data)).original
    if original is None:
        return ""
    for name in ("Return-Path", "Sender", "From"):
        for address in addresses(header(original, name)):
            if not ignore_domain or not address.endswith("@" + ignore_domain.lower()):
                return address
    return ""


def report_for(finding: Finding, rules: RuleSet | None = None) -> BounceReport:
    """Build the reply from what the finding quotes and let the classifier decide."""
    reply = _reply(finding)
    verdict = None
    if finding.kind in (Kind.DSN, Kind.UNKNOWN):
        verdict = _unverified_user_unknown(classify(reply, rules), reply, finding, rules)
    return BounceReport(
        recipient=finding.recipient,
        kind=finding.kind,
        source=finding.source,
        status=reply.enhanced or "",
        reply=reply,
        action=finding.action,
        remote_mta=finding.remote_mta,
        feedback_type=finding.feedback_type,
        verdict=verdict,
        stage=finding.stage,
    )


# A late "user unknown" needs proof before it may suppress an address. Recipient filters
# (notably Japanese mobile carriers) and content filters answer "user unknown" after DATA
# for mailboxes that exist (Sisimai's "filtered"); and a late bounce is never the only
# chance to learn the truth: the next message to the address gets the remote's verdict at
# RCPT, in-transaction. Proof is any one of:
# - an RFC 3463 x.1.x or x.2.1 code, or a refusal at RCPT or MAIL;
# - a format in which the mailbox server reports its own directory look-up;
# - a classifier rule whose phrasing only a provider's own directory writes (DIRECTORY_RULES);
# - the mailbox host's local delivery agent says so (sendmail's "mail.local: unknown user",
#   "local user", "local mailbox"): the message was accepted and handed to the mailbox's
#   own machine, which has no such user;
# - the reply names the bounced recipient the way an RCPT reply does, "<rcpt>: User
#   unknown" or "rcpt... No such user" (Postfix, sendmail). A reply to DATA covers every
#   recipient of the transaction and names none: au/KDDI's filter answers "550 : User
#   unknown" where its RCPT refusal of a missing mailbox is "550 <rcpt>: User unknown"
#   (Sisimai's Rhost::KDDI tells the two apart the same way; corpus rfc3464-57 vs -58).
#   Not when the bounce says the reply answered DATA (m-FILTER writes the command).
# A backup MX, a gateway or an Exchange server that accepted the message and then learnt
# from the mailbox server that the mailbox does not exist writes its reply in these forms.
# Without proof the verdict is undetermined with that reason: the message failed and the
# address is not suppressed. Not content-related: nothing says the content was refused.
UNVERIFIED_USER_UNKNOWN = Verdict(
    BounceClass.UNDETERMINED, Category.OTHER, "late-user-unknown-without-proof"
)
DIRECTORY_FORMATS = frozenset({"exchange", "notes", "domino", "imail"})
DIRECTORY_RULES = frozenset(
    {
        "gmail-no-such-user",  # Gmail's NoSuchUser page: the Google account does not exist
        "yahoo-no-account",  # Yahoo/AOL "dd This user doesn't have a yahoo.com account"
        "ms-dbeb-access-denied",  # Exchange Online Directory Based Edge Blocking
    }
)
_LOCAL_AGENT = re.compile(
    r"\bmail\.local: unknown user"
    # The mailbox host speaking of its own users: "local user", "our local address",
    # "Local mailbox x is unavailable" (flufl.bounce simple_23, simple_26, simple_39).
    r"|\blocal (?:user|mailbox|address|recipient)\b",
    re.IGNORECASE,
)
_SUBJECT_1 = re.compile(r"(?<![\d.])[45]\.1\.\d{1,3}(?![\d.]*\d)")
# After "<rcpt>:" or "rcpt...": the reply's own words, up to the next angle bracket or
# parenthesis; they must start with a letter (a digit would be another reply quoted there).
_AFTER_RECIPIENT = re.compile(r">?(?::|\.\.\.)[ \t]*([a-z][^<>()]*)", re.IGNORECASE)


# Classifier rules that read a "user unknown" as a recipient's filter refusing the message
# (block/content-related for a live reply). In a late report that is the same case as a
# user unknown without proof: undetermined, the rule kept as the reason.
RECIPIENT_FILTER_RULES = frozenset({"kddi-filter-user-unknown"})


def _unverified_user_unknown(
    verdict: Verdict, reply: Reply, finding: Finding, rules: RuleSet | None
) -> Verdict:
    if verdict.rule in RECIPIENT_FILTER_RULES:
        return Verdict(BounceClass.UNDETERMINED, Category.OTHER, verdict.rule)
    if verdict.klass is not BounceClass.HARD or verdict.category is not Category.BAD_MAILBOX:
        return verdict
    enhanced = reply.enhanced or ""
    proof = (
        enhanced[1:3] == ".1"  # RFC 3463 x.1.x: addressing status, the address itself
        and enhanced[3:4] == "."
        or enhanced[1:] == ".2.1"  # x.2.1: the mailbox is disabled
        or _SUBJECT_1.search(reply.text) is not None
        or finding.stage in ("RCPT", "MAIL")
        or finding.source in DIRECTORY_FORMATS
        or verdict.rule in DIRECTORY_RULES
        or _LOCAL_AGENT.search(reply.text) is not None
        or (finding.stage != "DATA" and _names_recipient(reply.text, finding.recipient, rules))
    )
    return verdict if proof else UNVERIFIED_USER_UNKNOWN


def _names_recipient(text: str, recipient: str, rules: RuleSet | None) -> bool:
    """True when `text` says "<recipient>: <dead mailbox>" or "recipient... <dead mailbox>"."""
    if not recipient:
        return False
    low, start = text.lower(), 0
    while (i := low.find(recipient.lower(), start)) >= 0:
        start = i + len(recipient)
        m = _AFTER_RECIPIENT.match(text, start)
        if m is None or (i > 0 and low[i - 1] not in " <:"):
            continue
        said = classify(Reply(0, None, m.group(1)), rules)
        if said.category is Category.BAD_MAILBOX:
            return True
    return False


def _reply(finding: Finding) -> Reply:
    """Code and text from the diagnostic; the enhanced code from Status unless it is vaguer.

    RFC 3464 §2.3.4 makes Status authoritative, but many MTAs write a generic
    "5.0.0" there and the precise "5.1.1" only in the Diagnostic-Code.
    """
    quoted = parse_reply(finding.diagnostic) if finding.diagnostic else Reply(0, None, "")
    code, enhanced = quoted.code, quoted.enhanced
    refused = bounce_text.reply_parts(finding.diagnostic)[0] if code < 400 else 0
    if refused and finding.action != "delivered":
        # A session transcript opens with the greeting (220) and the 250s before the refusal.
        code, enhanced = 0, None
    if not code or code >= 600:
        code, enhanced_text = bounce_text.reply_parts(finding.diagnostic)
        enhanced = enhanced or enhanced_text or None
    status = finding.status or None
    if status and (not enhanced or not _vaguer(status, enhanced)):
        enhanced = status
    if finding.action == "delayed" and (not enhanced or enhanced[0] == "5"):
        enhanced = "4" + (enhanced or "4.0.0")[1:]  # RFC 3464 §2.3.3: delayed is transient
    if code and enhanced and str(code)[0] != enhanced[0]:
        code = 0  # the reply quoted and the status disagree: let the status speak
    if finding.action == "delivered" and not code:
        code = 250
    text = " ".join(quoted.text.split()) if finding.diagnostic else ""
    return Reply(code, enhanced, text, finding.remote_mta or None)


def _vaguer(status: str, enhanced: str) -> bool:
    """True when `status` says less than `enhanced` (x.0.0 vs x.1.1, same class)."""
    return status[0] == enhanced[0] and status.endswith(".0.0") and not enhanced.endswith(".0.0")


def _with_text_diagnostics(found: list[Finding], msg: Message, parts: Parts) -> list[Finding]:
    """Fill an empty Diagnostic-Code from the human-readable notice about the same recipient."""
    notice = bounce_text.notice_only(parts.notice)
    hits = {h.recipient: h for h in bounce_text.scan(notice, set(), [])}
    out = []
    for f in found:
        hit = hits.get(f.recipient)
        if not f.diagnostic and hit is None and len(found) == 1 and len(hits) == 1:
            hit = next(iter(hits.values()))
        if not f.diagnostic and hit is not None:
            f = replace(f, diagnostic=hit.diagnostic)
        if hit is not None and not f.stage:
            f = replace(f, stage=hit.stage or bounce_text.stage_of(f.diagnostic))
        out.append(f)
    return out


def _from_hit(hit: bounce_text.TextHit, source: str, delayed: bool = False) -> Finding:
    action = ""
    if hit.code >= 500 or hit.status.startswith("5"):
        action = "failed"
    elif delayed:
        action = "delayed"  # a warning notice: the reply quoted (if any) was not final
    return Finding(
        recipient=hit.recipient,
        kind=Kind.DSN,
        source=source,
        status=hit.status,
        diagnostic=hit.diagnostic,
        action=action,
        stage=hit.stage,
    )


def _returned_report(parts: Parts) -> list[Finding]:
    """The RFC 3464 findings of a returned message that is itself a bounce (one level).

    The returned message is its own MIME part, or quoted in the notice after a marker
    (a bounce forwarded as text, corpus lhost-postfix-49).
    """
    original = parts.original
    if original is None:
        rest = bounce_text.returned_text(parts.notice)
        original = load(rest.encode()) if rest else None
    if original is None:
        return []
    inner = split(original)
    found = [
        f
        for ctype, text in inner.structured
        if "delivery-status" in ctype
        for f in bounce_dsn.delivery_status(text)
    ]
    return _with_text_diagnostics(found, original, inner) if found else []


def _excluded(msg: Message, parts: Parts) -> set[str]:
    """Addresses that are the bounce's own envelope or the original sender, never recipients."""
    names = (
        "From",
        "To",
        "Cc",
        "Reply-To",
        "Sender",
        "Return-Path",
        "Delivered-To",
    )
    out: set[str] = set()
    for name in names:
        out.update(addresses(header(msg, name)))
    if parts.original is not None:
        for name in ("From", "Sender", "Reply-To", "Return-Path"):
            out.update(addresses(header(parts.original, name)))
        if _is_list_mail(parts.original):
            # The list's own addresses, named in a sentence, are not the subscriber's.
            for name in ("To", *LIST_HEADERS):
                out.update(addresses(header(parts.original, name)))
    return out


def _returned_recipients(parts: Parts) -> list[str]:
    """To/Cc of the returned message: its own part, or its headers quoted after the notice.

    None for list mail: its To is the list, not the subscriber whose delivery failed.
    """
    original = parts.original
    if original is None:
        rest = bounce_text.returned_text(parts.notice)
        original = load(rest.encode()) if rest else None
    if original is None or _is_list_mail(original):
        return []
    return bounce_dsn.original_recipients(original)


# RFC 2369 / RFC 2919 list headers, and Mailman's X-BeenThere: the message went to a list.
LIST_HEADERS = ("List-Id", "List-Post", "X-BeenThere")


def _is_list_mail(original: Message) -> bool:
    return any(header(original, name) for name in LIST_HEADERS)


def _failed(msg: Message) -> list[str]:
    """Exim's and Gmail's X-Failed-Recipients header (a comma-separated list)."""
    return addresses(header(msg, "X-Failed-Recipients"))


def _provider_complaint(msg: Message, parts: Parts) -> list[Finding]:
    sender, subject = header(msg, "From").lower(), header(msg, "Subject").lower()
    for from_part, subject_part, ftype in COMPLAINT_FORMATS:
        if from_part in sender and subject_part in subject:
            who = bounce_dsn.original_recipients(parts.original) if parts.original else []
            who = who or addresses(sender)
            return [Finding(a, Kind.ARF, "complaint", feedback_type=ftype) for a in who]
    return []
