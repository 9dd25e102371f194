# A real Postfix delivering to bouncer over LMTP (default_transport = lmtp:inet:...): one message
# to three recipients on two remotes, one refusing after DATA. Postfix logs each recipient's own
# verdict at once (status=sent, status=bounced with the remote's dsn), and bouncer sends no DSN.
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.fake_mx import FakeMX, ReceivedMessage
from tests.support.postfix import (
    PostfixInstance,
    free_port,
    postfix_instance,
    postfix_skip_reason,
    wait_port,
)
from tests.support.serve import BouncerProcess, bouncer_process
from tests.support.wait import until

pytestmark = pytest.mark.postfix

REFUSED = "554 5.7.1 Message rejected: looks like spam"


@pytest.fixture
async def remotes() -> AsyncIterator[tuple[FakeMX, FakeMX]]:
    async with FakeMX() as good, FakeMX(data_reply=REFUSED) as bad:
        yield good, bad


@pytest.fixture
async def bouncer(
    tmp_path: Path, remotes: tuple[FakeMX, FakeMX]
) -> AsyncIterator[tuple[BouncerProcess, int]]:
    good, bad = remotes
    lmtp_port = free_port()
    table = {
        "server": {"lmtp_listen": [f"127.0.0.1:{lmtp_port}"]},
        # Postfix's own bounce to the sender (origin.test) goes to the good remote too:
        # nothing may reach DNS or the internet.
        "delivery": {
            "routes": {
                "one.test": good.address,
                "two.test": bad.address,
                "origin.test": good.address,
            }
        },
    }
    with bouncer_process(tmp_path / "bouncer", table) as b:
        await asyncio.to_thread(wait_port, "127.0.0.1", lmtp_port)
        yield b, lmtp_port
        await asyncio.to_thread(b.stop)  # drain while our loop serves the fake remotes


@pytest.fixture
def postfix(bouncer: tuple[BouncerProcess, int]) -> Iterator[PostfixInstance]:
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    _, lmtp_port = bouncer
    # The README's main.cf lines; relayhost is unused once every domain goes over LMTP.
    extra = {
        "default_transport": f"lmtp:inet:127.0.0.1:{lmtp_port}",
    }
    with postfix_instance("", **extra) as pf:
        yield pf


async def test_postfix_over_lmtp_logs_each_recipients_verdict_and_bouncer_sends_no_dsn(
    postfix: PostfixInstance, bouncer: tuple[BouncerProcess, int], remotes: tuple[FakeMX, FakeMX]
) -> None:
    b, lmtp_port = bouncer
    good, bad = remotes
    started = time.monotonic()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=postfix.port, start_tls=False) as c:
        errors, _ = await c.sendmail(
            "app@origin.test",
            ["a@one.test", "c@two.test", "b@one.test"],
            b"From: app@origin.test\r\nSubject: hello\r\n\r\nHello there.\r\n",
        )
    assert errors == {}  # Postfix accepted all three: the verdicts come from bouncer

    bounced = await asyncio.to_thread(
        postfix.wait_log, r"to=<c@two\.test>,.*dsn=5\.7\.1, status=bounced \((.*)\)"
    )
    sent = [
        await asyncio.to_thread(postfix.wait_log, rf"to=<{r}>,.*status=sent \((.*)\)")
        for r in (r"a@one\.test", r"b@one\.test")
    ]
    elapsed = time.monotonic() - started
    log = postfix.log_text()
    assert elapsed < 15, f"took {elapsed:.1f}s\n{log}"  # at once: no retry cycle
    assert "status=deferred" not in log, log
    assert postfix.queue_ids_deferred() == []
    # Over LMTP, from bouncer's listener, with the remote's own words for the refused one.
    relay = f"relay=127.0.0.1[127.0.0.1]:{lmtp_port}"
    assert relay in bounced.group(0) and all(relay in m.group(0) for m in sent), log
    assert "host 127.0.0.1[127.0.0.1] said: Message rejected: looks like spam" in bounced.group(1)
    assert all("Ok: queued as " in m.group(1) for m in sent)
    # The good remote got the message once, for both its recipients; the bad one kept nothing.
    mine = [m for m in good.messages if m.mail_from == "app@origin.test"]
    assert [m.rcpt_tos for m in mine] == [("a@one.test", "b@one.test")]
    assert bad.messages == []
    # Postfix bounced c@two.test itself: its notice to app@origin.test, sent through bouncer.
    await until(lambda: _notices(good), "Postfix's bounce notice at the remote", within=15)
    notices = _notices(good)
    assert len(notices) == 1 and b"postfix.bouncer.test" in notices[0].data
    assert b"with LMTP" in notices[0].data  # Postfix's, relayed, not one bouncer made
    # bouncer made no DSN of its own: it logged c@two.test bounced, and its queue is empty.
    assert "to=<c@two.test>" in b.log_text()
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", "queue", "list", "--config", str(b.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.stdout.strip() == "Mail queue is empty", listed


def _notices(mx: FakeMX) -> list[ReceivedMessage]:
    return [m for m in mx.messages if m.rcpt_tos == ("app@origin.test",)]
