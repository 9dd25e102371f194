# Bounce-rate arithmetic (pure), the LMDB counters and `bouncer stats`.
from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from policy.decide import Disposition
from policy.rates import Counts, aggregate, increment, parse_since
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict
from relay.cli.main import main
from relay.cli.stats import render_table
from relay.observe.counters import StatsCounters, read_rows, read_stats
from relay.observe.events import ConnectEvent, RecipientEvent
from relay.store.env import open_state

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
V = {
    k: Verdict(k, c, "t")
    for k, c in [
        (BounceClass.DELIVERED, Category.DELIVERED),
        (BounceClass.HARD, Category.BAD_MAILBOX),
        (BounceClass.SOFT, Category.QUOTA_ISSUES),
        (BounceClass.BLOCK, Category.SPAM_RELATED),
        (BounceClass.UNDETERMINED, Category.OTHER),
    ]
}


def test_increment_counts_each_recipient_once_in_sent() -> None:
    assert increment("sent", BounceClass.DELIVERED) == Counts(sent=1, delivered=1)
    assert increment("bounced", BounceClass.HARD) == Counts(sent=1, hard=1)
    assert increment("queued", BounceClass.SOFT) == Counts(sent=1, soft=1)
    assert increment("bounced", BounceClass.BLOCK) == Counts(sent=1, block=1)
    # An undetermined refusal is a failure too (a domain that refused 100% once showed 0%).
    assert increment("bounced", BounceClass.UNDETERMINED) == Counts(sent=1, undetermined=1)
    assert increment("suppressed", BounceClass.HARD) == Counts(suppressed=1)
    # Retries: only late final results; the soft failure was counted at attempt 0.
    assert increment("queued", BounceClass.SOFT, "retry") == Counts()
    assert increment("expired", BounceClass.SOFT, "retry") == Counts(expired=1)
    assert increment("sent", BounceClass.DELIVERED, "retry") == Counts(delivered=1)
    assert increment("bounced", BounceClass.HARD, "retry") == Counts(hard=1)
    # Asynchronous reports: the recipient was counted in sent when it went out.
    assert increment("bounced", BounceClass.HARD, "report") == Counts(hard=1)
    assert increment("sent", BounceClass.DELIVERED, "report") == Counts()
    assert increment("suppressed", BounceClass.BLOCK, "report") == Counts(block=1)
    # Without a verdict the status word decides.
    assert increment("deferred", None) == Counts(sent=1, soft=1)
    assert increment("sent", None) == Counts(sent=1, delivered=1)
    assert increment("bounced", None) == Counts(sent=1, undetermined=1)  # unclassified


def test_rates_and_aggregation() -> None:
    c = Counts(sent=200, delivered=190, hard=4, soft=6)
    assert c.hard_rate == 0.02 and c.soft_rate == 0.03
    assert Counts(suppressed=3).hard_rate is None
    d1, d2 = date(2026, 11, 20), date(2026, 11, 21)
    rows = [
        (d1, "a.test", Counts(sent=1, hard=1)),
        (d2, "a.test", Counts(sent=3)),
        (d2, "b.test", Counts(sent=5, soft=1)),
        (date(2026, 11, 1), "old.test", Counts(sent=100)),
    ]
    assert aggregate(rows, "day", d1) == [
        ("2026-11-20", Counts(sent=1, hard=1)),
        ("2026-11-21", Counts(sent=8, soft=1)),
    ]
    assert aggregate(rows, "domain", d1) == [
        ("b.test", Counts(sent=5, soft=1)),
        ("a.test", Counts(sent=4, hard=1)),
    ]
    assert aggregate(rows, "total", d2) == [("total", Counts(sent=8, soft=1))]
    assert parse_since("7d", NOW) == date(2026, 11, 16)
    assert parse_since("1d", NOW) == date(2026, 11, 22)
    assert parse_since("2026-11-01", NOW) == date(2026, 11, 1)
    assert parse_since("2w", NOW) == date(2026, 11, 9)
    with pytest.raises(ValueError, match="at least 1d"):
        parse_since("0d", NOW)
    assert Counts.from_dict({"sent": 3, "extra": 9}) == Counts(sent=3)  # unknown keys ignored
    with pytest.raises(ValueError):
        parse_since("lately", NOW)


def _ev(
    rcpt: str,
    status: Disposition,
    klass: BounceClass,
    when: datetime,
    attempt: int = 0,
    stage: str = "RCPT",
) -> RecipientEvent:
    return RecipientEvent(
        queue_id="Q",
        recipient=rcpt,
        status=status,
        reply=Reply(250, None, "x"),
        when=when,
        verdict=V[klass],
        attempt=attempt,
        stage=stage,
    )


def _feed(path: Path) -> None:
    env = open_state(path, 1 << 24)
    counters = StatsCounters(env)
    yesterday = NOW - timedelta(days=1)
    counters(ConnectEvent("x[1.2.3.4]", NOW))  # ignored
    for i in range(8):
        counters(_ev(f"u{i}@Gmail.test", Disposition.DELIVERED, BounceClass.DELIVERED, NOW))
    counters(_ev("dead@gmail.test", Disposition.BOUNCED, BounceClass.HARD, NOW))
    counters(_ev("full@mail.test", Disposition.QUEUED, BounceClass.SOFT, NOW))
    counters(_ev("gone@mail.test", Disposition.SUPPRESSED, BounceClass.HARD, NOW))
    counters.flush()
    # A second batch adds to the stored numbers rather than replacing them.
    counters(_ev("old@mail.test", Disposition.BOUNCED, BounceClass.HARD, yesterday))
    counters(_ev("spam@mail.test", Disposition.BOUNCED, BounceClass.BLOCK, NOW))
    # A retry that finally bounces, and an asynchronous DSN read by the intake.
    counters(_ev("full@mail.test", Disposition.BOUNCED, BounceClass.HARD, NOW, attempt=4))
    counters(_ev("u1@gmail.test", Disposition.BOUNCED, BounceClass.HARD, NOW, stage="DSN"))
    counters.flush()
    env.close()


def test_counters_persist_in_lmdb(tmp_path: Path) -> None:
    _feed(tmp_path)
    env = open_state(tmp_path, 1 << 24, readonly=True)
    assert len(read_rows(env)) == 3
    by_domain = dict(read_stats(env, date(2026, 11, 22), "domain"))
    env.close()
    assert by_domain["gmail.test"] == Counts(sent=9, delivered=8, hard=2)
    assert by_domain["mail.test"] == Counts(sent=2, hard=1, soft=1, block=1, suppressed=1)


def test_stats_cli_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _feed(tmp_path / "state")
    conf = tmp_path / "b.toml"
    conf.write_text(f'[store]\npath = "{tmp_path / "state"}"\n')
    # --since is counted back from today's real date; our rows are dated 2026-11-2x.
    since, until = "2026-11-21", "2026-11-22"
    argv = ["stats", "--config", str(conf), "--since", since, "--until", until]
    assert main([*argv, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in doc["rows"]] == ["2026-11-21", "2026-11-22"]
    today = doc["rows"][1]
    assert (today["sent"], today["hard"], today["soft"], today["suppressed"]) == (11, 3, 1, 1)
    assert today["hard_rate"] == pytest.approx(3 / 11)
    assert main([*argv, "--by", "domain"]) == 0
    out = capsys.readouterr().out
    assert "gmail.test" in out and "22.22%" in out  # 2 hard of 9 sent at gmail.test
    assert main(["stats", "--config", str(conf), "--since", "soon"]) == 2


def test_table_shows_dash_for_no_traffic() -> None:
    table = render_table([("x.test", Counts(suppressed=2))], "domain")
    row = table.splitlines()[1].split()
    assert row == ["x.test", "0", "0", "0", "0", "0", "0", "0", "2", "0", "0", "-", "-", "-"]
