# Issue 12: the late-bounce parser on a second public corpus (tests/data/bounces2), side by
# side with flufl.bounce (GNU Mailman's parser), each file scored against its source's
# own expected recipients. Prints figures; asserts nothing.
"""python tests/bench/bench_bounces2.py [--list]

Per part (rules written / held out) and per parser:
- recall: expected recipients reported / expected recipients;
- extra: reported recipients the source does not expect (per file, summed);
- files exact: files whose reported set equals the expected set;
- permanent read as permanent: expected permanent recipients reported as a final
  failure (ours: Action failed, or no delay and no 4xx code or status; flufl.bounce: in its permanent
  set), of which ours says "undetermined" (SPEC §3: nothing clear about the address);
- temporary read as temporary: expected temporary recipients reported as a delay
  (ours: Action delayed, a delay notice, or a 4xx code or status).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policy.bounce_parse import parse_bounce  # noqa: E402
from policy.bounce_types import Kind  # noqa: E402
from policy.verdict import BounceClass  # noqa: E402

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
        return self.file.startswith(HELD_OUT_FAMILIES)


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

        und = f" (undetermined {self.permanent_undetermined})" if self.permanent_undetermined else ""
        return (
            f"  {name:13} recall {pct(self.found, self.expected):17} extra {self.extra:3}  "
            f"files exact {pct(self.exact, self.files):16} "
            f"permanent as permanent {pct(self.permanent_failed, self.permanent)}{und}; "
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


def flufl(data: bytes) -> Result | None:
    try:
        from flufl.bounce import all_failures
    except ImportError:
        return None
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    temporary, permanent = all_failures(msg)
    out: Result = {}
    for raw in temporary:
        out[_text(raw)] = "temporary"
    for raw in permanent:
        out[_text(raw)] = "permanent"
    return out


def _text(raw: bytes | str) -> str:
    return (raw.decode("latin-1") if isinstance(raw, bytes) else raw).lower()


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list every file a parser got wrong")
    args = ap.parse_args()
    cases = load_cases()
    sources = sorted({c.source for c in cases})
    print(f"corpus: {len(cases)} files from {', '.join(sources)} ({CORPUS})")
    parts = (
        ("rules written", [c for c in cases if not c.held_out]),
        ("held out", [c for c in cases if c.held_out]),
        ("all", cases),
    )
    for title, part in parts:
        print(f"{title}: {len(part)} files")
        for name, parser in (("bouncer", ours), ("flufl.bounce", flufl)):
            s = score(part, parser)
            if s is None:
                print(f"  {name:13} not installed (pip install flufl.bounce)")
                continue
            print(s.line(name))
            if args.list and title == "rules written":
                print("\n".join("    " + w for w in s.wrong))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
