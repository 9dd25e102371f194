# This module counts events and samples gauges for Prometheus; it makes no decisions.
"""Prometheus metrics and /healthz on `[metrics] listen`, served by aiohttp on the loop.

Counters are fed by the EventBus (one subscriber); gauges (queue size, oldest
entry age, suppression store size, open remote sessions) are sampled when
Prometheus scrapes, from probe functions the service wiring provides, so the
numbers are never stale and nothing polls in between. Each `Metrics` owns its
own registry, so tests and several services never collide in the global one.

/healthz answers 200 "ok" when every health check passes and 503 naming the
failed ones otherwise (the store cannot be read, the SMTP listener is down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from relay.config.schema import HostPort
from relay.observe.events import ConnectEvent, Event, EventBus, MessageEvent, RecipientEvent
from relay.observe.httpserve import bind_component, serve_app

log = logging.getLogger(__name__)

# Remote SMTP reply latencies run from milliseconds (a warm pooled session) to the
# command timeout (RFC 5321 §4.5.3.2 allows minutes), hence the long tail of buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

Probe = Callable[[], float | None]  # None: not available (e.g. no queue configured)
Check = Callable[[], bool]


@dataclass(frozen=True)
class GaugeSpec:
    name: str
    help: str


GAUGES = (
    GaugeSpec("bouncer_queue_messages", "Messages in the retry queue"),
    GaugeSpec("bouncer_queue_recipients", "Recipients waiting in the retry queue"),
    GaugeSpec("bouncer_queue_oldest_age_seconds", "Age of the oldest message in the queue"),
    GaugeSpec("bouncer_suppression_records", "Records in the suppression store"),
    GaugeSpec(
        "bouncer_suppression_storms",
        "Remote domains answering hard for many addresses at once now (storm breaker on)",
    ),
    GaugeSpec("bouncer_suppression_storms_detected", "Storms detected since bouncer started"),
    GaugeSpec("bouncer_remote_sessions_open", "Remote SMTP sessions open (in use and idle)"),
)


@dataclass(eq=False)  # registries keep collectors in a dict: hash by identity
class _ProbeCollector:
    """A prometheus-client collector that reads each probe at scrape time."""

    probes: dict[str, Probe] = field(default_factory=dict)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for spec in GAUGES:
            probe = self.probes.get(spec.name)
            if probe is None:
                continue
            try:
                value = probe()
            except Exception as exc:  # a broken probe drops its gauge, not the scrape
                log.warning("metrics probe %s failed: %s", spec.name, exc)
                continue
            if value is not None:
                yield GaugeMetricFamily(spec.name, spec.help, value=float(value))

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # sampled at scrape time; nothing to pre-register


class Metrics:
    """The registry, the event subscriber and the HTTP component in one object."""

    def __init__(self, listen: HostPort | None = None) -> None:
        self.listen = listen  # `[metrics] listen`, parsed; None: no HTTP server
        self.registry = CollectorRegistry(auto_describe=False)
        self.recipients = Counter(
            "bouncer_recipients",
            "Recipient outcomes by status, bounce class and category",
            ["status", "class", "category"],
            registry=self.registry,
        )
        self.messages = Counter(
            "bouncer_messages", "Messages accepted from clients", registry=self.registry
        )
        self.connections = Counter(
            "bouncer_connections", "SMTP client connections", registry=self.registry
        )
        self.reply_latency = Histogram(
            "bouncer_remote_reply_seconds",
            "Time a remote took to give its verdict (connection setup plus transmission)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.probes = _ProbeCollector()
        self.registry.register(self.probes)
        self.checks: dict[str, Check] = {}
        self.events: EventBus | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- events ---------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, RecipientEvent):
            verdict = event.verdict
            if verdict is not None:
                klass, category = str(verdict.klass), str(verdict.category)
            elif event.reply.is_success:
                klass = category = "delivered"
            else:
                klass = category = ""
            self.recipients.labels(str(event.status), klass, category).inc()
            if event.relay != "none" and event.reply.host:
                # Postfix's delays c + d (connection setup and transmission) when the relay
                # measured them; else, for a live attempt, the event's delay since the
                # client's transaction began, which in-transaction is the wait for the
                # remote. A retry's delay counts from arrival (hours): not a latency.
                remote = event.delays[2] + event.delays[3]
                if remote > 0 or event.attempt == 0:
                    self.reply_latency.labels(event.stage).observe(remote or event.delay)
        elif isinstance(event, MessageEvent):
            self.messages.inc()
        elif isinstance(event, ConnectEvent) and not event.disconnect:
            self.connections.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> dict[str, bool]:
        results: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception as exc:
                log.warning("health check %s failed: %s", name, exc)
                results[name] = False
        return results

    def healthy(self) -> bool:
        return all(self.health().values())

    # -- HTTP -----------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        # Sampling reads LMDB (cheap read transactions); fine on the loop.
        body = self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        results = self.health()
        failed = [name for name, ok in results.items() if not ok]
        if failed:
            return web.Response(status=503, text=f"unhealthy: {', '.join(failed)}\n")
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def serve(self, listen: HostPort) -> int:
        """Start the HTTP server on `listen` (port 0 picks one); returns the port."""
        self._runner, self.port = await serve_app(self.app(), listen)
        return self.port

    def wire(
        self, events: EventBus, probes: Mapping[str, Probe], checks: Mapping[str, Check]
    ) -> None:
        """Subscribe to `events` (at start) and read `probes` and `checks` at each scrape."""
        self.events = events
        self.probes.probes.update(probes)
        self.checks.update(checks)

    async def start(self) -> None:
        if self.events is not None:
            self.events.subscribe(self)
        if self.listen is not None:
            port = await bind_component(self.serve, self.listen, "metrics")
            log.info("metrics and /healthz on %s (port %d)", self.listen, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
            self._runner = None
