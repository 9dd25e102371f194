# DKIM signing runs in a child process, not on the event loop and not in a thread: an
# RSA-2048 signature plus canonicalisation costs about as much CPU as relaying the message
# itself, and a thread would not help (the loop holds the GIL; a thread waiting to take it
# back after OpenSSL returns stalls for the 5 ms switch interval: measured slower than
# signing inline). The child reads the key files once, answers in order, and keeps nothing.
"""A child process that computes DKIM-Signature headers (relay/outbound/dkim.py).

Wire format, both ways over pipes: a request is the message's length (4 bytes, big-endian)
and the message; an answer is the length of the header block and the block (the
DKIM-Signature lines, empty when no key applies). Answers come in request order. The
child exits when its stdin closes. If it dies, the parent signs in its own process from
then on (slower, never unsigned).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import cast

from relay.config.schema import DkimKeyConfig

log = logging.getLogger(__name__)

LENGTH = struct.Struct(">I")


class _Answers(asyncio.SubprocessProtocol):
    """Reads the child's answers as they arrive and resolves the oldest waiting request."""

    def __init__(self, owner: SignerProcess) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        waiting = self.owner.waiting
        while len(buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer)
            if len(buffer) < LENGTH.size + length:
                return
            block = bytes(buffer[LENGTH.size : LENGTH.size + length])
            del buffer[: LENGTH.size + length]
            if waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(block)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.owner.gone(f"its output closed ({exc or 'end of file'})")

    def process_exited(self) -> None:
        self.owner.gone("it exited")
        if not self.exited.done():
            self.exited.set_result(None)


class SignerProcess:
    """The parent's side: `await sign(message)`; the child starts on first use."""

    def __init__(self, keys: Sequence[DkimKeyConfig], headers: Sequence[str]) -> None:
        self.spec = json.dumps({"keys": [asdict(k) for k in keys], "headers": list(headers)})
        self.transport: asyncio.SubprocessTransport | None = None
        self.protocol: _Answers | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.failed = False
        self._starting: asyncio.Future[None] | None = None

    async def sign(self, message: bytes) -> bytes | None:
        """The DKIM-Signature lines, or None when the child is gone (the caller signs)."""
        if self.stdin is None and not self.failed:
            await self._start()
        if self.failed or self.stdin is None:
            return None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            self.stdin.write(LENGTH.pack(len(message)) + message)
        except (RuntimeError, OSError):  # the child's end is closed: it is gone
            self.gone("its input closed")
            return None
        self.waiting.append(future)
        try:
            return await future
        except ConnectionError:
            return None

    async def _start(self) -> None:
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        try:
            self.transport, self.protocol = await loop.subprocess_exec(
                lambda: _Answers(self),
                sys.executable,
                "-m",
                "relay.outbound.signer_child",
                self.spec,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
            )
            self.stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))
        except OSError as exc:
            log.warning("DKIM signing process did not start (%s); signing in-process", exc)
            self.failed = True
        self._starting.set_result(None)

    def gone(self, why: str) -> None:
        """The child cannot answer any more: the waiting requests sign in-process."""
        if not self.failed:
            log.warning("DKIM signing process ended (%s); signing in-process", why)
        self.failed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("DKIM signing process ended"))

    async def close(self) -> None:
        """Close the child's stdin (it exits) and wait for it."""
        self.failed = True
        transport, self.transport = self.transport, None
        if transport is None or self.protocol is None:
            return
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.protocol.exited), 5)
        except TimeoutError:
            transport.kill()
            await self.protocol.exited
        transport.close()
