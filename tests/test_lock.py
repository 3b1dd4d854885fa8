"""The test environment is exactly the lock file: every locked package (for this platform)
at its locked version, and nothing else installed (scripts/test makes the venv anew when
the lock changes)."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / "requirements-test.lock"
# Installed by the venv itself, or the project under test.
NOT_LOCKED = {"pip", "model-gateway"}


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)(?: ; (.+?))?(?: \\)?$", line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(name)] = version
    return pins


def _installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }


@pytest.mark.skipif(
    os.environ.get("GATEWAY_TEST_LATEST") == "1",
    reason="scripts/test --latest installs the newest releases, not the lock",
)
def test_the_environment_is_the_lock() -> None:
    locked, installed = _locked(), _installed()
    assert len(locked) > 40
    wrong = {name: (version, installed.get(name)) for name, version in locked.items()}
    assert {name: pair for name, pair in wrong.items() if pair[0] != pair[1]} == {}
    assert set(installed) - set(locked) - NOT_LOCKED == set()
