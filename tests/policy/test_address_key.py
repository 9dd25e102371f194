"""policy/address.py: a recipient is normalised once, at RCPT, into an Address."""

from __future__ import annotations

import pytest

from policy.address import Address, AddressError, AddressKey, normalize_address


def test_parse_keeps_the_spelling_and_makes_the_key() -> None:
    rcpt = Address.parse("<Bob@Bücher.Example>")
    assert rcpt.spelled == "<Bob@Bücher.Example>"
    assert rcpt.key == "bob@xn--bcher-kva.example" and isinstance(rcpt.key, AddressKey)
    assert rcpt.domain == "xn--bcher-kva.example"


def test_a_key_is_not_normalised_again() -> None:
    key = normalize_address("A@B.Example")
    assert normalize_address(key) is key  # the store's own calls cost nothing
    assert key == "a@b.example" and hash(key) == hash("a@b.example")


def test_not_an_address() -> None:
    with pytest.raises(AddressError):
        Address.parse("no-at-sign")
