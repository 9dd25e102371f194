# The DKIM private-key operation runs in a child process, not on the event loop and not in
# a thread: an RSA-2048 signature costs about as much CPU as relaying the message itself,
# and a thread would not help (the loop holds the GIL; a thread waiting to take it back
# after OpenSSL returns stalls for the 5 ms switch interval, measured slower than inline).
# The child reads the key files once and answers digests in order; it never touches mail.
"""A child process that signs SHA-256 digests with the DKIM keys (relay/outbound/dkim.py).

Wire format, both ways over pipes: a request is the key's index (1 byte) and the digest
(32 bytes); an answer is the signature's length (2 bytes, big-endian) and the signature.
Answers come in request order. The child exits when its stdin closes. If it dies, the
parent signs in its own process from then on (slower, never unsigned).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

_REQUEST = struct.Struct(">B32s")
_ANSWER = struct.Struct(">H")


class SignerProcess:
    """The parent's side: `await sign(index, digest)`; started on first use."""

    def __init__(self, key_specs: Sequence[tuple[str, str]]) -> None:
        self.key_specs = list(key_specs)  # (key_file, algorithm), indexed as the keys are
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.failed = False
        self._starting: asyncio.Future[None] | None = None

    async def sign(self, index: int, digest: bytes) -> bytes | None:
        """The signature, or None when the child is gone (the caller signs itself)."""
        if self.failed:
            return None
        if self.proc is None:
            await self._start()
            if self.failed:
                return None
        assert self.proc is not None and self.proc.stdin is not None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            self.proc.stdin.write(_REQUEST.pack(index, digest))
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
        args = [f"{algorithm}:{path}" for path, algorithm in self.key_specs]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.outbound.signer_process",
                *args,
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
                (length,) = _ANSWER.unpack(await stdout.readexactly(_ANSWER.size))
                signature = await stdout.readexactly(length)
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(signature)
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


def _serve(specs: Sequence[str]) -> int:
    from relay.outbound.dkim import load_key

    keys = []
    for spec in specs:
        algorithm, _, path = spec.partition(":")
        keys.append(load_key("-", "-", path, algorithm))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while request := stdin.read(_REQUEST.size):
        if len(request) != _REQUEST.size:
            return 1
        index, digest = _REQUEST.unpack(request)
        signature = keys[index].sign_digest(digest)
        stdout.write(_ANSWER.pack(len(signature)) + signature)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
