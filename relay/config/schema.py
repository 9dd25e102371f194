# This module declares the config tree: frozen dataclasses with their defaults, and the
# value parsers the tree's properties use. Reading and validating TOML is relay/config/load.py's.
"""The shape of bouncer's one config object: a tree of frozen dataclasses.

Each section is a dataclass whose fields are the keys `load_config` accepts,
with their defaults, as the operator writes them ("5m", "10.0.0.0/8",
"127.0.0.1:2525"). Each such value is also parsed, once per config object, into
a typed property (`timedelta`, `ipaddress` networks, `HostPort`) that the code
uses instead of parsing the text again; the [policy] numbers default to
`policy.suppression.escalate`'s `SuppressionRules`, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Literal

from policy.suppression.escalate import SuppressionRules

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The modes, as the config writes them; the code that acts on them takes these types.
StartTLS = Literal["opportunistic", "required", "verify", "off"]  # [delivery] starttls
SoftBounce = Literal["queue", "pass"]  # [policy] soft_bounce: queue a 4xx, or hand it back
_RULES = SuppressionRules()


@dataclass(frozen=True)
class HostPort:
    """A parsed "host:port" ("[v6]:port", or a bare host with the setting's default port)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int) -> HostPort:
        return cls(*parse_hostport(text, default_port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _networks(texts: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in texts)


def _address(text: str, default_port: int) -> HostPort | None:
    return (
        HostPort.parse(text, default_port) if text else None
    )  # the defaults of docs/behaviour.md#suppression-policy numbers


@functools.cache
def host_fqdn() -> str:
    """This host's fully qualified name, found as Postfix finds `myhostname`.

    gethostname() when it has a dot; else the resolver's canonical name for it
    (getaddrinfo with AI_CANONNAME: /etc/hosts, then DNS), when that has a dot.
    Python's socket.getfqdn() is not used as is: on a machine whose /etc/hosts
    lists the short name after `localhost` it answers "localhost", the one name
    a remote must never hear from us. An undotted name is returned as it is,
    and `bouncer check-config` warns about it.
    """
    name = socket.gethostname() or "localhost"
    if "." in name:
        return name.rstrip(".").lower()
    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        infos = []
    for info in infos:
        canonical = info[3].rstrip(".").lower()
        if "." in canonical and not canonical.startswith("localhost"):
            return canonical
    return name.lower()


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("127.0.0.1:2525",)
    # LMTP listeners (RFC 2033: a reply per recipient after DATA), same pipeline and limits.
    lmtp_listen: tuple[str, ...] = ()
    hostname: str = field(default_factory=host_fqdn)
    allowed_clients: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_message_size: int = 36_700_160
    max_recipients: int = 100
    max_clients: int = 500  # concurrent client connections, all listeners together
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout is at least 5 minutes
    # Per client address outside allowed_clients (relay/inbound/admission.py, after
    # Postfix's anvil):
    client_connection_count_limit: int = 50  # connections at once; 0 = no limit
    client_connection_rate_limit: int = 60  # new connections a minute; 0 = no limit
    untrusted_timeout: float = 10.0  # seconds such a client has, from connect, to authenticate
    # Bytes of message data held at once by all transactions together; DATA over it: 452 4.3.1.
    max_data_in_flight: int = 268_435_456
    tls_cert: str = ""
    tls_key: str = ""
    users_file: str = ""  # "user:scrypt-hash" lines; AUTH offered only after STARTTLS
    workers: int = 1  # processes sharing the listen sockets (SO_REUSEPORT)
    max_hops: int = 30  # Received: headers a message may carry in (RFC 5321 §6.3: loops)

    @cached_property
    def addresses(self) -> tuple[HostPort, ...]:
        """`listen`, parsed (port 25 when none is given)."""
        return tuple(HostPort.parse(text, 25) for text in self.listen)

    @cached_property
    def networks(self) -> tuple[IPNetwork, ...]:
        """`allowed_clients`, parsed."""
        return _networks(self.allowed_clients)


@dataclass(frozen=True)
class DeliveryConfig:
    helo: str = field(default_factory=host_fqdn)
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    starttls: StartTLS = "opportunistic"
    ca_file: str = ""  # starttls = "verify": PEM CAs to trust instead of the system's
    port: int = 25  # the port MX hosts are reached on
    max_sessions_per_destination: int = 10
    session_idle_timeout: float = 30.0
    drain_timeout: float = 30.0  # SIGTERM: how long in-flight work may take
    routes: dict[str, str] = field(default_factory=dict)  # domain -> "host:port"
    # Networks an address literal (user@[192.0.2.1]) may be delivered to; none by default.
    allowed_address_literals: tuple[str, ...] = ()

    @cached_property
    def literal_networks(self) -> tuple[IPNetwork, ...]:
        """`allowed_address_literals`, parsed."""
        return _networks(self.allowed_address_literals)


# The headers DKIM signs when present (RFC 6376 §5.4.1's set, the MIME headers and RFC 8058's
# one-click pair); From: is signed once more on top (relay/outbound/dkim.py).
DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


@dataclass(frozen=True)
class DkimKeyConfig:
    domain: str
    selector: str
    key_file: str
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


@dataclass(frozen=True)
class DkimConfig:
    keys: tuple[DkimKeyConfig, ...] = ()
    headers: tuple[str, ...] = DKIM_HEADERS


@dataclass(frozen=True)
class MtaStsConfig:
    enabled: bool = False
    port: int = 443  # where mta-sts.<domain> serves the policy (RFC 8461 §3.3: 443)
    timeout: float = 10.0  # seconds for the whole policy fetch


@dataclass(frozen=True)
class DaneConfig:
    enabled: bool = False  # needs a DNSSEC-validating resolver in [dns] (checked at start)
    check_name: str = "."  # a signed name the resolver must answer with the AD bit


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0

    @cached_property
    def servers(self) -> tuple[HostPort, ...]:
        """`nameservers`, parsed (port 53 when none is given)."""
        return tuple(HostPort.parse(text, 53) for text in self.nameservers)


@dataclass(frozen=True)
class StoreConfig:
    path: str = field(default_factory=lambda: default_state_dir())
    map_size: int = 1 << 30  # bytes; LMDB's fixed ceiling for the state files


@dataclass(frozen=True)
class PolicyConfig:
    soft_bounce: SoftBounce = "queue"
    hard_suppress_days: float = _RULES.hard_suppress_days
    permanent_after_hard: int = _RULES.permanent_after_hard
    soft_streak_days: float = _RULES.soft_streak_days
    soft_streak_min_attempts: int = _RULES.soft_streak_min_attempts
    soft_suppress_days: tuple[float, ...] = _RULES.soft_suppress_days
    history_size: int = _RULES.history_size
    synthesized_window: float = _RULES.synthesized_window
    domain_first_days: float = _RULES.domain_first_days
    domain_confirmed_days: float = _RULES.domain_confirmed_days
    storm_min: int = _RULES.storm_min
    storm_window: float = _RULES.storm_window
    storm_suppress_hours: float = _RULES.storm_suppress_hours
    reentry_days: float = _RULES.reentry_days


@dataclass(frozen=True)
class QueueConfig:
    schedule: tuple[str, ...] = ("5m", "30m", "2h", "8h", "1d", "3d", "7d", "14d", "21d")
    max_concurrent: int = 20  # retries in flight at once, so retries never starve live mail
    poll_interval: float = 1.0
    dsn_from: str = ""  # the From: of DSNs; default MAILER-DAEMON@<server.hostname>

    @cached_property
    def offsets(self) -> tuple[timedelta, ...]:
        """`schedule`, parsed: how long after the first failure each retry is due."""
        return tuple(timedelta(seconds=parse_duration(text)) for text in self.schedule)


@dataclass(frozen=True)
class LogConfig:
    format: Literal["postfix", "json"] = "postfix"
    file: str = ""
    level: str = "INFO"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # e.g. "127.0.0.1:9325"; empty = off

    @cached_property
    def address(self) -> HostPort | None:
        """`listen`, parsed (port 9325 when none is given); None when off."""
        return _address(self.listen, 9325)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = ""  # e.g. "127.0.0.1:8025"; empty = off
    token: str = ""

    @cached_property
    def address(self) -> HostPort | None:
        """`listen`, parsed (port 8025 when none is given); None when off."""
        return _address(self.listen, 8025)


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
    consent_address: str = ""  # a recipient's DKIM/SPF-verified mail here lifts their block
    forward: bool = False
    # Anyone may send a bounce: every intake client is held to these (relay/inbound/guard.py).
    max_clients: int = 100  # concurrent connections to the intake listener
    client_connection_count_limit: int = 10  # per client address at once; 0 = no limit
    client_connection_rate_limit: int = 60  # new connections a minute per address; 0 = no limit
    session_timeout: float = 120.0  # seconds from connect to the end of any session

    @cached_property
    def address(self) -> HostPort | None:
        """`listen`, parsed (port 25 when none is given); None when off."""
        return _address(self.listen, 25)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    dane: DaneConfig = field(default_factory=DaneConfig)
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
        return self.server.networks

    @property
    def literal_networks(self) -> tuple[IPNetwork, ...]:
        return self.delivery.literal_networks

    @property
    def queue_schedule_seconds(self) -> tuple[float, ...]:
        return tuple(offset.total_seconds() for offset in self.queue.offsets)


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


def default_state_dir() -> str:
    """systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise ./bouncer-state."""
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "bouncer-state"
