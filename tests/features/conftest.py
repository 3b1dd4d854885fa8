"""Fixtures of the feature tests that share the three provider fakes (the ingress
dialects': tests/features/dialects.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI


@pytest.fixture
def no_fake_violations(
    fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, fake_gemini: FakeGemini
) -> Iterator[None]:
    """After the test: every request the gateway sent to a provider fake was one the
    real API would have accepted."""
    yield
    assert fake_openai.violations == fake_anthropic.violations == fake_gemini.violations == []
