"""A gateway with one deployment on each provider fake (OpenAI, Anthropic, Gemini) and
routes to each and across them, for the ingress dialects' end-to-end tests
(completions, messages, responses): each dialect is answered by every provider, and
falls over between them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai

from tests.conftest import ANTHROPIC_KEY, GATEWAY_KEY, GEMINI_KEY, OPENAI_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.gatewayproc import GatewayProcess

TIMEOUTS = {"connect_s": 1.0, "read_s": 2.0}
CAPABILITIES = ["tools", "vision", "json_schema", "stream"]
# USD per million tokens, the same on every deployment (costs are checked per answer).
IN_USD, OUT_USD = 1.0, 2.0
# route -> the deployments it tries, in order (policy fallback)
ROUTES = {
    "gpt": ["gpt"],
    "claude": ["claude"],
    "gemini": ["gemini"],
    "gpt-then-claude-then-gemini": ["gpt", "claude", "gemini"],
}


def deployment(name: str, provider: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": name,  # x-gateway-deployment, the request log's deployment
        "provider": provider,
        "model": model,
        "input_price_per_mtok_usd": IN_USD,
        "output_price_per_mtok_usd": OUT_USD,
        "max_output_tokens": 8192,
        "capabilities": CAPABILITIES,
    }


def three_provider_config(
    openai: FakeOpenAI, anthropic: FakeAnthropic, gemini: FakeGemini, **extra: Any
) -> dict[str, Any]:
    return {
        "auth": {"mode": "keys", "keys": [{"name": "k", "key": GATEWAY_KEY, "team": "t"}]},
        "server": {"request_timeout_s": 10},
        # Failures must not cool deployments down between tests.
        "routing": {"cooldown_failures": 1000, "same_deployment_retries": 0},
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": f"{openai.base_url}/v1",
                "api_key": OPENAI_KEY,
                "timeouts": TIMEOUTS,
            },
            "ant": {
                "kind": "anthropic",
                "base_url": anthropic.base_url,
                "api_key": ANTHROPIC_KEY,
                "timeouts": TIMEOUTS,
            },
            "gem": {
                "kind": "gemini",
                "base_url": f"{gemini.base_url}/v1beta",
                "api_key": GEMINI_KEY,
                "timeouts": TIMEOUTS,
            },
        },  # fmt: skip
        "models": [
            deployment("gpt", "oai", "gpt-4o-mini"),
            deployment("claude", "ant", "claude-sonnet-4-5"),
            deployment("gemini", "gem", "gemini-2.5-flash"),
        ],
        "routes": [
            {"name": name, "policy": "fallback", "models": models}
            for name, models in ROUTES.items()
        ],
        **extra,
    }


def reply_of(route: str, openai: FakeOpenAI, anthropic: FakeAnthropic, gemini: FakeGemini) -> str:
    """The text the route's first deployment answers with."""
    first = ROUTES[route][0]
    return {"gpt": openai.reply, "claude": anthropic.reply, "gemini": gemini.reply}[first]


def logged(gateway: GatewayProcess, request_id: str, admin_key: str) -> dict[str, Any]:
    """The request log's row of one request (`GET /admin/requests/{id}`)."""
    found = httpx.get(
        f"{gateway.url}/admin/requests/{request_id}",
        headers={"authorization": f"Bearer {admin_key}"},
        timeout=10,
    )
    assert found.status_code == 200, found.text
    (row,) = found.json()["data"]
    return dict(row)


def run_weather_agent(gateway: GatewayProcess, model: str) -> tuple[Any, list[str]]:
    """The OpenAI Agents SDK's default model (OpenAIResponsesModel, on `/v1/responses`)
    running an agent with one function tool: its result, and the tool's arguments."""
    import agents

    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        seen.append(city)
        return f"Sunny in {city}"

    async def run() -> Any:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0)
        try:
            agents.set_default_openai_client(sdk, use_for_tracing=False)
            agents.set_tracing_disabled(True)
            agent = agents.Agent(
                name="weather", instructions="Use the tool.", model=model, tools=[get_weather]
            )
            return await agents.Runner.run(agent, "Weather in Paris?")
        finally:
            await sdk.close()

    return asyncio.run(run()), seen
