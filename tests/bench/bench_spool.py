"""Benchmark the retry queue's durable operations (run: python tests/bench/bench_spool.py [N]).

Prints, for N messages of 10 KiB with one soft-failed recipient each:
- accept: the fsync'd commit a client waits for before its 250 (median, p99, per second);
- lease + settle: the scheduler's two write transactions per retried message;
- list: a full `queue list` scan.
Uses a temporary state directory on the same filesystem as /tmp.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policy.decide import Disposition  # noqa: E402
from policy.reply import Reply  # noqa: E402
from relay.queue.queue import Attempt, Settlement, Spool, SpoolMessage  # noqa: E402
from relay.store.env import open_state  # noqa: E402

SOFT = Reply(452, "4.2.2", "Mailbox full", "mx.example[192.0.2.1]")
OK = Reply(250, "2.0.0", "Ok", "mx.example[192.0.2.1]")
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 128  # 10 KiB in 80-octet lines


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"median {statistics.median(values) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"


def main(n: int) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        spool = Spool(open_state(tmp, 1 << 30))
        now = datetime.now(UTC)
        lat: list[float] = []
        start = time.perf_counter()
        for i in range(n):
            msg = SpoolMessage(f"B{i:08d}", "a@a.example", BODY, now, ((f"r{i}@b.example", SOFT),))
            t = time.perf_counter()
            spool.accept(msg, now)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        print(f"accept x{n} (10 KiB, fsync): {_ms(lat)}, {n / total:.0f}/s")

        t = time.perf_counter()
        rows = spool.messages()
        print(f"list of {len(rows)} messages: {(time.perf_counter() - t) * 1e3:.1f} ms")

        later = now + timedelta(hours=1)
        start = time.perf_counter()
        done = 0
        lease_lat: list[float] = []
        settle_lat: list[float] = []
        while True:
            t = time.perf_counter()
            leases = spool.lease_due(later, 20, "bench", later + timedelta(minutes=10))
            lease_lat.append(time.perf_counter() - t)
            if not leases:
                break
            for lease in leases:
                results = [
                    Settlement(r.recipient, Disposition.DELIVERED, Attempt(later, OK))
                    for r in lease.message.recipients
                ]
                t = time.perf_counter()
                spool.settle(lease.message.queue_id, results, later)
                settle_lat.append(time.perf_counter() - t)
                done += 1
        total = time.perf_counter() - start
        print(f"lease (batches of 20): {_ms(lease_lat)}")
        print(f"settle (delivered): {_ms(settle_lat)}; {done / total:.0f} messages/s retried")
        assert spool.count() == (0, 0)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
