# The suppression store: the one piece of I/O in policy/, a small synchronous LMDB adapter.
"""SuppressionStore: look-ups on the relay's hot path, writes from its single writer thread.

The rules live in `policy.suppression.escalate`; this module only reads a record,
hands it to a rule with `now`, and writes back what the rule returns, inside
one LMDB transaction. Every LMDB failure (map full, read-only directory,
corrupt record) becomes `StoreError` here, so the relay answers `451 4.3.0`
and never crashes. Both the CLI and the HTTP API use the admin methods below
(scan/count/import/export are `policy.suppression.bulk`'s, composed over this
store's storage primitives): one implementation. This is the only module of
policy/ that imports lmdb.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TextIO

import lmdb

from policy.address import (
    AddressError,
    domain_of,
    is_valid_address,
    is_valid_domain,
    normalize_address,
)
from policy.address import normalize_domain as _normalize_domain
from policy.reply import Reply
from policy.suppression import escalate as esc
from policy.suppression.bulk import (
    IMPORT_BATCH,
    ImportJob,
    ImportResult,
    Rule,
    StoreError,
    SuppressionBulk,
    decode_or_fail,
)
from policy.suppression.encoding import HEADER, encode, split_state
from policy.suppression.escalate import ForceRequired, NotSuppressed, RuleError, SuppressionRules
from policy.suppression.records import Basis, Scope, State, SuppressionRecord, basis_of
from policy.suppression.storm import StormTracker, Trip
from policy.verdict import BounceClass, Category, Verdict

log = logging.getLogger("bouncer.suppression")

__all__ = [
    "ForceRequired",
    "ImportResult",
    "NotFound",
    "NotSuppressed",
    "Refusal",
    "RuleError",
    "StoreError",
    "SuppressionRules",
    "SuppressionStore",
]

ADDRESS_DB = b"suppression"
DOMAIN_DB = b"suppression_domains"
_HEAD_SIZE = HEADER.size
# Refusal.scope as plain strings: `Scope.X.value` is a Python-level enum property (~0.2 µs).
_ADDRESS, _DOMAIN = Scope.ADDRESS.value, Scope.DOMAIN.value


MAP_FULL = "suppression store full: raise [store] map_size in the config"
_SCAN_BATCH = 1000  # records per read txn when scanning
_MAX_KEY = 511  # bytes: LMDB's default key size limit (mdb_env_get_maxkeysize)


class NotFound(LookupError):
    """No record for this address or domain."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why bouncer refuses a recipient itself, and the synthesized reply to send."""

    address: str  # normalised
    scope: str  # "address" or "domain"
    reply: Reply
    reason: str


# check() builds a Refusal per refused RCPT; the frozen dataclass __init__ (an
# object.__setattr__ per field) costs twice what setting the slots directly does.
# Unpacking fails at import if Refusal's fields change, rather than leaving one unset.
_SET_ADDRESS, _SET_SCOPE, _SET_REPLY, _SET_REASON = (
    Refusal.__dict__[f.name].__set__ for f in fields(Refusal)
)


def _refusal(address: str, scope: str, reply: Reply, reason: str) -> Refusal:
    """`Refusal(address, scope, reply, reason)`, without the frozen dataclass's __init__."""
    r: Refusal = object.__new__(Refusal)
    _SET_ADDRESS(r, address)
    _SET_SCOPE(r, scope)
    _SET_REPLY(r, reply)
    _SET_REASON(r, reason)
    return r


class SuppressionStore:
    """Suppression records in two named DBs of the shared environment, keyed by UTF-8 key."""

    def __init__(self, env: lmdb.Environment, rules: SuppressionRules) -> None:
        self._env = env
        self._begin = env.begin  # a read txn; bound once, check() runs at every RCPT
        self.rules = rules
        self.storms = StormTracker(rules)  # this process's view of remotes answering hard
        self.storms_tripped = 0  # storms detected since start, for the metric
        try:
            readonly = bool(env.flags().get("readonly"))
            self._addr = env.open_db(ADDRESS_DB, create=not readonly)
            self._dom = env.open_db(DOMAIN_DB, create=not readonly)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the suppression store: {exc}") from exc

    @property
    def bulk(self) -> SuppressionBulk:
        """Scan, count, export and import over this store (made per use: no reference
        cycle, so a dropped store closes its environment at once)."""
        return SuppressionBulk(self)

    # ---- storage primitives for the bulk operations (policy.suppression.bulk.Records) ------

    def _db(self, scope: Scope) -> Any:
        return self._dom if scope is Scope.DOMAIN else self._addr

    def raw_values(self, scope: Scope, last: bytes | None = None) -> Iterator[bytes]:
        """Every value of `scope` (after key `last`), a batch per short read txn."""
        db = self._db(scope)
        while True:
            batch: list[tuple[bytes, bytes]] = []
            try:
                with self._env.begin(db=db, buffers=False) as txn:
                    cur = txn.cursor()
                    found = cur.set_range(last + b"\0") if last is not None else cur.first()
                    while found and len(batch) < _SCAN_BATCH:
                        batch.append((cur.key(), cur.value()))
                        found = cur.next()
            except lmdb.Error as exc:
                raise StoreError(f"suppression scan failed: {exc}") from exc
            for _k, v in batch:
                yield v
            if len(batch) < _SCAN_BATCH:
                return
            last = batch[-1][0]

    def total(self) -> int:
        try:
            with self._env.begin() as txn:
                return int(txn.stat(self._addr)["entries"] + txn.stat(self._dom)["entries"])
        except lmdb.Error as exc:
            raise StoreError(f"suppression count failed: {exc}") from exc

    def update_many(self, keys: Sequence[tuple[Scope, str]], rule: Rule) -> None:
        try:
            with self._env.begin(write=True) as txn:
                for i, (scope, key) in enumerate(keys):
                    db, k = self._db(scope), key.encode()
                    raw = txn.get(k, db=db)
                    new = rule(i, None if raw is None else decode_or_fail(key, raw))
                    if new is not None:
                        txn.put(k, encode(new), db=db)
        except lmdb.MapFullError as exc:
            raise StoreError(MAP_FULL) from exc
        except lmdb.Error as exc:
            raise StoreError(f"suppression import failed: {exc}") from exc

    # ---- bulk operations (policy.suppression.bulk) ------------------------------------------

    def scan(
        self,
        now: datetime,
        states: Iterable[State] | None = None,
        category: Category | None = None,
        after: str | None = None,
    ) -> Iterator[SuppressionRecord]:
        """See `SuppressionBulk.scan`."""
        return self.bulk.scan(now, states, category, after)

    def count(self, now: datetime | None = None) -> dict[str, int]:
        """See `SuppressionBulk.count`."""
        return self.bulk.count(now)

    def export_csv(
        self,
        out: TextIO,
        now: datetime,
        states: Iterable[State] | None = None,
        unicode: bool = False,
    ) -> int:
        """See `SuppressionBulk.export_csv`."""
        return self.bulk.export_csv(out, now, states, unicode)

    def import_csv(self, lines: Iterable[str], now: datetime, why: str = "import") -> ImportResult:
        """See `SuppressionBulk.import_csv`."""
        return self.bulk.import_csv(lines, now, why)

    def import_job(
        self, lines: Iterable[str], now: datetime, why: str = "import", batch: int = IMPORT_BATCH
    ) -> ImportJob:
        """See `SuppressionBulk.import_job`."""
        return self.bulk.import_job(lines, now, why, batch)

    # ---- hot path ---------------------------------------------------------------------------

    def check(self, address: str, now: datetime) -> Refusal | None:
        """Refuse `address` (or its domain) if suppressed at `now`; read-only, one read txn.

        The relay calls this at every RCPT, on the event loop: it reads only the
        records' fixed headers, and decodes the reason only when it refuses.
        """
        try:
            addr = normalize_address(address)
        except AddressError:
            return None  # nothing un-normalisable was ever stored
        now_ts = (now.replace(tzinfo=UTC) if now.tzinfo is None else now).timestamp()
        try:
            # begin/abort rather than `with`, whose exit commits: half the cost of a look-up.
            txn = self._begin()
            try:
                # Positional (key, default, db): py-lmdb parses keywords more slowly.
                raw = txn.get(addr[addr.rfind("@") + 1 :].encode(), None, self._dom)
                hit = None if raw is None else _refusing(raw, now_ts)
                if hit is not None:
                    scope, scope_name = Scope.DOMAIN, _DOMAIN
                else:
                    raw = txn.get(addr.encode(), None, self._addr)
                    if raw is None:
                        return None
                    hit = _refusing(raw, now_ts)
                    if hit is None:
                        return None
                    scope, scope_name = Scope.ADDRESS, _ADDRESS
            finally:
                txn.abort()
        except lmdb.Error as exc:
            raise StoreError(f"suppression look-up failed: {exc}") from exc
        except (struct.error, UnicodeDecodeError) as exc:
            raise StoreError(f"unreadable suppression record for {addr}: {exc}") from exc
        reason, tail, kind = hit
        return _refusal(addr, scope_name, esc.refusal_reply(addr, scope, tail, kind), reason)

    # ---- writes (the relay's writer thread, the CLI, the API) -------------------------------

    def _update(
        self,
        db: Any,
        key: str,
        rule: Callable[[SuppressionRecord | None], SuppressionRecord | None],
    ) -> SuppressionRecord | None:
        """Read, apply `rule`, write back: one write txn. Returns the new (or old) record."""
        k = key.encode()
        try:
            with self._env.begin(write=True, db=db) as txn:
                raw = txn.get(k)
                old = decode_or_fail(key, raw) if raw is not None else None
                new = rule(old)  # RuleError / NotFound propagate; the txn aborts
                if new is not None and new != old:
                    txn.put(k, encode(new))
                    return new
                return old
        except lmdb.MapFullError as exc:
            raise StoreError(MAP_FULL) from exc
        except lmdb.Error as exc:
            raise StoreError(f"suppression store write failed: {exc}") from exc

    def has_records(self, address: str) -> bool:
        """Whether `address` or its domain has any record: read-only, one read txn.

        A success or an activity can change only an existing record, so the relay
        may ask this on the event loop and skip the writer thread for the (usual)
        delivered address that has none.
        """
        addr = normalize_address(address)
        try:
            with self._env.begin(buffers=True) as txn:
                return (
                    txn.get(domain_of(addr).encode(), db=self._dom) is not None
                    or txn.get(addr.encode(), db=self._addr) is not None
                )
        except lmdb.Error as exc:
            raise StoreError(f"suppression look-up failed: {exc}") from exc

    def record_refusal(self, refusal: Refusal, now: datetime) -> None:
        """Count the synthesized HB that `check` led to (docs/behaviour.md#suppression-policy)."""
        now = esc.utc(now)
        if refusal.scope == Scope.DOMAIN.value:
            db, key = self._dom, domain_of(refusal.address)
        else:
            db, key = self._addr, refusal.address
        self._update(
            db, key, lambda r: None if r is None else esc.apply_synthesized(r, self.rules, now)
        )

    def note_delivered(self, address: str, now: datetime) -> None:
        """A delivery to `address`: one attempt for the storm breaker's share (memory only)."""
        try:
            addr = normalize_address(address)
        except AddressError:
            return
        self.storms.observe(domain_of(addr), addr, False, esc.utc(now))

    def _storm(self, addr: str, verdict: Verdict, reply: Reply, now: datetime) -> bool:
        """Count this verdict for its remote domain; True when that domain is in a storm."""
        hard = (
            verdict.klass is BounceClass.HARD
            and reply.code // 100 == 5
            and verdict.category is not Category.BAD_DOMAIN  # the domain record's own rules
        )
        dom = domain_of(addr)
        trip = self.storms.observe(dom, addr, hard, now)
        if trip is not None:
            self._tripped(trip, now)
        return hard and self.storms.in_storm(dom)

    def _tripped(self, trip: Trip, now: datetime) -> None:
        """A storm has begun: the alarm, and the window's hard suppressions become storm ones."""
        self.storms_tripped += 1
        log.warning(
            "storm: %s answered hard for %d distinct addresses (%d of %d attempts) within "
            "%g s; its hard verdicts now suppress for %g h only, marked storm; see "
            "`bouncer suppression storms`",
            trip.domain,
            len(trip.addresses),
            trip.hard,
            trip.attempts,
            self.rules.storm_window,
            self.rules.storm_suppress_hours,
        )
        start = datetime.fromtimestamp(trip.window_start, UTC)
        for a in sorted(trip.addresses):
            self._update(
                self._addr,
                a,
                lambda r: None if r is None else esc.apply_storm_mark(r, self.rules, now, start),
            )

    def record_verdict(self, address: str, verdict: Verdict, reply: Reply, now: datetime) -> None:
        """Apply a classifier verdict for `address`; bad-domain HBs go on the domain record."""
        now = esc.utc(now)
        addr = normalize_address(address)
        if verdict.klass is BounceClass.DELIVERED:
            self.record_success(addr, now)
            return
        storm = self._storm(addr, verdict, reply, now)
        if verdict.category is Category.BAD_DOMAIN and verdict.klass is BounceClass.HARD:
            dom = domain_of(addr)
            self._update(
                self._dom,
                dom,
                lambda r: esc.apply_verdict(r, dom, Scope.DOMAIN, verdict, reply, self.rules, now),
            )
            return
        self._update(
            self._addr,
            addr,
            lambda r: esc.apply_verdict(
                r, addr, Scope.ADDRESS, verdict, reply, self.rules, now, storm
            ),
        )

    def _alive(self, address: str, kind: str, now: datetime) -> SuppressionRecord | None:
        now = esc.utc(now)
        addr = normalize_address(address)
        if not self.has_records(addr):
            return None  # most delivered addresses have no record: no write txn at all
        rec = None
        for db, key in ((self._dom, domain_of(addr)), (self._addr, addr)):
            rec = self._update(db, key, lambda r: esc.apply_alive(r, kind, self.rules, now)) or rec
        return rec

    def record_success(self, address: str, now: datetime) -> None:
        """A 2xx: resets the streak and strikes, lifts a temporary suppression."""
        self.note_delivered(address, now)
        self._alive(address, "success", now)

    def record_activity(self, address: str, now: datetime) -> None:
        """The recipient opened, clicked or replied: same effect as a success."""
        self._alive(address, "activity", now)

    def record_complaint(self, address: str, now: datetime, detail: str) -> None:
        """An ARF complaint: the address is blocked."""
        now = esc.utc(now)
        addr = normalize_address(address)
        self._update(
            self._addr, addr, lambda r: esc.apply_complaint(r, addr, detail, self.rules, now)
        )

    # ---- admin: one implementation for the CLI and the HTTP API ------------------------------

    def _target(self, key: str) -> tuple[Any, str, Scope]:
        """An address, or a domain (bare or "@domain") for a domain-level record."""
        k = key.strip()
        if k.startswith("@") and k.count("@") == 1:
            k = k[1:]  # "@example.com", as `list` prints a domain record
        db, scope = (self._addr, Scope.ADDRESS) if "@" in k else (self._dom, Scope.DOMAIN)
        k = normalize_address(k) if scope is Scope.ADDRESS else _normalize_domain(k)
        if not 0 < len(k.encode("utf-8", "surrogatepass")) <= _MAX_KEY:
            # "" (from "..", say) or longer than LMDB keys go: never a record, not a store fault
            raise AddressError(f"not a valid address or domain: {key!r}")
        return db, k, scope

    def get(self, key: str, now: datetime | None = None) -> SuppressionRecord | None:
        """The record for an address or a bare domain; with `now`, as of then (expiry applied)."""
        db, k, _scope = self._target(key)
        try:
            with self._env.begin(db=db, buffers=False) as txn:
                raw = txn.get(k.encode())
        except lmdb.Error as exc:
            raise StoreError(f"suppression look-up failed: {exc}") from exc
        rec = None if raw is None else decode_or_fail(k, raw)
        if rec is None or now is None:
            return rec
        return esc.effective(rec, self.rules, esc.utc(now))

    def add(
        self,
        key: str,
        category: Category,
        now: datetime,
        until: datetime | None = None,
        why: str = "",
    ) -> SuppressionRecord:
        """Suppress by hand: until a date, or permanently. Raises ValueError on a bad address."""
        now = esc.utc(now)
        db, k, scope = self._target(key)
        if scope is Scope.ADDRESS and not is_valid_address(k):
            raise AddressError(f"not a valid address: {key!r}")
        if scope is Scope.DOMAIN and ("." not in k or not is_valid_domain(k)):
            raise AddressError(f"not a valid address or domain: {key!r}")
        rec = self._update(
            db, k, lambda r: esc.apply_add(r, k, scope, category, until, why, self.rules, now)
        )
        assert rec is not None  # apply_add always returns a record
        return rec

    def activity(self, key: str, now: datetime) -> SuppressionRecord | None:
        """Record an activity and return the record as it now stands (None if there is none)."""
        return self._alive(key, "activity", now)

    def consent(self, address: str, now: datetime, why: str) -> SuppressionRecord:
        """The recipient's own verified consent lifts a block or a permanent suppression;
        `why` says how it was verified (kept in the history, kind "consent")."""
        now = esc.utc(now)
        addr = normalize_address(address)

        def rule(r: SuppressionRecord | None) -> SuppressionRecord:
            if r is None:
                raise NotFound(f"no suppression record for {addr}")
            return esc.apply_remove(r, True, why, self.rules, now, kind="consent")

        rec = self._update(self._addr, addr, rule)
        assert rec is not None
        return rec

    def storms_list(self, now: datetime) -> list[StormGroup]:
        """The storm records still refusing at `now`, per remote domain."""
        return storm_groups(self.scan(esc.utc(now), states=[State.SUPPRESSED]))

    def storm_settle(self, domain: str, confirm: bool, now: datetime, why: str = "") -> int:
        """Confirm (normal hard rules) or release every storm record of `domain`; returns
        how many records changed. Raises NotFound when the domain has none."""
        now = esc.utc(now)
        dom = _normalize_domain(domain.strip().lstrip("@"))
        groups = [g for g in self.storms_list(now) if g.domain == dom]
        if not groups:
            raise NotFound(f"no storm records for {dom}")
        rule = esc.apply_storm_confirm if confirm else esc.apply_storm_release
        changed = 0
        for addr in groups[0].addresses:
            new = self._update(
                self._addr, addr, lambda r: None if r is None else rule(r, why, self.rules, now)
            )
            changed += new is not None and basis_of(new) is not Basis.STORM
        return changed

    def remove(
        self, key: str, now: datetime, force: bool = False, why: str = ""
    ) -> SuppressionRecord:
        """Lift a suppression; raises NotFound, NotSuppressed or ForceRequired."""
        now = esc.utc(now)
        db, k, _scope = self._target(key)

        def rule(r: SuppressionRecord | None) -> SuppressionRecord:
            if r is None:
                raise NotFound(f"no suppression record for {k}")
            return esc.apply_remove(r, force, why, self.rules, now)

        rec = self._update(db, k, rule)
        assert rec is not None
        return rec


@dataclass(frozen=True, slots=True)
class StormGroup:
    """The storm records of one remote domain, as `bouncer suppression storms` lists them."""

    domain: str
    addresses: tuple[str, ...]
    first: datetime
    last: datetime


def storm_groups(records: Any) -> list[StormGroup]:
    """Group refusing storm records by domain, newest storm first."""
    by: dict[str, list[SuppressionRecord]] = {}
    for rec in records:
        if rec.scope is Scope.ADDRESS and basis_of(rec) is Basis.STORM and rec.since is not None:
            by.setdefault(domain_of(rec.key), []).append(rec)
    groups = [
        StormGroup(
            dom,
            tuple(r.key for r in recs),
            min(r.since for r in recs if r.since is not None),
            max(r.since for r in recs if r.since is not None),
        )
        for dom, recs in by.items()
    ]
    return sorted(groups, key=lambda g: g.last, reverse=True)


def _refusing(raw: bytes, now_ts: float) -> tuple[str, str, int] | None:
    """(reason, refusal tail, refusal kind) if this record refuses at `now_ts`; reads the
    header only."""
    version, byte, _since, until, tlen, roff, rlen = HEADER.unpack_from(raw)
    code, kind = split_state(byte, version)
    if not esc.refuses(code, until, now_ts):
        return None  # expiry is evaluated at look-up: re-admission needs no write
    tail = raw[_HEAD_SIZE : _HEAD_SIZE + tlen].decode("utf-8")
    if tail.isascii():
        return tail[roff : roff + rlen], tail, kind  # byte offsets are character offsets
    start = _HEAD_SIZE + roff
    return raw[start : start + rlen].decode("utf-8"), tail, kind
