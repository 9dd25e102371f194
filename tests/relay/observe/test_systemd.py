# The systemd unit passes `systemd-analyze verify` and carries the directives the README
# describes; relay/observe/sdnotify.py speaks the notify protocol to a socket the test owns.
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.load import DeliveryConfig
from relay.observe.sdnotify import Notifier, notify, watchdog_interval

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "bouncer.service"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_unit_has_the_required_directives() -> None:
    d = _directives()
    expected = {
        "Type": "notify",
        # A static user (README "Installing as a service"): the 0640 root:bouncer config
        # and secrets are readable through its group, which a DynamicUser cannot be in.
        "User": "bouncer",
        "Group": "bouncer",
        "StateDirectory": "bouncer",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "3 4",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "WatchdogSec" in d
    assert re.fullmatch(r"/bin/kill -HUP \$MAINPID", d["ExecReload"][0])
    assert "DynamicUser" not in d
    # The venv the README installs into, and the config path the CLI reads by default.
    assert d["ExecStart"] == ["/opt/bouncer/bin/bouncer serve --config /etc/bouncer/bouncer.toml"]
    # The stop timeout must outlast the drain, or systemd kills in-flight transactions.
    assert _seconds(d["TimeoutStopSec"][0]) > DeliveryConfig().drain_timeout


def _installed_bouncer() -> str | None:
    beside = Path(sys.executable).parent / "bouncer"
    return str(beside) if beside.exists() else shutil.which("bouncer")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not os.access(ANALYZE, os.X_OK):
        pytest.skip("systemd-analyze is not installed")
    bouncer = _installed_bouncer()
    if bouncer is None:
        pytest.skip("the bouncer command is not installed (pip install -e .)")
    # verify insists that ExecStart's binary exists: point a copy at the installed one.
    text = UNIT.read_text().replace("/opt/bouncer/bin/bouncer", bouncer)
    assert bouncer in text
    copy = tmp_path / "bouncer.service"
    copy.write_text(text)
    result = subprocess.run(
        [ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "bouncer.service" not in result.stderr, result.stderr  # no warnings either
    if Path("/usr/local/bin/bouncer").exists():
        result = subprocess.run([ANALYZE, "verify", str(UNIT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_notify_is_a_noop_outside_systemd() -> None:
    assert notify("READY=1", {}) is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


async def test_notifier_ready_watchdog_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    healthy = [True]
    notifier = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}, healthy=lambda: healthy[0]
    )

    async def recv() -> str:
        return (await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)).decode()

    await notifier.start()
    got = {await recv(), await recv()}
    assert any(m.startswith("READY=1") for m in got) and "WATCHDOG=1" in got
    assert await recv() == "WATCHDOG=1"  # pings go on
    notifier.reloading()
    assert (await recv()).startswith("RELOADING=1\nMONOTONIC_USEC=")
    await notifier.stop()
    assert (await recv()).startswith("STOPPING=1")
    sock.close()


def test_abstract_socket_address() -> None:
    name = f"bouncer-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
    assert sock.recv(100) == b"READY=1"
    sock.close()
