# This module turns event records into log lines; it performs no I/O and reads no clock.
"""Postfix-compatible and JSON formatting of `relay.observe.events` records
(docs/behaviour.md#what-operators-see).

The Postfix format is chosen so that tools written for Postfix's mail log
(pflogsumm, grep habits, log shippers) read bouncer's log unchanged; run
pflogsumm with ``--syslog-name=bouncer``. Program names follow Postfix's
split of roles, because pflogsumm decides what a line means from it:

- ``bouncer/smtpd``: the client side: ``connect from``, ``client=``,
  ``disconnect from`` and the ``reject: RCPT from`` line of a suppressed
  recipient (pflogsumm counts that form as *rejected*);
- ``bouncer/qmgr``: the message envelope (``from=<>, size=, nrcpt=``) and
  expired recipients (Postfix's qmgr logs expiry too);
- ``bouncer/smtp``: every remote delivery outcome (``to=<>, relay=, ...``).

bouncer's own status words map onto Postfix's: ``queued`` (bouncer took the
message for retry) is Postfix's ``deferred`` and ``deferred`` (a soft failure
handed back to the client) stays ``deferred``; the parenthesised text says
which. The JSON format keeps bouncer's exact status, class and category.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from policy.decide import Disposition
from policy.reply import Reply
from relay.observe.events import (
    AdminEvent,
    ConnectEvent,
    Event,
    MessageEvent,
    ProtocolEvent,
    RecipientEvent,
)

# Month names for the traditional syslog timestamp (RFC 3164 §4.1.2); fixed, never the locale's.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Postfix's "in reply to ... command" wording for the stage a reply answered.
_STAGE_COMMAND = {
    "MAIL": "MAIL FROM",
    "RCPT": "RCPT TO",
    "DATA": "end of DATA",
    "EHLO": "EHLO",
    "HELO": "HELO",
}

# A log line is one line: control characters from remote text or addresses never split it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# pflogsumm finds the queue id with \w+ in reject lines; other ids log as Postfix's NOQUEUE.
_QUEUE_ID = re.compile(r"^\w+$")

PROGRAM = "bouncer"

# Stages of outcomes that arrive after the fact, read by the intake (relay/intake/listener.py):
# an asynchronous DSN or an ARF complaint. They log as bouncer/intake.
REPORT_STAGES = frozenset({"DSN", "ARF"})


def clean(text: str) -> str:
    """Replace control characters (CR, LF, TAB, ...) by one space."""
    return _CONTROL.sub(" ", text)


_last_stamp: tuple[datetime, str] | None = None  # several lines per message share a second


def syslog_time(when: datetime) -> str:
    """ "Nov 22 10:15:01", day space-padded as syslog writes it; aware times go to local time."""
    global _last_stamp
    second = when.replace(microsecond=0)
    cached = _last_stamp
    if cached is not None and cached[0] == second and cached[0].tzinfo is second.tzinfo:
        return cached[1]
    local = second.astimezone() if second.tzinfo is not None else second
    text = f"{_MONTHS[local.month - 1]} {local.day:2d} {local:%H:%M:%S}"
    _last_stamp = (second, text)
    return text


def postfix_delay(seconds: float) -> str:
    """Postfix's delay precision: "0.41", "1.2", "12", "0"; trailing zeros dropped."""
    seconds = max(0.0, seconds)
    if seconds >= 100:
        text = f"{seconds:.0f}"
    elif seconds >= 10:
        text = f"{seconds:.1f}"
    else:
        text = f"{seconds:.2f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def dsn_of(reply: Reply) -> str:
    """The RFC 3463 code to log: the reply's own, else the class digit with ".0.0"."""
    if reply.enhanced:
        return reply.enhanced
    first = str(reply.code)[:1] if reply.code else "4"
    return f"{first if first in '245' else '4'}.0.0"


def program_of(event: Event) -> str:
    """The Postfix role that would have logged this event (see the module docstring)."""
    if isinstance(event, ConnectEvent | ProtocolEvent):
        return "smtpd"
    if isinstance(event, MessageEvent):
        return "qmgr"
    if isinstance(event, AdminEvent):
        return event.program
    if event.stage.upper() in REPORT_STAGES:
        return "intake"
    if event.status is Disposition.SUPPRESSED:
        return "smtpd"
    if event.status is Disposition.EXPIRED:
        return "qmgr"
    return "smtp"


def _said(event: RecipientEvent) -> str:
    """The reason text inside "status=... (...)", Postfix's wording when a remote spoke."""
    reply = event.reply
    line = clean(reply.line())
    if reply.host and event.stage != "connect":
        command = _STAGE_COMMAND.get(event.stage.upper(), event.stage)
        return f"host {clean(reply.host)} said: {line} (in reply to {command} command)"
    if reply.host:
        return f"connect to {clean(reply.host)}: {line}"
    return line


def _recipient_text(event: RecipientEvent) -> str:
    rcpt = clean(event.recipient)
    status = event.status
    if status is Disposition.SUPPRESSED and event.stage.upper() not in REPORT_STAGES:
        # Postfix smtpd's RCPT reject form, which pflogsumm counts as "rejected".
        qid = event.queue_id if _QUEUE_ID.match(event.queue_id) else "NOQUEUE"
        who = clean(event.client or "unknown[unknown]")
        return (
            f"{qid}: reject: RCPT from {who}: {clean(event.reply.line())}; "
            f"from=<{clean(event.sender)}> to=<{rcpt}> proto=ESMTP status=suppressed"
        )
    delays = "/".join(postfix_delay(d) for d in event.delays)
    head = (
        f"{event.queue_id}: to=<{rcpt}>, relay={clean(event.relay) or 'none'}, "
        f"delay={postfix_delay(event.delay)}, delays={delays}, dsn={dsn_of(event.reply)}, "
    )
    said = _said(event)
    word = POSTFIX_STATUS.get(status, POSTFIX_STATUS[Disposition.EXPIRED])
    return f"{head}status={word.format(said=said)}"


# The log edge: bouncer's dispositions (policy/decide.py) in Postfix's status words, which
# pflogsumm and log tooling read; bouncer's own (suppressed) where Postfix has none.
POSTFIX_STATUS: dict[Disposition, str] = {
    Disposition.DELIVERED: "sent ({said})",
    Disposition.BOUNCED: "bounced ({said})",
    Disposition.QUEUED: "deferred (queued for retry by bouncer: {said})",
    Disposition.DEFERRED: "deferred (returned to the client: {said})",
    Disposition.SUPPRESSED: "suppressed (complaint: {said})",  # pflogsumm skips this word
    Disposition.EXPIRED: "expired, returned to sender ({said})",
}


def postfix_lines(event: Event, host: str, pid: int) -> list[str]:
    """The Postfix-format line(s) for one event, each complete with timestamp and host.

    A MessageEvent gives up to three, as Postfix's smtpd, cleanup and qmgr each
    log one: ``client=`` (pflogsumm counts it as *received*), ``message-id=``
    and ``from=<>, size=, nrcpt=``.
    """
    stamp = syslog_time(event.when)
    return [
        f"{stamp} {host} {PROGRAM}/{prog}[{pid}]: {text}" for prog, text in postfix_messages(event)
    ]


def postfix_messages(event: Event) -> list[tuple[str, str]]:
    """(program, message) pairs without the syslog prefix, for sinks such as journald."""
    if isinstance(event, ConnectEvent):
        verb = "disconnect from" if event.disconnect else "connect from"
        return [("smtpd", f"{verb} {clean(event.client)}")]
    if isinstance(event, ProtocolEvent):
        return [("smtpd", f"warning: {clean(event.client)}: {clean(event.text)}")]
    if isinstance(event, AdminEvent):
        return [(event.program, admin_text(event))]
    if isinstance(event, MessageEvent):
        out: list[tuple[str, str]] = []
        if event.client:
            sasl = f", sasl_username={clean(event.sasl_username)}" if event.sasl_username else ""
            out.append(("smtpd", f"{event.queue_id}: client={clean(event.client)}{sasl}"))
        if event.message_id:
            out.append(("cleanup", f"{event.queue_id}: message-id={clean(event.message_id)}"))
        out.append(
            (
                "qmgr",
                f"{event.queue_id}: from=<{clean(event.sender)}>, size={event.size}, "
                f"nrcpt={event.nrcpt} (queue active)",
            )
        )
        return out
    return [(program_of(event), _recipient_text(event))]


def admin_text(event: AdminEvent) -> str:
    """ "3F2A1B9C0D4E: removed, to=<a@b.example>, by=root (reason: ticket 123)".

    Postfix's postsuper logs "QUEUEID: removed" and nothing more; bouncer adds who
    did it and why, the reason last in parentheses as Postfix puts status reasons.
    """
    facts = "".join(f", {clean(k)}={clean(v)}" for k, v in event.details)
    why = f" (reason: {clean(event.why)})" if event.why.strip() else ""
    return f"{clean(event.subject)}: {clean(event.action)}{facts}, by={clean(event.who)}{why}"


def json_record(event: Event, host: str, pid: int) -> dict[str, Any]:
    """The same facts as the Postfix line, as a JSON-ready dict, plus class and category."""
    base: dict[str, Any] = {
        "time": event.when.isoformat(),
        "host": host,
        "program": f"{PROGRAM}/{program_of(event)}",
        "pid": pid,
    }
    if isinstance(event, ConnectEvent):
        base.update(event="disconnect" if event.disconnect else "connect", client=event.client)
        return base
    if isinstance(event, ProtocolEvent):
        base.update(event="warning", client=event.client, text=event.text)
        return base
    if isinstance(event, AdminEvent):
        base.update(
            event="operator",
            subject=event.subject,
            action=event.action,
            by=event.who,
            why=event.why,
            **dict(event.details),
        )
        return base
    if isinstance(event, MessageEvent):
        base.update(
            event="message",
            queue_id=event.queue_id,
            sender=event.sender,
            size=event.size,
            nrcpt=event.nrcpt,
            client=event.client,
            sasl_username=event.sasl_username or None,
            message_id=event.message_id or None,
        )
        return base
    reply = event.reply
    verdict = event.verdict
    delivered = "delivered" if reply.is_success else None  # a 2xx needs no classifier
    base.update(
        event="recipient",
        queue_id=event.queue_id,
        recipient=event.recipient,
        sender=event.sender,
        status=str(event.status),
        relay=event.relay,
        stage=event.stage,
        delay=round(event.delay, 3),
        delays=[round(d, 3) for d in event.delays],
        dsn=dsn_of(reply),
        reply={"code": reply.code, "enhanced": reply.enhanced, "text": reply.text},
        remote=reply.host,
        attempt=event.attempt,
        **{"class": str(verdict.klass) if verdict else delivered},
        category=str(verdict.category) if verdict else delivered,
        rule=verdict.rule if verdict else None,
    )
    if event.client:
        base["client"] = event.client
    return base


def json_line(event: Event, host: str, pid: int) -> str:
    """One JSON object on one line (json.dumps escapes control characters)."""
    return json.dumps(json_record(event, host, pid), ensure_ascii=False, separators=(",", ":"))


def format_lines(event: Event, fmt: str, host: str, pid: int) -> list[str]:
    """Lines for the configured `[log] format`: "postfix" (default) or "json"."""
    if fmt == "json":
        return [json_line(event, host, pid)]
    return postfix_lines(event, host, pid)
