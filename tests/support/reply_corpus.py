"""The labelled reply corpus of tests/data/replies/corpus.jsonl, and agreement figures on it.

Each row: reply, class, category, lang, part ("dev" or "heldout"), source. The held-out
part comes from sources that were never read to write rules or to train the fallback
model (see tests/data/replies/README.md); its figures are the ones that predict replies
nobody here has seen.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from policy.classify.classify import _quoted, classify
from policy.reply import parse_reply
from policy.verdict import Verdict

CORPUS = Path(__file__).resolve().parents[1] / "data" / "replies" / "corpus.jsonl"


@dataclass(frozen=True, slots=True)
class Row:
    reply: str
    klass: str
    category: str
    lang: str
    part: str
    source: str
    set: str = ""  # the held-out set a row was collected for ("A" .. "D"), "" for the rest


def load(part: str | None = None, path: Path = CORPUS, set: str | None = None) -> list[Row]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            row = Row(
                d["reply"],
                d["class"],
                d["category"],
                d["lang"],
                d["part"],
                d["source"],
                d.get("set", ""),
            )
            if (part is None or row.part == part) and (set is None or row.set == set):
                rows.append(row)
    return rows


@dataclass
class Tally:
    n: int = 0
    klass: int = 0
    category: int = 0
    hard: int = 0  # rows labelled hard
    hard_found: int = 0  # ... that we call hard
    false_hard: int = 0  # rows not labelled hard that we call hard

    def add(self, row: Row, verdict: Verdict) -> None:
        self.n += 1
        got = verdict.klass.value
        self.klass += got == row.klass
        self.category += verdict.category.value == row.category
        if row.klass == "hard":
            self.hard += 1
            self.hard_found += got == "hard"
        elif got == "hard":
            self.false_hard += 1

    def line(self, label: str) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100 * a / b:5.1f}%" if b else "    - "

        return (
            f"{label:<16} n={self.n:<4} class {pct(self.klass, self.n)}"
            f"  hard recall {pct(self.hard_found, self.hard)} ({self.hard_found}/{self.hard})"
            f"  category {pct(self.category, self.n)}  false hard {self.false_hard}"
        )


@dataclass
class Report:
    total: Tally = field(default_factory=Tally)
    by_lang: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_class: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    misses: list[tuple[Row, Verdict]] = field(default_factory=list)


def evaluate(rows: Iterable[Row], decide: Callable[[str], Verdict] | None = None) -> Report:
    decide = decide or (lambda line: classify(parse_reply(line)))
    report = Report()
    for row in rows:
        verdict = decide(row.reply)
        report.total.add(row, verdict)
        report.by_lang[row.lang].add(row, verdict)
        report.by_class[row.klass].add(row, verdict)
        if verdict.klass.value != row.klass or verdict.category.value != row.category:
            report.misses.append((row, verdict))
    return report


def transient(line: str) -> bool:
    """Whether the contract's first-digit rule makes `line` soft: its reply code is 4xx,
    or it has none and the reply quoted inside it (or its bare enhanced code) starts
    with 4, as classify() reads it ("Remote host said: 451 ...", "(#4.3.0)")."""
    reply = parse_reply(line)
    if reply.code:
        return reply.is_transient
    if reply.enhanced:
        return reply.enhanced.startswith("4")
    code, enhanced = _quoted(reply.text.lower().replace("\n", " "))
    if code:
        return 400 <= code < 500
    return enhanced is not None and enhanced.startswith("4")
