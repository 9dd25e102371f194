# Benchmark: bouncer's peak RSS while large messages are in flight at once.
# Prints figures; asserts nothing. Run:
#
#     python tests/bench/bench_memory.py                      # 8 clients x 30 MB, default budget
#     python tests/bench/bench_memory.py --budget 134217728   # a smaller [server] budget
#
# Not collected by pytest (bench_*.py). Loopback only; needs no root and no Postfix.
"""Peak RSS of `bouncer serve` with N concurrent clients each sending one large message.

`bouncer serve` (on uvloop, as deployed) relays to a sink in this process that reads and
discards; the N clients write their messages at the same moment. The figures are the
kernel's VmRSS of the serve process before, VmHWM (its peak) after, VmRSS after, and the
replies the clients got (250, or 452 4.3.1 when the budget is spent).
To compare with an older tree: `git archive <commit> | tar -x -C /tmp/old` and run
`python tests/bench/bench_memory.py --server-tree /tmp/old` (the server's code comes from there).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.serve import bouncer_process  # noqa: E402

LINE = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"


class Sink(asyncio.Protocol):
    """A remote that takes anything: 250 to every command, 250 at the end of DATA."""

    messages = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.in_data = False
        self.transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end == -1:
                    self.buffer = self.buffer[-4:]  # the tail may start the terminator
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                Sink.messages += 1
                self.transport.write(b"250 2.0.0 Ok: queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250-sink\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # the terminator may follow at once
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")


def status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


async def client(port: int, message: bytes, start: asyncio.Event) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def cmd(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        while True:
            reply = await reader.readline()
            if reply[3:4] != b"-":
                return reply

    await reader.readline()
    await cmd(b"EHLO bench.test")
    await cmd(b"MAIL FROM:<bench@sender.test>")
    await cmd(b"RCPT TO:<rcpt@sink.test>")
    await start.wait()
    reply = await cmd(b"DATA")
    if reply.startswith(b"354"):
        writer.write(message)
        reply = await cmd(b".")
    await cmd(b"QUIT")
    writer.close()
    return reply.decode().strip()[:9]


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(Sink, "127.0.0.1", 0)
    sink_port = sink.sockets[0].getsockname()[1]
    body = b"Subject: bench\r\n\r\n" + LINE * (args.size // len(LINE))
    server: dict[str, int | str] = {"max_clients": 100}
    if args.budget:
        server["max_data_in_flight"] = args.budget
    table = {
        "server": server,
        "delivery": {"routes": {"sink.test": f"127.0.0.1:{sink_port}"}},
        "log": {"level": "WARNING"},
    }
    tree = Path(args.server_tree or ROOT)
    with tempfile.TemporaryDirectory() as tmp, bouncer_process(Path(tmp), table, tree) as b:
        pid = b.proc.pid
        before = status(pid)["VmRSS"]
        start = asyncio.Event()
        clients = [asyncio.ensure_future(client(b.port, body, start)) for _ in range(args.clients)]
        await asyncio.sleep(0.5)  # every client connected and at DATA
        began = time.monotonic()
        start.set()
        replies = await asyncio.gather(*clients)
        took = time.monotonic() - began
        after = status(pid)
    sink.close()
    mib = 1 << 20
    print(
        f"{args.clients} clients x {len(body) / 1e6:.1f} MB, budget "
        f"{args.budget or 'default'}: RSS before {before / mib:.0f} MiB, peak (VmHWM) "
        f"{after['VmHWM'] / mib:.0f} MiB, after {after['VmRSS'] / mib:.0f} MiB; "
        f"{took:.1f} s; replies {dict(collections.Counter(replies))}; "
        f"sink got {Sink.messages}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=30_000_000, help="message bytes")
    parser.add_argument("--budget", type=int, default=0, help="[server] max_data_in_flight")
    parser.add_argument("--server-tree", help="run `bouncer serve` from this checkout")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
