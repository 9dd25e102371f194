"""Golden rows for the classifier, the rule table's validation, and its fast index.

Every rule in policy/classify/rules.toml must have a row in tests/policy/data/replies.toml; each
row names the class, category and rule that must decide it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.classify.classify import classify, classify_at, shared_data_verdict
from policy.classify.index import TextIndex, split_alternatives
from policy.classify.rules import CLASS_OF, RuleError, default_rules, load_rules, parse_rules
from policy.decide import Stage, decide
from policy.reply import Reply, parse_reply
from policy.verdict import BounceClass, Category

ROWS: list[dict[str, Any]] = tomllib.loads(
    (Path(__file__).parents[1] / "data" / "replies.toml").read_text(encoding="utf-8")
)["row"]


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_golden_row(row: dict[str, Any]) -> None:
    reply = parse_reply(row["reply"])
    stage = row.get("stage")
    verdict = classify_at(reply, stage) if stage else classify(reply)
    assert (verdict.klass.value, verdict.category.value, verdict.rule) == (
        row["class"],
        row["category"],
        row["rule"],
    )


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_golden_row_disposition(row: dict[str, Any]) -> None:
    reply = parse_reply(row["reply"])
    stage = row.get("stage")
    verdict = None
    if not reply.is_success:
        verdict = classify_at(reply, stage) if stage else classify(reply)
    at = Stage.RCPT if stage == "RCPT" else Stage.DATA
    assert decide(reply, verdict, at).disposition.name.lower() == row["disposition"]


def test_every_rule_has_a_golden_row() -> None:
    rules = default_rules()
    ids = {c.id for c in rules.codes.values()} | {t.id for t in rules.texts}
    covered = {row["rule"].split("@")[0] for row in ROWS}
    assert ids - covered == set()


def test_row_ids_are_unique() -> None:
    ids = [row["id"] for row in ROWS]
    assert len(ids) == len(set(ids))


def test_every_rule_cites_a_source_and_languages_are_covered() -> None:
    rules = default_rules()
    assert all(len(c.source) > 10 for c in rules.codes.values())
    assert all(len(t.source) > 10 for t in rules.texts)
    assert {t.lang for t in rules.texts} >= {"en", "fr", "it", "de", "es", "pt"}


def test_4xx_is_never_hard() -> None:
    # docs/behaviour.md#verdicts: the first digit wins over the text and the enhanced code.
    for row in ROWS:
        reply = parse_reply(row["reply"])
        for code in (421, 450, 451, 452):
            verdict = classify(Reply(code, reply.enhanced, reply.text))
            assert verdict.klass is not BounceClass.HARD, row["id"]


def test_class_follows_category_for_5xx() -> None:
    for row in ROWS:
        reply = parse_reply(row["reply"])
        if reply.is_permanent and "stage" not in row:
            verdict = classify(reply)
            assert verdict.klass is CLASS_OF[verdict.category], row["id"]


def test_default_rules_are_compiled_once() -> None:
    assert default_rules() is default_rules()
    assert classify(parse_reply("550 5.1.1 x"), default_rules()) == classify(
        parse_reply("550 5.1.1 x")
    )


def test_custom_rules_are_used() -> None:
    rules = parse_rules(
        {
            "codes": [
                {"id": "c", "code": "0.0", "category": "other", "refine": True, "source": "t"}
            ],
            "texts": [
                {
                    "id": "t-one",
                    "lang": "en",
                    "pattern": "nope",
                    "category": "spam-related",
                    "source": "test",
                },
            ],
        }
    )
    assert classify(parse_reply("550 5.0.0 nope"), rules).rule == "t-one"
    assert classify(parse_reply("550 5.1.1 user unknown"), rules, fallback=False).rule == (
        "fallback-5xx"
    )


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"codes": [{"id": "a", "code": "1.1", "category": "nope", "source": "s"}]}, "category"),
        ({"codes": [{"id": "a", "code": "x", "category": "other", "source": "s"}]}, "subject"),
        (
            {
                "texts": [
                    {"id": "a", "lang": "en", "pattern": "(", "category": "other", "source": "s"}
                ]
            },
            "bad pattern",
        ),
        (
            {
                "texts": [
                    {"id": "a", "lang": "en", "pattern": "User", "category": "other", "source": "s"}
                ]
            },
            "lower-case",
        ),
        (
            {
                "texts": [
                    {"id": "a", "lang": "en", "pattern": "(x)", "category": "other", "source": "s"}
                ]
            },
            "groups",
        ),
        ({"texts": [{"id": "a", "lang": "en", "pattern": "x", "category": "other"}]}, "source"),
        (
            {
                "texts": [
                    {
                        "id": "a",
                        "lang": "en",
                        "pattern": "x",
                        "category": "other",
                        "source": "s",
                        "colour": 1,
                    }
                ]
            },
            "unknown keys",
        ),
        ({"rules": []}, "top-level"),
    ],
)
def test_bad_tables_are_refused_naming_the_problem(table: dict[str, Any], problem: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(table)
    assert any(problem in p for p in err.value.problems)


def test_load_rules_reports_toml_syntax(tmp_path: Path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text("[[texts]\n")
    with pytest.raises(RuleError):
        load_rules(bad)


def test_split_alternatives_respects_groups_classes_and_escapes() -> None:
    assert split_alternatives(r"a|b(?:c|d)|[|]x|\|y") == ["a", "b(?:c|d)", "[|]x", r"\|y"]


def test_word_start_semantics() -> None:
    assert classify(parse_reply("550 superuser unknown")).rule == "fallback-5xx"
    assert classify(parse_reply("550 super-user unknown")).rule == "en-user-unknown"


# The index must give exactly what trying every branch in order gives.
_CORPUS_WORDS = [
    "user",
    "unknown",
    "mailbox",
    "full",
    "spam",
    "blocked",
    "relay",
    "access",
    "denied",
    "account",
    "disabled",
    "quota",
    "over",
    "domain",
    "not",
    "found",
    "utente",
    "inesistente",
    "postfach",
    "voll",
    "usuário",
    "desconhecido",
    "boîte",
    "pleine",
    "dns",
    "error",
    "rbl",
    "timed",
    "out",
    "superuser",
    "5.1.1",
    "550",
    "-",
    ":",
    "<a@b>",
    "rejected",
    "recipient",
    "address",
    "sender",
    "invalid",
    "no",
    "such",
    "greylisted",
    "rfc5322",
    "policy",
    "is",
    "该用户不存在",
    "空间不足",
    "存在しません",
    "konto",
    "nie",
    "istnieje",
    "kontot",
    "finns",
    "inte",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_CORPUS_WORDS), max_size=12), st.sampled_from([" ", "", "."]))
def test_index_equals_scan(words: list[str], sep: str) -> None:
    rules = default_rules()
    text = sep.join(words).lower()
    assert rules.index.first(text) is rules.index.scan(text)


def test_index_equals_scan_on_golden_rows() -> None:
    rules = default_rules()
    for row in ROWS:
        text = row["reply"].lower().replace("\n", " ")
        assert rules.index.first(text) is rules.index.scan(text), row["id"]


def test_index_sizes_keep_most_branches_keyed() -> None:
    branches, keyless, keys = default_rules().index.sizes
    assert branches > 200 and keyless <= 10 and keys > 100


def test_text_index_is_generic() -> None:
    index: TextIndex[str] = TextIndex([("a", "no such user"), ("b", "user"), ("c", "x|y")])
    assert index.first("there is no such user here") == "a"
    assert index.first("user") == "b"
    assert index.first("y") == "c"
    assert index.first("z") is None


def test_quoted_inner_code_decides_when_outer_is_generic() -> None:
    verdict = classify(parse_reply("550 5.0.0 host x said: 552 5.2.2 over quota"))
    assert (verdict.klass, verdict.category) == (BounceClass.SOFT, Category.QUOTA_ISSUES)


def test_classify_at_keeps_non_hard_verdicts() -> None:
    reply = parse_reply("552 5.2.2 Mailbox full")
    assert classify_at(reply, "DATA") == classify(reply)


_REPLY_WORDS = _CORPUS_WORDS + ["5.2.2", "4.4.7", "5.7.1", "2.0.0", "(#5.1.1)", "said:", "451"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([421, 450, 451, 452, 454]),
    st.sampled_from([None, "4.0.0", "4.1.1", "4.2.2", "4.7.1", "5.1.1"]),
    st.lists(st.sampled_from(_REPLY_WORDS), max_size=10),
)
def test_property_4xx_never_hard(code: int, enhanced: str | None, words: list[str]) -> None:
    verdict = classify(Reply(code, enhanced, " ".join(words)))
    assert verdict.klass is BounceClass.SOFT


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_REPLY_WORDS), max_size=10))
def test_property_5xx_class_follows_category(words: list[str]) -> None:
    verdict = classify(Reply(550, None, " ".join(words)))
    assert verdict.klass is CLASS_OF[verdict.category]
    assert verdict.klass is not BounceClass.DELIVERED


def test_a_data_reply_shared_by_several_recipients_is_never_hard() -> None:
    verdict = classify(parse_reply("550 5.1.1 mailbox unavailable"))
    assert verdict.klass is BounceClass.HARD
    assert shared_data_verdict(verdict, 1) == verdict
    shared = shared_data_verdict(verdict, 2)
    assert (shared.klass, shared.category) == (BounceClass.BLOCK, Category.CONTENT_RELATED)
    assert shared.rule == f"{verdict.rule}@data"
    soft = classify(parse_reply("452 4.2.2 mailbox full"))
    assert shared_data_verdict(soft, 3) == soft


def test_unspaced_scripts_match_inside_runs_and_index_equals_scan() -> None:
    # Chinese and Japanese have no spaces between words: a rule must match inside a run.
    rules = default_rules()
    texts = [
        "550 该用户不存在",
        "用户不存在",
        "550 <a@b> のユーザーは登録されていません",
        "550 user unknown 收件人不存在",
        "550 超级用户不存在吗",
        "plain ascii text with no rule",
    ]
    for text in texts:
        assert rules.index.first(text.lower()) is rules.index.scan(text.lower()), text
    assert classify(parse_reply("550 该用户不存在")).rule == "zh-user-unknown"
    assert (
        classify(parse_reply("550 <a@b> のユーザーは登録されていません")).rule == "ja-user-unknown"
    )
