# Lifecycle lives here and only here: open the state, build the relay, listen, start the
# components relay/wiring.py builds, wait for a signal, drain, close. Startup failure -> exit 3.
"""The bouncer service: `startup()`, `serve()`, `shutdown()`.

Components (`relay.lifecycle.Component`: `async start()` and `async stop()`) are
built by `relay.wiring.components` from the parts opened here, started after the
listeners in that order and stopped in reverse. Tests may `service.add(component)`
before startup; those start after the built ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial

import lmdb

from policy.classify.classify import classify
from policy.suppression.store import StoreError, SuppressionStore
from relay import __version__
from relay.config.load import (
    Config,
    LogConfig,
    PolicyConfig,
    suppression_rules,
)
from relay.config.schema import HostPort
from relay.inbound.admission import AdmissionLimits
from relay.inbound.auth import AuthConfigError, smtp_security_kwargs
from relay.inbound.lmtp import lmtp_protocol
from relay.inbound.server import InboundServer
from relay.lifecycle import (
    EXIT_BUSY,
    EXIT_OK,
    EXIT_STARTUP,
    AddressInUse,
    Component,
    StartupError,
    listen_error,
)
from relay.observe.events import EventBus
from relay.observe.logsink import LogWriter
from relay.outbound.delivery import Delivery
from relay.pipeline import Pipeline, utcnow
from relay.queue.queue import DsnSettings, Spool
from relay.store.env import StateError, StoreDamaged, open_state
from relay.store.integrity import EXIT_DAMAGED
from relay.store.writer import Writer
from relay.wiring import Parts, Reloading, build_delivery, components
from relay.workers import listen_reuse_port

__all__ = [
    "EXIT_BUSY",
    "EXIT_OK",
    "EXIT_STARTUP",
    "AddressInUse",
    "Service",
    "StartupError",
]

log = logging.getLogger(__name__)


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
        self.servers: list[asyncio.base_events.Server] = []  # SMTP
        self.lmtp_servers: list[asyncio.base_events.Server] = []
        self.components: list[Component] = []
        self.log_sinks: list[LogWriter] = []  # reconfigured on reload (SIGHUP)
        self._started: list[Component] = []
        self._stop = asyncio.Event()
        self._signals = 0

    def add(self, component: Component) -> None:
        """Register a component (before startup)."""
        self.components.append(component)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the SMTP listeners actually listen (port 0 in tests becomes the real port)."""
        return _bound(self.servers)

    @property
    def lmtp_addresses(self) -> list[tuple[str, int]]:
        """Where the LMTP listeners actually listen."""
        return _bound(self.lmtp_servers)

    async def startup(self) -> None:
        cfg = self.config
        try:
            self.env = open_state(cfg.store.path, cfg.store.map_size)
            self.store = SuppressionStore(self.env, suppression_rules(cfg.policy))
            self.spool = Spool(
                self.env,
                cfg.queue.offsets,
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
            networks=s.networks,
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
        inbound = self.inbound
        listeners: list[tuple[str, Callable[[], asyncio.BaseProtocol], list[asyncio.Server]]] = [
            *((a, inbound.protocol, self.servers) for a in s.listen),
            *((a, partial(lmtp_protocol, inbound), self.lmtp_servers) for a in s.lmtp_listen),
        ]
        for listen, make, servers in listeners:
            address = HostPort.parse(listen, 25)
            try:
                server = await loop.create_server(
                    make,
                    address.host,
                    address.port,
                    reuse_port=listen_reuse_port(s.workers) or None,
                )
            except OSError as exc:
                raise listen_error(f"cannot listen on {listen}", exc) from exc
            servers.append(server)
        assert self.env is not None and self.store is not None and self.spool is not None
        parts = Parts(
            cfg,
            self.clock,
            self.events,
            self.writer,
            self.env,
            self.store,
            self.spool,
            self.delivery,
            [*self.servers, *self.lmtp_servers],  # every listener counts for health
            self._stop,
        )
        built, self.log_sinks = components(
            parts, Reloading(self, self.config_path, self.listen_override)
        )
        self.components[:0] = built
        for component in self.components:
            try:
                await component.start()
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
            ", ".join(f"{h}:{p}" for h, p in self.addresses)
            + "".join(f", LMTP on {h}:{p}" for h, p in self.lmtp_addresses),
        )

    # -- what a reload changes in place (relay.config.reload.Reloadable) -------------------

    def apply_routes(self, routes: Mapping[str, str]) -> None:
        if self.delivery is not None:
            self.delivery.resolver.routes = routes  # normalised and parsed by the resolver

    def apply_policy(self, policy: PolicyConfig) -> None:
        if self.store is not None:
            self.store.rules = suppression_rules(policy)
        if self.pipeline is not None:
            self.pipeline.soft_bounce = policy.soft_bounce

    def reopen_logs(self, cfg: LogConfig) -> None:
        """Reopen `[log] file` in every log sink (and take a changed format)."""
        for sink in self.log_sinks:
            sink.reconfigure(cfg)

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
        for server in [*self.servers, *self.lmtp_servers]:
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


def _bound(servers: list[asyncio.base_events.Server]) -> list[tuple[str, int]]:
    return [s.sockets[0].getsockname()[:2] for s in servers if s.sockets]
