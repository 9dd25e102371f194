# Benchmark: what DKIM signing costs bouncer's throughput. Prints figures; asserts nothing.
#
#     python tests/bench/bench_dkim.py            # 3,000 msgs x conc 50 x 3 reps, on and off
#     python tests/bench/bench_dkim.py --quick    # 500 msgs, 1 rep
#
# Not collected by pytest (bench_*.py). Needs smtp-source/smtp-sink (Postfix's tools).
"""Two `bouncer serve` processes, alike but for one [[dkim.keys]] (RSA-2048, or RSA plus
Ed25519 with --ed25519) for smtp-source's sender domain, both routing to one smtp-sink.
Runs alternate between them; the figure is messages/s (smtp-source start until the sink
has counted them all) and bouncer's CPU per message, with signing off and on."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from relay.outbound.dkim import new_key  # noqa: E402
from tests.bench.bench_relay import Bouncer, CountingSink, run_throughput  # noqa: E402
from tests.support.postfix import SMTP_SINK, free_port, postfix_skip_reason, smtp_source  # noqa: E402
from tests.support.wait import until_sync  # noqa: E402

SENDER_DOMAIN = "source.test"  # smtp-source's From: is sender@source.test


def dkim_toml(directory: Path, ed25519: bool) -> str:
    out = ""
    algorithms = ["rsa-sha256"] + (["ed25519-sha256"] if ed25519 else [])
    for algorithm in algorithms:
        key = directory / f"{algorithm}.pem"
        key.write_bytes(new_key(algorithm))
        out += (
            f'[[dkim.keys]]\ndomain = "{SENDER_DOMAIN}"\nselector = "bench"\n'
            f'key_file = "{key}"\nalgorithm = "{algorithm}"\n'
        )
    return out


def signed_sample(keys: str, workers: int) -> bytes:
    """One message through a signing bouncer into `smtp-sink -D`: proof that it signs."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "dump"
        port = free_port()
        os.chmod(tmp, 0o777)  # smtp-sink runs as nobody when we are root
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = subprocess.Popen([SMTP_SINK, *user, "-D", str(dump), f"127.0.0.1:{port}", "10"])
        bouncer = Bouncer(port, workers, extra_toml=keys)
        try:
            bouncer.start()
            smtp_source(bouncer.port, 1, 1, 500)
            until_sync(lambda: dump.exists() and b"Message-Id" in dump.read_bytes(), "the sample")
            return dump.read_bytes()
        finally:
            bouncer.stop()
            sink.terminate()
            sink.wait()


def loop_seconds(bouncer: Bouncer) -> float:
    """CPU seconds of the serve process alone (workers=1: the event loop, without the
    signing child)."""
    assert bouncer.proc is not None
    fields = Path(f"/proc/{bouncer.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--size", type=int, default=5120, help="body bytes per message")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ed25519", action="store_true", help="sign with RSA and Ed25519")
    ap.add_argument("--quick", action="store_true", help="500 messages, 1 repetition")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.reps = 500, 1
    reason = postfix_skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    keydir = Path(tempfile.mkdtemp(prefix="bouncer-dkim-keys-"))
    keys = dkim_toml(keydir, args.ed25519)
    sample = signed_sample(keys, args.workers)
    signatures = sample.count(b"DKIM-Signature:")
    print(f"# sample message through the signing bouncer: {signatures} DKIM-Signature header(s)")
    if not signatures:
        print("signing bouncer did not sign: no figures", file=sys.stderr)
        return 1
    sink = CountingSink()
    setups = {
        "off": Bouncer(sink.port, args.workers),
        "on": Bouncer(sink.port, args.workers, extra_toml=keys),
    }
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    loop_cpu: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for b in setups.values():
            b.start()
            run_throughput(sink, b.port, 200, 10, args.size)  # warm-up
        print(
            f"# {args.messages} msgs x {args.size} B, conc {args.concurrency}, {args.reps} reps, "
            f"workers={args.workers}, cpus={os.cpu_count()}, "
            f"keys: RSA-2048{' + Ed25519' if args.ed25519 else ''}",
            flush=True,
        )
        for rep in range(args.reps):
            order = ["off", "on"] if rep % 2 == 0 else ["on", "off"]
            for name in order:
                b = setups[name]
                cpu0, loop0 = b.cpu_seconds(), loop_seconds(b)
                rate = run_throughput(sink, b.port, args.messages, args.concurrency, args.size)
                rates[name].append(rate)
                cpu[name].append((b.cpu_seconds() - cpu0) / args.messages * 1000)
                loop_cpu[name].append((loop_seconds(b) - loop0) / args.messages * 1000)
                took, loop = cpu[name][-1], loop_cpu[name][-1]
                print(
                    f"rep {rep + 1} dkim {name:<3} {rate:7.0f} msg/s  {took:.2f} ms CPU/msg "
                    f"(event loop {loop:.2f})",
                    flush=True,
                )
    finally:
        for b in setups.values():
            b.stop()
        sink.stop()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print("\n| DKIM | median msg/s | CPU ms/msg, all | of it the event loop | runs |")
    print("|---|---|---|---|---|")
    for name in ("off", "on"):
        runs = ", ".join(f"{r:.0f}" for r in rates[name])
        print(
            f"| {name} | {statistics.median(rates[name]):.0f} | "
            f"{statistics.median(cpu[name]):.2f} | {statistics.median(loop_cpu[name]):.2f} | "
            f"{runs} |"
        )
    print(f"\nsigning costs {100 * (1 - on / off):.1f}% of throughput at C={args.concurrency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
