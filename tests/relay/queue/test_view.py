"""Queue tools like Postfix's: postcat -q, filters, hold/release,
retry and drop by domain or by IDs on stdin, qshape's summary, the same in the API,
and a held message that a running server does not retry until it is released."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policy.reply import Reply
from relay.cli import queue as cli_queue
from relay.config.load import load_config
from relay.observe.api import Api
from relay.queue.queue import HELD_US, Spool, SpoolMessage, spool_from_config
from relay.queue.records import to_us
from relay.queue.view import QueueFilter, parse_age, summarize
from relay.service import Service
from relay.store.env import open_state
from tests.e2e.test_queue import Server, _send
from tests.support.fake_mx import FakeMX
from tests.support.wait import until

DATA = b"From: a@a.example\r\nSubject: postcat me\r\n\r\nbody line\r\n"
SOFT = Reply(452, "4.2.2", "Mailbox full", "mx.b.example[127.0.0.1]")
NOW = datetime.now(UTC)


def _accept(spool: Spool, qid: str, sender: str, rcpts: list[str], age: timedelta) -> None:
    when = NOW - age
    spool.accept(SpoolMessage(qid, sender, DATA, when, tuple((r, SOFT) for r in rcpts)), when)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bouncer.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state"}"\n[server]\nhostname = "relay.test"\n')
    spool = _spool(path)
    _accept(spool, "AAA111", "a@a.example", ["x@b.example", "y@c.example"], timedelta(minutes=1))
    _accept(spool, "BBB222", "news@a.example", ["z@b.example"], timedelta(hours=3))
    _accept(spool, "CCC333", "a@a.example", ["w@c.example"], timedelta(days=2))
    spool.env.close()
    return path


def _run(config: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="bouncer")
    cli_queue.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["queue", *argv, "--config", str(config)])
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: int = args.handler(args)
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def _spool(config: Path) -> Spool:
    cfg = load_config(config)
    return spool_from_config(open_state(cfg.store.path, cfg.store.map_size), cfg)


def _listed(config: Path, *filters: str) -> dict[str, list[str]]:
    code, out, err = _run(config, "list", "--json", *filters)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    return {r["queue_id"]: [x["recipient"] for x in r["recipients"]] for r in rows}


def test_filters_by_domain_sender_and_age(config: Path) -> None:
    assert _listed(config, "--domain", "B.Example") == {
        "AAA111": ["x@b.example"],
        "BBB222": ["z@b.example"],
    }
    assert _listed(config, "--sender", "<news@a.example>") == {"BBB222": ["z@b.example"]}
    assert set(_listed(config, "--older-than", "2h")) == {"BBB222", "CCC333"}
    assert set(_listed(config, "--older-than", "1d", "--domain", "c.example")) == {"CCC333"}
    with pytest.raises(SystemExit) as exit_:
        _run(config, "list", "--older-than", "soon")
    assert exit_.value.code == 2


def test_show_content_is_the_message_bytes(
    config: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    parser = argparse.ArgumentParser(prog="bouncer")
    cli_queue.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["queue", "show", "--content", "AAA111", "--config", str(config)])
    assert args.handler(args) == 0
    out = capfdbinary.readouterr().out
    assert out.endswith(DATA)  # unchanged, CRLF included
    assert b"sender: <a@a.example>" in out and b"<x@b.example> <y@c.example>" in out


def test_summary_counts_recipients_by_domain_and_age(config: Path) -> None:
    code, out, _ = _run(config, "summary")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "T",
        "5",
        "10",
        "20",
        "40",
        "80",
        "160",
        "320",
        "640",
        "1280",
        "1280+",
    ]
    assert lines[1].split() == ["TOTAL", "4", "2", "0", "0", "0", "0", "0", "1", "0", "0", "1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["b.example"] == ["2", "1", "0", "0", "0", "0", "0", "1", "0", "0", "0"]
    assert rows["c.example"] == ["2", "1", "0", "0", "0", "0", "0", "0", "0", "0", "1"]
    code, out, _ = _run(config, "summary", "--json", "--domain", "c.example")
    assert [d["domain"] for d in json.loads(out)["domains"]] == ["c.example"]


def test_retry_without_targets_says_how(config: Path) -> None:
    code, _, err = _run(config, "retry")
    assert code == 2
    assert "IDs, '-' to read IDs from stdin, --domain DOMAIN, or --all" in err
    assert "not both" not in err
    code, _, err = _run(config, "retry", "--all", "AAA111")
    assert code == 2 and "not both" in err


def test_retry_by_domain_and_by_ids_on_stdin(config: Path) -> None:
    code, out, _ = _run(config, "retry", "--domain", "c.example")
    assert code == 0 and "2 recipient(s) due now" in out
    spool = _spool(config)
    due = {
        r.recipient
        for m in spool.messages()
        for r in m.recipients
        if NOW <= r.next_at <= datetime.now(UTC)  # made due by this retry
    }
    spool.env.close()
    assert due == {"y@c.example", "w@c.example"}
    code, out, _ = _run(config, "retry", "-", stdin="BBB222\nCCC333\n")
    assert code == 0 and "2 recipient(s) due now" in out
    code, _, err = _run(config, "retry", "-", stdin="BBB222 ../etc\n")
    assert code == 2 and "not a queue ID" in err


def test_hold_keeps_a_message_out_of_retry_until_release(config: Path) -> None:
    code, out, _ = _run(config, "hold", "AAA111")
    assert code == 0 and "2 recipient(s) on hold" in out
    code, out, _ = _run(config, "retry", "--all")
    assert "2 recipient(s) due now" in out  # BBB222 and CCC333, not the held ones
    spool = _spool(config)
    try:
        leases = spool.lease_due(NOW + timedelta(days=365), 100, "test:1", NOW)
        assert {lease.message.queue_id for lease in leases} == {"BBB222", "CCC333"}
        held = spool.get("AAA111")
        assert held is not None and all(r.held for r in held.recipients)
        assert all(to_us(r.next_at) == HELD_US for r in held.recipients)
    finally:
        spool.env.close()
    code, out, _ = _run(config, "list")
    assert "on hold" in out
    code, out, _ = _run(config, "release", "-", stdin="AAA111")
    assert code == 0 and "2 recipient(s) released" in out
    spool = _spool(config)
    try:
        m = spool.get("AAA111")
        assert m is not None and not any(r.held for r in m.recipients)
        assert all(r.next_at <= datetime.now(UTC) for r in m.recipients)
    finally:
        spool.env.close()


def test_drop_by_domain_removes_only_that_domains_recipients(config: Path) -> None:
    code, out, _ = _run(config, "drop", "--domain", "b.example", "--why", "list cleaning")
    assert code == 0
    assert "AAA111: dropped (1 recipient(s))" in out and "BBB222: dropped" in out
    assert _listed(config) == {"AAA111": ["y@c.example"], "CCC333": ["w@c.example"]}
    code, _, err = _run(config, "drop", "--why", "x")
    assert code == 2 and "--domain DOMAIN" in err


def test_filter_and_summary_are_pure() -> None:
    assert parse_age("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="not an age"):
        parse_age("3 days")
    assert summarize([], NOW).total == (0,) * 11
    assert QueueFilter().select([], NOW) == []


# -- the API -------------------------------------------------------------------------------

TOKEN = "queue-api-token-0123456789"


@pytest.fixture
async def api(relay_service: Any) -> AsyncIterator[tuple[Service, str, aiohttp.ClientSession]]:
    # A first retry 30 days on: the service's own queue runner must not deliver these
    # messages while the test looks at them.
    svc: Service = await relay_service(
        {"api": {"listen": "127.0.0.1:0", "token": TOKEN}, "queue": {"schedule": ["30d"]}}
    )
    (component,) = [c for c in svc.components if isinstance(c, Api)]
    assert svc.spool is not None
    _accept(svc.spool, "AAA111", "a@a.example", ["x@b.example", "y@c.example"], timedelta(0))
    _accept(svc.spool, "BBB222", "a@a.example", ["z@b.example"], timedelta(hours=3))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        yield svc, f"http://127.0.0.1:{component.port}", http


async def test_api_queue_endpoints(api: tuple[Service, str, aiohttp.ClientSession]) -> None:
    svc, base, http = api
    assert svc.spool is not None
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{base}/queue") as resp:
        assert resp.status == 401
    async with http.get(f"{base}/queue", params={"domain": "c.example"}) as resp:
        assert resp.status == 200
        assert [m["queue_id"] for m in await resp.json()] == ["AAA111"]
    async with http.get(f"{base}/queue", params={"older_than": "1h"}) as resp:
        assert [m["queue_id"] for m in await resp.json()] == ["BBB222"]
    async with http.get(f"{base}/queue", params={"older_than": "soon"}) as resp:
        assert resp.status == 400
    async with http.get(f"{base}/queue/summary") as resp:
        summary = await resp.json()
        assert summary["total"][0] == 3
        assert {d["domain"]: d["counts"][0] for d in summary["domains"]} == {
            "b.example": 2,
            "c.example": 1,
        }
    async with http.get(f"{base}/queue/AAA111") as resp:
        assert (await resp.json())["sender"] == "a@a.example"
    async with http.get(f"{base}/queue/AAA111", params={"content": "1"}) as resp:
        assert await resp.read() == DATA
    async with http.get(f"{base}/queue/NOPE") as resp:
        assert resp.status == 404
    async with http.post(f"{base}/queue/AAA111/hold") as resp:
        assert (await resp.json())["recipients"] == 2
    m = svc.spool.get("AAA111")
    assert m is not None and all(r.held for r in m.recipients)
    async with http.post(f"{base}/queue/AAA111/retry") as resp:
        assert (await resp.json())["recipients"] == 0  # held: not made due
    async with http.post(f"{base}/queue/AAA111/release", params={"domain": "b.example"}) as resp:
        assert (await resp.json())["recipients"] == 1
    async with http.delete(f"{base}/queue/BBB222") as resp:
        assert resp.status == 400 and "why" in (await resp.json())["error"]
    async with http.delete(f"{base}/queue/BBB222", params={"why": "test"}) as resp:
        assert (await resp.json())["dropped"] == 1
    assert svc.spool.get("BBB222") is None


# -- through a running server --------------------------------------------------------------

pytest_timeout = pytest.mark.timeout(90)


@pytest_timeout
async def test_a_running_server_does_not_retry_a_held_message(tmp_path: Path) -> None:
    async with FakeMX() as mx:
        mx.rcpt_replies["bob@b.example"] = "451 4.3.2 Try again later"
        mx.rcpt_replies["carol@c.example"] = "451 4.3.2 Try again later"
        routes = {"b.example": mx.port, "c.example": mx.port}
        server = await Server(tmp_path, routes, ["1h", "2h"]).start()
        try:
            assert (await _send(server.port, ["bob@b.example"]))[0] == 250
            assert (await _send(server.port, ["carol@c.example"]))[0] == 250
            code, out = await server.cli("hold", "--domain", "b.example")
            assert code == 0 and "1 recipient(s) on hold" in out, out
            mx.rcpt_replies.clear()  # the remote recovers
            code, out = await server.cli("retry", "--all")
            assert code == 0 and "1 recipient(s) due now" in out, out

            async def carol_delivered() -> bool:
                return [m.rcpt_tos for m in mx.messages] == [("carol@c.example",)]

            # The poll that delivered carol saw bob too, held: he stays queued.
            await until(carol_delivered, "the unheld message to be delivered")
            (entry,) = await server.queue()
            assert entry["recipients"][0]["held"] is True
            code, out = await server.cli("release", "--all")
            assert code == 0 and "1 recipient(s) released" in out, out

            async def all_delivered() -> bool:
                return len(mx.messages) == 2 and await server.queue() == []

            await until(all_delivered, "the released message to be delivered")
        finally:
            assert await server.stop() == 0
