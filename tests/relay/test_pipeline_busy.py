"""A destination at its session cap (pool.Busy) answers one recipient softly and is not
remembered as the destination's answer: the next recipient asks for a session again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policy.address import Address
from policy.classify.classify import classify
from policy.decide import Disposition
from policy.reply import Reply
from relay.observe.events import Event, EventBus, RecipientEvent
from relay.outbound.delivery import RemoteTransaction
from relay.outbound.pool import Busy
from relay.outbound.values import Outcome, Route
from relay.pipeline import ClientTransaction, Pipeline

ROUTE = Route("dest.example", ())


class FakeDelivery:
    """Busy for the first transaction asked for, then a remote that takes every RCPT."""

    def __init__(self) -> None:
        self.opened = 0

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
        txn = Accepting(pool, route, sender)
        return txn


class Accepting(RemoteTransaction):
    async def rcpt(self, recipient: str) -> Outcome:
        self.accepted.append(recipient)
        return Outcome(Reply(250, "2.1.5", "Ok", "mx[192.0.2.1]"), "mx[192.0.2.1]:25")


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
