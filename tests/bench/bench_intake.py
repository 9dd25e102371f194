# Intake figures: parse throughput over the Sisimai corpus, and late DSNs per second through
# the intake listener (SMTP on loopback, parse, LMDB store write with fsync, event).
"""python tests/bench/bench_intake.py [--messages N] [--clients C]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policy.bounces.parse import parse_bounce  # noqa: E402
from policy.suppression.escalate import SuppressionRules  # noqa: E402
from policy.suppression.store import SuppressionStore  # noqa: E402
from policy.verp import VerpKey, encode  # noqa: E402
from relay.config.load import config_from_dict  # noqa: E402
from relay.intake.listener import Intake  # noqa: E402
from relay.observe.events import EventBus  # noqa: E402
from relay.store.env import open_state  # noqa: E402
from relay.store.writer import Writer  # noqa: E402
from tests.support import bounce_samples as samples  # noqa: E402
from tests.support.sisimai import corpus_dir  # noqa: E402

SECRET = "bench-secret-0123456789"
DOMAIN = "bounces.sender.example"


def bench_parse() -> None:
    corpus = corpus_dir()
    if corpus is None:
        print("parse: corpus not found, skipped")
        return
    emails = [p.read_bytes() for p in sorted((corpus / "emails").glob("*.eml"))]
    parse_bounce(emails[0])  # compile the tables
    start = time.perf_counter()
    for data in emails:
        parse_bounce(data)
    elapsed = time.perf_counter() - start
    size = sum(map(len, emails)) / len(emails)
    print(
        f"parse: {len(emails)} corpus emails in {elapsed:.2f} s = {len(emails) / elapsed:.0f} "
        f"emails/s (mean {size / 1024:.1f} KiB)"
    )


async def bench_intake(messages: int, clients: int) -> None:
    key = VerpKey.from_settings("bounces", DOMAIN, SECRET)
    config = config_from_dict(
        {
            "verp": {"enabled": True, "bounce_domain": DOMAIN, "secret": SECRET},
            "intake": {"listen": "127.0.0.1:0"},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = open_state(Path(tmp) / "state", 1 << 28)
        writer = Writer()
        store = SuppressionStore(env, SuppressionRules())
        intake = Intake(config, store, EventBus(), write=writer.run)
        await intake.start()
        latencies: list[float] = []

        async def client(n: int) -> None:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=intake.port)
            await smtp.connect()
            for i in range(n, messages, clients):
                rcpt = f"user{i}@dest.example"
                data = samples.rfc3464(recipient=rcpt)
                t = time.perf_counter()
                await smtp.mail("")
                await smtp.rcpt(encode(key, rcpt, f"Q{i}", datetime.now(UTC)))
                await smtp.data(data)
                latencies.append(time.perf_counter() - t)
            await smtp.quit()

        start = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - start
        await intake.stop()
        writer.close()
        count = store.count()
        env.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"intake: {messages} late DSNs over {clients} connections in {elapsed:.2f} s = "
        f"{messages / elapsed:.0f} msg/s; latency median {statistics.median(latencies) * 1000:.1f}"
        f" ms, p99 {p99 * 1000:.1f} ms; store counts {count}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    bench_parse()
    asyncio.run(bench_intake(args.messages, args.clients))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
