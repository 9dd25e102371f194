"""One config object, loaded from TOML and validated once, up front.

`load_config(path)` returns a tree of frozen dataclasses or raises
`ConfigError` naming every bad or unknown key. Nothing here opens files other
than the config itself: stores, resolvers and sockets belong to `service.py`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from policy.address import is_valid_address, is_valid_domain
from policy.escalation import SuppressionRules

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists each bad key with why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("127.0.0.1:2525",)
    hostname: str = "localhost"
    allowed_clients: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_message_size: int = 36_700_160
    max_recipients: int = 100
    max_clients: int = 500  # concurrent client connections, all listeners together
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout is at least 5 minutes
    tls_cert: str = ""
    tls_key: str = ""
    users_file: str = ""  # "user:scrypt-hash" lines; AUTH offered only after STARTTLS
    workers: int = 1  # processes sharing the listen sockets (SO_REUSEPORT)


@dataclass(frozen=True)
class DeliveryConfig:
    helo: str = "localhost"
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    port: int = 25  # the port MX hosts are reached on
    max_sessions_per_destination: int = 10
    session_idle_timeout: float = 30.0
    drain_timeout: float = 30.0  # SIGTERM: how long in-flight work may take
    routes: dict[str, str] = field(default_factory=dict)  # domain -> "host:port"


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class StoreConfig:
    path: str = field(default_factory=lambda: default_state_dir())
    map_size: int = 1 << 30  # bytes; LMDB's fixed ceiling for the state files


@dataclass(frozen=True)
class PolicyConfig:
    soft_bounce: Literal["queue", "pass"] = "queue"
    hard_suppress_days: float = 90.0
    permanent_after_hard: int = 3
    soft_streak_days: float = 21.0
    soft_streak_min_attempts: int = 3
    soft_suppress_days: tuple[float, ...] = (7.0, 30.0, 90.0)
    history_size: int = 20


@dataclass(frozen=True)
class QueueConfig:
    schedule: tuple[str, ...] = ("5m", "30m", "2h", "8h", "1d", "3d", "7d", "14d", "21d")
    max_concurrent: int = 20  # retries in flight at once, so retries never starve live mail
    poll_interval: float = 1.0
    dsn_from: str = ""  # the From: of DSNs; default MAILER-DAEMON@<server.hostname>


@dataclass(frozen=True)
class LogConfig:
    format: Literal["postfix", "json"] = "postfix"
    file: str = ""
    level: str = "INFO"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # e.g. "127.0.0.1:9325"; empty = off


@dataclass(frozen=True)
class ApiConfig:
    listen: str = ""  # e.g. "127.0.0.1:8025"; empty = off
    token: str = ""


@dataclass(frozen=True)
class VerpConfig:
    enabled: bool = False
    prefix: str = "bounces"
    bounce_domain: str = ""
    secret: str = ""
    max_age_days: int = 30  # a return path older than this is refused at the intake; 0 = never


@dataclass(frozen=True)
class IntakeConfig:
    listen: str = ""  # empty = off
    feedback_addresses: tuple[str, ...] = ()
    forward: bool = False


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    verp: VerpConfig = field(default_factory=VerpConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.server.allowed_clients)

    @property
    def queue_schedule_seconds(self) -> tuple[float, ...]:
        return tuple(parse_duration(s) for s in self.queue.schedule)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """ "5m" -> 300.0; units s, m, h, d, w; a bare number is seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1d)")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """ "127.0.0.1:2525" / "[::1]:25" / "mx.example" -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, _port(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port)
    return text, default_port


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:  # TCP ports are 16 bits
        raise ValueError(f"port out of range: {port}")
    return port


def _convert(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against a type hint from the dataclasses above, converting lists to tuples."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table")
            return hint()  # type: ignore[operator]
        return _build(hint, value, where, problems)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            problems.append(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return ()
        return tuple(_convert(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        key_t, val_t = get_args(hint)
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table")
            return {}
        return {str(k): _convert(v, val_t, f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where}: expected a number, got {value!r}")
            return 0.0
        return float(value)
    if hint in (int, str, bool) and (type(value) is not hint):
        problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: Any, table: dict[str, Any], where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            problems.append(f"{where + '.' if where else ''}{key}: unknown key")
    kwargs = {}
    for f in fields(cls):
        if f.name in table:
            name = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = _convert(table[f.name], hints[f.name], name, problems)
        elif f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"{where}.{f.name}: missing")
    return cls(**kwargs)


def _validate(cfg: Config, problems: list[str]) -> None:
    """Checks that span more than a type: addresses, ranges, durations."""
    for i, listen in enumerate(cfg.server.listen):
        try:
            parse_hostport(listen, 25)
        except ValueError:
            problems.append(f"server.listen[{i}]: not host:port: {listen!r}")
    for i, net in enumerate(cfg.server.allowed_clients):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"server.allowed_clients[{i}]: not an IP network: {net!r}")
    for domain, target in cfg.delivery.routes.items():
        try:
            parse_hostport(target, 25)
        except ValueError:
            problems.append(f"delivery.routes.{domain}: not host:port: {target!r}")
    for i, ns in enumerate(cfg.dns.nameservers):
        try:
            host, _ = parse_hostport(ns, 53)
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"dns.nameservers[{i}]: not an IP address or ip:port: {ns!r}")
    for i, step in enumerate(cfg.queue.schedule):
        try:
            parse_duration(step)
        except ValueError as exc:
            problems.append(f"queue.schedule[{i}]: {exc}")
    if not cfg.queue.schedule:
        # SPEC §5: soft failures are retried; an empty schedule would expire them at once.
        problems.append('queue.schedule: needs at least one offset (e.g. ["5m"])')
    positive = {
        "server.max_message_size": cfg.server.max_message_size,
        "server.max_recipients": cfg.server.max_recipients,
        "server.max_clients": cfg.server.max_clients,
        "server.workers": cfg.server.workers,
        "delivery.connect_timeout": cfg.delivery.connect_timeout,
        "delivery.command_timeout": cfg.delivery.command_timeout,
        "delivery.max_sessions_per_destination": cfg.delivery.max_sessions_per_destination,
        "dns.timeout": cfg.dns.timeout,
        "store.map_size": cfg.store.map_size,
        "queue.max_concurrent": cfg.queue.max_concurrent,
        "policy.permanent_after_hard": cfg.policy.permanent_after_hard,
        "server.idle_timeout": cfg.server.idle_timeout,
        "queue.poll_interval": cfg.queue.poll_interval,
    }
    for name, value in positive.items():
        if not 0 < value < float("inf"):  # also refuses TOML's nan and inf
            problems.append(f"{name}: must be a finite number greater than 0, got {value}")
    if not 0 < cfg.delivery.port <= 65535:
        problems.append(f"delivery.port: not a TCP port: {cfg.delivery.port}")
    try:
        suppression_rules(cfg.policy)
    except ValueError as exc:
        problems.append(f"policy: {exc}")
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        problems.append("server.tls_cert/server.tls_key: set both or neither")
    if cfg.verp.enabled and not (cfg.verp.bounce_domain and cfg.verp.secret):
        problems.append("verp: enabled needs bounce_domain and secret")
    _validate_verp_intake(cfg, problems)
    if cfg.api.listen and not cfg.api.token:
        problems.append("api.token: required when api.listen is set")


MIN_VERP_SECRET = 16  # characters; the HMAC is only as strong as its key


def _validate_verp_intake(cfg: Config, problems: list[str]) -> None:
    """[verp] and [intake] (issue 7): the token's syntax and an intake that can accept mail."""
    v, i = cfg.verp, cfg.intake
    if not v.prefix or not re.fullmatch(r"[A-Za-z0-9._-]+", v.prefix):
        problems.append(f"verp.prefix: letters, digits, '.', '_' or '-' only: {v.prefix!r}")
    if v.bounce_domain and not is_valid_domain(v.bounce_domain):
        problems.append(f"verp.bounce_domain: not a domain: {v.bounce_domain!r}")
    if not 0 <= v.max_age_days < 1000:  # the token's day stamp wraps after 1024 days
        problems.append(f"verp.max_age_days: 0 (no limit) to 999, got {v.max_age_days}")
    if v.secret and len(v.secret) < MIN_VERP_SECRET:
        problems.append(f"verp.secret: use at least {MIN_VERP_SECRET} characters")
    for n, address in enumerate(i.feedback_addresses):
        if not is_valid_address(address):
            problems.append(f"intake.feedback_addresses[{n}]: not an address: {address!r}")
    if i.listen:
        try:
            parse_hostport(i.listen, 25)
        except ValueError:
            problems.append(f"intake.listen: not host:port: {i.listen!r}")
        if not (v.bounce_domain and v.secret) and not i.feedback_addresses:
            problems.append(
                "intake.listen: needs verp.bounce_domain and verp.secret "
                "or intake.feedback_addresses, else it accepts nothing"
            )


def suppression_rules(policy: PolicyConfig) -> SuppressionRules:
    """The [policy] numbers of SPEC §4 as the store's rules; raises ValueError when out of range."""
    return SuppressionRules(
        hard_suppress_days=policy.hard_suppress_days,
        permanent_after_hard=policy.permanent_after_hard,
        soft_streak_days=policy.soft_streak_days,
        soft_streak_min_attempts=policy.soft_streak_min_attempts,
        soft_suppress_days=policy.soft_suppress_days,
        history_size=policy.history_size,
    )


def config_from_dict(table: dict[str, Any]) -> Config:
    """Build and validate a Config from a parsed TOML table."""
    problems: list[str] = []
    cfg: Config = _build(Config, table, "", problems)
    if not problems:
        _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def default_state_dir() -> str:
    """systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise ./bouncer-state."""
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "bouncer-state"


def load_config(path: str | Path | None) -> Config:
    """Read `path` (or the embedded defaults when None) into a validated Config."""
    if path is None:
        return config_from_dict({})
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return config_from_dict(table)
