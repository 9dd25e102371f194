"""RFC 3464 DSNs: parseable by `email` as multipart/report with the right per-recipient fields."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import Message

from policy.dsn import DsnContext, FailedRecipient, compose_dsn, original_headers
from policy.reply import Reply
from tests.support.mime import decoded, subparts

ARRIVED = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2026, 1, 22, 8, 0, tzinfo=UTC)
ORIGINAL = (
    b"From: Alice <alice@a.example>\r\nTo: bob@b.example\r\nSubject: quarterly report\r\n"
    b"Message-ID: <orig-1@a.example>\r\n\r\nSECRET BODY LINE\r\n"
)


def _ctx(sender: str = "alice@a.example") -> DsnContext:
    return DsnContext(
        reporting_mta="relay.example",
        dsn_from="MAILER-DAEMON@relay.example",
        queue_id="Q1",
        dsn_id="D1",
        sender=sender,
        arrival=ARRIVED,
    )


def _parse(raw: bytes) -> tuple[Message, list[Message], Message]:
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = subparts(msg)
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    return msg, subparts(status), headers


def test_hard_failure_dsn_fields() -> None:
    reply = Reply(
        550, "5.1.1", "<bob@b.example>: Recipient address rejected", "mx.b.example[192.0.2.7]"
    )
    raw = compose_dsn(_ctx(), [FailedRecipient("bob@b.example", reply, NOW)], ORIGINAL, NOW)
    assert raw is not None
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # wire form: CRLF only
    msg, blocks, headers = _parse(raw)
    assert msg["To"] == "alice@a.example"
    assert msg["From"] == "MAILER-DAEMON@relay.example"
    assert msg["Auto-Submitted"] == "auto-replied"
    per_message, rcpt = blocks
    assert per_message["Reporting-MTA"] == "dns; relay.example"
    assert per_message["Arrival-Date"] == "Thu, 01 Jan 2026 08:00:00 +0000"
    assert rcpt["Final-Recipient"] == "rfc822; bob@b.example"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.b.example"
    assert rcpt["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@b.example>: Recipient address rejected"
    )
    body = headers.get_payload()
    assert "Subject: quarterly report" in body and "Message-ID: <orig-1@a.example>" in body
    assert b"SECRET BODY LINE" not in raw  # headers only, never the body


def test_expired_soft_recipient_keeps_the_last_reply_and_its_status() -> None:
    reply = Reply(452, "4.2.2", "Mailbox full", "mx.c.example[192.0.2.8]")
    fr = FailedRecipient("carol@c.example", reply, NOW, expired=True)
    raw = compose_dsn(_ctx(), [fr], ORIGINAL, NOW)
    assert raw is not None
    msg, blocks, _ = _parse(raw)
    rcpt = blocks[1]
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.2.2"
    assert rcpt["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"
    human = decoded(subparts(msg)[0]).decode()
    assert "gave up after the retry schedule" in human and "carol@c.example" in human


def test_status_without_an_enhanced_code_or_without_any_reply() -> None:
    assert FailedRecipient("a@x", Reply(550, None, "no")).status == "5.0.0"
    assert FailedRecipient("a@x", Reply(421, None, "busy"), expired=True).status == "4.0.0"
    assert FailedRecipient("a@x", None, expired=True).status == "4.4.7"  # RFC 3463 X.4.7
    raw = compose_dsn(
        _ctx(),
        [FailedRecipient("a@x.example", None, expired=True, note="never reached")],
        ORIGINAL,
        NOW,
    )
    assert raw is not None
    rcpt = _parse(raw)[1][1]
    assert "Remote-MTA" not in rcpt
    assert rcpt["Diagnostic-Code"] == "X-Bouncer; never reached"


def test_several_recipients_one_block_each_in_order() -> None:
    failed = [
        FailedRecipient("one@b.example", Reply(550, "5.1.1", "unknown", "mx[192.0.2.1]")),
        FailedRecipient("two@b.example", Reply(554, "5.7.1", "spam", "mx[192.0.2.1]")),
    ]
    raw = compose_dsn(_ctx(), failed, ORIGINAL, NOW)
    assert raw is not None
    blocks = _parse(raw)[1]
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; one@b.example",
        "rfc822; two@b.example",
    ]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.7.1"]


def test_no_dsn_for_the_null_sender_or_nothing_failed() -> None:
    fr = FailedRecipient("bob@b.example", Reply(550, "5.1.1", "unknown"))
    assert compose_dsn(_ctx(""), [fr], ORIGINAL, NOW) is None
    assert compose_dsn(_ctx("<>"), [fr], ORIGINAL, NOW) is None
    assert compose_dsn(_ctx(), [], ORIGINAL, NOW) is None


def test_deterministic_given_its_parameters() -> None:
    fr = [FailedRecipient("bob@b.example", Reply(550, "5.1.1", "unknown"))]
    a = compose_dsn(_ctx(), fr, ORIGINAL, NOW)
    b = compose_dsn(_ctx(), fr, ORIGINAL, NOW)
    assert a is not None and b is not None
    m = email.message_from_bytes(a, policy=email_policy.default)
    assert m["Message-ID"] == f"<D1.{int(NOW.timestamp())}@relay.example>"
    # Only the MIME boundary is random; the rest is a function of the inputs.
    ba, bb = email.message_from_bytes(a).get_boundary(), email.message_from_bytes(b).get_boundary()
    assert ba is not None and bb is not None
    assert a.replace(ba.encode(), b"B") == b.replace(bb.encode(), b"B")


def test_original_headers_split_and_non_ascii() -> None:
    assert original_headers(b"A: 1\nB: 2\n\nbody") == "A: 1\nB: 2"
    assert original_headers(b"A: 1\r\n\r\nbody\r\n\r\nmore") == "A: 1"
    assert original_headers(b"Only: headers") == "Only: headers"
    raw = compose_dsn(
        _ctx(),
        [FailedRecipient("bob@b.example", Reply(550, "5.1.1", "unknown"))],
        "Subject: Grüße\r\n\r\nx".encode(),
        NOW,
    )
    assert raw is not None and raw.isascii()  # 8-bit headers are transfer-encoded
    headers = _parse(raw)[2]
    assert "Grüße" in decoded(headers).decode("utf-8")
