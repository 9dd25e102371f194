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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from policy.suppression.store import SuppressionStore
from relay.outbound.pool import SessionPool
from relay.queue.queue import Spool

log = logging.getLogger(__name__)

Probe = Callable[[], float | None]


def _oldest_age(spool: Spool) -> float:
    # One cursor seek on the spool's arrival index, however long the queue.
    found = spool.oldest_arrival()
    if found is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - found).total_seconds())


def gauge_probes(
    spool: Spool | None,
    store: SuppressionStore | None,
    pool: SessionPool | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Probe]:
    probes: dict[str, Probe] = {}
    if spool is not None:
        probes["bouncer_queue_messages"] = lambda: float(spool.count()[0])
        probes["bouncer_queue_recipients"] = lambda: float(spool.count()[1])
        probes["bouncer_queue_oldest_age_seconds"] = lambda: _oldest_age(spool)
    if store is not None:
        probes["bouncer_suppression_records"] = lambda: float(store.count()["total"])
        storms = store.storms
        probes["bouncer_suppression_storms"] = lambda: float(storms.active(clock()))
        probes["bouncer_suppression_storms_detected"] = lambda: float(store.storms_tripped)
    if pool is not None:
        # SessionPool.open_count: lent out plus idle
        probes["bouncer_remote_sessions_open"] = lambda: float(pool.open_count)
    return probes


def health_checks(
    store: SuppressionStore | None, servers: Sequence[asyncio.AbstractServer]
) -> dict[str, Callable[[], bool]]:
    """store: a read transaction on the suppression store works; listener: SMTP (and LMTP)
    is serving.

    `servers` is read at each check (the service's list, filled before components start).
    """
    checks: dict[str, Callable[[], bool]] = {}
    if store is not None:

        def store_ok() -> bool:
            store.count()  # raises StoreError when LMDB cannot be read
            return True

        checks["store"] = store_ok

    def listener_ok() -> bool:
        return bool(servers) and all(s.is_serving() for s in servers)

    checks["listener"] = listener_ok
    return checks
