# `bouncer serve` as operators run it (a separate process, a config file, a log file):
# real traffic to fake MXes, a SIGHUP that moves a route while a client stays connected,
# then pflogsumm over the log bouncer wrote and `bouncer stats` over the counters it kept.
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_mx import FakeMX
from tests.support.pflog import pflogsumm_totals, require_pflogsumm
from tests.support.postfix import free_port
from tests.support.smtp_client import open_client, send, transaction

ROOT = Path(__file__).resolve().parents[2]
SENDER = "app@sender.test"


def _write_config(path: Path, tmp: Path, port: int, routes: dict[str, str]) -> None:
    route_lines = "\n".join(f'"{d}" = "{t}"' for d, t in routes.items())
    path.write_text(
        f"""
[server]
listen = ["127.0.0.1:{port}"]
hostname = "relay.test"

[delivery]
helo = "relay.test"
connect_timeout = 2.0
command_timeout = 5.0
drain_timeout = 2.0

[delivery.routes]
{route_lines}

[store]
path = "{tmp / "state"}"
map_size = 16777216

[log]
file = "{tmp / "mail.log"}"
"""
    )


async def _wait_for(sock: socket.socket, text: str, proc: subprocess.Popen[bytes]) -> str:
    """The next notify datagram containing `text` (see relay/observe/sdnotify.py)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "bouncer exited"
        try:
            msg = (await asyncio.wait_for(loop.sock_recv(sock, 4096), 1)).decode()
        except TimeoutError:
            continue
        if text in msg:
            return msg
    raise TimeoutError(f"no {text!r} from bouncer")


async def test_serve_reload_pflogsumm_and_stats(tmp_path: Path, make_fake_mx: Any) -> None:
    require_pflogsumm()
    mx_a: FakeMX = await make_fake_mx()
    mx_b: FakeMX = await make_fake_mx()
    mx_a.rcpt_replies["dead@good.test"] = "550 5.1.1 <dead@good.test>: User unknown"
    mx_a.rcpt_replies["full@good.test"] = "452 4.2.2 Mailbox full"
    port = free_port()
    conf = tmp_path / "bouncer.toml"
    _write_config(conf, tmp_path, port, {"good.test": mx_a.address, "moved.test": mx_a.address})

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    proc = _spawn(conf, tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        await _wait_for(notify, "READY=1", proc)

        # Known traffic: 4 delivered, 1 hard bounce, 1 queued, then a suppressed refusal.
        got = await send("127.0.0.1", port, SENDER, ["a1@good.test", "a2@good.test"])
        assert got.data is not None and got.data[0] == 250
        got = await send("127.0.0.1", port, SENDER, ["dead@good.test", "a3@good.test"])
        assert got.rcpt["dead@good.test"][0] == 550
        got = await send("127.0.0.1", port, SENDER, ["full@good.test"])
        assert got.data is not None and got.data[0] == 250  # bouncer queued it
        got = await send("127.0.0.1", port, SENDER, ["dead@good.test", "a4@good.test"])
        assert got.rcpt["dead@good.test"][0] == 550 and got.rcpt["a4@good.test"][0] == 250

        # SIGHUP moves moved.test from MX A to MX B; a client connected across it stays.
        client = await open_client("127.0.0.1", port)
        got = await transaction(client, SENDER, ["m1@moved.test"])
        assert got.data is not None and got.data[0] == 250
        assert [m.rcpt_tos for m in mx_a.messages][-1] == ("m1@moved.test",)
        _write_config(conf, tmp_path, port, {"good.test": mx_a.address, "moved.test": mx_b.address})
        proc.send_signal(signal.SIGHUP)
        await _wait_for(notify, "RELOADING=1", proc)
        await _wait_for(notify, "READY=1", proc)
        got = await transaction(client, SENDER, ["m2@moved.test"])
        assert got.data is not None and got.data[0] == 250
        assert [m.rcpt_tos for m in mx_b.messages] == [("m2@moved.test",)]
        await client.quit()
        diagnostics = (tmp_path / "stderr").read_bytes()
        assert b"reloaded" in diagnostics and b"need a restart" not in diagnostics

        # A bad config on SIGHUP is refused and the old one keeps serving.
        conf.write_text(conf.read_text() + "\n[bogus]\n")
        proc.send_signal(signal.SIGHUP)
        await _wait_for(notify, "READY=1", proc)
        got = await send("127.0.0.1", port, SENDER, ["m3@moved.test"])
        assert got.data is not None and got.data[0] == 250 and len(mx_b.messages) == 2

        proc.send_signal(signal.SIGTERM)
        await _wait_for(notify, "STOPPING=1", proc)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert b"bogus: unknown key" in (tmp_path / "stderr").read_bytes()

    # pflogsumm reads the log bouncer wrote, and counts the truth.
    totals = pflogsumm_totals(tmp_path / "mail.log")
    assert totals["delivered"] == 7  # a1 a2 a3 a4 m1 m2 m3
    assert totals["bounced"] == 1  # dead@ at its first RCPT
    assert totals["rejected"] == 1  # dead@ again: suppressed by bouncer
    assert totals["deferred"] == 1 and totals["deferrals"] == 1  # full@, queued
    assert totals["received"] == 7  # messages accepted at DATA

    # `bouncer stats` reads the counters the server flushed at stop.
    out = _run_cli(
        "stats",
        "--config",
        str(_stats_conf(tmp_path)),
        "--by",
        "domain",
        "--since",
        "1d",
        "--format",
        "json",
    )
    rows = {r["key"]: r for r in json.loads(out)["rows"]}
    good = rows["good.test"]
    assert (good["sent"], good["delivered"], good["hard"], good["soft"], good["suppressed"]) == (
        6, 4, 1, 1, 1,
    )  # fmt: skip
    assert good["hard_rate"] == pytest.approx(1 / 6) and good["soft_rate"] == pytest.approx(1 / 6)
    assert (rows["moved.test"]["sent"], rows["moved.test"]["delivered"]) == (3, 3)


def _stats_conf(tmp: Path) -> Path:
    path = tmp / "stats.toml"
    path.write_text(f'[store]\npath = "{tmp / "state"}"\nmap_size = 16777216\n')
    return path


def _spawn(conf: Path, tmp: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`bouncer serve --config conf` as its own process; diagnostics go to tmp/stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra_env}
    env.pop("JOURNAL_STREAM", None)  # the log must go to our file and stderr, not journald
    with open(tmp / "stderr", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(conf)],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            cwd=tmp,
        )


def _run_cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
