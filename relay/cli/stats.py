# `bouncer stats`: prints the bounce-rate counters; the numbers come from relay/observe/counters.py.
"""`bouncer stats [--since 7d] [--until DAY] [--by day|domain|day,domain|total]
[--domain DOMAIN] [--format table|json|csv]`.

Reads the LMDB state read-only, so it runs beside a live server.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import cast

from policy.address import normalize_domain
from policy.rates import COUNTER_NAMES, GROUPINGS, Counts, GroupBy, key_fields, parse_period
from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    config_or_exit,
    open_state_for,
)
from relay.observe.counters import read_stats, stats_csv, stats_document
from relay.store.env import StateError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stats", help="bounce rates (hard rate = hard / sent) by day or recipient domain"
    )
    add_config_option(parser)
    parser.add_argument(
        "--since",
        default="7d",
        help="first day: 7d (today and 6 days before), 4w, yesterday, today or 2026-11-01",
    )
    parser.add_argument("--until", help="last day, included (same forms; default today)")
    parser.add_argument("--by", choices=GROUPINGS, default="day")
    parser.add_argument("--domain", help="only this recipient domain")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.set_defaults(handler=run)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


_COLUMNS = COUNTER_NAMES  # every counter, in its order


def render_table(rows: list[tuple[str, Counts]], by: str) -> str:
    """Aligned columns with a total row; rates as percentages."""
    keys = by.split(",") if by != "total" else ["total"]
    head = (*keys, *_COLUMNS, "hard%", "soft%", "refused%")
    total = Counts()
    body: list[tuple[str, ...]] = []
    for key, c in rows:
        total = total + c
        parts = list(key_fields(key, cast(GroupBy, by)).values()) or [key]
        body.append(_cells([p or "(none)" for p in parts], c))
    if by != "total":
        body.append(_cells(["total"] + [""] * (len(keys) - 1), total))
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < len(keys) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [head, *body]
    ]
    return "\n".join(lines)


def _cells(keys: list[str], c: Counts) -> tuple[str, ...]:
    return (
        *keys,
        *(str(getattr(c, n)) for n in _COLUMNS),
        _rate(c.hard_rate),
        _rate(c.soft_rate),
        _rate(c.refused_rate),
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    by = cast(GroupBy, args.by)
    try:
        since, until = parse_period(args.since, args.until, datetime.now(UTC))
        domain = normalize_domain(args.domain.lstrip("@")) if args.domain else None
    except ValueError as exc:  # AddressError included
        print(f"bouncer stats: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        env = open_state_for(args, cfg, create=False)  # says where it looked
    except StateError as exc:
        print(f"bouncer stats: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        rows = read_stats(env, since, by, until, domain)
    finally:
        env.close()
    if args.format == "json":
        print(json.dumps(stats_document(rows, by, since, until, domain), indent=2))
    elif args.format == "csv":
        sys.stdout.write(stats_csv(rows, by))
    else:
        where = f", domain {domain}" if domain else ""
        print(f"{since.isoformat()} to {until.isoformat()} (UTC days{where})")
        print(render_table(rows, by))
    return EXIT_OK
