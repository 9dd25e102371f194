"""Benchmark draining the retry queue through the real delivery path
(run: python tests/bench/bench_queue_drain.py [N] [MAX_CONCURRENT]).

N messages of 10 KiB, one recipient each, are queued and made due; the retry
scheduler (RetryWorker, as `bouncer serve` runs it) delivers them through
relay.service.build_delivery (routes, session pool with reuse, aiosmtplib) to a
fake MX on loopback. Prints messages/s, remote connections used, and checks
every message arrived exactly once.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policy.classify.classify import classify  # noqa: E402
from policy.reply import Reply  # noqa: E402
from relay.config.load import config_from_dict  # noqa: E402
from relay.observe.events import EventBus  # noqa: E402
from relay.queue.queue import Spool, SpoolMessage  # noqa: E402
from relay.queue.scheduler import RetryWorker, RunnerSettings  # noqa: E402
from relay.store.env import open_state  # noqa: E402
from relay.store.writer import Writer  # noqa: E402
from relay.wiring import build_delivery  # noqa: E402
from tests.support.fake_mx import FakeMX  # noqa: E402

SOFT = Reply(452, "4.2.2", "Mailbox full")
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 128  # 10 KiB in 80-octet lines


async def main(n: int, max_concurrent: int) -> None:
    async with FakeMX() as mx:
        cfg = config_from_dict(
            {
                "delivery": {
                    "starttls": "off",
                    "routes": {"b.example": f"127.0.0.1:{mx.port}"},
                    "max_sessions_per_destination": 10,
                }
            }
        )
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            spool = Spool(open_state(tmp, 1 << 30))
            t0 = datetime.now(UTC)
            for i in range(n):
                rcpt = ((f"r{i}@b.example", SOFT),)
                spool.accept(SpoolMessage(f"B{i:08d}", "a@a.example", BODY, t0, rcpt), t0)
            spool.retry_now(None, t0)
            writer = Writer()
            delivery = build_delivery(cfg)
            worker = RetryWorker(
                spool,
                delivery.deliver_message,
                classify,
                None,
                EventBus(),
                writer.run,
                RunnerSettings((timedelta(hours=1),), max_concurrent, per_domain=5),
            )
            start = time.perf_counter()
            while spool.count()[0]:
                await worker.run_once(datetime.now(UTC))
                await asyncio.sleep(0.01)  # the runner's poll, shortened
            await worker.drain(30)
            took = time.perf_counter() - start
            await delivery.pool.close()
            writer.close()
    got = sorted(r for m in mx.messages for r in m.rcpt_tos)
    assert got == sorted(f"r{i}@b.example" for i in range(n)), "lost or duplicated"
    print(
        f"drained {n} queued messages in {took:.2f} s: {n / took:.0f} messages/s "
        f"(max_concurrent={max_concurrent}, per_domain=5), "
        f"{mx.connections} remote connection(s), each delivered exactly once"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 300, args[1] if len(args) > 1 else 20))
