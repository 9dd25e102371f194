"""The import graph of relay/ and policy/, read with ast (nothing is imported).

- policy/ decides and never performs network I/O; LMDB is the suppression store's alone.
- No import cycles, counting imports inside functions and under TYPE_CHECKING too.
- The flow's layers: inbound above the pipeline; outbound, queue and store below it;
  the wiring (service, wiring, cli) on top, imported by nothing below it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policy"
LMDB_OWNER = POLICY / "suppression" / "store.py"
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


@pytest.mark.parametrize("path", sorted(POLICY.rglob("*.py")), ids=lambda p: p.name)
def test_only_the_suppression_store_imports_lmdb(path: Path) -> None:
    assert ("lmdb" in _imported_roots(path)) == (path == LMDB_OWNER)


# -- the module graph ------------------------------------------------------------------------


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ("relay", "policy"):
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its text (a package's own
    `__init__` only when imported as such: `from relay.cli import queue` is relay.cli.queue)."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    found.add(f"{module}.{alias.name}")
                elif module in known:
                    found.add(module)
    found.discard(name)
    return found


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = _modules(root)
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    assert "relay.wiring" in graph and len(graph) > 100  # the walk found the tree
    assert _cycles(graph) == []


def test_the_cycle_check_finds_cycles(tmp_path: Path) -> None:
    (tmp_path / "relay" / "a").mkdir(parents=True)
    (tmp_path / "policy").mkdir()
    (tmp_path / "relay" / "__init__.py").write_text("")
    (tmp_path / "relay" / "a" / "__init__.py").write_text("")
    (tmp_path / "relay" / "a" / "one.py").write_text("from . import two\n")
    (tmp_path / "relay" / "a" / "two.py").write_text("def f():\n    from relay.a.three import x\n")
    (tmp_path / "relay" / "a" / "three.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import relay.a.one\n"
    )
    (tmp_path / "relay" / "b.py").write_text("from relay.a import one\n")
    graph = _graph(tmp_path)
    assert graph["relay.b"] == {"relay.a.one"}
    assert _cycles(graph) == [["relay.a.one", "relay.a.three", "relay.a.two"]]


TOP = ("relay.service", "relay.wiring", "relay.cli", "relay.__main__")
# Which modules may not import which: the flow reads downwards.
BELOW: dict[tuple[str, ...], tuple[str, ...]] = {
    ("relay.pipeline",): ("relay.inbound", "relay.intake", *TOP),
    ("relay.outbound", "relay.queue", "relay.store"): (
        "relay.pipeline",
        "relay.inbound",
        "relay.intake",
        *TOP,
    ),
    ("relay.inbound", "relay.intake", "relay.observe", "relay.config"): TOP,
    ("relay.lifecycle", "relay.workers"): ("relay",),
}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _upward(graph: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for layer, above in BELOW.items()
        if _under(module, layer)
        for target in sorted(targets)
        if _under(target, above) and target != "relay"
    ]


def test_no_import_points_back_up_the_flow() -> None:
    assert _upward(_graph()) == []


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {"relay.queue.queue": {"relay.pipeline"}, "relay.pipeline": {"relay.queue.queue"}}
    assert _upward(graph) == ["relay.queue.queue -> relay.pipeline"]
