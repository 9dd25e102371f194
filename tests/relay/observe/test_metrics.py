# The metrics subscriber on hand-built events: labels, latency rules, probes, health.
from __future__ import annotations

from datetime import datetime

import pytest

from policy.decide import Disposition
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict
from relay.observe.events import ConnectEvent, MessageEvent, RecipientEvent
from relay.observe.metrics import Metrics

WHEN = datetime(2026, 11, 22, 10, 0, 0)


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    v = m.registry.get_sample_value(name, labels)
    return None if v is None else float(v)


def _ev(**kw: object) -> RecipientEvent:
    base: dict[str, object] = {
        "queue_id": "Q",
        "recipient": "a@b.test",
        "status": Disposition.DELIVERED,
        "reply": Reply(250, "2.0.0", "ok", "mx[1.2.3.4]"),
        "when": WHEN,
        "relay": "mx[1.2.3.4]:25",
        "stage": "DATA",
        "delay": 0.2,
    }
    return RecipientEvent(**{**base, **kw})  # type: ignore[arg-type]


def test_counts_labels_and_latency() -> None:
    m = Metrics()
    m(_ev())
    hard = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "r")
    m(_ev(status=Disposition.BOUNCED, reply=Reply(550, "5.1.1", "no", "mx[1.2.3.4]"), verdict=hard,
          stage="RCPT", delays=(0.0, 0.0, 0.1, 0.05)))  # fmt: skip
    m(_ev(attempt=3, delay=7200.0))  # a retry without measured delays: no latency sample
    m(
        _ev(
            status=Disposition.SUPPRESSED,
            relay="none",
            reply=Reply(550, "5.1.1", "supp"),
            verdict=hard,
        )
    )
    m(MessageEvent("Q", "s@x", 10, 1, WHEN))
    m(ConnectEvent("c[1.1.1.1]", WHEN))
    m(ConnectEvent("c[1.1.1.1]", WHEN, disconnect=True))
    sent = {"status": "sent", "class": "delivered", "category": "delivered"}
    assert _value(m, "bouncer_recipients_total", **sent) == 2
    bounced = {"status": "bounced", "class": "hard", "category": "bad-mailbox"}
    assert _value(m, "bouncer_recipients_total", **bounced) == 1
    supp = {"status": "suppressed", "class": "hard", "category": "bad-mailbox"}
    assert _value(m, "bouncer_recipients_total", **supp) == 1
    assert _value(m, "bouncer_messages_total") == 1
    assert _value(m, "bouncer_connections_total") == 1
    assert _value(m, "bouncer_remote_reply_seconds_count", stage="DATA") == 1
    assert _value(m, "bouncer_remote_reply_seconds_sum", stage="DATA") == 0.2
    assert _value(m, "bouncer_remote_reply_seconds_sum", stage="RCPT") == pytest.approx(0.15)


def test_probes_and_health() -> None:
    m = Metrics()
    m.probes.probes["bouncer_queue_messages"] = lambda: 4
    m.probes.probes["bouncer_suppression_records"] = lambda: None  # not available: no sample

    def boom() -> float:
        raise RuntimeError("broken probe")

    m.probes.probes["bouncer_remote_sessions_open"] = boom
    text = m.exposition().decode()
    assert "bouncer_queue_messages 4.0" in text
    assert "bouncer_suppression_records" not in text and "bouncer_remote_sessions_open" not in text
    m.checks["store"] = lambda: True
    assert m.healthy()

    def failing() -> bool:
        raise OSError("lmdb")

    m.checks["listener"] = failing
    assert m.health() == {"store": True, "listener": False} and not m.healthy()
