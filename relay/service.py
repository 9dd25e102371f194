# Lifecycle lives here and only here: open the state, build the relay, listen, start the
# components others contribute, wait for a signal, drain, close. Startup failure -> exit 3.
"""The bouncer service: `startup()`, `serve()`, `shutdown()`.

Components: objects with `async start(service)` and `async stop()`, started after
the listeners in registration order and stopped in reverse. Contribute one by
adding "module:factory" to COMPONENTS; `factory(service)` returns the component, or
None when its config leaves it off. Or call `service.add(component)` before startup.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import lmdb

from policy.classify.classify import classify
from policy.suppression.store import StoreError, SuppressionStore
from relay import __version__
from relay.config.load import Config, parse_hostport, suppression_rules
from relay.inbound.admission import AdmissionLimits
from relay.inbound.auth import AuthConfigError, smtp_security_kwargs
from relay.inbound.server import InboundServer
from relay.intake.listener import verp_sender
from relay.observe.events import EventBus
from relay.outbound.dane import DaneLookup
from relay.outbound.delivery import Delivery
from relay.outbound.dkim import load_signer
from relay.outbound.mta_sts import StsPolicies
from relay.outbound.pool import SessionPool
from relay.outbound.routes import MXResolver, build_resolver
from relay.outbound.session import OutboundSettings, open_session
from relay.outbound.tls import verify_context
from relay.outbound.values import Route, identity_sender
from relay.pipeline import Pipeline, utcnow
from relay.queue.queue import DsnSettings, Spool
from relay.store.env import StateError, StoreDamaged, open_state
from relay.store.integrity import EXIT_DAMAGED
from relay.store.writer import Writer
from relay.workers import listen_reuse_port

log = logging.getLogger(__name__)

EXIT_OK, EXIT_STARTUP = 0, 3
EXIT_BUSY = 75  # a listen address in use: transient (sysexits EX_TEMPFAIL), systemd restarts

# Contributed components, "module:factory", started in this order (see module docstring).
COMPONENTS: tuple[str, ...] = (
    "relay.observe.components:log_writer",  # first, so it sees the other components' events
    "relay.observe.components:counters",
    "relay.queue.component:queue_runner",
    "relay.observe.components:metrics",
    "relay.observe.components:api",
    "relay.intake.listener:intake_component",  # [intake] listen: late DSNs and ARF reports
    "relay.observe.components:reloader",  # SIGHUP re-reads config_path (relay/config/reload.py)
    "relay.observe.components:notifier",  # last: READY=1 once everything runs
)


class Component(Protocol):
    async def start(self, service: Service) -> None: ...
    async def stop(self) -> None: ...


class StartupError(Exception):
    """The service cannot start (state directory, TLS files, listen address): exit 3."""

    exit_code = EXIT_STARTUP


class AddressInUse(StartupError):
    """A listen address is taken by another process: exit 75, which systemd retries
    (RestartPreventExitStatus=3 only), since the other process may go away."""

    exit_code = EXIT_BUSY


def listen_error(what: str, exc: OSError) -> StartupError:
    cls = AddressInUse if exc.errno == errno.EADDRINUSE else StartupError
    return cls(f"{what}: {exc}")


class Service:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] = utcnow,
        config_path: str | None = None,
        listen_override: tuple[str, ...] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP (relay/config/reload.py)
        self.listen_override = listen_override  # `serve --listen`: kept across reloads
        self.state_dir = os.path.abspath(config.store.path)  # named in the startup line
        self.clock = clock
        self.events = EventBus()
        self.writer = Writer()
        self.env: lmdb.Environment | None = None
        self.store: SuppressionStore | None = None
        self.spool: Spool | None = None
        self.delivery: Delivery | None = None
        self.pipeline: Pipeline | None = None
        self.inbound: InboundServer | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self.components: list[Any] = []
        self._started: list[Any] = []
        self._stop = asyncio.Event()
        self._signals = 0

    def add(self, component: Any) -> None:
        """Register a component (before startup)."""
        self.components.append(component)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the listeners actually listen (port 0 in tests becomes the real port)."""
        return [s.sockets[0].getsockname()[:2] for s in self.servers if s.sockets]

    async def startup(self) -> None:
        cfg = self.config
        try:
            self.env = open_state(cfg.store.path, cfg.store.map_size)
            self.store = SuppressionStore(self.env, suppression_rules(cfg.policy))
            self.spool = Spool(
                self.env,
                tuple(timedelta(seconds=s) for s in cfg.queue_schedule_seconds),
                DsnSettings(cfg.server.hostname, cfg.queue.dsn_from),
            )
            security = smtp_security_kwargs(
                cfg.server.tls_cert, cfg.server.tls_key, cfg.server.users_file
            )
            self.delivery = build_delivery(cfg, self.env, self.writer)  # DKIM keys read here
        except (StateError, StoreError, AuthConfigError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        dane = self.delivery.dane
        if dane is not None and not await dane.validating():
            # DANE on records nobody validated would trust whoever forges DNS (RFC 7672 §1.3).
            raise StartupError(
                f"dane.enabled: the [dns] resolver does not validate DNSSEC (no AD bit on the "
                f"answer for {dane.check_name!r}); use a validating resolver or turn DANE off"
            )
        self.pipeline = Pipeline(
            self.delivery,
            classify,
            self.writer,
            self.events,
            store=self.store,
            spool=self.spool,
            soft_bounce=cfg.policy.soft_bounce,
            clock=self.clock,
        )
        s = cfg.server
        self.inbound = InboundServer(
            self.pipeline,
            hostname=s.hostname,
            networks=cfg.allowed_networks,
            max_message_size=s.max_message_size,
            max_recipients=s.max_recipients,
            max_clients=s.max_clients,
            idle_timeout=s.idle_timeout,
            security=security,
            max_hops=s.max_hops,
            admission=AdmissionLimits(
                s.max_clients, s.client_connection_count_limit, s.client_connection_rate_limit
            ),
            untrusted_timeout=s.untrusted_timeout,
            max_data_in_flight=s.max_data_in_flight,
        )
        loop = asyncio.get_running_loop()
        for listen in s.listen:
            host, port = parse_hostport(listen, 25)
            try:
                server = await loop.create_server(
                    self.inbound.protocol,
                    host,
                    port,
                    reuse_port=listen_reuse_port(s.workers) or None,
                )
            except OSError as exc:
                raise listen_error(f"cannot listen on {listen}", exc) from exc
            self.servers.append(server)
        for spec in COMPONENTS:
            module, _, factory = spec.partition(":")
            component = getattr(importlib.import_module(module), factory)(self)
            if component is not None:
                self.components.append(component)
        for component in self.components:
            try:
                await component.start(self)
            except OSError as exc:  # the metrics or API port: taken (75) or not ours (3)
                raise listen_error(type(component).__name__, exc) from exc
            except (StateError, StoreError, AuthConfigError, ValueError) as exc:
                raise StartupError(f"{type(component).__name__}: {exc}") from exc
            self._started.append(component)
        log.info(
            "bouncer %s started: config %s, state directory %s, listening on %s",
            __version__,
            self.config_path or "(embedded defaults)",
            self.state_dir,
            ", ".join(f"{h}:{p}" for h, p in self.addresses),
        )

    def request_stop(self) -> None:
        """First SIGTERM/SIGINT: drain and exit. A second one: exit now."""
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting without draining")
            os._exit(1)
        self._stop.set()

    async def serve(self) -> None:
        """Run until request_stop()."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop listening, let in-flight transactions finish (drain timeout), close everything."""
        drain = self.config.delivery.drain_timeout
        for server in self.servers:
            server.close()
        if self.inbound is not None:
            await self.inbound.drain(drain)
        for component in reversed(self._started):
            try:
                await asyncio.wait_for(component.stop(), drain)
            except Exception:
                log.exception("stopping %r failed", component)
        self._started.clear()
        if self.delivery is not None:
            await self.delivery.pool.close()
            if self.delivery.signer is not None:
                await self.delivery.signer.close()
            if self.delivery.sts is not None:
                await self.delivery.sts.close()
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        if self.env is not None:
            self.env.close()
            self.env = None

    async def run(self) -> int:
        """startup → serve → shutdown, with signal handlers; the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.startup()
        except StoreDamaged as exc:  # exit 4: neither a restart nor a config edit mends it
            log.error("startup failed: %s", exc)
            await self.shutdown()
            return EXIT_DAMAGED
        except StartupError as exc:
            log.error("startup failed: %s", exc)
            await self.shutdown()
            return exc.exit_code
        await self.serve()
        log.info("stopping: draining in-flight transactions")
        await self.shutdown()
        return EXIT_OK


def build_delivery(
    cfg: Config, env: lmdb.Environment | None = None, writer: Writer | None = None
) -> Delivery:
    """The resolver, route table, session pool and remote sender (VERP plugs in here)."""
    d = cfg.delivery
    settings = OutboundSettings(d.helo, d.connect_timeout, d.command_timeout, d.starttls, d.ca_file)
    if d.starttls == "verify":
        try:
            verify_context(d.ca_file)  # read the CAs now: a bad file stops startup
        except OSError as exc:
            raise ValueError(f"delivery.ca_file: cannot load CAs: {exc}") from exc
    dns_resolver = build_resolver(cfg.dns.nameservers, cfg.dns.timeout)
    resolver = MXResolver(
        dns_resolver,
        routes=d.routes,
        port=d.port,
        literal_networks=cfg.literal_networks,
    )

    async def opener(route: Route) -> Any:
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
        dane = DaneLookup(cfg.dns.nameservers, cfg.dns.timeout, cfg.dane.check_name)
    return Delivery(resolver, pool, sender, signer=signer, sts=sts, dane=dane)
