"""Train policy/classify/fallback_model.json from the development part of the reply corpus.

Run: PYTHONPATH=. python tests/data/replies/train_fallback.py [--check]

Training data: the rows of tests/data/replies/corpus.jsonl with part "dev" and the golden
rows of tests/policy/data/replies.toml. The held-out part is never read here.

The hard threshold is chosen by leave-one-source-out on the development part: each dev
source is predicted by a model trained without it, and the threshold is set above the
highest confidence at which a row not labelled hard was called hard (and never below
HARD_FLOOR). Output is deterministic (sorted keys, rounded weights); --check exits 1 if
the shipped file differs from what this script would write.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from policy.classify.fallback import DEFAULT_MODEL, Model, parse_model, tokens  # noqa: E402
from policy.classify.rules import CLASS_OF  # noqa: E402
from policy.reply import parse_reply  # noqa: E402
from policy.verdict import BounceClass, Category  # noqa: E402

ALPHA = 0.5  # Laplace smoothing
HARD_FLOOR = 0.9  # the hard threshold is never below this
MIN_CONFIDENCE = 0.7  # a non-hard category needs this posterior
MIN_ROWS = 2  # a token seen in fewer training rows is not weighed (one row proves nothing)
CORPUS = ROOT / "tests" / "data" / "replies" / "corpus.jsonl"
GOLDEN = ROOT / "tests" / "policy" / "data" / "replies.toml"

Example = tuple[frozenset[str], Category, str]  # tokens, label, source


def examples() -> list[Example]:
    out: list[Example] = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["part"] == "dev":
            text = parse_reply(row["reply"]).text
            out.append((tokens(text), Category(row["category"]), row["source"]))
    golden = tomllib.loads(GOLDEN.read_text(encoding="utf-8"))["row"]
    for row in golden:
        if row["category"] != "delivered" and "stage" not in row:
            text = parse_reply(row["reply"]).text
            out.append((tokens(text), Category(row["category"]), "golden"))
    return out


def fit(data: list[Example], hard_threshold: float) -> dict[str, object]:
    categories = sorted({c for _, c, _ in data}, key=lambda c: c.value)
    docs = Counter(c for _, c, _ in data)
    counts: dict[str, Counter[Category]] = defaultdict(Counter)
    totals: Counter[Category] = Counter()
    for toks, cat, _ in data:
        for t in toks:
            counts[t][cat] += 1
        totals[cat] += len(toks)
    for t in [t for t, c in counts.items() if sum(c.values()) < MIN_ROWS]:
        del counts[t]
    vocabulary = len(counts)
    n = len(data)

    def log_p(t: str, c: Category) -> float:
        return math.log((counts[t][c] + ALPHA) / (totals[c] + ALPHA * vocabulary))

    return {
        "categories": [c.value for c in categories],
        "prior": [round(math.log((docs[c] + 1) / (n + len(categories))), 4) for c in categories],
        "weights": {t: [round(log_p(t, c), 4) for c in categories] for t in sorted(counts)},
        "hard_threshold": hard_threshold,
        "min_confidence": MIN_CONFIDENCE,
        "trained_on": f"{n} rows: dev part of corpus.jsonl + golden rows",
    }


def choose_threshold(data: list[Example]) -> float:
    worst = 0.0
    for source in sorted({s for _, _, s in data if s != "golden"}):
        rest = [e for e in data if e[2] != source]
        model: Model = parse_model({**fit(rest, 0.0), "min_confidence": 0.0})
        for toks, label, s in data:
            if s != source:
                continue
            guess = model.predict(" ".join(sorted(toks)))
            if guess is None:
                continue
            said_hard = CLASS_OF[guess.category] is BounceClass.HARD
            if said_hard and CLASS_OF[label] is not BounceClass.HARD:
                worst = max(worst, guess.confidence)
    return round(max(HARD_FLOOR, min(0.999, worst + 0.01)), 3)


def dump(model: dict[str, object]) -> str:
    """JSON with one token per line, so a retrained model diffs line by line."""
    weights = model["weights"]
    assert isinstance(weights, dict)
    head = {k: v for k, v in sorted(model.items()) if k != "weights"}
    lines = [json.dumps(head, ensure_ascii=False)[:-1] + ', "weights": {']
    items = [f"{json.dumps(t, ensure_ascii=False)}: {json.dumps(w)}" for t, w in weights.items()]
    lines.append(",\n".join(items))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file")
    args = parser.parse_args()
    data = examples()
    model = fit(data, choose_threshold(data))
    text = dump(model)
    if args.check:
        same = DEFAULT_MODEL.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{DEFAULT_MODEL} differs: rerun without --check")
        return 0 if same else 1
    DEFAULT_MODEL.write_text(text, encoding="utf-8")
    print(
        f"{DEFAULT_MODEL.name}: {len(data)} examples, {len(model['weights'])} tokens,"  # type: ignore[arg-type]
        f" hard threshold {model['hard_threshold']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
