# docs/behaviour.md#suppression-policy end to end: a real Service (SMTP in, the fake MX out),
# time as a parameter (the service's clock), the store and the CLI as operators use them.
"""Suppression that follows the sendings: no permanence in a minute, a one-day domain
record, the storm breaker and its command, re-entry, the refusal per reason in pflogsumm."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policy.suppression.records import Basis, State, basis_of
from policy.verdict import Category
from relay.config.load import LogConfig
from relay.observe.logsink import LogWriter
from relay.observe.probes import gauge_probes
from tests.support.fake_mx import FakeMX
from tests.support.pflog import require_pflogsumm
from tests.support.smtp_client import send

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


class Clock:
    """The service's clock: advanced by the test, never by sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


async def _service(relay_service: Any, mx: FakeMX, clock: Clock, **extra: Any) -> Any:
    routes = {d: mx.address for d in ("example.test", "gone.test", "big.test", "sender.test")}
    overrides: dict[str, Any] = {"delivery": {"routes": routes}, **extra}
    return await relay_service(overrides, clock=clock)


async def test_one_hard_bounce_and_four_sends_in_a_minute_is_not_permanent(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    clock = Clock(datetime.now(UTC))
    svc = await _service(relay_service, fake_mx, clock)
    host, port = svc.addresses[0]
    codes = []
    for _ in range(5):
        got = await send(host, port, "app@sender.test", ["dead@example.test"])
        codes.append(got.rcpt["dead@example.test"][0])
        clock.advance(seconds=12)
    assert codes == [550] * 5
    assert fake_mx.rcpts.count("dead@example.test") == 1  # the four others never left
    rec = svc.store.get("dead@example.test", clock.now)
    assert rec.state is State.SUPPRESSED and rec.synthesized == 1, rec
    assert rec.until is not None and rec.until > clock.now + timedelta(days=89)


async def test_a_domain_refusal_and_four_other_addresses_suppress_the_domain_for_a_day(
    fake_mx: FakeMX, relay_service: Any
) -> None:
    fake_mx.rcpt_replies["a@gone.test"] = "550 5.1.2 Domain not found"
    clock = Clock(datetime.now(UTC))
    svc = await _service(relay_service, fake_mx, clock)
    host, port = svc.addresses[0]
    got = await send(host, port, "app@sender.test", ["a@gone.test"])
    assert got.rcpt["a@gone.test"][0] == 550
    others = [f"{n}@gone.test" for n in ("b", "c", "d", "e")]
    clock.advance(seconds=5)
    got = await send(host, port, "app@sender.test", others)
    for a in others:
        code, text = got.rcpt[a]
        assert code == 550 and "5.1.2 Recipient suppressed: bad domain" in f"{code} {text}", text
    assert not any(a in fake_mx.rcpts for a in others)
    dom = svc.store.get("gone.test", clock.now)
    assert dom.state is State.SUPPRESSED and basis_of(dom) is Basis.DOMAIN
    assert dom.until == dom.since + timedelta(days=1)
    # A day later the domain is tried again.
    clock.advance(days=1, seconds=1)
    got = await send(host, port, "app@sender.test", ["b@gone.test"])
    assert got.rcpt["b@gone.test"][0] == 250


def _cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "suppression", *argv, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_storm_is_marked_listed_and_released_by_one_command(
    fake_mx: FakeMX, relay_service: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mx.default_rcpt_reply = "550 5.1.1 No such user"  # the remote is misconfigured
    clock = Clock(datetime.now(UTC))
    svc = await _service(relay_service, fake_mx, clock)
    host, port = svc.addresses[0]
    addrs = [f"user{i}@big.test" for i in range(30)]
    for i in range(0, 30, 5):  # 30 distinct addresses in a minute, five per message
        got = await send(host, port, "app@sender.test", addrs[i : i + 5])
        assert all(code == 550 for code, _ in got.rcpt.values())
        clock.advance(seconds=10)
    assert "storm: big.test answered hard for 20 distinct addresses" in caplog.text
    gauges = gauge_probes(svc.spool, svc.store, svc.delivery.pool, svc.clock)  # at a scrape
    assert gauges["bouncer_suppression_storms"]() == 1.0
    assert gauges["bouncer_suppression_storms_detected"]() == 1.0
    for a in addrs:
        rec = svc.store.get(a, clock.now)
        assert rec.state is State.SUPPRESSED and basis_of(rec) is Basis.STORM, a
        assert rec.until - rec.since == timedelta(hours=24), a
    config = tmp_path / "bouncer.toml"
    config.write_text(f'[store]\npath = "{svc.config.store.path}"\n')
    listed = await asyncio.to_thread(_cli, config, "storms")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("big.test: 30 addresses suppressed 24 h as a storm")
    released = await asyncio.to_thread(
        _cli, config, "storms", "release", "big.test", "--why", "remote fixed"
    )
    assert released.returncode == 0, released.stderr
    assert "big.test: 30 storm records released" in released.stdout
    fake_mx.default_rcpt_reply = "250 2.1.5 Ok"
    got = await send(host, port, "app@sender.test", addrs[:3])
    assert [code for code, _ in got.rcpt.values()] == [250, 250, 250]
    after = await asyncio.to_thread(_cli, config, "storms")
    assert after.stdout.strip() == "no storm records"


async def test_readmitted_from_a_7_day_streak_one_quota_bounce_suppresses_30_days(
    fake_mx: FakeMX, relay_service: Any, tmp_path: Path
) -> None:
    full = "full@example.test"
    fake_mx.rcpt_replies[full] = "452 4.2.2 Mailbox full"
    t0 = datetime.now(UTC)
    clock = Clock(t0)
    svc = await _service(relay_service, fake_mx, clock, policy={"soft_bounce": "pass"})
    host, port = svc.addresses[0]
    for week in range(4):  # a three-week streak, one sending a week
        clock.now = t0 + timedelta(days=7 * week)
        got = await send(host, port, "app@sender.test", [full])
        assert got.rcpt[full][0] == 452
    rec = svc.store.get(full, clock.now)
    assert rec.state is State.SUPPRESSED and rec.until == clock.now + timedelta(days=7)
    code, text = (await send(host, port, "app@sender.test", [full])).rcpt[full]
    assert (code, text.split()[0]) == (550, "5.2.2"), text  # mailbox full, not "no such user"
    assert text.startswith("5.2.2 Recipient suppressed: mailbox full for weeks, <")
    # Re-admitted after 7 days; a week later one more quota bounce.
    clock.now = t0 + timedelta(days=21 + 7 + 7)
    got = await send(host, port, "app@sender.test", [full])
    assert got.rcpt[full][0] == 452
    rec = svc.store.get(full, clock.now)
    assert rec.state is State.SUPPRESSED and rec.until == clock.now + timedelta(days=30), rec
    # An activity lifts a streak suppression; it never lifts a hard one.
    fake_mx.rcpt_replies["dead@example.test"] = "550 5.1.1 No such user"
    await send(host, port, "app@sender.test", ["dead@example.test"])
    config = tmp_path / "bouncer.toml"
    config.write_text(f'[store]\npath = "{svc.config.store.path}"\n')
    clock.now = datetime.now(UTC)  # the CLI reads the real clock
    hard = await asyncio.to_thread(_cli, config, "activity", "dead@example.test")
    assert hard.returncode == 0, hard.stderr
    assert "stays suppressed" in hard.stdout and "not a hard one" in hard.stdout
    assert svc.store.check("dead@example.test", datetime.now(UTC)) is not None


async def test_pflogsumm_groups_refusals_by_reason(
    fake_mx: FakeMX, relay_service: Any, tmp_path: Path
) -> None:
    pflogsumm = require_pflogsumm()
    dead = [f"dead{i}@example.test" for i in range(3)]
    for a in dead:
        fake_mx.rcpt_replies[a] = "550 5.1.1 No such user"
    fake_mx.rcpt_replies["x@gone.test"] = "550 5.1.2 Domain not found"
    clock = Clock(datetime.now(UTC))
    svc = await _service(relay_service, fake_mx, clock)
    store = svc.store
    store.add("manual1@example.test", Category.OTHER, clock.now)
    store.record_complaint("angry@example.test", clock.now, "abuse report")
    log = tmp_path / "mail.log"
    writer = LogWriter(LogConfig(file=str(log)), host="relay1", pid=4242, stderr=io.StringIO())
    svc.events.subscribe(writer)
    host, port = svc.addresses[0]
    await send(host, port, "app@sender.test", [*dead, "x@gone.test"])  # the remote's 5xx
    clock.advance(seconds=5)
    refused = [
        *dead,
        "y@gone.test",
        "z@gone.test",
        "manual1@example.test",
        "angry@example.test",
    ]
    got = await send(host, port, "app@sender.test", refused)
    assert all(code in (550, 556) for code, _ in got.rcpt.values()), got.rcpt
    svc.events.subscribers.remove(writer)
    writer.close()
    out = await asyncio.to_thread(
        subprocess.run,
        [pflogsumm, "--syslog-name=bouncer", "--smtpd-warning-detail=0", str(log)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    detail = out.stdout.split("message reject detail", 1)[1].split("message reject warning", 1)[0]
    reasons = dict(
        (m.group(1).strip(), int(m.group(2)))
        for m in re.finditer(r"^\s{4,}(\S.*?)\s+\(total: (\d+)\)\s*$", detail, re.M)
    )
    # One line per reason, not per address.
    assert reasons == {
        "bad mailbox": 3,
        "bad domain": 2,
        "by the operator": 1,
        "complaint": 1,
    }, detail
