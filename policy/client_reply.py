# This module decides what the client hears (docs/behaviour.md#the-transaction); it performs no I/O.
# Input: what the remotes said (Replies) and the soft_bounce setting; output: the client's Reply and
# which recipients the spool must take; the outcome itself is policy/decide.py's. The only
# mapping from remote replies to client replies; relay/inbound/ only carries them to the wire.
"""The reply mapping of docs/behaviour.md#the-transaction for RCPT and DATA, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.decide import Disposition, Settings, Stage, decide
from policy.reply import Reply
from policy.verdict import Verdict

# The replies of a transaction that no remote said (the protocol's own: relay/inbound/replies.py).
RCPT_OK = Reply(250, "2.1.5", "Ok")
TEMP_STORE = Reply(451, "4.3.0", "Temporary local problem (state store); try again later")
QUEUE_REFUSED = Reply(451, "4.3.0", "Temporary local problem (queue); try again later")
PARTIAL_NO_QUEUE = Reply(
    451, "4.3.0", "partial delivery and no retry queue to finish it; try again"
)


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
    disposition: Disposition  # ACCEPTED, QUEUED, BOUNCED or DEFERRED (policy/decide.py)
    reply: Reply  # what the client's RCPT gets
    verdict: Verdict | None = None

    @property
    def accepted(self) -> bool:
        """The recipient is part of the message (remote said 2xx, or queued)."""
        return self.disposition in (Disposition.ACCEPTED, Disposition.QUEUED)

    @property
    def queued(self) -> bool:
        """A soft failure bouncer takes responsibility for: spool it at DATA."""
        return self.disposition is Disposition.QUEUED


def rcpt_decision(
    remote: Reply, soft_bounce: str, spool_available: bool, verdict: Verdict | None = None
) -> RcptDecision:
    """The RCPT rows of docs/behaviour.md#the-transaction, given the remote's (or DNS's, or
    a connect failure's) reply; `verdict` is its classification (None for a 2xx)."""
    settings = Settings(soft_bounce=soft_bounce, queue_available=spool_available)
    decision = decide(remote, verdict, Stage.RCPT, settings=settings)
    reply = rcpt_reply(decision.disposition, remote, soft_bounce)
    return RcptDecision(decision.disposition, reply, verdict)


def rcpt_reply(disposition: Disposition, remote: Reply, soft_bounce: str) -> Reply:
    """What the client hears at RCPT for a recipient decided `disposition` on `remote`."""
    if disposition is Disposition.ACCEPTED:
        return RCPT_OK
    if disposition is Disposition.BOUNCED:
        return said(remote)
    if disposition is Disposition.QUEUED:
        return Reply(250, "2.1.5", f"Ok, will retry: {said(remote).line()}")
    if soft_bounce == "queue":
        # No durable queue to take responsibility with: hand the soft failure back.
        return Reply(451, "4.3.0", f"retry queue unavailable; {said(remote).line()}")
    code = remote.code if remote.is_transient else 451
    return said(Reply(code, remote.enhanced or "4.0.0", remote.text, remote.host))


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
    # What each session's reply makes of its recipients should the queue take the rest.
    fate = [decide(res.reply, None, Stage.DATA).disposition for res in results]
    split: dict[Disposition, list[tuple[str, Reply]]] = {d: [] for d in Disposition}
    for res, disposition in zip(results, fate, strict=True):
        split[disposition].extend((r, res.reply) for r in res.recipients)
    delivered = tuple(r for r, _ in split[Disposition.DELIVERED])
    soft = list(queued) + split[Disposition.QUEUED]
    hard = split[Disposition.BOUNCED]
    refused = [res for res, d in zip(results, fate, strict=True) if d is not Disposition.DELIVERED]
    ok = queued_reply(queue_id)
    if not soft and not hard:
        return DataPlan(ok, delivered, (), (), needs_spool=False)
    if not delivered and not queued:
        # Nothing got through anywhere: the client may keep responsibility for the message.
        if not soft:
            return DataPlan(said(refused[0].reply), (), (), (), needs_spool=False)
        if soft_bounce == "pass" or not spool_available:
            return DataPlan(said(soft[0][1]), (), (), (), needs_spool=False)
    # Mixed (or soft to be queued): 250 only with the rest on disk.
    if not spool_available:
        return DataPlan(PARTIAL_NO_QUEUE, delivered, (), (), needs_spool=False)
    return DataPlan(ok, delivered, tuple(soft), tuple(hard), needs_spool=True)
