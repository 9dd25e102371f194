# This module reads a state store record by record to say what is readable, and copies the
# readable records of a damaged one into a new environment; it keeps the damaged file
# aside and never deletes it. `bouncer store check|repair` (relay/cli/store.py) call it.
"""Walking and salvaging the LMDB state store.

A data file cut short cannot be opened as it is (LMDB would read past its end:
SIGBUS), so salvage works on a copy extended with zero bytes to the size LMDB's
meta page names. A zero page is no valid LMDB page: reading a record through one
is an error (MDB_CORRUPTED) that ends that table's walk, so what is copied is
what could really be read. A large value whose tail fell into the lost part
would read as zeros: a value holding a whole page of zero bytes is not copied
(mail never holds 4 KiB of NULs, nor does a suppression record).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import lmdb

from relay.store.integrity import DATA_FILE, LOCK_FILE, mark_state, problem_of, read_meta

_ZERO_PAGE = bytes(4096)


@dataclass
class TableReport:
    """One named database: records read (or copied), and the error that ended the walk."""

    name: str
    records: int = 0
    skipped: int = 0  # values that read as a page of zeros (lost to the damage)
    error: str = ""


@dataclass
class StoreReport:
    problem: str | None
    tables: list[TableReport] = field(default_factory=list)
    kept_aside: Path | None = None

    @property
    def readable(self) -> bool:
        return all(not t.error and not t.skipped for t in self.tables)


class StoreBusy(Exception):
    """Another process (a running bouncer) has the store open: repair must not swap files."""


def ensure_not_in_use(path: Path) -> None:
    """Raise StoreBusy when a process holds the environment open.

    Every process with an LMDB environment open holds a shared fcntl lock on the first
    byte of lock.mdb (mdb.c, mdb_env_excl_lock); an exclusive one is then refused.
    """
    lock = path / LOCK_FILE
    if not lock.exists():
        return
    with open(lock, "r+b") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            raise StoreBusy(
                f"{lock} is in use: stop bouncer (and any `bouncer` command) first"
            ) from exc
        fcntl.lockf(f, fcntl.LOCK_UN, 1, 0)


_FRAME = struct.Struct(">II")  # key length, value length (a key of length 0: end marker)


def _reader(path: Path, name: bytes | None, reverse: bool, map_size: int, fd: int) -> None:
    """In a forked child: stream every record of table `name` (None: the table list)."""
    out = os.fdopen(fd, "wb", buffering=1 << 16)
    try:
        env = lmdb.open(str(path), map_size=map_size, max_dbs=64, readonly=True, lock=False)
        db = None if name is None else env.open_db(name, create=False)
        with env.begin(db=db, buffers=True) as txn:
            cur = txn.cursor()
            records = cur.iterprev() if reverse else cur.iternext()
            for key, value in records:
                out.write(_FRAME.pack(len(key), len(value)))
                out.write(key)
                out.write(value)
        out.write(_FRAME.pack(0, 0))
    except lmdb.Error as exc:
        err = str(exc).encode()
        out.write(_FRAME.pack(0, len(err)) + err)
    out.flush()
    os._exit(0)


def _records(
    path: Path, name: bytes | None, map_size: int, reverse: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """Every readable record of a table, read in a child process.

    LMDB trusts its pages: on a damaged one it may abort the process (an assertion in
    mdb.c) instead of returning MDB_CORRUPTED, so reading happens where that is survivable.
    Raises _WalkEnded with the reason when the walk stops early.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # mdb.c's assertion text: reported below
        try:
            _reader(path, name, reverse, map_size, wfd)
        finally:
            os._exit(1)
    os.close(wfd)
    ended = "the reader ended without a word"
    with os.fdopen(rfd, "rb") as f:
        while len(head := f.read(_FRAME.size)) == _FRAME.size:
            klen, vlen = _FRAME.unpack(head)
            if klen == 0:
                ended = f.read(vlen).decode("utf-8", "replace") if vlen else ""
                break
            key = f.read(klen)
            value = f.read(vlen)
            if len(value) != vlen:
                break
            yield key, value
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        ended = f"LMDB stopped on a damaged page ({signal.Signals(os.WTERMSIG(status)).name})"
    if ended:
        raise _WalkEnded(ended)


class _WalkEnded(Exception):
    pass


def _names(path: Path, map_size: int, report: list[TableReport]) -> list[bytes]:
    """The named databases listed in the main one (an unreadable list is reported)."""
    names: list[bytes] = []
    try:
        for key, _ in _records(path, None, map_size):
            names.append(key)
    except _WalkEnded as exc:
        report.append(TableReport("(list of tables)", len(names), error=str(exc)))
    return names


def _copy_table(
    path: Path, name: bytes, map_size: int, dst: lmdb.Environment | None
) -> TableReport:
    """Read (and with `dst`, copy) one table: forwards, then backwards past a damaged part."""
    report = TableReport(name.decode("utf-8", "backslashreplace"))
    ddb = None if dst is None else dst.open_db(name, create=True)
    out = None if dst is None else dst.begin(write=True, db=ddb)
    last: bytes | None = None

    def keep(key: bytes, value: bytes) -> None:
        if _ZERO_PAGE in value:
            report.skipped += 1
        else:
            report.records += 1
            if out is not None:
                out.put(key, value)

    try:
        for key, value in _records(path, name, map_size):
            keep(key, value)
            last = key
    except _WalkEnded as exc:
        report.error = f"unreadable after {report.records} record(s): {exc}"
        try:  # the records after the damage, read from the other end
            for key, value in _records(path, name, map_size, reverse=True):
                if last is not None and key <= last:
                    break
                keep(key, value)
        except _WalkEnded:
            pass
    if out is not None:
        out.commit()
    return report


def walk(path: str | Path, map_size: int) -> list[TableReport]:
    """Read every record of every named database; what cannot be read is reported."""
    out: list[TableReport] = []
    names = _names(Path(path), map_size, out)
    return out + [_copy_table(Path(path), name, map_size, None) for name in names]


def salvage(path: str | Path, map_size: int) -> StoreReport:
    """Copy the readable records into a new data file; keep the old one aside.

    The caller makes sure no process has the store open (`ensure_not_in_use`).
    """
    base = Path(path)
    data = base / DATA_FILE
    report = StoreReport(problem_of(base))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work, new = base / f"repair-{stamp}.src", base / f"repair-{stamp}.new"
    work.mkdir()
    new.mkdir()
    try:
        size = data.stat().st_size if data.exists() else 0
        with open(data, "rb") if size else open(os.devnull, "rb") as f:
            meta = read_meta(f.read(2 * 65536))
        dst = lmdb.open(str(new), map_size=map_size, max_dbs=64, sync=True)
        try:
            if meta is not None:
                shutil.copyfile(data, work / DATA_FILE)
                with open(work / DATA_FILE, "r+b") as f:
                    f.truncate(max(size, meta.needed))  # the lost part reads as zeros
                src_size = max(map_size, meta.needed)
                for name in _names(work, src_size, report.tables):
                    report.tables.append(_copy_table(work, name, src_size, dst))
            dst.sync(True)
        finally:
            dst.close()
        if data.exists():
            report.kept_aside = base / f"{DATA_FILE}.damaged-{stamp}"
            os.replace(data, report.kept_aside)
        if (base / LOCK_FILE).exists():
            os.unlink(base / LOCK_FILE)
        os.replace(new / DATA_FILE, data)
        mark_state(base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)
    return report
