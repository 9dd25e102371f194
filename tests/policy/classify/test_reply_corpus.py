"""The labelled reply corpus (tests/data/replies/corpus.jsonl) and the fallback model.

The held-out part comes from sources never used to write rules or to train the fallback
model; its figures predict replies nobody here has seen. Each held-out set was measured
once and then (A to E) moved to the development part, its misses fixed; the held-out
part now is set F, collected after the last rule changes (docs/classifier.md gives every
set's first-run figures). The targets on it (class >= 95%, hard recall >= 95%,
category >= 90%) are not all met: the floors below are what F reached on its one run (a
regression guard), the strict xfail names the gap, and false hards must be zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from policy.classify.classify import FALLBACK_RULE, classify, fallback_reasons
from policy.classify.fallback import default_model, parse_model, tokens
from policy.classify.rules import CLASS_OF, default_rules
from policy.reply import Reply, parse_reply
from policy.verdict import BounceClass, Category
from relay.cli.main import main
from tests.support.reply_corpus import evaluate, load, transient

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = tomllib.loads((ROOT / "tests/policy/data/replies.toml").read_text(encoding="utf-8"))["row"]
LANGUAGES = {"en", "fr", "it", "de", "es", "pt", "nl", "pl", "ru", "cs", "sv", "ja", "zh"}


def test_rows_are_well_formed_and_parts_share_no_source() -> None:
    rows = load()
    assert len(rows) >= 1100
    for row in rows:
        assert row.part in ("dev", "heldout") and row.source and row.lang
        category = Category(row.category)
        expected = BounceClass.SOFT if transient(row.reply) else CLASS_OF[category]
        assert row.klass == expected.value, row.reply  # class follows category
    dev = {r.source for r in rows if r.part == "dev"}
    held = {r.source for r in rows if r.part == "heldout"}
    assert len(held) >= 7 and dev.isdisjoint(held)
    assert len({r.reply for r in rows}) == len(rows)


def test_held_out_has_no_false_hard_and_keeps_its_floors() -> None:
    total = evaluate(load("heldout")).total
    assert total.n >= 44
    assert total.false_hard == 0
    assert total.klass / total.n >= 0.97
    assert total.hard_found / total.hard >= 0.95
    assert total.category / total.n >= 0.84


def test_each_held_out_set_was_measured_then_moved_or_is_the_held_out_part() -> None:
    rows = load()
    for name in "ABCDE":
        mine = [r for r in rows if r.set == name]
        assert mine and all(r.part == "dev" for r in mine), name
        assert all(f"[held-out {name}" in r.source for r in mine), name
    held = [r for r in rows if r.part == "heldout"]
    assert held and {r.set for r in held} == {"F"}


def test_no_set_has_a_false_hard_now() -> None:
    # Every held-out set had zero false hards on its first run except E (4, fixed in
    # round 4 by meaning: an IP refusal in Italian, a temporary DNS failure, a quota
    # violation under 5.1.1, a PEC refusal); none may come back.
    for name in "ABCDEF":
        assert evaluate(load(set=name)).total.false_hard == 0, name


@pytest.mark.xfail(strict=True, reason="the targets not met on the held-out part yet")
def test_held_out_meets_the_targets() -> None:
    total = evaluate(load("heldout")).total
    assert total.klass / total.n >= 0.95
    assert total.hard_found / total.hard >= 0.95
    assert total.category / total.n >= 0.90


def test_development_part() -> None:
    total = evaluate(load("dev")).total
    assert total.false_hard == 0
    assert total.klass / total.n >= 0.98 and total.category / total.n >= 0.95


def test_rules_and_golden_rows_cover_thirteen_languages() -> None:
    rules = default_rules()
    assert {t.lang for t in rules.texts} >= LANGUAGES
    golden_rules = {row["rule"] for row in GOLDEN}
    for lang in LANGUAGES:
        assert any(t.id in golden_rules for t in rules.texts if t.lang == lang), lang


MAILPRO = [
    ("domaine retiré", "bad-domain"),
    ("domaine mauvais", "bad-domain"),
    ("domaine invalide", "bad-domain"),
    ("domaine inconnu", "bad-domain"),
    ("domaine illégal", "bad-domain"),
    ("domaine non disponible", "bad-domain"),
    ("domaine plus d'usage", "bad-domain"),
    ("email aucune", "bad-mailbox"),
    ("email mauvais", "bad-mailbox"),
    ("email invalide", "bad-mailbox"),
    ("email inconnu", "bad-mailbox"),
    ("email illégal", "bad-mailbox"),
    ("email non disponible", "bad-mailbox"),
    ("email pas connu", "bad-mailbox"),
    ("email pas ici", "bad-mailbox"),
    ("email pas trouvé", "bad-mailbox"),
    ("adresse plus valide", "bad-mailbox"),
    ("adresse plus disponible", "bad-mailbox"),
    ("Adresse du destinataire rejetée", "bad-mailbox"),
    ("boîte mail inactive", "inactive-mailbox"),
]


@pytest.mark.parametrize(("text", "category"), MAILPRO)
def test_mailpro_french_keywords(text: str, category: str) -> None:
    # mailprofrance.com's hard-bounce lists, with and without a code, without the fallback.
    for line in (f"550 {text}", f"550 5.0.0 {text}", text):
        verdict = classify(parse_reply(line), fallback=False)
        assert (verdict.klass, verdict.category.value) == (BounceClass.HARD, category), line


@pytest.mark.parametrize(
    ("line", "category"),
    [
        ("552 5.3.4 Message too big for system", "message-too-large"),
        ("552 5.2.3 Message length exceeds administrative limit", "message-too-large"),
        ("554 5.4.6 Message exceeded 50 hops, this may indicate a mail loop.", "bad-configuration"),
        ("454 4.7.0 TLS not available due to local problem", "bad-configuration"),
        ("550 5.7.5 MTA-STS policy validation failed", "bad-configuration"),
    ],
)
def test_contract_clarifications(line: str, category: str) -> None:
    verdict = classify(parse_reply(line))
    assert verdict.category.value == category
    assert verdict.klass is CLASS_OF[verdict.category] or verdict.klass is BounceClass.SOFT


def test_fallback_reads_what_no_rule_reads_and_explains_itself() -> None:
    line = "550 5.0.0 quota exceeded for this box"
    reply = parse_reply(line)
    assert classify(reply, fallback=False).rule == "en-quota"  # a rule reads it: no model
    text = "storage space exhausted full quota mailbox"
    guess = default_model().predict(text)
    assert guess is not None and guess.category is Category.QUOTA_ISSUES
    assert guess.tokens and set(guess.tokens) <= tokens(text)


def test_fallback_says_hard_only_above_its_threshold() -> None:
    model = default_model()
    assert 0.9 <= model.hard_threshold < 1.0
    for row in load():
        guess = model.predict(parse_reply(row.reply).text)
        if guess is not None and CLASS_OF[guess.category] is BounceClass.HARD:
            assert guess.confidence >= model.hard_threshold


def test_fallback_never_makes_a_4xx_hard() -> None:
    for row in load():
        reply = parse_reply(row.reply)
        verdict = classify(Reply(451, None, reply.text))
        assert verdict.klass is BounceClass.SOFT


def test_fallback_verdict_and_cli_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    line = "550 storage exhausted"  # no rule reads it; the model has seen "storage"
    assert classify(parse_reply(line), fallback=False).rule == "fallback-5xx"
    verdict = classify(parse_reply(line))
    reasons = fallback_reasons(parse_reply(line))
    assert verdict.rule == FALLBACK_RULE and reasons is not None
    assert (verdict.klass, verdict.category) == (BounceClass.SOFT, Category.QUOTA_ISSUES)
    assert main(["classify", "--json", line]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["rule"] == FALLBACK_RULE and record["tokens"] == list(reasons.tokens)
    assert main(["classify", line]) == 0
    plain = capsys.readouterr().out.split("\t")
    assert plain[2].startswith(f"{FALLBACK_RULE}:") and "(" in plain[2]


def test_malformed_model_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_model({"categories": ["bad-mailbox"], "prior": [0.0, 1.0]})
    with pytest.raises(ValueError, match="malformed"):
        parse_model({"categories": ["nope"]})


def test_tokens_drop_numbers_addresses_and_function_words() -> None:
    assert tokens("550 5.1.1 <a@b.example> The user x@y.z is not here [1.2.3.4]") == {"user"}
    assert {"不存", "存在"} <= tokens("该用户不存在")


def test_shipped_model_is_what_the_trainer_writes() -> None:
    trainer = ROOT / "tests" / "data" / "replies" / "train_fallback.py"
    done = subprocess.run(
        [sys.executable, str(trainer), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
