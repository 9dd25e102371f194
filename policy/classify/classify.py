# Rule: this module decides what a reply means (docs/behaviour.md#verdicts); it performs
# no I/O, reads no clock, and knows no provider: every phrasing lives in rules.toml.
"""classify(reply) -> Verdict(class, category, rule).

Order of evidence, most trusted first:

1. A 2xx is delivered.
2. A specific enhanced status code (RFC 3463) decides, unless a `beats_code` text
   rule matches (providers that send 5.1.1 for a rate limit or a blocklist).
3. Otherwise (no code, x.0.0, a subject wildcard, codes providers misuse such as 5.7.1)
   the first text rule that matches decides; the code is the fallback.
4. Nothing matched: undetermined/other for a 5xx, soft/other for a 4xx.

The class follows from the category (policy.classify.rules.CLASS_OF), and then the first digit
of the reply code wins over everything: a 4xx is always soft, never hard
(docs/behaviour.md#verdicts).

When the outer reply has no code or a generic one, the text is searched for a reply
quoted inside it: Postfix "host X said: 550 5.1.1 ...", Exim "SMTP error from remote
mail server after RCPT TO:<a@b>: 550 ...", Amazon SES "550-'5.2.2 ...'".
"""

from __future__ import annotations

import re

from policy.classify.fallback import RULE_ID as FALLBACK_RULE
from policy.classify.fallback import Model, Prediction, default_model
from policy.classify.rules import CLASS_OF, RuleSet, default_rules
from policy.reply import Reply
from policy.verdict import BounceClass, Category, Verdict

# A reply quoted in text: a 4xx/5xx code, then a space or "-" and either an enhanced
# code or a word, an address in angle brackets or a quote (so "port 465" or "[416]"
# don't count; "said: 551 <a@b> is a deactivated mailbox" does). It must start the text or
# follow a separator; _quoted() checks that by hand because a look-behind in front
# would stop re from skipping quickly to the candidate digits.
_QUOTED_REPLY = re.compile(
    r"([45][0-5]\d)[ -]'?(?:#?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])|(?=[a-z<\"]))"
)
_REPLY_AFTER = frozenset(" \t\n:<'\"(>")
# A bare enhanced code in text: "RCPT TO not accepted: 5.7.1 This system ...".
_QUOTED_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])")

__all__ = ["FALLBACK_RULE", "classify", "classify_at", "fallback_reasons", "shared_data_verdict"]

DELIVERED = Verdict(BounceClass.DELIVERED, Category.DELIVERED, "smtp-2xx")
_FALLBACK_PERMANENT = Verdict(BounceClass.UNDETERMINED, Category.OTHER, "fallback-5xx")
_FALLBACK_TRANSIENT = Verdict(BounceClass.SOFT, Category.OTHER, "fallback-4xx")
_FALLBACK_TEXT = Verdict(BounceClass.UNDETERMINED, Category.OTHER, "fallback-text")
_OTHER = Category.OTHER


def classify(reply: Reply, rules: RuleSet | None = None, fallback: bool = True) -> Verdict:
    """Classify one SMTP reply (or a bare diagnostic text with code 0). Pure.

    `fallback`: when no rule reads the reply (or only a code that says nothing), ask the
    token-weight model of policy/classify/fallback.py; False keeps undetermined/other.
    """
    code = reply.code
    text = reply.text.lower()
    if 200 <= code < 300:
        # 220/221 greet or close; they answer no mail command. A diagnostic that starts
        # with a greeting ("220-laposte 421 4.2.1 Service refuse") carries its real
        # reply inside, so only a 220/221 with a quoted 4xx/5xx is read further.
        if code not in (220, 221) or _QUOTED_REPLY.search(text) is None:
            return DELIVERED
        code = 0
    enhanced = reply.enhanced
    if code == 0 and enhanced is not None and enhanced.startswith("2"):
        return DELIVERED  # a bare DSN status "2.1.5 ok": success without a reply code
    rs = rules if rules is not None else default_rules()
    if "\n" in text:
        text = text.replace("\n", " ")  # multi-line replies: match across line ends
    if "  " in text or "\t" in text:
        text = " ".join(text.split())  # DSN lines folded with runs of blanks: "does not     exist"
    if "_" in text:
        text = text.replace("_", " ")  # provider tags: "BAD_RECIPIENT", "ADDRESS_NOT_FOUND"
    if enhanced and code and enhanced in text:
        # Multi-line replies flattened into one line keep each line's "550-5.7.1 "
        # prefix in mid-sentence; drop them so patterns see the words side by side.
        text = text.replace(f"{code}-{enhanced} ", "").replace(f"{code} {enhanced} ", "")
    code_rule = rs.code_rule(enhanced)

    if code == 0 or code_rule is None or code_rule.refine:
        # The outer reply says little: look for a reply quoted inside the text.
        inner_code, inner_enhanced = _quoted(text)
        if code == 0:
            code = inner_code
        if inner_enhanced and (code == 0 or inner_enhanced[0] == str(code)[0]):
            inner_rule = rs.code_rule(inner_enhanced)
            if inner_rule is not None and (code_rule is None or not inner_rule.refine):
                code_rule, enhanced = inner_rule, inner_enhanced

    if code_rule is not None and not code_rule.refine:
        override = rs.first_overriding(text)
        if override is not None:
            category, rule_id = override.category, override.id
        else:
            category, rule_id = code_rule.category, code_rule.id
    else:
        text_rule = rs.first_text(text)
        guess = None
        if text_rule is None and fallback and (code_rule is None or code_rule.category is _OTHER):
            guess = default_model().predict(text, explain=False)
            if guess is not None and guess.category is _OTHER:
                guess = None  # the model has nothing to add to "says nothing clear"
        if text_rule is not None:
            category, rule_id = text_rule.category, text_rule.id
        elif guess is not None:
            category, rule_id = guess.category, FALLBACK_RULE
        elif code_rule is not None:
            category, rule_id = code_rule.category, code_rule.id
        else:
            return _fallback(code, enhanced)

    klass = CLASS_OF[category]
    if _transient(code, enhanced) and klass is not BounceClass.SOFT:
        klass = BounceClass.SOFT  # the first digit wins; 4xx is never hard
    return Verdict(klass, category, rule_id)


def fallback_reasons(reply: Reply, model: Model | None = None) -> Prediction | None:
    """What the fallback model makes of `reply`'s text: its category, confidence and the
    tokens that weighed most. For `bouncer classify`, to show why a `fallback-model`
    verdict was given."""
    return (model or default_model()).predict(reply.text.lower().replace("\n", " "))


def classify_at(reply: Reply, stage: str, rules: RuleSet | None = None) -> Verdict:
    """classify(), knowing the SMTP command the reply answered ("RCPT", "DATA", ...).

    A "user unknown" after DATA comes from a remote that accepted the same recipient at
    RCPT: the mailbox exists and a filter refused the message (Japanese carriers answer
    "550 Unknown user" to mail the recipient filtered; Sisimai calls it `filtered`).
    DATA's one reply also covers every recipient of the transaction. So a hard verdict
    at DATA becomes block/content-related: never a reason to suppress anyone.
    """
    verdict = classify(reply, rules)
    if stage.upper() in ("DATA", ".", "END OF DATA"):
        return _not_hard_at_data(verdict)
    return verdict


def shared_data_verdict(verdict: Verdict, recipients: int) -> Verdict:
    """The verdict of a DATA reply for each of the `recipients` it answered at once.

    With one recipient the reply is plainly about that address (Yahoo refuses unknown
    accounts after DATA). With several, a hard verdict cannot be pinned on any one of them,
    so none is suppressed for it: it reads as classify_at() reads DATA.
    """
    return _not_hard_at_data(verdict) if recipients > 1 else verdict


def _not_hard_at_data(verdict: Verdict) -> Verdict:
    if verdict.klass is BounceClass.HARD:
        return Verdict(BounceClass.BLOCK, Category.CONTENT_RELATED, f"{verdict.rule}@data")
    return verdict


def _quoted(text: str) -> tuple[int, str | None]:
    """The first reply code (4xx/5xx) and enhanced code quoted inside `text`."""
    m = _QUOTED_REPLY.search(text)
    while m is not None and m.start() > 0 and text[m.start() - 1] not in _REPLY_AFTER:
        m = _QUOTED_REPLY.search(text, m.start() + 1)
    if m is not None:
        code = int(m.group(1))
        if m.group(2):
            return code, f"{m.group(2)}.{m.group(3)}.{m.group(4)}"
        e = _enhanced_in(text, m.end())
        if e is not None and e[0] == m.group(1)[0]:
            return code, e
        return code, None
    e = _enhanced_in(text, 0)
    if e is not None and e[0] != "2":
        return 0, e
    return 0, None


def _enhanced_in(text: str, pos: int) -> str | None:
    # Not inside a longer dotted number ("10.5.1.1") or a word; "#5.1.1" is qmail's form.
    m = _QUOTED_ENHANCED.search(text, pos)
    while m is not None and m.start() > 0:
        before = text[m.start() - 1]
        if not (before.isalnum() or before in "._"):
            break
        m = _QUOTED_ENHANCED.search(text, m.start() + 1)
    return None if m is None else m.group(0)


def _transient(code: int, enhanced: str | None) -> bool:
    if code:
        return 400 <= code < 500
    return enhanced is not None and enhanced.startswith("4")


def _fallback(code: int, enhanced: str | None) -> Verdict:
    if _transient(code, enhanced):
        return _FALLBACK_TRANSIENT
    if code:
        return _FALLBACK_PERMANENT
    return _FALLBACK_TEXT
