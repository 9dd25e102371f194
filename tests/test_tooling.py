"""The contributor tooling says what the README says, and CI leaves the machine's services alone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"Install the test extras and run the tests:\n\n```sh\n(.+)\n```", readme)
    assert m, "README lost its test command"
    return m.group(1)


def test_scripts_check_runs_the_readme_test_command_after_ruff_and_mypy() -> None:
    script = (ROOT / "scripts" / "check").read_text(encoding="utf-8")
    lines = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    command = _readme_test_command()
    assert any(line.startswith(command) for line in lines), command
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(step))
        for step in ("ruff format --check", "ruff check", "mypy", command)
    ]
    assert order == sorted(order), "scripts/check runs its steps out of order"
    assert "set -euo pipefail" in script  # a failing step fails the check


def test_ci_runs_scripts_check_and_stops_no_service() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    code = "\n".join(line for line in ci.splitlines() if not line.lstrip().startswith("#"))
    assert "scripts/check" in code
    assert not re.search(r"\b(postfix|systemctl|service)\s+(\S+\s+)?(stop|kill|restart)", code)
