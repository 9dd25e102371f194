# Corpus figures of the bounce parser, on the subset in tests/data/sisimai (always) and on
# every Sisimai email of the full corpus (skipped with a reason when absent). Full corpus:
# recipient extraction >= 90% holds.
# Hard-vs-not-hard agreement: the raw figure has a regression floor (93%); the "judged"
# figure leaves out the disagreements listed below as the label being wrong by bouncer's rules
# (each reason is in docs/intake.md, "Disagreements judged") and asserts the 95% target; every
# judged row must still disagree, so the list cannot hide a change. The 95% target on the
# raw labels is not reached and stays a strict xfail, which fails the day it is met.
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from policy.bounces.parse import parse_bounce
from tests.policy.bounces.corpus_figures import Figures, measure
from tests.support.sisimai import (
    CORPUS_PARAMS,
    FULL_CORPUS_ABSENT,
    SUBSET_DIR,
    corpus_dir,
    corpus_for,
)

# Disagreements judged to be the label's error by bouncer's rules, by file name (dos__/mac__
# twins share them); docs/intake.md gives each reason in full.
JUDGED_LABEL_WRONG: dict[str, str] = {
    # The reply says the mailbox does not exist, in a form only an RCPT reply or the
    # mailbox server's own look-up writes; nothing in the bounce says DATA or a filter.
    # Sisimai files a user-unknown text without a known command as filtered.
    "lhost-activehunter-02.eml": "Postfix RCPT refusal '... User unknown in local recipient table'",
    "lhost-postfix-07.eml": "'said: 550 <rcpt>: User unknown' names the recipient (RCPT form)",
    "lhost-mcafee-04.eml": "'550 rcpt... No such user' names the recipient (sendmail RCPT form)",
    "lhost-mcafee-05.eml": "'550 <rcpt>... User not exist' names the recipient",
    "lhost-surfcontrol-01.eml": "'550 rcpt... No such user' names the recipient",
    "lhost-sendmail-27.eml": "pipelined transcript: the 550 answered RCPT, labelled filtered",
    "lhost-sendmail-48.eml": "pipelined transcript: the 550 answered RCPT, labelled filtered",
    "lhost-apachejames-01.eml": "Apache James's own 'no such user here'",
    "lhost-exchange2003-04.eml": "Exchange's own directory: 'Recipient Not Found' (MSEXCH:IMC)",
    "lhost-x2-01.eml": "'This user doesn't have a ... account': the provider's no-account reply",
    "lhost-x2-02.eml": "'This user doesn't have a ... account': the provider's no-account reply",
    "rfc3464-42.eml": "Gmail NoSuchUser 'account ... does not exist' labelled filtered",
    "rfc3464-66.eml": "Gmail NoSuchUser 'account ... does not exist' labelled filtered",
    # Status 5.2.1 with "User Unknown": bouncer reads x.2.1 as disabled (hard); Sisimai
    # files a 5.2.x status as filtered.
    "lhost-amazonworkmail-02.eml": "Status 5.2.1 + 'User Unknown', labelled filtered",
    "lhost-messagingserver-06.eml": "Status 5.2.1 + 'User Unknown', labelled filtered",
    "lhost-zoho-02.eml": "Status 5.2.1 + 'User Unknown', labelled filtered",
    # The label contradicts the report's own code or action.
    "lhost-postfix-01.eml": "Status 5.1.1 'No such user' labelled mailererror",
    "rfc3464-01.eml": "'5.1.1 User Unknown' labelled mailboxfull",
    "lhost-opensmtpd-12.eml": "Action: delayed, 'only a temporary failure', labelled notaccept",
    "lhost-sendmail-57.eml": "5.7.27 is the sender's null MX (RFC 7505), labelled notaccept",
    # The text does not say the recipient's address or domain is dead.
    "lhost-exim-37.eml": "'553 neko.example.com does not exist' is the sender's domain",
    "lhost-exim-31.eml": "'may not exist, may be blacklisted, or missing dns entries': a guess",
    "rhost-aol-06.eml": "malformed DNS reply labelled notaccept (hard)",
    "rfc3834-06.eml": "an RFC 3834 auto-reply, never a bounce, labelled suspend",
}


def _judged(file: str) -> bool:
    return file.split("__")[-1] in JUDGED_LABEL_WRONG


@dataclass(frozen=True)
class Floors:
    emails: int  # every email was read
    recipient: float  # a recipient found
    hard: float  # hard-vs-not-hard agreement with the raw labels (regression floor)
    judged: float  # the same once the documented label errors are set aside
    kinds: float  # complaints and auto-replies recognised
    extra: int  # at most this many recipients reported beyond the labelled count


FLOORS = {
    # Measured 2026-11-22: 714/761 = 93.8% raw, 97.9% judged; 2026-12-02: 2 recipients
    # reported beyond the labelled 775.
    "full": Floors(emails=700, recipient=0.90, hard=0.93, judged=0.95, kinds=0.85, extra=2),
    # The subset holds every judged file, so its raw figure is low by design. Measured on
    # its 118 emails: recipient 117/118, raw 89/118, judged 89/94, kinds 2/2, no extra
    # recipient; each floor fails if one more email is read worse.
    "subset": Floors(emails=118, recipient=0.99, hard=0.75, judged=0.94, kinds=1.0, extra=0),
}


@cache
def _figures(corpus: Path) -> Figures:
    return measure(corpus)


@pytest.fixture(params=CORPUS_PARAMS)
def corpus(request: pytest.FixtureRequest) -> Path:
    return corpus_for(request.param)


def test_corpus_figures(corpus: Path) -> None:
    floors = FLOORS["subset" if corpus == SUBSET_DIR else "full"]
    fig = _figures(corpus)
    judged = [d for d in fig.hard_disagreements if _judged(d.split(":")[0])]
    judged_total = fig.emails - len(judged)
    print("\n" + "\n".join(fig.lines()))
    print(
        f"judged (leaving out {len(judged)} documented label errors): "
        f"{fig.hard_agree}/{judged_total} ({fig.hard_agree / judged_total:.1%})"
    )
    assert fig.emails >= floors.emails  # every email was read
    assert fig.with_recipient / fig.emails >= floors.recipient, fig.misses
    assert fig.hard_agree / fig.emails >= floors.hard, fig.hard_disagreements
    assert fig.hard_agree / judged_total >= floors.judged, fig.hard_disagreements
    assert fig.kind_agree / fig.kind_total >= floors.kinds  # complaints and auto-replies
    assert fig.extra_recipients <= floors.extra  # no bystander reported as failed


def test_every_judged_disagreement_is_still_a_disagreement(corpus: Path) -> None:
    # A judged file that now agrees must leave the list, so the list never hides a change.
    # The subset holds every judged file.
    fig = _figures(corpus)
    still = {d.split(":")[0].split("__")[-1] for d in fig.hard_disagreements}
    assert set(JUDGED_LABEL_WRONG) <= still, set(JUDGED_LABEL_WRONG) - still


@pytest.mark.xfail(
    strict=True,
    reason="93.8% on the raw labels; 97.9% once the documented label errors are set aside; "
    "the open disagreements are listed in docs/intake.md",
)
@pytest.mark.corpus
def test_hard_agreement_meets_target() -> None:
    full = corpus_dir()
    if full is None:
        pytest.skip(FULL_CORPUS_ABSENT)
    fig = _figures(full)
    assert fig.hard_agree / fig.emails >= 0.95


def test_crlf_and_cr_twins_parse_like_lf(corpus: Path) -> None:
    emails = corpus / "emails"
    pairs = [
        (p, emails / p.name[5:])
        for p in sorted(emails.glob("*__*.eml"))
        if (emails / p.name[5:]).is_file()
    ]
    assert len(pairs) >= (3 if corpus == SUBSET_DIR else 100)
    for variant, twin in pairs:
        got = [(r.recipient, r.status, r.verdict) for r in parse_bounce(variant.read_bytes())]
        want = [(r.recipient, r.status, r.verdict) for r in parse_bounce(twin.read_bytes())]
        assert got == want, variant.name
