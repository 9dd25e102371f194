# The one place that knows every part: it builds the outbound side and the components
# from the config and the parts the service opened, handing each exactly what it uses.
"""Typed wiring: which component gets which part of the running service.

`relay.service.Service` opens the state (LMDB environment, suppression store,
queue), builds the delivery and the pipeline, binds the SMTP listeners, and then
asks `components()` for the rest, in start order. Each component is an object
with `async start()` / `async stop()` (`relay.lifecycle.Component`); its
constructor takes the parts it needs, nothing else. A component that the config
leaves off is not built. Once-per-machine components (the queue scheduler, the
metrics, API and intake listeners, the systemd notifier) are built in worker 0
only (`relay.workers.is_primary`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import lmdb

from policy.classify.classify import classify
from policy.reply import Reply
from policy.suppression.store import SuppressionStore
from relay.config.load import Config
from relay.config.reload import Reloadable, Reloader
from relay.intake.listener import Intake, verp_sender
from relay.lifecycle import Component, StartupError
from relay.observe.api import Api
from relay.observe.counters import StatsCounters
from relay.observe.events import EventBus
from relay.observe.logsink import LogWriter
from relay.observe.metrics import Metrics
from relay.observe.probes import gauge_probes, health_checks
from relay.observe.sdnotify import Notifier
from relay.outbound.dane import DaneLookup
from relay.outbound.delivery import Delivery
from relay.outbound.dkim import load_signer
from relay.outbound.mta_sts import StsPolicies
from relay.outbound.pool import SessionPool
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.session import OutboundSettings, RemoteSession, open_session
from relay.outbound.tls import verify_context
from relay.outbound.values import Route, identity_sender
from relay.queue.component import QueueRunner, runner_settings
from relay.queue.queue import Spool
from relay.queue.scheduler import RetryWorker
from relay.store.writer import Writer
from relay.workers import is_primary


@dataclass(frozen=True)
class Parts:
    """What the service opened before its components: each component takes some of it."""

    config: Config
    clock: Callable[[], datetime]
    events: EventBus
    writer: Writer
    env: lmdb.Environment
    store: SuppressionStore
    spool: Spool
    delivery: Delivery
    servers: Sequence[asyncio.AbstractServer]  # the SMTP listeners, for the health check
    stopping: asyncio.Event  # set on the first SIGTERM, before the drain


@dataclass(frozen=True)
class Reloading:
    """What SIGHUP needs: the running service to change, the file to re-read."""

    target: Reloadable
    config_path: str | None
    listen_override: tuple[str, ...] | None


def build_delivery(
    cfg: Config, env: lmdb.Environment | None = None, writer: Writer | None = None
) -> Delivery:
    """The resolver, route table, session pool, remote sender (VERP plugs in here), DKIM
    signer, MTA-STS policies and DANE look-ups."""
    d = cfg.delivery
    settings = OutboundSettings(d.helo, d.connect_timeout, d.command_timeout, d.starttls, d.ca_file)
    if d.starttls == "verify":
        try:
            verify_context(d.ca_file)  # read the CAs now: a bad file stops startup
        except OSError as exc:
            raise ValueError(f"delivery.ca_file: cannot load CAs: {exc}") from exc
    dns_resolver = build_resolver(cfg.dns.servers, cfg.dns.timeout)
    resolver = MXResolver(
        dns_resolver,
        routes=d.routes,
        port=d.port,
        literal_networks=d.literal_networks,
    )

    async def opener(route: Route) -> RemoteSession | Reply:
        return await open_session(route, settings)

    pool = SessionPool(
        opener,
        max_per_destination=d.max_sessions_per_destination,
        idle_timeout=d.session_idle_timeout,
        wait_timeout=d.connect_timeout,
    )
    sender = verp_sender(cfg) or identity_sender  # [verp] enabled: signed return paths
    signer = load_signer(cfg.dkim.keys, cfg.dkim.headers)
    sts = None
    if cfg.mta_sts.enabled:  # policies cached in the state's LMDB (without one: in memory)
        sts = StsPolicies(
            dns_resolver,
            env,
            writer,
            port=cfg.mta_sts.port,
            timeout=cfg.mta_sts.timeout,
            ca_file=d.ca_file,
        )
    dane = None
    if cfg.dane.enabled:  # startup() checks that the resolver validates
        dane = DaneLookup(cfg.dns.servers, cfg.dns.timeout, cfg.dane.check_name)
    return Delivery(resolver, pool, sender, signer=signer, sts=sts, dane=dane)


def log_writer(parts: Parts) -> LogWriter:
    try:
        return LogWriter(parts.config.log, events=parts.events)
    except OSError as exc:  # exit 3: a log file we cannot open is a config problem
        raise StartupError(f"[log] file {parts.config.log.file}: {exc}") from exc


def queue_runner(parts: Parts) -> QueueRunner:
    worker = RetryWorker(
        parts.spool,
        parts.delivery.deliver_message,
        classify,
        parts.store,
        parts.events,
        parts.writer.run,
        runner_settings(parts.config, parts.spool.schedule),
        parts.clock,
    )
    return QueueRunner(worker)


def metrics(parts: Parts) -> Metrics:
    m = Metrics(parts.config.metrics.address)
    m.wire(
        parts.events,
        gauge_probes(parts.spool, parts.store, parts.delivery.pool, parts.clock),
        health_checks(parts.store, parts.servers),
    )
    return m


def api(parts: Parts) -> Api:
    return Api(
        parts.config.api.token,
        parts.config.api.address,
        store=parts.store,
        env=parts.env,
        write=parts.writer.run,
        clock=parts.clock,
        spool=parts.spool,
        events=parts.events,
    )


def intake(parts: Parts) -> Intake:
    return Intake(
        parts.config,
        parts.store,
        parts.events,
        write=parts.writer.run,
        forwarder=parts.delivery,
        clock=parts.clock,
    )


def notifier(parts: Parts) -> Notifier:
    checks = health_checks(parts.store, parts.servers)
    return Notifier(
        healthy=lambda: all(check() for check in checks.values()), stopping=parts.stopping
    )


def components(parts: Parts, reloading: Reloading) -> tuple[list[Component], list[LogWriter]]:
    """The components in start order (stopped in reverse), and the log sinks among them.

    The log writer comes first, so it sees the other components' events; the
    notifier last, so READY=1 goes out once everything else runs.
    """
    cfg = parts.config
    primary = is_primary()
    logs = [log_writer(parts)]
    built: list[Component] = [
        *logs,
        StatsCounters(parts.env, events=parts.events, writer=parts.writer),
    ]
    if primary:
        built.append(queue_runner(parts))
    if primary and cfg.metrics.listen:
        built.append(metrics(parts))
    if primary and cfg.api.listen:
        built.append(api(parts))
    if primary and cfg.intake.listen:
        built.append(intake(parts))
    sd = notifier(parts) if primary else None
    r = reloading
    built.append(Reloader(r.target, r.config_path, r.listen_override, notices=sd))
    if sd is not None:
        built.append(sd)
    return built, logs
