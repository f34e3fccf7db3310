"""The API's OpenAPI schema as committed in ``docs/openapi.json`` (``make docs`` writes it;
a test checks it is current)."""

from __future__ import annotations

import json

from neurosono.serve.app import create_app


def schema_text() -> str:
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
