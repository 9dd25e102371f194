"""A damaged state store: detected before LMDB maps it, never a SIGBUS
nor an empty start; `bouncer store check|repair`; undecodable queue records quarantined."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy.reply import Reply
from relay.config.load import load_config
from relay.queue.queue import Spool, SpoolMessage, spool_from_config
from relay.queue.records import rcpt_key
from relay.store.env import StoreDamaged, open_state
from relay.store.integrity import EXIT_DAMAGED, MARKER, problem_of

ROOT = Path(__file__).resolve().parents[3]
SOFT = Reply(452, "4.2.2", "Mailbox full")
BODY = b"Subject: kept\r\n\r\n" + b"y" * 20_000 + b"\r\n"


def bouncer(config: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m relay ...` as the postmaster runs it (from another directory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv, "--config", str(config)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A state directory with 200 queued messages; port 0 so a serve that starts listens."""
    path = tmp_path / "bouncer.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nhostname = "relay.test"\n'
        f'[store]\npath = "{tmp_path / "state"}"\n'
    )
    cfg = load_config(path)
    spool = spool_from_config(open_state(cfg.store.path, cfg.store.map_size), cfg)
    now = datetime.now(UTC) - timedelta(minutes=1)
    for i in range(200):
        msg = SpoolMessage(f"Q{i:05d}", "a@a.example", BODY, now, ((f"r{i}@b.example", SOFT),))
        spool.accept(msg, now)
    spool.env.close()
    return path


def data_file(config: Path) -> Path:
    return config.parent / "state" / "data.mdb"


def assert_refused(result: subprocess.CompletedProcess[str], what: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == EXIT_DAMAGED, out  # not -SIGBUS, not 0 with an empty store
    assert "damaged" in out and what in out and "bouncer store repair" in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("fraction", [0.5, 0.0], ids=["half", "zero"])
def test_serve_refuses_a_cut_data_file(config: Path, fraction: float) -> None:
    data = data_file(config)
    os.truncate(data, int(data.stat().st_size * fraction))
    assert_refused(bouncer(config, "serve"), str(data))


@pytest.mark.parametrize("fraction", [0.5, 0.0], ids=["half", "zero"])
def test_cli_refuses_a_cut_data_file(config: Path, fraction: float) -> None:
    data = data_file(config)
    os.truncate(data, int(data.stat().st_size * fraction))
    assert_refused(bouncer(config, "queue", "list"), str(data))
    assert_refused(bouncer(config, "suppression", "list"), str(data))


def test_a_removed_data_file_is_damage_not_a_first_start(config: Path) -> None:
    data_file(config).unlink()
    with pytest.raises(StoreDamaged, match="missing"):
        open_state(config.parent / "state", 1 << 24)


def test_a_first_start_is_not_damage(tmp_path: Path) -> None:
    assert problem_of(tmp_path / "new") is None
    open_state(tmp_path / "new", 1 << 24).close()
    assert (tmp_path / "new" / MARKER).exists()
    assert problem_of(tmp_path / "new") is None


def test_repair_salvages_and_keeps_the_damaged_file(config: Path) -> None:
    data = data_file(config)
    os.truncate(data, data.stat().st_size // 2)
    assert bouncer(config, "store", "check").returncode == EXIT_DAMAGED
    repaired = bouncer(config, "store", "repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "salvaged" in repaired.stdout and "kept as" in repaired.stdout
    assert list(data.parent.glob("data.mdb.damaged-*")), "the damaged file must be kept"
    listed = bouncer(config, "queue", "list")
    assert listed.returncode == 0, listed.stderr
    cfg = load_config(config)
    env = open_state(cfg.store.path, cfg.store.map_size)
    try:
        messages = Spool(env).messages()
        assert messages, "nothing salvaged"
        assert all(m.size == len(BODY) for m in messages)
    finally:
        env.close()


def test_repair_of_a_whole_store_keeps_every_record(config: Path) -> None:
    assert bouncer(config, "store", "repair").stdout.count("nothing to repair") == 1
    forced = bouncer(config, "store", "repair", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "queue_recipients: 200 record(s) salvaged" in forced.stdout
    assert bouncer(config, "store", "check").returncode == 0


def test_repair_refuses_while_the_store_is_open(config: Path) -> None:
    cfg = load_config(config)
    env = open_state(cfg.store.path, cfg.store.map_size)
    try:
        busy = bouncer(config, "store", "repair", "--force")
    finally:
        env.close()
    assert busy.returncode == 1 and "in use" in busy.stderr


def _corrupt(config: Path, key: bytes, table: bytes, value: bytes) -> None:
    cfg = load_config(config)
    env = open_state(cfg.store.path, cfg.store.map_size)
    db = env.open_db(table)  # not inside the write transaction: open_db writes too
    with env.begin(write=True) as txn:
        txn.put(key, value, db=db)
    env.close()


def test_undecodable_queue_records_are_quarantined_not_a_traceback(config: Path) -> None:
    _corrupt(config, rcpt_key("Q00001", "r1@b.example"), b"queue_recipients", b"{not json")
    _corrupt(config, b"Q00002", b"queue_messages", b"\x00\x00\x01\x00garbage")
    listed = bouncer(config, "queue", "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "Q00001" not in listed.stdout and "Q00002" not in listed.stdout
    assert "Q00003" in listed.stdout and "198 message(s)" in listed.stdout
    assert "record(s) in quarantine" in listed.stderr
    checked = bouncer(config, "store", "check")
    assert checked.returncode == 1
    assert "quarantined recipients record 'Q00001 r1@b.example'" in checked.stdout
    assert "quarantined messages record 'Q00002'" in checked.stdout


def test_a_record_damaged_while_running_is_quarantined_at_lease(tmp_path: Path) -> None:
    spool = Spool(open_state(tmp_path, 1 << 26))
    now = datetime.now(UTC)
    for qid in ("A1", "B2"):
        spool.accept(
            SpoolMessage(qid, "a@a.example", BODY, now, ((f"{qid}@b.example", SOFT),)), now
        )
    rcpts = spool.env.open_db(b"queue_recipients")
    with spool.env.begin(write=True) as txn:
        txn.put(rcpt_key("A1", "A1@b.example"), b"[1, 2", db=rcpts)
    leases = spool.lease_due(now + timedelta(days=1), 10, "1:x", now + timedelta(days=2))
    assert [lease.message.queue_id for lease in leases] == ["B2"]
    assert [q.table for q in spool.quarantine.entries()] == ["messages", "recipients"]
    assert spool.count() == (1, 1) and spool.oldest_arrival() is not None
    assert spool.get("A1") is None


def test_the_check_beside_a_busy_writer_raises_no_false_alarm(tmp_path: Path) -> None:
    """The server grows data.mdb while the CLI checks it: never reported as cut short."""
    env = open_state(tmp_path, 1 << 29)
    db = env.open_db(b"junk")
    done = threading.Event()

    def grow() -> None:
        for i in range(400):
            with env.begin(write=True, db=db) as txn:
                txn.put(b"%06d" % i, b"z" * 20_000)
        done.set()

    writer = threading.Thread(target=grow)
    writer.start()
    problems = []
    while not done.is_set():
        problem = problem_of(tmp_path)
        if problem is not None:
            problems.append(problem)
    writer.join()
    env.close()
    assert problems == []


def test_an_empty_data_file_without_the_marker_is_a_first_start(tmp_path: Path) -> None:
    """A worker starting beside another that is creating the store sees 0 bytes: no alarm."""
    (tmp_path / "data.mdb").touch()
    (tmp_path / "lock.mdb").touch()
    assert problem_of(tmp_path) is None
    (tmp_path / MARKER).touch()
    assert problem_of(tmp_path) == "data.mdb is empty (0 bytes)"
