# `bouncer queue ...`: the operator's view of the retry queue. It parses arguments, calls
# the Spool (the same code the server uses) and prints; it decides nothing. It works
# beside a running server: LMDB lets this process write while the server runs, and the
# server's scheduler sees a `retry` at its next poll.
"""bouncer queue: list [--json] | show ID | retry (--all | ID...) | drop ID... --why TEXT [--dsn]"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from relay import oplog
from relay.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    config_or_exit,
    open_state_for,
)
from relay.spool import QueuedMessage, QueuedRecipient, Spool, spool_from_config, utcnow
from relay.state import StateError

log = logging.getLogger("bouncer.queue")


def register(subparsers: Any) -> None:
    queue = subparsers.add_parser("queue", help="the retry queue: list, show, retry, drop")
    sub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="queued messages and recipients (like mailq)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(handler=_list)
    p = sub.add_parser("show", help="one message: envelope, recipients, every attempt")
    p.add_argument("id", metavar="ID", type=queue_id)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)
    p = sub.add_parser("retry", help="make messages due now; a running server picks them up")
    p.add_argument("ids", nargs="*", metavar="ID", type=queue_id)
    p.add_argument("--all", action="store_true", help="every queued message")
    p.set_defaults(handler=_retry)
    p = sub.add_parser("drop", help="remove messages from the queue (logged)")
    p.add_argument("ids", nargs="+", metavar="ID", type=queue_id)
    p.add_argument("--why", required=True, metavar="TEXT", help="reason, logged and in the DSN")
    p.add_argument("--dsn", action="store_true", help="tell the sender with a failure DSN")
    p.set_defaults(handler=_drop)
    for parser in sub.choices.values():
        add_config_option(parser)


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


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def _rcpt_json(r: QueuedRecipient) -> dict[str, Any]:
    return {
        "recipient": r.recipient,
        "next_attempt": _iso(r.next_at),
        "first_failure": _iso(r.first_failure),
        "tries": r.tries,
        "in_flight": bool(r.leased_by),
        "last_reply": None if r.last_reply is None else r.last_reply.line(),
        "attempts": [
            {
                "when": _iso(a.when),
                "reply": a.reply.line(),
                "host": a.reply.host,
                "relay": a.relay,
                "stage": a.stage,
            }
            for a in r.attempts
        ],
    }


def _message_json(m: QueuedMessage) -> dict[str, Any]:
    return {
        "queue_id": m.queue_id,
        "sender": m.sender,
        "arrived": _iso(m.arrived),
        "size": m.size,
        "kind": m.kind,
        "origin": m.origin or None,
        "options": list(m.options),
        "recipients": [_rcpt_json(r) for r in m.recipients],
    }


def _print_message(m: QueuedMessage, detail: bool) -> None:
    """mailq's layout: id, size, arrival, sender; then each recipient with its last reply."""
    flag = " (DSN for " + m.origin + ")" if m.kind == "dsn" else ""
    print(f"{m.queue_id:<14}{m.size:>9} {_iso(m.arrived)}  <{m.sender}>{flag}")
    for r in m.recipients:
        state = "in flight" if r.leased_by else f"next {_iso(r.next_at)}"
        print(f"    <{r.recipient}>  tries={r.tries}  {state}")
        attempts = r.attempts if detail else r.attempts[-1:]
        for a in attempts:
            where = f" at {a.relay}" if a.relay != "none" else ""
            print(f"      {_iso(a.when)} {a.stage}{where}: {a.reply.line()}")


def _list(args: argparse.Namespace) -> int:
    try:
        with _open(args) as spool:
            messages = spool.messages()
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        for m in messages:
            print(json.dumps(_message_json(m)))
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


def _show(args: argparse.Namespace) -> int:
    try:
        with _open(args) as spool:
            m = spool.get(args.id)
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if m is None:
        print(f"bouncer: queue: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_message_json(m), indent=2))
    else:
        _print_message(m, detail=True)
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.ids):
        print("bouncer: queue retry: give --all or some IDs, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _open(args) as spool:
            missing = [q for q in args.ids if spool.get(q) is None]
            n = spool.retry_now(None if args.all else args.ids, utcnow())
    except StateError as exc:
        print(f"bouncer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for q in missing:
        print(f"bouncer: queue: no message {q}", file=sys.stderr)
    print(f"{n} recipient(s) due now")
    return EXIT_FAILED if missing else EXIT_OK


def _drop(args: argparse.Namespace) -> int:
    code = EXIT_OK
    dropped = []
    try:
        with _open(args) as spool:
            for qid in args.ids:
                m = spool.drop(qid, args.why, args.dsn, utcnow())
                if m is None:
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
        # The operator's record in the mail log: which message, who, why (relay/oplog.py).
        oplog.record(config_or_exit(args).log, dropped)
    return code
