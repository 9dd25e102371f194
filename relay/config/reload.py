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
from collections.abc import Mapping
from typing import Protocol

from relay.config.load import Config, ConfigError, LogConfig, PolicyConfig, load_config

log = logging.getLogger(__name__)

RELOADABLE = ("policy", "log")


class Reloadable(Protocol):
    """What a reload changes in place: the running service (relay/service.py)."""

    config: Config

    def apply_routes(self, routes: Mapping[str, str]) -> None: ...
    def apply_policy(self, policy: PolicyConfig) -> None: ...
    def reopen_logs(self, cfg: LogConfig) -> None: ...


class ReloadNotices(Protocol):
    """systemd's RELOADING=1 / READY=1 around a reload (relay/observe/sdnotify.py)."""

    def reloading(self) -> None: ...
    def ready(self) -> None: ...


def apply_config(service: Reloadable, new: Config) -> list[str]:
    """Apply the reloadable parts of `new` to a running service; returns what changed."""
    old = service.config
    changed: list[str] = []
    if new.delivery.routes != old.delivery.routes:
        service.apply_routes(new.delivery.routes)
        changed.append("delivery.routes")
    if new.policy != old.policy:
        service.apply_policy(new.policy)
        changed.append("policy")
    service.reopen_logs(new.log)  # always: logrotate moved the file, the config is unchanged
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


class Reloader:
    """Installs the SIGHUP handler; each signal re-reads `path` and applies it to `service`.

    `listen_override` (`serve --listen`) stays in force across reloads.
    """

    def __init__(
        self,
        service: Reloadable,
        path: str | None,
        listen_override: tuple[str, ...] | None = None,
        notices: ReloadNotices | None = None,
    ) -> None:
        self.service = service
        self.path = path
        self.listen_override = listen_override
        self.notices = notices
        self.reloads = 0  # successful reloads, for tests
        self._tasks: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        service, notices = self.service, self.notices
        if notices is not None:
            notices.reloading()
        try:
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused, config unchanged: %s", problem)
                service.reopen_logs(service.config.log)  # logrotate still needs a new file
                return False
            override = self.listen_override
            if override:  # `serve --listen` stays in force: not a change to report
                new = dataclasses.replace(
                    new, server=dataclasses.replace(new.server, listen=override)
                )
            changed = apply_config(service, new)
            self.reloads += 1
            log.info(
                "reloaded %s: %s", self.path or "(defaults)", ", ".join(changed) or "no changes"
            )
            return True
        finally:
            if notices is not None:
                notices.ready()

    def _on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
