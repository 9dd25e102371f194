# SMTP replies as values, parsed once at the edge; this module decides nothing, no I/O.
"""SMTP replies as values: parse once at the edge, pass `Reply` everywhere else.

This module decides nothing and performs no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 3463 §2: class "." subject "." detail; subject and detail up to 3 digits.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_CODE = re.compile(r"^([2-5]\d\d)(?:[ -]|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, RFC 3463 enhanced status (if any), text.

    `text` holds every line's text joined by "\\n", without codes.
    `host` names who said it, Postfix style: "mx.example.com[192.0.2.1]".
    """

    code: int
    enhanced: str | None
    text: str
    host: str | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def line(self) -> str:
        """The reply on one line, as logs and DSNs quote it: "550 5.1.1 text"."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(" ".join(self.text.split("\n")))
        return " ".join(parts)

    def lines(self) -> list[str]:
        """The reply's text lines each prefixed with the enhanced code (RFC 2034 §4)."""
        texts = self.text.split("\n") if self.text else [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return [f"{prefix}{t}".rstrip() for t in texts]

    def with_host(self, host: str) -> Reply:
        return Reply(self.code, self.enhanced, self.text, host)


def split_enhanced(text: str) -> tuple[str | None, str]:
    """Split a leading RFC 3463 code off `text`: "5.1.1 No user" -> ("5.1.1", "No user")."""
    m = _ENHANCED.match(text)
    if not m:
        return None, text
    return m.group(0), text[m.end() :].lstrip()


def parse_reply(raw: str) -> Reply:
    """Parse a reply as seen on the wire or in a log: one or more lines "NNN[- ]text".

    A string with no reply code (e.g. a bare diagnostic) parses with code 0, so
    the classifier can still read its text.
    """
    raw_lines = [ln for ln in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln]
    code = 0
    enhanced: str | None = None
    texts: list[str] = []
    for ln in raw_lines:
        stripped = ln.strip()
        m = _CODE.match(stripped)
        if m:
            code = code or int(m.group(1))
            stripped = stripped[4:] if len(stripped) > 3 else ""
        enh, rest = split_enhanced(stripped)
        if enh and enhanced is None:
            enhanced = enh
        texts.append(rest if enh else stripped)
    if code == 0 and enhanced is None and texts:
        enh, rest = split_enhanced(texts[0])
        if enh:
            enhanced, texts[0] = enh, rest
    return Reply(code, enhanced, "\n".join(texts))
