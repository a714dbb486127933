"""Email addresses are compared in one canonical spelling (case, Unicode, IDNA)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from users.rules import normalize_email

SAME_ADDRESS = [
    "ada@exämple.com",
    "ada@xn--exmple-cua.com",
    "ADA@EXÄMPLE.COM",
    " ada@XN--EXMPLE-CUA.com ",
    "ada@exa\u0308mple.com",  # a combining diaeresis: the same letter, decomposed
    "ada@\uff45xämple.com",  # a full-width e, which IDNA maps to e
]


def test_every_spelling_of_an_internationalised_domain_is_one_address() -> None:
    assert [normalize_email(spelling) for spelling in SAME_ADDRESS] == [
        ("ada@exämple.com", [])
    ] * len(SAME_ADDRESS)


@pytest.mark.parametrize(
    "email", ["ada@xn--abc.com", "ada@-example.com", "ada@exa mple.com", "ada@exam..ple.com"]
)
def test_a_domain_that_is_no_domain_name_is_refused(email) -> None:
    normalized, problems = normalize_email(email)
    assert normalized is None
    assert problems


def test_ascii_addresses_keep_their_spelling_but_for_case() -> None:
    assert normalize_email("  Grace.Hopper+navy@Example.ORG ") == (
        "grace.hopper+navy@example.org",
        [],
    )
    assert normalize_email("root@[192.0.2.1]") == ("root@[192.0.2.1]", [])


@settings(max_examples=300, deadline=None)
@given(email=st.emails())
@pytest.mark.slow
def test_the_canonical_form_is_a_fixed_point(email) -> None:
    normalized, _ = normalize_email(email)
    if normalized is not None:
        assert normalize_email(normalized) == (normalized, [])
