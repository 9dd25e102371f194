# conf/bouncer.toml documents every setting with its default: check-config accepts it,
# every Config field appears in it, and each value it sets is the code's default.
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.config.load import Config, load_config

CONF = Path(__file__).resolve().parents[3] / "conf" / "bouncer.toml"


def _sections(cls: type, prefix: str = "") -> dict[str, list[str]]:
    """Section name -> its scalar keys, walking the Config dataclass tree."""
    out: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_sections(hints[f.name], f"{prefix}{f.name}."))
        else:
            out.setdefault(prefix.rstrip("."), []).append(f.name)
    return out


def _documented_keys(text: str) -> dict[str, set[str]]:
    """Keys set or shown commented out (`# key = ...`) per [section], and sub-tables."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[([\w.]+)\]\s*$", line):
            section = m.group(1)
            found.setdefault(section, set())
            parent, _, child = section.rpartition(".")
            if parent:
                found.setdefault(parent, set()).add(child)
        elif m := re.match(r"^#?\s*([a-z_]+)\s*=", line):
            found.setdefault(section, set()).add(m.group(1))
    return found


def test_check_config_accepts_the_documented_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # As installed, but with its state directory where this test may create one.
    text = CONF.read_text().replace('path = "/var/lib/bouncer"', f'path = "{tmp_path / "s"}"')
    (tmp_path / "bouncer.toml").write_text(text)
    assert main(["check-config", "--config", str(tmp_path / "bouncer.toml")]) == 0
    assert ": ok" in capsys.readouterr().out


def test_every_setting_is_documented() -> None:
    documented = _documented_keys(CONF.read_text())
    missing = [
        f"{section}.{key}"
        for section, keys in _sections(Config).items()
        for key in keys
        if key not in documented.get(section, set())
    ]
    assert not missing, f"conf/bouncer.toml does not document: {missing}"


def test_documented_values_are_the_defaults() -> None:
    documented = load_config(CONF)
    defaults = load_config(None)
    # The one value the shipped file sets apart from the default: the store the server
    # and the CLI share. hostname and helo are commented out: the host's FQDN.
    assert documented.store.path == "/var/lib/bouncer"
    assert dataclasses.replace(documented, store=defaults.store) == defaults
