# `bouncer parse`: the same reports as parse_bounce, as text lines or JSON objects.
from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.cli.main import main
from tests.support import bounce_samples as samples


def test_parse_text_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, arf, auto = tmp_path / "dsn.eml", tmp_path / "arf.eml", tmp_path / "auto.eml"
    dsn.write_bytes(samples.rfc3464())
    arf.write_bytes(samples.arf())
    auto.write_bytes(samples.AUTOREPLY)
    assert main(["parse", str(dsn), str(arf), str(auto)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "<gone@dest.example> 5.1.1 hard/bad-mailbox [dsn:rfc3464]" in lines[0]
    assert "<angry@dest.example> - complaint/abuse [arf:rfc5965]" in lines[1]
    assert "auto-reply (not a bounce)" in lines[2]


def test_parse_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qmail.eml"
    path.write_bytes(samples.QMAIL.replace(b"\n", b"\r\n"))
    assert main(["parse", "--json", str(path)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["recipient"] == "nobody@dest.example"
    assert (row["kind"], row["source"], row["status"]) == ("dsn", "qmail", "5.1.1")
    assert (row["class"], row["category"]) == ("hard", "bad-mailbox")


def test_parse_missing_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.eml"
    plain.write_bytes(samples.PLAIN_MAIL)
    assert main(["parse", str(tmp_path / "nope.eml"), str(plain)]) == 1
    out = capsys.readouterr()
    assert "nope.eml" in out.err
    assert "no bounce, complaint or auto-reply found" in out.out
