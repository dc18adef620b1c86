"""The generation routes served without FastAPI's per-request machinery.

POST /v1/completions, /v1/chat/completions and /v1/responses are most of a router's
traffic. Through FastAPI each one also passes its exception, exit-stack and routing
layers, dependency solving and the body-parameter plumbing: ~200 us of CPU a request
on the dev VM, about a tenth of the router's whole cost per short request
(`bench/router_bench.py --sim`). This ASGI middleware answers those routes itself with
the same handler functions, the same request models and the same error bodies; every
other path and method goes on to the FastAPI app, which also keeps the routes for its
OpenAPI schema.

What FastAPI would do, done here the same way:
- the body is JSON only under an ``application/json`` (or ``+json``) content type (strict
  content types, FastAPI's default); an empty body is "request body is required";
- the model is validated from the decoded object (pydantic's Python mode, from attributes, as FastAPI does);
- `APIError` answers its own body; a validation error the 400 of `validation_error`; any
  other exception before the response starts a 500 with the exception's type only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import APIError, error_response, validation_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectRoute:
    model: type[BaseModel]
    handler: Callable[[Any, Request], Awaitable[Response]]


class DirectRoutes:
    def __init__(self, app: ASGIApp, routes: dict[str, DirectRoute], authorize: Callable[[Request], Awaitable[None]]) -> None:
        self.app, self.routes, self.authorize = app, routes, authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            await self.authorize(request)
            body = _body_object(request.headers.get("content-type"), await request.body())
            req = route.model.model_validate(body, from_attributes=True)  # as FastAPI validates a body
            response = await route.handler(req, request)
        except APIError as exc:
            response = error_response(exc)
        except ValidationError as exc:
            response = error_response(validation_error(exc.errors()))
        except Exception as exc:  # answered like the app's catch-all handler
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))
        await response(scope, receive, send)


def _body_object(content_type: str | None, body: bytes) -> Any:
    """The object a request model is validated from: the decoded JSON, or the raw bytes (which
    fail validation) when the content type does not say JSON. No body or bad JSON: the 400."""
    if not body:
        raise validation_error([{"type": "missing", "loc": (), "msg": "Field required"}])
    if content_type is None or not _is_json(content_type):
        return body
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise validation_error([{"type": "json_invalid", "loc": (), "msg": "JSON decode error"}]) from exc


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))
