# The operators' components, built from the config for the service.
"""Factories named in `relay.service.COMPONENTS`: each returns a component or None when off.

Once-per-machine listeners (metrics, API) and the systemd notifier run in
worker 0 only (`relay.workers.is_primary`); the log writer and the stats
counters run in every worker, since each worker sees its own traffic.
"""

from __future__ import annotations

from typing import Any

from relay.workers import is_primary


def log_writer(service: Any) -> Any:
    from relay.observe.logsink import LogWriter
    from relay.service import StartupError

    try:
        return LogWriter(service.config.log)
    except OSError as exc:  # exit 3: a log file we cannot open is a config problem
        raise StartupError(f"[log] file {service.config.log.file}: {exc}") from exc


def counters(service: Any) -> Any:
    from relay.observe.counters import StatsCounters

    assert service.env is not None
    return StatsCounters(service.env)


def metrics(service: Any) -> Any:
    listen = service.config.metrics.listen
    if not listen or not is_primary():
        return None
    from relay.observe.metrics import Metrics

    return Metrics(listen)


def api(service: Any) -> Any:
    cfg = service.config.api
    if not cfg.listen or not is_primary():
        return None
    from relay.observe.api import Api

    return Api(cfg.token, cfg.listen)


def reloader(service: Any) -> Any:
    from relay.config.reload import Reloader

    return Reloader()


def notifier(service: Any) -> Any:
    """Last in the list, so READY=1 goes out once everything else has started."""
    if not is_primary():
        return None
    from relay.observe.probes import health_checks
    from relay.observe.sdnotify import Notifier

    checks = health_checks(service)  # the listeners exist: components start after them
    return Notifier(healthy=lambda: all(check() for check in checks.values()))
