# `bouncer classify`: classify reply lines given as arguments or on stdin. The decision
# is policy.classify.classify's; this module only parses the edge strings and prints verdicts.
"""The `classify` subcommand.

    bouncer classify "550 5.1.1 <a@b>: Recipient address rejected: User unknown"
    tail -f mail.log | cut -d'(' -f2 | bouncer classify --json

Each argument (or, with none, each non-empty stdin line) is one reply: "550 5.1.1 text",
a multi-line reply flattened onto one line, or a bare diagnostic text (code 0).
Plain output is tab-separated: class, category, rule, code, status, reply. With --json,
one object per line: reply, code, status, class, category, rule (and stage when given).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator

from policy.classify.classify import FALLBACK_RULE, classify, classify_at, fallback_reasons
from policy.classify.rules import RuleError, RuleSet, load_rules
from policy.reply import parse_reply
from relay.cli.common import EXIT_FAILED, EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "classify", help="classify SMTP replies (arguments, or stdin lines) as hard/soft/block"
    )
    parser.add_argument("replies", nargs="*", metavar="REPLY", help="reply lines; none: stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--stage",
        metavar="CMD",
        help="the SMTP command the replies answered (RCPT, DATA): a hard verdict at DATA "
        "becomes block",
    )
    parser.add_argument(
        "--rules", metavar="PATH", help="a rule table to use instead of policy/classify/rules.toml"
    )
    parser.set_defaults(handler=_classify)


def _lines(args: argparse.Namespace) -> Iterator[str]:
    source: Iterable[str] = args.replies if args.replies else sys.stdin
    for line in source:
        line = line.strip()
        if line:
            yield line


def classify_line(line: str, rules: RuleSet | None, stage: str | None) -> dict[str, object]:
    """One reply line -> the record both output formats print."""
    reply = parse_reply(line)
    verdict = classify_at(reply, stage, rules) if stage else classify(reply, rules)
    record: dict[str, object] = {
        "reply": line,
        "code": reply.code,
        "status": reply.enhanced,
        "class": verdict.klass.value,
        "category": verdict.category.value,
        "rule": verdict.rule,
    }
    if verdict.rule.startswith(FALLBACK_RULE):
        # The model decided: say which words weighed most, and how sure it was.
        reasons = fallback_reasons(reply)
        if reasons is not None:
            record["tokens"] = list(reasons.tokens)
            record["confidence"] = round(reasons.confidence, 3)
    if stage:
        record["stage"] = stage.upper()
    return record


def _classify(args: argparse.Namespace) -> int:
    rules: RuleSet | None = None
    if args.rules:
        try:
            rules = load_rules(args.rules)
        except (OSError, RuleError) as exc:
            print(f"bouncer: classify: {args.rules}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    out = sys.stdout
    for line in _lines(args):
        record = classify_line(line, rules, args.stage)
        if args.json:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            fields = [record[k] for k in ("class", "category", "rule", "code", "status")]
            if "tokens" in record:  # fallback-model:word,word (confidence)
                tokens = ",".join(record["tokens"])  # type: ignore[arg-type]
                fields[2] = f"{fields[2]}:{tokens} ({record['confidence']})"
            out.write("\t".join("-" if v is None else str(v) for v in fields) + f"\t{line}\n")
    out.flush()
    return EXIT_OK
