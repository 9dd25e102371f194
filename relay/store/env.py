# This module opens the one shared LMDB environment; each user opens its own named DBs.
"""The one LMDB environment in the state directory, shared by the store, queue and counters.

Several processes (workers, the CLI beside a running server) may open it at
once: LMDB's lock file makes that safe. Each user opens its own named databases.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lmdb

from relay.store.integrity import StoreDamaged, check_state, mark_state

__all__ = ["MAX_NAMED_DBS", "StateError", "StoreDamaged", "open_state"]

log = logging.getLogger(__name__)

MAX_NAMED_DBS = 32


class StateError(Exception):
    """The state directory cannot be opened or written; callers answer 451 4.3.0."""


def open_state(path: str | Path, map_size: int, readonly: bool = False) -> lmdb.Environment:
    """Open (creating if needed) the LMDB environment at `path`.

    Raises StoreDamaged, before LMDB maps anything, when the data file is cut short,
    emptied or gone (relay/store/integrity.py); StateError when it cannot be opened.
    """
    check_state(path)
    try:
        if not readonly:
            os.makedirs(path, mode=0o750, exist_ok=True)
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=MAX_NAMED_DBS,
            readonly=readonly,
            # One write lock across processes; readers never wait for the writer.
            lock=True,
            # Many short-lived reader threads in the writer executor and the CLI.
            max_readers=512,
            metasync=True,
            sync=True,
        )
    except (lmdb.Error, OSError) as exc:
        raise StateError(f"cannot open state directory {path}: {exc}") from exc
    if not readonly:
        try:
            mark_state(path)
        except OSError as exc:  # a read-only directory: the store still works, unguarded
            log.warning("cannot write the state marker in %s: %s", path, exc)
    return env
