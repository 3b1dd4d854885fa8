"""Rate limits and budgets per gateway key.

Not enforced yet: keys' `rpm`, `tpm` and `budget_usd` are validated in config but
admission and settlement are no-ops until the governance work lands (issue 7).
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.keys import Caller


class Limits:
    async def admit(
        self, ctx: RequestContext, caller: Caller, estimated_tokens: int, estimated_cost_usd: float
    ) -> None:
        return None

    async def settle(self, ctx: RequestContext, caller: Caller) -> None:
        return None

    async def release(self, ctx: RequestContext, caller: Caller) -> None:
        return None
