"""Named presets of the OpenAI-compatible kind, so config stays short.

A preset fills in the base URL and says whether a key is required; `base_url` in
config still wins (a self-hosted vLLM is rarely on localhost:8000 in production).
"""

from __future__ import annotations

from dataclasses import dataclass

from routers import PARAMETER_CAPABILITIES

# What the Anthropic and Gemini APIs have no equivalent for (their translators refuse it).
_NOT_ANTHROPIC = frozenset({"n", "logprobs", "audio", "prediction", "logit_bias", "seed"})
_NOT_GEMINI = frozenset({"logprobs", "audio", "prediction", "logit_bias"})


@dataclass(frozen=True, slots=True)
class Preset:
    base_url: str | None
    needs_key: bool
    adapter: str  # which adapter module translates for this kind
    unsupported: frozenset[str] = frozenset()  # request parameters it cannot honour

    @property
    def parameters(self) -> frozenset[str]:
        """The parameter capabilities of this kind's chat deployments."""
        return PARAMETER_CAPABILITIES - self.unsupported


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", True, "openai"),
    "openai_compatible": Preset(None, False, "openai"),
    "vllm": Preset("http://localhost:8000/v1", False, "openai"),
    "ollama": Preset("http://localhost:11434/v1", False, "openai"),
    "together": Preset("https://api.together.xyz/v1", True, "openai"),
    "groq": Preset("https://api.groq.com/openai/v1", True, "openai"),
    "mistral": Preset("https://api.mistral.ai/v1", True, "openai"),
    "deepseek": Preset("https://api.deepseek.com/v1", True, "openai"),
    "openrouter": Preset("https://openrouter.ai/api/v1", True, "openai"),
    "azure": Preset(None, True, "azure"),
    "anthropic": Preset("https://api.anthropic.com", True, "anthropic", _NOT_ANTHROPIC),
    "gemini": Preset(
        "https://generativelanguage.googleapis.com/v1beta", True, "gemini", _NOT_GEMINI
    ),
    "simulated": Preset("simulated://local", False, "simulated"),
}


def preset(kind: str) -> Preset:
    try:
        return PRESETS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(PRESETS)}") from None


def needs_api_key(kind: str) -> bool:
    return kind in PRESETS and PRESETS[kind].needs_key
