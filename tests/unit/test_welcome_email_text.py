"""The welcome email reads well with the default site name and with a proper name."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

TEMPLATES = ["sagas/welcome_email.txt", "sagas/welcome_email.html"]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(
    ("site", "signature"),
    [("the user service", "The user service team"), ("Acme", "Acme team")],
)
def test_the_signature_names_the_team_once(template, site, signature) -> None:
    text = render_to_string(template, {"first_name": "Ada", "site": site})
    assert signature in text
    assert "The the" not in text
    assert "Hello Ada," in text
