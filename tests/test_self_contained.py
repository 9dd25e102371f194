"""The repository stands on its own: no file points outside it, and every citation of
docs/behaviour.md names a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACES = ["relay", "policy", "tests", "docs", "conf", "systemd", "scripts", ".ci"]
FILES = ["README.md", "pyproject.toml"]
SKIP = {ROOT / "tests" / "data"}  # third-party data, kept verbatim

# Built from parts so this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            re.escape("../" + "shared"),
            re.escape("SPEC" + ".md"),
            "SPEC" + r" §",
            re.escape("interfaces" + ".md"),
            r"\b[Ii]ssue" + r" \d",
        ]
    )
)
CITATION = re.compile(r"behaviour\.md#([a-z0-9-]+)")


def _texts() -> list[tuple[Path, str]]:
    paths = [ROOT / f for f in FILES]
    for place in PLACES:
        for path in sorted((ROOT / place).rglob("*")):
            if path.is_file() and not any(s in path.parents for s in SKIP):
                paths.append(path)
    out = []
    for path in paths:
        if "__pycache__" in path.parts:
            continue
        try:
            out.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def _anchor(heading: str) -> str:
    # GitHub's rule: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_nothing_points_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path, text in _texts()
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == [], "\n".join(found)


def test_every_behaviour_citation_names_a_section() -> None:
    doc = (ROOT / "docs" / "behaviour.md").read_text(encoding="utf-8")
    anchors = {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc, re.MULTILINE)}
    cited = {
        (str(path.relative_to(ROOT)), name)
        for path, text in _texts()
        for name in CITATION.findall(text)
    }
    assert cited, "no citations found: the pattern is wrong"
    missing = sorted(c for c in cited if c[1] not in anchors)
    assert missing == [], missing


# A repository path in prose or a comment (a top-level folder, a file name with an
# extension); not one inside an absolute path such as the unit's place under /etc.
PATH_CITED = re.compile(
    r"(?<![/\w.-])(?:relay|policy|tests|docs|conf|systemd|scripts)/[\w./-]*\w"
    r"\.(?:py|md|toml|sh|json|jsonl|service|pl)\b"
)


def test_every_cited_repository_path_exists() -> None:
    """Files move (the tree follows the code): a README, doc or comment naming a file
    that is no longer there sends the reader nowhere."""
    cited = {
        (str(path.relative_to(ROOT)), name)
        for path, text in _texts()
        for name in PATH_CITED.findall(text)
    }
    assert len(cited) > 100, "few citations found: the pattern is wrong"
    missing = sorted(c for c in cited if not (ROOT / c[1]).exists())
    assert missing == [], missing
