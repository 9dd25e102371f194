# What counts as proof for a late "user unknown" (policy/bounces/parse.py): each kind of
# proof makes the report hard, and the look-alikes a recipient filter writes are undetermined
# with their reason (never content-related).
# The texts are the corpus ones named in the rule comments and in docs/intake.md.
from __future__ import annotations

import pytest

from policy.bounces.parse import parse_bounce
from policy.bounces.values import BounceReport
from policy.verdict import BounceClass, Category
from tests.support import bounce_samples as samples

RCPT = "otsu@ezweb.example"


def _one(diagnostic: str, status: str = "5.0.0", recipient: str = RCPT) -> BounceReport:
    (report,) = parse_bounce(samples.rfc3464(recipient, status, diagnostic))
    assert report.verdict is not None
    return report


@pytest.mark.parametrize(
    "diagnostic",
    [
        f"smtp; 550 <{RCPT}>: User unknown",  # au/KDDI refusing a missing mailbox (rfc3464-58)
        f"smtp; 550 {RCPT}... No such user",  # sendmail's RCPT form (rhost-messagelabs-02)
        f"smtp; 550 <{RCPT}>: Recipient address rejected: User unknown in local recipient table",
        "smtp; 554 delivery error: dd This user doesn't have a yahoo.com account (x) [0]",
        "smtp; 550 The email account that you tried to reach does not exist.",
        f"smtp; 554 mail.local: unknown user: otsu <{RCPT}>... Service unavailable",
    ],
)
def test_proof_makes_a_late_user_unknown_hard(diagnostic: str) -> None:
    report = _one(diagnostic)
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.HARD, report.verdict
    assert report.verdict.category is Category.BAD_MAILBOX


@pytest.mark.parametrize(
    "diagnostic",
    [
        "smtp; 550 Unknown user otsu@ezweb.example",  # NTT docomo's filter (rhost-nttdocomo-01)
        "smtp; 550 User unknown",  # no address, no code: nothing says which command
        "smtp; 550 <someone.else@ezweb.example>: User unknown",  # names another address
        f"smtp; 550 <{RCPT}>: 550 unknown user",  # a quoted reply after the address, not its words
    ],
)
def test_no_proof_is_undetermined_with_its_reason(diagnostic: str) -> None:
    report = _one(diagnostic)
    assert report.verdict is not None
    assert report.verdict.rule == "late-user-unknown-without-proof", report.verdict
    assert report.verdict.klass is BounceClass.UNDETERMINED
    assert report.verdict.category is Category.OTHER


def test_kddi_filter_reply_is_undetermined_even_under_an_x11_code() -> None:
    # Exchange quoting au's filter answer under its own 5.1.351 (lhost-office365-04).
    report = _one(
        "smtp; 550 5.1.351 Remote server returned unknown recipient or mailbox unavailable"
        " -> 550 : User unknown",
        status="5.1.351",
    )
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.UNDETERMINED
    assert report.verdict.category is Category.OTHER
    assert report.verdict.rule == "kddi-filter-user-unknown"


def test_naming_the_recipient_is_no_proof_when_the_bounce_says_data() -> None:
    # m-FILTER writes the refused command on the line after "SMTP command" (lhost-mfilter-03).
    data = f"""From: MAILER-DAEMON@gw.dest.example
To: {samples.SENDER}
Subject: Undeliverable mail

-------server message
550 {RCPT}... No such user

-------SMTP command
DATA

-------original mail info
From: {samples.SENDER}
""".encode()
    (report,) = parse_bounce(data)
    assert report.stage == "DATA"
    assert report.verdict is not None
    assert report.verdict.rule == "late-user-unknown-without-proof"


def test_reason_above_a_bare_address_after_a_blank_line() -> None:
    # au/EZweb: the reason, a blank line, then the address alone (lhost-ezweb-03).
    data = f"""From: Postmaster@ezweb.ne.jp
To: {samples.SENDER}
Subject: Mail System Error - Returned Mail

The user(s) account is disabled.

<{RCPT}>
""".encode()
    (report,) = parse_bounce(data)
    assert report.recipient == RCPT
    assert report.verdict is not None
    assert report.verdict.category is Category.INACTIVE_MAILBOX


def test_attached_headers_are_not_part_of_the_reason() -> None:
    # X6: the returned headers follow "The attachment contains the original mail headers";
    # a "X-Cloudmark-Analysis" header there must not turn a 5.1.1 into a blocklist verdict.
    data = f"""From: MAILER-DAEMON@gw.dest.example
To: {samples.SENDER}
Subject: Undeliverable

SMTP Server <smtpd.dest.example> rejected recipient <{RCPT}> (Error following RCPT command).
It responded as follows: [550 5.1.1 User unknown]

The attachment contains the original mail headers. Please verify recipient(s) mail addresses.

X-Cloudmark-Analysis: v=1.1 cv=... spam blocklist
Received: from a.example by b.example
""".encode()
    (report,) = parse_bounce(data)
    assert report.verdict is not None
    assert report.verdict.klass is BounceClass.HARD
    assert report.verdict.category is Category.BAD_MAILBOX


def test_notice_without_reason_that_returns_a_bounce_reads_the_returned_report() -> None:
    # A gateway's notice names only the original sender and no reason; the message it
    # returns is the DSN it got, which names the recipient and the reply (lhost-x5-01).
    inner = samples.rfc3464(
        "kijitora@neko.example", "5.1.1", "smtp; 550 5.1.1 User unknown", to=samples.SENDER
    ).decode()
    data = f"""From: MAILER-DAEMON@gw.sender.example
To: {samples.SENDER}
Subject: Undeliverable
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="OUTER"

--OUTER
Content-Type: text/plain

The original message was received at Thu Oct 13 15:22:22 2015

----- The following addresses had permanent delivery errors -----

--OUTER
Content-Type: message/rfc822

{inner}
--OUTER--
""".encode()
    reports = parse_bounce(data)
    assert [r.recipient for r in reports] == ["kijitora@neko.example"]
    assert reports[0].verdict is not None
    assert reports[0].verdict.klass is BounceClass.HARD


def test_sendmail_host_line_belongs_to_the_next_recipient() -> None:
    # Sendmail V5: "550 host (smtp)... 550 Host unknown" introduces the recipient line after
    # it; it must not make the recipient above it a bad domain (lhost-v5sendmail-07).
    data = f"""From: MAILER-DAEMON@mx.sender.example
To: {samples.SENDER}
Subject: Returned mail: Host unknown

   ----- Transcript of session follows -----
554 <kijitora@dest.example>... Remote protocol error
550 other.example (smtp)... 550 Host unknown
554 <mikeneko@other.example>... 550 Host unknown (Authoritative answer from name server)

   ----- Unsent message follows -----
From: {samples.SENDER}
""".encode()
    verdicts = {r.recipient: r.verdict for r in parse_bounce(data)}
    first, second = verdicts["kijitora@dest.example"], verdicts["mikeneko@other.example"]
    assert first is not None and first.klass is not BounceClass.HARD, first
    assert second is not None and second.category is Category.BAD_DOMAIN
