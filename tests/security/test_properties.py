# Property-based tests (hypothesis): whatever a config file, a reply line or an address
# holds, the parsers answer with a value or their own documented error, never with a
# stray exception that would crash startup or turn into a 500 inside an SMTP session.
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.reply import Reply, parse_reply
from relay.config.load import Config, ConfigError, config_from_dict, parse_hostport

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every section and key the loader knows, so generated tables reach the real validation.
SECTIONS: dict[str, list[str]] = {
    name: [f.name for f in dataclasses.fields(hint)]
    for name, hint in typing.get_type_hints(Config).items()
}

toml_scalars = (
    st.text(max_size=30)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.sampled_from(["127.0.0.1:25", "[::1]:2525", "5m", "1d", "x:y:z", "300.1.1.1/8", ""])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def config_tables(draw: st.DrawFn) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = SECTIONS[section] + [draw(st.text(min_size=1, max_size=6))]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))
        table[section] = {k: draw(toml_values) for k in chosen}
    if draw(st.booleans()):
        table[draw(st.text(max_size=6))] = draw(toml_values)  # unknown or mistyped section
    return table


@FAST
@given(config_tables())
def test_config_loader_returns_config_or_config_error(table: dict[str, Any]) -> None:
    try:
        cfg = config_from_dict(table)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(cfg, Config)
    # A config that loads must be usable by the code that materialises it:
    # networks parse, ports are 16-bit, timeouts are finite and positive.
    cfg.allowed_networks  # noqa: B018
    assert all(s > 0 for s in cfg.queue_schedule_seconds)
    for hostport in (*cfg.server.listen, *cfg.delivery.routes.values()):
        assert 0 <= parse_hostport(hostport, 25)[1] <= 65535
    assert 0 < cfg.delivery.port <= 65535
    for timeout in (
        cfg.server.idle_timeout,
        cfg.delivery.connect_timeout,
        cfg.delivery.command_timeout,
        cfg.dns.timeout,
        cfg.queue.poll_interval,
    ):
        assert 0 < timeout < float("inf")


@pytest.mark.parametrize(
    "table",
    [
        {"dns": {"timeout": float("nan")}},
        {"server": {"idle_timeout": float("inf")}},
        {"server": {"idle_timeout": -1.0}},
        {"delivery": {"port": 70000}},
        {"server": {"listen": ["127.0.0.1:99999"]}},
        {"delivery": {"routes": {"example.test": "[::1]:65536"}}},
    ],
)
def test_config_loader_refuses_out_of_range_numbers(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config_from_dict(table)


@FAST
@given(st.text(max_size=300))
def test_parse_reply_never_raises(raw: str) -> None:
    reply = parse_reply(raw)
    assert isinstance(reply, Reply)
    assert reply.code == 0 or 200 <= reply.code <= 599
    if reply.enhanced is not None:
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced)
    reply.line()
    reply.lines()


@FAST
@given(
    st.integers(min_value=200, max_value=599),
    st.sampled_from(["", "5.1.1 ", "4.2.2 ", "2.0.0 ", "5.7.1 ", "9.9.9 "]),
    st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=80),
)
def test_parse_reply_reads_wire_lines(code: int, enhanced: str, text: str) -> None:
    reply = parse_reply(f"{code} {enhanced}{text}")
    assert reply.code == code


addresses = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(max_size=70),
        st.text(max_size=70)
        | st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True),
    ),
    st.emails().map(str),
)


@FAST
@given(addresses)
def test_address_check_and_normalisation_never_crash(address: str) -> None:
    addr_mod = pytest.importorskip("policy.address")
    valid = addr_mod.is_valid_address(address)
    assert isinstance(valid, bool)
    try:
        key = addr_mod.normalize_address(address)
    except addr_mod.AddressError:
        assert not valid, f"valid address {address!r} could not be normalised"
        return
    # One spelling per mailbox: normalising a key again changes nothing.
    assert addr_mod.normalize_address(key) == key
    assert key == key.lower() or not key.isascii()


@FAST
@given(st.emails().map(str))
def test_generated_valid_emails_are_accepted(address: str) -> None:
    addr_mod = pytest.importorskip("policy.address")
    # hypothesis' emails() follows RFC 5322 dot-atoms; bounded by RFC 5321 §4.5.3.1 sizes.
    local, _, _ = address.rpartition("@")
    if len(address) > 254 or len(local) > 64:
        return
    assert addr_mod.is_valid_address(address), address


reply_texts = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda code, enh, text: f"{code} {enh} {text}",
        st.integers(min_value=200, max_value=599),
        st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
        st.text(max_size=120),
    ),
)


@FAST
@given(reply_texts)
def test_classifier_total_and_4xx_never_hard(raw: str) -> None:
    classify_mod = pytest.importorskip("policy.classify.classify")
    from policy.verdict import BounceClass, Verdict

    reply = parse_reply(raw)
    verdict = classify_mod.classify(reply)
    assert isinstance(verdict, Verdict)
    if reply.is_transient:
        assert verdict.klass is not BounceClass.HARD
    if reply.is_success:
        assert verdict.klass is BounceClass.DELIVERED


@pytest.mark.parametrize("address", ["0@.", "a@..", "<a@.>"])
def test_empty_domain_after_normalisation_is_refused(address: str) -> None:
    # Found by the property above: "0@." used to normalise to the key "0@".
    addr_mod = pytest.importorskip("policy.address")
    with pytest.raises(addr_mod.AddressError):
        addr_mod.normalize_address(address)


path_args = st.one_of(
    st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-.@<>() \t\"\\[]:;,é", max_size=30),
    st.from_regex(r"<[a-z.+-]{1,10}@[a-z0-9.-]{1,12}>([ \t][A-Z=0-9 ]{0,15})?", fullmatch=True),
)


@settings(max_examples=2000, deadline=None)
@given(path_args)
def test_fast_path_parser_agrees_with_aiosmtpd(arg: str) -> None:
    # relay/inbound/path.py replaces aiosmtpd's parser only where both give the same answer.
    from aiosmtpd.smtp import SMTP

    from relay.inbound.path import simple_path

    class Limits:
        local_part_limit = 0

    fast = simple_path(arg)
    if fast is not None:
        assert fast == SMTP._getaddr(Limits(), arg)  # type: ignore[arg-type]
