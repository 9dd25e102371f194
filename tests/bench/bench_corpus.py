"""Agreement with the labelled reply corpus (tests/data/replies/corpus.jsonl).

Run: python tests/bench/bench_corpus.py [--misses] [--no-fallback] [--set X]

Prints, for the held-out part (sources never used to write rules or to train the
fallback model) and then for the development part (labelled as such: the rules and the
model were written from it, so it flatters), the corpus size and sources, and class
agreement, hard recall, category agreement and false hards, overall, per language and
per expected class. --misses lists every disagreement; --no-fallback shows the rules
alone. Not collected by pytest; tests/policy/classify/test_reply_corpus.py asserts the figures.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policy.classify.classify import classify  # noqa: E402
from policy.reply import parse_reply  # noqa: E402
from tests.support.reply_corpus import CORPUS, Row, evaluate, load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list every disagreement")
    parser.add_argument("--no-fallback", action="store_true", help="rules only")
    parser.add_argument("--set", help="only this held-out set (A, B, C, D), wherever it is now")
    args = parser.parse_args()
    fallback = not args.no_fallback
    rows = load()
    print(f"corpus: {CORPUS.relative_to(CORPUS.parents[3])}, {len(rows)} rows")
    groups: list[tuple[str, str, list[Row]]] = []
    if args.set:
        mine = [r for r in rows if r.set == args.set]
        where = "held-out" if all(r.part == "heldout" for r in mine) else "moved to development"
        groups.append((args.set, f"SET {args.set} ({where})", mine))
    else:
        for name in sorted({r.set for r in rows if r.part == "heldout"}):
            mine = [r for r in rows if r.part == "heldout" and r.set == name]
            groups.append(("heldout", f"HELD-OUT SET {name}", mine))
        held = [r for r in rows if r.part == "heldout"]
        groups.append(("heldout", "HELD-OUT, ALL SETS", held))
        for name in sorted({r.set for r in rows if r.part == "dev" and r.set}):
            mine = [r for r in rows if r.part == "dev" and r.set == name]
            groups.append(("moved", f"SET {name} (moved to development after its one run)", mine))
        dev = [r for r in rows if r.part == "dev"]
        groups.append(("dev", "DEVELOPMENT (rules and model written from it)", dev))
    for part, label, mine in groups:
        sources = Counter(r.source for r in mine)
        langs = Counter(r.lang for r in mine)
        print(
            f"\n== {label}: {len(mine)} rows, {len(sources)} sources, languages "
            + " ".join(f"{k}:{v}" for k, v in sorted(langs.items()))
        )
        report = evaluate(mine, lambda line: classify(parse_reply(line), fallback=fallback))
        print(report.total.line("all"))
        print("-- per language")
        for lang, tally in sorted(report.by_lang.items()):
            print(tally.line(lang))
        print("-- per expected class")
        for klass, tally in sorted(report.by_class.items()):
            print(tally.line(klass))
        if args.misses:
            print("-- disagreements (expected <- got, rule)")
            for row, v in report.misses:
                print(
                    f"  {row.klass}/{row.category} <- {v.klass.value}/{v.category.value}"
                    f" {v.rule} | {row.reply[:100]}"
                )
        if part != "dev":
            print("-- sources")
            for source, n in sorted(sources.items()):
                print(f"  {n:3} {source[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
