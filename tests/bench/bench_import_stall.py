# How long a suppression import through the HTTP API holds up SMTP.
# A RCPT to a suppressed address records the refusal through the one writer thread, so it
# waits behind whatever store write runs there. This prints the slowest such RCPT while a
# 300k-address import runs, and how long the import took. Prints figures, asserts nothing.
"""Usage: python tests/bench/bench_import_stall.py [--rows 300000]

Runs a real Service on uvloop (in process, loopback, port 0, a temporary state
directory); one SMTP client repeats RCPT TO a suppressed address (550 and a store write
each time) while another task POSTs the CSV to /suppressions/import.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime

import aiohttp
import uvloop

from policy.verdict import Category
from relay.config.load import config_from_dict
from relay.observe.api import Api
from relay.service import Service

TOKEN = "bench-token-0123456789abcdef"


async def rcpt_loop(
    host: str, port: int, stop: asyncio.Event, stalls: list[tuple[float, float]]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)

    async def cmd(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        while True:
            reply = await reader.readline()
            if reply[3:4] != b"-":
                return reply

    await reader.readline()
    await cmd(b"EHLO bench.test")
    await cmd(b"MAIL FROM:<app@sender.test>")
    while not stop.is_set():
        started = time.perf_counter()
        reply = await cmd(b"RCPT TO:<stuck@example.test>")
        stalls.append((started, time.perf_counter()))
        assert reply.startswith(b"550"), reply
    writer.close()


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        cfg = config_from_dict(
            {
                "server": {"listen": ["127.0.0.1:0"], "hostname": "relay.test"},
                "store": {"path": state},
                "api": {"listen": "127.0.0.1:0", "token": TOKEN},
                "dns": {"timeout": 1},
                "log": {"file": f"{state}/events.log"},
            }
        )
        svc = Service(cfg)
        await svc.startup()
        try:
            assert svc.store is not None
            svc.store.add("stuck@example.test", Category.BAD_MAILBOX, datetime.now(UTC))
            api = next(c for c in svc.components if isinstance(c, Api))
            body = "".join(f"user{n}@import{n % 97}.test\n" for n in range(rows)).encode()
            host, port = svc.addresses[0][:2]
            samples: list[tuple[float, float]] = []
            stop = asyncio.Event()
            loop_task = asyncio.create_task(rcpt_loop(host, port, stop, samples))
            await asyncio.sleep(1.0)  # RCPT latency with nothing else running
            idle = max(end - start for start, end in samples)
            async with aiohttp.ClientSession() as http:
                begun = time.perf_counter()
                async with http.post(
                    f"http://127.0.0.1:{api.port}/suppressions/import",
                    data=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    result = await resp.json()
                ended = time.perf_counter()
            stop.set()
            await loop_task  # the RCPT in flight when the import ended is recorded too
            during = sorted(e - s for s, e in samples if e > begun and s < ended)
            ms = [round(during[int(len(during) * q)] * 1000, 1) for q in (0.5, 0.99)]
            print(f"import of {rows} rows: {ended - begun:.1f} s, added {result['added']}")
            print(
                f"RCPT (store write) during the import: n={len(during)}, longest "
                f"{during[-1] * 1000:.0f} ms, p99 {ms[1]} ms, median {ms[0]} ms "
                f"(idle: longest {idle * 1000:.1f} ms)"
            )
        finally:
            await svc.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    uvloop.run(main(parser.parse_args().rows))
