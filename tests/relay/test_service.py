"""Service lifecycle: startup failures exit 3, SIGTERM drains and exits 0 (`bouncer serve`)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from relay.config.load import config_from_dict
from relay.service import EXIT_BUSY, EXIT_STARTUP, Service
from tests.support.wait import until, until_sync

ROOT = Path(__file__).resolve().parents[2]


async def test_listen_address_in_use_is_its_own_exit_code(tmp_path: Path) -> None:
    # A busy port may be transient (the old process still draining), so it is
    # not 3 (bad config, which the unit's RestartPreventExitStatus=3 never restarts).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config_from_dict(
            {"server": {"listen": [f"127.0.0.1:{port}"]}, "store": {"path": str(tmp_path / "s")}}
        )
        assert await Service(cfg).run() == EXIT_BUSY == 75
        # A metrics port in use is the same case.
        cfg = config_from_dict(
            {
                "server": {"listen": ["127.0.0.1:0"]},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "store": {"path": str(tmp_path / "s")},
            }
        )
        assert await Service(cfg).run() == EXIT_BUSY


async def test_listen_address_not_on_this_host_is_exit_3(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {"server": {"listen": ["192.0.2.1:2525"]}, "store": {"path": str(tmp_path / "s")}}
    )
    assert await Service(cfg).run() == EXIT_STARTUP


async def test_failing_component_start_is_exit_3(tmp_path: Path) -> None:
    class Broken:
        async def start(self) -> None:
            raise OSError("address not available")

        async def stop(self) -> None:
            pass

    cfg = config_from_dict(
        {"server": {"listen": ["127.0.0.1:0"]}, "store": {"path": str(tmp_path / "s")}}
    )
    svc = Service(cfg)
    svc.add(Broken())
    assert await svc.run() == EXIT_STARTUP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bouncer_serve_subprocess_answers_then_sigterm_exits_0(tmp_path: Path) -> None:
    port = _free_port()
    conf = tmp_path / "bouncer.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n[store]\npath = "{tmp_path / "state"}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        greeting = b""

        def greeted() -> bool:
            nonlocal greeting
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    greeting = s.recv(100)
            except OSError:
                return False
            return bool(greeting)

        until_sync(greeted, "bouncer serve to greet", within=15)
        assert greeting.startswith(b"220 ")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes the stderr pipe


async def test_shutdown_lets_an_in_flight_transaction_finish(tmp_path: Path) -> None:
    import smtplib

    from tests.support.fake_mx import FakeMX

    async with FakeMX(rcpt_delay=0.5) as mx:
        cfg = config_from_dict(
            {
                "server": {"listen": ["127.0.0.1:0"]},
                "store": {"path": str(tmp_path / "s")},
                "delivery": {"routes": {"example.test": mx.address}, "drain_timeout": 5},
            }
        )
        svc = Service(cfg)
        await svc.startup()
        host, port = svc.addresses[0]
        mail_sent = asyncio.Event()
        loop = asyncio.get_running_loop()

        def client() -> tuple[int, bytes]:
            with smtplib.SMTP(host, port, timeout=10) as c:
                c.ehlo()
                c.mail("a@sender.test")
                loop.call_soon_threadsafe(mail_sent.set)
                c.rcpt("b@example.test")  # in flight (0.5 s at the remote) when the stop comes
                return c.data(b"Subject: x\r\n\r\ndrained\r\n")

        task = asyncio.create_task(asyncio.to_thread(client))
        await mail_sent.wait()
        await until(lambda: "RCPT b@example.test" in mx.commands, "the RCPT at the remote")
        await svc.shutdown()
        code, _ = await task
        assert code == 250
        assert len(mx.messages) == 1 and b"drained" in mx.messages[0].data


async def test_components_are_built_from_the_config_in_start_order(relay_service: Any) -> None:
    """The log writer starts first (it sees the others' events), the notifier last (READY=1
    once everything runs); a component the config leaves off is not built."""
    from relay.config.reload import Reloader
    from relay.intake.listener import Intake
    from relay.observe.api import Api
    from relay.observe.counters import StatsCounters
    from relay.observe.logsink import LogWriter
    from relay.observe.metrics import Metrics
    from relay.observe.sdnotify import Notifier
    from relay.queue.component import QueueRunner

    all_on = {
        "metrics": {"listen": "127.0.0.1:0"},
        "api": {"listen": "127.0.0.1:0", "token": "t" * 16},
        "intake": {"listen": "127.0.0.1:0", "feedback_addresses": ["fbl@relay.test"]},
    }
    svc = await relay_service(all_on)
    assert [type(c) for c in svc.components] == [
        LogWriter,
        StatsCounters,
        QueueRunner,
        Metrics,
        Api,
        Intake,
        Reloader,
        Notifier,
    ]
    assert svc.log_sinks == [svc.components[0]]
    plain = await relay_service()
    assert [type(c) for c in plain.components] == [
        LogWriter,
        StatsCounters,
        QueueRunner,
        Reloader,
        Notifier,
    ]
