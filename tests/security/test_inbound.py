# Hostile and malformed input at bouncer's SMTP door.
# Each test fails if its protection is removed: the smuggling tests check the remote never
# sees a second transaction, the limit tests check the exact reply and that the session
# (or the server) survives.
from __future__ import annotations

from typing import Any

import pytest

from relay.service import Service
from tests.support.fake_mx import FakeMX
from tests.support.rawsmtp import RawClient
from tests.support.wait import until

HEADER = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: smuggle\r\n\r\nHello.\r\n"
SMUGGLED = b"MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nForged.\r\n"

# The published end-of-data variants (SEC Consult, Dec 2023; Postfix smtpd_forbid_bare_newline).
VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-cr": b"\n.\r",
    "crlf-dot-cr-cr-lf": b"\r\n.\r\r\n",
}


def port_of(svc: Service) -> int:
    return svc.addresses[0][1]


@pytest.fixture
async def relay(fake_mx: FakeMX, relay_service: Any) -> Service:
    svc: Service = await relay_service(
        {
            "delivery": {"routes": {"example.test": fake_mx.address}},
            "server": {"max_recipients": 3, "max_message_size": 20_000},
            "policy": {"soft_bounce": "pass"},
        }
    )
    return svc


async def start_data(svc: Service) -> RawClient:
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    return c


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
async def test_smuggling_variants_are_refused_and_never_forwarded(
    relay: Service, fake_mx: FakeMX, variant: bytes
) -> None:
    c = await start_data(relay)
    c.send(HEADER + variant + SMUGGLED + b"\r\n.\r\n")
    reply = await c.reply()
    assert reply.code == 550 and reply.text.startswith("5.5.2"), str(reply)
    # The session goes on normally after the refusal.
    assert (await c.cmd(b"NOOP")).code == 250
    await c.cmd(b"QUIT")
    await c.close()
    await until(lambda: "RSET" in fake_mx.commands, "bouncer's remote cleanup (RSET)")
    assert fake_mx.messages == []
    # The remote saw one MAIL (bouncer's RCPT-time probe) and never the forged sender.
    assert [x for x in fake_mx.commands if x.startswith("MAIL")] == ["MAIL a@sender.test"]
    assert "DATA" not in fake_mx.commands


# A receiver that drops NUL reads "<CRLF>NUL.<CRLF>" as the end of the data: a second,
# smuggled message. RFC 5321 §4.5.2 text never holds NUL; refused like a bare CR or LF.
BAD_DATA = {
    "bare-lf": b"bare\nlf",
    "bare-cr": b"bare\rcr",
    "trailing-cr": b"trailing cr\r",
    "crlf-nul-dot-crlf": b"\x00.\r\n" + SMUGGLED.removesuffix(b"\r\n"),
    "nul-inside": b"a NUL\x00inside",
}


@pytest.mark.parametrize("bad", list(BAD_DATA.values()), ids=list(BAD_DATA))
async def test_bare_cr_or_lf_or_nul_inside_a_line_is_refused(
    relay: Service, fake_mx: FakeMX, bad: bytes
) -> None:
    c = await start_data(relay)
    c.send(HEADER + bad + b"\r\n.\r\n")
    reply = await c.reply()
    assert reply.code == 550 and reply.text.startswith("5.5.2"), str(reply)
    assert ("NUL" in reply.text) == (b"\x00" in bad)
    assert (await c.cmd(b"NOOP")).code == 250  # the session goes on
    await c.close()
    assert fake_mx.messages == [] and "DATA" not in fake_mx.commands


async def test_clean_message_after_a_refused_one_is_delivered_once(
    relay: Service, fake_mx: FakeMX
) -> None:
    c = await start_data(relay)
    c.send(HEADER + b"\n.\r\n" + SMUGGLED + b"\r\n.\r\n")
    assert (await c.reply()).code == 550
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    assert (await c.cmd(b"RCPT TO:<b@example.test>")).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    c.send(HEADER + b"..dot-stuffed line\r\n.\r\n")
    assert (await c.reply()).code == 250
    await c.close()
    (msg,) = fake_mx.messages
    assert msg.data.endswith(HEADER + b".dot-stuffed line\r\n")  # RFC 5321 §4.5.2


async def test_command_line_too_long(relay: Service) -> None:
    # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    reply = await c.cmd(b"MAIL FROM:<" + b"a" * 600 + b"@sender.test>")
    assert reply.code == 500 and reply.text.startswith("5.5.2"), str(reply)
    assert (await c.cmd(b"NOOP")).code == 250  # the session survives
    await c.close()


async def test_text_line_too_long_is_refused_not_forwarded(relay: Service, fake_mx: FakeMX) -> None:
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
    c = await start_data(relay)
    c.send(HEADER + b"x" * 1200 + b"\r\n.\r\n")
    reply = await c.reply()
    assert reply.code == 500 and reply.text.startswith("5.5.2"), str(reply)
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()
    assert fake_mx.messages == []


async def test_size_parameter_over_the_limit(relay: Service, fake_mx: FakeMX) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    reply = await c.cmd(b"MAIL FROM:<a@sender.test> SIZE=20001")
    assert reply.code == 552 and reply.text.startswith("5.3.4"), str(reply)
    assert (await c.cmd(b"MAIL FROM:<a@sender.test> SIZE=19000")).code == 250
    await c.close()
    assert fake_mx.commands == []  # refused before any remote was asked


async def test_actual_bytes_over_the_limit(relay: Service, fake_mx: FakeMX) -> None:
    c = await start_data(relay)  # no SIZE parameter: the client lies by omission
    c.send(HEADER + (b"y" * 998 + b"\r\n") * 25 + b".\r\n")
    reply = await c.reply()
    assert reply.code == 552 and reply.text.startswith("5.3.4"), str(reply)
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()
    assert fake_mx.messages == []


async def test_too_many_recipients(relay: Service, fake_mx: FakeMX) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    for i in range(3):
        assert (await c.cmd(f"RCPT TO:<r{i}@example.test>".encode())).code == 250
    reply = await c.cmd(b"RCPT TO:<r3@example.test>")
    assert reply.code == 452 and reply.text.startswith("4.5.3"), str(reply)
    assert (await c.cmd(b"DATA")).code == 354
    c.send(HEADER + b".\r\n")
    assert (await c.reply()).code == 250
    await c.close()
    (msg,) = fake_mx.messages
    assert len(msg.rcpt_tos) == 3


@pytest.mark.parametrize(
    ("first", "then", "code"),
    [
        (None, b"RCPT TO:<b@example.test>", 503),  # RCPT before MAIL
        (None, b"DATA", 503),  # DATA before MAIL/RCPT
        (b"MAIL FROM:<a@sender.test>", b"DATA", 503),  # DATA with no recipient
        (b"MAIL FROM:<a@sender.test>", b"MAIL FROM:<a@sender.test>", 503),  # nested MAIL
    ],
)
async def test_commands_out_of_order(
    relay: Service, fake_mx: FakeMX, first: bytes | None, then: bytes, code: int
) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    if first:
        assert (await c.cmd(first)).code == 250
    reply = await c.cmd(then)
    assert reply.code == code, str(reply)
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()
    assert fake_mx.messages == []


async def test_mail_before_helo_is_refused(relay: Service) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay), ehlo=False)
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 503
    await c.close()


@pytest.mark.parametrize("line", [b"FOO", b"XEXPS", b"\x00\x01\x02", b"MAIL", b"HELO"])
async def test_unknown_or_malformed_commands_keep_the_session(relay: Service, line: bytes) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    reply = await c.cmd(line)
    assert 500 <= reply.code <= 504, str(reply)
    assert "Error: (" not in str(reply)  # aiosmtpd's format for an exception in a hook
    assert (await c.cmd(b"NOOP")).code == 250
    await c.close()


@pytest.mark.parametrize(
    "address",
    [
        b"<no-at-sign>",
        b"<two@@example.test>",
        b"<a@example..test>",
        b"<a@-bad-.test>",
        b"<" + b"l" * 65 + b"@example.test>",
        b"<a@[300.1.1.1]>",
    ],
    ids=str,
)
async def test_invalid_recipient_addresses(relay: Service, fake_mx: FakeMX, address: bytes) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    reply = await c.cmd(b"RCPT TO:" + address)
    assert reply.code == 501 and reply.text.startswith("5.1.3"), str(reply)
    await c.close()
    assert fake_mx.rcpts == []  # no remote was asked about a malformed address


async def test_invalid_sender_address(relay: Service) -> None:
    c = await RawClient.connect("127.0.0.1", port_of(relay))
    # aiosmtpd's parser refuses it first (553 5.1.3), bouncer's own check says 501 5.1.7.
    for bad in (b"<a@@sender.test>", b"<a@sender..test>"):
        reply = await c.cmd(b"MAIL FROM:" + bad)
        assert reply.code in (501, 553) and reply.text.startswith("5.1."), str(reply)
    await c.close()


async def test_utf8_address_needs_smtputf8(relay_service: Any, fake_mx: FakeMX) -> None:
    svc = await relay_service(
        {
            "delivery": {"routes": {"xn--fsqu00a.test": fake_mx.address}},
            "policy": {"soft_bounce": "pass"},
        }
    )
    c = await RawClient.connect("127.0.0.1", port_of(svc))
    assert (await c.cmd(b"MAIL FROM:<a@sender.test>")).code == 250
    # RFC 6531 §3.4: without SMTPUTF8 on MAIL, a non-ASCII address is refused.
    reply = await c.cmd("RCPT TO:<用户@例子.test>".encode())
    assert reply.code == 553 and reply.text.startswith("5.6.7"), str(reply)
    assert fake_mx.rcpts == []
    assert (await c.cmd(b"RSET")).code == 250
    assert (await c.cmd(b"MAIL FROM:<a@sender.test> SMTPUTF8")).code == 250
    assert (await c.cmd("RCPT TO:<用户@例子.test>".encode())).code == 250
    assert (await c.cmd(b"DATA")).code == 354
    c.send(HEADER + b".\r\n")
    assert (await c.reply()).code == 250
    await c.close()
    (msg,) = fake_mx.messages
    assert msg.rcpt_tos == ("用户@例子.test",)
