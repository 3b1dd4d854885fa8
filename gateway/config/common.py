"""What the config's modules share: the base of every section, and URLs made safe to
show (credentials never appear in an error or a log line)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A config section: unknown fields are errors, values never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def redacted_url(url: str) -> str:
    """`url` with any credentials replaced by `***`: http://***@proxy:3128. All that
    precedes the last `@` goes, so a password with a `/` or `?` in it goes too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
