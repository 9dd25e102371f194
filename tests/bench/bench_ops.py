# Cost of the operators' subscribers per event: log formatting and writing, metrics, counters.
# Run: python tests/bench/bench_ops.py   (prints figures; not collected by pytest)
from __future__ import annotations

import io
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policy.decide import Disposition
from policy.reply import Reply  # noqa: E402
from policy.verdict import BounceClass, Category, Verdict  # noqa: E402
from relay.config.load import LogConfig  # noqa: E402
from relay.observe.counters import StatsCounters  # noqa: E402
from relay.observe.events import RecipientEvent  # noqa: E402
from relay.observe.logfmt import format_lines  # noqa: E402
from relay.observe.logsink import LogWriter  # noqa: E402
from relay.observe.metrics import Metrics  # noqa: E402
from relay.store.env import open_state  # noqa: E402

N = 50_000


def events() -> list[RecipientEvent]:
    hard = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "x.1.1")
    now = datetime.now(UTC)
    return [
        RecipientEvent(
            queue_id="3F2A1B9C0D4E",
            recipient=f"user{i}@domain{i % 50}.example",
            status=Disposition.BOUNCED if i % 10 == 0 else Disposition.DELIVERED,
            reply=Reply(550, "5.1.1", "User unknown", "mx.example.com[192.0.2.1]")
            if i % 10 == 0
            else Reply(250, "2.0.0", "Ok", "mx.example.com[192.0.2.1]"),
            when=now,
            relay="mx.example.com[192.0.2.1]:25",
            stage="RCPT",
            delay=0.41,
            delays=(0.0, 0.0, 0.2, 0.21),
            verdict=hard if i % 10 == 0 else None,
            sender="news@example.org",
        )
        for i in range(N)
    ]


def rate(label: str, fn: object, evs: list[RecipientEvent]) -> None:
    start = time.perf_counter()
    for ev in evs:
        fn(ev)  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    print(f"{label:42} {N / elapsed:12,.0f} events/s  {1e6 * elapsed / N:7.2f} us/event")


def main() -> None:
    evs = events()
    rate("format postfix (pure)", lambda e: format_lines(e, "postfix", "h", 1), evs)
    rate("format json (pure)", lambda e: format_lines(e, "json", "h", 1), evs)
    with tempfile.TemporaryDirectory() as tmp:
        writer = LogWriter(LogConfig(file=f"{tmp}/mail.log"), stderr=io.StringIO())
        rate("LogWriter postfix: file + stream", writer, evs)
        writer.close()
        rate("Metrics subscriber", Metrics(), evs)
        env = open_state(f"{tmp}/state", 1 << 28)
        counters = StatsCounters(env)
        rate("StatsCounters (in memory)", counters, evs)
        start = time.perf_counter()
        pending = len(counters._pending)
        counters.flush()
        print(
            f"{'StatsCounters flush (1 txn, fsync)':42} {pending} keys in "
            f"{1000 * (time.perf_counter() - start):.1f} ms"
        )
        env.close()


if __name__ == "__main__":
    main()
