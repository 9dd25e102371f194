# Bulk operations on the suppression store: scan, count, CSV export and import, over the
# store's few storage primitives (the `Records` protocol); LMDB itself is the store's.
"""The admin side of `SuppressionStore` that walks or loads many records.

`SuppressionStore` (policy/suppression/store.py, the one module of policy/ that
imports lmdb) composes a `SuppressionBulk` over itself: this module holds what
the operations mean, the store how records are read and written. Long scans read
in short batches, a read transaction per batch, so an export of a million records
never pins old pages while the relay writes; imports write a batch of rows per
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TextIO

from policy.address import domain_of, normalize_address, normalize_domain
from policy.suppression import escalate as esc
from policy.suppression.csvfile import ImportProblem, ImportRow, read_csv, write_csv
from policy.suppression.encoding import CODE_STATE, decode, peek
from policy.suppression.escalate import RuleError, SuppressionRules
from policy.suppression.records import Scope, State, SuppressionRecord
from policy.verdict import Category

IMPORT_BATCH = 1000  # rows per write txn on import


class StoreError(Exception):
    """The store cannot do this now (map full, read-only directory, ...): answer 451 4.3.0."""


@dataclass(frozen=True)
class ImportResult:
    added: int
    skipped: int
    problems: tuple[str, ...]


def select(
    records: Iterable[SuppressionRecord],
    domain: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[SuppressionRecord]:
    """Records of `domain` (its own record and its addresses'; normalised A-labels) whose
    suppression began in [since, until): `list --domain/--since/--until` and the API's."""
    for r in records:
        if domain is not None and domain_of(r.key) != domain:
            continue
        if since is not None and (r.since is None or r.since < since):
            continue
        if until is not None and (r.since is None or r.since >= until):
            continue
        yield r


def decode_or_fail(key: str, raw: bytes) -> SuppressionRecord:
    try:
        return decode(raw)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(f"unreadable suppression record {key!r}: {exc}") from exc


Rule = Callable[[int, SuppressionRecord | None], SuppressionRecord | None]


class Records(Protocol):
    """The storage primitives bulk operations need; `SuppressionStore` provides them.

    Every storage failure raises `StoreError`.
    """

    @property
    def rules(self) -> SuppressionRules: ...

    def raw_values(self, scope: Scope, last: bytes | None = None) -> Iterator[bytes]:
        """Every stored value of `scope` in key order (after key `last`), read in batches."""
        ...

    def total(self) -> int:
        """How many records there are, domains and addresses."""
        ...

    def update_many(self, keys: Sequence[tuple[Scope, str]], rule: Rule) -> None:
        """In one write transaction: for each (scope, key) at index i, read the record,
        and write back `rule(i, old)` unless it returns None."""
        ...


class SuppressionBulk:
    """Scan, count, export and import over a store's `Records` primitives."""

    def __init__(self, records: Records) -> None:
        self.records = records

    def scan(
        self,
        now: datetime,
        states: Iterable[State] | None = None,
        category: Category | None = None,
        after: str | None = None,
    ) -> Iterator[SuppressionRecord]:
        """Records (domains first, then addresses, in key order) as of `now`, filtered.

        `states=None` means the refusing ones: suppressed, permanent, blocked. `after`
        (a key as `list` prints it: "@domain" or an address) starts after that record,
        for paging: one cursor seek, not a walk from the start.
        """
        now = esc.utc(now)
        wanted = frozenset(states) if states is not None else esc.REFUSING_STATES
        dom, addr = Scope.DOMAIN, Scope.ADDRESS
        starts: list[tuple[Scope, bytes | None]] = [(dom, None), (addr, None)]
        if after is not None:
            mark = after.strip()
            if mark.startswith("@") or "@" not in mark:
                start = normalize_domain(mark.lstrip("@")).encode()
                starts = [(dom, start), (addr, None)]
            else:
                starts = [(addr, normalize_address(mark).encode())]
        rules = self.records.rules
        for scope, last in starts:
            for raw in self.records.raw_values(scope, last):
                rec = esc.effective(decode_or_fail("?", raw), rules, now)
                if rec.state in wanted and (
                    category is None
                    or rec.cause == category
                    or (rec.cause is None and rec.category == category)
                ):
                    yield rec

    def count(self, now: datetime | None = None) -> dict[str, int]:
        """Records per state as of `now` (header-only scan), plus "total"; no `now`: total only."""
        counts = {"total": self.records.total()}
        if now is None:
            return counts
        now_ts = esc.utc(now).timestamp()
        counts.update({s.value: 0 for s in State})
        for scope in (Scope.DOMAIN, Scope.ADDRESS):
            for raw in self.records.raw_values(scope):
                code, _since, until, _reason, _tail = peek(raw)
                state = CODE_STATE[code] if esc.refuses(code, until, now_ts) else State.ACTIVE
                counts[state.value] += 1
        return counts

    def export_csv(
        self,
        out: TextIO,
        now: datetime,
        states: Iterable[State] | None = None,
        unicode: bool = False,
    ) -> int:
        """Write the refusing records (or `states`) as CSV to `out`; returns the row count.
        `unicode`: IDN domains as U-labels (bücher.example), for people; else A-labels."""
        return write_csv(self.scan(now, states), out, unicode)

    def import_csv(self, lines: Iterable[str], now: datetime, why: str = "import") -> ImportResult:
        """Add every row of a CSV (our export format, or one address per line)."""
        job = self.import_job(lines, now, why)
        while job.step():
            pass
        return job.result()

    def import_job(
        self, lines: Iterable[str], now: datetime, why: str = "import", batch: int = IMPORT_BATCH
    ) -> ImportJob:
        """An import done a batch of rows per `step()`, one write transaction each; a caller
        with one writer thread runs each step as its own job, so other writes go between."""
        return ImportJob(self, lines, esc.utc(now), why, batch)

    def import_batch(self, rows: list[ImportRow], now: datetime, why: str) -> tuple[int, list[str]]:
        """Write `rows` in one transaction; returns (added, problems)."""
        added, problems = 0, []
        rules = self.records.rules

        def rule(i: int, old: SuppressionRecord | None) -> SuppressionRecord | None:
            nonlocal added
            row = rows[i]
            try:
                new = _import_rule(old, row, why, rules, now)
            except RuleError as exc:
                problems.append(f"line {row.line}: {exc}")
                return None
            added += 1
            return new

        self.records.update_many([(row.scope, row.key) for row in rows], rule)
        return added, problems


class ImportJob:
    """A CSV import in steps: each `step()` reads up to `batch` good rows and writes them in
    one transaction. Not thread-safe: call its steps one after another (the writer thread)."""

    def __init__(
        self, store: SuppressionBulk, lines: Iterable[str], now: datetime, why: str, batch: int
    ) -> None:
        self._store = store
        self._rows = read_csv(lines, now)
        self._now = now
        self._why = why
        self._batch = batch
        self.added = 0
        self.problems: list[str] = []

    def step(self) -> bool:
        """Import the next batch; False once the input is used up (nothing left to do)."""
        rows: list[ImportRow] = []
        for item in self._rows:
            if isinstance(item, ImportProblem):
                self.problems.append(f"line {item.line}: {item.problem}")
                continue
            rows.append(item)
            if len(rows) >= self._batch:
                break
        if not rows:
            return False
        added, problems = self._store.import_batch(rows, self._now, self._why)
        self.added += added
        self.problems.extend(problems)
        return True

    def result(self) -> ImportResult:
        return ImportResult(self.added, len(self.problems), tuple(self.problems))


def _import_rule(
    old: SuppressionRecord | None, row: ImportRow, why: str, rules: SuppressionRules, now: datetime
) -> SuppressionRecord:
    if row.state is State.BLOCKED:
        return esc.apply_complaint(old, row.key, row.why or why, rules, now)
    return esc.apply_add(
        old, row.key, row.scope, row.category, row.until, row.why or why, rules, now
    )
