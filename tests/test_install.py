# README "Installing as a service", run as written in a fresh virtualenv:
# every absolute path moved under a temporary root, and only the steps that change the
# machine itself left out (apt-get, useradd, systemctl; `install -g bouncer` takes the
# current group). tests/systemd_boot.sh runs the same commands unchanged under a real
# systemd, in private namespaces.
from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay import __version__

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("apt-get ", "useradd ", "systemctl ")
MOVED = ("/opt/bouncer", "/usr/local/bin", "/etc/bouncer", "/etc/systemd/system")


def install_commands() -> list[str]:
    """The README's install block, one command a line."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Installing as a service") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_installs_into_opt_bouncer_as_the_unit_runs_it() -> None:
    commands = install_commands()
    assert "python3 -m venv /opt/bouncer" in commands
    assert "/opt/bouncer/bin/pip install ." in commands
    unit = (ROOT / "systemd" / "bouncer.service").read_text()
    assert "ExecStart=/opt/bouncer/bin/bouncer serve" in unit
    assert any(c.startswith("install -m 640 -g bouncer conf/bouncer.toml") for c in commands)


def test_readme_install_commands_in_a_fresh_venv(tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():  # a file in a git worktree
        pytest.skip("a git checkout is needed to copy the source tree as a user unpacks it")
    src = tmp_path / "src"  # the unpacked source tree: tracked files only
    files = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        target = src / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name.decode()).is_file():
            shutil.copy2(ROOT / name.decode(), target)
    root = tmp_path / "root"
    group = grp.getgrgid(os.getgid()).gr_name
    script = []
    for command in install_commands():
        if command.startswith(SKIPPED):
            continue
        for path in MOVED:
            command = command.replace(path, f"{root}{path}")
        script.append(command.replace("-g bouncer", f"-g {group}"))
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{root}/usr/local/bin:{os.environ['PATH']}",
        "BOUNCER_CONFIG": f"{root}/etc/bouncer/bouncer.toml",
        "PYTHONPATH": "",  # the installed package, not this checkout
    }
    got = subprocess.run(
        ["bash", "-ex", "-c", "\n".join(script)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"{root}/etc/bouncer/bouncer.toml: ok" in got.stdout
    version = subprocess.run(
        [f"{root}/usr/local/bin/bouncer", "--version"], env=env, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"bouncer {__version__}"
    config = root / "etc/bouncer/bouncer.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert (root / "etc/systemd/system/bouncer.service").read_text() == (
        ROOT / "systemd" / "bouncer.service"
    ).read_text()
    assert (root / "opt/bouncer/bin/bouncer").exists()
