# This module reads gauges and health from the service's parts; it changes nothing.
"""Gauge probes and health checks over a running `Service`, for /metrics and /healthz.

Each probe is built only when the part it reads exists (the queue may be off),
and reads through that part's public read API: `Spool.count()` and
`Spool.oldest_arrival()`, `SuppressionStore.count()`, `SessionPool`. Keeping these
look-ups here leaves `metrics.py` free of other modules' shapes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

Probe = Callable[[], float | None]


def _open_sessions(pool: Any) -> float:
    return float(pool.open_count)  # SessionPool.open_count: lent out plus idle


def _oldest_age(spool: Any) -> float:
    # One cursor seek on the spool's arrival index, however long the queue.
    found: datetime | None = spool.oldest_arrival()
    if found is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - found).total_seconds())


def gauge_probes(service: Any) -> dict[str, Probe]:
    probes: dict[str, Probe] = {}
    spool = getattr(service, "spool", None)
    if spool is not None:
        probes["bouncer_queue_messages"] = lambda: float(spool.count()[0])
        probes["bouncer_queue_recipients"] = lambda: float(spool.count()[1])
        probes["bouncer_queue_oldest_age_seconds"] = lambda: _oldest_age(spool)
    store = getattr(service, "store", None)
    if store is not None:
        probes["bouncer_suppression_records"] = lambda: float(store.count()["total"])
        storms = getattr(store, "storms", None)
        if storms is not None:
            clock = getattr(service, "clock", None) or (lambda: datetime.now(UTC))
            probes["bouncer_suppression_storms"] = lambda: float(storms.active(clock()))
            probes["bouncer_suppression_storms_detected"] = lambda: float(store.storms_tripped)
    pool = getattr(getattr(service, "delivery", None), "pool", None)
    if pool is not None:
        probes["bouncer_remote_sessions_open"] = lambda: _open_sessions(pool)
    return probes


def _servers(service: Any) -> list[asyncio.AbstractServer]:
    for name in ("servers", "_servers", "listeners"):
        found = getattr(service, name, None)
        if found:
            return list(found)
    return []


def health_checks(service: Any) -> dict[str, Callable[[], bool]]:
    """store: a read transaction on the suppression store works; listener: SMTP is serving."""
    checks: dict[str, Callable[[], bool]] = {}
    store = getattr(service, "store", None)
    if store is not None:

        def store_ok() -> bool:
            store.count()  # raises StoreError when LMDB cannot be read
            return True

        checks["store"] = store_ok

    def listener_ok() -> bool:
        servers = _servers(service)
        return bool(servers) and all(s.is_serving() for s in servers)

    checks["listener"] = listener_ok
    return checks
