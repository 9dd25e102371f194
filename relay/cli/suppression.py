# `bouncer suppression ...`: the operator's edge of the store. Strings in, strings out.
"""The suppression list from the command line.

Every subcommand opens the same LMDB state directory as the server (LMDB is
safe for several processes: the CLI works while `bouncer serve` runs) and
calls the store's admin methods, the same ones the HTTP API uses. Only here,
at the edge, is the clock read.
"""

from __future__ import annotations

import argparse
import collections
import io
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TextIO

from policy.address import AddressError, domain_of, normalize_domain
from policy.suppression.bulk import select
from policy.suppression.csvfile import iso, parse_when, write_csv
from policy.suppression.escalate import RuleError, activity_note
from policy.suppression.lookup import REFUSING_STATES as REFUSING
from policy.suppression.records import Scope, State, SuppressionRecord, as_dict
from policy.suppression.store import NotFound, StoreError, SuppressionStore
from policy.verdict import Category
from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    config_or_exit,
    open_state_for,
)
from relay.config.load import suppression_rules
from relay.observe import oplog
from relay.store.env import StateError

STATES = [s.value for s in State] + ["all"]


def _when(text: str) -> datetime:
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use 2027-01-30)") from exc


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


# Actions that may create the state directory; the others only read (or change a record
# that must already exist), and say where they looked instead of creating an empty store.
CREATES = frozenset({"add", "import"})


def open_store(args: argparse.Namespace) -> SuppressionStore:
    """The store in the configured state directory."""
    cfg = config_or_exit(args)
    env = open_state_for(args, cfg, create=args.action in CREATES)
    return SuppressionStore(env, suppression_rules(cfg.policy))


def _log_action(args: argparse.Namespace, key: str, what: str, why: str, **facts: str) -> None:
    """The operator's action as a line in the mail log (relay/observe/oplog.py)."""
    event = oplog.action(oplog.SUPPRESSION, key, what, why, facts.items())
    oplog.record(config_or_exit(args).log, [event])


def _states(text: str | None) -> list[State] | None:
    if text is None:
        return None  # the refusing ones
    return list(State) if text == "all" else [State(text)]


_TABLE_HEAD = ("ADDRESS", "STATE", "CATEGORY", "SINCE", "UNTIL", "HB/SYN/SB", "REASON")
_WIDTH_SAMPLE = 500  # column widths come from the first rows; then the table streams


def _row(r: SuppressionRecord) -> tuple[str, ...]:
    category = r.cause or r.category
    return (
        _key(r),
        r.state.value,
        category.value if category else "",
        iso(r.since)[:10],
        iso(r.until)[:10],
        f"{r.hard}/{r.synthesized}/{r.soft}",
        r.reason[:60],
    )


def _table(records: Iterable[SuppressionRecord], out: TextIO) -> int:
    """Aligned columns, streamed: a million records never sit in memory at once."""
    it = iter(records)
    head = [_TABLE_HEAD, *(_row(r) for r in itertools.islice(it, _WIDTH_SAMPLE))]
    widths = [max(len(row[i]) for row in head) for i in range(len(_TABLE_HEAD) - 1)]
    n = 0
    for row in itertools.chain(head, (_row(r) for r in it)):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip(), file=out)
        n += 1
    return n - 1


def _selected(args: argparse.Namespace, store: SuppressionStore) -> Iterator[SuppressionRecord]:
    """`list`'s records: state and category from the store's scan (paged from `--after`),
    then `--domain` and the `--since`/`--until` range of the suppression's start."""
    category = Category(args.category) if args.category else None
    records = store.scan(datetime.now(UTC), _states(args.state), category, args.after)
    domain = normalize_domain(args.domain.lstrip("@")) if args.domain else None
    return select(records, domain, args.since, args.until)


def _list(args: argparse.Namespace) -> int:
    store = open_store(args)
    shown: list[str] = []

    def paged(records: Iterable[SuppressionRecord]) -> Iterator[SuppressionRecord]:
        for r in itertools.islice(records, args.limit):
            shown.append(_key(r))
            yield r

    records = paged(_selected(args, store))
    if args.format == "csv":
        write_csv(records, sys.stdout)
    elif args.format == "json":
        for r in records:  # JSON lines: a list of a million records streams
            print(json.dumps(as_dict(r), ensure_ascii=False))
    else:
        _table(records, sys.stdout)
    if args.limit is not None and len(shown) == args.limit:
        print(f"bouncer: more may follow: --after {shown[-1]}", file=sys.stderr)
    return EXIT_OK


def _key(r: SuppressionRecord) -> str:
    """The key as `list` prints it and every command takes it: "@domain" for a domain."""
    return r.key if r.scope.value == "address" else f"@{r.key}"


def _show(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = datetime.now(UTC)
    rec = store.get(args.address, now)
    via = _through_domain(store, args.address, rec, now)
    if via is not None:
        # The address's own record (if any) does not refuse; its domain's does (RCPT checks
        # the domain first): show that record, saying so.
        rec = via
    if rec is None:
        print(f"bouncer: no suppression record for {args.address}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        shown = as_dict(rec) | ({"refuses": args.address} if via is not None else {})
        print(json.dumps(shown, ensure_ascii=False, indent=2))
        return EXIT_OK
    if via is not None:
        print(f"{'refused:':12} {args.address}, through its domain's record @{via.key}:")
    d = as_dict(rec)
    for key in ("address", "scope", "state", "class", "category", "reason", "since", "until"):
        print(f"{key + ':':12} {d[key] if d[key] is not None else '-'}")
    c = d["counts"]
    print(
        f"{'counts:':12} hard {c['hard']}, synthesized {c['synthesized']}, soft {c['soft']}, "
        f"other {c['other']}, strikes {c['strikes']}, soft level {d['soft_level']}"
    )
    if d["streak"]:
        s = d["streak"]
        print(f"{'streak:':12} {s['category']} x{s['attempts']} from {s['first']} to {s['last']}")
    if d["last_reply"]:
        print(f"{'last reply:':12} {d['last_reply']['line']}")
    print(f"{'seen:':12} {d['first_seen']} .. {d['last_seen']}")
    print("history:")
    for e in d["history"]:
        print(f"  {e['when']}  {e['kind']:12} {e['detail']}")
    return EXIT_OK


def _through_domain(
    store: SuppressionStore, key: str, own: SuppressionRecord | None, now: datetime
) -> SuppressionRecord | None:
    """The domain record that refuses address `key` when its own record does not."""
    if "@" not in key.strip().lstrip("@") or (own is not None and own.state in REFUSING):
        return None
    refusal = store.check(key, now)
    if refusal is None or refusal.scope != Scope.DOMAIN.value:
        return None
    return store.get(domain_of(refusal.address), now)


def _add(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = datetime.now(UTC)
    before = store.get(args.address, now)
    rec = store.add(args.address, Category(args.category), now, args.until, args.why)
    until = iso(rec.until) if rec.until else "permanent"
    _log_action(args, rec.key, "added", args.why, category=args.category, until=until)
    what = f"{rec.state.value}" + (f" until {iso(rec.until)}" if rec.until else "")
    if before is None or before.state not in REFUSING:
        print(f"{_key(rec)}: added, {what} ({rec.reason})")
    elif _same(before, rec):
        print(f"{_key(rec)}: unchanged, already {what} ({rec.reason})")
    else:
        was = f"{before.state.value}" + (f" until {iso(before.until)}" if before.until else "")
        print(f"{_key(rec)}: updated, was {was} ({before.reason}), now {what} ({rec.reason})")
    return EXIT_OK


def _same(a: SuppressionRecord, b: SuppressionRecord) -> bool:
    """The same refusal: state, end, cause and reason (history and last_seen aside)."""
    return (a.state, a.until, a.cause, a.reason) == (b.state, b.until, b.cause, b.reason)


def _remove(args: argparse.Namespace) -> int:
    if args.force and not args.why.strip():
        print("bouncer: --force needs --why REASON (kept in the history)", file=sys.stderr)
        return EXIT_USAGE
    store = open_store(args)
    rec = store.remove(args.address, datetime.now(UTC), force=args.force, why=args.why)
    _log_action(args, rec.key, "lifted", args.why, state=rec.state.value)
    print(f"{rec.key}: {rec.history[-1].detail}; now {rec.state.value}")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        # surrogateescape: a byte that is not UTF-8 is refused on its line (read_csv), the
        # other lines still import.
        fh = (
            io.TextIOWrapper(sys.stdin.buffer, "utf-8-sig", "surrogateescape", newline="")
            if args.file == "-"
            else open(args.file, encoding="utf-8-sig", errors="surrogateescape", newline="")
        )
    except OSError as exc:
        print(f"bouncer: {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    with fh:
        result = store.import_csv(fh, datetime.now(UTC), why=args.why)
    added, skipped = str(result.added), str(result.skipped)
    _log_action(args, args.file, "imported", args.why, added=added, skipped=skipped)
    for problem in result.problems:
        print(f"bouncer: {args.file}: {problem}", file=sys.stderr)
    why = collections.Counter(_problem_kind(p) for p in result.problems)
    reasons = "".join(f"; {n} {kind}" for kind, n in why.most_common())
    print(f"imported {result.added}, skipped {result.skipped}{reasons}")
    return EXIT_OK if result.added or not result.skipped else EXIT_FAILED


def _problem_kind(problem: str) -> str:
    """ "line 3: not a valid address: 'x'" -> "not a valid address", to sum the report up."""
    text = problem.split(": ", 1)[1] if problem.startswith("line ") else problem
    return text.split(": ", 1)[0].split(" {", 1)[0].split(" (", 1)[0]


def _export(args: argparse.Namespace) -> int:
    store = open_store(args)
    n = store.export_csv(sys.stdout, datetime.now(UTC), _states(args.state), args.unicode)
    print(f"exported {n}", file=sys.stderr)
    return EXIT_OK


def _activity(args: argparse.Namespace) -> int:
    store = open_store(args)
    rec = store.activity(args.address, datetime.now(UTC))
    if rec is None:
        print(f"{args.address}: no record; nothing to reset")
    else:
        print(f"{rec.key}: activity recorded; now {rec.state.value}")
        note = activity_note(rec, datetime.now(UTC))
        if note:
            print(note)
    return EXIT_OK


def _storms(args: argparse.Namespace) -> int:
    """List the storm records per remote domain, or confirm / release one domain's."""
    store = open_store(args)
    now = datetime.now(UTC)
    if args.verb is None:
        groups = store.storms_list(now)
        if not groups:
            print("no storm records")
        for g in groups:
            print(
                f"{g.domain}: {len(g.addresses)} addresses suppressed 24 h as a storm, "
                f"{iso(g.first)} .. {iso(g.last)}"
            )
            if args.verbose:
                for a in g.addresses:
                    print(f"  {a}")
        return EXIT_OK
    if args.domain is None:
        print(f"bouncer: storms {args.verb} needs a DOMAIN", file=sys.stderr)
        return EXIT_USAGE
    confirm = args.verb == "confirm"
    n = store.storm_settle(args.domain, confirm, now, args.why)
    what = "confirmed (hard-bounce rules apply)" if confirm else "released (re-admitted)"
    _log_action(args, args.domain, f"storm {args.verb}", args.why, records=str(n))
    print(f"{normalize_domain(args.domain.lstrip('@'))}: {n} storm records {what}")
    return EXIT_OK


def _count(args: argparse.Namespace) -> int:
    counts = open_store(args).count(datetime.now(UTC))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return EXIT_OK


Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """Turn the store's exceptions into a message and an exit code, at this one boundary."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (NotFound, RuleError) as exc:
            print(f"bouncer: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except AddressError as exc:
            print(f"bouncer: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (StoreError, StateError) as exc:
            print(f"bouncer: store: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "suppression", help="list, show, add, remove, import and export suppressed addresses"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    categories = [c.value for c in Category if c is not Category.DELIVERED]

    p = sub.add_parser("list", help="suppressed addresses (default: those refusing now)")
    p.add_argument("--state", choices=STATES, help="only this state ('all' includes active)")
    p.add_argument("--category", choices=categories)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--domain", help="only this domain: its record and its addresses'")
    p.add_argument("--since", type=_when, metavar="DATE", help="suppressed on or after DATE")
    p.add_argument("--until", type=_when, metavar="DATE", help="suppressed before DATE")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N records (a page)")
    p.add_argument("--after", metavar="KEY", help="start after this record (the next page)")
    p.set_defaults(handler=_guarded(_list))

    p = sub.add_parser("show", help="one record with its history")
    p.add_argument("address", metavar="ADDRESS", help="an address, or a bare domain")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=_guarded(_show))

    p = sub.add_parser("add", help="suppress an address or domain by hand")
    p.add_argument("address", metavar="ADDRESS", help="an address, or a bare domain")
    p.add_argument(
        "--category", choices=categories, default=Category.OTHER.value, help="default: other"
    )
    p.add_argument("--until", type=_when, metavar="DATE", help="end date; default permanent")
    p.add_argument("--why", default="manual", help="reason, quoted in the refusal and the history")
    p.set_defaults(handler=_guarded(_add))

    p = sub.add_parser("remove", help="lift a suppression (permanent/blocked: --force --why)")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--force", action="store_true", help="lift a permanent or blocked record")
    p.add_argument("--why", default="", help="reason, kept in the history")
    p.set_defaults(handler=_guarded(_remove))

    p = sub.add_parser(
        "import", help="add every row of a CSV: our export, a spreadsheet with an email column"
    )
    p.add_argument("file", metavar="FILE", help="CSV file, '-' for stdin")
    p.add_argument("--why", default="import", help="reason for rows without one")
    p.set_defaults(handler=_guarded(_import))

    p = sub.add_parser("export", help="CSV of the suppressed addresses, for list cleaning")
    p.add_argument("--state", choices=STATES, help="only this state ('all' includes active)")
    p.add_argument("--unicode", action="store_true", help="IDN domains as U-labels (bücher.de)")
    p.set_defaults(handler=_guarded(_export))

    p = sub.add_parser("activity", help="the recipient opened, clicked or replied: reset")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(handler=_guarded(_activity))

    p = sub.add_parser(
        "storms", help="records a remote's storm of hard bounces suppressed for 24 h only"
    )
    p.add_argument("verb", nargs="?", choices=["confirm", "release"], help="act on DOMAIN's")
    p.add_argument("domain", nargs="?", metavar="DOMAIN")
    p.add_argument("--why", default="", help="reason, kept in the history")
    p.add_argument("-v", "--verbose", action="store_true", help="list the addresses too")
    p.set_defaults(handler=_guarded(_storms))

    p = sub.add_parser("count", help="records per state")
    p.set_defaults(handler=_guarded(_count))

    for action in sub.choices.values():
        add_config_option(action)
