# With no [store] path, `bouncer serve` keeps its LMDB state in ./bouncer-state, or in
# $STATE_DIRECTORY when systemd's StateDirectory= sets it. A real subprocess, loopback only.
"""Where `bouncer serve` keeps its state when the config does not say."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postfix import free_port, wait_port

ROOT = Path(__file__).resolve().parents[3]


def _serve(cwd: Path, env_extra: dict[str, str]) -> None:
    """Run `python -m relay serve` in `cwd` until it listens, then SIGTERM it (exit 0)."""
    port = free_port()
    conf = cwd / "bouncer.toml"
    conf.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\n')
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(conf)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port("127.0.0.1", port, timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes the stderr pipe


@pytest.mark.timeout(60)
def test_state_in_cwd_bouncer_state_by_default(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _serve(cwd, {})
    assert (cwd / "bouncer-state" / "data.mdb").is_file()


@pytest.mark.timeout(60)
def test_state_in_state_directory_when_systemd_sets_it(tmp_path: Path) -> None:
    cwd, state = tmp_path / "cwd", tmp_path / "var-lib-bouncer"
    cwd.mkdir()
    state.mkdir()
    _serve(cwd, {"STATE_DIRECTORY": str(state)})
    assert (state / "data.mdb").is_file()
    assert not (cwd / "bouncer-state").exists()
