"""The OpenAPI 3.1 description of the engine's HTTP API: ``openapi.yaml`` beside this
module, written by hand, served as JSON at ``GET /api/v1/openapi.json`` and committed as
``docs/openapi.json`` (``python -m ms07.engine.openapi docs/openapi.json`` rewrites it; a
test checks it is current).

The route needs the token like every other path but the two probes: deny by default,
and the description holds nothing a client without a token could use. Who needs it
without one reads ``docs/openapi.json``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

SOURCE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def description() -> dict[str, Any]:
    """The description, with ``info.version`` left as written (it is the API's version,
    not the package's: clients compare it)."""
    import yaml

    return yaml.safe_load(SOURCE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@functools.cache
def as_json() -> str:
    return json.dumps(description(), indent=2, ensure_ascii=False) + "\n"


async def handle(request: web.Request) -> web.Response:
    return web.Response(text=as_json(), content_type="application/json")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m ms07.engine.openapi PATH\n")
        return 2
    Path(argv[0]).write_text(as_json(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
