"""Classifications per second over the Sisimai corpus Diagnostic-Codes (one core).

Run: python tests/bench/bench_classify.py [--seconds N]
Target: >= 50,000 classifications/s on one core, fallback model included.
Not collected by pytest. --corpus replies / fallback measure on
tests/data/replies/corpus.jsonl (all lines, or only those no rule reads).

The replies are parsed once up front (parse_reply is the relay's edge, not the
classifier); each timed call is classify(reply) on a fresh Reply object, with no cache:
the corpus is cycled in order, so every distinct text is classified from scratch.
Times are process CPU time (time.process_time), so other load on the machine does not
count against the figure; it is the rate one core sustains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policy.classify.classify import classify  # noqa: E402
from policy.classify.rules import default_rules  # noqa: E402
from policy.reply import Reply, parse_reply  # noqa: E402
from tests.support.reply_corpus import load  # noqa: E402
from tests.support.sisimai import corpus_dir, reply_of, samples  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--corpus",
        choices=("sisimai", "replies", "fallback"),
        default="sisimai",
        help="sisimai: the Sisimai Diagnostic-Codes (default; replies when absent);"
        " replies: tests/data/replies/corpus.jsonl; fallback: only its replies that no"
        " rule reads, so every call goes through the fallback model",
    )
    args = parser.parse_args()
    corpus = corpus_dir()
    if args.corpus == "sisimai" and corpus is not None:
        replies = [reply_of(s.diagnostic) for s in samples(corpus)]
        label = "Sisimai Diagnostic-Codes"
    else:
        replies = [parse_reply(row.reply) for row in load()]
        label = "reply corpus lines"
        if args.corpus == "fallback":
            replies = [r for r in replies if classify(r, fallback=False).category.value == "other"]
            label = "reply corpus lines that reach the fallback model"
    # Fresh, equal objects so nothing is memoised on identity.
    replies = [Reply(r.code, r.enhanced, r.text, r.host) for r in replies]
    rules = default_rules()
    lengths = [len(r.text) for r in replies]
    print(
        f"corpus: {len(replies)} {label}, {len(set(r.text for r in replies))} distinct,"
        f" text length median {statistics.median(lengths):.0f}, max {max(lengths)} chars;"
        f" rules: {len(rules.codes)} codes, {len(rules.texts)} text patterns"
    )
    rates = []
    for _ in range(args.rounds):
        n = 0
        start = time.process_time()
        deadline = start + args.seconds
        while time.process_time() < deadline:
            for r in replies:
                classify(r, rules)
            n += len(replies)
        rates.append(n / (time.process_time() - start))
    per_call = 1e6 / statistics.median(rates)
    print(
        f"classify: median {statistics.median(rates):,.0f}/s, best {max(rates):,.0f}/s,"
        f" worst {min(rates):,.0f}/s over {args.rounds} rounds of {args.seconds:.0f}s"
        f" ({per_call:.1f} us per call)"
    )
    # The costliest single texts, to show where time goes.
    costs = []
    for r in set(replies):
        t0 = time.process_time()
        for _ in range(200):
            classify(r, rules)
        costs.append(((time.process_time() - t0) / 200 * 1e6, r.line()[:70]))
    costs.sort(reverse=True)
    print("slowest texts (us per call):")
    for cost, line in costs[:5]:
        print(f"  {cost:6.1f}  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
