# This module decides what the client hears (docs/behaviour.md#the-transaction); it performs no I/O.
# Input: what the remotes said (Replies) and the soft_bounce setting; output: the client's Reply and
# which recipients the spool must take. inbound.py only carries these answers to the wire.
"""The reply mapping of docs/behaviour.md#the-transaction for RCPT and DATA, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.reply import Reply

RCPT_OK = Reply(250, "2.1.5", "Ok")


def said(remote: Reply) -> Reply:
    """A remote's refusal passed on with its code, enhanced code and text, naming the host.

    Postfix's wording ("host mx.example[192.0.2.1] said: ...") so log tooling and people
    recognise it. Synthetic replies (DNS, connect failures) have no host and pass unchanged.
    """
    enhanced = remote.enhanced or f"{str(remote.code)[0]}.0.0"
    text = remote.text.replace("\n", " ")
    if remote.host:
        text = f"host {remote.host} said: {text}"
    return Reply(remote.code, enhanced, text, remote.host)


@dataclass(frozen=True)
class RcptDecision:
    reply: Reply  # what the client's RCPT gets
    accepted: bool  # the recipient is part of the message (remote said 2xx, or queued)
    queued: bool  # soft failure bouncer takes responsibility for: spool it at DATA


def rcpt_decision(remote: Reply, soft_bounce: str, spool_available: bool) -> RcptDecision:
    """The RCPT rows of docs/behaviour.md#the-transaction, given the remote's (or DNS's, or
    a connect failure's) reply."""
    if remote.is_success:
        return RcptDecision(RCPT_OK, accepted=True, queued=False)
    if remote.is_permanent:
        return RcptDecision(said(remote), accepted=False, queued=False)
    # Soft: a 4xx, a DNS temporary failure, no remote reachable, a timeout.
    if soft_bounce == "queue" and spool_available:
        return RcptDecision(
            Reply(250, "2.1.5", f"Ok, will retry: {said(remote).line()}"),
            accepted=True,
            queued=True,
        )
    if soft_bounce == "queue":
        # No durable queue to take responsibility with: hand the soft failure back.
        return RcptDecision(
            Reply(451, "4.3.0", f"retry queue unavailable; {said(remote).line()}"),
            accepted=False,
            queued=False,
        )
    code = remote.code if 400 <= remote.code < 500 else 451
    soft = said(Reply(code, remote.enhanced or "4.0.0", remote.text, remote.host))
    return RcptDecision(soft, accepted=False, queued=False)


@dataclass(frozen=True)
class SessionResult:
    """One remote session's DATA reply and the recipients it covered."""

    recipients: tuple[str, ...]
    reply: Reply


@dataclass(frozen=True)
class DataPlan:
    reply: Reply  # the client's DATA reply, valid once the spool (if needed) has the message
    delivered: tuple[str, ...]
    deferred: tuple[tuple[str, Reply], ...]  # soft: the spool retries them
    failed: tuple[tuple[str, Reply], ...]  # hard in a mixed outcome: the spool sends a DSN
    needs_spool: bool


def queued_reply(queue_id: str) -> Reply:
    # Postfix parses "queued as <id>" from the remote's reply for its logs.
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def data_plan(
    results: Sequence[SessionResult],
    queued: Sequence[tuple[str, Reply]],
    soft_bounce: str,
    spool_available: bool,
    queue_id: str,
) -> DataPlan:
    """docs/behaviour.md#the-transaction DATA rows.

    `queued` are recipients that already failed softly at RCPT and were accepted for the
    retry queue. Nothing is answered 250 unless every remote took it or it goes to the spool.
    """
    delivered = tuple(r for res in results if res.reply.is_success for r in res.recipients)
    soft = list(queued) + [
        (r, res.reply)
        for res in results
        if not res.reply.is_success and not res.reply.is_permanent
        for r in res.recipients
    ]
    hard = [(r, res.reply) for res in results if res.reply.is_permanent for r in res.recipients]
    refused = [res for res in results if not res.reply.is_success]
    ok = queued_reply(queue_id)
    if not soft and not hard:
        return DataPlan(ok, delivered, (), (), needs_spool=False)
    if not delivered and not queued:
        # Nothing got through anywhere: the client may keep responsibility for the message.
        if not soft:
            return DataPlan(said(refused[0].reply), (), (), (), needs_spool=False)
        if soft_bounce == "pass" or not spool_available:
            first_soft = next(res for res in refused if not res.reply.is_permanent)
            return DataPlan(said(first_soft.reply), (), (), (), needs_spool=False)
    # Mixed (or soft to be queued): 250 only with the rest on disk.
    if not spool_available:
        return DataPlan(
            Reply(451, "4.3.0", "partial delivery and no retry queue to finish it; try again"),
            delivered,
            (),
            (),
            needs_spool=False,
        )
    return DataPlan(ok, delivered, tuple(soft), tuple(hard), needs_spool=True)
