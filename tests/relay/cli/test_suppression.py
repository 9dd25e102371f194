"""`bouncer suppression ...`: in-process, from a second process, and against a running server."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib.util
import io
import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy.reply import parse_reply
from policy.suppression.records import State
from policy.suppression.store import SuppressionRules, SuppressionStore
from policy.verdict import BounceClass, Category, Verdict
from relay.cli.main import main
from relay.store.env import open_state

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bouncer.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state"}"\nmap_size = 16777216\n')
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["suppression", *argv, "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def store_of(tmp_path: Path) -> SuppressionStore:
    return SuppressionStore(open_state(tmp_path / "state", 1 << 24), SuppressionRules())


@contextlib.contextmanager
def opened(tmp_path: Path) -> Iterator[SuppressionStore]:
    """The store, closed again: LMDB allows one open environment per path per process."""
    env = open_state(tmp_path / "state", 1 << 24)
    try:
        yield SuppressionStore(env, SuppressionRules())
    finally:
        env.close()


def test_add_list_show_remove(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(
        capsys, config, "add", "Bob@Example.com", "--category", "bad-mailbox", "--why", "left"
    )
    assert code == 0 and out.startswith("bob@example.com: added, permanent (bad-mailbox: left)")
    code, out, _ = run(
        capsys,
        config,
        "add",
        "tmp@example.com",
        "--category",
        "quota-issues",
        "--until",
        "2099-01-01",
    )
    assert code == 0 and "until 2099-01-01T00:00:00Z" in out
    code, out, _ = run(capsys, config, "list")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ADDRESS", "STATE", "CATEGORY"]
    assert [ln.split()[0] for ln in lines[1:]] == ["bob@example.com", "tmp@example.com"]
    code, out, _ = run(capsys, config, "list", "--state", "permanent", "--format", "json")
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert [(r["address"], r["state"], r["cause"]) for r in rows] == [
        ("bob@example.com", "permanent", "bad-mailbox")
    ]
    code, out, _ = run(capsys, config, "list", "--category", "quota-issues", "--format", "csv")
    assert [r["address"] for r in csv.DictReader(io.StringIO(out))] == ["tmp@example.com"]
    code, out, _ = run(capsys, config, "show", "BOB@example.com")
    assert code == 0 and "state:       permanent" in out and "add " in out
    code, _, err = run(capsys, config, "remove", "bob@example.com")
    assert code == 1 and "--force" in err
    code, _, err = run(capsys, config, "remove", "bob@example.com", "--force")
    assert code == 2 and "--why" in err
    code, out, _ = run(capsys, config, "remove", "bob@example.com", "--force", "--why", "back")
    assert code == 0 and "permanent lifted (forced): back; now active" in out
    code, out, _ = run(capsys, config, "show", "bob@example.com", "--format", "json")
    shown = json.loads(out)
    assert shown["state"] == "active"
    assert [e["kind"] for e in shown["history"]] == ["add", "remove"]
    code, out, _ = run(capsys, config, "remove", "tmp@example.com")
    assert code == 0
    code, out, _ = run(capsys, config, "list")
    assert out.splitlines()[1:] == []


def test_usage_errors(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert run(capsys, config, "show", "nobody@example.com")[0] == 1
    assert run(capsys, config, "add", "not..valid@example.com", "--category", "other")[0] == 2
    assert run(capsys, config, "remove", "nobody@example.com")[0] == 1
    with pytest.raises(SystemExit) as exc:
        run(capsys, config, "add", "a@example.com", "--category", "nonsense")
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        run(capsys, config, "add", "a@example.com", "--category", "other", "--until", "soon")
    bad = config.parent / "bad.toml"
    bad.write_text("[store]\nmap_sise = 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["suppression", "list", "--config", str(bad)])
    assert exc.value.code == 3


def test_export_import_and_activity(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    with opened(tmp_path) as store:
        store.record_verdict(
            "dead@example.com",
            Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t"),
            parse_reply("550 5.1.1 user unknown"),
            now,
        )
        quota = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
        store.record_verdict("full@example.com", quota, parse_reply("452 4.2.2 full"), now)
    code, out, err = run(capsys, config, "export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["address"] for r in rows] == ["dead@example.com"]
    assert rows[0]["reason"] == "bad-mailbox: 550 5.1.1 user unknown" and "exported 1" in err

    listing = tmp_path / "list.csv"
    listing.write_text("gone@example.com\nnonsense\nold.example,bad-domain\n")
    code, out, err = run(capsys, config, "import", str(listing))
    assert code == 0 and "imported 2, skipped 1" in out and "line 2" in err
    with opened(tmp_path) as store:
        assert store.check("x@old.example", now) is not None
        assert store.check("gone@example.com", now) is not None

    code, out, _ = run(capsys, config, "activity", "full@example.com")
    assert code == 0 and "activity recorded" in out
    with opened(tmp_path) as store:
        rec = store.get("full@example.com")
    assert rec is not None and rec.streak is None and rec.history[-1].kind == "activity"
    code, out, _ = run(capsys, config, "activity", "nobody@example.com")
    assert code == 0 and "no record" in out
    code, out, _ = run(capsys, config, "count")
    assert out.split() == ["total=4", "active=1", "suppressed=1", "permanent=2", "blocked=0"]


def test_cli_and_an_open_store_in_two_processes(config: Path, tmp_path: Path) -> None:
    """LMDB multi-process: a store held open here sees what a separate CLI process writes."""
    store = store_of(tmp_path)
    now = datetime.now(UTC)
    assert store.check("two@example.com", now) is None
    cli = [sys.executable, "-m", "relay", "suppression"]
    done = subprocess.run(
        [*cli, "add", "two@example.com", "--category", "bad-mailbox", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    refusal = store.check("two@example.com", now + timedelta(seconds=1))
    assert refusal is not None and "suppressed permanently" in refusal.reply.text
    store.record_refusal(refusal, now)  # this process writes, the next CLI process reads
    shown = subprocess.run(
        [*cli, "show", "two@example.com", "--format", "json", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(shown.stdout)["counts"]["synthesized"] == 1


def _cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "suppression", *argv, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _rcpt(port: int, address: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("app@client.test")
        code, text = smtp.rcpt(address)
        smtp.rset()
        return code, text.decode()


@pytest.mark.skipif(
    importlib.util.find_spec("relay.cli.serve") is None, reason="bouncer serve not available yet"
)
async def test_cli_against_a_running_server(tmp_path: Path) -> None:
    serve = pytest.importorskip("tests.support.serve", reason="tests/support/serve.py missing")
    from tests.support.fake_mx import FakeMX

    async with FakeMX() as mx:
        table = {"delivery": {"routes": {"example.test": mx.address}}}
        with serve.bouncer_process(tmp_path / "b", table) as b:
            config = b.config_path
            added = await asyncio.to_thread(
                _cli, config, "add", "dead@example.test", "--category", "bad-mailbox"
            )
            assert added.returncode == 0, added.stderr
            code, text = await asyncio.to_thread(_rcpt, b.port, "dead@example.test")
            # Added by hand: the operator's refusal, 5.7.1 (docs/behaviour.md#suppression-policy).
            assert code == 550 and text.startswith(
                "5.7.1 Recipient suppressed: by the operator, <dead@example.test>: suppressed"
            ), text
            assert "dead@example.test" not in mx.rcpts  # refused before any remote traffic
            code, _ = await asyncio.to_thread(_rcpt, b.port, "alive@example.test")
            assert code == 250 and "alive@example.test" in mx.rcpts

            shown = await asyncio.to_thread(
                _cli, config, "show", "dead@example.test", "--format", "json"
            )
            assert json.loads(shown.stdout)["counts"]["synthesized"] == 1  # the server's write

            # A real hard bounce from the remote: the server records it, the CLI lists it,
            # and the next RCPT is refused by bouncer itself, without asking the remote.
            mx.rcpt_replies["gone@example.test"] = "550 5.1.1 <gone@example.test>: No such user"
            code, text = await asyncio.to_thread(_rcpt, b.port, "gone@example.test")
            assert code == 550 and "No such user" in text
            listed = await asyncio.to_thread(_cli, config, "list", "--format", "json")
            rows = {r["address"]: r for r in map(json.loads, listed.stdout.splitlines())}
            gone = rows["gone@example.test"]
            assert (gone["state"], gone["cause"], gone["counts"]["hard"]) == (
                "suppressed",
                "bad-mailbox",
                1,
            )
            seen = mx.rcpts.count("gone@example.test")
            code, text = await asyncio.to_thread(_rcpt, b.port, "gone@example.test")
            assert code == 550 and text.startswith(
                "5.1.1 Recipient suppressed: bad mailbox, <gone@example.test>: suppressed ("
            )
            assert " until " in text and mx.rcpts.count("gone@example.test") == seen

            removed = await asyncio.to_thread(
                _cli, config, "remove", "dead@example.test", "--force", "--why", "test"
            )
            assert removed.returncode == 0, removed.stderr
            code, _ = await asyncio.to_thread(_rcpt, b.port, "dead@example.test")
            assert code == 250 and "dead@example.test" in mx.rcpts
    rec = SuppressionStore(open_state(tmp_path / "b" / "state", 1 << 24), SuppressionRules()).get(
        "dead@example.test"
    )
    assert rec is not None and rec.state is State.ACTIVE


def test_show_prints_streak_and_last_reply(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    quota = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
    with opened(tmp_path) as store:
        for d in (2, 1):
            store.record_verdict(
                "s@example.com", quota, parse_reply("452 4.2.2 full"), now - timedelta(days=d)
            )
    code, out, _ = run(capsys, config, "show", "s@example.com")
    assert code == 0
    assert "streak:      quota-issues x2 from" in out
    assert "last reply:  452 4.2.2 full" in out
    code, _, err = run(capsys, config, "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv" in err
