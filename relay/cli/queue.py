# `bouncer queue ...`: the operator's view of the retry queue. It parses arguments, calls
# the Spool (the same code the server uses) and prints; it decides nothing. It works
# beside a running server: LMDB lets this process write while the server runs, and the
# server's scheduler sees a `retry` at its next poll.
"""bouncer queue: list | show ID [--content] | summary | retry | hold | release | drop.

Messages are named by IDs (`-` reads them from stdin), `--domain DOMAIN` (only that
domain's recipients) or `--all`; `list` and `summary` filter by domain, sender and age.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    config_or_exit,
    open_state_for,
)
from relay.observe import oplog
from relay.queue.queue import QueuedMessage, Spool, spool_from_config, utcnow
from relay.queue.view import (
    QueueFilter,
    domain_filter,
    message_json,
    parse_age,
    render_summary,
    summarize,
    summary_json,
)
from relay.queue.view import (
    iso_seconds as _iso,
)
from relay.store.env import StateError

log = logging.getLogger("bouncer.queue")


def register(subparsers: Any) -> None:
    queue = subparsers.add_parser(
        "queue", help="the retry queue: list, show, summary, retry, hold, release, drop"
    )
    sub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="queued messages and recipients (like mailq)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    _add_filters(p)
    p.set_defaults(handler=_list)
    p = sub.add_parser("show", help="one message: envelope, recipients, every attempt")
    p.add_argument("id", metavar="ID", type=queue_id)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--content", action="store_true", help="print the message itself (like postcat -q)"
    )
    p.set_defaults(handler=_show)
    p = sub.add_parser("summary", help="recipients by domain and age in minutes (like qshape)")
    p.add_argument("--json", action="store_true")
    _add_filters(p)
    p.set_defaults(handler=_summary)
    p = sub.add_parser("retry", help="make messages due now; a running server picks them up")
    _add_targets(p)
    p.set_defaults(handler=_retry)
    p = sub.add_parser("hold", help="keep messages in the queue without retrying (postsuper -h)")
    _add_targets(p)
    p.set_defaults(handler=_hold)
    p = sub.add_parser("release", help="release held messages: due now (postsuper -H)")
    _add_targets(p)
    p.set_defaults(handler=_release)
    p = sub.add_parser("drop", help="remove messages from the queue (logged)")
    _add_targets(p)
    p.add_argument("--why", required=True, metavar="TEXT", help="reason, logged and in the DSN")
    p.add_argument("--dsn", action="store_true", help="tell the sender with a failure DSN")
    p.set_defaults(handler=_drop)
    for parser in sub.choices.values():
        add_config_option(parser)


def _domain_arg(text: str) -> str:
    try:
        return domain_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _age_arg(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", type=_domain_arg, help="only recipients at this domain")
    p.add_argument("--sender", metavar="ADDRESS", help="only messages from this sender")
    p.add_argument("--older-than", type=_age_arg, metavar="AGE", help="e.g. 30m, 2h, 3d")


def _add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        type=_id_or_stdin,
        help="queue IDs; '-' reads them from stdin",
    )
    p.add_argument("--domain", type=_domain_arg, help="only recipients at this domain")
    p.add_argument("--all", action="store_true", help="every queued message")


def _id_or_stdin(text: str) -> str:
    return text if text == "-" else queue_id(text)


def queue_id(text: str) -> str:
    """An ID as `queue list` prints it; anything else (empty, a path) is a usage error."""
    if not re.fullmatch(r"[A-Za-z0-9]{1,64}", text):
        raise argparse.ArgumentTypeError(f"not a queue ID: {text!r}")
    return text


@contextmanager
def _open(args: argparse.Namespace) -> Iterator[Spool]:
    cfg = config_or_exit(args)
    env = open_state_for(args, cfg, create=False)  # no state directory: no queue
    try:
        yield spool_from_config(env, cfg)
    finally:
        env.close()


def _print_message(m: QueuedMessage, detail: bool) -> None:
    """mailq's layout: id, size, arrival, sender; then each recipient with its last reply."""
    flag = " (DSN for " + m.origin + ")" if m.kind == "dsn" else ""
    print(f"{m.queue_id:<14}{m.size:>9} {_iso(m.arrived)}  <{m.sender}>{flag}")
    for r in m.recipients:
        state = "in flight" if r.leased_by else f"next {_iso(r.next_at)}"
        state = "on hold" + (", in flight" if r.leased_by else "") if r.held else state
        print(f"    <{r.recipient}>  tries={r.tries}  {state}")
        attempts = r.attempts if detail else r.attempts[-1:]
        for a in attempts:
            where = f" at {a.relay}" if a.relay != "none" else ""
            print(f"      {_iso(a.when)} {a.stage}{where}: {a.reply.line()}")


def _filter(args: argparse.Namespace) -> QueueFilter:
    return QueueFilter(args.domain, args.sender, args.older_than)


def _list(args: argparse.Namespace) -> int:
    try:
        with _open(args) as spool:
            messages = _filter(args).select(spool.messages(), utcnow())
            quarantined = spool.quarantine.count()
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if quarantined:
        print(
            f"bouncer: queue: {quarantined} undecodable record(s) in quarantine; "
            "`bouncer store check` lists them",
            file=sys.stderr,
        )
    if args.json:
        for m in messages:
            print(json.dumps(message_json(m)))
        return EXIT_OK
    if not messages:
        print("Mail queue is empty")
        return EXIT_OK
    print(f"{'Queue ID':<14}{'Size':>9} {'Arrival':<25} Sender/Recipient")
    for m in messages:
        _print_message(m, detail=False)
    n_rcpt = sum(len(m.recipients) for m in messages)
    print(f"-- {len(messages)} message(s), {n_rcpt} recipient(s)")
    return EXIT_OK


def _summary(args: argparse.Namespace) -> int:
    now = utcnow()
    try:
        with _open(args) as spool:
            summary = summarize(_filter(args).select(spool.messages(), now), now)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary_json(summary)) if args.json else render_summary(summary))
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    try:
        with _open(args) as spool:
            m = spool.get(args.id)
            data = spool.data(args.id) if args.content else None
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if m is None:
        print(f"bouncer: queue: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.content:
        # postcat -q: the envelope as a header block, then the message bytes unchanged.
        rcpts = " ".join(f"<{r.recipient}>" for r in m.recipients)
        head = f"*** ENVELOPE {m.queue_id} ***\nsender: <{m.sender}>\nrecipients: {rcpts}\n"
        sys.stdout.write(head + f"arrival: {_iso(m.arrived)}\n*** MESSAGE CONTENTS ***\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(data or b"")
        sys.stdout.buffer.flush()
        return EXIT_OK
    if args.json:
        print(json.dumps(message_json(m), indent=2))
    else:
        _print_message(m, detail=True)
    return EXIT_OK


USAGE_TARGETS = "say which messages: IDs, '-' to read IDs from stdin, --domain DOMAIN, or --all"


def _targets(args: argparse.Namespace, verb: str) -> list[str] | None | int:
    """The IDs named (stdin read for '-'), None for every message, or an exit code."""
    if args.all and args.ids:
        print(f"bouncer: queue {verb}: give IDs or --all, not both", file=sys.stderr)
        return EXIT_USAGE
    if not (args.all or args.ids or args.domain):
        print(f"bouncer: queue {verb}: {USAGE_TARGETS}", file=sys.stderr)
        return EXIT_USAGE
    if not args.ids:
        return None
    ids: list[str] = []
    for given in args.ids:
        for q in sys.stdin.read().split() if given == "-" else [given]:
            try:
                ids.append(queue_id(q))
            except argparse.ArgumentTypeError as exc:
                print(f"bouncer: queue {verb}: {exc}", file=sys.stderr)
                return EXIT_USAGE
    if not ids:
        print(f"bouncer: queue {verb}: no IDs on stdin", file=sys.stderr)
        return EXIT_USAGE
    return ids


def _change(args: argparse.Namespace, verb: str, done: str) -> int:
    """retry, hold or release: the same targets, one Spool call."""
    targets = _targets(args, verb)
    if isinstance(targets, int):
        return targets
    now = utcnow()
    try:
        with _open(args) as spool:
            missing = [q for q in targets or () if spool.get(q) is None]
            if verb == "retry":
                n = spool.retry_now(targets, now, args.domain)
            elif verb == "hold":
                n = spool.hold(targets, args.domain)
            else:
                n = spool.release(targets, now, args.domain)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for q in missing:
        print(f"bouncer: queue: no message {q}", file=sys.stderr)
    if verb != "retry" and n:
        # The operator's record in the mail log, as for drop (relay/observe/oplog.py).
        what = "placed on hold" if verb == "hold" else "released from hold"
        facts = [("recipients", str(n))] + ([("domain", args.domain)] if args.domain else [])
        subjects = list(targets) if targets else ["ALL"]
        events = [oplog.action(oplog.QUEUE, q, what, "", facts) for q in subjects]
        oplog.record(config_or_exit(args).log, events)
    print(f"{n} recipient(s) {done}")
    return EXIT_FAILED if missing else EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    return _change(args, "retry", "due now")


def _hold(args: argparse.Namespace) -> int:
    return _change(args, "hold", "on hold")


def _release(args: argparse.Namespace) -> int:
    return _change(args, "release", "released, due now")


def _drop(args: argparse.Namespace) -> int:
    targets = _targets(args, "drop")
    if isinstance(targets, int):
        return targets
    code = EXIT_OK
    dropped = []
    try:
        with _open(args) as spool:
            ids = targets if targets is not None else [m.queue_id for m in spool.messages()]
            for qid in ids:
                m = spool.drop(qid, args.why, args.dsn, utcnow(), args.domain)
                if m is None:
                    if targets is not None:
                        print(f"bouncer: queue: no message {qid}", file=sys.stderr)
                        code = EXIT_FAILED
                    continue
                rcpts = ", ".join(f"<{r.recipient}>" for r in m.recipients)
                facts = [("from", f"<{m.sender}>"), ("to", rcpts), ("dsn", str(args.dsn).lower())]
                dropped.append(oplog.action(oplog.QUEUE, qid, "removed", args.why, facts))
                dsn = " with a DSN to the sender" if args.dsn else ""
                print(f"{qid}: dropped ({len(m.recipients)} recipient(s)){dsn}", flush=True)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        # The operator's record in the mail log: which message, who, why (relay/observe/oplog.py).
        oplog.record(config_or_exit(args).log, dropped)
    return code
