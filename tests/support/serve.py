# Test support: `bouncer serve` as a real subprocess (the way systemd and Postfix see it),
# on a free loopback port with a throw-away state directory and its own log file.
"""Start and stop `python -m relay serve --config ...` for end-to-end tests.

Usage::

    with bouncer_process(tmp, {"delivery": {"routes": {"x.test": f"127.0.0.1:{mx.port}"}}}) as b:
        ... connect to ("127.0.0.1", b.port) ...
        assert "status=bounced" in b.log_text()

The given table is merged over sane test defaults (loopback listen on a free port,
STARTTLS towards remotes off, short timeouts, state and log under `base`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.postfix import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for config tables (str, int, float, bool, lists, nested tables)."""
    scalars, tables = [], []
    for key, value in table.items():
        name = json.dumps(key) if not key.replace("_", "").isalnum() else key
        if isinstance(value, dict):
            tables.append((f"{prefix}.{name}" if prefix else name, value))
        else:
            scalars.append(f"{name} = {_toml_value(value)}")
    out = ""
    if scalars:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n"
    for sub_prefix, sub in tables:
        body = to_toml(sub, sub_prefix)
        out += body if body else f"[{sub_prefix}]\n"
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class BouncerProcess:
    base: Path
    port: int
    config_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.base / "bouncer.log"

    @property
    def output_path(self) -> Path:
        return self.base / "output"

    def log_text(self) -> str:
        """The event log (Postfix-style lines) plus the process's stdout/stderr."""
        text = ""
        for path in (self.log_path, self.output_path):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(errors="replace")
        return text

    def wait_log(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in (text := self.log_text()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in bouncer's log after {timeout}s:\n{text}")
            time.sleep(0.05)
        return text

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def default_table(base: Path, port: int) -> dict[str, Any]:
    return {
        "server": {"listen": [f"127.0.0.1:{port}"], "hostname": "bouncer.test"},
        "delivery": {
            "helo": "bouncer.test",
            "starttls": "off",
            "connect_timeout": 5.0,
            "command_timeout": 10.0,
            "drain_timeout": 5.0,
        },
        "store": {"path": str(base / "state")},
        "log": {"file": str(base / "bouncer.log")},
    }


@contextlib.contextmanager
def bouncer_process(
    base: Path, table: dict[str, Any] | None = None, root: Path = ROOT
) -> Iterator[BouncerProcess]:
    """Run `bouncer serve` with `table` merged over the test defaults, for a block; the code
    is `root`'s (this tree, or another checkout to compare with)."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = merge(default_table(base, port), table or {})
    listen = config["server"]["listen"][0]
    port = int(listen.rsplit(":", 1)[1])
    config_path = base / "bouncer.toml"
    config_path.write_text(to_toml(config))
    with open(base / "output", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(config_path)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    b = BouncerProcess(base, port, config_path, proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bouncer serve exited {proc.returncode}:\n{b.log_text()}")
            try:
                wait_port("127.0.0.1", port, timeout=0.2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bouncer serve did not listen:\n{b.log_text()}") from None
        yield b
    finally:
        b.stop()
