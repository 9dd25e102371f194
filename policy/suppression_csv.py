# The suppression list as CSV for people and other tools: rows in, rows out. Decides nothing.
"""CSV export and import of suppression records.

Export writes one row per record with a header (`EXPORT_FIELDS`). Import reads
that same format back, or a bare list with one address (or domain) per line and
optional `category` and `until` columns, and turns each row into an
`ImportRow` or an `ImportProblem` naming the line; the store applies the rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from policy.address import (
    AddressError,
    is_valid_address,
    is_valid_domain,
    normalize_address,
    normalize_domain,
)
from policy.records import Scope, State, SuppressionRecord
from policy.verdict import Category

EXPORT_FIELDS = (
    "address",
    "scope",
    "state",
    "category",
    "since",
    "until",
    "reason",
    "hard",
    "synthesized",
    "soft",
    "first_seen",
    "last_seen",
    "last_reply",
)
DEFAULT_CATEGORY = Category.BAD_MAILBOX  # a bare address list is a list of dead mailboxes


def iso(when: datetime | None) -> str:
    """UTC, second precision, "Z": what spreadsheets and `date -d` read."""
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_when(text: str) -> datetime:
    """ "2027-01-30" (midnight UTC) or an ISO 8601 date-time; naive means UTC."""
    t = text.strip()
    try:
        when = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # OverflowError: 9999-12-31T23:00-05:00
        raise ValueError(f"not a date: {text!r} (use e.g. 2027-01-30)") from exc


# OWASP "CSV injection": a cell starting with one of these is a formula to a spreadsheet.
# Addresses may start with "=" or "-" (RFC 5322 atext) and reasons quote remote servers.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def record_row(rec: SuppressionRecord) -> list[str]:
    """One export row; cells a spreadsheet would run as formulas get a leading "'"."""
    category = rec.cause or rec.category
    return [
        _cell(c)
        for c in [
            rec.key,
            rec.scope.value,
            rec.state.value,
            category.value if category else "",
            iso(rec.since),
            iso(rec.until),
            rec.reason,
            str(rec.hard),
            str(rec.synthesized),
            str(rec.soft),
            iso(rec.first_seen),
            iso(rec.last_seen),
            rec.last_reply.line() if rec.last_reply else "",
        ]
    ]


def write_csv(records: Iterable[SuppressionRecord], out: TextIO) -> int:
    """Header plus one row per record; returns the number of records written."""
    w = csv.writer(out)
    w.writerow(EXPORT_FIELDS)
    n = 0
    for rec in records:
        w.writerow(record_row(rec))
        n += 1
    return n


_NOT_UTF8 = re.compile("[\ud800-\udfff]")  # lone surrogates: surrogateescape'd bytes


@dataclass(frozen=True)
class ImportRow:
    key: str  # normalised address or A-label domain
    scope: Scope
    state: State  # SUPPRESSED (with until), PERMANENT or BLOCKED
    category: Category
    until: datetime | None
    why: str
    line: int


@dataclass(frozen=True)
class ImportProblem:
    line: int
    problem: str


def _row(cells: dict[str, str], line: int, now: datetime) -> ImportRow | ImportProblem:
    raw_key = cells.get("address", "").strip()
    try:
        if "@" in raw_key:
            key, scope = normalize_address(raw_key), Scope.ADDRESS
            if not is_valid_address(key):
                return ImportProblem(line, f"not a valid address: {raw_key!r}")
        else:
            key, scope = normalize_domain(raw_key), Scope.DOMAIN
            if "." not in key or not is_valid_domain(key):  # a bare word is a typo, not a TLD
                return ImportProblem(line, f"not an address or domain: {raw_key!r}")
    except AddressError as exc:
        return ImportProblem(line, str(exc))
    try:
        category = Category(cells.get("category", "").strip() or DEFAULT_CATEGORY)
    except ValueError:
        return ImportProblem(line, f"unknown category {cells.get('category')!r}")
    try:
        until = parse_when(cells["until"]) if cells.get("until", "").strip() else None
    except ValueError:
        return ImportProblem(line, f"until is not a date: {cells.get('until')!r}")
    state_text = cells.get("state", "").strip().lower()
    if state_text == State.ACTIVE.value:
        return ImportProblem(line, "state active: nothing to suppress")
    if state_text == State.PERMANENT.value:
        until = None
    if until is not None and until <= now:
        return ImportProblem(line, f"until {iso(until)} has passed")
    state = State.BLOCKED if state_text == State.BLOCKED.value else State.PERMANENT
    if until is not None:
        state = State.SUPPRESSED
    why = cells.get("reason", "").strip()
    if why.startswith(f"{category}: "):
        why = why[len(category) + 2 :]  # our own export repeats the category in the reason
    return ImportRow(key, scope, state, category, until, why, line)


def read_csv(lines: Iterable[str], now: datetime) -> Iterator[ImportRow | ImportProblem]:
    """Rows of an export (header naming `address`), or of a bare address[,category[,until]] list.

    Blank lines and lines starting with "#" are skipped. A line the csv module cannot read
    (a field over its size limit) or holding bytes that were not UTF-8 (read with
    errors="surrogateescape") is a problem naming the line, and reading goes on.
    """
    columns: list[str] | None = None
    reader = csv.reader(lines)
    n = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            n += 1
            yield ImportProblem(n, f"not CSV: {exc}")
            continue
        n += 1
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        if any(_NOT_UTF8.search(c) for c in cells):
            yield ImportProblem(n, "not UTF-8")
            continue
        if columns is None:
            lowered = [c.strip().lower() for c in cells]
            if "address" in lowered:
                columns = lowered
                continue
            columns = ["address", "category", "until"]
        yield _row(dict(zip(columns, map(_uncell, cells), strict=False)), n, now)
