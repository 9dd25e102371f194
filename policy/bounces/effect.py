# What a received bounce or complaint may change in the store: a pure decision, no I/O.
"""Turn parsed reports plus the envelope recipient they arrived for into store actions.

Trust follows the envelope, not the report's content: a bounce sent to a VERP
address may only change the recipient that the (HMAC-checked) token names,
whatever addresses the report lists, so a forged bounce cannot suppress an
arbitrary address. A feedback-loop address accepts complaints only.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.bounces.values import BounceReport, Kind
from policy.decide import Disposition, Stage, decide
from policy.reply import Reply
from policy.verdict import BounceClass, Verdict


@dataclass(frozen=True)
class Target:
    """Whom one intake RCPT stands for: a decoded VERP token or a feedback-loop address."""

    recipient: str  # the VERP recipient; "" for a feedback-loop address
    queue_id: str = ""

    @property
    def is_feedback(self) -> bool:
        return not self.recipient


@dataclass(frozen=True)
class Action:
    """One store change: DELIVERED (record_success), BOUNCED or DEFERRED (record_verdict),
    SUPPRESSED (record_complaint: the address is blocked), IGNORED (logged only)."""

    disposition: Disposition
    address: str
    queue_id: str
    report: BounceReport | None
    verdict: Verdict | None = None
    reply: Reply | None = None
    detail: str = ""


def plan(reports: list[BounceReport], target: Target) -> list[Action]:
    """The store actions for `reports` received for `target` (see the module docstring)."""
    if target.is_feedback:
        return [
            _complaint(r.recipient, "", r) for r in reports if r.kind is Kind.ARF and r.recipient
        ]
    complaints = [r for r in reports if r.kind is Kind.ARF]
    if complaints:
        return [_complaint(target.recipient, target.queue_id, complaints[0])]
    bounces = [r for r in reports if r.kind in (Kind.DSN, Kind.UNKNOWN) and r.verdict is not None]
    mine = [r for r in bounces if r.recipient == target.recipient]
    if not mine and len(bounces) == 1 and _usable_stranger(bounces[0]):
        # One report about another address (an alias, a forward, a rewritten address):
        # the token proves which of our recipients this bounce answers.
        mine = bounces
    if not mine:
        return [Action(Disposition.IGNORED, target.recipient, target.queue_id, r) for r in reports]
    report = _worst(mine)
    assert report.verdict is not None
    decided = decide(report.reply or Reply(0, None, ""), report.verdict, Stage.REPORT)
    if decided.disposition is Disposition.DELIVERED or report.action == "delivered":
        return [Action(Disposition.DELIVERED, target.recipient, target.queue_id, report)]
    if report.action in ("relayed", "expanded"):
        return [Action(Disposition.IGNORED, target.recipient, target.queue_id, report)]
    return [
        Action(
            decided.disposition,
            target.recipient,
            target.queue_id,
            report,
            report.verdict,
            report.reply,
        )
    ]


def _usable_stranger(report: BounceReport) -> bool:
    # An UNKNOWN report classified only from free text must at least say something clear.
    assert report.verdict is not None
    return report.kind is Kind.DSN or report.verdict.klass is not BounceClass.UNDETERMINED


_SEVERITY = {
    BounceClass.HARD: 0,
    BounceClass.BLOCK: 1,
    BounceClass.UNDETERMINED: 2,
    BounceClass.SOFT: 3,
    BounceClass.DELIVERED: 4,
}


def _worst(reports: list[BounceReport]) -> BounceReport:
    """Several blocks for one recipient (MX retries): the most definite failure counts."""
    return min(reports, key=lambda r: _SEVERITY[r.verdict.klass] if r.verdict else 9)


def _complaint(address: str, queue_id: str, report: BounceReport) -> Action:
    detail = f"complaint ({report.feedback_type or 'abuse'})"
    if report.remote_mta:
        detail += f" from {report.remote_mta}"
    return Action(Disposition.SUPPRESSED, address, queue_id, report, detail=detail)
