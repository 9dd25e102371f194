# The corpus figures of docs/intake.md, computed the same way by the test and by
# `python -m tests.policy.bounces.corpus_figures` (which also lists the disagreements).
"""Run the bounce parser over every Sisimai corpus email and compare with the labels."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from policy.bounces.parse import RECIPIENT_FILTER_RULES, UNVERIFIED_USER_UNKNOWN, parse_bounce
from policy.bounces.values import BounceReport, Kind
from policy.verdict import BounceClass
from tests.support.sisimai import (
    FULL_CORPUS_ABSENT,
    Label,
    corpus_dir,
    expected_verdict,
    load_labels,
)

LATE_FILTER_RULES = RECIPIENT_FILTER_RULES | {UNVERIFIED_USER_UNKNOWN.rule}


@dataclass
class Figures:
    emails: int = 0
    with_recipient: int = 0  # at least one report names a recipient
    all_recipients: int = 0  # as many distinct recipients as the label lists (or more)
    labelled_recipients: int = 0  # recipients the labels list (bounces, not complaints)
    extra_recipients: int = 0  # recipients reported beyond the labelled count, summed
    hard_agree: int = 0  # our hard-vs-not-hard equals the mapped label's
    sisimai_hard_agree: int = 0  # ... equals Sisimai's own `hardbounce` flag
    category_total: int = 0  # emails whose label maps to a bounce category
    category_agree: int = 0
    kind_total: int = 0  # feedback and vacation labels
    kind_agree: int = 0  # ... read as ARF / auto-reply
    misses: list[str] = field(default_factory=list)
    hard_disagreements: list[str] = field(default_factory=list)

    def share(self, part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    def lines(self) -> list[str]:
        return [
            f"emails: {self.emails}",
            f"recipient found: {self.with_recipient} "
            f"({self.share(self.with_recipient, self.emails):.1%})",
            f"all labelled recipients found: {self.all_recipients} "
            f"({self.share(self.all_recipients, self.emails):.1%})",
            f"recipients beyond the labelled count: {self.extra_recipients} "
            f"(labelled {self.labelled_recipients})",
            f"hard-vs-not-hard agreement (our mapping): {self.hard_agree} "
            f"({self.share(self.hard_agree, self.emails):.1%})",
            f"hard-vs-not-hard agreement (Sisimai hardbounce flag): {self.sisimai_hard_agree} "
            f"({self.share(self.sisimai_hard_agree, self.emails):.1%})",
            f"category agreement: {self.category_agree}/{self.category_total} "
            f"({self.share(self.category_agree, self.category_total):.1%})",
            f"complaint / auto-reply recognised: {self.kind_agree}/{self.kind_total} "
            f"({self.share(self.kind_agree, self.kind_total):.1%})",
        ]


def _first(reports: list[BounceReport]) -> BounceReport | None:
    named = [r for r in reports if r.recipient]
    return named[0] if named else (reports[0] if reports else None)


def measure(corpus: Path) -> Figures:
    fig = Figures()
    for label in load_labels(corpus):
        _one(fig, label, (corpus / "emails" / label.file).read_bytes())
    return fig


def _one(fig: Figures, label: Label, data: bytes) -> None:
    reports = parse_bounce(data)
    fig.emails += 1
    found = {r.recipient for r in reports if r.recipient}
    if found:
        fig.with_recipient += 1
    else:
        fig.misses.append(label.file)
    if len(found) >= len(label.recipients) or (found and label.first.reason == "feedback"):
        fig.all_recipients += 1
    if label.first.reason != "feedback":
        fig.labelled_recipients += len(label.recipients)
        fig.extra_recipients += max(0, len(found) - len(label.recipients))
    first = _first(reports)
    ours_hard = bool(first and first.verdict and first.verdict.klass is BounceClass.HARD)
    want = expected_verdict(label.first.reason, label.first.status, label.first.replycode)
    want_hard = bool(want and want[0] is BounceClass.HARD)
    if ours_hard == want_hard:
        fig.hard_agree += 1
    else:
        got = f"{first.verdict.klass}/{first.verdict.category}" if first and first.verdict else "-"
        fig.hard_disagreements.append(f"{label.file}: label {label.first.reason}, ours {got}")
    if ours_hard == label.first.hardbounce:
        fig.sisimai_hard_agree += 1
    if want is None:
        fig.kind_total += 1
        wanted = Kind.ARF if label.first.reason == "feedback" else Kind.AUTOREPLY
        fig.kind_agree += bool(first and first.kind is wanted)
    else:
        fig.category_total += 1
        fig.category_agree += bool(first and first.verdict and first.verdict.category is want[1])
        # Sisimai's "filtered" covers the recipient's own filter answering "user unknown",
        # which a late report gives as undetermined with that reason.
        fig.category_agree += bool(
            label.first.reason == "filtered"
            and first
            and first.verdict
            and first.verdict.rule in LATE_FILTER_RULES
        )


def main() -> int:
    corpus = corpus_dir()
    if corpus is None:
        print(FULL_CORPUS_ABSENT, file=sys.stderr)
        return 1
    fig = measure(corpus)
    print("\n".join(fig.lines()))
    print("\nno recipient:", " ".join(fig.misses))
    print("\nhard-vs-not-hard disagreements:")
    print("\n".join(fig.hard_disagreements))
    print("\nby kind:", Counter(k for k in fig.misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
