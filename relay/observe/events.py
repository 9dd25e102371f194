# This module defines the event records and delivers them to subscribers; it never blocks.
"""Event records: one per recipient outcome, plus connection and message records.

The relay emits events; subscribers (the log writer, metrics, the stats
counters) turn them into lines and numbers. Emitting never blocks and never
raises into the SMTP transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from policy.decide import Disposition
from policy.reply import Reply
from policy.verdict import Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecipientEvent:
    """The outcome of one recipient in one attempt."""

    queue_id: str
    recipient: str
    status: Disposition  # policy/decide.py decided it; logs print its Postfix word
    reply: Reply
    when: datetime
    relay: str = "none"  # "mx.example.com[192.0.2.1]:25", or "none" when no remote was reached
    stage: str = "RCPT"  # the command the reply answered: RCPT, DATA, MAIL, connect
    delay: float = 0.0  # seconds since the message arrived
    delays: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # Postfix's a/b/c/d
    verdict: Verdict | None = None
    attempt: int = 0  # 0 = live, in-transaction; n = nth retry from the queue
    sender: str = ""
    client: str = ""  # "name[ip]" of the SMTP client, for the reject line of a suppressed rcpt
    notice: bool = False  # the message is a DSN bouncer wrote itself (stats count it apart)


@dataclass(frozen=True)
class ConnectEvent:
    """A client connected (or disconnected, when `disconnect`)."""

    client: str  # "name[ip]"
    when: datetime
    disconnect: bool = False


@dataclass(frozen=True)
class MessageEvent:
    """A message's envelope as accepted: Postfix's qmgr `from=<>, size=, nrcpt=` line."""

    queue_id: str
    sender: str
    size: int
    nrcpt: int
    when: datetime
    client: str = ""
    message_id: str = ""
    sasl_username: str = ""  # the AUTH login the client relayed with, if any


@dataclass(frozen=True)
class AdminEvent:
    """An operator's action (queue drop/hold/release, suppression add/remove/lift): who
    did what to which message or address, and why. `program` is the Postfix-style role
    that logs it: "postsuper" for the queue (as Postfix's postsuper does), "suppression"."""

    program: str
    subject: str  # a queue id, or an address or domain
    action: str  # "removed", "placed on hold", "released from hold", "added", "lifted", ...
    who: str  # "root", "alice (sudo)", "api 127.0.0.1"
    why: str
    when: datetime
    details: tuple[tuple[str, str], ...] = ()  # extra key=value facts: to=<...>, category=...


@dataclass(frozen=True)
class ProtocolEvent:
    """A client's protocol failure a postmaster watches for: a bare-LF (smuggling)
    refusal, a failed AUTH. Logged as Postfix smtpd's `warning:` lines, so fail2ban's
    postfix and postfix-sasl filters match them."""

    client: str  # "name[ip]"
    text: str  # after "warning: <client>: "
    when: datetime


Event = RecipientEvent | ConnectEvent | MessageEvent | AdminEvent | ProtocolEvent
Subscriber = Callable[[Event], None]


@dataclass
class EventBus:
    """Fans each event out to every subscriber; a failing subscriber is logged, not raised."""

    subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken log sink must not fail a mail transaction
                log.exception("event subscriber %r failed", subscriber)
