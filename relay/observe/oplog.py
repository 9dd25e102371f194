# An operator's action (queue drop/hold/release, suppression add/remove/lift) as a line in
# the mail log. It formats nothing itself (relay/observe/logfmt.py) and decides nothing.
"""Operator actions in the mail log: who did what, to which message or address, and why.

The CLI runs in its own process, so it writes the line itself, to the places the
server's log sink writes to: `[log] file` (appended, as the server appends) and,
where journald runs, its native socket with Postfix's identifiers (the same as a
server under systemd), so `/var/log/mail.log` through rsyslog gets it too. With
neither, the line goes to stderr, the operator's terminal. Postfix's postsuper
does the same: it logs its own `QUEUEID: removed` lines through syslog. Writing
in the CLI rather than routing the action through the server means the record
exists even when the server is stopped, which is when operators often act.

The API runs inside the server: it emits the same AdminEvent on the service's
event bus, and the server's log sink writes it.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from relay.config.load import LogConfig
from relay.observe.events import AdminEvent
from relay.observe.logsink import JOURNAL_SOCKET, LogWriter

QUEUE = "postsuper"  # Postfix's program for queue operations
SUPPRESSION = "suppression"


def operator() -> str:
    """The Unix user running the CLI; under sudo, also who called sudo."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    sudo = os.environ.get("SUDO_USER", "")
    return f"{user}, sudo_user={sudo}" if sudo and sudo != user else user


def action(
    program: str, subject: str, what: str, why: str, details: Iterable[tuple[str, str]] = ()
) -> AdminEvent:
    """An AdminEvent done by the operator running this process, now."""
    return AdminEvent(program, subject, what, operator(), why, datetime.now(UTC), tuple(details))


def record(cfg: LogConfig, events: Iterable[AdminEvent], journal: str | None = None) -> None:
    """Write `events` where the server's log goes (see the module docstring)."""
    path = journal if journal is not None else JOURNAL_SOCKET
    socket_path = path if os.path.exists(path) else ""
    try:
        writer = LogWriter(cfg, journal_socket=socket_path)
    except OSError as exc:  # e.g. not allowed to append to [log] file: say so, log the rest
        print(f"bouncer: cannot append to {cfg.file}: {exc.strerror}", file=sys.stderr)
        writer = LogWriter(dataclasses.replace(cfg, file=""), journal_socket=socket_path)
    try:
        for event in events:
            writer(event)
    finally:
        writer.close()
