# Rule: the fallback reads only replies no rule reads (classify() calls it last); it is pure,
# deterministic, and its knowledge is data (fallback_model.json), like rules.toml.
"""A token-weight fallback for replies no text rule matches.

A multinomial naive Bayes model over the reply's words, trained by
tests/data/replies/train_fallback.py on the *development* part of the labelled corpus
(tests/data/replies/corpus.jsonl) and the golden rows, and shipped as
policy/classify/fallback_model.json. It names a category only when it is confident:

* a hard category (bad-mailbox, bad-domain, inactive-mailbox) only when its posterior is
  at least `hard_threshold` (chosen so that no non-hard row of the development part,
  predicted by leave-one-source-out, is called hard above it); a false hard suppresses a
  live address and costs more than a miss;
* any other category only when its posterior is at least `min_confidence`.

Otherwise it says nothing and the reply stays undetermined/other. `explain()` gives the
tokens that weighed most for the chosen category, which `bouncer classify` prints.

Tokens: lower-cased letter runs of 2+ characters (numbers, addresses, host names and URLs
are dropped); runs of an unspaced script (CJK, kana) become character pairs, so "用户不存在"
and "用戶不存在" share "不存" and "存在".
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.verdict import Category

DEFAULT_MODEL = Path(__file__).with_name("fallback_model.json")
RULE_ID = "fallback-model"

_LETTERS = re.compile(r"[^\W\d_]{2,}")
_UNSPACED = "\u2e80"
# Function words carry no meaning about the failure; left in, they decide by frequency.
_STOP = frozenset(
    """a an the is are was were be been to of in on at by for from with as or and not no it
    its this that these those you your we our us he she they them his her my me i do does did
    has have had will would can could should may might please sorry here there than then so
    if but which who whom what when where why how all any each some more most such only also
    le la les un une des du de et est sont au aux en pour par sur dans ce cette ces vous nous
    il elle ne pas que qui der die das ein eine und ist sind den dem des zu von mit für auf im
    el los las una y es son del al por para con lo il gli di che da per con non è o os as um
    uma e é do da dos das em no na het een en van op te voor niet""".split()
)


def _noise(word: str) -> bool:
    """An address, host name, URL, IP or bracketed id: names, not meaning."""
    return "@" in word or "/" in word or "\\" in word or word.count(".") > 1 or word[0] in "[<("


def tokens(text: str) -> frozenset[str]:
    """The set of tokens of a reply text (any case)."""
    kept = " ".join([w for w in text.lower().split() if not _noise(w)])
    words = set(_LETTERS.findall(kept))
    words -= _STOP
    for word in [w for w in words if w[0] >= _UNSPACED]:
        words.discard(word)
        words.update(word[i : i + 2] for i in range(len(word) - 1))
    return frozenset(words)


@dataclass(frozen=True, slots=True)
class Prediction:
    category: Category
    confidence: float  # posterior probability of `category`
    tokens: tuple[str, ...]  # the known tokens that weighed most for it, strongest first


@dataclass(frozen=True, slots=True)
class Model:
    categories: tuple[Category, ...]
    prior: tuple[float, ...]  # log prior per category
    weights: Mapping[str, tuple[float, ...]]  # token -> log P(token | category)
    hard_threshold: float
    min_confidence: float

    def predict(self, text: str, explain: bool = True) -> Prediction | None:
        """The confident category of `text`, or None (see the module docstring).

        `explain=False` leaves `tokens` empty (classify() needs only the category)."""
        weights = self.weights
        known = [t for t in tokens(text) if t in weights]
        if not known:
            return None
        # One score per category: the prior plus each known token's weights (map in C).
        scores: Sequence[float] = self.prior
        for t in known:
            scores = list(map(operator.add, scores, weights[t]))
        best = max(scores)
        top = scores.index(best)
        confidence = 1.0 / sum(math.exp(s - best) for s in scores)
        category = self.categories[top]
        needed = self.hard_threshold if category in _HARD else self.min_confidence
        if confidence < needed:
            return None
        if not explain:
            return Prediction(category, confidence, ())
        second = max((i for i in range(len(scores)) if i != top), key=scores.__getitem__)
        lift = sorted(((weights[t][top] - weights[t][second], t) for t in known), reverse=True)
        return Prediction(category, confidence, tuple(t for d, t in lift[:3] if d > 0))


_HARD = frozenset({Category.BAD_MAILBOX, Category.BAD_DOMAIN, Category.INACTIVE_MAILBOX})


def parse_model(data: Mapping[str, Any]) -> Model:
    """Build a Model from its JSON form; ValueError on a malformed one."""
    try:
        categories = tuple(Category(c) for c in data["categories"])
        n = len(categories)
        prior = tuple(float(x) for x in data["prior"])
        weights = {str(t): tuple(float(x) for x in w) for t, w in data["weights"].items()}
        hard, low = float(data["hard_threshold"]), float(data["min_confidence"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed fallback model: {exc}") from exc
    if len(prior) != n or any(len(w) != n for w in weights.values()):
        raise ValueError("malformed fallback model: vectors of the wrong length")
    return Model(categories, prior, weights, hard, low)


@functools.cache
def default_model() -> Model:
    """The shipped model, read on first use and shared afterwards."""
    return parse_model(json.loads(DEFAULT_MODEL.read_text(encoding="utf-8")))
