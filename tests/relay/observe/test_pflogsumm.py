# pflogsumm, the tool Postfix admins already run, must count a log our formatter wrote
# for a known mix of outcomes exactly: delivered, bounced, deferred, rejected, received.
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from policy.reply import Reply
from relay.config.load import LogConfig
from relay.observe.events import ConnectEvent, Event, MessageEvent, RecipientEvent, Status
from relay.observe.logsink import LogWriter
from tests.support.pflog import pflogsumm_totals, require_pflogsumm

T0 = datetime(2026, 11, 22, 9, 0, 0)
REMOTE = "mx.example.com[192.0.2.1]"
REPLIES = {
    Status.SENT: Reply(250, "2.0.0", "Ok: queued as 1234", REMOTE),
    Status.BOUNCED: Reply(550, "5.1.1", "User unknown", REMOTE),
    Status.QUEUED: Reply(451, "4.7.1", "Greylisted, try again", REMOTE),
    Status.DEFERRED: Reply(452, "4.2.2", "Mailbox full", REMOTE),
    Status.SUPPRESSED: Reply(550, "5.1.1", "suppressed since 2026-10-01: bad-mailbox"),
    Status.EXPIRED: Reply(451, "4.4.7", "message expired after 21 days"),
}

# (queue id, statuses of its recipients); the truth the test holds pflogsumm to.
MIX: list[tuple[str, list[Status]]] = [
    ("A1", [Status.SENT, Status.SENT, Status.BOUNCED]),
    ("A2", [Status.SENT, Status.QUEUED, Status.SUPPRESSED]),
    ("A3", [Status.BOUNCED, Status.SUPPRESSED, Status.SUPPRESSED, Status.DEFERRED]),
    ("A4", [Status.QUEUED, Status.QUEUED, Status.SENT]),
    ("A5", [Status.EXPIRED, Status.SENT]),
]


def _events() -> list[Event]:
    events: list[Event] = []
    t = T0
    for qid, statuses in MIX:
        t += timedelta(seconds=7)
        events.append(ConnectEvent("app.local[127.0.0.1]", t))
        for i, status in enumerate(statuses):
            events.append(
                RecipientEvent(
                    queue_id=qid,
                    recipient=f"r{i}@dest{i % 2}.test",
                    status=status,
                    reply=REPLIES[status],
                    when=t,
                    relay="none" if status is Status.SUPPRESSED else f"{REMOTE}:25",
                    stage="DATA" if status is Status.SENT else "RCPT",
                    delay=0.3,
                    delays=(0.01, 0.0, 0.1, 0.19),
                    sender="app@example.org",
                    client="app.local[127.0.0.1]",
                )
            )
        events.append(
            MessageEvent(qid, "app@example.org", 1000, len(statuses), t, "app.local[127.0.0.1]")
        )
        events.append(ConnectEvent("app.local[127.0.0.1]", t, disconnect=True))
    return events


def test_pflogsumm_counts_a_known_mix(tmp_path: Path) -> None:
    require_pflogsumm()
    log = tmp_path / "mail.log"
    with open(tmp_path / "stderr", "w") as stderr:
        writer = LogWriter(LogConfig(file=str(log)), host="relay1", pid=4242, stderr=stderr)
        for event in _events():
            writer(event)
        writer.close()

    flat = [s for _, statuses in MIX for s in statuses]
    totals = pflogsumm_totals(log)
    assert totals["received"] == len(MIX)
    assert totals["delivered"] == flat.count(Status.SENT)
    assert totals["bounced"] == flat.count(Status.BOUNCED)
    assert totals["rejected"] == flat.count(Status.SUPPRESSED)
    soft = [qid for qid, st in MIX if Status.QUEUED in st or Status.DEFERRED in st]
    assert totals["deferred"] == len(soft)  # pflogsumm counts deferred *messages*
    assert totals["deferrals"] == flat.count(Status.QUEUED) + flat.count(Status.DEFERRED)
