# Rule: this module makes "first text rule that matches" fast without changing its
# meaning; it decides nothing and performs no I/O. The meaning is TextIndex.scan().
"""A word index over the ordered text rules.

Python's re tries every alternative at every position, so one big alternation over
all rules costs (text length x alternatives): ~300 us for a 500-character reply.
Instead each rule is cut into its top-level alternatives ("branches"), and each branch
gets a set of *word keys*: the first 4 characters of words of which every match must
contain at least one whole-word start. The reply's words are collected once (one C
split); only branches whose key occurs, plus the few branches with no key, are
tried, in table order. `scan()` tries every branch and is the reference the tests
compare with.

Matching semantics (documented in rules.toml): patterns are searched in the
lower-cased text, and an alternative that begins with a letter, digit or group only
matches at the start of a word (nothing from \\w just before it), so "user unknown"
does not fire inside "superuser unknown".
"""

from __future__ import annotations

import operator
import re
import re._constants as sre_c  # type: ignore[import-not-found]  # stdlib, no stub
import re._parser as sre_parse  # type: ignore[import-not-found]  # stdlib, no stub
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

R = TypeVar("R")

KEY_LENGTH = 4
_WORDS = re.compile(r"\W+")
_prefix = operator.itemgetter(slice(None, KEY_LENGTH))  # w -> w[:4], called from C
_ASCII_WORDS = bytes(c if chr(c).isalnum() or c == 0x5F else 0x20 for c in range(128)) + bytes(
    [0x20] * 128
)  # bytes.translate table: every ASCII non-\w byte becomes a space
_MARK = "\x00"  # stands for "a non-word character or boundary is here" in a literal run
_UNSPACED = "\u2e80"  # from here on (CJK radicals, kana, ideographs ...) words are not spaced


@dataclass(frozen=True, slots=True)
class Branch:
    """One top-level alternative: a plain literal (searched with str.find) or a regex."""

    literal: str | None
    pattern: re.Pattern[str] | None
    word_start: bool  # the match must not follow a \w character

    def search(self, text: str) -> bool:
        # The word-start test is done here, not with a (?<!\w) look-behind: a pattern
        # that starts with a literal lets re (and str.find) skip ahead quickly.
        literal = self.literal
        if literal is not None:
            i = text.find(literal)
            if not self.word_start:
                return i >= 0
            while i > 0 and _is_word(text[i - 1]):
                i = text.find(literal, i + 1)
            return i >= 0
        assert self.pattern is not None
        m = self.pattern.search(text)
        if not self.word_start:
            return m is not None
        while m is not None:
            i = m.start()
            if i == 0 or not _is_word(text[i - 1]):
                return True
            m = self.pattern.search(text, i + 1)
        return False


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def split_alternatives(pattern: str) -> list[str]:
    """Split a regex at its top-level "|" (outside groups, classes and escapes)."""
    parts: list[str] = []
    depth, start, i, n = 0, 0, 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i += 2 if pattern[i + 1 : i + 2] in ("]", "^") else 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _run_key(run: str) -> str | None:
    # A word of the run that surely starts a word of the text: something non-word
    # precedes it inside the run. Its key is its first KEY_LENGTH characters, or the
    # whole word when shorter and surely ended too.
    best: str | None = None
    for m in re.finditer(r"\w+", run):
        start, end = m.span()
        if start == 0:
            continue
        word = m.group()
        if len(word) >= KEY_LENGTH:
            key = word[:KEY_LENGTH]
        elif end < len(run) and len(word) >= 2:
            key = word
        else:
            continue
        if best is None or len(key) > len(best):
            best = key
    return best


def _ends_non_word(items: Any) -> bool:
    """Every match of this parsed sequence ends with a non-word character."""
    if not items:
        return False
    op, av = items[-1]
    if op is sre_c.LITERAL:
        return not (chr(av).isalnum() or chr(av) == "_")
    if op is sre_c.SUBPATTERN:
        return _ends_non_word(av[-1])
    if op is sre_c.BRANCH:
        return all(_ends_non_word(b) for b in av[1])
    return False


def word_keys(items: Any, left: bool) -> frozenset[str] | None:
    """Keys of which every match of this parsed sequence yields one; None if unknown.

    `left`: a non-word character (or the start of a word) surely precedes the sequence.
    """
    best: frozenset[str] | None = None
    run: list[str] = [_MARK] if left else []

    def consider(found: frozenset[str] | None) -> None:
        nonlocal best
        if found and (best is None or len(found) < len(best)):
            best = found

    def boundary_before() -> bool:
        return bool(run) and not (run[-1].isalnum() or run[-1] == "_")

    def flush(next_left: bool) -> None:
        if run:
            key = _run_key("".join(run))
            consider(None if key is None else frozenset([key]))
            run.clear()
        if next_left:
            run.append(_MARK)

    for op, av in items:
        if op is sre_c.LITERAL:
            run.append(chr(av))
        elif op is sre_c.AT:
            if av in (sre_c.AT_BOUNDARY, sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING):
                run.append(_MARK)
        elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
            pass  # zero width; says nothing certain about the neighbours
        elif op is sre_c.SUBPATTERN:
            known = boundary_before()
            flush(False)
            consider(word_keys(av[-1], known))
            flush(_ends_non_word(av[-1]))
        elif op is sre_c.BRANCH:
            known = boundary_before()
            flush(False)
            alternatives = [word_keys(b, known) for b in av[1]]
            if all(a is not None for a in alternatives):
                consider(frozenset().union(*(a for a in alternatives if a is not None)))
            flush(all(_ends_non_word(b) for b in av[1]))
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
            known = boundary_before()
            flush(False)
            low, _, sub = av
            if low >= 1:
                consider(word_keys(sub, known))
            # After an optional part the next character follows either it or what
            # came before it: both must end in a non-word character.
            flush(_ends_non_word(sub) and (known or low >= 1))
        else:
            flush(False)  # character classes, ".", back-references: no literal
    flush(False)
    return best


def needs_non_ascii(alternative: str) -> bool:
    """Every match of this alternative contains a non-ASCII character (so ASCII text
    cannot match it and its branch need not be tried there)."""
    return any(op is sre_c.LITERAL and av > 127 for op, av in sre_parse.parse(alternative))


def compile_branch(alternative: str) -> tuple[Branch, frozenset[str] | None]:
    """One alternative as a Branch, with its word keys (None: always try it)."""
    first = alternative[:1]
    # Scripts written without spaces between words (CJK, kana) have no word starts to
    # anchor on: "用户不存在" must match inside "该用户不存在".
    word_start = (first.isalnum() and first < _UNSPACED) or alternative.startswith("(")
    parsed = sre_parse.parse(alternative)
    keys = word_keys(parsed, word_start)
    if all(op is sre_c.LITERAL for op, _ in parsed):
        return Branch("".join(chr(av) for _, av in parsed), None, word_start), keys
    return Branch(None, re.compile(alternative), word_start), keys


class TextIndex(Generic[R]):
    """Ordered (rule, pattern) pairs; `first(text)` is the first rule that matches."""

    __slots__ = ("_flat", "_keyless", "_keyless_wide", "_by_key", "_keys", "_by_bkey", "_bkeys")

    def __init__(self, rules: list[tuple[R, str]]) -> None:
        flat: list[tuple[R, Branch]] = []
        keyless: set[int] = set()
        keyless_wide: set[int] = set()  # keyless, but only non-ASCII text can match
        by_key: dict[str, list[int]] = {}
        for rule, pattern in rules:
            for alternative in split_alternatives(pattern):
                branch, keys = compile_branch(alternative)
                if keys is None and needs_non_ascii(alternative):
                    keyless_wide.add(len(flat))
                elif keys is None:
                    keyless.add(len(flat))
                else:
                    for key in keys:
                        by_key.setdefault(key, []).append(len(flat))
                flat.append((rule, branch))
        self._flat = tuple(flat)
        self._keyless = frozenset(keyless)
        self._keyless_wide = frozenset(keyless_wide)
        self._by_key: Mapping[str, tuple[int, ...]] = {k: tuple(v) for k, v in by_key.items()}
        self._keys = frozenset(by_key)
        # The same for ASCII text as bytes (a non-ASCII key cannot occur in ASCII text).
        self._by_bkey: Mapping[bytes, tuple[int, ...]] = {
            k.encode("ascii"): v for k, v in self._by_key.items() if k.isascii()
        }
        self._bkeys = frozenset(self._by_bkey)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(branches, branches without a key, distinct keys), for benchmarks and tests."""
        return len(self._flat), len(self._keyless), len(self._keys)

    def first(self, text: str) -> R | None:
        """The first rule, in table order, with a branch that matches `text`."""
        flat = self._flat
        candidates = set(self._keyless)
        if text.isascii():
            # Bytes are split ~5x faster than re.split; for ASCII, \w is [A-Za-z0-9_].
            by_bkey = self._by_bkey
            words = text.encode("ascii").translate(_ASCII_WORDS).split()
            for bkey in self._bkeys.intersection(map(_prefix, words)):
                candidates.update(by_bkey[bkey])
        else:
            candidates.update(self._keyless_wide)
            by_key = self._by_key
            for key in self._keys.intersection(map(_prefix, _WORDS.split(text))):
                candidates.update(by_key[key])
        for i in sorted(candidates):
            rule, branch = flat[i]
            # Branch.search inlined for the common case: this loop is the hot path.
            literal = branch.literal
            if literal is not None and not branch.word_start:
                if literal in text:
                    return rule
            elif branch.search(text):
                return rule
        return None

    def scan(self, text: str) -> R | None:
        """first() without the index: every branch in order. The reference semantics."""
        for rule, branch in self._flat:
            if branch.search(text):
                return rule
        return None
