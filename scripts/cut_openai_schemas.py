"""Cut tests/data/openai-openapi-subset.json from OpenAI's OpenAPI description.

    .venv/bin/python scripts/cut_openai_schemas.py PATH/TO/openai-openapi.yaml

The subset holds the schemas the tests validate answers against (ROOTS) and every
schema they refer to, as plain JSON (tests/openai_schema.py reads it; nothing reads the
YAML at test time). Source: openai/openai-openapi on GitHub, MIT licence, Copyright (c)
OpenAI (tests/data/README.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "openai-openapi-subset.json"
ROOTS = (
    # chat, embeddings, models, errors
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    # legacy completions
    "CreateCompletionResponse",
    # the Responses API
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "CreateResponse",  # what the OpenAI fake checks a native /v1/responses request against
)
REF = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(REF) :]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= refs(value)
        return found
    if isinstance(node, list):
        return set().union(*map(refs, node)) if node else set()
    return set()


def main(source: str) -> None:
    document = yaml.load(Path(source).read_text(), Loader=yaml.CSafeLoader)
    schemas = document["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(refs(schemas[name]) - wanted)
    subset = {
        "x-source": {
            "repository": "openai/openai-openapi",
            "file": Path(source).name,
            "openapi": document.get("openapi"),
            "info_version": document.get("info", {}).get("version"),
            "note": "Verbatim subset of components/schemas: the roots and every schema "
            "they reference (scripts/cut_openai_schemas.py).",
        },
        "x-roots": list(ROOTS),
        "components": {"schemas": {name: schemas[name] for name in sorted(wanted)}},
    }
    OUT.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")
    print(f"{OUT}: {len(wanted)} schemas")


if __name__ == "__main__":
    main(sys.argv[1])
