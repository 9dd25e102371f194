# The suppression list as CSV for people and other tools: rows in, rows out. Decides nothing.
"""CSV export and import of suppression records.

Export writes one row per record with a header (`EXPORT_FIELDS`). Import reads
that same format back, or a bare list with one address (or domain) per line and
optional `category` and `until` columns, and turns each row into an
`ImportRow` or an `ImportProblem` naming the line; the store applies the rows.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import idna

from policy.address import (
    AddressError,
    is_valid_address,
    is_valid_domain,
    normalize_address,
    normalize_domain,
)
from policy.suppression.records import Scope, State, SuppressionRecord
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


def unicode_key(key: str) -> str:
    """A stored key (A-labels) with its domain as U-labels, for people: bücher.example."""
    local, at, domain = key.rpartition("@")
    if "xn--" not in domain:
        return key
    try:
        return local + at + idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return key  # not decodable: the A-label form is still right


def record_row(rec: SuppressionRecord, unicode: bool = False) -> list[str]:
    """One export row; cells a spreadsheet would run as formulas get a leading "'".
    `unicode`: the key's IDN domain as U-labels (import reads either form back)."""
    category = rec.cause or rec.category
    return [
        _cell(c)
        for c in [
            unicode_key(rec.key) if unicode else rec.key,
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


def write_csv(records: Iterable[SuppressionRecord], out: TextIO, unicode: bool = False) -> int:
    """Header plus one row per record; returns the number of records written."""
    w = csv.writer(out)
    w.writerow(EXPORT_FIELDS)
    n = 0
    for rec in records:
        w.writerow(record_row(rec, unicode))
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
    key: str
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


# Header names of the email column in the exports of mail tools, CRMs and spreadsheets
# (compared lower-case, spaces, "_" and "-" kept as written).
EMAIL_HEADERS = frozenset(
    {
        "address",
        "email",
        "e-mail",
        "e_mail",
        "email address",
        "e-mail address",
        "email_address",
        "emailaddress",
        "mail",
        "courriel",
        "adresse",
        "adresse email",
        "adresse e-mail",
        "adresse mail",
        "adresse courriel",
        "correo",
        "correo electrónico",
        "e-mail-adresse",
        "mailadresse",
        "recipient",
    }
)
_OUR_COLUMNS = frozenset({"category", "until", "state", "reason"})  # read from a header too
_DELIMITERS = (",", ";", "\t")  # Excel writes ";" where "," is the decimal mark
_BARE_COLUMNS = ["address", "category", "until"]


def sniff_delimiter(line: str) -> str:
    """The delimiter the first line uses most (",", ";" or tab); "," when it has none."""
    best = max(_DELIMITERS, key=line.count)
    return best if line.count(best) else ","


def _header(cells: list[str]) -> list[str] | None:
    """Column names if `cells` is a header naming an email column, else None; columns
    that are neither the email column nor ours are named "" (ignored)."""
    names = [c.strip().strip('"').lower() for c in cells]
    email = next((i for i, c in enumerate(names) if c in EMAIL_HEADERS), None)
    if email is None:
        return None
    return [
        "address" if i == email else c if c in _OUR_COLUMNS else "" for i, c in enumerate(names)
    ]


def read_csv(lines: Iterable[str], now: datetime) -> Iterator[ImportRow | ImportProblem]:
    """Rows of an export or a spreadsheet (a header naming the email column: `email`,
    `e-mail`, `address`, `courriel`...; other columns ignored), or of a bare
    address[,category[,until]] list. A UTF-8 BOM is dropped and the delimiter (",", ";"
    or tab) is taken from the first line; a headerless line of more than three columns
    is read for its address only (a contact list, not our format).

    Blank lines and lines starting with "#" are skipped. A line the csv module cannot read
    (a field over its size limit) or holding bytes that were not UTF-8 (read with
    errors="surrogateescape") is a problem naming the line, and reading goes on.
    """
    it = iter(lines)
    seen: list[str] = []
    for line in it:
        line = line.removeprefix("\ufeff") if not seen else line
        seen.append(line)
        if line.strip() and not line.lstrip().startswith("#"):
            break
    delimiter = sniff_delimiter(seen[-1]) if seen else ","
    columns: list[str] | None = None
    reader = csv.reader(itertools.chain(seen, it), delimiter=delimiter)
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
            columns = _header(cells)
            if columns is not None:
                continue
            if not any("@" in c or "." in c for c in cells):
                names = ", ".join(sorted(EMAIL_HEADERS)[:6])
                yield ImportProblem(n, f"a header without an email column ({names}...)")
                return
            columns = _BARE_COLUMNS
        if columns is _BARE_COLUMNS and len(cells) > len(_BARE_COLUMNS):
            cells = cells[:1]
        yield _row(dict(zip(columns, map(_uncell, cells), strict=False)), n, now)
