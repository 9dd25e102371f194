# The second bounce corpus (tests/data/bounces2): its cases, their expected recipients,
# how bouncer's reports are read, and the score. Shared by tests/policy/bounces/test_bounces2.py
# and tests/bench/bench_bounces2.py; reads files, decides nothing about bouncer.
"""Other parsers' test e-mails with their own expected recipients."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from policy.bounces.parse import parse_bounce
from policy.bounces.values import Kind
from policy.verdict import BounceClass

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces2"

# Files whose name starts with one of these families were never read while writing the
# parser's rules (docs/intake.md, "Second corpus"): their figures predict unseen bounces.
HELD_OUT_FAMILIES = (
    "yahoo_",
    "smtp32_",
    "groupwise_",
    "netscape_",
    "sina_",
    "microsoft_",
    "caiwireless_",
    "llnl_",
    "yale_",
    "aol_",
    "hotpop_",
    "newmailru_",
)

# Whole sources never read while writing rules.
HELD_OUT_SOURCES = ("mail-deliverystatus-bounceparser",)

# recipient -> "permanent" | "permanent-undetermined" | "temporary"
Result = dict[str, str]


@dataclass(frozen=True)
class Case:
    source: str
    file: str
    expected: tuple[str, ...]
    temporary: bool
    data: bytes

    @property
    def held_out(self) -> bool:
        return self.source in HELD_OUT_SOURCES or self.file.startswith(HELD_OUT_FAMILIES)


@dataclass
class Score:
    files: int = 0
    expected: int = 0
    found: int = 0
    extra: int = 0
    exact: int = 0
    permanent: int = 0
    permanent_failed: int = 0
    permanent_undetermined: int = 0
    temporary: int = 0
    temporary_soft: int = 0
    wrong: list[str] = field(default_factory=list)

    def add(self, case: Case, got: Result) -> None:
        self.files += 1
        want = set(case.expected)
        self.expected += len(want)
        self.found += len(want & set(got))
        extra = set(got) - want
        self.extra += len(extra)
        self.exact += set(got) == want
        for r in want & set(got):
            if case.temporary:
                self.temporary += 1
                self.temporary_soft += got[r] == "temporary"
            else:
                self.permanent += 1
                self.permanent_failed += got[r].startswith("permanent")
                self.permanent_undetermined += got[r] == "permanent-undetermined"
        if case.temporary:
            self.temporary += len(want - set(got))
        else:
            self.permanent += len(want - set(got))
        if set(got) != want:
            self.wrong.append(f"{case.file}: want {sorted(want)} got {sorted(got)}")

    def line(self, name: str) -> str:
        def pct(a: int, b: int) -> str:
            return f"{a}/{b} ({a / b:.1%})" if b else "-"

        und = self.permanent_undetermined
        und_text = f" (undetermined {und})" if und else ""
        return (
            f"  {name:13} recall {pct(self.found, self.expected):17} extra {self.extra:3}  "
            f"files exact {pct(self.exact, self.files):16} "
            f"permanent as permanent {pct(self.permanent_failed, self.permanent)}{und_text}; "
            f"temporary as temporary {pct(self.temporary_soft, self.temporary)}"
        )


def ours(data: bytes) -> Result:
    out: Result = {}
    for r in parse_bounce(data):
        if r.kind not in (Kind.DSN, Kind.UNKNOWN) or not r.recipient or r.verdict is None:
            continue
        if r.action in ("delivered", "relayed", "expanded"):
            continue
        if r.verdict.klass is BounceClass.DELIVERED:
            continue
        code = r.reply.code
        temporary_code = r.status.startswith("4") or 400 <= code < 500
        if r.action == "delayed" or (r.action != "failed" and temporary_code):
            read = "temporary"
        elif r.verdict.klass is BounceClass.UNDETERMINED:
            read = "permanent-undetermined"  # failed, and nothing clear about the address
        else:
            read = "permanent"
        # Several blocks for one recipient: the most definite reading counts.
        if out.get(r.recipient) != "permanent":
            out[r.recipient] = read
    return out


def load_cases(corpus: Path = CORPUS) -> list[Case]:
    cases = []
    for expected in sorted(corpus.glob("*/expected.jsonl")):
        for line in expected.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            data = (expected.parent / row["file"]).read_bytes()
            rcpts = tuple(a.lower() for a in row["recipients"])
            cases.append(Case(expected.parent.name, row["file"], rcpts, row["temporary"], data))
    return cases


def score(cases: list[Case], parser: Callable[[bytes], Result | None]) -> Score | None:
    s = Score()
    for case in cases:
        got = parser(case.data)
        if got is None:
            return None
        s.add(case, got)
    return s
