# This module looks at the state directory's files before LMDB maps them; it reads a few
# bytes and never opens LMDB, so a damaged file is a message here, not a SIGBUS later.
"""Is the LMDB data file whole? Checked on every open of the state directory.

LMDB maps ``data.mdb`` into memory and trusts it: a file cut short makes the
first read of a page past its end a SIGBUS (no exception, no message, a systemd
restart loop), and an emptied file is taken for a new environment, silently
forgetting every suppression and every queued message. So before mapping it we
compare the file with LMDB's own record of its size: the two meta pages at the
start of ``data.mdb`` (lmdb.h/mdb.c, ``MDB_meta``) hold the page size and the
last page used; the file must be at least ``(last_pg + 1) * page_size`` bytes.

A marker file beside it (``MARKER``), written once the environment has opened
whole, tells an existing store that was emptied or removed from a first start.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
MARKER = "bouncer-state"  # "this directory holds a bouncer store": written after an open
MARKER_TEXT = (
    "bouncer keeps its state (suppressions, queue, counters) in data.mdb here.\n"
    "While this file exists, a missing or empty data.mdb is damage, not a first start.\n"
)

EXIT_DAMAGED = 4  # `bouncer serve` and the CLI: the state store is damaged (systemd: no restart)

# MDB_meta after the 16-byte page header (mdb.c, 64-bit builds): magic and version (u32
# each), mm_address and mm_mapsize (8 each), two MDB_db of 48 bytes (the first one's
# md_pad is the page size), then mm_last_pg and mm_txnid (8 each).
_PAGE_HEADER = 16
_MAGIC = 0xBEEFC0DE
_MAGIC_AT = _PAGE_HEADER
_PSIZE_AT = _PAGE_HEADER + 24
_LAST_PG_AT = _PAGE_HEADER + 24 + 2 * 48
_META_BYTES = _LAST_PG_AT + 16
_U32 = struct.Struct("=I")
_LAST_TXN = struct.Struct("=QQ")


class StoreDamaged(Exception):
    """The state store's data file is damaged: bouncer must not start on it (exit 4)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"state store {path} is damaged: {problem}. bouncer will not start on it, "
            "since that would lose every suppression and queued message (or crash). "
            "Restore the state directory from a backup, or run `bouncer store repair` "
            "(with bouncer stopped) to salvage the readable records into a new store "
            "and keep the damaged file aside; `bouncer store check` says what is readable."
        )


@dataclass(frozen=True)
class Meta:
    """What LMDB's newest meta page says about the data file."""

    page_size: int
    last_page: int
    txnid: int

    @property
    def needed(self) -> int:
        """The least size the data file can have: every page up to the last one used."""
        return (self.last_page + 1) * self.page_size


def read_meta(head: bytes) -> Meta | None:
    """The newer of the two meta pages in `head` (the file's first two pages), or None."""
    if len(head) < _META_BYTES or _U32.unpack_from(head, _MAGIC_AT)[0] != _MAGIC:
        return None
    page_size = _U32.unpack_from(head, _PSIZE_AT)[0]
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return None
    metas = []
    for off in (0, page_size):
        if len(head) < off + _META_BYTES or _U32.unpack_from(head, off + _MAGIC_AT)[0] != _MAGIC:
            continue
        last, txnid = _LAST_TXN.unpack_from(head, off + _LAST_PG_AT)
        metas.append(Meta(page_size, last, txnid))
    return max(metas, key=lambda m: m.txnid) if metas else None


def problem_of(path: str | Path) -> str | None:
    """What is wrong with the state directory's data file, or None when it looks whole.

    A directory with neither the data file nor the marker is a first start.
    """
    base = Path(path)
    data = base / DATA_FILE
    known = (base / MARKER).exists()
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        return f"{DATA_FILE} is missing although {MARKER} says a store was here" if known else None
    if size == 0:
        # Without the marker this is a first start (LMDB writes its meta pages while
        # another worker may be looking): only a store known to exist can be emptied.
        return f"{DATA_FILE} is empty (0 bytes)" if known else None
    with open(data, "rb") as f:
        head = f.read(2 * 65536)
        # The size after the meta: a server writing meanwhile writes its pages before the
        # meta page that names them, so a size read first could look short (a false alarm).
        size = os.fstat(f.fileno()).st_size
    meta = read_meta(head)
    if meta is None:
        if not known:
            return None  # being created, or not LMDB at all: lmdb.open says which
        return f"{DATA_FILE} ({size} bytes) does not start with LMDB meta pages"
    if size < 2 * meta.page_size:
        return f"{DATA_FILE} is {size} bytes, shorter than its two meta pages"
    if size < meta.needed:
        return (
            f"{DATA_FILE} is {size} bytes but LMDB's meta page says it holds "
            f"{meta.last_page + 1} pages of {meta.page_size} bytes ({meta.needed} bytes): "
            "the file was cut short"
        )
    return None


def check_state(path: str | Path) -> None:
    """Raise StoreDamaged when the data file at `path` must not be opened."""
    problem = problem_of(path)
    if problem is not None:
        raise StoreDamaged(Path(path) / DATA_FILE, problem)


def mark_state(path: str | Path) -> None:
    """Record that `path` holds a store (after a whole open); a no-op once written."""
    marker = Path(path) / MARKER
    if marker.exists():
        return
    tmp = marker.with_name(MARKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(MARKER_TEXT)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
