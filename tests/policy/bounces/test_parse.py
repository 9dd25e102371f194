# Golden rows for the bounce parser: one crafted email per format, each with the recipient,
# kind, source, status and class it must yield (flufl.bounce style: a format = a row).
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.bounces.parse import parse_bounce, returned_sender
from policy.bounces.values import Kind
from policy.verdict import BounceClass, Category
from tests.support import bounce_samples as samples

H, S, B, D = BounceClass.HARD, BounceClass.SOFT, BounceClass.BLOCK, BounceClass.DELIVERED

ROWS = [
    # id, email, recipient, kind, source, status, class
    ("rfc3464-hard", samples.rfc3464(), "gone@dest.example", Kind.DSN, "rfc3464", "5.1.1", H),
    (
        "rfc3464-vague-status",
        samples.rfc3464(status="5.0.0", diagnostic="smtp; 550 5.1.1 No such user"),
        "gone@dest.example",
        Kind.DSN,
        "rfc3464",
        "5.1.1",
        H,
    ),
    (
        "rfc3464-delayed",
        samples.rfc3464(
            action="delayed", status="4.2.2", diagnostic="smtp; 452 4.2.2 Mailbox full"
        ),
        "gone@dest.example",
        Kind.DSN,
        "rfc3464",
        "4.2.2",
        S,
    ),
    (
        "rfc3464-delivered",
        samples.rfc3464(action="delivered", status="2.0.0", diagnostic="smtp; 250 2.0.0 Ok"),
        "gone@dest.example",
        Kind.DSN,
        "rfc3464",
        "2.0.0",
        D,
    ),
    ("qmail", samples.QMAIL, "nobody@dest.example", Kind.DSN, "qmail", "5.1.1", H),
    ("exim", samples.EXIM, "full@dest.example", Kind.DSN, "exim", "5.2.2", None),
    (
        "postfix-text",
        samples.POSTFIX_TEXT,
        "spam-trap@dest.example",
        Kind.DSN,
        "postfix",
        "5.7.1",
        B,
    ),
    ("exchange-2003", samples.EXCHANGE_2003, "left@dest.example", Kind.DSN, "exchange", "", None),
    ("gmail", samples.GMAIL, "typo@dest.example", Kind.DSN, "gmail", "5.1.1", H),
    ("amazon-ses", samples.SES_JSON, "dead@dest.example", Kind.DSN, "amazon-ses", "5.1.1", H),
]


@pytest.mark.parametrize(
    "data,recipient,kind,source,status,klass", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_format(
    data: bytes,
    recipient: str,
    kind: Kind,
    source: str,
    status: str,
    klass: BounceClass | None,
) -> None:
    reports = parse_bounce(data)
    assert [r.recipient for r in reports] == [recipient]
    (report,) = reports
    assert report.kind is kind
    assert report.source == source
    assert report.status == status
    assert report.verdict is not None
    if klass is not None:
        assert report.verdict.klass is klass, report


def test_exim_quota_is_soft_or_hard_never_block() -> None:
    # 5.2.2 is quota-issues: soft, whatever the first digit says of permanence.
    (report,) = parse_bounce(samples.EXIM)
    assert report.verdict is not None and report.verdict.category.value == "quota-issues"


@pytest.mark.parametrize("variant", ["crlf", "cr"])
@pytest.mark.parametrize("name", ["QMAIL", "EXIM", "GMAIL"])
def test_line_endings_do_not_matter(name: str, variant: str) -> None:
    lf: bytes = getattr(samples, name)
    other = lf.replace(b"\n", b"\r\n" if variant == "crlf" else b"\r")
    assert parse_bounce(other) == parse_bounce(lf)
    assert parse_bounce(other)[0].recipient


def test_rfc3464_crlf_multipart() -> None:
    data = samples.rfc3464().replace(b"\n", b"\r\n")
    (report,) = parse_bounce(data)
    assert (report.recipient, report.status) == ("gone@dest.example", "5.1.1")


def test_arf_is_a_complaint_not_a_bounce() -> None:
    (report,) = parse_bounce(samples.arf(feedback_type="opt-out"))
    assert report.kind is Kind.ARF
    assert report.recipient == "angry@dest.example"
    assert report.feedback_type == "opt-out"
    assert report.verdict is None


def test_arf_several_original_rcpt_to() -> None:
    data = samples.arf().replace(
        b"Original-Rcpt-To: <angry@dest.example>",
        b"Original-Rcpt-To: <a@dest.example>\nOriginal-Rcpt-To: <b@dest.example>",
    )
    assert [r.recipient for r in parse_bounce(data)] == ["a@dest.example", "b@dest.example"]


def test_arf_without_rcpt_field_uses_returned_message() -> None:
    data = samples.arf().replace(b"Original-Rcpt-To: <angry@dest.example>\n", b"")
    (report,) = parse_bounce(data)
    assert report.recipient == "angry@dest.example"


def test_autoreply_is_never_a_bounce() -> None:
    (report,) = parse_bounce(samples.AUTOREPLY)
    assert report.kind is Kind.AUTOREPLY
    assert report.recipient == "holiday@dest.example"
    assert report.verdict is None


def test_bounce_with_autoreply_header_is_still_a_bounce() -> None:
    # Exim writes Auto-Submitted: auto-replied on its bounces (see samples.EXIM).
    (report,) = parse_bounce(samples.EXIM)
    assert report.kind is Kind.DSN


def test_ordinary_mail_yields_nothing() -> None:
    assert parse_bounce(samples.PLAIN_MAIL) == []


def test_junk_never_raises() -> None:
    for junk in (b"", b"\x00\xff" * 50, b"Content-Type: multipart/report\n\n--x", b"From:\n\n"):
        assert isinstance(parse_bounce(junk), list)


def test_help_desk_address_is_not_a_recipient() -> None:
    (report,) = parse_bounce(samples.POSTFIX_TEXT)
    assert report.recipient != "postmaster@mail.dest.example"


def test_sender_of_returned_message() -> None:
    assert returned_sender(samples.rfc3464()) == "app@sender.example"
    assert returned_sender(samples.rfc3464(), ignore_domain="sender.example") == ""
    assert returned_sender(samples.AUTOREPLY) == ""


def test_late_user_unknown_without_proof_never_suppresses() -> None:
    # "User unknown" after DATA with a vague status: a recipient filter (Sisimai "filtered").
    data = samples.rfc3464(
        status="5.0.0", diagnostic="smtp; 550 5.0.0 <gone@dest.example>: User unknown"
    )
    data = data.replace(
        b"<gone@dest.example>\n", b"<gone@dest.example>: (in reply to end of DATA command)\n"
    )
    (report,) = parse_bounce(data)
    assert report.verdict is not None
    # Undetermined with its reason, never content-related: nothing says the
    # content was refused, and the address is not suppressed.
    assert report.verdict.klass is BounceClass.UNDETERMINED
    assert report.verdict.category is Category.OTHER
    assert report.verdict.rule == "late-user-unknown-without-proof"


def test_user_unknown_refused_at_rcpt_is_hard() -> None:
    data = samples.rfc3464(
        status="5.0.0", diagnostic="smtp; 550 5.0.0 <gone@dest.example>: User unknown"
    )
    data = data.replace(
        b"<gone@dest.example>\n", b"<gone@dest.example>: (in reply to RCPT TO command)\n"
    )
    (report,) = parse_bounce(data)
    assert report.stage == "RCPT"
    assert report.verdict is not None and report.verdict.klass is BounceClass.HARD


def test_dsn_fields_before_final_recipient() -> None:
    # Facebook writes Diagnostic-Code and Status before Final-Recipient in one block.
    data = (
        samples.rfc3464()
        .replace(
            b"Final-Recipient: RFC822; gone@dest.example\nAction: failed\nStatus: 5.1.1\n",
            b"Status: 5.1.1\nAction: failed\n",
        )
        .replace(
            b"Diagnostic-Code: smtp;",
            b"Final-Recipient: rfc822; gone@dest.example\nDiagnostic-Code: smtp;",
        )
    )
    (report,) = parse_bounce(data)
    assert (report.recipient, report.status, report.action) == (
        "gone@dest.example",
        "5.1.1",
        "failed",
    )


def test_recipient_from_returned_message_when_notice_names_nobody() -> None:
    data = b"""From: post_master@mms.dest.example
To: app@sender.example
Subject: Undeliverable

Message could not be delivered to mobile.
Error: No valid recipients for this MM

Original Message:
From: App <app@sender.example>
To: 5550100@mms.dest.example
Subject: hi
"""
    (report,) = parse_bounce(data)
    assert report.recipient == "5550100@mms.dest.example"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    reports = parse_bounce(data)
    assert all(isinstance(r.recipient, str) for r in reports)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["QMAIL", "EXIM", "GMAIL", "POSTFIX_TEXT"]), st.data())
def test_truncated_or_spliced_samples_never_raise(name: str, data: st.DataObject) -> None:
    raw: bytes = getattr(samples, name)
    cut = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(max_size=50))
    assert isinstance(parse_bounce(raw[:cut] + junk + raw[cut:]), list)


def test_huge_notice_is_bounded() -> None:
    many = "".join(f"<user{i}@dest.example>: 550 5.1.1 unknown\n" for i in range(5000))
    data = b"From: MAILER-DAEMON@mx.dest.example\nSubject: failure notice\n\n" + many.encode()
    reports = parse_bounce(data)
    assert 0 < len(reports) <= 100


def _ses(payload: str) -> bytes:
    head = b"From: SES <no-reply@sns.amazonaws.com>\nTo: app@sender.example\nSubject: AWS\n\n"
    return head + payload.encode()


def test_ses_complaint_wrapped_in_sns_envelope() -> None:
    inner = (
        '{"notificationType":"Complaint","complaint":{"complaintFeedbackType":"abuse",'
        '"complainedRecipients":[{"emailAddress":"Angry@Dest.Example"}]}}'
    )
    envelope = json.dumps({"Type": "Notification", "Message": inner})
    (report,) = parse_bounce(_ses(envelope))
    assert (report.kind, report.recipient, report.feedback_type) == (
        Kind.ARF,
        "angry@dest.example",
        "abuse",
    )


def test_ses_delivery_is_delivered() -> None:
    payload = (
        '{"notificationType":"Delivery","delivery":{"recipients":["ok@dest.example"],'
        '"smtpResponse":"250 2.0.0 OK"}}'
    )
    (report,) = parse_bounce(_ses(payload))
    assert report.verdict is not None and report.verdict.klass is D


def test_delayed_with_permanent_looking_status_is_soft() -> None:
    data = samples.rfc3464(action="delayed", status="5.0.0", diagnostic="smtp; 550 busy")
    (report,) = parse_bounce(data)
    assert report.status.startswith("4.")
    assert report.verdict is not None and report.verdict.klass is S


def test_dsn_without_diagnostic_takes_the_notice_text() -> None:
    data = (
        samples.rfc3464()
        .replace(b"Diagnostic-Code: smtp; 550 5.1.1 <gone@dest.example>... User unknown\n", b"")
        .replace(
            b"<gone@dest.example>\n\n--BOUND",
            b"<gone@dest.example>: mailbox unavailable\n\n--BOUND",
        )
    )
    (report,) = parse_bounce(data)
    assert "mailbox unavailable" in report.reply.text


def test_two_recipients_in_one_block_without_blank_line() -> None:
    data = samples.rfc3464().replace(
        b"Final-Recipient: RFC822; gone@dest.example\n",
        b"Final-Recipient: RFC822; first@dest.example\nAction: failed\nStatus: 5.1.1\n"
        b"Final-Recipient: RFC822; gone@dest.example\n",
    )
    assert [r.recipient for r in parse_bounce(data)] == ["first@dest.example", "gone@dest.example"]


def test_html_only_notice() -> None:
    data = b"""From: MAILER-DAEMON@mx.dest.example
To: app@sender.example
Subject: Undeliverable
Content-Type: text/html

<html><body><p>Delivery failed:</p><p>gone@dest.example<br>550 5.1.1 User unknown</p></body></html>
"""
    (report,) = parse_bounce(data)
    assert (report.recipient, report.status) == ("gone@dest.example", "5.1.1")


def test_outlook_complaint_without_arf_part() -> None:
    data = b"""From: staff@hotmail.com
To: fbl@sender.example
Subject: complaint about message from 192.0.2.1
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: message/rfc822

X-HmXmrOriginalRecipient: angry@hotmail.example
From: App <app@sender.example>
To: angry@hotmail.example
Subject: hi

hi
--B--
"""
    (report,) = parse_bounce(data)
    assert (report.kind, report.recipient) == (Kind.ARF, "angry@hotmail.example")


def test_bounce_with_no_recipient_anywhere_is_unknown() -> None:
    data = b"From: MAILER-DAEMON@mx.dest.example\nSubject: failure notice\n\nSomething failed.\n"
    (report,) = parse_bounce(data)
    assert (report.kind, report.recipient) == (Kind.UNKNOWN, "")
