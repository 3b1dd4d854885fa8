"""POST /v1/completions: OpenAI's legacy completions, served by chat deployments
(gateway.dialects.openai_completions maps them)."""

from __future__ import annotations

from starlette.routing import Route as HTTPRoute

from gateway.api.chat import endpoint
from gateway.dialects import COMPLETIONS

routes = [HTTPRoute("/v1/completions", endpoint(COMPLETIONS), methods=["POST"])]
