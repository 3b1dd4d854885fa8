"""Scrape a gateway's /metrics and read values out of the Prometheus text format."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    text: str
    values: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        """Sum of every series of `name` whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.values if n == name]


def parse(text: str) -> Scrape:
    values: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(text, values)


def scrape(url: str, token: str | None = None) -> Scrape:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=5)
    response.raise_for_status()
    return parse(response.text)


def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Poll `check` until it holds: stream accounting settles just after the last byte."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def scrape_until(
    url: str, check: Callable[[Scrape], bool], token: str | None = None, timeout_s: float = 3.0
) -> Scrape:
    """The first scrape that passes `check` (or the last one tried): a request is counted
    just after its last byte left, so a client can be a moment ahead of /metrics."""
    latest = [scrape(url, token)]

    def passes() -> bool:
        latest[0] = scrape(url, token)
        return check(latest[0])

    eventually(passes, timeout_s)
    return latest[0]
