# The classifier's vocabulary (class, category, rule); it names things and decides nothing.
"""What policy makes of a reply: a class, a category and the rule that said so
(docs/behaviour.md#verdicts).

This module decides nothing by itself; it names the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BounceClass(StrEnum):
    DELIVERED = "delivered"  # a 2xx: not a bounce at all
    HARD = "hard"  # the address is dead: suppress
    SOFT = "soft"  # try again later: SB streak
    BLOCK = "block"  # the sender or message was refused; the address may be fine
    UNDETERMINED = "undetermined"  # a 5xx that says nothing clear


class Category(StrEnum):
    DELIVERED = "delivered"
    BAD_MAILBOX = "bad-mailbox"
    BAD_DOMAIN = "bad-domain"
    INACTIVE_MAILBOX = "inactive-mailbox"
    QUOTA_ISSUES = "quota-issues"
    NO_ANSWER_FROM_HOST = "no-answer-from-host"
    BAD_CONNECTION = "bad-connection"
    ROUTING_ERRORS = "routing-errors"
    MESSAGE_EXPIRED = "message-expired"
    MESSAGE_TOO_LARGE = "message-too-large"
    SPAM_RELATED = "spam-related"
    POLICY_RELATED = "policy-related"
    CONTENT_RELATED = "content-related"
    VIRUS_RELATED = "virus-related"
    RELAYING_ISSUES = "relaying-issues"
    PROTOCOL_ERRORS = "protocol-errors"
    BAD_CONFIGURATION = "bad-configuration"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Verdict:
    klass: BounceClass
    category: Category
    rule: str  # the id of the rule that decided, for logs and golden tests
