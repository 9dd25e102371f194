# [server] workers = N (relay/workers.py): N processes share one port through SO_REUSEPORT,
# SIGTERM to the parent stops them all with exit 0, and a worker that fails at startup
# (exit 3) brings the whole group down with exit 3.
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.support.postfix import free_port, wait_port
from tests.support.wait import until_sync

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from relay.workers import current_worker, listen_reuse_port, run_workers

    PORT, COUNT, FAIL = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def serve_one(index: int) -> int:
        if FAIL >= 0 and index == FAIL:
            return 3
        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            async def answer(reader, writer):
                idx, count = current_worker()
                writer.write(f"{os.getpid()} {idx} {count}\\n".encode())
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(
                answer, "127.0.0.1", PORT, reuse_port=listen_reuse_port(COUNT)
            )
            await stop.wait()
            server.close()
            await server.wait_closed()
            return 0
        return asyncio.run(main())

    sys.exit(run_workers(COUNT, serve_one))
    """
)


def _start(port: int, count: int, fail: int = -1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, str(port), str(count), str(fail)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill the group if it is still running, wait for it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _ask(port: int) -> tuple[int, int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        pid, idx, count = s.makefile().readline().split()
    return int(pid), int(idx), int(count)


def test_workers_share_the_port_and_stop_on_sigterm() -> None:
    port = free_port()
    proc = _start(port, 2)
    try:
        wait_port("127.0.0.1", port)
        # Both workers must have bound before the kernel can spread connections.
        deadline = time.monotonic() + 10
        seen: dict[int, int] = {}
        while len(seen) < 2 and time.monotonic() < deadline:
            pid, idx, count = _ask(port)
            assert count == 2
            seen[pid] = idx
        assert len(seen) == 2, f"all connections went to one worker: {seen}"
        assert sorted(seen.values()) == [0, 1]
        assert proc.pid not in seen  # the parent serves nothing itself
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        _reap(proc)


def test_a_worker_failing_at_startup_stops_all_with_exit_3() -> None:
    port = free_port()
    proc = _start(port, 3, fail=1)
    try:
        assert proc.wait(timeout=15) == 3
    finally:
        _reap(proc)
    # Nobody is left listening on the port.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            raise AssertionError("a worker survived its group")
    except ConnectionRefusedError:
        pass


def test_single_worker_runs_in_process() -> None:
    port = free_port()
    proc = _start(port, 1)
    try:
        wait_port("127.0.0.1", port)
        pid, idx, count = _ask(port)
        assert (pid, idx, count) == (proc.pid, 0, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        _reap(proc)


def _listeners(port: int) -> int:
    """Sockets listening on `port` on this host (IPv4), from /proc/net/tcp (state 0A)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


async def test_bouncer_serve_with_two_workers(tmp_path: Any, fake_mx: Any) -> None:
    """`[server] workers = 2`: both workers take connections, mail flows, SIGTERM exits 0."""
    import asyncio
    import re

    import aiosmtplib

    from tests.support.serve import bouncer_process

    table = {
        "server": {"workers": 2},
        "delivery": {"routes": {"example.test": fake_mx.address}},
    }
    with bouncer_process(tmp_path / "b", table) as b:
        children = _children(b.proc.pid)
        assert len(children) == 2
        # The port opens with the first worker's socket; each worker binds its own
        # (SO_REUSEPORT), so wait for both before counting who served what.
        until_sync(lambda: _listeners(b.port) == 2, "both workers listening")
        for i in range(30):  # fresh connections: the kernel spreads them over the workers
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=b.port, start_tls=False) as c:
                await c.sendmail(
                    "a@sender.test", [f"r{i}@example.test"], b"Subject: w\r\n\r\nx\r\n"
                )
        pids = set(re.findall(r"bouncer/smtpd\[(\d+)\]: connect from", b.log_text()))
        assert pids == set(children), f"connections served by {pids}, workers are {children}"
        assert len(fake_mx.messages) == 30
        assert await asyncio.to_thread(b.stop) == 0
