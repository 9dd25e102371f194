# This module keeps the bounce-rate counters in LMDB; what each outcome adds is policy/rates.py's.
"""Bounce-rate counters per UTC day and recipient domain, in the shared LMDB environment.

Events are counted in memory on the loop and written in batches (one write
transaction per `flush_interval`, run on the service's writer thread), so no event ever
waits for an fsync. A crash loses at most the last interval's counts, which
is acceptable for statistics and never for mail. Several worker processes
each add their own batch: the read-modify-write happens inside LMDB's
write transaction, which is serialised across processes.

Layout: named DB "stats", key "YYYY-MM-DD|domain", value a JSON object of
the counters in `policy.rates.COUNTER_NAMES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
from datetime import date
from typing import Any

import lmdb

from policy.rates import (
    COUNTER_NAMES,
    Counts,
    GroupBy,
    Phase,
    aggregate,
    day_of,
    domain_of,
    increment,
    key_fields,
)
from relay.observe.events import Event, EventBus, RecipientEvent
from relay.observe.logfmt import REPORT_STAGES
from relay.store.writer import Writer

log = logging.getLogger(__name__)

STATS_DB = b"stats"


def phase_of(event: RecipientEvent) -> Phase:
    """live, retry (from the queue) or report (an asynchronous DSN/ARF read by the intake)."""
    if event.stage.upper() in REPORT_STAGES:
        return "report"
    return "retry" if event.attempt > 0 else "live"


def _key(day: date, domain: str) -> bytes:
    return f"{day.isoformat()}|{domain}".encode()


def _parse_key(key: bytes) -> tuple[date, str]:
    day, _, domain = key.decode().partition("|")
    return date.fromisoformat(day), domain


class StatsCounters:
    """EventBus subscriber and Service component that keeps the counters."""

    def __init__(
        self,
        env: lmdb.Environment,
        flush_interval: float = 1.0,
        *,
        events: EventBus | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.events = events
        self.env = env
        self.flush_interval = flush_interval
        self._db = env.open_db(STATS_DB, create=True)
        self._pending: dict[tuple[date, str], Counts] = {}
        self._task: asyncio.Task[None] | None = None
        self._writer = writer  # the service's single LMDB writer thread (relay/store/writer.py)

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RecipientEvent):
            return
        klass = event.verdict.klass if event.verdict else None
        add = increment(str(event.status), klass, phase_of(event), event.notice)
        key = (day_of(event.when), domain_of(event.recipient))
        self._pending[key] = self._pending.get(key, Counts()) + add

    def take_pending(self) -> dict[tuple[date, str], Counts]:
        pending, self._pending = self._pending, {}
        return pending

    def write(self, batch: dict[tuple[date, str], Counts]) -> None:
        """Add `batch` to the stored counters in one write transaction (blocking)."""
        if not batch:
            return
        with self.env.begin(write=True, db=self._db) as txn:
            for (day, domain), add in batch.items():
                raw = txn.get(_key(day, domain))
                old = Counts.from_dict(json.loads(raw)) if raw else Counts()
                txn.put(_key(day, domain), json.dumps((old + add).as_dict()).encode())

    def flush(self) -> None:
        """Write what was counted so far (blocking; used at stop and by tests)."""
        self.write(self.take_pending())

    async def flush_async(self) -> None:
        batch = self.take_pending()
        if not batch:
            return
        try:
            if self._writer is not None:
                await self._writer.run(self.write, batch)
            else:
                await asyncio.get_running_loop().run_in_executor(None, self.write, batch)
        except (lmdb.Error, OSError) as exc:
            log.error("stats counters not written, retrying next interval: %s", exc)
            for key, add in batch.items():  # keep them for the next attempt
                self._pending[key] = self._pending.get(key, Counts()) + add

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_async()

    async def start(self) -> None:
        if self.events is not None:
            self.events.subscribe(self)
        self._task = asyncio.create_task(self._run(), name="stats-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush_async()


def read_rows(env: lmdb.Environment) -> list[tuple[date, str, Counts]]:
    """Every stored (day, domain, counts) row; none when no counter was ever written."""
    try:
        db = env.open_db(STATS_DB, create=False)
    except lmdb.NotFoundError:
        return []
    rows: list[tuple[date, str, Counts]] = []
    with env.begin(db=db) as txn:
        for key, raw in txn.cursor():
            day, domain = _parse_key(bytes(key))
            rows.append((day, domain, Counts.from_dict(json.loads(bytes(raw)))))
    return rows


def read_stats(
    env: lmdb.Environment,
    since: date,
    by: GroupBy,
    until: date | None = None,
    domain: str | None = None,
) -> list[tuple[str, Counts]]:
    """The one query behind `bouncer stats` and the API's GET /stats."""
    return aggregate(read_rows(env), by, since, until, domain)


def _rates(counts: Counts) -> dict[str, float | None]:
    return {
        "hard_rate": counts.hard_rate,
        "soft_rate": counts.soft_rate,
        "refused_rate": counts.refused_rate,
    }


def stats_document(
    rows: list[tuple[str, Counts]],
    by: GroupBy,
    since: date,
    until: date | None = None,
    domain: str | None = None,
) -> dict[str, Any]:
    """The JSON shape both the CLI (--format json) and the API return."""
    return {
        "since": since.isoformat(),
        "until": None if until is None else until.isoformat(),
        "domain": domain,
        "by": by,
        "rows": [
            {"key": key, **key_fields(key, by), **counts.as_dict(), **_rates(counts)}
            for key, counts in rows
        ],
    }


def stats_csv(rows: list[tuple[str, Counts]], by: GroupBy) -> str:
    """The same rows as CSV (CLI --format csv, GET /stats?format=csv): a header, no total;
    rates as fractions with 4 decimals, empty when nothing was sent."""
    head = [*(by.split(",") if by != "total" else ["total"]), *COUNTER_NAMES]
    head += ["hard_rate", "soft_rate", "refused_rate"]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(head)
    for key, counts in rows:
        keys = list(key_fields(key, by).values()) or [key]
        rates = ["" if r is None else f"{r:.4f}" for r in _rates(counts).values()]
        out.writerow([*keys, *(getattr(counts, n) for n in COUNTER_NAMES), *rates])
    return buf.getvalue()
