"""The retry scheduler with time as a parameter: a real spool, store and classifier, and a
scripted deliver step in place of the network (the e2e tests use the real delivery path)."""

from __future__ import annotations

import asyncio
import dataclasses
import email
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policy.classify.classify import classify
from policy.decide import Disposition
from policy.reply import Reply, parse_reply
from policy.retry import DEFAULT_SCHEDULE
from policy.suppression.store import SuppressionStore
from policy.verdict import BounceClass, Category
from relay.config.load import PolicyConfig, suppression_rules
from relay.observe.events import Event, EventBus, MessageEvent, RecipientEvent
from relay.outbound.values import Outcome
from relay.queue.queue import DsnSettings, Spool, SpoolMessage
from relay.queue.scheduler import RetryWorker, RunnerSettings
from relay.store.env import StateError, open_state
from tests.support.mime import status_blocks
from tests.support.wait import until

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DATA = b"From: a@a.example\r\nSubject: hello\r\n\r\nbody\r\n"
SOFT = Reply(452, "4.2.2", "Mailbox full", "mx.b.example[127.0.0.1]")


class Script:
    """The deliver seam: replies per recipient, changeable between attempts; records calls."""

    def __init__(self) -> None:
        self.replies: dict[str, str] = {}
        self.calls: list[tuple[str, tuple[str, ...], str]] = []
        self.options: list[tuple[str, ...]] = []
        self.gate: asyncio.Event | None = None
        self.data_reply: str | None = None  # one reply at DATA for every recipient, as a remote

    async def __call__(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        queue_id: str,
        options: Sequence[str] = (),
        *,
        before_data: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> Mapping[str, Outcome]:
        self.calls.append((sender, tuple(recipients), queue_id))
        self.options.append(tuple(options))
        if self.gate is not None:
            await self.gate.wait()
        if before_data is not None:
            await before_data(recipients)
        if self.data_reply is not None:
            reply = parse_reply(self.data_reply)
            shared = Outcome(reply, "mx[127.0.0.1]:25", "DATA", len(recipients))
            return dict.fromkeys(recipients, shared)
        out = {}
        for r in recipients:
            reply = parse_reply(self.replies.get(r, "250 2.0.0 Ok")).with_host("mx[127.0.0.1]")
            out[r] = Outcome(reply, "mx[127.0.0.1]:25", "RCPT")
        return out


@pytest.fixture
def parts(tmp_path: Path) -> Any:
    env = open_state(tmp_path, 1 << 24)
    spool = Spool(env, DEFAULT_SCHEDULE, DsnSettings("relay.test"))
    store = SuppressionStore(env, suppression_rules(PolicyConfig()))
    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    executor = ThreadPoolExecutor(1, thread_name_prefix="writer")

    async def run_write(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    script = Script()
    clock = {"now": T0}
    worker = RetryWorker(
        spool,
        script,
        classify,
        store,
        bus,
        run_write,
        RunnerSettings(DEFAULT_SCHEDULE, max_concurrent=3),
        clock=lambda: clock["now"],
    )
    yield worker, spool, store, script, events, clock
    executor.shutdown()


async def _settle(worker: RetryWorker) -> None:
    while worker.tasks:
        await asyncio.gather(*worker.tasks)


async def test_recovered_remote_delivers_once_and_clears_the_streak(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    msg = SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),))
    spool.accept(dataclasses.replace(msg, options=("BODY=8BITMIME",)), T0)
    assert await worker.run_once(T0 + timedelta(minutes=4)) == 0  # not due yet
    script.replies["b@b.example"] = "451 4.3.2 try later"
    clock["now"] = T0 + timedelta(minutes=5)
    assert await worker.run_once(clock["now"]) == 1
    await _settle(worker)
    (r,) = spool.get("Q1").recipients
    assert r.tries == 2 and r.next_at == T0 + timedelta(minutes=30)
    [ev] = [e for e in events if isinstance(e, RecipientEvent)]
    assert ev.status is Disposition.QUEUED and ev.attempt == 1 and ev.reply.code == 451  # 1st retry
    # The remote recovers.
    del script.replies["b@b.example"]
    clock["now"] = T0 + timedelta(minutes=30)
    await worker.run_once(clock["now"])
    await _settle(worker)
    assert spool.messages() == []
    assert [c[1] for c in script.calls] == [("b@b.example",), ("b@b.example",)]
    assert script.options == [("BODY=8BITMIME",)] * 2  # the client's MAIL parameters, kept
    assert events[-1].status is Disposition.DELIVERED
    assert await worker.run_once(T0 + timedelta(days=30)) == 0  # nothing left: exactly once


async def test_expiry_sends_a_dsn_and_feeds_the_streak(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    script.replies["b@b.example"] = "452 4.2.2 Mailbox full"
    for offset in DEFAULT_SCHEDULE:
        clock["now"] = T0 + offset + timedelta(seconds=1)
        assert await worker.run_once(clock["now"]) == 1
        await _settle(worker)
    statuses = [e.status for e in events if isinstance(e, RecipientEvent)]
    assert statuses == [Disposition.QUEUED] * (len(DEFAULT_SCHEDULE) - 1) + [Disposition.EXPIRED]
    assert events[-1].verdict.category is Category.MESSAGE_EXPIRED
    (dsn,) = spool.messages()
    assert dsn.kind == "dsn" and dsn.recipients[0].recipient == "a@a.example"
    block = status_blocks(email.message_from_bytes(spool.data(dsn.queue_id) or b""))[1]
    assert block["Status"] == "4.2.2" and block["Final-Recipient"] == "rfc822; b@b.example"
    rec = store.get("b@b.example")
    assert rec is not None and rec.category is Category.MESSAGE_EXPIRED
    # The DSN itself is due now and goes out from the null sender.
    await worker.run_once(clock["now"])
    await _settle(worker)
    assert script.calls[-1] == ("", ("a@a.example",), dsn.queue_id)
    dsn_event, sent = events[-2:]
    assert isinstance(dsn_event, MessageEvent) and dsn_event.queue_id == dsn.queue_id
    assert dsn_event.sender == "" and dsn_event.size == dsn.size and dsn_event.nrcpt == 1
    assert sent.status is Disposition.DELIVERED and sent.attempt == 1
    assert spool.messages() == []


async def test_hard_failure_on_retry_bounces_with_dsn_and_suppresses(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    script.replies["b@b.example"] = "550 5.1.1 No such user"
    clock["now"] = T0 + timedelta(minutes=5)
    await worker.run_once(clock["now"])
    await _settle(worker)
    assert events[0].status is Disposition.BOUNCED
    assert store.check("b@b.example", clock["now"]) is not None
    (dsn,) = spool.messages()
    assert dsn.kind == "dsn" and dsn.origin == "Q1"


async def test_concurrency_cap_and_no_double_lease(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    for i in range(5):
        spool.accept(
            SpoolMessage(f"Q{i}", "a@a.example", DATA, T0, ((f"r{i}@b.example", SOFT),)), T0
        )
    script.gate = asyncio.Event()
    now = T0 + timedelta(minutes=5)
    assert await worker.run_once(now) == 3  # max_concurrent
    assert await worker.run_once(now) == 0  # full, and the leased ones are not handed out again
    await until(lambda: len(script.calls) == 3, "three attempts waiting at the remote")
    script.gate.set()
    await _settle(worker)
    assert worker.in_flight == 0
    assert await worker.run_once(now) == 2
    await _settle(worker)
    assert spool.messages() == []
    assert sorted(c[2] for c in script.calls) == [f"Q{i}" for i in range(5)]


async def test_drain_cuts_attempts_short_and_recover_makes_them_due(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    script.gate = asyncio.Event()  # the remote hangs
    now = T0 + timedelta(minutes=5)
    await worker.run_once(now)
    await until(lambda: script.calls, "the attempt waiting at the remote")
    await worker.drain(0.05)
    assert worker.tasks == set()
    (r,) = spool.get("Q1").recipients
    assert r.leased_by == worker.owner  # still leased: not lost, not settled
    # A new runner in this process (a restart) takes the old lease back at once.
    script.gate = None
    fresh = RetryWorker(
        spool,
        script,
        classify,
        store,
        worker.events,
        worker.run_write,
        worker.settings,
        clock=lambda: now,
    )
    assert await fresh.recover(now) == 1
    assert await fresh.run_once(now) == 1
    await _settle(fresh)
    assert spool.messages() == []


async def test_a_crashing_deliver_step_defers_instead_of_losing(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts

    async def broken(*args: Any) -> Mapping[str, Outcome]:
        raise RuntimeError("bug")

    worker.deliver = broken
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    clock["now"] = T0 + timedelta(minutes=5)
    await worker.run_once(clock["now"])
    await _settle(worker)
    (r,) = spool.get("Q1").recipients
    assert r.last_reply is not None and r.last_reply.enhanced == "4.3.0"
    assert r.next_at == T0 + timedelta(minutes=30)


async def test_per_domain_share_leaves_sessions_for_live_mail(parts: Any) -> None:
    worker, spool, store, script, events, clock = parts
    worker.settings = dataclasses.replace(worker.settings, per_domain=1)
    rcpts = ["r0@busy.example", "r1@busy.example", "r2@other.example"]
    for i, r in enumerate(rcpts):
        spool.accept(SpoolMessage(f"Q{i}", "a@a.example", DATA, T0, ((r, SOFT),)), T0)
    script.gate = asyncio.Event()
    assert await worker.run_once(T0 + timedelta(minutes=5)) == 3  # all leased...
    await until(lambda: len(script.calls) >= 2, "the first two attempts")
    # ...but only one delivery to busy.example runs at a time; other.example is not held up.
    assert sorted(c[1][0] for c in script.calls) == ["r0@busy.example", "r2@other.example"]
    script.gate.set()
    await _settle(worker)
    assert len(script.calls) == 3 and spool.messages() == []
    assert worker._domains == {}  # no per-domain state left behind


@pytest.mark.parametrize(
    "rcpts, hard", [(("b@b.example",), True), (("b@b.example", "c@b.example"), False)]
)
async def test_a_data_refusal_is_hard_only_for_a_lone_recipient(
    parts: Any, rcpts: tuple[str, ...], hard: bool
) -> None:
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, tuple((r, SOFT) for r in rcpts)), T0)
    script.data_reply = "550 5.1.1 mailbox unavailable"
    clock["now"] = T0 + DEFAULT_SCHEDULE[0] + timedelta(seconds=1)
    assert await worker.run_once(clock["now"]) == len(rcpts)
    await _settle(worker)
    bounced = [e for e in events if isinstance(e, RecipientEvent)]
    assert [e.status for e in bounced] == [Disposition.BOUNCED] * len(rcpts)
    for event in bounced:
        assert event.verdict is not None
        assert (event.verdict.klass is BounceClass.HARD) is hard
        assert (store.check(event.recipient, clock["now"]) is not None) is hard


async def test_delivering_mark_is_durable_before_data_and_settled_after(parts: Any) -> None:
    """Write-ahead: when the deliver step is about to send DATA, the recipient's record
    already says 'delivering'; the settlement removes it (one group commit each)."""
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    seen: list[bool] = []

    async def deliver(sender, rcpts, data, queue_id, options=(), *, before_data=None):
        assert before_data is not None
        await before_data(rcpts)
        raw = spool.env.begin().get(b"Q1\0b@b.example", db=spool.env.open_db(b"queue_recipients"))
        seen.append(b'"delivering"' in raw)
        return await script(sender, rcpts, data, queue_id, options)

    worker.deliver = deliver
    clock["now"] = T0 + timedelta(minutes=5)
    assert await worker.run_once(clock["now"]) == 1
    await _settle(worker)
    assert seen == [True]
    assert spool.get("Q1") is None  # delivered and settled
    assert worker.commits.commits == 2  # the mark, then the settlement


async def test_a_failed_mark_sends_nothing(parts: Any) -> None:
    """No mark, no DATA: when the write-ahead mark cannot be written the attempt defers."""
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q1", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)

    def broken(txn: Any, *args: Any) -> None:
        raise StateError("disk full")

    spool.mark_delivering_in = broken
    clock["now"] = T0 + timedelta(minutes=5)
    assert await worker.run_once(clock["now"]) == 1
    await _settle(worker)
    (r,) = spool.get("Q1").recipients  # still queued: the fake's 250 was never reached
    assert r.tries == 2 and r.last_reply is not None and r.last_reply.code == 451


async def test_a_retry_logs_real_delays(parts: Any) -> None:
    # A retry once logged delays=0/0/0/0 beside a delay of minutes. Postfix's b is the
    # time in the queue, d the attempt; a+b+c+d is the delay.
    worker, spool, store, script, events, clock = parts
    spool.accept(SpoolMessage("Q7", "a@a.example", DATA, T0, (("b@b.example", SOFT),)), T0)
    clock["now"] = T0 + timedelta(minutes=5)
    await worker.run_once(clock["now"])
    await _settle(worker)
    [ev] = [e for e in events if isinstance(e, RecipientEvent)]
    assert ev.status is Disposition.DELIVERED and ev.delay == 300.0
    a, b, c, d = ev.delays
    assert a == 0.0 and c == 0.0 and 299.0 < b <= 300.0 and 0.0 <= d < 1.0
    assert abs(a + b + c + d - ev.delay) < 0.01
