# Values that travel through a relay transaction: where a domain is delivered (Target, Route),
# what one remote step produced (Outcome), and the seams to the store and spool (Protocols).
# No I/O and no decisions here: these are the nouns the other relay modules share.
"""Shared relay types and the typing seams to the suppression store and the spool."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from policy.dane import Tlsa
from policy.reply import Reply
from policy.verdict import Verdict
from relay.config.schema import StartTLS

if TYPE_CHECKING:
    from policy.suppression.store import Refusal
    from relay.queue.records import SpoolMessage


@dataclass(frozen=True, slots=True)
class Target:
    """One address to try for a route: the MX host's name, its IP, the port."""

    name: str
    ip: str
    port: int

    @property
    def host(self) -> str:
        """Postfix style "mx.example.com[192.0.2.1]", as replies and logs name a remote."""
        return f"{self.name}[{self.ip}]"

    @property
    def relay(self) -> str:
        """Postfix's relay= value: "mx.example.com[192.0.2.1]:25"."""
        return f"{self.name}[{self.ip}]:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """How a domain is reached: the ordered targets, and the key sessions are pooled under."""

    key: str  # the destination: the domain (MX lookup) or "[host]:port" (static route)
    targets: tuple[Target, ...]
    tls: StartTLS | None = None  # a [delivery] starttls level this route must use (MTA-STS)
    # DANE (relay/outbound/dane.py): MX host name -> its usable TLSA records, or None when
    # the lookup failed; hosts not listed have no DANE.
    tlsa: tuple[tuple[str, tuple[Tlsa, ...] | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient in one remote step."""

    reply: Reply  # `.host` is set when a remote said it
    relay: str = "none"  # "host[ip]:port", or "none" when no remote was reached
    stage: str = "RCPT"  # "connect", "MAIL", "RCPT", "DATA"
    answered: int = 1  # recipients this one reply answers (a DATA reply covers them all)


# The remote envelope sender for (sender, recipient, queue id); identity unless VERP.
RemoteSender = Callable[[str, str, str], str]


def identity_sender(sender: str, recipient: str, queue_id: str) -> str:
    return sender


def new_queue_id() -> str:
    """A Postfix-like queue id: 12 upper-case hex digits, random so workers never clash."""
    return secrets.token_hex(6).upper()


class Store(Protocol):
    """The part of policy.suppression.store.SuppressionStore the relay uses."""

    def check(self, address: str, now: datetime) -> Refusal | None: ...
    def record_refusal(self, refusal: Refusal, now: datetime) -> None: ...
    def record_verdict(
        self, address: str, verdict: Verdict, reply: Reply, now: datetime
    ) -> None: ...
    def record_success(self, address: str, now: datetime) -> None: ...
    def has_records(self, address: str) -> bool: ...  # read-only: may a success change anything?
    def note_delivered(self, address: str, now: datetime) -> None: ...  # memory only (storms)


class SpoolSink(Protocol):
    """The part of relay.queue.queue.Spool the relay uses."""

    def accept(self, msg: SpoolMessage, now: datetime) -> None: ...


Classifier = Callable[[Reply], Verdict]
