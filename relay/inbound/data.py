# Reads one message's DATA from the client into one buffer, within the memory budget. It only
# reads and accounts: what the message may contain, and the replies, are relay/inbound/server.py's.
"""DATA in, held once: the budget for message bytes in flight, and the reader that fills it.

aiosmtpd's own DATA loop keeps every line as its own bytearray (about twice the message in
objects) and then joins them into a third copy. Here the lines go straight into one
bytearray, dot-unstuffed as they come (RFC 5321 §4.5.2), and every byte held is reserved
from a `DataBudget` shared by all transactions, so many large messages at once get
`452 4.3.1` instead of taking the process past its memory.
"""

from __future__ import annotations

import asyncio
import enum

# How much more to reserve from the budget each time the buffer outgrows its reservation:
# one reservation per MiB read, not one per line.
RESERVE_STEP = 1 << 20


class DataBudget:
    """Bytes of message data held at once by all transactions together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take `size` bytes of the budget; False (and nothing taken) when they are not free."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


class DataState(enum.Enum):
    COMPLETE = "complete"
    TOO_LONG = "too long"  # a line over the limit: 500 (RFC 5321 §4.5.3.1.6)
    TOO_MUCH = "too much"  # over max_message_size: 552 (RFC 1870)
    OVER_BUDGET = "over budget"  # no memory to hold it: 452 4.3.1


class Reservation:
    """One transaction's share of the budget; grows as its message does, freed in one go."""

    def __init__(self, budget: DataBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> bool:
        """Hold at least `size` bytes (in RESERVE_STEP steps); False when the budget is spent."""
        if size <= self.size:
            return True
        want = max(size, self.size + RESERVE_STEP)
        if not self.budget.reserve(want - self.size):
            if not self.budget.reserve(size - self.size):
                return False
            want = size
        self.size = want
        return True

    def release(self) -> None:
        self.budget.release(self.size)
        self.size = 0


async def read_data(
    reader: asyncio.StreamReader,
    *,
    size_limit: int,
    line_limit: int,
    reservation: Reservation,
) -> tuple[DataState, bytearray]:
    """Read up to the lone "." line; the dot-unstuffed message and how the reading went.

    Whatever the state, the whole of DATA is read (RFC 5321 §4.2.5: the reply comes after
    the end of data); once the state is not COMPLETE the bytes are dropped as they come.
    """
    buf = bytearray()
    state = DataState.COMPLETE
    received = 0
    at_line_start = True
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            # A line longer than the reader's limit: drop what is buffered, keep draining.
            line = await reader.read(exc.consumed)
            if state is DataState.COMPLETE:
                state = DataState.TOO_LONG
        complete = line.endswith(b"\r\n")
        if at_line_start and line == b".\r\n":
            break
        received += len(line)
        if state is DataState.COMPLETE:
            if received > size_limit:
                state = DataState.TOO_MUCH
            elif complete and at_line_start and len(line) > line_limit:
                state = DataState.TOO_LONG
            elif not reservation.grow_to(received):
                state = DataState.OVER_BUDGET
        if state is DataState.COMPLETE:
            if at_line_start and line.startswith(b"."):
                buf += memoryview(line)[1:]  # RFC 5321 §4.5.2: the client doubled this dot
            else:
                buf += line
        elif reservation.size:
            buf = bytearray()  # nothing more is kept once the message cannot be accepted
            reservation.release()
        at_line_start = complete
    return state, buf
