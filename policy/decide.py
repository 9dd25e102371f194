# The one place that decides what happened to a recipient: pure, no I/O, no clock (`now` is
# a parameter). The pipeline (RCPT, DATA), the retry scheduler and the bounce intake call
# decide(); events, the queue, stats and logs read its Disposition.
"""What happened to one recipient, given a reply: one `Disposition`
(docs/behaviour.md#the-transaction, docs/behaviour.md#retry-queue,
docs/behaviour.md#late-bounces-and-complaints).

The reply's code decides for replies bouncer saw itself (RCPT, DATA, a retry); a
report that arrived later (a DSN at the intake) has no trustworthy code, so its
verdict's class decides. The values of `Disposition` are the words bouncer's logs,
stats and metrics print for a recipient outcome; the Postfix-format log line maps
them to Postfix's own status words (relay/observe/logfmt.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from policy.classify.classify import shared_data_verdict
from policy.reply import Reply
from policy.retry import DEFAULT_SCHEDULE, next_attempt
from policy.verdict import BounceClass, Category, Verdict

EXPIRED_RULE = "queue-expired"
# The soft streak rules see an expiry as a message-expired soft bounce
# (docs/behaviour.md#retry-queue).
EXPIRED_VERDICT = Verdict(BounceClass.SOFT, Category.MESSAGE_EXPIRED, EXPIRED_RULE)


class Disposition(StrEnum):
    """The outcome of one recipient; the value is the word logs, stats and metrics show."""

    ACCEPTED = "accepted"  # RCPT only: the remote took it; DATA decides its outcome
    DELIVERED = "sent"  # a remote took the message (or a late DSN says it did)
    BOUNCED = "bounced"  # refused for good: to the client at RCPT/DATA, else by a DSN
    QUEUED = "queued"  # soft failure bouncer took responsibility for: the retry queue
    DEFERRED = "deferred"  # soft failure handed back to the client (or reported late)
    SUPPRESSED = "suppressed"  # refused by bouncer itself from the store, or a complaint
    EXPIRED = "expired"  # the retry schedule ran out: a DSN to the sender
    DROPPED = "dropped"  # an operator removed it from the queue
    IGNORED = "ignored"  # a report that changes nothing (auto-reply, relayed, a stranger)


class Stage(StrEnum):
    """Where the decision is taken."""

    RCPT = "RCPT"  # the live RCPT: the remote's (or DNS's, or a connect failure's) reply
    DATA = "DATA"  # the live DATA: the remote session's reply to the message
    RETRY = "retry"  # an attempt from the retry queue
    REPORT = "DSN"  # a delivery report that arrived at the intake
    COMPLAINT = "ARF"  # a feedback-loop complaint that arrived at the intake


@dataclass(frozen=True)
class Settings:
    soft_bounce: str = "queue"  # "queue": bouncer retries soft failures; "pass": the client does
    # Live: the retry queue exists (RCPT) or took the message (DATA: the client heard 2xx).
    queue_available: bool = True
    schedule: tuple[timedelta, ...] = DEFAULT_SCHEDULE


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    verdict: Verdict | None  # what the store and the events record (None for a 2xx)
    next_at: datetime | None = None  # QUEUED from a retry: when to try again


LIVE = Settings()


def decide(
    reply: Reply,
    verdict: Verdict | None,
    stage: Stage,
    *,
    answered: int = 1,
    attempt: int = 0,
    first_failure: datetime | None = None,
    now: datetime | None = None,
    settings: Settings = LIVE,
) -> Decision:
    """The one mapping from a reply (and its verdict) to a recipient's outcome.

    `answered`: how many recipients this one reply answered (a DATA reply covers every
    recipient of its session; a hard verdict is then nobody's in particular).
    `attempt`, `first_failure`, `now`: the retry queue's count of failed attempts
    including this one, the recipient's first failure, and the time of this attempt.
    """
    if stage is Stage.COMPLAINT:
        return Decision(Disposition.SUPPRESSED, verdict)
    if stage is Stage.REPORT:
        if verdict is None:
            return Decision(Disposition.IGNORED, None)
        if verdict.klass is BounceClass.DELIVERED:
            return Decision(Disposition.DELIVERED, verdict)
        if verdict.klass is BounceClass.SOFT:
            return Decision(Disposition.DEFERRED, verdict)
        return Decision(Disposition.BOUNCED, verdict)
    if verdict is not None and stage is not Stage.RCPT:
        verdict = shared_data_verdict(verdict, answered)
    if reply.is_success:
        accepted = Disposition.ACCEPTED if stage is Stage.RCPT else Disposition.DELIVERED
        return Decision(accepted, verdict)
    if reply.is_permanent:
        return Decision(Disposition.BOUNCED, verdict)
    # Soft: a 4xx, a DNS temporary failure, no remote reachable, a timeout, no reply at all.
    if stage is Stage.RETRY:
        assert now is not None, "a retry decides at a time"
        nxt = next_attempt(first_failure or now, attempt, now, settings.schedule)
        if nxt is None:
            return Decision(Disposition.EXPIRED, EXPIRED_VERDICT)
        return Decision(Disposition.QUEUED, verdict, nxt)
    if stage is Stage.RCPT and settings.soft_bounce != "queue":
        return Decision(Disposition.DEFERRED, verdict)
    if settings.queue_available:
        return Decision(Disposition.QUEUED, verdict)
    return Decision(Disposition.DEFERRED, verdict)
