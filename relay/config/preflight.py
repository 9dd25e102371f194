# This module checks a loaded config against the machine: the files, directories and
# names `serve` will use. It reads and stats files; it opens no socket and writes nothing.
"""What `bouncer check-config` adds to the config's own validation (relay/config/load.py).

`problems(cfg)` lists what would make `bouncer serve` fail at startup, each
naming its key: TLS files that do not load, a users file that does not parse,
a log file in a directory that does not exist, a state directory that cannot
be created. `warnings(cfg)` lists what would run but hurt: a name that is not
fully qualified (remotes refuse it in HELO), an open-relay network, AUTH that
can never be offered. `serve` runs the same checks first, so both say the same.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

from relay.config.load import Config
from relay.inbound.auth import AuthConfigError, load_users, make_tls_context
from relay.outbound.dkim import DkimKeyError, load_signer
from relay.outbound.tls import verify_context


def problems(cfg: Config) -> list[str]:
    """Each reason `serve` would refuse to start with this config on this machine."""
    out: list[str] = []
    s = cfg.server
    if s.tls_cert and s.tls_key:
        for key, path in {"server.tls_cert": s.tls_cert, "server.tls_key": s.tls_key}.items():
            if not os.path.isfile(path):
                out.append(f"{key}: no such file: {path}")
        if not out:
            try:
                make_tls_context(s.tls_cert, s.tls_key)
            except AuthConfigError as exc:
                out.append(f"server.tls_cert/server.tls_key: {exc}")
    if s.users_file:
        try:
            load_users(s.users_file)
        except AuthConfigError as exc:
            out.append(f"server.users_file: {exc}")
    if cfg.delivery.ca_file:
        try:
            verify_context.__wrapped__(cfg.delivery.ca_file)
        except (OSError, ssl.SSLError) as exc:
            out.append(f"delivery.ca_file: {cfg.delivery.ca_file}: cannot load CAs: {exc}")
    try:
        load_signer(cfg.dkim.keys, cfg.dkim.headers, in_process=True)
    except DkimKeyError as exc:
        out.append(str(exc))
    if cfg.log.file:
        parent = Path(cfg.log.file).parent
        if Path(cfg.log.file).is_dir():
            out.append(f"log.file: {cfg.log.file} is a directory")
        elif not parent.is_dir():
            out.append(f"log.file: directory {parent} does not exist")
        elif not os.access(cfg.log.file if Path(cfg.log.file).exists() else parent, os.W_OK):
            out.append(f"log.file: {cfg.log.file} is not writable")
    state = Path(cfg.store.path)
    if state.exists() and not state.is_dir():
        out.append(f"store.path: {state} is not a directory")
    elif not state.exists():
        ancestor = next(p for p in state.absolute().parents if p.exists())
        if not os.access(ancestor, os.W_OK):
            out.append(f"store.path: {state} does not exist and {ancestor} is not writable")
    return out


def warnings(cfg: Config) -> list[str]:
    """What would run but is likely wrong, each naming its key."""
    out: list[str] = []
    for key, name in (
        ("server.hostname", cfg.server.hostname),
        ("delivery.helo", cfg.delivery.helo),
    ):
        if "." not in name.strip("[]") or name.lower().startswith("localhost"):
            out.append(
                f"{key}: {name!r} is not a fully qualified domain name; remote servers "
                "that check HELO (Postfix's reject_non_fqdn_helo_hostname) refuse mail from it"
            )
    for n, text in enumerate(cfg.server.allowed_clients):
        net = ipaddress.ip_network(text, strict=False)
        if net.prefixlen == 0:
            out.append(
                f"server.allowed_clients[{n}]: {text} lets every host on the internet relay "
                "through bouncer without AUTH (an open relay)"
            )
    if cfg.server.users_file and not cfg.server.tls_cert:
        out.append(
            "server.users_file: set without server.tls_cert/tls_key; AUTH is only offered "
            "after STARTTLS, so no user can log in"
        )
    return out
