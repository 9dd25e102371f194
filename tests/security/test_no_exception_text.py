# No reply carries Python exception text. aiosmtpd answers an error no
# hook handled with "500 Error: (ExcName) text"; bouncer's handler answers 451 4.3.0 and
# logs it with the queue id instead, and path parsing refuses bytes that are not UTF-8 or
# are control characters (501 5.1.3 at RCPT, 553 5.1.3 at MAIL) before the stdlib header
# parser can trip over them. The fuzz test sends raw bytes to a real `bouncer serve`
# (uvloop, as in production) from an allowed client and from one that may not relay.
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.inbound.server import InboundHandler
from relay.service import Service
from tests.support.postfix import free_port
from tests.support.rawsmtp import LineClient, RawClient
from tests.support.serve import BouncerProcess, bouncer_process

# What exception text looks like in a reply: aiosmtpd's format, a class name, a traceback.
LEAK = re.compile(
    r"Error: \(|Traceback|\b[A-Z]\w*(?:Error|Exception|Defect)\b|object has no attribute"
    r"|codec can't|surrogates"
)
NOT_US = ["10.99.0.0/16"]  # the test client (127.0.0.1) may not relay


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed", "outsider"])
@pytest.mark.parametrize(
    ("lines", "code", "enhanced"),
    [
        ([b"MAIL FROM:<a@[300\x00>"], 553, "5.1.3"),
        ([b"MAIL FROM:<a@[300\x00.1.2.3]>"], 553, "5.1.3"),
        ([b"MAIL FROM:<\xff@sender.test>"], 553, "5.1.3"),
        ([b"MAIL FROM:<a\xc3@sender.test> SMTPUTF8"], 553, "5.1.3"),
        ([b"MAIL FROM:<a@sender.test>", b"RCPT TO:<\xfe@example.test>"], 501, "5.1.3"),
        ([b"MAIL FROM:<a@sender.test>", b"RCPT TO:<a@[300\x00>"], 501, "5.1.3"),
        ([b"MAIL FROM:<a@sender.test>", b"RCPT TO:<a\x01b@example.test>"], 501, "5.1.3"),
    ],
)
async def test_bad_path_bytes_are_refused_in_smtp_words(
    relay_service: Any, allowed: bool, lines: list[bytes], code: int, enhanced: str
) -> None:
    svc: Service = await relay_service({} if allowed else {"server": {"allowed_clients": NOT_US}})
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    try:
        *before, last = lines
        for line in before:
            reply = await c.cmd(line)
            if not allowed:
                return  # an outsider's MAIL is denied; the bad path was the MAIL case
        reply = await c.cmd(last)
        assert not LEAK.search(str(reply)), str(reply)
        assert (reply.code, reply.text.split()[0]) == (code, enhanced), str(reply)
        assert (await c.cmd(b"NOOP")).code == 250
    finally:
        await c.close()


async def test_an_echoed_argument_carries_no_control_or_non_utf8_bytes(relay_service: Any) -> None:
    svc: Service = await relay_service()
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    reply = await c.cmd(b"VRFY <\xff\x00@[300")
    assert reply.code == 502 and "\x00" not in str(reply) and "\ufffd" not in str(reply), reply
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()


async def test_an_unexpected_error_is_451_and_logged_with_the_queue_id(
    relay_service: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    svc: Service = await relay_service()

    def broken(self: InboundHandler, session: Any) -> bool:
        if self.txn is not None:
            raise KeyError("secret internal detail")
        return True

    monkeypatch.setattr(InboundHandler, "may_relay", broken)
    c = await RawClient.connect("127.0.0.1", svc.addresses[0][1])
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    with caplog.at_level(logging.ERROR, logger="relay.inbound.server"):
        reply = await c.cmd(b"RCPT TO:<b@example.test>")
    assert (reply.code, reply.text.split()[0]) == (451, "4.3.0"), str(reply)
    assert "secret" not in str(reply) and not LEAK.search(str(reply)), str(reply)
    queue_ids = [r.getMessage().split(":")[0] for r in caplog.records if r.exc_info]
    assert queue_ids and queue_ids[0] not in ("", "NOQUEUE"), caplog.text
    assert (await c.cmd(b"NOOP")).code == 250  # the session goes on
    await c.close()


# --- fuzz: raw bytes in MAIL and RCPT against `bouncer serve` ---------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["allowed", "outsider"])
def bouncer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BouncerProcess]:
    table: dict[str, Any] = {
        "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": 0.3},
        "delivery": {"connect_timeout": 0.5, "command_timeout": 0.5},
        "policy": {"soft_bounce": "pass"},
    }
    if not request.param:
        # The fuzz connects hundreds of times a minute from one address that may not relay:
        # admission's rate limit and the outsider deadline are other tests' business.
        table["server"] = {
            "allowed_clients": NOT_US,
            "client_connection_rate_limit": 0,
            "untrusted_timeout": 300.0,
        }
    with bouncer_process(Path(tmp_path_factory.mktemp("bytes")), table) as b:
        yield b


# Bytes of a path or parameter: anything but CR and LF (which end the command line), mixed
# with pieces that reach odd corners of the parser (literals, routes, quotes, high bytes).
_PIECES = [
    b"<", b">", b"@", b"[", b"]", b"\x00", b"\xff", b"\xc3", b"\xc3\xbc", b"\xed\xa0\x80",
    b'"', b"\\", b":", b",", b"(", b")", b" ", b"a", b"example.test", b"300", b"IPv6:",
    b"SMTPUTF8", b"SIZE=", b"BODY=8BITMIME", b"=",
]  # fmt: skip
_chunk = st.one_of(
    st.sampled_from(_PIECES),
    st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_noise = st.lists(_chunk, max_size=4).map(b"".join)
# Either free noise or a path-shaped argument with noise in its parts, which gets past
# the outer "<...@...>" check into the parser's corners.
path_bytes = st.one_of(
    st.lists(_chunk, max_size=12).map(b"".join),
    st.tuples(_noise, _noise, _noise, _noise).map(
        lambda p: b"<" + p[0] + b"@" + p[1] + b"[" + p[2] + b">" + p[3]
    ),
    st.tuples(_noise, _noise, _noise).map(lambda p: b"<" + p[0] + b"@" + p[1] + b"> " + p[2]),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mail=path_bytes, rcpt=path_bytes)
def test_no_reply_to_mail_or_rcpt_bytes_carries_exception_text(
    bouncer: BouncerProcess, mail: bytes, rcpt: bytes
) -> None:
    s = LineClient(bouncer.port)
    try:
        assert s.cmd(b"EHLO fuzz.test")[-1].startswith("250")
        lines = (b"MAIL FROM:" + mail, b"RCPT TO:" + rcpt, b"RCPT TO:<" + rcpt + b">")
        for line in (*lines, b"VRFY " + rcpt):  # aiosmtpd echoes a VRFY it cannot parse
            text = " | ".join(s.cmd(line))
            assert not LEAK.search(text), f"{line!r} -> {text!r}"
            assert not text.startswith("500 5.5.2 Error"), f"{line!r} -> {text!r}"
            assert "451 4.3.0" not in text, f"{line!r} -> {text!r}"  # an unexpected error
        assert s.cmd(b"RSET")[-1].startswith("250")  # the session still works
    finally:
        s.close()


def test_the_server_kept_serving_and_logged_no_traceback(bouncer: BouncerProcess) -> None:
    s = LineClient(bouncer.port)  # a new client after the fuzzing is still greeted
    assert s.cmd(b"EHLO after.test")[-1].startswith("250")
    s.close()
    assert "Traceback" not in bouncer.log_text(), bouncer.log_text()[-3000:]
