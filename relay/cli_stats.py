# `bouncer stats`: prints the bounce-rate counters; the numbers come from relay/counters.py.
"""`bouncer stats [--since 7d] [--by day|domain|total] [--format table|json]`.

Reads the LMDB state read-only, so it runs beside a live server.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import cast

from policy.rates import Counts, GroupBy, parse_since
from relay.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    config_or_exit,
    open_state_for,
)
from relay.counters import read_stats, stats_document
from relay.state import StateError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stats", help="bounce rates (hard rate = hard / sent) by day or recipient domain"
    )
    add_config_option(parser)
    parser.add_argument(
        "--since", default="7d", help="period: 7d (today and 6 days before), 4w or 2026-11-01"
    )
    parser.add_argument("--by", choices=("day", "domain", "total"), default="day")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(handler=run)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_table(rows: list[tuple[str, Counts]], by: str) -> str:
    """Aligned columns with a total row; rates as percentages."""
    head = (by, "sent", "delivered", "hard", "soft", "block", "suppressed", "hard%", "soft%")
    total = Counts()
    body: list[tuple[str, ...]] = []
    for key, c in rows:
        total = total + c
        body.append(_cells(key or "(none)", c))
    if by != "total":
        body.append(_cells("total", total))
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *body]
    ]
    return "\n".join(lines)


def _cells(key: str, c: Counts) -> tuple[str, ...]:
    return (
        key,
        str(c.sent),
        str(c.delivered),
        str(c.hard),
        str(c.soft),
        str(c.block),
        str(c.suppressed),
        _rate(c.hard_rate),
        _rate(c.soft_rate),
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    by = cast(GroupBy, args.by)
    try:
        since = parse_since(args.since, datetime.now(UTC))
    except ValueError as exc:
        print(f"bouncer stats: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        env = open_state_for(args, cfg, create=False)  # says where it looked
    except StateError as exc:
        print(f"bouncer stats: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        rows = read_stats(env, since, by)
    finally:
        env.close()
    if args.format == "json":
        print(json.dumps(stats_document(rows, by, since), indent=2))
    else:
        print(f"since {since.isoformat()} (UTC days)")
        print(render_table(rows, by))
    return EXIT_OK
