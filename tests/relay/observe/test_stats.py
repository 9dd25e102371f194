"""Stats that add up: undetermined refusals and expiries have their
columns, bouncer's own DSNs are counted apart from deliveries, CSV from the CLI and the
API, day x domain with a domain filter, zero rows for quiet days, `--since yesterday`,
and a future `--since` that says so. The last test is the issue's done-when check: a
scripted run through a running `bouncer serve`, counted by hand."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policy.rates import Counts, aggregate, increment, key_fields, parse_period
from policy.verdict import BounceClass
from relay.cli.main import main
from relay.observe.api import Api
from relay.observe.counters import StatsCounters, stats_csv
from relay.service import Service
from relay.store.env import open_state
from tests.e2e.test_queue import ROOT, Server
from tests.support.fake_mx import FakeMX
from tests.support.smtp_client import open_client, transaction
from tests.support.wait import until

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
D20, D21, D22 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)


def test_undetermined_expired_and_own_dsns_have_their_counters() -> None:
    assert increment("bounced", BounceClass.UNDETERMINED, "retry") == Counts(undetermined=1)
    assert increment("queued", BounceClass.UNDETERMINED, "retry") == Counts()  # not final
    assert increment("bounced", BounceClass.UNDETERMINED, "report") == Counts()
    assert increment("expired", BounceClass.SOFT, "retry") == Counts(expired=1)
    # A DSN bouncer wrote: never sent by a client, so never delivered > sent.
    assert increment("sent", BounceClass.DELIVERED, "retry", notice=True) == Counts(dsn=1)
    assert increment("bounced", BounceClass.HARD, "retry", notice=True) == Counts(dsn_failed=1)
    assert increment("expired", BounceClass.SOFT, "retry", notice=True) == Counts(dsn_failed=1)
    assert increment("queued", BounceClass.SOFT, "retry", notice=True) == Counts()
    refused = Counts(sent=4, undetermined=4)
    assert refused.refused_rate == 1.0 and refused.hard_rate == 0.0


def test_periods() -> None:
    assert parse_period("yesterday", None, NOW) == (D21, D22)
    assert parse_period("today", "today", NOW) == (D22, D22)
    assert parse_period("7d", "yesterday", NOW) == (date(2026, 11, 16), D21)
    assert parse_period("2026-11-01", "2026-11-05", NOW) == (date(2026, 11, 1), date(2026, 11, 5))
    with pytest.raises(ValueError, match="in the future"):
        parse_period("2026-12-01", None, NOW)
    with pytest.raises(ValueError, match="after --until"):
        parse_period("2026-11-10", "2026-11-01", NOW)
    with pytest.raises(ValueError, match="at most"):
        parse_period("0001-01-01", None, NOW)
    assert key_fields("total", "total") == {} and key_fields("2026-11-01", "day") == {
        "day": "2026-11-01"
    }
    rows = [(D20, "a.test", Counts(sent=1)), (D22, "b.test", Counts(sent=2))]
    assert aggregate(rows, "total", D20, D21) == [("total", Counts(sent=1))]


def test_day_by_domain_with_a_filter_and_zero_rows() -> None:
    rows = [
        (D20, "a.test", Counts(sent=2, delivered=2)),
        (D20, "b.test", Counts(sent=1, hard=1)),
        (D22, "a.test", Counts(sent=3, undetermined=3)),
    ]
    assert aggregate(rows, "day", D20, D22) == [
        ("2026-11-20", Counts(sent=3, delivered=2, hard=1)),
        ("2026-11-21", Counts()),  # a quiet day still has its row
        ("2026-11-22", Counts(sent=3, undetermined=3)),
    ]
    assert aggregate(rows, "day,domain", D20, D22, domain="a.test") == [
        ("2026-11-20 a.test", Counts(sent=2, delivered=2)),
        ("2026-11-21 a.test", Counts()),
        ("2026-11-22 a.test", Counts(sent=3, undetermined=3)),
    ]
    table = list(
        csv.reader(io.StringIO(stats_csv(aggregate(rows, "day,domain", D20, D20), "day,domain")))
    )
    assert table[0][:4] == ["day", "domain", "sent", "delivered"]
    assert table[0][-3:] == ["hard_rate", "soft_rate", "refused_rate"]
    assert [r[:3] for r in table[1:]] == [
        ["2026-11-20", "a.test", "2"],
        ["2026-11-20", "b.test", "1"],
    ]
    assert table[2][-1] == "1.0000"


def test_cli_csv_domain_filter_and_future_since(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = open_state(tmp_path / "state", 1 << 24)
    counters = StatsCounters(env)
    counters.write({(D21, "a.test"): Counts(sent=2, delivered=1, undetermined=1)})
    env.close()
    conf = tmp_path / "b.toml"
    conf.write_text(f'[store]\npath = "{tmp_path / "state"}"\n')
    base = ["stats", "--config", str(conf), "--since", "2026-11-20", "--until", "2026-11-22"]
    assert main([*base, "--by", "day,domain", "--domain", "A.TEST", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["day"], r["domain"], r["sent"], r["undetermined"]) for r in rows] == [
        ("2026-11-20", "a.test", "0", "0"),
        ("2026-11-21", "a.test", "2", "1"),
        ("2026-11-22", "a.test", "0", "0"),
    ]
    assert main([*base, "--by", "domain"]) == 0
    out = capsys.readouterr().out
    assert "undetermined" in out.splitlines()[1] and "50.00%" in out  # refused%
    assert main(["stats", "--config", str(conf), "--since", "2999-01-01"]) == 2
    assert "in the future" in capsys.readouterr().err


TOKEN = "stats-api-token-0123456789"


@pytest.fixture
async def api(relay_service: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    svc: Service = await relay_service({"api": {"listen": "127.0.0.1:0", "token": TOKEN}})
    (component,) = [c for c in svc.components if isinstance(c, Api)]
    assert svc.env is not None
    today = datetime.now(UTC).date()
    StatsCounters(svc.env).write({(today, "a.test"): Counts(sent=4, undetermined=4)})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield f"http://127.0.0.1:{component.port}", http


async def test_api_stats_csv_and_errors(api: tuple[str, aiohttp.ClientSession]) -> None:
    base, http = api
    params = {"format": "csv", "by": "day,domain", "domain": "a.test", "since": "yesterday"}
    async with http.get(f"{base}/stats", params=params) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [(r["domain"], r["sent"], r["undetermined"], r["refused_rate"]) for r in rows] == [
        ("a.test", "0", "0", ""),  # yesterday, quiet
        ("a.test", "4", "4", "1.0000"),
    ]
    async with http.get(f"{base}/stats", params={"format": "xml"}) as resp:
        assert resp.status == 400
    async with http.get(f"{base}/stats", params={"since": "2999-01-01"}) as resp:
        assert resp.status == 400 and "future" in (await resp.json())["error"]


# -- the done-when check: a running server, counted by hand ---------------------------------


async def _stats(server: Server, *argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "stats", "--config", str(server.config), "--since",
        "today", *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.timeout(90)
async def test_stats_match_a_hand_count_through_a_running_server(tmp_path: Path) -> None:
    async with FakeMX() as mx, FakeMX() as sender_mx:
        mx.rcpt_replies["x1@u.example"] = "550 5.0.0 Go away"  # undetermined
        mx.rcpt_replies["x2@u.example"] = "550 5.0.0 Go away"
        mx.rcpt_replies["dead@h.example"] = "550 5.1.1 <dead@h.example>: user unknown"
        mx.rcpt_replies["full@e.example"] = "452 4.2.2 Mailbox full"  # queued, then expires
        routes = {d: mx.port for d in ("b.example", "u.example", "h.example", "e.example")}
        routes["a.example"] = sender_mx.port  # the sender's domain: the expiry DSN goes there
        server = await Server(tmp_path, routes, ["1s", "2s"]).start()
        try:
            client = await open_client("127.0.0.1", server.port)
            rcpts = [
                "ok1@b.example",
                "ok2@b.example",
                "x1@u.example",
                "x2@u.example",
                "dead@h.example",
                "full@e.example",
            ]
            sent = await transaction(client, "alice@a.example", rcpts)
            await client.quit()
            assert sent.rcpt["x1@u.example"][0] == 550 and sent.rcpt["dead@h.example"][0] == 550
            assert sent.data is not None and sent.data[0] == 250

            # By hand: 6 recipients sent; b: 2 delivered; u: 2 undetermined refusals; h: 1
            # hard; e: 1 soft at attempt 0, then expired after 2 retries; a.example (the
            # sender's domain) receives bouncer's one DSN, which is not a delivery.
            expected = {
                "a.example": dict(sent=0, delivered=0, dsn=1),
                "b.example": dict(sent=2, delivered=2, hard=0, undetermined=0),
                "e.example": dict(sent=1, delivered=0, soft=1, expired=1),
                "h.example": dict(sent=1, delivered=0, hard=1),
                "u.example": dict(sent=2, delivered=0, undetermined=2, hard=0),
            }
            seen: dict[str, dict[str, Any]] = {}

            async def counted() -> bool:
                doc = json.loads(await _stats(server, "--by", "domain", "--format", "json"))
                seen.clear()
                seen.update({r["domain"]: r for r in doc["rows"]})
                return set(seen) == set(expected) and all(
                    seen[d][k] == v for d, want in expected.items() for k, v in want.items()
                )

            try:
                await until(counted, "the counters to match the hand count", 45)
            except AssertionError:
                raise AssertionError(f"counted {seen}, expected {expected}") from None
            assert len(sender_mx.messages) == 1  # the DSN really went out
            for row in seen.values():
                assert row["delivered"] <= row["sent"] or row["sent"] == 0 and row["delivered"] == 0
            assert seen["u.example"]["refused_rate"] == 1.0  # 100% refused, shown as such
            assert seen["u.example"]["hard_rate"] == 0.0
            total = json.loads(await _stats(server, "--by", "total", "--format", "json"))
            (t,) = total["rows"]
            assert (t["sent"], t["delivered"], t["undetermined"], t["expired"], t["dsn"]) == (
                6, 2, 2, 1, 1,
            )  # fmt: skip

            rows = list(
                csv.DictReader(
                    io.StringIO(await _stats(server, "--by", "day,domain", "--format", "csv"))
                )
            )
            by_domain = {r["domain"]: r for r in rows}
            assert by_domain["u.example"]["undetermined"] == "2"
            assert by_domain["e.example"]["expired"] == "1"
            assert (
                by_domain["a.example"]["dsn"] == "1" and by_domain["a.example"]["delivered"] == "0"
            )
            assert {r["day"] for r in rows} == {datetime.now(UTC).date().isoformat()}
            table = await _stats(server, "--by", "domain")
            assert "undetermined" in table and "refused%" in table and "100.00%" in table
        finally:
            assert await server.stop() == 0
