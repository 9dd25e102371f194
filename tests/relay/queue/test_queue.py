"""The durable queue: accept, lease, settle, DSNs, recovery, retry/drop, and kill -9 safety."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy.decide import Disposition
from policy.reply import Reply
from relay.queue.queue import (
    Attempt,
    DsnSettings,
    Settlement,
    Spool,
    SpoolMessage,
    owner_alive,
)
from relay.store.env import StateError, open_state
from tests.support.mime import status_blocks

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DATA = b"From: a@a.example\r\nSubject: hello\r\n\r\nbody\r\n"
SOFT = Reply(452, "4.2.2", "Mailbox full", "mx.b.example[127.0.0.1]")
HARD = Reply(550, "5.1.1", "No such user", "mx.b.example[127.0.0.1]")
OK = Reply(250, "2.0.0", "Ok", "mx.b.example[127.0.0.1]")


def _spool(path: Path, map_size: int = 1 << 24) -> Spool:
    ids = iter(f"DSN{i}" for i in range(1000))
    return Spool(
        open_state(path, map_size),
        dsn=DsnSettings("relay.test", ""),
        new_id=lambda: next(ids),
    )


def _msg(qid: str = "Q1", sender: str = "a@a.example", **kw: object) -> SpoolMessage:
    return SpoolMessage(qid, sender, DATA, T0, **kw)  # type: ignore[arg-type]


def test_accept_stores_envelope_state_and_first_due(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("b@b.example", SOFT), ("c@b.example", SOFT))), T0)
    msg = spool.get("Q1")
    assert msg is not None and msg.sender == "a@a.example" and msg.size == len(DATA)
    assert [r.recipient for r in msg.recipients] == ["b@b.example", "c@b.example"]
    r = msg.recipients[0]
    assert r.tries == 1 and r.first_failure == T0 and r.last_reply == SOFT
    assert r.next_at == T0 + timedelta(minutes=5)
    assert spool.first_due() == T0 + timedelta(minutes=5)
    assert spool.data("Q1") == DATA
    assert spool.count() == (1, 2)


def test_accept_survives_reopening_the_environment(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("b@b.example", SOFT),)), T0)
    spool.env.close()
    again = _spool(tmp_path)
    assert again.data("Q1") == DATA
    assert [r.recipient for m in again.messages() for r in m.recipients] == ["b@b.example"]


def test_kill_9_right_after_accept_loses_nothing(tmp_path: Path) -> None:
    """A child process accepts, then SIGKILLs itself at once: the entry must be on disk."""
    child = textwrap.dedent(
        f"""
        import os, signal
        from datetime import datetime, UTC
        from policy.reply import Reply
        from relay.queue.queue import Spool, SpoolMessage
        from relay.store.env import open_state
        spool = Spool(open_state({str(tmp_path)!r}, 1 << 24))
        now = datetime.now(UTC)
        spool.accept(SpoolMessage("K1", "a@a.example", b"Subject: k\\r\\n\\r\\nx\\r\\n", now,
                                  (("b@b.example", Reply(451, "4.3.0", "later")),)), now)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", child], cwd=root, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    msg = _spool(tmp_path).get("K1")
    assert msg is not None and msg.recipients[0].recipient == "b@b.example"


def test_lease_only_due_and_not_twice(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg("Q1", deferred=(("b@b.example", SOFT), ("c@b.example", SOFT))), T0)
    spool.accept(_msg("Q2", deferred=(("d@b.example", SOFT),)), T0 + timedelta(minutes=1))
    until = T0 + timedelta(hours=1)
    assert spool.lease_due(T0 + timedelta(minutes=4), 10, "me", until) == []
    leases = spool.lease_due(T0 + timedelta(minutes=5), 10, "me", until)
    assert [
        (le.message.queue_id, [r.recipient for r in le.message.recipients]) for le in leases
    ] == [("Q1", ["b@b.example", "c@b.example"])]
    assert leases[0].data == DATA
    assert leases[0].message.recipients[0].leased_by == "me"
    # Leased work is not handed out again, while Q2 comes due on its own time.
    later = spool.lease_due(T0 + timedelta(minutes=7), 10, "other", until)
    assert [le.message.queue_id for le in later] == ["Q2"]
    # Until the lease runs out: then it is due again (a runner that died mid-attempt).
    again = spool.lease_due(until, 10, "other", until + timedelta(hours=1))
    assert sorted(r.recipient for le in again for r in le.message.recipients) == [
        "b@b.example",
        "c@b.example",
        "d@b.example",
    ]


def test_lease_limit(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    rcpts = tuple((f"r{i}@b.example", SOFT) for i in range(5))
    spool.accept(_msg(deferred=rcpts), T0)
    leases = spool.lease_due(T0 + timedelta(hours=1), 3, "me", T0 + timedelta(hours=2))
    assert sum(len(le.message.recipients) for le in leases) == 3


def test_settle_delivered_deferred_and_last_one_removes_the_message(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("b@b.example", SOFT), ("c@b.example", SOFT))), T0)
    now = T0 + timedelta(minutes=5)
    spool.lease_due(now, 10, "me", now + timedelta(hours=1))
    nxt = T0 + timedelta(minutes=30)
    dsn = spool.settle(
        "Q1",
        [
            Settlement("b@b.example", Disposition.DELIVERED, Attempt(now, OK, "mx", "DATA")),
            Settlement("c@b.example", Disposition.QUEUED, Attempt(now, SOFT), next_at=nxt),
        ],
        now,
    )
    assert dsn is None
    msg = spool.get("Q1")
    assert msg is not None and [r.recipient for r in msg.recipients] == ["c@b.example"]
    c = msg.recipients[0]
    assert c.tries == 2 and c.next_at == nxt and c.leased_by == "" and len(c.attempts) == 2
    assert spool.first_due() == nxt
    spool.settle("Q1", [Settlement("c@b.example", Disposition.DELIVERED, Attempt(nxt, OK))], nxt)
    assert spool.get("Q1") is None and spool.count() == (0, 0) and spool.first_due() is None


def test_expiry_queues_a_dsn_to_the_sender_due_now(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("b@b.example", SOFT),)), T0)
    now = T0 + timedelta(days=21, seconds=3)
    dsn_id = spool.settle(
        "Q1", [Settlement("b@b.example", Disposition.EXPIRED, Attempt(now, SOFT))], now
    )
    assert dsn_id == "DSN0"
    assert spool.get("Q1") is None
    dsn = spool.get("DSN0")
    assert dsn is not None and dsn.kind == "dsn" and dsn.origin == "Q1" and dsn.sender == ""
    (r,) = dsn.recipients
    assert r.recipient == "a@a.example" and r.tries == 0 and r.next_at == now
    parsed = email.message_from_bytes(spool.data("DSN0") or b"")
    block = status_blocks(parsed)[1]
    assert block["Final-Recipient"] == "rfc822; b@b.example"
    assert block["Status"] == "4.2.2"
    assert block["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"


def test_mixed_outcome_hard_recipients_get_a_dsn_in_the_same_commit(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("soft@b.example", SOFT),), failed=(("hard@b.example", HARD),)), T0)
    assert {m.queue_id for m in spool.messages()} == {"Q1", "DSN0"}
    block = status_blocks(email.message_from_bytes(spool.data("DSN0") or b""))[1]
    assert block["Final-Recipient"] == "rfc822; hard@b.example" and block["Status"] == "5.1.1"
    # Only hard failures: no copy of the message is kept, only the DSN.
    spool.accept(_msg("Q2", failed=(("hard@b.example", HARD),)), T0)
    assert spool.get("Q2") is None and spool.get("DSN1") is not None


def test_no_dsn_for_null_sender_and_dsns_never_bounce(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(
        _msg(sender="", deferred=(("b@b.example", SOFT),), failed=(("h@b.example", HARD),)), T0
    )
    assert [m.queue_id for m in spool.messages()] == ["Q1"]
    spool.settle("Q1", [Settlement("b@b.example", Disposition.BOUNCED, Attempt(T0, HARD))], T0)
    assert spool.messages() == []


def test_recover_makes_dead_owners_leases_due(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg("Q1", deferred=(("b@b.example", SOFT),)), T0)
    spool.accept(_msg("Q2", deferred=(("c@b.example", SOFT),)), T0)
    now = T0 + timedelta(minutes=6)
    far = now + timedelta(hours=1)
    spool.lease_due(now, 1, "dead:1", far)
    spool.lease_due(now, 1, "alive:2", far)
    assert spool.lease_due(now, 10, "x", far) == []
    assert spool.recover(now, lambda owner: owner.startswith("alive")).count == 1
    leases = spool.lease_due(now, 10, "x", far)
    assert [le.message.queue_id for le in leases] == ["Q1"]


def test_recover_names_recipients_left_past_the_final_dot(tmp_path: Path) -> None:
    """The write-ahead mark: a dead owner's recipient marked delivering may be at the
    remote already (it is named); one only leased was certainly not sent."""
    spool = _spool(tmp_path)
    spool.accept(_msg("Q1", deferred=(("b@b.example", SOFT),)), T0)
    spool.accept(_msg("Q2", deferred=(("c@b.example", SOFT),)), T0)
    now = T0 + timedelta(minutes=6)
    far = now + timedelta(hours=1)
    assert len(spool.lease_due(now, 10, "dead:1", far)) == 2
    spool.write_many([lambda txn: spool.mark_delivering_in(txn, "Q1", ["b@b.example"], now)])
    found = spool.recover(now, lambda owner: False)
    assert found.count == 2 and found.possibly_delivered == (("Q1", "b@b.example"),)
    # The mark goes with the recovery (and with every new lease or settlement).
    assert spool.recover(now, lambda owner: False).possibly_delivered == ()
    leases = spool.lease_due(now, 10, "x", far)
    assert sorted(le.message.queue_id for le in leases) == ["Q1", "Q2"]
    assert spool.recover(now, lambda owner: False).possibly_delivered == ()


def test_owner_alive_probes_the_process() -> None:
    assert owner_alive(f"{os.getpid()}:tok")
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    assert not owner_alive(f"{int(proc.stdout)}:tok")


def test_retry_now_and_drop(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg("Q1", deferred=(("b@b.example", SOFT),)), T0)
    spool.accept(_msg("Q2", deferred=(("c@b.example", SOFT),)), T0)
    now = T0 + timedelta(seconds=10)
    assert spool.retry_now(["Q1"], now) == 1
    assert spool.first_due() == now
    assert spool.retry_now(None, now) == 2
    dropped = spool.drop("Q1", "customer asked", dsn=False, now=now)
    assert dropped is not None and dropped.queue_id == "Q1"
    assert spool.get("Q1") is None and [m.queue_id for m in spool.messages()] == ["Q2"]
    assert spool.drop("Q2", "spam run", dsn=True, now=now) is not None
    (dsn,) = spool.messages()
    assert dsn.kind == "dsn"
    text = (spool.data(dsn.queue_id) or b"").decode()
    assert "dropped by the postmaster: spam run" in text
    assert spool.drop("nope", "x", dsn=False, now=now) is None


def test_settle_after_a_drop_is_harmless(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg(deferred=(("b@b.example", SOFT),)), T0)
    spool.lease_due(T0 + timedelta(hours=1), 10, "me", T0 + timedelta(hours=2))
    spool.drop("Q1", "x", dsn=False, now=T0)
    assert (
        spool.settle("Q1", [Settlement("b@b.example", Disposition.BOUNCED, Attempt(T0, HARD))], T0)
        is None
    )
    assert spool.messages() == [] and spool.first_due() is None


def test_map_full_raises_state_error(tmp_path: Path) -> None:
    spool = _spool(tmp_path, map_size=1 << 20)
    big = SpoolMessage("BIG", "a@a.example", b"x" * (4 << 20), T0, (("b@b.example", SOFT),))
    with pytest.raises(StateError):
        spool.accept(big, T0)
    assert spool.get("BIG") is None  # nothing half-written


def test_oldest_arrival_follows_the_queue(tmp_path: Path) -> None:
    """The arrival index gives the oldest message, and forgets it when it leaves."""
    spool = _spool(tmp_path)
    assert spool.oldest_arrival() is None
    later = T0 + timedelta(hours=1)
    spool.accept(SpoolMessage("Z9", "a@a.example", DATA, later, (("b@b.example", SOFT),)), T0)
    spool.accept(_msg("A1", deferred=(("c@b.example", SOFT),)), T0)  # older, later queue id
    assert spool.oldest_arrival() == T0
    spool.drop("A1", "test", dsn=False, now=T0)
    assert spool.oldest_arrival() == later
    spool.settle("Z9", [Settlement("b@b.example", Disposition.DELIVERED)], later)
    assert spool.count() == (0, 0) and spool.oldest_arrival() is None


def test_arrival_index_is_built_for_a_queue_written_without_it(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.accept(_msg("Q1", deferred=(("b@b.example", SOFT),)), T0)
    older = SpoolMessage("Q2", "a@a.example", DATA, T0 - timedelta(days=2))
    spool.accept(replace(older, deferred=(("c@b.example", SOFT),)), T0)
    env = spool.env
    index = env.open_db(b"queue_arrived")
    with env.begin(write=True) as txn:  # as an older bouncer left it: no arrival index
        txn.drop(index, delete=False)
    assert spool.oldest_arrival() is None
    assert Spool(env).oldest_arrival() == T0 - timedelta(days=2)
