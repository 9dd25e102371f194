# The storm breaker of docs/behaviour.md#suppression-policy: which remote domains are answering
# hard for too many addresses at once. In memory, per process; `now` passed in, no I/O.
"""Storm detection per recipient domain.

A remote domain is in a storm while, within `storm_window` seconds, its hard
verdicts cover at least `storm_min` distinct addresses and make up at least
half of its attempts (hard, soft, other verdicts and deliveries). A hard
verdict from a domain in a storm suppresses for `storm_suppress_hours` only
and is marked `storm`; an operator confirms or releases those records.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from policy.suppression.lookup import SuppressionRules


@dataclass(frozen=True, slots=True)
class Trip:
    """A domain that has just entered a storm: for the log line and the metric."""

    domain: str
    addresses: frozenset[str]  # the distinct addresses answered hard within the window
    hard: int
    attempts: int
    window_start: float  # epoch seconds


@dataclass
class StormTracker:
    rules: SuppressionRules
    _seen: dict[str, deque[tuple[float, str, bool]]] = field(default_factory=dict)
    _on: set[str] = field(default_factory=set)
    _ops: int = 0
    # Deliveries are noted on the event loop, verdicts in the writer thread.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, domain: str, address: str, hard: bool, now: datetime) -> Trip | None:
        """Count one attempt's outcome; a Trip when this one puts `domain` into a storm."""
        with self._lock:
            return self._observe(domain, address, hard, now.timestamp())

    def _observe(self, domain: str, address: str, hard: bool, ts: float) -> Trip | None:
        events = self._seen.setdefault(domain, deque())
        events.append((ts, address, hard))
        self._prune(events, ts)
        self._ops += 1
        if self._ops % 1024 == 0:
            self._forget_quiet(ts)
        if not hard and domain not in self._on:
            return None  # a delivery or a soft verdict cannot start a storm
        hard_addrs = {a for _t, a, h in events if h}
        n_hard = sum(1 for _t, _a, h in events if h)
        storming = len(hard_addrs) >= self.rules.storm_min and 2 * n_hard >= len(events)
        if not storming:
            self._on.discard(domain)
            return None
        if domain in self._on:
            return None
        self._on.add(domain)
        return Trip(domain, frozenset(hard_addrs), n_hard, len(events), events[0][0])

    def in_storm(self, domain: str) -> bool:
        return domain in self._on

    def active(self, now: datetime) -> int:
        """How many remote domains are in a storm at `now`: a storm whose last verdict is
        older than the window is over, even before the next attempt says so."""
        ts = now.timestamp()
        with self._lock:
            return sum(
                1
                for d in self._on
                if self._seen.get(d) and ts - self._seen[d][-1][0] <= self.rules.storm_window
            )

    def _prune(self, events: deque[tuple[float, str, bool]], ts: float) -> None:
        while events and ts - events[0][0] > self.rules.storm_window:
            events.popleft()

    def _forget_quiet(self, ts: float) -> None:
        """Drop domains with nothing inside the window, so memory follows recent traffic."""
        for domain in [
            d for d, ev in self._seen.items() if ev and ts - ev[-1][0] > self.rules.storm_window
        ]:
            del self._seen[domain]
            self._on.discard(domain)
