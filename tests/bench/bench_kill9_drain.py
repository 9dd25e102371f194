"""Duplicates after `kill -9` during queue delivery.

Run: python tests/bench/bench_kill9_drain.py [--messages 500] [--kill-after 150] [--runs 3]

N messages (one recipient each, 10 KiB) are queued in a fresh state directory and
made due; `bouncer serve` (the real process, on uvloop, routing b.example to a fake
MX on loopback) drains them. When the fake MX has accepted `--kill-after` messages
the server is killed with SIGKILL; a second `bouncer serve` on the same state
finishes the drain and is stopped with SIGTERM. The script then counts deliveries
per recipient at the fake MX: duplicates = deliveries - distinct recipients. It
also checks nothing was lost (every recipient delivered, the queue empty) and
prints what the restarted server logged about recipients left in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policy.reply import Reply  # noqa: E402
from relay.queue.queue import Spool, SpoolMessage  # noqa: E402
from relay.store.env import open_state  # noqa: E402
from tests.support.fake_mx import FakeMX  # noqa: E402
from tests.support.postfix import free_port  # noqa: E402
from tests.support.serve import default_table, to_toml  # noqa: E402

SOFT = Reply(452, "4.2.2", "Mailbox full")
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 128


def queue_messages(state: Path, n: int) -> None:
    env = open_state(state, 1 << 30)
    spool = Spool(env)
    now = datetime.now(UTC)
    for i in range(n):
        spool.accept(
            SpoolMessage(f"K{i:06d}", "a@a.example", BODY, now, ((f"r{i}@b.example", SOFT),)), now
        )
    spool.retry_now(None, now)
    env.close()


def queue_count(state: Path) -> tuple[int, int]:
    env = open_state(state, 1 << 30)
    try:
        return Spool(env).count()
    finally:
        env.close()


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - kept open by the child
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def until(cond: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - FakeMX records; it signals nothing
            await asyncio.sleep(0.002)


async def one_run(n: int, kill_after: int, base: Path) -> tuple[int, int, str]:
    """(deliveries, distinct recipients, what the restart logged about the kill)."""
    state = base / "state"
    queue_messages(state, n)
    async with FakeMX() as mx:
        table = default_table(base, free_port())
        table["delivery"]["routes"] = {"b.example": f"127.0.0.1:{mx.port}"}
        table["queue"] = {"poll_interval": 0.2}
        config = base / "bouncer.toml"
        config.write_text(to_toml(table))
        log = base / "output"
        proc = start(config, log)
        await until(lambda: len(mx.messages) >= kill_after, 120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await asyncio.sleep(0.2)  # replies the remote sent before the kill are all counted
        proc = start(config, log)
        got = lambda: {r for m in mx.messages for r in m.rcpt_tos}  # noqa: E731
        await until(lambda: len(got()) >= n, 180)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        deliveries = collections.Counter(r for m in mx.messages for r in m.rcpt_tos)
    assert queue_count(state) == (0, 0), "the queue is not empty after the drain"
    assert set(deliveries) == {f"r{i}@b.example" for i in range(n)}, "lost a message"
    lines = log.read_text().splitlines()
    said = [ln.split(": ", 1)[-1] for ln in lines if "in flight at the last stop" in ln]
    named = sum("being delivered when bouncer stopped" in ln for ln in lines)
    said.append(f"{named} recipient(s) named as possibly delivered already")
    return sum(deliveries.values()), len(deliveries), "; ".join(said)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--kill-after", type=int, default=150)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    dups = []
    for run in range(a.runs):
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            total, distinct, said = asyncio.run(one_run(a.messages, a.kill_after, Path(tmp)))
        dups.append(total - distinct)
        dup = total - distinct
        print(f"run {run + 1}: {total} deliveries of {distinct} messages: {dup} duplicate(s)")
        if said:
            print(f"    restart logged: {said}")
    print(f"duplicates per {a.messages} after kill -9: {dups} (none lost)")


if __name__ == "__main__":
    main()
