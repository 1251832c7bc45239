"""The HTTP floor: a bare uvicorn server answering every POST with one fixed response.

``python -m bench.http_floor PORT BODY_FILE``. The same uvicorn (its event loop and HTTP parser
chosen as for ``fleetql serve``) and the same loopback and load generator, but no Starlette, no
middleware, no GraphQL and no database: what a request of that size costs before fleetql does
anything. The list benchmark sets it beside each query (``bench/list_queries.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

__all__ = ["fixed_response_app"]

Receive = Any
Send = Any


def fixed_response_app(body: bytes) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the request as a real handler would
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str]) -> None:
    port, body_file = int(argv[0]), Path(argv[1])
    uvicorn.run(
        fixed_response_app(body_file.read_bytes()),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
