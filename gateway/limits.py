"""Rate limits and budgets per gateway key, and per-deployment quotas.

Not enforced yet: keys' `rpm`, `tpm` and `budget_usd` and deployments' `rpm`/`tpm`
are validated in config, but these hooks are no-ops until the governance work lands
(issue 7). The pipeline already calls every hook at the right place:

- `admit` before any upstream call (check and reserve together),
- `settle` once the real cost is known (streams included, also on disconnect),
- `release` when the request failed before anything was billed,
- `deployment_headroom` when planning (local numbers, no Redis round trip),
- `deployment_used` after each successful upstream call.
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.keys import Caller


class Limits:
    async def admit(
        self,
        ctx: RequestContext,
        caller: Caller,
        estimated_tokens: int,
        estimated_cost_usd: float,
    ) -> None:
        return None

    async def settle(self, ctx: RequestContext, caller: Caller) -> None:
        return None

    async def release(self, ctx: RequestContext, caller: Caller) -> None:
        return None

    def deployment_headroom(self, deployment_id: str) -> tuple[int | None, int | None]:
        """(remaining rpm, remaining tpm) for routing; None = no limit set."""
        return None, None

    async def deployment_used(self, deployment_id: str, tokens: int) -> None:
        return None
