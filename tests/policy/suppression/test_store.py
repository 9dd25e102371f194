"""The LMDB suppression store: look-ups, writes, admin operations, failures -> StoreError."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lmdb
import pytest

from policy.reply import Reply, parse_reply
from policy.suppression.records import State
from policy.suppression.store import (
    ForceRequired,
    NotFound,
    Refusal,
    StoreError,
    SuppressionRules,
    SuppressionStore,
)
from policy.verdict import BounceClass, Category, Verdict
from relay.config.load import PolicyConfig, suppression_rules
from relay.store.env import StateError, open_state

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "t")
BAD_DOMAIN = Verdict(BounceClass.HARD, Category.BAD_DOMAIN, "t")
QUOTA = Verdict(BounceClass.SOFT, Category.QUOTA_ISSUES, "t")
SPAM = Verdict(BounceClass.BLOCK, Category.SPAM_RELATED, "t")
R550 = parse_reply("550 5.1.1 user unknown")
R452 = parse_reply("452 4.2.2 mailbox full")


def days(n: float) -> timedelta:
    return timedelta(days=n)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    e = open_state(tmp_path / "state", 1 << 24)
    yield e
    e.close()


@pytest.fixture
def store(env: lmdb.Environment) -> SuppressionStore:
    return SuppressionStore(env, SuppressionRules())


def test_unknown_address_is_allowed(store: SuppressionStore) -> None:
    assert store.check("nobody@example.com", T0) is None
    assert store.check("not an address", T0) is None


def test_hard_bounce_refuses_then_readmits(store: SuppressionStore) -> None:
    store.record_verdict("Bob@Example.com", HARD, R550, T0)
    refusal = store.check("<BOB@example.COM>", T0 + days(1))
    assert refusal is not None
    assert (refusal.address, refusal.scope) == ("bob@example.com", "address")
    assert refusal.reply.line() == (
        "550 5.1.1 Recipient suppressed: bad mailbox, <bob@example.com>: suppressed "
        "(bad-mailbox: 550 5.1.1 user unknown) since 2026-11-01 until 2027-01-30"
    )
    assert store.check("bob@example.com", T0 + days(90)) is None
    rec = store.get("bob@example.com", T0 + days(90))
    assert rec is not None and rec.state is State.ACTIVE


def test_refusals_are_counted_and_escalate(store: SuppressionStore) -> None:
    store.record_verdict("bob@example.com", HARD, R550, T0)
    for d in (1, 2):
        refusal = store.check("bob@example.com", T0 + days(d))
        assert refusal is not None
        store.record_refusal(refusal, T0 + days(d))
    rec = store.get("bob@example.com")
    assert rec is not None and rec.state is State.PERMANENT and rec.synthesized == 2
    refusal = store.check("bob@example.com", T0 + days(5000))
    assert refusal is not None and "suppressed permanently (bad-mailbox" in refusal.reply.text
    assert refusal.reply.text.endswith(") since 2026-11-01")


def test_bad_domain_is_a_domain_record(store: SuppressionStore) -> None:
    store.record_verdict("a@gone.example", BAD_DOMAIN, parse_reply("550 5.1.2 no such domain"), T0)
    refusal = store.check("someone.else@GONE.example", T0 + timedelta(hours=12))
    assert refusal is not None and refusal.scope == "domain" and refusal.reply.enhanced == "5.1.2"
    assert "domain gone.example suppressed" in refusal.reply.text
    store.record_refusal(refusal, T0 + timedelta(hours=12))
    dom = store.get("gone.example")
    assert dom is not None and dom.synthesized == 1 and store.get("a@gone.example") is None
    assert store.check("a@other.example", T0) is None


def test_refusals_equal_values_built_the_ordinary_way(store: SuppressionStore) -> None:
    # check() sets the frozen dataclasses' slots directly; the values must be indistinguishable.
    store.record_verdict("bob@example.com", HARD, R550, T0)
    store.record_verdict("a@gone.example", BAD_DOMAIN, parse_reply("550 5.1.2 no such domain"), T0)
    for addr, scope, enhanced in (
        ("bob@example.com", "address", "5.1.1"),
        ("x@gone.example", "domain", "5.1.2"),
    ):
        refusal = store.check(addr, T0 + timedelta(hours=1))
        assert refusal is not None
        reply = Reply(550, enhanced, refusal.reply.text)
        expected = Refusal(addr, scope, reply, refusal.reason)
        assert refusal == expected and hash(refusal) == hash(expected)
        assert repr(refusal) == repr(expected) and refusal.reply.host is None
        assert type(refusal.scope) is str and f", <{addr}>: " in refusal.reply.text
        with pytest.raises(AttributeError):
            refusal.reply.code = 250  # type: ignore[misc]


def test_idn_domains_share_one_key(store: SuppressionStore) -> None:
    store.add("jörg@bücher.de", Category.BAD_MAILBOX, T0)
    assert store.check("jörg@xn--bcher-kva.de", T0) is not None
    assert store.get("jörg@BÜCHER.de") is not None


def test_soft_streak_through_the_store(store: SuppressionStore) -> None:
    for d in (0, 10, 21):
        assert store.check("full@example.com", T0 + days(d)) is None
        store.record_verdict("full@example.com", QUOTA, R452, T0 + days(d))
    refusal = store.check("full@example.com", T0 + days(22))
    assert refusal is not None and "until 2026-11-29" in refusal.reply.text
    store.record_success("full@example.com", T0 + days(23))  # delivered via the queue
    assert store.check("full@example.com", T0 + days(23)) is None


def test_success_without_a_record_writes_nothing(store: SuppressionStore) -> None:
    store.record_success("fine@example.com", T0)
    store.record_activity("fine@example.com", T0)
    assert store.get("fine@example.com") is None and store.count() == {"total": 0}


def test_block_verdicts_are_recorded_but_never_refuse(store: SuppressionStore) -> None:
    for d in range(5):
        store.record_verdict("ok@example.com", SPAM, parse_reply("554 5.7.1 spam"), T0 + days(d))
    rec = store.get("ok@example.com")
    assert rec is not None and rec.other == 5 and store.check("ok@example.com", T0) is None


def test_complaint_blocks_and_remove_needs_force(store: SuppressionStore) -> None:
    store.record_complaint("angry@example.com", T0, "ARF abuse from isp.example")
    assert store.check("angry@example.com", T0 + days(3650)) is not None
    with pytest.raises(ForceRequired):
        store.remove("angry@example.com", T0)
    rec = store.remove("angry@example.com", T0 + days(1), force=True, why="ticket 42")
    assert rec.state is State.ACTIVE and "ticket 42" in rec.history[-1].detail
    assert store.check("angry@example.com", T0 + days(1)) is None
    with pytest.raises(NotFound):
        store.remove("never@example.com", T0)


def test_add_with_until_and_domain(store: SuppressionStore) -> None:
    store.add("temp@example.com", Category.INACTIVE_MAILBOX, T0, until=T0 + days(3), why="asked")
    store.add("spamtrap.example", Category.BAD_DOMAIN, T0)
    assert store.check("temp@example.com", T0 + days(2)) is not None
    assert store.check("temp@example.com", T0 + days(3)) is None
    assert store.check("x@spamtrap.example", T0 + days(999)) is not None
    with pytest.raises(ValueError):
        store.add("bad..dots@example.com", Category.BAD_MAILBOX, T0)


def test_scan_filters_and_counts(store: SuppressionStore) -> None:
    store.record_verdict("a@example.com", HARD, R550, T0)
    store.record_complaint("b@example.com", T0, "arf")
    store.record_verdict("c@example.com", QUOTA, R452, T0)
    store.add("d@example.com", Category.QUOTA_ISSUES, T0, until=T0 + days(1))
    later = T0 + days(2)
    assert [r.key for r in store.scan(later)] == ["a@example.com", "b@example.com"]
    assert [r.key for r in store.scan(later, [State.BLOCKED])] == ["b@example.com"]
    assert [r.key for r in store.scan(later, [State.ACTIVE])] == ["c@example.com", "d@example.com"]
    assert [r.key for r in store.scan(T0, category=Category.QUOTA_ISSUES)] == ["d@example.com"]
    assert store.count(later) == {
        "total": 4,
        "active": 2,
        "suppressed": 1,
        "permanent": 0,
        "blocked": 1,
    }


def test_scan_crosses_batches(store: SuppressionStore) -> None:
    store.import_csv([f"u{i:05d}@example.com\n" for i in range(2500)], T0)
    keys = [r.key for r in store.scan(T0)]
    assert len(keys) == 2500 and keys == sorted(keys) and len(set(keys)) == 2500


def test_export_import_round_trip(store: SuppressionStore, tmp_path: Path) -> None:
    store.record_verdict("a@example.com", HARD, R550, T0)
    store.record_complaint("b@example.com", T0, "arf")
    store.add("gone.example", Category.BAD_DOMAIN, T0)
    out = io.StringIO()
    assert store.export_csv(out, T0 + days(1)) == 3
    text = out.getvalue()
    assert text.splitlines()[0].startswith("address,scope,state,category,since,until,reason")
    other = SuppressionStore(open_state(tmp_path / "other", 1 << 22), SuppressionRules())
    result = other.import_csv(io.StringIO(text), T0 + days(1))
    assert (result.added, result.skipped) == (3, 0)
    for key in ("a@example.com", "b@example.com", "gone.example"):
        old, new = store.get(key), other.get(key)
        assert old is not None and new is not None
        assert (new.state, new.until, new.cause, new.scope) == (
            old.state,
            old.until,
            old.cause,
            old.scope,
        )
    a = other.get("a@example.com")
    assert a is not None and a.reason == "bad-mailbox: 550 5.1.1 user unknown"


def test_import_reports_bad_rows(store: SuppressionStore) -> None:
    lines = [
        "# marketing's list\n",
        "ok@example.com\n",
        "not-an-address\n",
        "x@example.com,no-such-category\n",
        "y@example.com,quota-issues,2020-01-01\n",
        "z@example.com,quota-issues,2027-01-01\n",
        "\n",
    ]
    result = store.import_csv(lines, T0)
    assert result.added == 2 and result.skipped == 3
    assert [p.split(":")[0] for p in result.problems] == ["line 3", "line 4", "line 5"]
    z = store.get("z@example.com")
    assert (
        z is not None
        and z.state is State.SUPPRESSED
        and z.until == datetime(2027, 1, 1, tzinfo=UTC)
    )


def test_map_full_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    env = open_state(tmp_path / "tiny", 64 * 1024)
    store = SuppressionStore(env, SuppressionRules())
    with pytest.raises(StoreError, match="map_size"):
        for i in range(10_000):
            store.record_verdict(f"user{i}@example.com", HARD, R550, T0)
    assert store.check("user0@example.com", T0) is not None  # reads still work


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_state_directory_is_a_store_error(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    open_state(d, 1 << 22).close()
    d.chmod(0o500)
    try:
        with pytest.raises((StoreError, StateError)):
            SuppressionStore(open_state(d, 1 << 22), SuppressionRules())
    finally:
        d.chmod(0o700)


def test_read_only_environment_writes_are_store_errors(tmp_path: Path) -> None:
    d = tmp_path / "state"
    SuppressionStore(open_state(d, 1 << 22), SuppressionRules()).add(
        "a@example.com", Category.BAD_MAILBOX, T0
    )
    ro = SuppressionStore(open_state(d, 1 << 22, readonly=True), SuppressionRules())
    assert ro.check("a@example.com", T0) is not None
    with pytest.raises(StoreError):
        ro.record_verdict("b@example.com", HARD, R550, T0)
    empty = tmp_path / "empty"
    open_state(empty, 1 << 22).close()
    with pytest.raises(StoreError):
        SuppressionStore(open_state(empty, 1 << 22, readonly=True), SuppressionRules())


def test_readers_are_not_blocked_by_a_writer(
    store: SuppressionStore, env: lmdb.Environment
) -> None:
    store.add("r@example.com", Category.BAD_MAILBOX, T0)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with env.begin(write=True) as txn:  # holds the single write lock
            txn.put(b"k", b"v", db=env.open_db(b"scratch", txn=txn))
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(10)
        start = time.perf_counter()
        assert store.check("r@example.com", T0) is not None
        assert time.perf_counter() - start < 0.5
    finally:
        release.set()
        t.join()


def test_rules_come_from_policy_config(env: lmdb.Environment) -> None:
    rules = suppression_rules(PolicyConfig(hard_suppress_days=2.0, permanent_after_hard=5))
    store = SuppressionStore(env, rules)
    store.record_verdict("a@example.com", HARD, R550, T0)
    assert store.check("a@example.com", T0 + days(1.9)) is not None
    assert store.check("a@example.com", T0 + days(2)) is None


def test_non_ascii_reasons_survive_the_hot_path(store: SuppressionStore) -> None:
    reply = parse_reply("550 5.1.1 Adresse « jörg » inconnue / Empfänger unbekannt")
    store.record_verdict("jörg@bücher.de", HARD, reply, T0)
    refusal = store.check("JÖRG@BÜCHER.DE", T0 + days(1))
    assert refusal is not None and refusal.address == "jörg@xn--bcher-kva.de"
    assert (
        refusal.reason == "bad-mailbox: 550 5.1.1 Adresse « jörg » inconnue / Empfänger unbekannt"
    )
    assert refusal.reply.text == (
        "Recipient suppressed: bad mailbox, <jörg@xn--bcher-kva.de>: "
        f"suppressed ({refusal.reason}) since 2026-11-01 until 2027-01-30"
    )


def test_export_defuses_spreadsheet_formulas(store: SuppressionStore, tmp_path: Path) -> None:
    store.add("=cmd|x@example.com", Category.BAD_MAILBOX, T0, why="-1+1")
    out = io.StringIO()
    store.export_csv(out, T0)
    row = out.getvalue().splitlines()[1]
    assert row.startswith("'=cmd|x@example.com,")  # a spreadsheet shows it, never runs it
    other = SuppressionStore(open_state(tmp_path / "other", 1 << 22), SuppressionRules())
    assert other.import_csv(io.StringIO(out.getvalue()), T0).added == 1
    assert other.check("=cmd|x@example.com", T0) is not None


def test_a_delivered_verdict_resets_through_the_store(store: SuppressionStore) -> None:
    store.record_verdict("full@example.com", QUOTA, R452, T0)
    delivered = Verdict(BounceClass.DELIVERED, Category.DELIVERED, "t")
    store.record_verdict("full@example.com", delivered, parse_reply("250 2.0.0 ok"), T0)
    rec = store.get("full@example.com")
    assert rec is not None and rec.streak is None and rec.history[-1].kind == "success"


def test_naive_now_is_utc(store: SuppressionStore) -> None:
    store.add("n@example.com", Category.BAD_MAILBOX, T0, until=T0 + days(1))
    assert store.check("n@example.com", datetime(2026, 11, 2, 11, 59)) is not None
    assert store.check("n@example.com", datetime(2026, 11, 2, 12, 0)) is None


def test_a_corrupt_record_is_a_store_error(store: SuppressionStore, env: lmdb.Environment) -> None:
    store.add("c@example.com", Category.BAD_MAILBOX, T0)
    with env.begin(write=True) as txn:
        txn.put(
            b"c@example.com", b"\x63garbage" + bytes(30), db=env.open_db(b"suppression", txn=txn)
        )
    with pytest.raises(StoreError, match="unreadable"):
        store.get("c@example.com")
    with pytest.raises(StoreError, match="unreadable"):
        store.record_verdict("c@example.com", HARD, R550, T0)
    with pytest.raises(StoreError):
        list(store.scan(T0))
    with env.begin(write=True) as txn:  # too short for even the header check() reads
        txn.put(b"c@example.com", b"\x63", db=env.open_db(b"suppression", txn=txn))
    with pytest.raises(StoreError, match="unreadable"):
        store.check("c@example.com", T0)


def test_import_keeps_going_past_rows_the_rules_refuse(store: SuppressionStore) -> None:
    store.record_complaint("b@example.com", T0, "arf")
    lines = [
        "address,state,category,until\n",
        "b@example.com,suppressed,bad-mailbox,2027-01-01\n",  # blocked: needs a forced lift
        "ok@example.com,suppressed,bad-mailbox,2027-01-01T00:00:00+00:00\n",
        "a@example.com,active,bad-mailbox,\n",
        "d@example.com,,bad-mailbox,not-a-date\n",
        "bad@exa_mple.com,,,\n",
        "x@ü-.de,,,\n",
    ]
    result = store.import_csv(lines, T0)
    assert result.added == 1 and result.skipped == 5
    assert "line 2: b@example.com is blocked" in result.problems[-1]
    assert [p.split(":")[0] for p in result.problems[:-1]] == [
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ]


def test_domain_add_needs_a_real_domain(store: SuppressionStore) -> None:
    with pytest.raises(ValueError):
        store.add("localhost", Category.BAD_DOMAIN, T0)


def _hammer(path: str, n: int) -> None:
    # In a child process: count n soft bounces of one address, one write txn each.
    store = SuppressionStore(open_state(path, 1 << 24), SuppressionRules())
    for _ in range(n):
        store.record_verdict("busy@example.com", QUOTA, parse_reply("452 4.2.2 full"), T0)


def test_two_processes_writing_lose_no_update(tmp_path: Path) -> None:
    import multiprocessing

    path = str(tmp_path / "state")
    env = open_state(path, 1 << 24)
    SuppressionStore(env, SuppressionRules()).add("busy@example.com", Category.BAD_MAILBOX, T0)
    env.close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 150)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    env = open_state(path, 1 << 24)
    rec = SuppressionStore(env, SuppressionRules()).get("busy@example.com")
    env.close()
    assert rec is not None and rec.soft == 300


def test_has_records_lets_the_relay_skip_writes_for_clean_addresses(
    store: SuppressionStore,
) -> None:
    assert not store.has_records("fine@example.com")
    store.record_verdict("full@example.com", QUOTA, R452, T0)
    assert store.has_records("FULL@example.com")
    store.add("gone.example", Category.BAD_DOMAIN, T0, until=T0 + days(5))
    assert store.has_records("anyone@gone.example")
    store.record_success("anyone@gone.example", T0 + days(1))  # the domain proved alive
    dom = store.get("gone.example")
    assert dom is not None and dom.state is State.ACTIVE and dom.history[-1].kind == "success"
    assert store.get("anyone@gone.example") is None
