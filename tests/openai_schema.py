"""Validate gateway output against OpenAI's published schemas (tests/data/README.md)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SUBSET = Path(__file__).resolve().parent / "data" / "openai-openapi-subset.json"


@cache
def _document() -> dict[str, Any]:
    return _nullable_to_json_schema(json.loads(SUBSET.read_text()))


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is not JSON Schema: rewrite it as anyOf [.., null]."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def validate(instance: Any, schema_name: str) -> None:
    """Raises jsonschema.ValidationError when `instance` breaks OpenAI's schema."""
    document = _document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


@cache
def _request_document() -> dict[str, Any]:
    return _one_of_as_any_of(_document())


def _one_of_as_any_of(node: Any) -> Any:
    if isinstance(node, list):
        return [_one_of_as_any_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {("anyOf" if k == "oneOf" else k): _one_of_as_any_of(v) for k, v in node.items()}


def validate_request(instance: Any, schema_name: str) -> None:
    """As `validate`, for a request body: OpenAI's description says `oneOf` where its
    members overlap (an input message `{"type": "message", "role": "user", "content":
    [...]}` is both an EasyInputMessage and an InputMessage), which no body could meet
    strictly; here it means "at least one of"."""
    document = _request_document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)
