# `bouncer store ...`: the postmaster's tools for a damaged state store. It parses
# arguments, calls relay/store/integrity.py, relay/store/repair.py and the queue's quarantine,
# and prints; it decides nothing itself.
"""bouncer store: check | repair

check   says whether data.mdb is whole (its size against LMDB's meta page), reads
        every record of every table, and lists the queue records in quarantine.
        Exit 0 all well, 1 unreadable or quarantined records, 4 the file is damaged.
repair  (bouncer stopped) copies every readable record into a new data.mdb and keeps
        the damaged one aside as data.mdb.damaged-<time>; then lists what was lost.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_FAILED, EXIT_OK, add_config_option, config_or_exit
from relay.queue.queue import spool_from_config
from relay.store.env import StateError, open_state
from relay.store.integrity import DATA_FILE, EXIT_DAMAGED, problem_of
from relay.store.repair import StoreBusy, TableReport, ensure_not_in_use, salvage, walk


def register(subparsers: Any) -> None:
    store = subparsers.add_parser("store", help="the state store: check, repair")
    sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    p = sub.add_parser("check", help="is the store whole? every record read; quarantine listed")
    p.set_defaults(handler=_check)
    p = sub.add_parser("repair", help="salvage readable records into a new store (bouncer stopped)")
    p.add_argument(
        "--force", action="store_true", help="rebuild even when the check finds nothing wrong"
    )
    p.set_defaults(handler=_repair)
    for parser in sub.choices.values():
        add_config_option(parser)


def _print_tables(tables: list[TableReport], verb: str) -> bool:
    """One line per table; True when every record was read."""
    whole = True
    for t in tables:
        line = f"  {t.name}: {t.records} record(s) {verb}"
        if t.skipped:
            line += f", {t.skipped} lost (read as zeros)"
        if t.error:
            line += f"; {t.error}"
        whole = whole and not t.error and not t.skipped
        print(line)
    return whole


def _print_quarantine(cfg: Any) -> int:
    """Open the queue (which quarantines what it cannot decode) and list the quarantine."""
    env = open_state(cfg.store.path, cfg.store.map_size)
    try:
        entries = spool_from_config(env, cfg).quarantine.entries()
    finally:
        env.close()
    for q in entries:
        when = datetime.fromtimestamp(q.when, UTC).isoformat(timespec="seconds")
        print(f"  quarantined {q.table} record {q.key!r} ({q.size} bytes) at {when}: {q.why}")
    return len(entries)


def _check(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    data = Path(cfg.store.path) / DATA_FILE
    problem = problem_of(cfg.store.path)
    if problem is not None:
        print(f"{data}: DAMAGED: {problem}")
        print("  restore the state directory from a backup, or run `bouncer store repair`")
        return EXIT_DAMAGED
    try:
        whole = _print_tables(walk(cfg.store.path, cfg.store.map_size), "read")
        quarantined = _print_quarantine(cfg)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not whole or quarantined:
        print(f"{data}: readable, with problems (above)")
        return EXIT_FAILED
    print(f"{data}: ok")
    return EXIT_OK


def _repair(args: argparse.Namespace) -> int:
    cfg = config_or_exit(args)
    base = Path(cfg.store.path)
    try:
        ensure_not_in_use(base)
    except StoreBusy as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if problem_of(base) is None and not args.force:
        if all(not t.error and not t.skipped for t in walk(base, cfg.store.map_size)):
            print(f"{base / DATA_FILE}: whole; nothing to repair (--force rebuilds anyway)")
            return EXIT_OK
    report = salvage(base, cfg.store.map_size)
    if report.problem:
        print(f"{base / DATA_FILE} was damaged: {report.problem}")
    whole = _print_tables(report.tables, "salvaged")
    if report.kept_aside is not None:
        print(f"  the damaged file is kept as {report.kept_aside}")
    try:
        quarantined = _print_quarantine(cfg)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{base / DATA_FILE}: rebuilt" + ("" if whole and not quarantined else "; see above"))
    return EXIT_OK
