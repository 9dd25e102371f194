# This module decides what an LMTP client hears after DATA (docs/behaviour.md#lmtp); it performs
# no I/O. Input: what each accepted recipient's remote said (or its soft RCPT reply, when it was
# queued there) and the soft_bounce setting; output: one Reply per recipient, in RCPT order, and
# which recipients the retry queue must take. Nothing here ever asks for a DSN.
"""The LMTP reply mapping (RFC 2033 §4.2): one DATA reply per accepted recipient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.client_reply import queued_reply, rcpt_decision
from policy.reply import Reply


@dataclass(frozen=True)
class RecipientPlan:
    replies: tuple[Reply, ...]  # one per recipient, in the order given
    deferred: tuple[tuple[str, Reply], ...]  # soft, for the retry queue: their 250 needs it

    @property
    def needs_spool(self) -> bool:
        return bool(self.deferred)


def recipient_plan(
    outcomes: Sequence[tuple[str, Reply]],
    soft_bounce: str,
    spool_available: bool,
    queue_id: str,
) -> RecipientPlan:
    """Each recipient's own reply: 250 with `queue_id` when its remote took the message;
    its remote's refusal with the host when permanent (the client bounces it: no DSN);
    a soft failure is 250 with `queue_id` once queued (`queue`), or the remote's 4xx
    (`pass`, or no queue to take it).

    `outcomes` pairs each accepted recipient with its remote's DATA reply, or with the soft
    RCPT reply for which it was accepted into the retry queue.
    """
    ok = queued_reply(queue_id)
    replies: list[Reply] = []
    deferred: list[tuple[str, Reply]] = []
    for address, reply in outcomes:
        if reply.is_success:
            replies.append(ok)
            continue
        # A failure after DATA maps as one at RCPT does: the remote's 5xx with its host; a
        # soft one queued (250 once on disk) or handed back (the remote's 4xx).
        decision = rcpt_decision(reply, soft_bounce, spool_available)
        if decision.queued:
            replies.append(ok)
            deferred.append((address, reply))
        else:
            replies.append(decision.reply)
    return RecipientPlan(tuple(replies), tuple(deferred))
