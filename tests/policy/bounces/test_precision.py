# A recipient is reported only when the bounce names it as failed, and old
# non-standard notices are read for what they say (delay, transcript reply, local user).
# Each case is the shape of a file of the second corpus (tests/data/bounces2) or a Sisimai
# one, written small.
from __future__ import annotations

import pytest

from policy.bounces.parse import parse_bounce
from policy.bounces.values import Kind
from policy.verdict import BounceClass
from tests.support import bounce_samples as samples


def _recipients(data: bytes) -> list[str]:
    return [r.recipient for r in parse_bounce(data)]


RETURNED_TO_LIST = b"""From: inetgw1@gw.dest.example
To: list-admin@lists.sender.example
Subject: Mail could not be delivered
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

The following mail could not be delivered.
Reason:  Exceeded Maximum Delivery Attempts.

--b
Content-Type: message/rfc822

From: someone@elsewhere.example
To: list@lists.sender.example
%s
Subject: hello

body
--b--
"""


def test_list_mail_returned_to_the_list_names_nobody() -> None:
    # flufl.bounce dumbass_01 / simple_43: the returned message's To is the list itself.
    data = RETURNED_TO_LIST % b"List-Id: <list.lists.sender.example>"
    (report,) = parse_bounce(data)
    assert report.recipient == ""
    assert report.kind is Kind.UNKNOWN


def test_returned_message_to_one_person_still_names_them() -> None:
    # Verizon's MMS notice names nobody; the returned message was for one address.
    data = RETURNED_TO_LIST % b"X-Mailer: test"
    assert _recipients(data) == ["list@lists.sender.example"]


def _exchange(line: bytes) -> bytes:
    return (
        b"From: System Administrator <postmaster@dest.example>\n"
        b"To: " + samples.SENDER.encode() + b"\nSubject: Undeliverable: hello\n\n"
        b"Your message did not reach some or all of the intended recipients.\n\n"
        b"The following recipient(s) could not be reached:\n\n" + line + b"\n"
    )


def test_address_type_prefix_is_not_part_of_the_address() -> None:
    data = _exchange(b"     SMTP=gone@dest.example\n        550 5.1.1 User unknown")
    assert _recipients(data) == ["gone@dest.example"]


def test_single_quotes_around_an_address_are_not_part_of_it() -> None:
    data = _exchange(b"The message addressed to 'gone@dest.example' failed: 550 5.1.1 unknown")
    assert _recipients(data) == ["gone@dest.example"]


TRANSCRIPT = b"""From: MDaemon@mx.dest.example
To: list-admin@sender.example
Subject: Permanent Delivery Failure

The attached message had PERMANENT fatal delivery errors!

The following addresses did NOT receive a copy of your message:

full@dest.example

--- Session Transcript ---
 220 dest.example ESMTP MDaemon ready
 EHLO mx.sender.example
 250 dest.example Hello
 MAIL From:<list-admin@sender.example> SIZE=1861
 250 <list-admin@sender.example>, Sender ok
 RCPT To:<full@dest.example>
 552 Message for <full@dest.example> would exceed mailbox quota
 QUIT
--- End Transcript ---
"""


def test_session_transcript_positive_replies_name_nobody_and_are_not_the_reply() -> None:
    # flufl.bounce simple_01: the sender quoted in "250 <sender>, Sender ok" is no recipient,
    # and the greeting's 220 is not the reply the recipient got.
    (report,) = parse_bounce(TRANSCRIPT)
    assert report.recipient == "full@dest.example"
    assert report.reply.code == 552
    assert report.verdict is not None
    assert report.verdict.klass is not BounceClass.DELIVERED


DELAY = b"""From: Mail Delivery System <Mailer-Daemon@mx.dest.example>
To: app@sender.example
Subject: Mail Delivery Warning

This is an advisory-only email. Please do not reply to it.

Delivery of email to this address "slow@dest.example" has been postponed due to a
full mailbox. We will continue to try to deliver your message over the next few days.
"""


def test_delay_warning_is_delayed_and_soft() -> None:
    (report,) = parse_bounce(DELAY)
    assert report.recipient == "slow@dest.example"
    assert report.action == "delayed"
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.SOFT


def test_failure_notice_with_a_5xx_is_not_read_as_a_delay() -> None:
    data = DELAY.replace(b"has been postponed", b"failed: 550 5.1.1 no such user; we will not")
    (report,) = parse_bounce(data)
    assert report.action == "failed"


REPORT_WITHOUT_RECIPIENT = b"""To: list-bounces@sender.example
Subject: Utilisateur inconnu
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

A message could not be delivered to:
gone@dest.example

--b
Content-Type: message/delivery-status

Reporting-MTA: mimesweeper.dest.example

--b--
"""


def test_delivery_status_report_is_a_bounce_whatever_its_subject() -> None:
    # flufl.bounce simple_13: the report part names nobody, the text does.
    assert _recipients(REPORT_WITHOUT_RECIPIENT) == ["gone@dest.example"]


def test_nothing_after_a_returned_message_marker_is_a_recipient() -> None:
    # flufl.bounce bounce_03 (Demon Internet): "---- START OF RETURNED MESSAGE ----".
    data = b"""From: Mail Delivery System <Mailer-Daemon@mx.dest.example>
To: list-admin@sender.example
Subject: Mail delivery failure

The following message, addressed to 'gone@dest.example',
failed because it has not been collected after 30 days

---- START OF RETURNED MESSAGE ----
From: list-request@sender.example
To: list@sender.example
Subject: digest
"""
    assert _recipients(data) == ["gone@dest.example"]


def test_original_message_details_are_not_recipients() -> None:
    # flufl.bounce simple_45 (Vade Secure): "* To: recip@..." under "Original message details".
    data = _exchange(
        b"\t* [full@dest.example]: 550 full@dest.example...User account is overquota\n\n"
        b"Original message details:\n\n\t* From: user@sender.example\n\t* To: recip@other.example"
    )
    assert _recipients(data) == ["full@dest.example"]


def test_sendmail_alias_is_named_as_failed_too() -> None:
    # flufl.bounce sendmail_01: "final (expanded from: alias)"; the sender wrote the alias.
    data = b"""From: Mail Delivery Subsystem <MAILER-DAEMON@mx.dest.example>
To: app@sender.example
Subject: Returned mail: see transcript for details

The original message was received at Mon, 1 Jan 2001 from localhost
   ----- The following addresses had permanent fatal errors -----
final@inner.dest.example
    (expanded from: alias@dest.example)

   ----- Transcript of session follows -----
554 Too many hops 26 (25 max): to alias@dest.example
"""
    assert sorted(_recipients(data)) == ["alias@dest.example", "final@inner.dest.example"]


def test_local_user_unknown_is_proof_for_a_late_bounce() -> None:
    # flufl.bounce simple_23: the mailbox host speaking of its own local user.
    data = b"""From: Mail Delivery Subsystem <MAILER-DAEMON@mx.dest.example>
To: app@sender.example
Subject: Delivery failure

Your message has encountered delivery problems to local user gone.
(Originally addressed to gone@dest.example)

  User not known
"""
    (report,) = parse_bounce(data)
    assert report.recipient == "gone@dest.example"
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.HARD, report.verdict


def test_list_address_named_in_a_sentence_is_not_a_recipient() -> None:
    data = (RETURNED_TO_LIST % b"List-Id: <list.lists.sender.example>").replace(
        b"The following mail could not be delivered.",
        b"Your message to list@lists.sender.example could not be delivered to\n"
        b"the recipient gone@dest.example: 550 5.1.1 user unknown.",
    )
    assert _recipients(data) == ["gone@dest.example"]


@pytest.mark.parametrize(
    "line",
    [
        "RCPT TO:<gone@dest.example>: 550 5.1.1 unknown",
        "<gone@dest.example>: 550 5.1.1 unknown",
        "gone@dest.example... 550 5.1.1 unknown",
        "SMTP;gone@dest.example 550 5.1.1 unknown",
        "smtp:gone@dest.example 550 5.1.1 unknown",
        "RFC822=gone@dest.example 550 5.1.1 unknown",
        "rfc822;<gone@dest.example> 550 5.1.1 unknown",
    ],
)
def test_vendor_prefixes_are_not_read_as_part_of_the_address(line: str) -> None:
    assert _recipients(_exchange(line.encode())) == ["gone@dest.example"]


def test_recipient_only_in_x_failed_recipients_gets_the_last_paragraph() -> None:
    # Sisimai lhost-exim-07: a local delivery the notice names only as "save to xxxx".
    data = b"""From: Mail Delivery System <MAILER-DAEMON@dest.example>
To: app@sender.example
X-Failed-Recipients: full@dest.example
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  save to xxxx
    generated by xxxx
    mailbox is full: retry timeout exceeded
"""
    (report,) = parse_bounce(data)
    assert report.recipient == "full@dest.example"
    assert "mailbox is full" in report.reply.text
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.SOFT


def test_help_desk_in_japanese_is_no_recipient_and_a_quoted_bounce_is_read() -> None:
    # Sisimai lhost-postfix-49: OCN forwards a Postfix bounce as text, after its own
    # notice naming its help desk ("<support@...> he go-renraku kudasai").
    data = """From: MAILER-DAEMON@relay.dest.example
To: app@sender.example
Subject: Undelivered Mail Returned to Sender

I'm sorry to have to inform you that the message returned
below could not be delivered to one or more destinations.

\u4e0a\u8a18\u3067\u89e3\u6c7a\u3067\u304d\u306a\u3044\u5834\u5408\u306f\u3001<support@help.dest.example>
\u3078\u3054\u9023\u7d61\u304f\u3060\u3055\u3044\u3002

---------------------------------
Return-Path: <>
From: MAILER-DAEMON@relay.dest.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

<gone@dest.example>: host mx.dest.example said: 550 5.1.1 user unknown

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.dest.example

Final-Recipient: rfc822; gone@dest.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--b--
""".encode()
    (report,) = parse_bounce(data)
    assert report.recipient == "gone@dest.example"
    assert report.status == "5.1.1"


def test_reply_code_followed_by_a_comma() -> None:
    # Sisimai lhost-zoho-05: "ERROR_CODE :421, ERROR_CODE :, Host not reachable."
    data = _exchange(b"gone@dest.example Error, ERROR_CODE :421, ERROR_CODE :, Host not reachable.")
    (report,) = parse_bounce(data)
    assert report.reply.code == 421
