"""`bouncer queue list/show/retry/drop` against a real state directory."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy.reply import Reply
from relay.cli import queue as cli_queue
from relay.config.load import load_config
from relay.queue.queue import SpoolMessage, spool_from_config
from relay.store.env import open_state

DATA = b"From: a@a.example\r\nSubject: hello\r\n\r\nbody\r\n"
SOFT = Reply(452, "4.2.2", "Mailbox full", "mx.b.example[127.0.0.1]")


def _run(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bouncer")
    cli_queue.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["queue", *argv, "--config", str(config)])
    code: int = args.handler(args)
    return code


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bouncer.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state"}"\n[server]\nhostname = "relay.test"\n')
    cfg = load_config(path)
    spool = spool_from_config(open_state(cfg.store.path, cfg.store.map_size), cfg)
    now = datetime.now(UTC) - timedelta(minutes=1)
    spool.accept(SpoolMessage("AAA111", "a@a.example", DATA, now, (("b@b.example", SOFT),)), now)
    spool.accept(SpoolMessage("BBB222", "a@a.example", DATA, now, (("c@c.example", SOFT),)), now)
    spool.env.close()
    return path


def test_list_text_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(config, "list") == 0
    out = capsys.readouterr().out
    assert "AAA111" in out and "<b@b.example>" in out and "452 4.2.2 Mailbox full" in out
    assert "2 message(s), 2 recipient(s)" in out
    assert _run(config, "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["queue_id"] for r in rows} == {"AAA111", "BBB222"}
    first = next(r for r in rows if r["queue_id"] == "AAA111")
    assert first["recipients"][0]["tries"] == 1
    assert first["recipients"][0]["last_reply"] == "452 4.2.2 Mailbox full"


def test_show(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(config, "show", "AAA111", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sender"] == "a@a.example" and shown["size"] == len(DATA)
    assert shown["recipients"][0]["attempts"][0]["host"] == "mx.b.example[127.0.0.1]"
    assert _run(config, "show", "NOPE") == 1


def test_retry_makes_due_now(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(config, "retry") == 2  # neither --all nor ids
    assert _run(config, "retry", "AAA111") == 0
    assert "1 recipient(s) due now" in capsys.readouterr().out
    cfg = load_config(config)
    spool = spool_from_config(open_state(cfg.store.path, cfg.store.map_size), cfg)
    due = spool.first_due()
    spool.env.close()
    assert due is not None and due <= datetime.now(UTC)
    assert _run(config, "retry", "--all") == 0
    assert "2 recipient(s) due now" in capsys.readouterr().out


def test_drop_with_and_without_dsn(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(config, "drop", "AAA111", "--why", "customer request") == 0
    assert _run(config, "drop", "BBB222", "--why", "spam run", "--dsn") == 0
    assert _run(config, "drop", "AAA111", "--why", "again") == 1
    capsys.readouterr()
    assert _run(config, "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Only the DSN for BBB222 is left, addressed to the original sender.
    assert [(r["kind"], r["origin"]) for r in rows] == [("dsn", "BBB222")]
    assert rows[0]["recipients"][0]["recipient"] == "a@a.example"
