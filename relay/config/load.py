# This module reads the config: TOML in, a validated `Config` out, every problem named
# at once. The tree's shape and defaults are declared in relay/config/schema.py.
"""One config object, loaded from TOML and validated once, up front.

`load_config(path)` returns a tree of frozen dataclasses or raises
`ConfigError` naming every bad or unknown key. Nothing here opens files other
than the config itself: stores, resolvers and sockets belong to `service.py`.
The tree's classes are re-exported here, so `relay.config.load` is the one name
callers import from.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from policy.address import is_valid_address, is_valid_domain
from policy.suppression.escalate import SuppressionRules
from relay.config.schema import (
    ApiConfig,
    Config,
    DeliveryConfig,
    DkimConfig,
    DkimKeyConfig,
    DNSConfig,
    IntakeConfig,
    IPNetwork,
    LogConfig,
    MetricsConfig,
    PolicyConfig,
    QueueConfig,
    ServerConfig,
    StoreConfig,
    VerpConfig,
    default_state_dir,
    host_fqdn,
    parse_duration,
    parse_hostport,
)

__all__ = [
    "ApiConfig",
    "Config",
    "ConfigError",
    "DNSConfig",
    "DeliveryConfig",
    "DkimConfig",
    "DkimKeyConfig",
    "IPNetwork",
    "IntakeConfig",
    "LogConfig",
    "MetricsConfig",
    "PolicyConfig",
    "QueueConfig",
    "ServerConfig",
    "StoreConfig",
    "VerpConfig",
    "config_from_dict",
    "default_state_dir",
    "find_config",
    "host_fqdn",
    "load_config",
    "parse_duration",
    "parse_hostport",
    "suppression_rules",
]


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists each bad key with why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _convert(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against a type hint from the dataclasses above, converting lists to tuples."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table")
            return None  # a stand-in: the problem above refuses the config anyway
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
        for k in value:
            if _CONTROL.search(k):
                problems.append(f"{where}: control characters not allowed in key {k!r}")
        return {str(k): _convert(v, val_t, f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where}: expected a number, got {value!r}")
            return 0.0
        if not math.isfinite(value):  # TOML has nan and inf; no setting means either
            problems.append(f"{where}: must be a finite number, got {value}")
        return float(value)
    if hint in (int, str, bool) and (type(value) is not hint):
        problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
    elif hint is str and _CONTROL.search(value):
        problems.append(f"{where}: control characters (CR, LF, ...) not allowed: {value!r}")
    return value


# C0 and C1 controls, DEL, and the Unicode line separators. A string setting may end up in
# a reply line (hostname in the greeting), a header (dsn_from, Received:) or a log line,
# where a CR or LF would start a new one: header and reply injection.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
            kwargs[f.name] = ""  # a stand-in: the problem above refuses the config anyway
    return cls(**kwargs)


def _check_each(
    problems: list[str],
    where: str,
    values: tuple[str, ...] | dict[str, str],
    check: Callable[[str], object],
    what: str,
) -> None:
    """Run `check` on each value (a tuple is named where[i], a dict by its keys); each
    ValueError becomes a problem: "name: what: 'value'", or "name: <the error>" without `what`.
    """
    named = (
        values.items()
        if isinstance(values, dict)
        else ((f"{where}[{n}]", v) for n, v in enumerate(values))
    )
    for name, value in named:
        try:
            check(value)
        except ValueError as exc:
            problems.append(f"{name}: {what}: {value!r}" if what else f"{name}: {exc}")


def _hostport(text: str) -> object:
    return parse_hostport(text, 25)


def _check_lmtp_listen(smtp: tuple[str, ...], lmtp: tuple[str, ...], problems: list[str]) -> None:
    """LMTP addresses: an explicit port, never 25 (RFC 2033 §5), none an SMTP one too."""
    taken = set()
    for text in smtp:
        with contextlib.suppress(ValueError):  # a bad one is named by its own check
            taken.add(parse_hostport(text, 25))
    for n, text in enumerate(lmtp):
        name = f"server.lmtp_listen[{n}]"
        if not _has_port(text):
            problems.append(f"{name}: give host:port (e.g. 127.0.0.1:2424), got {text!r}")
            continue
        try:
            address = parse_hostport(text, 25)
        except ValueError:
            problems.append(f"{name}: not host:port: {text!r}")
            continue
        if address[1] == 25:
            problems.append(f"{name}: LMTP must not use port 25 (RFC 2033 §5), got {text!r}")
        elif address[1] and address in taken:  # port 0: the kernel picks a free one
            problems.append(f"{name}: {text!r} is also in server.listen")


def _has_port(text: str) -> bool:
    text = text.strip()
    if text.startswith("["):
        return bool(re.search(r"\]:\d+$", text))
    return text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit()


def _network(text: str) -> object:
    return ipaddress.ip_network(text, strict=False)


def _nameserver(text: str) -> object:
    return ipaddress.ip_address(parse_hostport(text, 53)[0])


def _validate(cfg: Config, problems: list[str]) -> None:
    """Checks that span more than a type: addresses, ranges, durations."""
    _check_each(problems, "server.listen", cfg.server.listen, _hostport, "not host:port")
    _check_each(
        problems,
        "server.allowed_clients",
        cfg.server.allowed_clients,
        _network,
        "not an IP network",
    )
    literals = cfg.delivery.allowed_address_literals
    what = "not an IP network"
    _check_each(problems, "delivery.allowed_address_literals", literals, _network, what)
    routes = {f"delivery.routes.{d}": t for d, t in cfg.delivery.routes.items()}
    _check_each(problems, "", routes, _hostport, "not host:port")
    what = "not an IP address or ip:port"
    _check_each(problems, "dns.nameservers", cfg.dns.nameservers, _nameserver, what)
    _check_each(problems, "queue.schedule", cfg.queue.schedule, parse_duration, "")
    for n, offset in enumerate(cfg.queue.schedule):
        with contextlib.suppress(ValueError):  # a bad one was named just above
            if parse_duration(offset) > MAX_SCHEDULE_SECONDS:
                problems.append(f"queue.schedule[{n}]: at most 3650d, got {offset!r}")
    if cfg.log.level.upper() not in LOG_LEVELS:
        problems.append(f"log.level: one of {', '.join(LOG_LEVELS)}, got {cfg.log.level!r}")
    if not cfg.queue.schedule:
        # Soft failures are retried (docs/behaviour.md#retry-queue); an empty schedule would
        # expire them at once.
        problems.append('queue.schedule: needs at least one offset (e.g. ["5m"])')
    positive = {
        "server.max_message_size": cfg.server.max_message_size,
        "server.max_recipients": cfg.server.max_recipients,
        "server.max_clients": cfg.server.max_clients,
        "intake.max_clients": cfg.intake.max_clients,
        "intake.session_timeout": cfg.intake.session_timeout,
        "server.workers": cfg.server.workers,
        "server.max_hops": cfg.server.max_hops,
        "delivery.connect_timeout": cfg.delivery.connect_timeout,
        "delivery.command_timeout": cfg.delivery.command_timeout,
        "delivery.max_sessions_per_destination": cfg.delivery.max_sessions_per_destination,
        "delivery.session_idle_timeout": cfg.delivery.session_idle_timeout,
        "dns.timeout": cfg.dns.timeout,
        "store.map_size": cfg.store.map_size,
        "queue.max_concurrent": cfg.queue.max_concurrent,
        "policy.permanent_after_hard": cfg.policy.permanent_after_hard,
        "server.idle_timeout": cfg.server.idle_timeout,
        "queue.poll_interval": cfg.queue.poll_interval,
        "mta_sts.timeout": cfg.mta_sts.timeout,
    }
    for name, value in positive.items():
        if not 0 < value < float("inf"):  # also refuses TOML's nan and inf
            problems.append(f"{name}: must be a finite number greater than 0, got {value}")
    if not cfg.server.listen:
        problems.append("server.listen: needs at least one address (bouncer would accept no mail)")
    _check_lmtp_listen(cfg.server.listen, cfg.server.lmtp_listen, problems)
    for name, text in {"metrics.listen": cfg.metrics.listen, "api.listen": cfg.api.listen}.items():
        # "localhost" alone would silently take a default port: say which one, always.
        if text and not _has_port(text):
            problems.append(f"{name}: give host:port (e.g. 127.0.0.1:9325), got {text!r}")
        elif text:
            _check_each(problems, "", {name: text}, _hostport, "not host:port")
    if cfg.delivery.drain_timeout < 0:
        problems.append(
            f"delivery.drain_timeout: must be 0 or more, got {cfg.delivery.drain_timeout}"
        )
    # Names we say to others: the greeting and Received: (hostname), EHLO (helo), DSNs' From:.
    names = {"server.hostname": cfg.server.hostname, "delivery.helo": cfg.delivery.helo}
    for name, host in names.items():
        if not is_valid_domain(host):
            problems.append(f"{name}: not a domain name or address literal: {host!r}")
    if cfg.queue.dsn_from and not is_valid_address(cfg.queue.dsn_from):
        problems.append(f"queue.dsn_from: not an address: {cfg.queue.dsn_from!r}")
    _validate_admission(cfg, problems)
    if not 0 < cfg.delivery.port <= 65535:
        problems.append(f"delivery.port: not a TCP port: {cfg.delivery.port}")
    if cfg.dane.check_name != "." and not is_valid_domain(cfg.dane.check_name.rstrip(".")):
        problems.append(f"dane.check_name: not a domain name: {cfg.dane.check_name!r}")
    if not 0 < cfg.mta_sts.port <= 65535:
        problems.append(f"mta_sts.port: not a TCP port: {cfg.mta_sts.port}")
    try:
        suppression_rules(cfg.policy)
    except ValueError as exc:
        problems.append(f"policy: {exc}")
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        problems.append("server.tls_cert/server.tls_key: set both or neither")
    if cfg.verp.enabled and not (cfg.verp.bounce_domain and cfg.verp.secret):
        problems.append("verp.enabled: needs verp.bounce_domain and verp.secret")
    _validate_verp_intake(cfg, problems)
    _validate_dkim(cfg.dkim, problems)
    if cfg.api.listen and not cfg.api.token:
        problems.append("api.token: required when api.listen is set")
    elif cfg.api.token and len(cfg.api.token) < MIN_API_TOKEN:
        problems.append(f"api.token: use at least {MIN_API_TOKEN} characters")


MAX_SCHEDULE_SECONDS = 3650 * 86400  # ten years: beyond, the date arithmetic overflows
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _validate_admission(cfg: Config, problems: list[str]) -> None:
    """Connection admission, [server] and [intake], and the memory budget (admission.py)."""
    server = cfg.server
    for section, table in (("server", server), ("intake", cfg.intake)):
        for name in ("client_connection_count_limit", "client_connection_rate_limit"):
            if getattr(table, name) < 0:
                got = getattr(table, name)
                problems.append(f"{section}.{name}: 0 (no limit) or more, got {got}")
    if not 0 < server.untrusted_timeout < float("inf"):
        problems.append(
            f"server.untrusted_timeout: must be a finite number greater than 0, "
            f"got {server.untrusted_timeout}"
        )
    if server.max_data_in_flight < server.max_message_size:
        problems.append(
            "server.max_data_in_flight: must be at least server.max_message_size "
            f"({server.max_message_size}), got {server.max_data_in_flight}"
        )


MIN_VERP_SECRET = 16  # characters; the HMAC is only as strong as its key
MIN_API_TOKEN = 16  # characters; a short bearer token is guessed


def _validate_verp_intake(cfg: Config, problems: list[str]) -> None:
    """[verp] and [intake]: the token's syntax and an intake that can accept mail."""
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
    if i.consent_address and not is_valid_address(i.consent_address):
        problems.append(f"intake.consent_address: not an address: {i.consent_address!r}")
    if i.listen:
        _check_each(problems, "", {"intake.listen": i.listen}, _hostport, "not host:port")
        if not (v.bounce_domain and v.secret) and not i.feedback_addresses:
            if not i.consent_address:
                problems.append(
                    "intake.listen: needs verp.bounce_domain and verp.secret, "
                    "intake.feedback_addresses or intake.consent_address, else it accepts nothing"
                )


SELECTOR_SYNTAX = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)


def _validate_dkim(dkim: DkimConfig, problems: list[str]) -> None:
    """[[dkim.keys]]: names that can go in d= and s=, one key per domain and algorithm, and
    Ed25519 only beside RSA (RFC 8463 §3: many verifiers still ignore Ed25519 signatures)."""
    seen: dict[tuple[str, str], int] = {}
    for n, key in enumerate(dkim.keys):
        where = f"dkim.keys[{n}]"
        domain = key.domain.lower().rstrip(".")
        if not is_valid_domain(domain) or domain.startswith("["):
            problems.append(f"{where}.domain: not a domain name: {key.domain!r}")
        if not SELECTOR_SYNTAX.match(key.selector):
            problems.append(f"{where}.selector: letters, digits, '-' and '.': {key.selector!r}")
        if not key.key_file:
            problems.append(f"{where}.key_file: missing")
        if (domain, key.algorithm) in seen:
            problems.append(f"{where}: a second {key.algorithm} key for {domain}")
        seen[(domain, key.algorithm)] = n
    for (domain, algorithm), n in seen.items():
        if algorithm == "ed25519-sha256" and (domain, "rsa-sha256") not in seen:
            problems.append(
                f"dkim.keys[{n}]: an ed25519-sha256 key for {domain} needs an rsa-sha256 key "
                "beside it (Ed25519 is only an additional signature)"
            )
    if "from" not in {h.lower() for h in dkim.headers}:
        problems.append("dkim.headers: must include From (RFC 6376 §5.4)")
    for n, name in enumerate(dkim.headers):
        if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
            problems.append(f"dkim.headers[{n}]: not a header name: {name!r}")
        elif name.lower() == "dkim-signature":
            problems.append(f"dkim.headers[{n}]: DKIM-Signature is never signed")


def suppression_rules(policy: PolicyConfig) -> SuppressionRules:
    """The [policy] numbers as the store's rules; raises ValueError when out of range."""
    # [policy] names each of SuppressionRules' fields after it (config_schema derives
    # their defaults from it), so the rules are read field by field, not listed again.
    numbers = {f.name: getattr(policy, f.name) for f in fields(SuppressionRules)}
    return SuppressionRules(**numbers)


def config_from_dict(table: dict[str, Any]) -> Config:
    """Build and validate a Config from a parsed TOML table."""
    problems: list[str] = []
    cfg: Config = _build(Config, table, "", problems)
    if not problems:
        _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


DEFAULT_CONFIG = "/etc/bouncer/bouncer.toml"
CONFIG_ENV = "BOUNCER_CONFIG"


def find_config(given: str | None, env: dict[str, str] | None = None) -> str | None:
    """Which config file a command reads: `--config`, else $BOUNCER_CONFIG, else
    /etc/bouncer/bouncer.toml when it exists; None means the embedded defaults.

    The CLI and the server then agree on the store without a flag: the shipped
    file names the state directory. A named file that is missing is an error
    (load_config says so); only the default location may be absent.
    """
    if given:
        return given
    named = (os.environ if env is None else env).get(CONFIG_ENV, "")
    if named:
        return named
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load_config(path: str | Path | None) -> Config:
    """Read `path` (or the embedded defaults when None) into a validated Config."""
    if path is None:
        return config_from_dict({})
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        table = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0 "Spec")
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end].hex()
        raise ConfigError([f"{path}: line {line}: not UTF-8 (byte 0x{bad})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return config_from_dict(table)
