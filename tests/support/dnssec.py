# Test support: a DNSSEC-signed zone served by NSD and a validating Unbound in front of it,
# both on free loopback ports, so DANE is tested against real validation (the AD bit is
# Unbound's verdict, not a flag a fake server sets). Debian: nsd, unbound, ldnsutils.
"""A signed zone behind a validating resolver, for DANE tests.

Usage::

    with signed_zone(tmp_path, "dane.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"]) as ns:
        config nameservers = [ns]          # "127.0.0.1:PORT", Unbound validating

`skip_reason()` says why it cannot run here (a binary missing), or None.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.resolver

from tests.support.wait import until_sync

TOOLS = ("nsd", "unbound", "ldns-keygen", "ldns-signzone")


def skip_reason() -> str | None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: nsd unbound ldnsutils)"
    return None


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free UDP+TCP port")


def _validated(port: int, name: str) -> bool:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 1.0
    resolver.flags = dns.flags.RD | dns.flags.AD
    try:
        answer = resolver.resolve(name, "SOA")
    except dns.exception.DNSException:
        return False
    return bool(answer.response.flags & dns.flags.AD)


@contextlib.contextmanager
def signed_zone(base: Path, origin: str, records: Sequence[str]) -> Iterator[str]:
    """Sign `records` (zone-file lines relative to `origin`) and serve them; yields the
    validating resolver's "127.0.0.1:PORT"."""
    d = base / "dnssec"
    d.mkdir()
    (d / "zone").write_text(
        f"$ORIGIN {origin}.\n$TTL 300\n"
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n"
        f"@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n" + "\n".join(records) + "\n"
    )

    def run(*args: str) -> str:
        return subprocess.run(args, cwd=d, check=True, capture_output=True, text=True).stdout

    ksk = run("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin).strip()
    zsk = run("ldns-keygen", "-a", "ECDSAP256SHA256", origin).strip()
    run("ldns-signzone", "zone", ksk, zsk)
    nsd_port, unbound_port = _free_port(), _free_port()
    (d / "nsd.conf").write_text(
        f'server:\n  ip-address: 127.0.0.1@{nsd_port}\n  database: ""\n  zonesdir: "{d}"\n'
        f'  pidfile: "{d}/nsd.pid"\n  username: ""\n  xfrdfile: "{d}/xfrd.state"\n'
        f'  zonelistfile: "{d}/zone.list"\n  logfile: "{d}/nsd.log"\n'
        f"remote-control:\n  control-enable: no\n"
        f"zone:\n  name: {origin}\n  zonefile: zone.signed\n"
    )
    # Unbound answers names under .test from its built-in local zones unless told not to
    # (RFC 6761); the trust anchor is the zone's own key-signing key.
    (d / "unbound.conf").write_text(
        f"server:\n  interface: 127.0.0.1@{unbound_port}\n  port: {unbound_port}\n"
        f'  do-not-query-localhost: no\n  username: ""\n  chroot: ""\n  directory: "{d}"\n'
        f'  pidfile: "{d}/unbound.pid"\n  use-syslog: no\n  do-ip6: no\n'
        f'  module-config: "validator iterator"\n  trust-anchor-file: "{d}/{ksk}.key"\n'
        f'  local-zone: "{origin.rsplit(".", 1)[-1]}." nodefault\n'
        f"remote-control:\n  control-enable: no\n"
        f'stub-zone:\n  name: "{origin}"\n  stub-addr: 127.0.0.1@{nsd_port}\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in (["nsd", "-d", "-c", "nsd.conf"], ["unbound", "-d", "-c", "unbound.conf"]):
            out = open(d / f"{cmd[0]}.out", "wb")  # noqa: SIM115 (closed with the process)
            procs.append(subprocess.Popen(cmd, cwd=d, stdout=out, stderr=subprocess.STDOUT))
            out.close()
        until_sync(lambda: _validated(unbound_port, origin), f"Unbound validating {origin}")
        yield f"127.0.0.1:{unbound_port}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
