# [verp] and [intake] validation: every bad key is named at load time.
from __future__ import annotations

from typing import Any

import pytest

from relay.config.load import ConfigError, config_from_dict

GOOD = {"enabled": True, "bounce_domain": "bounces.sender.example", "secret": "x" * 16}


def problems(table: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(table)
    return "; ".join(info.value.problems)


def test_good_verp_and_intake_load() -> None:
    cfg = config_from_dict({"verp": GOOD, "intake": {"listen": "127.0.0.1:2526"}})
    assert cfg.verp.enabled and cfg.intake.listen == "127.0.0.1:2526"


@pytest.mark.parametrize(
    "table,named",
    [
        ({"verp": {**GOOD, "secret": "short"}}, "verp.secret"),
        ({"verp": {**GOOD, "prefix": "bounce+s"}}, "verp.prefix"),
        ({"verp": {**GOOD, "bounce_domain": "not a domain"}}, "verp.bounce_domain"),
        ({"intake": {"feedback_addresses": ["nope"]}}, "intake.feedback_addresses[0]"),
        (
            {"intake": {"listen": "127.0.0.1:x", "feedback_addresses": ["a@b.example"]}},
            "intake.listen",
        ),
        ({"intake": {"listen": "127.0.0.1:2526"}}, "accepts nothing"),
    ],
)
def test_bad_values_are_named(table: dict[str, Any], named: str) -> None:
    assert named in problems(table)
