from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli.main import main
from relay.config.load import ConfigError, config_from_dict, load_config, parse_duration


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

    from policy.suppression.escalate import SuppressionRules
    from relay.config.load import PolicyConfig, suppression_rules

    assert suppression_rules(PolicyConfig()) == SuppressionRules()
    cfg = config_from_dict({"policy": {"hard_suppress_days": 5, "soft_suppress_days": [1, 2]}})
    rules = suppression_rules(cfg.policy)
    assert rules.hard_suppress_days == 5.0 and rules.soft_suppress_days == (1.0, 2.0)
    policy_keys = {f.name for f in fields(PolicyConfig)}
    assert {f.name for f in fields(SuppressionRules)} <= policy_keys


# --- strings that reach a header or reply, numbers, encoding, token ---


# Control characters (CR/LF forge a greeting line or a DSN header), and names said to
# others (greeting, EHLO, DSN From:) that are not domains or addresses.
@pytest.mark.parametrize(
    ("section", "key", "value", "problem"),
    [
        ("server", "hostname", "relay.test\r\n250 fake", "control characters"),
        ("delivery", "helo", "relay.test\nX: y", "control characters"),
        ("queue", "dsn_from", "pm@relay.test\r\nBcc: victim@example.test", "control characters"),
        ("log", "level", "INFO\x00", "control characters"),
        ("verp", "prefix", "bounces\u2028", "control characters"),
        ("server", "hostname", "relay test", "not a"),
        ("delivery", "helo", "a..b", "not a"),
        ("queue", "dsn_from", "x", "not a"),
    ],
)
def test_string_settings_that_would_forge_or_misname_are_refused(
    section: str, key: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {key: value}})
    assert any(p.startswith(f"{section}.{key}: {problem}") for p in err.value.problems), err.value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 0, -1])
@pytest.mark.parametrize(
    ("section", "key"),
    [("delivery", "session_idle_timeout"), ("server", "idle_timeout"), ("dns", "timeout")],
)
def test_timeouts_are_finite_and_positive(section: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {key: value}})
    assert any(p.startswith(f"{section}.{key}: must be") for p in err.value.problems)


def test_policy_days_must_be_finite() -> None:
    with pytest.raises(ConfigError, match="finite"):
        config_from_dict({"policy": {"hard_suppress_days": float("inf")}})


def test_a_short_api_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        config_from_dict({"api": {"listen": "127.0.0.1:0", "token": "x"}})
    assert config_from_dict({"api": {"listen": "127.0.0.1:0", "token": "x" * 16}})


def test_a_config_that_is_not_utf8_is_exit_3_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhostname = "relay.test"\n# caf\xe9\n')
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--config", str(path)])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert f"{path}: line 3: not UTF-8" in err and "Traceback" not in err, err


def test_a_schedule_offset_past_ten_years_and_an_unknown_log_level_are_refused() -> None:
    # 99999999999999d once passed check-config and overflowed the retry date arithmetic.
    with pytest.raises(ConfigError) as err:
        config_from_dict({"queue": {"schedule": ["99999999999999d"]}, "log": {"level": "LOUD"}})
    assert any(p.startswith("queue.schedule[0]: at most") for p in err.value.problems)
    assert any(p.startswith("log.level: one of") for p in err.value.problems)


def test_values_are_parsed_once_into_typed_fields() -> None:
    import ipaddress
    from datetime import timedelta

    from relay.config.schema import HostPort

    cfg = config_from_dict(
        {
            "server": {"listen": ["127.0.0.1:2525", "[::1]:25", "mx.test"]},
            "dns": {"nameservers": ["192.0.2.53", "192.0.2.54:5353"]},
            "queue": {"schedule": ["5m", "1d"]},
            "metrics": {"listen": "127.0.0.1:0"},
            "delivery": {"allowed_address_literals": ["192.0.2.0/24"]},
        }
    )
    assert cfg.server.addresses == (
        HostPort("127.0.0.1", 2525),
        HostPort("::1", 25),
        HostPort("mx.test", 25),
    )
    assert [str(a) for a in cfg.server.addresses] == ["127.0.0.1:2525", "[::1]:25", "mx.test:25"]
    assert cfg.dns.servers == (HostPort("192.0.2.53", 53), HostPort("192.0.2.54", 5353))
    assert cfg.queue.offsets == (timedelta(minutes=5), timedelta(days=1))
    assert cfg.metrics.address == HostPort("127.0.0.1", 0) and cfg.api.address is None
    assert cfg.delivery.literal_networks == (ipaddress.ip_network("192.0.2.0/24"),)
    assert cfg.server.networks is cfg.server.networks  # parsed once, then kept
