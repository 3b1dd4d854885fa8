"""Validation of policy parameters coming from YAML config."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


class PolicyConfigError(ValueError):
    """Raised for an unknown policy name or an unknown/invalid policy parameter."""


class ParamReader:
    """Typed accessors over a raw params mapping; every error names the offending param."""

    def __init__(self, policy: str, params: Mapping[str, object], allowed: Iterable[str]) -> None:
        self.policy = policy
        self.params = params
        known = frozenset(allowed)
        # key=str: YAML may hand us non-string keys, which must not crash the sort.
        unknown = sorted((k for k in params if k not in known), key=str)
        if unknown:
            raise PolicyConfigError(
                f"policy {policy!r}: unknown param {unknown[0]!r} (allowed: {sorted(known)})"
            )

    def error(self, name: str, problem: str) -> PolicyConfigError:
        """Build an error message that names the policy and the param."""
        return PolicyConfigError(f"policy {self.policy!r}: param {name!r} {problem}")

    def number(self, name: str, default: float, lo: float = 0.0, hi: float | None = None) -> float:
        """Read a float in [lo, hi], accepting ints."""
        value = self.params.get(name, default)
        return self.check_number(name, value, lo, hi)

    def check_number(self, name: str, value: object, lo: float, hi: float | None) -> float:
        """Validate an already-extracted value as a bounded float."""
        # bool is an int subclass, but `cost: true` in YAML is a config mistake, not 1.0.
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(name, f"must be a number, got {type(value).__name__}")
        result = float(value)
        if not math.isfinite(result) or result < lo or (hi is not None and result > hi):
            bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise self.error(name, f"must be {bound}, got {result}")
        return result

    def optional_number(self, name: str, lo: float = 0.0, hi: float | None = None) -> float | None:
        """Read an optional float; absent or null means "not set"."""
        if self.params.get(name) is None:
            return None
        return self.number(name, 0.0, lo, hi)

    def integer(self, name: str, default: int, lo: int = 0) -> int:
        """Read an int >= lo (floats are rejected: token counts are whole)."""
        value = self.params.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, f"must be an integer, got {type(value).__name__}")
        if value < lo:
            raise self.error(name, f"must be >= {lo}, got {value}")
        return value

    def number_map(self, name: str, allowed_keys: Iterable[str] | None = None) -> dict[str, float]:
        """Read a mapping of str -> non-negative number."""
        raw = self.params.get(name, {})
        if not isinstance(raw, Mapping):
            raise self.error(name, f"must be a mapping, got {type(raw).__name__}")
        result: dict[str, float] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise self.error(name, f"keys must be strings, got {key!r}")
            if allowed_keys is not None and key not in allowed_keys:
                raise self.error(name, f"has unknown key {key!r}")
            result[key] = self.check_number(f"{name}.{key}", value, 0.0, None)
        return result
