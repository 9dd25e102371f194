"""Agreement of the classifier with the Sisimai corpus labels.

Every test runs twice: on the subset kept in tests/data/sisimai (always present), and on
the full corpus (tests/support/sisimai.corpus_dir; skipped with a reason when absent).

For every corpus email with an RFC 3464 Diagnostic-Code, classify that text and compare
with the label mapped through tests/support/sisimai.REASON_MAP. Three figures:

* reply only: classify(Diagnostic-Code), what the classifier knows from one reply;
* with stage: classify_at(..., stage) when the bounce says which command the reply
  answered (as the relay always knows), e.g. Sisimai's `filtered` = "user unknown" at DATA;
* judged: the same, leaving out the disagreements docs/classifier.md lists as Sisimai
  (or its test harness) being wrong by docs/behaviour.md, each with its reason.

Run with `-s` to see the figures and every disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from policy.classify.classify import classify, classify_at
from policy.verdict import BounceClass, Verdict
from tests.support.sisimai import (
    CORPUS_PARAMS,
    SUBSET_DIR,
    Sample,
    corpus_for,
    expected_verdict,
    reply_of,
    samples,
    stage_of,
)

# Disagreements judged to be Sisimai's (or its DSN's) error by bouncer's rules, by file; the
# reasons are in docs/classifier.md ("Disagreements"). dos__/mac__ twins share them.
JUDGED_SISIMAI_WRONG: dict[str, str] = {
    # Gmail's DSN carries Status 4.0.0 with Action: failed for NXDOMAIN and null MX;
    # docs/behaviour.md#the-transaction makes both a bad-domain hard bounce.
    "rfc3464-52.eml": "null MX is bad-domain, Status 4.0.0 is Gmail's",
    "rfc3464-53.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    "rfc3464-54.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    "rfc3464-59.eml": "null MX is bad-domain (docs/behaviour.md#the-transaction)",
    "rfc3464-64.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    "rhost-gsuite-03.eml": "null MX is bad-domain (docs/behaviour.md#the-transaction)",
    "rhost-gsuite-04.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    "rhost-gsuite-05.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    "rhost-gsuite-10.eml": "null MX is bad-domain (docs/behaviour.md#the-transaction)",
    "rhost-gsuite-15.eml": "NXDOMAIN is bad-domain (docs/behaviour.md#the-transaction)",
    # A malformed name-server reply is a DNS fault, not proof the domain takes no mail.
    "rhost-aol-06.eml": "malformed DNS reply labelled notaccept (hard)",
    # The label does not belong to this Diagnostic-Code (positional pairing in a
    # multi-recipient report, or a label from the wrong recipient).
    "rfc3464-01.eml": "'5.1.1 User Unknown' labelled mailboxfull",
    "rfc3464-35.eml": "'550 user unknown' labelled networkerror 4.0.0",
    # No stage in the bounce, and the reply says plainly the user does not exist;
    # go-sisimai calls it filtered, p5-sisimai userunknown (corpus README, caveats).
    "lhost-mcafee-01.eml": "p5 labels it userunknown; go labels it filtered",
    "rfc3464-42.eml": "Gmail 'account ... does not exist' labelled filtered",
    "rfc3464-66.eml": "Gmail 'account ... does not exist' labelled filtered",
    # Sendmail transcripts ">>> DATA / <<< 550 ... User unknown / <<< 503 Need RCPT" (or
    # "554 no valid recipients"): the 550 answered RCPT, the DATA reply came last; Sisimai
    # files it as filtered (after DATA).
    "lhost-sendmail-02.eml": "550 answered RCPT (pipelined), labelled filtered",
    "lhost-sendmail-27.eml": "550 answered RCPT (pipelined), labelled filtered",
    "lhost-sendmail-48.eml": "550 answered RCPT (pipelined), labelled filtered",
    # The reply names the recipient the way an RCPT reply does ("rcpt... No such user");
    # a DATA reply covers every recipient and names none. Nothing in the bounce says DATA
    # or a filter; Sisimai files a user-unknown text without a known command as filtered.
    # docs/intake.md judges the same rows the same way for late bounces.
    "lhost-mcafee-04.eml": "'550 rcpt... No such user' names the recipient (RCPT form)",
    "lhost-mcafee-05.eml": "'550 <rcpt>... User not exist' names the recipient (RCPT form)",
    "lhost-surfcontrol-01.eml": "'550 rcpt... No such user' names the recipient (RCPT form)",
    # Status 5.2.1 (bouncer: disabled, hard) with "User Unknown"; Sisimai files a 5.2.x
    # status as filtered.
    "lhost-amazonworkmail-02.eml": "5.2.1 + 'User Unknown' labelled filtered",
    "lhost-messagingserver-06.eml": "5.2.1 + 'User Unknown' labelled filtered",
}


@dataclass
class Figures:
    total: int = 0
    hard_agree: int = 0
    category_agree: int = 0

    def add(self, got: Verdict, want: tuple[BounceClass, object]) -> bool:
        self.total += 1
        hard_ok = (got.klass is BounceClass.HARD) == (want[0] is BounceClass.HARD)
        self.hard_agree += hard_ok
        self.category_agree += got.category == want[1]
        return hard_ok

    def line(self, name: str) -> str:
        return (
            f"{name:<12} n={self.total:4d}  hard-vs-not-hard {self.hard_agree / self.total:6.1%}"
            f"  category {self.category_agree / self.total:6.1%}"
        )


def _judged(file: str) -> bool:
    return file.split("__")[-1] in JUDGED_SISIMAI_WRONG


def measure(
    corpus: Path, corpus_samples: list[Sample]
) -> tuple[Figures, Figures, Figures, list[str]]:
    plain, staged, judged = Figures(), Figures(), Figures()
    disagreements: list[str] = []
    for s in corpus_samples:
        want = expected_verdict(s.label.reason, s.label.status, s.label.replycode)
        if want is None:  # feedback, vacation: not bounces
            continue
        reply = reply_of(s.diagnostic)
        plain.add(classify(reply), want)
        stage = stage_of(corpus / "emails" / s.file, s.diagnostic)
        got = classify_at(reply, stage) if stage else classify(reply)
        ok = staged.add(got, want)
        if not _judged(s.file):
            judged.add(got, want)
        if not ok:
            mark = "judged" if _judged(s.file) else "open"
            disagreements.append(
                f"  [{mark}] {s.file}: sisimai {s.label.reason} {s.label.status} -> "
                f"{want[0]}; ours {got.klass}/{got.category} ({got.rule}) stage={stage}: "
                f"{s.diagnostic.text[:90]!r}"
            )
    return plain, staged, judged, disagreements


@dataclass(frozen=True)
class Floors:
    """What a corpus must reach: Diagnostic-Codes found, and hard-vs-not-hard agreement."""

    total: int
    judged: float  # the target once the listed Sisimai errors are set aside
    staged: float  # regression floors for the raw figures
    plain: float


FLOORS = {
    # Measured 2026-11-22 on the 761 emails: 91.7% with stage, 90.2% reply only (see
    # docs/classifier.md); the target is >= 95% judged.
    "full": Floors(total=350, judged=0.95, staged=0.91, plain=0.90),
    # The subset holds every judged file, so its raw figures are low by design. Measured
    # on it: 61 Diagnostic-Codes; judged 35/35, with stage 37/61, reply only 36/61. Each
    # floor fails if one more reply disagrees.
    "subset": Floors(total=61, judged=1.0, staged=0.60, plain=0.59),
}


@pytest.fixture(scope="module", params=CORPUS_PARAMS)
def corpus(request: pytest.FixtureRequest) -> Path:
    return corpus_for(request.param)


@pytest.fixture(scope="module")
def corpus_samples(corpus: Path) -> list[Sample]:
    return samples(corpus)


def test_agreement_with_sisimai(corpus: Path, corpus_samples: list[Sample]) -> None:
    floors = FLOORS["subset" if corpus == SUBSET_DIR else "full"]
    plain, staged, judged, disagreements = measure(corpus, corpus_samples)
    print()
    print(plain.line("reply only"))
    print(staged.line("with stage"))
    print(judged.line("judged"))
    print(f"hard-vs-not-hard disagreements ({len(disagreements)}):")
    print("\n".join(disagreements))
    assert plain.total >= floors.total, "fewer Diagnostic-Codes than the corpus holds"
    assert judged.hard_agree / judged.total >= floors.judged
    assert staged.hard_agree / staged.total >= floors.staged
    assert plain.hard_agree / plain.total >= floors.plain


def test_every_judged_disagreement_is_still_a_disagreement(
    corpus: Path, corpus_samples: list[Sample]
) -> None:
    # A judged entry that now agrees must leave the list, so the list never hides a
    # real change in behaviour. The subset holds every judged file.
    still = set()
    for s in corpus_samples:
        want = expected_verdict(s.label.reason, s.label.status, s.label.replycode)
        if want is None or not _judged(s.file):
            continue
        stage = stage_of(corpus / "emails" / s.file, s.diagnostic)
        reply = reply_of(s.diagnostic)
        got = classify_at(reply, stage) if stage else classify(reply)
        if (got.klass is BounceClass.HARD) != (want[0] is BounceClass.HARD):
            still.add(s.file.split("__")[-1])
    assert still == set(JUDGED_SISIMAI_WRONG)
