# The log formats, checked on event records built by hand (no server needed).
from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policy.decide import Disposition
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict
from relay.config.load import LogConfig
from relay.observe.events import ConnectEvent, MessageEvent, RecipientEvent
from relay.observe.logfmt import format_lines, postfix_delay, postfix_lines, syslog_time
from relay.observe.logsink import LogWriter, stderr_is_journal

WHEN = datetime(2026, 11, 22, 10, 15, 1)  # naive: printed as is
HARD = Verdict(BounceClass.HARD, Category.BAD_MAILBOX, "x.1.1")


def _bounce() -> RecipientEvent:
    return RecipientEvent(
        queue_id="3F2A1B9C",
        recipient="bob@example.com",
        status=Disposition.BOUNCED,
        reply=Reply(550, "5.1.1", "User unknown", "mx.example.com[192.0.2.1]"),
        when=WHEN,
        relay="mx.example.com[192.0.2.1]:25",
        stage="RCPT",
        delay=0.41,
        delays=(0.0, 0.0, 0.2, 0.21),
        verdict=HARD,
        sender="app@example.org",
    )


def test_bounced_line_is_the_issue_example() -> None:
    (line,) = postfix_lines(_bounce(), "host", 1234)
    assert line == (
        "Nov 22 10:15:01 host bouncer/smtp[1234]: 3F2A1B9C: to=<bob@example.com>, "
        "relay=mx.example.com[192.0.2.1]:25, delay=0.41, delays=0/0/0.2/0.21, dsn=5.1.1, "
        "status=bounced (host mx.example.com[192.0.2.1] said: 550 5.1.1 User unknown "
        "(in reply to RCPT TO command))"
    )


def test_each_status_maps_to_postfix_words() -> None:
    base = _bounce()
    soft = Reply(452, "4.2.2", "Mailbox full", "mx.example.com[192.0.2.1]")

    def line(**kw: object) -> str:
        ev = RecipientEvent(**{**base.__dict__, **kw})
        return postfix_lines(ev, "h", 1)[0]

    sent = line(
        status=Disposition.DELIVERED, reply=Reply(250, "2.0.0", "Ok", "mx[1.2.3.4]"), stage="DATA"
    )
    assert "bouncer/smtp[1]: 3F2A1B9C: to=<bob@example.com>," in sent
    assert sent.endswith(
        "status=sent (host mx[1.2.3.4] said: 250 2.0.0 Ok (in reply to end of DATA command))"
    )
    queued = line(status=Disposition.QUEUED, reply=soft)
    assert ", dsn=4.2.2, status=deferred (queued for retry by bouncer: host " in queued
    assert ", status=deferred (returned to the client: " in line(
        status=Disposition.DEFERRED, reply=soft
    )
    expired = line(status=Disposition.EXPIRED, reply=soft, attempt=9)
    assert "bouncer/qmgr[1]:" in expired and "status=expired, returned to sender (" in expired
    refusal = Reply(550, "5.1.1", "suppressed since 2026-01-02: bad-mailbox")
    supp = line(status=Disposition.SUPPRESSED, reply=refusal, client="app.local[127.0.0.1]")
    assert supp == (
        "Nov 22 10:15:01 h bouncer/smtpd[1]: 3F2A1B9C: reject: RCPT from app.local[127.0.0.1]: "
        "550 5.1.1 suppressed since 2026-01-02: bad-mailbox; from=<app@example.org> "
        "to=<bob@example.com> proto=ESMTP status=suppressed"
    )
    # A queue id pflogsumm's \w+ cannot read is logged as Postfix's NOQUEUE.
    assert ": NOQUEUE: reject: RCPT from unknown[unknown]:" in line(
        status=Disposition.SUPPRESSED, reply=refusal, queue_id="a-b"
    )


def test_no_remote_reply_and_connect_stage() -> None:
    ev = RecipientEvent(
        queue_id="Q1",
        recipient="x@nowhere.test",
        status=Disposition.BOUNCED,
        reply=Reply(550, "5.1.2", "Domain nowhere.test does not exist"),
        when=WHEN,
    )
    assert postfix_lines(ev, "h", 1)[0].endswith(
        "relay=none, delay=0, delays=0/0/0/0, dsn=5.1.2, "
        "status=bounced (550 5.1.2 Domain nowhere.test does not exist)"
    )
    conn = RecipientEvent(
        queue_id="Q1",
        recipient="x@slow.test",
        status=Disposition.QUEUED,
        reply=Reply(451, "4.4.1", "Connection refused", "mx.slow.test[192.0.2.9]"),
        when=WHEN,
        stage="connect",
    )
    assert (
        "(queued for retry by bouncer: connect to mx.slow.test[192.0.2.9]: 451 4.4.1"
        in (postfix_lines(conn, "h", 1)[0])
    )


def test_remote_text_cannot_split_the_line() -> None:
    ev = RecipientEvent(
        queue_id="Q2",
        recipient="a@b.test",
        status=Disposition.BOUNCED,
        reply=Reply(550, None, "line one\nline two\r\nFAKE: to=<x>", "mx[1.1.1.1]"),
        when=WHEN,
    )
    for fmt in ("postfix", "json"):
        (line,) = format_lines(ev, fmt, "h", 1)
        assert "\n" not in line and "\r" not in line
    assert ", dsn=5.0.0, " in format_lines(ev, "postfix", "h", 1)[0]


def test_message_and_connect_lines() -> None:
    msg = MessageEvent("Q3", "", 1234, 2, WHEN, client="app[127.0.0.1]", message_id="<m@x>")
    assert postfix_lines(msg, "h", 7) == [
        "Nov 22 10:15:01 h bouncer/smtpd[7]: Q3: client=app[127.0.0.1]",
        "Nov 22 10:15:01 h bouncer/cleanup[7]: Q3: message-id=<m@x>",
        "Nov 22 10:15:01 h bouncer/qmgr[7]: Q3: from=<>, size=1234, nrcpt=2 (queue active)",
    ]
    assert postfix_lines(ConnectEvent("app[127.0.0.1]", WHEN), "h", 7) == [
        "Nov 22 10:15:01 h bouncer/smtpd[7]: connect from app[127.0.0.1]"
    ]
    assert postfix_lines(ConnectEvent("app[127.0.0.1]", WHEN, disconnect=True), "h", 7)[0].endswith(
        "disconnect from app[127.0.0.1]"
    )


def test_json_has_the_same_facts_plus_class_and_category() -> None:
    (line,) = format_lines(_bounce(), "json", "host", 1234)
    rec = json.loads(line)
    assert rec["status"] == "bounced" and rec["class"] == "hard"
    assert rec["category"] == "bad-mailbox" and rec["rule"] == "x.1.1"
    assert rec["recipient"] == "bob@example.com" and rec["queue_id"] == "3F2A1B9C"
    assert rec["relay"] == "mx.example.com[192.0.2.1]:25" and rec["dsn"] == "5.1.1"
    assert rec["reply"] == {"code": 550, "enhanced": "5.1.1", "text": "User unknown"}
    assert rec["program"] == "bouncer/smtp" and rec["delays"] == [0.0, 0.0, 0.2, 0.21]
    sent = RecipientEvent(
        **{
            **_bounce().__dict__,
            "status": Disposition.DELIVERED,
            "verdict": None,
            "reply": Reply(250, None, "ok"),
        }
    )
    rec = json.loads(format_lines(sent, "json", "h", 1)[0])
    assert (rec["class"], rec["category"], rec["dsn"]) == ("delivered", "delivered", "2.0.0")
    queued = RecipientEvent(**{**_bounce().__dict__, "status": Disposition.QUEUED})
    assert json.loads(format_lines(queued, "json", "h", 1)[0])["status"] == "queued"


def test_delay_precision_and_timestamp() -> None:
    assert [postfix_delay(x) for x in (0, 0.004, 0.41, 1.2, 12.34, 123.4)] == [
        "0", "0", "0.41", "1.2", "12.3", "123",
    ]  # fmt: skip
    assert syslog_time(datetime(2026, 3, 2, 4, 5, 6)) == "Mar  2 04:05:06"
    aware = datetime(2026, 3, 2, 4, 5, 6, tzinfo=UTC)
    assert syslog_time(aware) == syslog_time(aware.astimezone().replace(tzinfo=None))


def test_writer_writes_file_and_stream_and_reopens(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    path = tmp_path / "mail.log"
    writer = LogWriter(LogConfig(file=str(path)), host="h", pid=9, stderr=stream)
    writer(_bounce())
    assert "bouncer/smtp[9]: 3F2A1B9C: to=<bob@example.com>" in stream.getvalue()
    assert path.read_text().count("\n") == 1
    path.rename(tmp_path / "mail.log.1")  # logrotate
    writer.reconfigure(LogConfig(file=str(path), format="json"))
    writer(_bounce())
    assert json.loads(path.read_text())["status"] == "bounced"
    writer.close()


def test_journald_native_entries_carry_postfix_identifiers(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    import io

    stream = io.StringIO()
    writer = LogWriter(LogConfig(), host="h", pid=9, stderr=stream, journal_socket=sock_path)
    writer(_bounce())
    fields = dict(ln.split("=", 1) for ln in server.recv(65536).decode().splitlines())
    assert fields["SYSLOG_IDENTIFIER"] == "bouncer/smtp" and fields["SYSLOG_FACILITY"] == "2"
    assert fields["MESSAGE"].startswith("3F2A1B9C: to=<bob@example.com>, relay=")
    assert stream.getvalue() == ""  # not twice
    writer.close()
    server.close()


def test_journal_stream_detection(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as fh:
        st = os.fstat(fh.fileno())
        assert stderr_is_journal(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(fh, {})


def test_intake_reports_log_as_intake_and_complaints_are_not_rejects() -> None:
    dsn = RecipientEvent(**{**_bounce().__dict__, "stage": "DSN", "relay": "mx.example.com"})
    line = postfix_lines(dsn, "h", 1)[0]
    assert "bouncer/intake[1]: 3F2A1B9C: to=<bob@example.com>, relay=mx.example.com," in line
    assert ", status=bounced (" in line
    arf = RecipientEvent(
        **{**_bounce().__dict__, "stage": "ARF", "status": Disposition.SUPPRESSED, "relay": "none"}
    )
    line = postfix_lines(arf, "h", 1)[0]
    assert " reject: " not in line and ", status=suppressed (complaint: " in line


def test_a_full_disk_does_not_stop_the_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to simulate a full disk")
    stream = io.StringIO()
    writer = LogWriter(LogConfig(file="/dev/full"), host="h", pid=9, stderr=stream)
    with caplog.at_level("ERROR", logger="relay.observe.logsink"):
        writer(_bounce())
        writer(_bounce())
    assert stream.getvalue().count("status=bounced") == 2
    assert caplog.text.count("cannot write the log file") == 1
    writer.close()
