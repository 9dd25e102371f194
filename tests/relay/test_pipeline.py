"""The pipeline against fake remotes: a destination at its session cap (pool.Busy) answers
one recipient softly and is not remembered as the destination's answer; a reply is
classified once whatever needs its verdict (the store, the decision, the event)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from policy.address import Address
from policy.classify.classify import classify
from policy.decide import Disposition
from policy.reply import Reply
from policy.verdict import Verdict
from relay.observe.events import Event, EventBus, RecipientEvent
from relay.outbound.delivery import RemoteTransaction
from relay.outbound.pool import Busy
from relay.outbound.values import Outcome, Route
from relay.pipeline import ClientTransaction, Pipeline

ROUTE = Route("dest.example", ())
ACCEPT = Reply(250, "2.1.5", "Ok", "mx[192.0.2.1]")


class FakeDelivery:
    """Busy for the first transaction asked for, then a remote that answers `reply`."""

    def __init__(self, reply: Reply = ACCEPT) -> None:
        self.opened = 0
        self.reply = reply

    async def route(self, domain: str) -> Route:
        return ROUTE

    def remote_sender(self, sender: str, recipient: str, queue_id: str) -> str:
        return sender

    async def open_transaction(
        self,
        route: Route,
        sender: str,
        options: Sequence[str] = (),
        wait: bool = True,
        first: str | None = None,
    ) -> RemoteTransaction:
        self.opened += 1
        pool: Any = None
        if self.opened == 1:
            busy = Busy(route.key)
            failure = Outcome(busy.reply, "none", "connect")
            return RemoteTransaction(pool, route, sender, failure=failure, busy=True)
        return Answering(pool, route, sender, answer=self.reply)


@dataclass
class Answering(RemoteTransaction):
    answer: Reply = Reply(250, "2.1.5", "Ok")

    async def rcpt(self, recipient: str) -> Outcome:
        if self.answer.is_success:
            self.accepted.append(recipient)
        return Outcome(self.answer, "mx[192.0.2.1]:25")


class FakeStore:
    def __init__(self) -> None:
        self.verdicts: list[tuple[str, Verdict]] = []

    def check(self, address: str, now: datetime) -> None:
        return None

    def record_verdict(self, address: str, verdict: Verdict, reply: Reply, now: datetime) -> None:
        self.verdicts.append((address, verdict))


class InlineWriter:
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


async def test_busy_is_soft_for_one_recipient_and_not_cached() -> None:
    events: list[Event] = []
    delivery = FakeDelivery()
    writer: Any = None  # no store: nothing is written
    pipeline = Pipeline(delivery, classify, writer, EventBus([events.append]), soft_bounce="pass")  # type: ignore[arg-type]
    txn = ClientTransaction("s@src.example", (), "c[127.0.0.1]")
    first = await pipeline.rcpt(txn, Address.parse("a@dest.example"))
    assert (first.code, first.enhanced) == (451, "4.4.5")
    assert txn.remotes == {}  # not cached
    second = await pipeline.rcpt(txn, Address.parse("b@dest.example"))
    assert second.code == 250 and delivery.opened == 2
    (event,) = [e for e in events if isinstance(e, RecipientEvent)]
    assert event.status is Disposition.DEFERRED and event.recipient == "a@dest.example"


@pytest.mark.parametrize("mode", ["queue", "pass"])
async def test_an_rcpt_refusal_is_classified_once(mode: str) -> None:
    seen: list[Reply] = []

    def counting(reply: Reply) -> Verdict:
        seen.append(reply)
        return classify(reply)

    events: list[Event] = []
    delivery = FakeDelivery(Reply(550, "5.1.1", "No such user", "mx[192.0.2.1]"))
    delivery.opened = 1  # no Busy first
    store = FakeStore()
    pipeline = Pipeline(
        delivery,  # type: ignore[arg-type]
        counting,
        InlineWriter(),  # type: ignore[arg-type]
        EventBus([events.append]),
        store=store,  # type: ignore[arg-type]
        soft_bounce=mode,  # type: ignore[arg-type]
    )
    txn = ClientTransaction("s@src.example", (), "c[127.0.0.1]")
    reply = await pipeline.rcpt(txn, Address.parse("Gone@Dest.Example"))
    assert reply.code == 550
    assert len(seen) == 1
    (event,) = [e for e in events if isinstance(e, RecipientEvent)]
    assert event.status is Disposition.BOUNCED and event.verdict == store.verdicts[0][1]
    assert store.verdicts[0][0] == "gone@dest.example"
