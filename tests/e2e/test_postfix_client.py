# In-transaction bouncing with a real MTA as the client: a private Postfix whose relayhost is a
# running `bouncer serve` gets the remote's 550 5.1.1 in-transaction and bounces at once
# (status=bounced, dsn=5.1.1, nothing deferred), while good mail is status=sent; plus swaks.
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.fake_mx import FakeMX
from tests.support.postfix import (
    SWAKS,
    PostfixInstance,
    missing_tools,
    postfix_instance,
    postfix_skip_reason,
    smtp_sink,
    smtp_source,
)
from tests.support.serve import BouncerProcess, bouncer_process
from tests.support.wait import until_sync

pytestmark = pytest.mark.postfix

DEAD_REPLY = "550 5.1.1 <dead@remote.test>: Recipient address rejected: User unknown"


@pytest.fixture
async def mx() -> AsyncIterator[FakeMX]:
    async with FakeMX() as server:
        server.rcpt_replies["dead@remote.test"] = DEAD_REPLY
        yield server


@pytest.fixture
async def bouncer(tmp_path: Path, mx: FakeMX) -> AsyncIterator[BouncerProcess]:
    # Every domain the test mails (and Postfix's own bounce to the sender) goes to the
    # fake MX: nothing may reach DNS or the internet.
    route = f"127.0.0.1:{mx.port}"
    table = {
        "policy": {"soft_bounce": "pass"},
        "delivery": {"routes": {"remote.test": route, "origin.test": route}},
    }
    with bouncer_process(tmp_path / "bouncer", table) as b:
        yield b
        # Stop it while our loop runs: its drain closes pooled sessions to the fake MX,
        # which answers on this loop (a blocking stop would wait out drain_timeout).
        await asyncio.to_thread(b.stop)


@pytest.fixture
def postfix(bouncer: BouncerProcess) -> Iterator[PostfixInstance]:
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    with postfix_instance(f"[127.0.0.1]:{bouncer.port}") as pf:
        yield pf


async def test_postfix_bounces_dead_address_at_once_and_sends_good_mail(
    postfix: PostfixInstance, bouncer: BouncerProcess, mx: FakeMX
) -> None:
    started = time.monotonic()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=postfix.port, start_tls=False) as c:
        errors, _ = await c.sendmail(
            "app@origin.test",
            ["good@remote.test", "dead@remote.test"],
            b"From: app@origin.test\r\nSubject: hello\r\n\r\nHello there.\r\n",
        )
    assert errors == {}  # Postfix itself accepted both: the verdict comes from bouncer

    bounced = await asyncio.to_thread(
        postfix.wait_log, r"to=<dead@remote\.test>,.*dsn=5\.1\.1, status=bounced \((.*)\)"
    )
    sent = await asyncio.to_thread(postfix.wait_log, r"to=<good@remote\.test>,.*status=sent")
    elapsed = time.monotonic() - started
    log = postfix.log_text()
    # At once: no retry cycle, well under Postfix's first queue run (300 s here).
    assert elapsed < 15, f"took {elapsed:.1f}s\n{log}"
    assert "status=deferred" not in log, log
    assert postfix.queue_ids_deferred() == []
    # The remote's own words, relayed by bouncer, reach Postfix's log.
    assert "User unknown" in bounced.group(1)
    assert f"relay=127.0.0.1[127.0.0.1]:{bouncer.port}" in sent.group(0)
    # The remote saw the message only for the good recipient.
    good = [m for m in mx.messages if "good@remote.test" in m.rcpt_tos]
    assert len(good) == 1 and good[0].rcpt_tos == ("good@remote.test",)
    assert b"Hello there." in good[0].data


async def _swaks(port: int, to: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        SWAKS, "--server", "127.0.0.1", "--port", str(port), "--from", "app@origin.test",
        "--to", to, "--helo", "client.test", "--timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_swaks_against_bouncer(bouncer: BouncerProcess, mx: FakeMX) -> None:
    if missing_tools(SWAKS):
        pytest.skip("swaks not installed")
    code, out = await _swaks(bouncer.port, "good@remote.test")
    assert code == 0, out
    assert "<-  250 2.0.0" in out
    code, out = await _swaks(bouncer.port, "dead@remote.test")
    # swaks exits 24 when the server refuses the recipient (swaks(1), EXIT CODES).
    assert code == 24, out
    assert "<** 550 5.1.1" in out and "User unknown" in out
    assert [m.rcpt_tos for m in mx.messages] == [("good@remote.test",)]


def test_harness_smtp_source_through_postfix_to_smtp_sink() -> None:
    """The harness itself: smtp-source -> private Postfix -> smtp-sink, all 20 sent."""
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    with smtp_sink() as sink, postfix_instance(f"[127.0.0.1]:{sink.port}") as pf:
        done = smtp_source(pf.port, messages=20, concurrency=2, size=1000)
        assert done.returncode == 0, done.stderr
        with contextlib.suppress(AssertionError):  # the count below says what was missing
            until_sync(lambda: pf.log_text().count("status=sent") >= 20, "20 sent", within=20)
        log = pf.log_text()
    assert log.count("status=sent") == 20, log
    assert f"relay=127.0.0.1[127.0.0.1]:{sink.port}" in log
