# This module writes the event log; the words of each line come from relay/observe/logfmt.py.
"""The event-log subscriber: stderr (or journald's native socket) and an optional file.

Under systemd, stderr is a journald stream and journald would stamp every line
with one identifier ("bouncer[PID]"), so Postfix tools could no longer tell an
smtpd line from an smtp line. When $JOURNAL_STREAM names our stderr, entries
go to journald's native socket instead, each with Postfix's own identifier
(SYSLOG_IDENTIFIER=bouncer/smtp, facility mail), so `journalctl -o short` and
the syslog daemon reading the journal print exactly Postfix-shaped lines.
Elsewhere, stderr gets the complete line with timestamp and host.

Writes are plain buffered writes without fsync: a log is for reading, and the
event loop must not wait for the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import IO

from relay.config.load import LogConfig
from relay.observe.events import Event, EventBus
from relay.observe.logfmt import PROGRAM, format_lines, json_line, postfix_messages

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_SYSLOG_FACILITY_MAIL = 2  # RFC 5424 §6.2.1: facility 2 is the mail system
_PRIORITY_INFO = 6


def short_hostname() -> str:
    """The host field of a syslog line: the first label, as syslog daemons write it."""
    return socket.gethostname().split(".")[0] or "localhost"


def stderr_is_journal(stream: IO[str], env: dict[str, str] | None = None) -> bool:
    """True when $JOURNAL_STREAM ("dev:inode") is the file behind `stream` (systemd.exec(5))."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class LogWriter:
    """Subscribes to the EventBus and writes each event's line(s).

    Also a Service component (`start`/`stop`), and `reconfigure` applies a
    reloaded `[log]` section: a new format, or a new or rotated file (reopened).
    """

    def __init__(
        self,
        cfg: LogConfig,
        *,
        host: str | None = None,
        pid: int | None = None,
        stderr: IO[str] | None = None,
        journal_socket: str | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.events = events
        self.host = host or short_hostname()
        self.pid = pid if pid is not None else os.getpid()
        self.stderr = stderr if stderr is not None else sys.stderr
        self.cfg = cfg
        self._file: IO[str] | None = None
        self._file_failing = False
        self._journal: socket.socket | None = None
        self._journal_path = journal_socket
        if journal_socket is None and stderr is None and stderr_is_journal(self.stderr):
            self._journal_path = JOURNAL_SOCKET
        if self._journal_path:
            self._journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._open_file(cfg.file)

    def _open_file(self, path: str) -> None:
        # Line-buffered append: each line reaches the kernel at once, readable by `tail -f`.
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None

    def reconfigure(self, cfg: LogConfig) -> None:
        """Apply a reloaded [log] section; the file is reopened (after logrotate moved it)."""
        old = self._file
        try:
            self._open_file(cfg.file)
        except OSError as exc:
            log.error("log file %s cannot be opened, keeping the old one: %s", cfg.file, exc)
            return
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        self.cfg = cfg

    def __call__(self, event: Event) -> None:
        lines = format_lines(event, self.cfg.format, self.host, self.pid)
        if self._file is not None:
            try:
                self._file.write("".join(line + "\n" for line in lines))
                self._file_failing = False
            except OSError as exc:  # disk full: say so once, keep logging to stderr/journald
                if not self._file_failing:
                    log.error("cannot write the log file %s: %s", self.cfg.file, exc)
                self._file_failing = True
        if self._journal is not None and self._journal_path:
            try:
                self._send_journal(event)
                return
            except OSError as exc:  # journald restarting: fall back to the stream
                log.debug("journal socket failed: %s", exc)
        self.stderr.write("".join(line + "\n" for line in lines))
        self.stderr.flush()

    def _send_journal(self, event: Event) -> None:
        assert self._journal is not None and self._journal_path
        if self.cfg.format == "json":
            entries = [(PROGRAM, json_line(event, self.host, self.pid))]
        else:
            entries = [(f"{PROGRAM}/{prog}", text) for prog, text in postfix_messages(event)]
        for ident, message in entries:
            # Native protocol: KEY=value lines; values here never hold a newline.
            datagram = (
                f"MESSAGE={message}\nSYSLOG_IDENTIFIER={ident}\nSYSLOG_PID={self.pid}\n"
                f"SYSLOG_FACILITY={_SYSLOG_FACILITY_MAIL}\nPRIORITY={_PRIORITY_INFO}\n"
            )
            self._journal.sendto(datagram.encode("utf-8"), self._journal_path)

    async def start(self) -> None:
        if self.events is not None:
            self.events.subscribe(self)

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # the final flush may hit the same full disk
                self._file.close()
            self._file = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
