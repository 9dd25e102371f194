# Bad command-line input ends in a message and an exit code, never a traceback:
# each case here once raised out of `main` (OverflowError, UnicodeDecodeError,
# csv.Error, lmdb.BadValsizeError) or, for passwd, printed a hash no login can match.
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.inbound.auth import MAX_PASSWORD_BYTES


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bouncer.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state"}"\nmap_size = 16777216\n')
    (tmp_path / "state").mkdir()  # as the server makes it; a read never creates it
    assert main(["suppression", "count", "--config", str(path)]) == 0  # opens the store
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


@pytest.mark.parametrize(
    "since", ["99999999d", "1000000w", "9" * 5000 + "d"], ids=["days", "weeks", "digits"]
)
def test_stats_since_out_of_range(
    config: Path, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, err = run(capsys, "stats", "--since", since, "--config", str(config))
    assert code == 2 and ("--since" in err or "not a period" in err), err


def test_import_of_a_file_with_bytes_that_are_not_utf8(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_bytes(b"a@b.test\n\xff\xfe@c.test\nd@e.test\n")
    code, err = run(capsys, "suppression", "import", str(csv), "--config", str(config))
    assert code == 0 and "line 2: not UTF-8" in err, err
    assert main(["suppression", "show", "d@e.test", "--config", str(config)]) == 0


def test_import_of_a_field_over_the_csv_limit(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "big.csv"
    csv.write_text("x" * 200_000 + ",a\nd@e.test\n")
    code, err = run(capsys, "suppression", "import", str(csv), "--config", str(config))
    assert code == 0 and "line 1: not CSV" in err, err


@pytest.mark.parametrize("key", ["", "..", "x" * 600 + ".test"], ids=["empty", "dots", "long"])
def test_show_of_a_key_that_cannot_be_a_record(
    config: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    code, err = run(capsys, "suppression", "show", key, "--config", str(config))
    assert code in (1, 2) and "store" not in err, err


@pytest.mark.parametrize("argv", [["show", ""], ["retry", ""], ["drop", "--why", "x", ""]])
def test_queue_with_an_empty_id(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, err = run(capsys, "queue", *argv, "--config", str(config))
    assert code == 2 and "not a queue ID" in err, err


def test_classify_with_rules_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_bytes(b"# r\xe8gles\n")
    code, err = run(capsys, "classify", "--rules", str(rules), "550 5.1.1 no")
    assert code == 1 and "line 1: not UTF-8" in err, err


def test_passwd_refuses_a_password_login_would_refuse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("x" * (MAX_PASSWORD_BYTES + 1) + "\n"))
    code, err = run(capsys, "passwd", "--stdin", "bob")
    assert code == 1 and f"longer than {MAX_PASSWORD_BYTES} bytes" in err, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("x" * MAX_PASSWORD_BYTES + "\n"))
    assert run(capsys, "passwd", "--stdin", "bob")[0] == 0
