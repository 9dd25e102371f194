# pflogsumm, the tool Postfix admins already run, must count a log our formatter wrote
# for a known mix of outcomes exactly: delivered, bounced, deferred, rejected, received.
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from policy.decide import Disposition
from policy.reply import Reply
from relay.config.load import LogConfig
from relay.observe.events import ConnectEvent, Event, MessageEvent, RecipientEvent
from relay.observe.logsink import LogWriter
from tests.support.pflog import pflogsumm_totals, require_pflogsumm

T0 = datetime(2026, 11, 22, 9, 0, 0)
REMOTE = "mx.example.com[192.0.2.1]"
REPLIES = {
    Disposition.DELIVERED: Reply(250, "2.0.0", "Ok: queued as 1234", REMOTE),
    Disposition.BOUNCED: Reply(550, "5.1.1", "User unknown", REMOTE),
    Disposition.QUEUED: Reply(451, "4.7.1", "Greylisted, try again", REMOTE),
    Disposition.DEFERRED: Reply(452, "4.2.2", "Mailbox full", REMOTE),
    Disposition.SUPPRESSED: Reply(550, "5.1.1", "suppressed since 2026-10-01: bad-mailbox"),
    Disposition.EXPIRED: Reply(451, "4.4.7", "message expired after 21 days"),
}

# (queue id, statuses of its recipients); the truth the test holds pflogsumm to.
MIX: list[tuple[str, list[Disposition]]] = [
    ("A1", [Disposition.DELIVERED, Disposition.DELIVERED, Disposition.BOUNCED]),
    ("A2", [Disposition.DELIVERED, Disposition.QUEUED, Disposition.SUPPRESSED]),
    (
        "A3",
        [Disposition.BOUNCED, Disposition.SUPPRESSED, Disposition.SUPPRESSED, Disposition.DEFERRED],
    ),
    ("A4", [Disposition.QUEUED, Disposition.QUEUED, Disposition.DELIVERED]),
    ("A5", [Disposition.EXPIRED, Disposition.DELIVERED]),
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
                    relay="none" if status is Disposition.SUPPRESSED else f"{REMOTE}:25",
                    stage="DATA" if status is Disposition.DELIVERED else "RCPT",
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
    assert totals["delivered"] == flat.count(Disposition.DELIVERED)
    assert totals["bounced"] == flat.count(Disposition.BOUNCED)
    assert totals["rejected"] == flat.count(Disposition.SUPPRESSED)
    soft = [qid for qid, st in MIX if Disposition.QUEUED in st or Disposition.DEFERRED in st]
    assert totals["deferred"] == len(soft)  # pflogsumm counts deferred *messages*
    assert totals["deferrals"] == flat.count(Disposition.QUEUED) + flat.count(Disposition.DEFERRED)
