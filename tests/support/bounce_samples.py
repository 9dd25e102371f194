# Small crafted bounce emails, one per format the parser knows, written from the shapes seen in
# the Sisimai corpus (addresses and hosts replaced by example.* names, RFC 2606).
"""Builders for crafted bounce, complaint and auto-reply emails used by the intake tests."""

from __future__ import annotations

SENDER = "app@sender.example"


def rfc3464(
    recipient: str = "gone@dest.example",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <gone@dest.example>... User unknown",
    action: str = "failed",
    to: str = SENDER,
) -> bytes:
    return f"""Return-Path: <>
From: Mail Delivery Subsystem <MAILER-DAEMON@mx.dest.example>
To: <{to}>
Subject: Returned mail: see transcript for details
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUND"

--BOUND
Content-Type: text/plain

The original message was received at Thu, 29 Apr 2021 23:34:45 +0900
   ----- The following addresses had permanent fatal errors -----
<{recipient}>

--BOUND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.dest.example
Arrival-Date: Thu, 29 Apr 2021 23:34:45 +0900

Final-Recipient: RFC822; {recipient}
Action: {action}
Status: {status}
Remote-MTA: DNS; mx.dest.example
Diagnostic-Code: {diagnostic}

--BOUND
Content-Type: text/rfc822-headers

Return-Path: <{SENDER}>
From: App <{SENDER}>
To: {recipient}
Subject: hello

--BOUND--
""".encode()


def arf(recipient: str = "angry@dest.example", feedback_type: str = "abuse") -> bytes:
    return f"""From: <feedback@fbl.dest.example>
To: <fbl@bounces.sender.example>
Subject: FW: hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B2"

--B2
Content-Type: text/plain

This is an email abuse report.

--B2
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{SENDER}>
Original-Rcpt-To: <{recipient}>
Reporting-MTA: dns; fbl.dest.example

--B2
Content-Type: message/rfc822

From: App <{SENDER}>
To: {recipient}
Subject: hello

hi
--B2--
""".encode()


QMAIL = b"""Return-Path: <>
From: MAILER-DAEMON@mx4.dest.example
To: app@sender.example
Subject: failure notice

Hi. This is the qmail-send program at mx4.dest.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<nobody@dest.example>:
192.0.2.32 does not like recipient.
Remote host said: 550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown
Giving up on 192.0.2.32.

--- Below this line is a copy of the message.

Return-Path: <app@sender.example>
From: App <app@sender.example>
To: nobody@dest.example
Subject: hello

hi
"""

EXIM = b"""From: Mail Delivery System <Mailer-Daemon@e1.dest.example>
To: app@sender.example
X-Failed-Recipients: full@dest.example
Auto-Submitted: auto-replied
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  full@dest.example
    SMTP error from remote mail server after RCPT TO:<full@dest.example>:
    host mx.dest.example [192.0.2.20]: 552 5.2.2 Mailbox full, quota exceeded

------ This is a copy of the message, including all the headers. ------

From: app@sender.example
To: full@dest.example
Subject: hello
"""

POSTFIX_TEXT = b"""From: MAILER-DAEMON@mail.dest.example (Mail Delivery System)
To: app@sender.example
Subject: Undelivered Mail Returned to Sender

This is the mail system at host mail.dest.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

For further assistance, please send mail to <postmaster@mail.dest.example>

<spam-trap@dest.example>: host mx.dest.example[192.0.2.22] said: 554 5.7.1
    Service unavailable; client host [198.51.100.7] blocked using
    zen.spamhaus.org (in reply to RCPT TO command)
"""

EXCHANGE_2003 = b"""From: System Administrator <postmaster@dest.example>
To: app@sender.example
Subject: Undeliverable: hello

Your message

  To:      app@sender.example
  Subject: hello
  Sent:    Thu, 29 Apr 2010 00:00:00 -0000

did not reach the following recipient(s):

left@dest.example on Thu, 29 Apr 2010 00:00:00 -0000
    The recipient name is not recognized
    The MTS-ID of the original message is: c=us;a= ;p=example
    MSEXCH:IMS:EXAMPLE:DEST:MX 0 (000C05A6) Unknown Recipient
"""

GMAIL = b"""From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: app@sender.example
X-Failed-Recipients: typo@dest.example
Subject: Delivery Status Notification (Failure)

Delivery to the following recipient failed permanently:

     typo@dest.example

Technical details of permanent failure:
Google tried to deliver your message, but it was rejected by the server for the recipient
domain dest.example by mx.dest.example. [192.0.2.153].

The error that the other server returned was:
550 5.1.1 <typo@dest.example>... User Unknown

----- Original message -----

From: app@sender.example
To: typo@dest.example
"""

AUTOREPLY = b"""From: Kiji Tora <holiday@dest.example>
To: app@sender.example
Subject: Out of Office: hello
Auto-Submitted: auto-replied
X-Autoreply: yes

I am away until May 5th and will answer your mail when I am back.
"""

PLAIN_MAIL = b"""From: friend@dest.example
To: app@sender.example
Subject: lunch?

Shall we have lunch tomorrow? Write to lunch@dest.example.
"""

_SES = (
    '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":'
    '[{"emailAddress":"dead@dest.example","action":"failed","status":"5.1.1",'
    '"diagnosticCode":"smtp; 550 5.1.1 user unknown"}],'
    '"reportingMTA":"dns; a27-23.smtp-out.example"},"mail":{"source":"app@sender.example"}}'
)
SES_JSON = (
    b"""From: SES <no-reply@sns.amazonaws.com>
To: app@sender.example
Subject: AWS Notification Message
Content-Type: text/plain; charset=UTF-8

"""
    + _SES.encode()
    + b"\n"
)
