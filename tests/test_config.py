from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import main
from relay.config import ConfigError, config_from_dict, load_config, parse_duration


def test_defaults_listen_on_loopback_2525() -> None:
    cfg = load_config(None)
    assert cfg.server.listen == ("127.0.0.1:2525",)
    assert cfg.policy.soft_bounce == "queue"
    assert [str(n) for n in cfg.allowed_networks] == ["127.0.0.0/8", "::1/128"]


def test_unknown_and_bad_keys_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "server": {"listn": ["x"], "max_recipients": "many"},
                "delivery": {"starttls": "sometimes"},
                "bogus": {},
            }
        )
    text = "\n".join(info.value.problems)
    assert "server.listn: unknown key" in text
    assert "server.max_recipients: expected int" in text
    assert "delivery.starttls: 'sometimes' is not one of" in text
    assert "bogus: unknown key" in text


def test_routes_and_durations() -> None:
    cfg = config_from_dict({"delivery": {"routes": {"example.test": "127.0.0.1:2600"}}})
    assert cfg.delivery.routes == {"example.test": "127.0.0.1:2600"}
    assert cfg.queue_schedule_seconds[0] == 300.0
    assert parse_duration("1d") == 86400.0
    with pytest.raises(ConfigError, match="queue.schedule"):
        config_from_dict({"queue": {"schedule": ["5 fortnights"]}})


def test_check_config_cli_rejects_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = ["127.0.0.1:2525"]\nfrobnicate = 1\n')
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--config", str(bad)])
    assert info.value.code == 3
    assert "server.frobnicate: unknown key" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text('[server]\nlisten = ["127.0.0.1:2526"]\n')
    assert main(["check-config", "--config", str(good)]) == 0


def test_policy_section_carries_every_suppression_rule_with_its_default() -> None:
    from dataclasses import fields

    from policy.escalation import SuppressionRules
    from relay.config import PolicyConfig, suppression_rules

    assert suppression_rules(PolicyConfig()) == SuppressionRules()
    cfg = config_from_dict({"policy": {"hard_suppress_days": 5, "soft_suppress_days": [1, 2]}})
    rules = suppression_rules(cfg.policy)
    assert rules.hard_suppress_days == 5.0 and rules.soft_suppress_days == (1.0, 2.0)
    policy_keys = {f.name for f in fields(PolicyConfig)}
    assert {f.name for f in fields(SuppressionRules)} <= policy_keys
