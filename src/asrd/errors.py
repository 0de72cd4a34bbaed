"""Errors as JSON with the right status, always, in the shape each API's clients expect:
`{"error": {"code", "message"}}` on asrd's own routes, OpenAI's
`{"error": {"message", "type", "param", "code"}}` under `/v1/`.

Routes raise `ApiError`; the handlers here turn it, FastAPI's validation errors, Starlette's
HTTP errors and any unexpected exception into that shape. An unexpected exception is logged
with its traceback and answered with a generic 500 that leaks nothing. A client that hangs up
before its body is read is no error of asrd's: one INFO line, and 499 in the access log.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope, Send

from .logs import escape, request_target

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.param = param


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """asrd's error shape."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape, under `/v1/`."""

    error: OpenAIErrorDetail


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def openai_error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def body_for(path: str, status: int, code: str, message: str, param: str | None = None) -> dict:
    """The error body in the shape of the API that `path` belongs to."""
    if path.startswith("/v1/"):
        return openai_error_body(status, code, message, param)
    return error_body(code, message)


async def send_error(
    scope: Scope, send: Send, status: int, code: str, message: str, headers: dict[str, str]
) -> None:
    """Answer from a pure ASGI middleware, before the app has seen the request. A WebSocket
    handshake is refused with the same HTTP answer where the server can send one (ASGI's
    `websocket.http.response`), else closed with 1008 (refused) or 1013 (try again later)."""
    payload = json.dumps(body_for(scope["path"], status, code, message)).encode()
    raw_headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())]  # fmt: skip
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    kind = "http"
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            close = 1013 if status in (429, 503) else 1008
            await send({"type": "websocket.close", "code": close, "reason": message[:120]})
            return
        kind = "websocket.http"
    await send({"type": f"{kind}.response.start", "status": status, "headers": raw_headers})
    await send({"type": f"{kind}.response.body", "body": payload})


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    request: Request | None = None,
    param: str | None = None,
) -> JSONResponse:
    path = request.url.path if request is not None else ""
    return JSONResponse(body_for(path, status, code, message, param), status_code=status,
                        headers=headers)  # fmt: skip


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, exc.headers, request=request, param=exc.param
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, params = [], []
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
            where = ".".join(location)
            params.append(where)
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        # OpenAI answers a malformed request with 400; asrd's own routes keep FastAPI's 422.
        status = 400 if request.url.path.startswith("/v1/") else 422
        message = "; ".join(problems) or "invalid request"
        return error_response(
            status, "invalid_request", message, request=request, param=params[0] if params else None
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ClientDisconnect):
            # FastAPI turns a hang-up while it parses a form into "400 error parsing the body".
            return _client_closed(request)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers, request=request)

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _client_closed(request)  # a route reading the body itself (`/asr`)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", escape(request.method),
                      request_target(request.scope))  # fmt: skip
        return error_response(500, "internal_error", "internal server error", request=request)


def _client_closed(request: Request) -> JSONResponse:
    """The client hung up before its request was read (Starlette's `ClientDisconnect`): nobody
    reads the answer; the access log and metrics count it as nginx's 499."""
    log.info("%s %s: the client closed the connection before sending its whole request",
             escape(request.method), request_target(request.scope))  # fmt: skip
    return error_response(
        499, "client_closed_request", "the client closed the connection", request=request
    )


# Answers any route may give, from the middlewares (see app.py), documented on every operation.
_COMMON_ERRORS = {
    401: "API_KEYS is set and the request has no valid key",
    500: "An unexpected server error (logged; the body says nothing more)",
    503: "MAX_CONCURRENT_REQUESTS requests in progress, the model not ready, the decoded-audio "
    "budget full, or the server shutting down: see Retry-After",
    504: "The request took longer than REQUEST_TIMEOUT_S",
}
_BODY_ERRORS = {
    408: "The upload is slower than MIN_UPLOAD_KB_S, or stalled for 30 s",
    413: "The body is over MAX_UPLOAD_MB (a JSON body over 64 KB)",
}


def document_errors(schema: dict, unlimited_paths: tuple[str, ...]) -> dict:
    """Complete an OpenAPI schema with the errors asrd really answers, in the shape of each
    API: the middlewares' answers on every operation, a body for each listed error status, and
    validation errors as they are sent (400 under `/v1/`, 422 in asrd's shape elsewhere).
    `unlimited_paths` never get the middlewares' limit answers."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorDetail, ErrorResponse, OpenAIErrorDetail, OpenAIErrorResponse):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, item in schema.get("paths", {}).items():
        openai = path.startswith("/v1/")
        shape = {"$ref": f"#/components/schemas/{'OpenAI' if openai else ''}ErrorResponse"}
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            validation = responses.pop("422", None)
            if validation is not None:
                status = "400" if openai else "422"
                responses.setdefault(status, {"description": "Invalid parameters"})
            extra = {} if path in unlimited_paths else dict(_COMMON_ERRORS)
            if "requestBody" in operation:
                extra.update(_BODY_ERRORS)
            for status, description in extra.items():
                responses.setdefault(str(status), {"description": description})
            for status, response in responses.items():
                if status[:1] in ("4", "5") and "content" not in response:
                    response["content"] = {"application/json": {"schema": shape}}
    return schema
