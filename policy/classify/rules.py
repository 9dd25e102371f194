# Rule: the classifier's knowledge is data (rules.toml); this module only loads, validates
# and compiles it, once. It performs no I/O beyond reading the rule file it is given.
"""Load and compile the ordered classification table into a `RuleSet`.

Two tables (see policy/classify/rules.toml):

* `[[codes]]`: RFC 3463 enhanced status codes ("subject.detail", or "subject.*" for a
  whole subject) -> category. A `refine = true` code is generic or known to be misused by
  providers: the text is read first and the code is only the fallback.
* `[[texts]]`: ordered text patterns (lower-case regular expressions over the lower-cased
  reply text), first match wins. `beats_code = true` lets a pattern win even over a
  specific code (a provider that sends 5.1.1 for a rate limit). policy/classify/index.py
  makes the search fast; an alternative that begins with a word only matches at the
  start of a word.

The class of a verdict is not written in the rules: it follows from the category
(docs/behaviour.md#verdicts table), so a rule cannot contradict the contract.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.classify.index import TextIndex
from policy.verdict import BounceClass, Category

DEFAULT_RULES = Path(__file__).with_name("rules.toml")

# docs/behaviour.md#verdicts: each category belongs to exactly one class.
CLASS_OF: Mapping[Category, BounceClass] = {
    Category.DELIVERED: BounceClass.DELIVERED,
    Category.BAD_MAILBOX: BounceClass.HARD,
    Category.BAD_DOMAIN: BounceClass.HARD,
    Category.INACTIVE_MAILBOX: BounceClass.HARD,
    Category.QUOTA_ISSUES: BounceClass.SOFT,
    Category.NO_ANSWER_FROM_HOST: BounceClass.SOFT,
    Category.BAD_CONNECTION: BounceClass.SOFT,
    Category.ROUTING_ERRORS: BounceClass.SOFT,
    Category.MESSAGE_EXPIRED: BounceClass.SOFT,
    Category.MESSAGE_TOO_LARGE: BounceClass.SOFT,
    Category.SPAM_RELATED: BounceClass.BLOCK,
    Category.POLICY_RELATED: BounceClass.BLOCK,
    Category.CONTENT_RELATED: BounceClass.BLOCK,
    Category.VIRUS_RELATED: BounceClass.BLOCK,
    Category.RELAYING_ISSUES: BounceClass.BLOCK,
    Category.PROTOCOL_ERRORS: BounceClass.UNDETERMINED,
    Category.BAD_CONFIGURATION: BounceClass.UNDETERMINED,
    Category.OTHER: BounceClass.UNDETERMINED,
}

_CODE_KEY = re.compile(r"^\d{1,3}\.(?:\d{1,3}|\*)$")
_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


class RuleError(ValueError):
    """A rule table that does not validate; `problems` names every bad entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CodeRule:
    id: str
    code: str  # "1.1" (subject.detail) or "7.*" (a whole subject)
    category: Category
    refine: bool  # True: the text decides first, this code is the fallback
    source: str


@dataclass(frozen=True, slots=True)
class TextRule:
    id: str
    lang: str
    pattern: str
    category: Category
    beats_code: bool  # True: wins even over a specific enhanced code
    source: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The compiled table. Build it with `parse_rules` or `load_rules`, not directly."""

    codes: Mapping[str, CodeRule]
    texts: tuple[TextRule, ...]
    index: TextIndex[TextRule]  # every text rule, table order
    overriding: TextIndex[TextRule]  # the beats_code rules only

    def code_rule(self, enhanced: str | None) -> CodeRule | None:
        """The rule for "5.1.1": exact subject.detail first, then the subject's wildcard."""
        if not enhanced:
            return None
        _, _, key = enhanced.partition(".")
        rule = self.codes.get(key)
        if rule is None:
            rule = self.codes.get(key.partition(".")[0] + ".*")
        return rule

    def first_text(self, text: str) -> TextRule | None:
        """The first rule in table order whose pattern occurs in (lower-cased) `text`."""
        return self.index.first(text)

    def first_overriding(self, text: str) -> TextRule | None:
        """The first `beats_code` rule whose pattern occurs in `text`."""
        return self.overriding.first(text)


def _category(value: Any, where: str, problems: list[str]) -> Category | None:
    try:
        return Category(value)
    except ValueError:
        problems.append(f"{where}: unknown category {value!r}")
        return None


def _str(entry: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {key} must be a non-empty string")
        return ""
    return value


def _bool(entry: Mapping[str, Any], key: str, where: str, problems: list[str]) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        problems.append(f"{where}: {key} must be true or false")
        return False
    return value


def parse_rules(data: Mapping[str, Any]) -> RuleSet:
    """Validate a parsed rule table and compile it; raise RuleError naming every problem."""
    problems: list[str] = []
    unknown = set(data) - {"codes", "texts"}
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    seen: set[str] = set()
    codes: dict[str, CodeRule] = {}
    for n, entry in enumerate(data.get("codes", [])):
        where = f"codes[{n}]"
        extra = set(entry) - {"id", "code", "category", "refine", "source"}
        if extra:
            problems.append(f"{where}: unknown keys {', '.join(sorted(extra))}")
        rid, code = _str(entry, "id", where, problems), _str(entry, "code", where, problems)
        cat = _category(entry.get("category"), where, problems)
        if code and not _CODE_KEY.match(code):
            problems.append(f"{where}: code {code!r} is not 'subject.detail' or 'subject.*'")
        if code in codes:
            problems.append(f"{where}: code {code} listed twice")
        if rid in seen or (rid and not _ID.match(rid)):
            problems.append(f"{where}: id {rid!r} is duplicated or not lower-case-dashed")
        seen.add(rid)
        refine = _bool(entry, "refine", where, problems)
        source = _str(entry, "source", where, problems)
        if cat is not None and code:
            codes[code] = CodeRule(rid, code, cat, refine, source)
    texts: list[TextRule] = []
    for n, entry in enumerate(data.get("texts", [])):
        where = f"texts[{n}]"
        extra = set(entry) - {"id", "lang", "pattern", "category", "beats_code", "source"}
        if extra:
            problems.append(f"{where}: unknown keys {', '.join(sorted(extra))}")
        rid, pattern = _str(entry, "id", where, problems), _str(entry, "pattern", where, problems)
        lang = _str(entry, "lang", where, problems)
        cat = _category(entry.get("category"), where, problems)
        if rid in seen or (rid and not _ID.match(rid)):
            problems.append(f"{where}: id {rid!r} is duplicated or not lower-case-dashed")
        seen.add(rid)
        if pattern:
            try:
                groups = re.compile(pattern).groups
            except re.error as exc:
                problems.append(f"{where}: bad pattern: {exc}")
            else:
                if groups:
                    problems.append(f"{where}: use (?:...) groups, not capturing ones")
            literal = re.sub(r"\\.", "", pattern)  # escapes such as \S are not letters
            if literal != literal.lower():
                problems.append(f"{where}: pattern must be lower-case (text is lower-cased)")
        beats = _bool(entry, "beats_code", where, problems)
        source = _str(entry, "source", where, problems)
        if cat is not None:
            texts.append(TextRule(rid, lang, pattern, cat, beats, source))
    if problems:
        raise RuleError(problems)
    return RuleSet(
        codes=codes,
        texts=tuple(texts),
        index=TextIndex([(t, t.pattern) for t in texts]),
        overriding=TextIndex([(t, t.pattern) for t in texts if t.beats_code]),
    )


def load_rules(path: Path | str) -> RuleSet:
    """Read and compile a rule file; RuleError on a bad table, OSError on a missing file."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RuleError([f"{path}: line {line}: not UTF-8"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RuleError([f"{path}: {exc}"]) from exc
    return parse_rules(data)


@functools.cache
def default_rules() -> RuleSet:
    """The shipped table, compiled on first use and shared afterwards."""
    return load_rules(DEFAULT_RULES)
