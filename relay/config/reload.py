# SIGHUP: re-read the config file and apply what can change in place; connections stay open.
"""The reload component (`systemctl reload bouncer` sends SIGHUP, see the unit).

What a reload applies, without dropping a connection or a remote session:

- `[delivery.routes]`: the resolver's static route table (new transactions use it;
  sessions to the old target stay pooled until idle);
- `[policy]`: the suppression rules' numbers and `soft_bounce`;
- `[log]`: format, file and diagnostic level. The file is reopened on every
  SIGHUP, changed or not, and even when the new config is refused: logrotate's
  `mv mail.log mail.log.1` + SIGHUP must give a new file.

Everything else (listen addresses, TLS, state directory, ...) needs a restart;
a reload that changes it logs so. A config that does not load is refused as a
whole, named problem by problem, and the running config stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from typing import Any

from policy.address import normalize_domain
from relay.config.load import Config, ConfigError, LogConfig, load_config, suppression_rules

log = logging.getLogger(__name__)

RELOADABLE = ("policy", "log")


def apply_config(service: Any, new: Config) -> list[str]:
    """Apply the reloadable parts of `new` to a running service; returns what changed."""
    old: Config = service.config
    changed: list[str] = []
    if new.delivery.routes != old.delivery.routes:
        resolver = getattr(getattr(service, "delivery", None), "resolver", None)
        if resolver is not None:
            resolver.routes = {normalize_domain(d): t for d, t in new.delivery.routes.items()}
        changed.append("delivery.routes")
    if new.policy != old.policy:
        if getattr(service, "store", None) is not None:
            service.store.rules = suppression_rules(new.policy)
        if getattr(service, "pipeline", None) is not None:
            service.pipeline.soft_bounce = new.policy.soft_bounce
        changed.append("policy")
    reopen_logs(service, new.log)  # always: logrotate moved the file, the config is unchanged
    if new.log != old.log:
        logging.getLogger().setLevel(getattr(logging, new.log.level.upper(), logging.INFO))
        changed.append("log")
    delivery = dataclasses.replace(old.delivery, routes=dict(new.delivery.routes))
    # Compare everything else, with the routes (applied above) taken as unchanged.
    rest = dataclasses.replace(
        new, delivery=dataclasses.replace(new.delivery, routes=old.delivery.routes)
    )
    needs_restart = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in RELOADABLE and getattr(rest, f.name) != getattr(old, f.name)
    ]
    if needs_restart:
        log.warning("reload: changes to [%s] need a restart", "], [".join(needs_restart))
    service.config = dataclasses.replace(old, delivery=delivery, policy=new.policy, log=new.log)
    return changed


def reopen_logs(service: Any, cfg: LogConfig) -> None:
    """Reopen `[log] file` in every log component (and take a changed format)."""
    for component in getattr(service, "components", []):
        if hasattr(component, "reconfigure"):
            component.reconfigure(cfg)


class Reloader:
    """Installs the SIGHUP handler; each signal re-reads `service.config_path`."""

    def __init__(self) -> None:
        self.service: Any = None
        self.reloads = 0  # successful reloads, for tests
        self._tasks: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        service = self.service
        notifier = next((c for c in service.components if hasattr(c, "reloading")), None)
        if notifier is not None:
            notifier.reloading()
        path = getattr(service, "config_path", None)
        try:
            try:
                new = load_config(path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused, config unchanged: %s", problem)
                reopen_logs(service, service.config.log)  # logrotate still needs a new file
                return False
            override = getattr(service, "listen_override", None)
            if override:  # `serve --listen` stays in force: not a change to report
                new = dataclasses.replace(
                    new, server=dataclasses.replace(new.server, listen=override)
                )
            changed = apply_config(service, new)
            self.reloads += 1
            log.info("reloaded %s: %s", path or "(defaults)", ", ".join(changed) or "no changes")
            return True
        finally:
            if notifier is not None:
                notifier.ready()

    def _on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, service: Any) -> None:
        self.service = service
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
