# This module selects and summarises queued messages for people (CLI and API); it reads
# records it is given and performs no I/O, so both edges show the same thing.
"""Queue filters (`--domain`, `--sender`, `--older-than`) and the qshape-like summary.

A domain filter keeps only that domain's recipients of each message; sender and age
filters keep or drop whole messages. The summary counts recipients per domain by
the age of their message, in Postfix qshape's doubling buckets (minutes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from policy.address import AddressError, normalize_domain
from relay.queue.queue import QueuedMessage, QueuedRecipient, rcpt_domain

# qshape's default buckets: T(otal), then messages younger than 5, 10, 20 ... 1280 minutes,
# and a last column for older ones.
BUCKETS: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
_AGE = re.compile(r"([0-9]{1,7})([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def iso_seconds(when: datetime | None) -> str | None:
    """A time as the queue tools print it: ISO 8601, second precision."""
    return None if when is None else when.isoformat(timespec="seconds")


def parse_age(text: str) -> timedelta:
    """ "30m", "2h", "3d", "1w" -> a timedelta; ValueError with a message for a person."""
    m = _AGE.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"not an age: {text!r} (use e.g. 30m, 2h, 3d)")
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def domain_filter(text: str) -> str:
    """A `--domain` value as recipients are matched: lower-case A-labels, no "@"."""
    try:
        return normalize_domain(text.strip().lstrip("@"))
    except AddressError as exc:
        raise ValueError(str(exc)) from exc


def rcpt_json(r: QueuedRecipient) -> dict[str, Any]:
    return {
        "recipient": r.recipient,
        "next_attempt": iso_seconds(r.next_at),
        "first_failure": iso_seconds(r.first_failure),
        "tries": r.tries,
        "in_flight": bool(r.leased_by),
        "held": r.held,
        "last_reply": None if r.last_reply is None else r.last_reply.line(),
        "attempts": [
            {
                "when": iso_seconds(a.when),
                "reply": a.reply.line(),
                "host": a.reply.host,
                "relay": a.relay,
                "stage": a.stage,
            }
            for a in r.attempts
        ],
    }


def message_json(m: QueuedMessage) -> dict[str, Any]:
    """One message as `queue list --json` and GET /queue show it."""
    return {
        "queue_id": m.queue_id,
        "sender": m.sender,
        "arrived": iso_seconds(m.arrived),
        "size": m.size,
        "kind": m.kind,
        "origin": m.origin or None,
        "options": list(m.options),
        "recipients": [rcpt_json(r) for r in m.recipients],
    }


@dataclass(frozen=True)
class QueueFilter:
    domain: str | None = None  # normalised (domain_filter)
    sender: str | None = None  # matched case-insensitively; "<>" or "" is the null sender
    older_than: timedelta | None = None

    def select(self, messages: Iterable[QueuedMessage], now: datetime) -> list[QueuedMessage]:
        """The messages that match, each with only the recipients that match."""
        out: list[QueuedMessage] = []
        sender = None if self.sender is None else self.sender.strip("<>").lower()
        for m in messages:
            if sender is not None and m.sender.lower() != sender:
                continue
            if self.older_than is not None and now - m.arrived < self.older_than:
                continue
            if self.domain is not None:
                rcpts = tuple(r for r in m.recipients if rcpt_domain(r.recipient) == self.domain)
                if not rcpts:
                    continue
                m = replace(m, recipients=rcpts)
            out.append(m)
        return out


@dataclass(frozen=True)
class Summary:
    """Recipients per domain and age bucket; `rows` busiest domain first."""

    head: tuple[str, ...]
    rows: tuple[tuple[str, tuple[int, ...]], ...]
    total: tuple[int, ...]


def summarize(messages: Sequence[QueuedMessage], now: datetime) -> Summary:
    """qshape: for each domain, the total and the count in each age bucket."""
    width = len(BUCKETS) + 2  # T, the buckets, and "older"
    counts: dict[str, list[int]] = {}
    for m in messages:
        minutes = (now - m.arrived).total_seconds() / 60
        col = 1 + next((i for i, b in enumerate(BUCKETS) if minutes < b), len(BUCKETS))
        for r in m.recipients:
            row = counts.setdefault(rcpt_domain(r.recipient), [0] * width)
            row[0] += 1
            row[col] += 1
    rows = tuple(
        (d, tuple(c)) for d, c in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    )
    total = tuple(sum(c[i] for _, c in rows) for i in range(width))
    head = ("T", *(str(b) for b in BUCKETS), f"{BUCKETS[-1]}+")
    return Summary(head, rows, total)


def render_summary(s: Summary) -> str:
    """qshape's layout: a header of bucket limits (minutes), a TOTAL row, one row per domain."""
    body = [("", *s.head), ("TOTAL", *map(str, s.total))]
    body += [(d, *map(str, c)) for d, c in s.rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in body
    )


def summary_json(s: Summary) -> dict[str, object]:
    """The API's shape of the same summary."""
    return {
        "buckets_minutes": list(BUCKETS),
        "columns": list(s.head),
        "total": list(s.total),
        "domains": [{"domain": d, "counts": list(c)} for d, c in s.rows],
    }
