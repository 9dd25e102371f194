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
import sys
from collections.abc import Sequence
from dataclasses import asdict

from relay.config.schema import DkimKeyConfig

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


class SignerProcess:
    """The parent's side: `await sign(index, digest)`; started on first use."""

    def __init__(self, keys: Sequence[DkimKeyConfig], headers: Sequence[str]) -> None:
        self.spec = json.dumps({"keys": [asdict(k) for k in keys], "headers": list(headers)})
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.failed = False
        self._starting: asyncio.Future[None] | None = None

    async def sign(self, message: bytes) -> bytes | None:
        """The DKIM-Signature lines, or None when the child is gone (the caller signs)."""
        if self.failed:
            return None
        if self.proc is None:
            await self._start()
            if self.failed:
                return None
        assert self.proc is not None and self.proc.stdin is not None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            self.proc.stdin.write(_LENGTH.pack(len(message)))
            self.proc.stdin.write(message)
        except (RuntimeError, OSError):  # the child's end is closed: it is gone
            self.failed = True
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
        self._starting = asyncio.get_running_loop().create_future()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.outbound.signer_process",
                self.spec,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("DKIM signing process did not start (%s); signing in-process", exc)
            self.failed = True
        else:
            self.reader = asyncio.create_task(self._read())
        self._starting.set_result(None)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                (length,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
                block = await stdout.readexactly(length) if length else b""
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(block)
        except (asyncio.IncompleteReadError, IndexError, ConnectionError) as exc:
            if not self.failed:
                log.warning("DKIM signing process ended (%r); signing in-process", exc)
        finally:
            self.failed = True
            while self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_exception(ConnectionError("DKIM signing process ended"))

    async def close(self) -> None:
        """Close the child's stdin (it exits) and wait for it."""
        self.failed = True
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.reader is not None:
            await self.reader


def _serve(spec: str) -> int:
    from relay.outbound.dkim import DkimSigner, load_key

    table = json.loads(spec)
    keys = [
        load_key(k["domain"], k["selector"], k["key_file"], k["algorithm"]) for k in table["keys"]
    ]
    signer = DkimSigner(keys, table["headers"])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(_LENGTH.size):
        if len(header) != _LENGTH.size:
            return 1
        (length,) = _LENGTH.unpack(header)
        message = stdin.read(length)
        if len(message) != length:
            return 1
        block = signer.signatures(message)
        stdout.write(_LENGTH.pack(len(block)) + block)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
