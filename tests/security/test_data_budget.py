# The memory budget: message bytes in flight across all transactions are
# reserved from one budget; a DATA that does not fit is answered 452 4.3.1 (RFC 3463:
# insufficient system storage), reserved by SIZE= up front when declared, and accounted as
# it is read otherwise. The message is read into one buffer, dot-unstuffed on the way.
from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.inbound.data import RESERVE_STEP, DataBudget, DataState, Reservation, read_data
from relay.inbound.server import declared_size, prepend
from relay.outbound.wire import wire_message
from tests.support.rawsmtp import RawClient

BUDGET = 3 * RESERVE_STEP


def test_reservation_grows_in_steps_and_gives_back_everything() -> None:
    budget = DataBudget(BUDGET)
    r = Reservation(budget)
    assert r.grow_to(10) and budget.used == RESERVE_STEP
    assert r.grow_to(RESERVE_STEP) and budget.used == RESERVE_STEP
    assert r.grow_to(RESERVE_STEP + 1) and budget.used == 2 * RESERVE_STEP
    other = Reservation(budget)
    assert other.grow_to(RESERVE_STEP)
    assert not other.grow_to(RESERVE_STEP + 1)  # the budget is spent
    assert budget.used == BUDGET
    r.release()
    other.release()
    assert budget.used == 0


def test_reservation_takes_the_exact_rest_when_a_step_does_not_fit() -> None:
    budget = DataBudget(RESERVE_STEP + 100)
    r = Reservation(budget)
    assert r.grow_to(RESERVE_STEP)
    assert r.grow_to(RESERVE_STEP + 100) and budget.used == budget.limit
    assert not r.grow_to(RESERVE_STEP + 101)


def test_declared_size() -> None:
    assert declared_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234
    assert declared_size(["size=7"]) == 7
    assert declared_size(["SIZE=x", "SMTPUTF8"]) == 0


async def read(chunks: list[bytes], size_limit: int = 10_000, budget: int = BUDGET) -> Any:
    reader = asyncio.StreamReader(limit=1001)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    reservation = Reservation(DataBudget(budget))
    state, buf = await read_data(
        reader, size_limit=size_limit, line_limit=1001, reservation=reservation
    )
    return state, bytes(buf), reservation.size


MESSAGE = b"Subject: x\r\n\r\n..dot\r\n.\r\nnot the end\r\n"


@given(st.lists(st.integers(0, len(MESSAGE) + 5), max_size=6))
def test_any_chunking_reads_the_same_unstuffed_message(cuts: list[int]) -> None:
    wire = MESSAGE.replace(b"\r\n.\r\n", b"\r\n..\r\n") + b".\r\nQUIT\r\n"
    points = sorted({0, *cuts, len(wire)})
    chunks = [wire[a:b] for a, b in zip(points, points[1:], strict=False)]
    state, buf, _ = asyncio.run(read(chunks))
    assert state is DataState.COMPLETE
    assert buf == MESSAGE.replace(b"\r\n..dot", b"\r\n.dot")


async def test_too_much_too_long_and_over_budget_read_to_the_end_and_keep_nothing() -> None:
    line = b"x" * 98 + b"\r\n"
    assert (await read([line * 200, b".\r\n"], size_limit=1000))[:2] == (DataState.TOO_MUCH, b"")
    long = b"y" * 5000 + b"\r\n"
    assert (await read([long, line, b".\r\n"]))[:2] == (DataState.TOO_LONG, b"")
    state, buf, _ = await read([line * 200, b".\r\n"], size_limit=100_000, budget=1000)
    assert (state, buf) == (DataState.OVER_BUDGET, b"")


async def test_the_message_is_held_once_on_its_way_through() -> None:
    _, buf, reserved = await read([MESSAGE.replace(b"..dot", b"dot"), b".\r\n"])
    content = cast(bytes, bytearray(buf))  # the reader's buffer, typed as the relay sees it
    message = prepend(b"Received: x\r\n", content)
    assert message is content  # the header went into the same buffer
    assert wire_message(message)[0] is message  # nothing to stuff: not copied to go out
    assert reserved == RESERVE_STEP


def route_to(fake_mx: Any, **server: Any) -> dict[str, Any]:
    return {
        "server": {"max_message_size": BUDGET, **server},
        "delivery": {"routes": {"example.test": fake_mx.address}},
    }


async def open_data(port: int, mail: bytes = b"MAIL FROM:<a@sender.test>") -> RawClient:
    c = await RawClient.connect("127.0.0.1", port)
    assert (await c.cmd(mail)).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    return c


@pytest.mark.both_loops
async def test_data_over_the_budget_is_452_4_3_1(relay_service: Any, fake_mx: Any) -> None:
    svc = await relay_service(route_to(fake_mx, max_data_in_flight=BUDGET))
    port = svc.addresses[0][1]
    budget = svc.inbound.data_budget
    body = (b"x" * 998 + b"\r\n") * (2 * RESERVE_STEP // 1000)
    # One client is half-way through a large message: it holds 2 of the 3 MiB.
    first = await open_data(port)
    assert (await first.cmd(b"DATA")).code == 354
    first.send(body)
    await first.writer.drain()
    end = asyncio.get_running_loop().time() + 10
    while budget.used < 2 * RESERVE_STEP:  # noqa: ASYNC110 (the server's side has no event)
        assert asyncio.get_running_loop().time() < end, budget.used
        await asyncio.sleep(0.01)
    # A declared SIZE that does not fit is refused at DATA, before any byte is sent.
    big = await open_data(port, b"MAIL FROM:<a@sender.test> SIZE=%d" % (2 * RESERVE_STEP))
    reply = await big.cmd(b"DATA")
    assert (reply.code, reply.text[:5]) == (452, "4.3.1"), str(reply)
    # Without SIZE, it is counted while read: refused after the end of data, nothing relayed.
    second = await open_data(port)
    assert (await second.cmd(b"DATA")).code == 354
    second.send(body)
    reply = await second.cmd(b".")
    assert (reply.code, reply.text[:5]) == (452, "4.3.1"), str(reply)
    assert budget.used == 2 * RESERVE_STEP  # the refused one holds nothing
    # The first message is unharmed; once it is through, the budget is free again.
    assert (await first.cmd(b".")).code == 250
    assert budget.used == 0
    assert len(fake_mx.messages) == 1
    assert fake_mx.messages[0].data.endswith(body)
    # And the refused client may try again now.
    assert (await big.cmd(b"RSET")).code == 250
    for client in (first, second, big):
        await client.close()
