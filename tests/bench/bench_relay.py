# Benchmark: bouncer against Postfix and against the raw ceiling, measured
# with Postfix's own load tools on this machine. Prints figures; asserts nothing. Run:
#
#     python tests/bench/bench_relay.py            # full: 5,000 msgs x conc 10,50 x 3 reps
#     python tests/bench/bench_relay.py --quick    # smoke: 500 msgs, 1 rep
#
# Not collected by pytest (bench_*.py). Needs root (a private Postfix), smtp-source/smtp-sink.
"""Interleaved throughput runs of three setups plus a latency probe and bouncer's peak RSS.

Setups, all ending at one smtp-sink whose message counter decides when a run is over:

- ceiling:  smtp-source -> smtp-sink
- bouncer:  smtp-source -> `bouncer serve` -> smtp-sink   (routed by [delivery.routes])
- postfix:  smtp-source -> private Postfix (relayhost) -> smtp-sink

Rate = messages / (time from smtp-source start until the sink has counted them all).
Added latency: one session sending messages one by one, per-message time (MAIL to the
final 250) through bouncer minus the same directly to the sink, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.postfix import (  # noqa: E402
    SMTP_SINK,
    free_port,
    postfix_instance,
    postfix_skip_reason,
    smtp_source,
    wait_port,
)

RCPT_DOMAIN = "sink.test"


class CountingSink:
    """smtp-sink with -c: it prints "sess=N quit=N mesg=N\\r" counters; we follow mesg=."""

    def __init__(self) -> None:
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [SMTP_SINK, *user, "-c", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.count = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_port("127.0.0.1", self.port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(65536):  # type: ignore[attr-defined]  # BufferedReader
            buf += chunk
            *done, buf = buf.split(b"\r")
            for rec in done[-1:]:
                m = re.search(rb"mesg=(\d+)", rec)
                if m:
                    with self._cond:
                        self.count = int(m.group(1))
                        self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= target, timeout=timeout)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


@dataclass
class Bouncer:
    """`bouncer serve` as a subprocess with a throw-away state dir; routes sink.test to the sink."""

    sink_port: int
    workers: int
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bouncer-bench-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_toml: str = ""  # more config, e.g. [[dkim.keys]] (tests/bench/bench_dkim.py)

    def start(self) -> None:
        cfg = self.base / "bouncer.toml"
        cfg.write_text(
            f"""
[server]
listen = ["127.0.0.1:{self.port}"]
hostname = "bouncer.bench"
max_clients = 1000
workers = {self.workers}
[delivery]
helo = "bouncer.bench"
starttls = "off"
max_sessions_per_destination = 100
[delivery.routes]
"{RCPT_DOMAIN}" = "127.0.0.1:{self.sink_port}"
[store]
path = "{self.base / "state"}"
[log]
file = "{self.base / "bouncer.log"}"
{self.extra_toml}"""
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
            cwd=ROOT,
            stdout=open(self.base / "stdout", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port("127.0.0.1", self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                "bouncer serve did not start:\n" + (self.base / "stdout").read_text()[-3000:]
            ) from None

    def pids(self) -> list[int]:
        """The serve process and its worker children."""
        assert self.proc is not None
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the serve process and its workers."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) 14, 15)
        return total / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> tuple[float, float]:
        """(largest single process, sum over processes) of VmHWM, the kernel's peak RSS."""
        peaks = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
                if m:
                    peaks.append(int(m.group(1)) / 1024)
        return (max(peaks, default=0.0), sum(peaks))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def run_throughput(sink: CountingSink, port: int, messages: int, conc: int, size: int) -> float:
    """Messages per second from smtp-source start until the sink has counted them all."""
    target = sink.count + messages
    t0 = time.perf_counter()
    proc = smtp_source(port, messages, conc, size, recipient=f"rcpt@{RCPT_DOMAIN}")
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({proc.returncode}): {proc.stderr[-500:]}")
    if not sink.wait_for(target, timeout=300):
        raise RuntimeError(f"sink counted {sink.count}, expected {target}")
    return messages / (time.perf_counter() - t0)


async def _latencies(port: int, messages: int, size: int) -> list[float]:
    """One session, messages sent one after another; seconds from MAIL to the final 250."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    body = b"Subject: latency\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size // 78) + b".\r\n"
    await reply()
    writer.write(b"EHLO probe.bench\r\n")
    await reply()
    out = []
    for i in range(messages):
        t0 = time.perf_counter()
        for cmd in (b"MAIL FROM:<probe@source.test>", f"RCPT TO:<p{i}@{RCPT_DOMAIN}>".encode()):
            writer.write(cmd + b"\r\n")
            if not (await reply()).startswith(b"250"):
                raise RuntimeError(f"{cmd!r} refused")
        writer.write(b"DATA\r\n")
        if not (await reply()).startswith(b"354"):
            raise RuntimeError("DATA refused")
        writer.write(body)
        final = await reply()
        if not final.startswith(b"250"):
            raise RuntimeError(f"message refused: {final!r}")
        out.append(time.perf_counter() - t0)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def maybe_postfix(sink_port: int, enabled: bool) -> Iterator[int | None]:
    if not enabled:
        yield None
        return
    # Postfix's defaults, except the concurrency towards the relayhost, which must not
    # be the bottleneck at 50 client sessions (default_destination_concurrency_limit = 20).
    with postfix_instance(
        f"[127.0.0.1]:{sink_port}",
        default_destination_concurrency_limit="100",
        initial_destination_concurrency="20",
        default_process_limit="200",
    ) as pf:
        yield pf.port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=5120, help="body bytes per message")
    ap.add_argument("--concurrency", default="10,50")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--latency-messages", type=int, default=1000)
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--quick", action="store_true", help="500 messages, 1 repetition")
    ap.add_argument("--profile", metavar="SVG", help="py-spy record bouncer's first worker")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.reps, args.latency_messages = 500, 1, 200
    reason = postfix_skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    concs = [int(c) for c in args.concurrency.split(",")]
    setups = ["ceiling", "bouncer"] + ([] if args.no_postfix else ["postfix"])
    rates: dict[tuple[str, int], list[float]] = {(s, c): [] for s in setups for c in concs}
    cpu_ms: list[float] = []

    sink = CountingSink()
    bouncer = Bouncer(sink.port, args.workers)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        bouncer.start()
        with maybe_postfix(sink.port, not args.no_postfix) as pf_port:
            ports = {"ceiling": sink.port, "bouncer": bouncer.port, "postfix": pf_port}
            print(
                f"# {args.messages} msgs x {args.size} B, 1 rcpt, conc {concs}, "
                f"{args.reps} reps, bouncer workers={args.workers}, cpus={os.cpu_count()}",
                flush=True,
            )
            # Warm-up: sessions, caches and Postfix's processes exist before timing starts.
            for s in setups:
                run_throughput(sink, ports[s] or 0, 200, 10, args.size)
            if args.profile:
                # "x.txt": collapsed stacks (grep-able); "x.json": speedscope; else an SVG.
                fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(args.profile).suffix, "")
                profiler = subprocess.Popen(
                    ["py-spy", "record", "-o", args.profile, "-p", str(bouncer.pids()[-1])]
                    + (["--format", fmt] if fmt else []),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for rep in range(args.reps):
                for conc in concs:
                    # Interleave setups, rotating the order so no setup always goes first.
                    order = setups[rep % len(setups) :] + setups[: rep % len(setups)]
                    for s in order:
                        cpu0 = bouncer.cpu_seconds()
                        rate = run_throughput(sink, ports[s] or 0, args.messages, conc, args.size)
                        rates[(s, conc)].append(rate)
                        if s == "bouncer":
                            cpu_ms.append((bouncer.cpu_seconds() - cpu0) / args.messages * 1000)
                        print(f"rep {rep + 1} conc {conc:>3} {s:<8} {rate:9.0f} msg/s", flush=True)
            if profiler:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
            direct: list[float] = []
            through: list[float] = []
            for _ in range(2):  # interleaved halves against drift
                half = args.latency_messages // 2
                direct += asyncio.run(_latencies(sink.port, half, args.size))
                through += asyncio.run(_latencies(bouncer.port, half, args.size))
            rss_max, rss_sum = bouncer.peak_rss_mb()
    finally:
        if profiler and profiler.poll() is None:
            profiler.kill()
        bouncer.stop()
        sink.stop()

    print("\n| concurrency | setup | median msg/s | runs |")
    print("|---|---|---|---|")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for conc in concs:
        for s in setups:
            runs = ", ".join(f"{r:.0f}" for r in rates[(s, conc)])
            print(f"| {conc} | {s} | {med[(s, conc)]:.0f} | {runs} |")
    print("\n| concurrency | bouncer / ceiling | bouncer / postfix |")
    print("|---|---|---|")
    for conc in concs:
        b = med[("bouncer", conc)]
        vs_pf = f"{b / med[('postfix', conc)]:.2f}" if "postfix" in setups else "n/a"
        print(f"| {conc} | {b / med[('ceiling', conc)]:.2f} | {vs_pf} |")
    p50 = (percentile(through, 50) - percentile(direct, 50)) * 1000
    p99 = (percentile(through, 99) - percentile(direct, 99)) * 1000
    print(
        f"\nper-message latency, 1 session, {len(direct)} msgs each: direct p50 "
        f"{percentile(direct, 50) * 1000:.2f} ms p99 {percentile(direct, 99) * 1000:.2f} ms; "
        f"via bouncer p50 {percentile(through, 50) * 1000:.2f} ms "
        f"p99 {percentile(through, 99) * 1000:.2f} ms; added p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    print(f"bouncer CPU per message (all workers, median): {statistics.median(cpu_ms):.2f} ms")
    print(
        f"bouncer peak RSS (VmHWM): largest process {rss_max:.1f} MB, all workers {rss_sum:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
