"""Secrets taken out of logged request bodies and answers (`log_payloads` routes).

What looks like a credential is replaced by `[redacted]`: API keys of the common
providers and of this gateway, bearer tokens, AWS access key ids, private key blocks,
and the value of any JSON field whose name says it holds a secret. A pattern list,
not a proof: the README says so, and payload logging is off unless a route asks.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_PATTERNS = re.compile(
    "|".join(
        (
            r"\bsk-[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic (sk-ant-...)
            r"\bgw-[A-Za-z0-9_\-]{16,}",  # this gateway's keys
            r"\bAIza[0-9A-Za-z_\-]{30,}",  # Google API keys
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
            r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack tokens
            r"\b[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/=\-]{12,}",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        )
    )
)
# "api_key": "...", "password": "...", ... in JSON text (the value, not the name)
_SECRET_FIELDS = re.compile(
    r'("(?:[A-Za-z_\-]*(?:api[_\-]?key|secret|password|passwd|token|authorization))"\s*:\s*)'
    r'"(?:[^"\\]|\\.)*"',
    re.IGNORECASE,
)


def redact(text: str) -> str:
    text = _SECRET_FIELDS.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    return _PATTERNS.sub(REDACTED, text)
