"""`bouncer classify` end to end through relay.cli.main.main (arguments, stdin, --json)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.main import main

ROOT = Path(__file__).resolve().parents[3]


def test_arguments_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["classify", "550 5.1.1 <a@b.example>: User unknown", "452 4.2.2 Mailbox full"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split("\t")[:5] == ["hard", "bad-mailbox", "code-x.1.1", "550", "5.1.1"]
    assert out[0].endswith("\t550 5.1.1 <a@b.example>: User unknown")
    assert out[1].split("\t")[:3] == ["soft", "quota-issues", "code-x.2.2"]


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["classify", "--json", "554 5.7.1 Client host rejected: blocked using zen.spamhaus.org"]
    )
    record = json.loads(capsys.readouterr().out)
    assert code == 0
    assert record == {
        "reply": "554 5.7.1 Client host rejected: blocked using zen.spamhaus.org",
        "code": 554,
        "status": "5.7.1",
        "class": "block",
        "category": "spam-related",
        "rule": "en-blocklist",
    }


def test_stdin_lines_when_no_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("550 Utente inesistente\n\n  Connection timed out  \n")
    )
    assert main(["classify", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["class"], r["category"], r["code"], r["status"]) for r in records] == [
        ("hard", "bad-mailbox", 550, None),
        ("soft", "no-answer-from-host", 0, None),
    ]


def test_stage_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--json", "--stage", "data", "550 Unknown user k@example.jp"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["class"], record["rule"], record["stage"]) == (
        "block",
        "en-user-unknown@data",
        "DATA",
    )


def test_custom_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[texts]]\nid = "only"\nlang = "en"\npattern = "teapot"\n'
        'category = "other"\nsource = "test"\n'
    )
    assert main(["classify", "--rules", str(rules), "550 I am a teapot"]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["undetermined", "other", "only"]


def test_bad_rules_file_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[texts]]\nid = "x"\npattern = "("\n')
    assert main(["classify", "--rules", str(rules), "550 x"]) == 1
    assert "bad pattern" in capsys.readouterr().err


def test_as_a_process_through_a_pipe() -> None:
    # The real command line: python -m relay reads stdin until EOF.
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "classify", "--json"],
        input="421 4.7.0 Try again later\n550 5.1.2 Host unknown\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    classes = [json.loads(line)["class"] for line in proc.stdout.splitlines()]
    assert classes == ["soft", "hard"]
