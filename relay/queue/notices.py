# This module turns failed recipients into a delivery status notification queued to the
# sender, inside the caller's write transaction; what a DSN says is policy/dsn.py's.
"""The queue's non-delivery notifications (RFC 3464), composed and queued in one place.

A DSN is queued like any message (kind "dsn", origin the reported queue id) to
the original sender, due at once; a null sender gets none, so DSNs never bounce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import lmdb

from policy.decide import Disposition
from policy.dsn import DsnContext, FailedRecipient, compose_dsn, is_null_sender
from relay.config.schema import host_fqdn
from relay.queue.layout import QueueTables
from relay.queue.records import (
    QueuedRecipient,
    Settlement,
    new_envelope,
    new_rcpt_state,
)


@dataclass(frozen=True)
class DsnSettings:
    reporting_mta: str = field(default_factory=host_fqdn)  # [server] hostname's default
    dsn_from: str = ""  # default MAILER-DAEMON@reporting_mta

    @property
    def from_header(self) -> str:
        return self.dsn_from or f"MAILER-DAEMON@{self.reporting_mta}"


@dataclass(frozen=True)
class Report:
    """The message a DSN reports on, and its recipients that failed."""

    queue_id: str
    sender: str
    data: bytes
    arrived: datetime
    failed: list[FailedRecipient]


def failed_recipient(rec: QueuedRecipient, s: Settlement) -> FailedRecipient:
    """A recipient leaving the queue with a DSN, reported with its last remote reply."""
    last = rec.attempts[-1] if rec.attempts else None
    return FailedRecipient(
        s.recipient,
        last.reply if last else None,
        last.when if last else None,
        expired=s.disposition is Disposition.EXPIRED,
        note=s.note,
    )


def queue_dsn(
    tables: QueueTables,
    txn: lmdb.Transaction,
    settings: DsnSettings,
    new_id: Callable[[], str],
    report: Report,
    now: datetime,
) -> str | None:
    """Queue one DSN for `report` in `txn`; its queue id, or None when none is due."""
    if not report.failed or is_null_sender(report.sender):
        return None
    dsn_id = new_id()
    ctx = DsnContext(
        settings.reporting_mta,
        settings.from_header,
        report.queue_id,
        dsn_id,
        report.sender,
        report.arrived,
    )
    raw = compose_dsn(ctx, report.failed, report.data, now)
    if raw is None:
        return None
    envelope = new_envelope("", now, kind="dsn", origin=report.queue_id)
    tables.put_message(txn, dsn_id, envelope, raw)
    state = new_rcpt_state(report.sender, now, None, 0, [])
    tables.put_rcpt(txn, dsn_id, report.sender, state)
    return dsn_id
