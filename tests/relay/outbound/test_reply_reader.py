"""The sans-IO reply parser: any segmentation gives the same replies; bounds and errors.

Real remotes' replies are cut at every split point (one and two cuts), fed a byte at a
time, and cut at random by hypothesis: the replies out must always be the same.
"""

from __future__ import annotations

import asyncio
from itertools import combinations
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.reply import Reply
from relay.outbound.reply_reader import ReplyError, ReplyParser
from relay.outbound.wire import Wire, WireLost

HOST = "mx.example.test[192.0.2.1]"

# Real multi-line replies, as the servers write them.
GMAIL_550 = (
    b"550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    b"550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    b"550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
    b" 5a478bee46e88-2b0bc32f9d1si12345eec.55 - gsmtp\r\n"
)
GMAIL_421 = (
    b"421-4.7.0 [192.0.2.1      15] Our system has detected an unusual rate of\r\n"
    b"421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n"
    b"421 4.7.0 users from spam, mail sent from your IP address has been temporarily rate\r\n"
)
POSTFIX_EHLO = (
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 DSN\r\n"
)
OUTLOOK_550 = (
    b"550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)."
    b" [AM4PEPF00027A6C.eurprd04.prod.outlook.com 2025-01-01T00:00:00.000Z 08DD]\r\n"
)
PIPELINED = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
REAL = {
    "gmail-550": GMAIL_550,
    "gmail-421": GMAIL_421,
    "postfix-ehlo": POSTFIX_EHLO,
    "outlook-550": OUTLOOK_550,
    "pipelined": PIPELINED,
}


def parse(pieces: list[bytes]) -> list[Reply]:
    parser = ReplyParser(HOST)
    out: list[Reply] = []
    for piece in pieces:
        parser.feed(piece)
        while (reply := parser.next_reply()) is not None:
            out.append(reply)
    assert not parser.holding(), "bytes left over after the last complete reply"
    return out


def whole(stream: bytes) -> list[Reply]:
    return parse([stream])


def test_a_multi_line_reply_becomes_one_reply_with_the_enhanced_code_once() -> None:
    (reply,) = whole(GMAIL_550)
    assert reply.code == 550 and reply.enhanced == "5.1.1" and reply.host == HOST
    assert reply.text.split("\n") == [
        "The email account that you tried to reach does not exist. Please try",
        "double-checking the recipient's email address for typos or",
        "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser"
        " 5a478bee46e88-2b0bc32f9d1si12345eec.55 - gsmtp",
    ]
    assert [r.code for r in whole(PIPELINED)] == [250, 250, 354]
    (ehlo,) = whole(POSTFIX_EHLO)
    assert ehlo.enhanced is None and ehlo.text.split("\n")[-1] == "DSN"


@pytest.mark.parametrize("name", REAL)
def test_every_single_split_point_gives_the_same_replies(name: str) -> None:
    stream = REAL[name]
    expected = whole(stream)
    for i in range(len(stream) + 1):
        assert parse([stream[:i], stream[i:]]) == expected, i


@pytest.mark.parametrize("name", ["gmail-550", "pipelined"])
def test_every_pair_of_split_points_gives_the_same_replies(name: str) -> None:
    stream = REAL[name]
    expected = whole(stream)
    for i, j in combinations(range(len(stream) + 1), 2):
        assert parse([stream[:i], stream[i:j], stream[j:]]) == expected, (i, j)


def test_a_byte_at_a_time_and_all_at_once_agree() -> None:
    stream = b"".join(REAL.values())
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == whole(stream)
    assert len(whole(stream)) == 7


def test_nothing_comes_out_until_the_last_line_is_complete() -> None:
    parser = ReplyParser()
    for piece in (b"550-5.1.1 a\r\n", b"550-5.1.1 b\r\n", b"550 5.1.1 c", b"\r"):
        parser.feed(piece)
        assert parser.next_reply() is None and not parser.ready() and parser.holding()
    parser.feed(b"\n")
    assert parser.ready() and parser.pending == 1
    assert parser.next_reply() == Reply(550, "5.1.1", "a\nb\nc")
    assert not parser.holding()


def test_bare_lf_line_ends_and_a_code_alone_are_read() -> None:
    assert whole(b"250-first\n250\n") == [Reply(250, None, "first\n", HOST)]
    assert whole(b"221 2.0.0 Bye\n") == [Reply(221, "2.0.0", "Bye", HOST)]


# Replies as servers write them: a code, an optional enhanced code repeated on every line
# (RFC 2034 §4), and text (printable ASCII, and UTF-8 from SMTPUTF8 servers).
_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("éü中"), max_size=40
)


@st.composite
def _reply_bytes(draw: st.DrawFn) -> tuple[bytes, int]:
    code = draw(st.integers(200, 599))
    enhanced = draw(st.none() | st.sampled_from(["2.0.0", "4.4.2", "5.1.1", "5.7.1"]))
    texts = draw(st.lists(_text, min_size=1, max_size=4))
    prefix = f"{enhanced} " if enhanced else ""
    lines = [f"{code}{'-' if i < len(texts) - 1 else ' '}{prefix}{t}".rstrip() for i, t in
             enumerate(texts)]  # fmt: skip
    return "".join(line + "\r\n" for line in lines).encode("utf-8"), len(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(_reply_bytes(), min_size=1, max_size=6), st.data())
def test_any_chunking_of_any_replies_gives_the_same_replies(
    replies: list[tuple[bytes, int]], data: st.DataObject
) -> None:
    stream = b"".join(r for r, _ in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = whole(stream)
    assert len(expected) == len(replies)
    assert parse(pieces) == expected
    # Independently of the parser: each reply's code, and one text line per wire line.
    assert [(r.code, r.text.count("\n") + 1) for r in expected] == [
        (int(raw[:3]), lines) for raw, lines in replies
    ]


# --- errors and bounds: the replies before the error come out, then the error for good ---


def _drain(parser: ReplyParser) -> tuple[list[int], str]:
    codes: list[int] = []
    while True:
        try:
            reply = parser.next_reply()
        except ReplyError as exc:
            with pytest.raises(ReplyError):  # and again: every later read fails the same way
                parser.next_reply()
            return codes, str(exc)
        assert reply is not None, "no error reported"
        codes.append(reply.code)


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (b"250 2.1.0 Ok\r\nhello there\r\n", "malformed reply line"),
        (b"250 2.1.0 Ok\r\n\r\n", "malformed reply line"),
        (b"250 2.1.0 Ok\r\n25 short\r\n", "malformed reply line"),
        (b"250 2.1.0 Ok\r\n150 never in SMTP\r\n", "malformed reply line"),
        (b"250 2.1.0 Ok\r\n250ok\r\n", "malformed reply line"),
        # RFC 5321 §4.2.1: one code on every line. Never guess which line to believe.
        (b"250 2.1.0 Ok\r\n550-5.1.1 no\r\n250 2.1.5 Ok\r\n", "reply code changed"),
        (b"250 2.1.0 Ok\r\n250-2.1.5 fine\r\n550 5.1.1 no\r\n", "reply code changed"),
    ],
)
def test_a_protocol_error_keeps_earlier_replies_then_fails(stream: bytes, why: str) -> None:
    for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        parser = ReplyParser()
        for piece in pieces:
            parser.feed(piece)
        parser.feed(b"250 2.0.0 after the error\r\n")  # ignored: nothing more is trusted
        assert parser.failed and parser.ready()
        codes, error = _drain(parser)
        assert codes == [250] and why in error


def test_a_line_longer_than_the_bound_fails_without_holding_it() -> None:
    parser = ReplyParser(max_line=100)
    parser.feed(b"250 " + b"x" * 60)
    parser.feed(b"x" * 60)  # no line end yet, and already over the bound
    assert parser.failed and not parser._buffer
    assert "too long" in _drain(parser)[1]
    parser = ReplyParser(max_line=100)
    parser.feed(b"250 " + b"x" * 200 + b"\r\n")
    assert "too long" in _drain(parser)[1]
    assert whole(b"250 " + b"x" * 1000 + b"\r\n")[0].text == "x" * 1000  # default bound


FLOOD = "more replies than commands sent: a remote streaming at us"


def test_replies_nobody_asked_for_are_bounded_in_number_and_bytes() -> None:
    parser = ReplyParser(max_pending=5)
    parser.feed(b"250 2.0.0 Ok\r\n" * 50)
    assert parser.pending == 5 and parser.failed
    assert _drain(parser) == ([250] * 5, FLOOD)
    parser = ReplyParser(max_held=1000)
    parser.feed(b"250-" + b"y" * 500 + b"\r\n")
    parser.feed(b"250-" + b"y" * 500 + b"\r\n")
    assert parser.failed and parser._held == 0
    # Taking replies gives their bytes back: a long exchange never fills the budget.
    parser = ReplyParser(max_held=1000)
    for _ in range(100):
        parser.feed(b"250 " + b"z" * 400 + b"\r\n")
        assert parser.next_reply() is not None
    assert not parser.failed and parser._held == 0


def test_a_reply_with_too_many_lines_fails() -> None:
    parser = ReplyParser(max_lines=3)
    parser.feed(b"250-a\r\n250-b\r\n250 c\r\n")
    assert parser.next_reply() == Reply(250, None, "a\nb\nc")
    parser.feed(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n")
    assert "longer than 3 lines" in _drain(parser)[1]


def test_the_end_of_the_stream_after_whole_replies_and_in_the_middle_of_one() -> None:
    parser = ReplyParser()
    parser.feed(b"250 2.1.0 Ok\r\n")
    parser.end()
    assert _drain(parser) == ([250], "connection closed")
    parser = ReplyParser()
    parser.feed(b"250 2.1.0 Ok\r\n550-5.1.1 first line only\r\n")
    parser.end()
    assert _drain(parser) == ([250], "connection closed in the middle of a reply")


# --- the Wire (relay/outbound/wire.py) around it: wakes its reader only for a whole reply ---


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        pass


async def test_the_wire_answers_a_command_only_with_a_whole_reply() -> None:
    loop = asyncio.get_running_loop()
    wire = Wire(cast(asyncio.Transport, _Transport()), command_timeout=5, host=HOST)
    pieces = [GMAIL_550[:20], GMAIL_550[20:90], GMAIL_550[90:200], GMAIL_550[200:]]
    for i, piece in enumerate(pieces):
        loop.call_later(0.01 * (i + 1), wire.data_received, piece)
    reply = await wire.reply()
    assert (reply.code, reply.enhanced, reply.host) == (550, "5.1.1", HOST)
    assert reply.text.endswith("gsmtp") and not wire.unsolicited()


async def test_the_wire_hangs_up_on_a_malformed_reply_and_fails_the_command() -> None:
    transport = _Transport()
    wire = Wire(cast(asyncio.Transport, transport), command_timeout=5)
    wire.data_received(b"250 2.1.0 Ok\r\n550-5.1.1 no\r\n25")
    wire.data_received(b"0 2.1.5 Ok\r\n")
    assert transport.closed
    assert (await wire.reply()).code == 250  # answered before the error: still its answer
    with pytest.raises(WireLost, match="reply code changed"):
        await wire.reply()
