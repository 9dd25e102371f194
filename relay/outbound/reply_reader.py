# This module parses; it performs no I/O and keeps no clock (sans-IO, as h11). Bytes go in
# however TCP cut them, complete replies come out in order. Whoever reads the socket
# (smtp_wire.Wire) feeds it; whoever decides (policy/) only ever sees the Replies.
"""An incremental SMTP reply parser (RFC 5321 §4.2): bytes in, complete `Reply`s out.

A reply is one or more lines "NNN-text" ended by a line "NNN text" or "NNN" (§4.2.1).
Real TCP cuts a remote's writes anywhere: in the middle of a line, between the lines of a
multi-line reply, several replies in one segment. `feed()` takes any such piece and
`next_reply()` hands out a reply only once its last line is complete.

What a remote can make us hold is bounded (line length, lines per reply, bytes held,
replies nobody asked for yet). Breaking a bound, a line that is not a reply line, or a
continuation line whose code differs from the first line's (§4.2.1: the code MUST be the
same on every line; guessing which line to believe could turn a 550 into a 250) is a
protocol error: the parser stops, keeps the replies completed before it, and then reports
the error for good. Its owner closes the connection; the unanswered commands get a soft
synthetic reply (outbound.py), so nothing is lost or falsely acknowledged.
"""

from __future__ import annotations

from collections import deque

from policy.reply import Reply, split_enhanced

# A reply line is at most 512 octets (RFC 5321 §4.5.3.1.5); be generous with odd servers
# but bound what a remote can make us hold (aiosmtplib's limits; Postfix's line_length_limit).
MAX_LINE = 8192
MAX_REPLY_LINES = 100
# Bytes held at once: the unfinished line, the unfinished reply and the replies waiting.
MAX_HELD = 256 * 1024
# We pipeline at most MAIL + RCPT (RFC 2920): more replies waiting than this is a flood.
MAX_PENDING_REPLIES = 100

_DIGITS = frozenset(b"0123456789")
_FIRST = frozenset(b"2345")  # RFC 5321 §4.2.1: reply codes are 2yz to 5yz


class ReplyError(Exception):
    """The remote broke the reply syntax or a bound, or the stream ended (the text says which)."""


def make_reply(code: int, text: str, host: str | None) -> Reply:
    """A Reply from a code and its lines' texts joined by "\\n" (as aiosmtplib reports them).

    Multi-line replies repeat the enhanced code on every line (RFC 2034 §4): keep it once.
    """
    lines = text.replace("\r", "").split("\n")
    enhanced, first = split_enhanced(lines[0])
    rest = [split_enhanced(line)[1] if enhanced else line for line in lines[1:]]
    return Reply(code, enhanced, "\n".join([first, *rest]), host)


class ReplyParser:
    """Feed bytes with `feed()`, take complete replies with `next_reply()`; see the module doc.

    `host` ("name[ip]") is stamped on every Reply: who said it.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        max_line: int = MAX_LINE,
        max_lines: int = MAX_REPLY_LINES,
        max_held: int = MAX_HELD,
        max_pending: int = MAX_PENDING_REPLIES,
    ) -> None:
        self.host = host
        self.max_line = max_line
        self.max_lines = max_lines
        self.max_held = max_held
        self.max_pending = max_pending
        self._buffer = bytearray()  # the unfinished line
        self._code = b""  # the code of the unfinished multi-line reply ("" when none)
        self._texts: list[bytes] = []  # its lines' texts so far
        self._replies: deque[Reply] = deque()
        self._held = 0  # bytes in _texts and in the waiting replies
        self._held_by: deque[int] = deque()  # per waiting reply, to give back on pickup
        self._error: ReplyError | None = None

    @property
    def pending(self) -> int:
        """Complete replies waiting to be taken."""
        return len(self._replies)

    @property
    def failed(self) -> bool:
        """A protocol error or the end of the stream was seen; nothing more will parse."""
        return self._error is not None

    def holding(self) -> bool:
        """Anything received and not taken yet: a reply, part of one, an error or the end."""
        return bool(self._replies or self._texts or self._buffer or self._error)

    def ready(self) -> bool:
        """`next_reply()` would return a Reply or raise: a waiter may wake."""
        return bool(self._replies) or self._error is not None

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream, cut anywhere. After an error, ignores them."""
        if self._error is not None or not data:
            return
        buffer = self._buffer
        start = 0
        scan = len(buffer)  # the unfinished line has no LF: look for one in the new bytes only
        view: bytes | bytearray
        if not scan:
            # The common case, a whole line or lines in one segment: no copy into the buffer.
            view = data
        else:
            buffer += data
            view = buffer
        while (end := view.find(b"\n", max(start, scan))) != -1:
            if end - start > self.max_line:
                self._fail("reply line too long")
                return
            self._line(bytes(view[start:end]))
            if self._error is not None:
                return
            start = end + 1
        rest = len(view) - start
        if rest > self.max_line:
            self._fail("reply line too long")
            return
        if view is buffer:
            del buffer[:start]
        elif rest:
            buffer += data[start:]

    def end(self, why: str = "connection closed") -> None:
        """The stream ended (or its owner gave up on it): no more bytes will come."""
        if self._error is None:
            if self._texts or self._buffer:
                why += " in the middle of a reply"
            self._error = ReplyError(why)
            self._drop_partial()

    def next_reply(self) -> Reply | None:
        """The next complete reply in order; None when it has not all arrived yet.

        Raises ReplyError once the replies completed before an error or the end are taken.
        """
        if self._replies:
            self._held -= self._held_by.popleft()
            return self._replies.popleft()
        if self._error is not None:
            raise self._error
        return None

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        code, sep = line[:3], line[3:4]
        if (
            len(code) != 3
            or code[0] not in _FIRST
            or code[1] not in _DIGITS
            or code[2] not in _DIGITS
            or sep not in (b" ", b"-", b"")
        ):
            self._fail(f"malformed reply line {line[:80]!r}")
            return
        if self._code and code != self._code:
            self._fail(f"reply code changed within a multi-line reply: {line[:80]!r}")
            return
        text = line[4:].strip(b" \t")
        self._texts.append(text)
        self._held += len(text) + 1
        if self._held > self.max_held:
            self._fail("replies nobody asked for exceed the bytes a session may hold")
            return
        if sep == b"-":
            if len(self._texts) >= self.max_lines:
                self._fail(f"multi-line reply longer than {self.max_lines} lines")
            else:
                self._code = code
            return
        if len(self._replies) >= self.max_pending:
            self._fail("more replies than commands sent: a remote streaming at us")
            return
        texts, self._texts, self._code = self._texts, [], b""
        self._held_by.append(sum(len(t) + 1 for t in texts))
        message = b"\n".join(texts).decode("utf-8", "surrogateescape")
        self._replies.append(make_reply(int(code), message, self.host))

    def _fail(self, why: str) -> None:
        self._error = ReplyError(why)
        self._drop_partial()

    def _drop_partial(self) -> None:
        # Hold none of what broke the rules; the replies completed before it stay.
        self._buffer.clear()
        self._held -= sum(len(t) + 1 for t in self._texts)
        self._texts = []
        self._code = b""
