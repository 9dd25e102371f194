# `bouncer parse FILE.eml ...`: shows what the intake would make of a bounce; decides nothing.
"""Print each report a bounce, complaint or auto-reply email yields, one line per recipient.

It calls `policy.bounces.parse.parse_bounce`, the same function the intake
uses, so the output is exactly what the intake would record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from policy.bounces.parse import parse_bounce
from policy.bounces.values import BounceReport
from relay.cli.common import EXIT_FAILED, EXIT_OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "parse",
        help="show the recipients, status and verdict bouncer reads from bounce emails",
        description="Parse bounce emails (DSN, ARF, plain-text formats, auto-replies).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE.eml", help="'-' reads standard input")
    parser.add_argument("--json", action="store_true", help="one JSON object per report")
    parser.set_defaults(handler=_parse)


def report_dict(path: str, report: BounceReport) -> dict[str, Any]:
    verdict = report.verdict
    return {
        "file": path,
        "recipient": report.recipient,
        "kind": report.kind.value,
        "source": report.source,
        "action": report.action,
        "status": report.status,
        "reply": _reply_text(report),
        "remote_mta": report.remote_mta,
        "stage": report.stage,
        "feedback_type": report.feedback_type,
        "class": verdict.klass.value if verdict else "",
        "category": verdict.category.value if verdict else "",
        "rule": verdict.rule if verdict else "",
    }


def _reply_text(report: BounceReport) -> str:
    """The reply as logs quote it; a text-only diagnostic (code 0) without the "0"."""
    reply = report.reply
    if not reply.code and not reply.text:
        return ""
    line = reply.line()
    return line[2:] if line.startswith("0 ") else line


def _line(row: dict[str, Any]) -> str:
    what = row["class"] and f"{row['class']}/{row['category']}"
    if row["kind"] == "arf":
        what = f"complaint/{row['feedback_type'] or 'abuse'}"
    elif row["kind"] == "autoreply":
        what = "auto-reply (not a bounce)"
    fields = [
        row["file"] + ":",
        f"<{row['recipient']}>" if row["recipient"] else "<?>",
        row["status"] or "-",
        what,
        f"[{row['kind']}:{row['source']}]",
    ]
    if row["reply"]:
        fields.append(row["reply"][:160])
    return " ".join(fields)


def _parse(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            print(f"bouncer: {path}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        reports = parse_bounce(data)
        if not reports:
            if args.json:
                print(json.dumps({"file": path, "kind": "none"}))
            else:
                print(f"{path}: no bounce, complaint or auto-reply found")
        for report in reports:
            row = report_dict(path, report)
            print(json.dumps(row, ensure_ascii=False) if args.json else _line(row))
    return EXIT_FAILED if failed else EXIT_OK
