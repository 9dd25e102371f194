"""policy/ decides and never performs network I/O (STYLE.md point 1): walk its imports with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

POLICY = Path(__file__).resolve().parents[1] / "policy"
FORBIDDEN = {"asyncio", "aiosmtpd", "aiosmtplib", "dns", "socket", "uvloop", "aiohttp", "relay"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(POLICY.rglob("*.py")), ids=lambda p: p.name)
def test_policy_module_does_no_network_io(path: Path) -> None:
    assert not (_imported_roots(path) & FORBIDDEN)


def test_the_check_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import asyncio\nfrom dns import resolver\nfrom . import sibling\n")
    assert _imported_roots(probe) == {"asyncio", "dns"}
