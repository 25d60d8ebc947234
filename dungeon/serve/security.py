"""What keeps ``dungeon serve`` safe by default: API key, body limit, host check, error bodies.

- The API key (when set) is read from ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY`` and
  compared in constant time. The browser page itself (``GET /``) is public; it asks for the key.
- Bodies over the limit are refused with 413 before a handler sees them (streamed bodies too),
  and a body that is not sent as JSON with 415 (so a web page elsewhere cannot post a plain
  form or text to the server without the browser asking the server first).
- A server on loopback with no key only answers requests whose Host is a loopback name, so a
  web page on another site cannot reach it through DNS rebinding.
- Every error is JSON with a message, never a traceback: ``{"error": {"message", "type",
  "code"}}``, and on the KoboldAI paths (``/api/...``) KoboldCpp's ``{"detail": {"msg",
  "type"}}``.
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class ApiError(Exception):
    """An error a client should see: HTTP status, message, a short type and extra headers."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers=None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers or {}


def error_body(path: str, status: int, message: str, kind: str) -> dict:
    if path.startswith("/api/"):
        return {"detail": {"msg": message, "type": kind}}
    return {"error": {"message": message, "type": kind, "code": status}}


def error_response(
    path: str, status: int, message: str, kind: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, kind), status, headers=headers)


# --- the API key ----------------------------------------------------------------------------


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def key_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison (the time taken says nothing about how much matched)."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "replace"))


def require_key(request: Request) -> None:
    """FastAPI dependency: the API key, when the server has one."""
    expected = request.app.state.dungeon.settings.api_key
    if expected is None:
        return
    if not key_matches(expected, presented_key(request)):
        raise ApiError(
            401,
            "a valid API key is needed: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
            "authentication_error",
            {"WWW-Authenticate": "Bearer"},
        )


# --- the ASGI guard: body limit and host check ----------------------------------------------


def _host_name(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[: host.find("]") + 1]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class Guard:
    """ASGI middleware: refuse oversized bodies (413) and, when ``loopback_only``, requests
    whose Host header is not a loopback name (DNS rebinding)."""

    def __init__(self, app: ASGIApp, *, max_body: int, loopback_only: bool):
        self.app = app
        self.max_body = max_body
        self.loopback_only = loopback_only

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str, kind: str):
        response = error_response(scope.get("path", ""), status, message, kind)
        await response(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and _host_name(scope) not in _LOOPBACK_HOSTS:
            await self._refuse(
                scope,
                send,
                421,
                "this server only answers requests addressed to localhost or 127.0.0.1",
                "misdirected_request",
            )
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        if declared is not None and (declared < 0 or declared > self.max_body):
            await self._refuse(scope, send, 413, self._too_big(declared), "request_too_large")
            return
        # Read the whole body (at most max_body bytes), then hand it on in one piece.
        chunks, size, more = [], 0, True
        first: Message | None = None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # a disconnect before the body ended
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await self._refuse(scope, send, 413, self._too_big(size), "request_too_large")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        if size and first is None and not _is_json(scope):
            await self._refuse(
                scope,
                send,
                415,
                "send the body as JSON, with the header Content-Type: application/json",
                "unsupported_media_type",
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                if first is not None:
                    return first
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_big(self, size: int) -> str:
        if size < 0:
            return "the Content-Length header is not a number"
        return f"the request body is too large ({size:,} bytes; at most {self.max_body:,})"


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind = value.decode("latin-1").split(";")[0].strip().lower()
            return kind == "application/json" or kind.endswith("+json")
    return False


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# --- exception handlers ---------------------------------------------------------------------


def _describe(errors: list) -> tuple[int, str]:
    """A status and one readable line for FastAPI's validation errors."""
    lines = []
    for err in errors[:8]:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return 400, f"the body is not valid JSON ({ctx.get('error', 'cannot parse it')})"
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if loc == "body" and err.get("type") in ("model_attributes_type", "dict_type"):
            return 422, "the body must be a JSON object (sent as Content-Type: application/json)"
        lines.append(f"{loc}: {err.get('msg', 'invalid')}")
    return 422, "; ".join(lines) or "the request is not valid"


def install_error_handlers(app) -> None:
    """Every error becomes JSON with a message; nothing else reaches the client."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(request.url.path, err.status, err.message, err.kind, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        status, message = _describe(list(err.errors()))
        kind = "invalid_json" if status == 400 else "invalid_request_error"
        return error_response(request.url.path, status, message, kind)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException):
        message = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        if err.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif err.status_code == 400 and "parsing the body" in message:
            message = "the body is not valid JSON in UTF-8"
        return error_response(
            request.url.path, err.status_code, message, "invalid_request_error", err.headers
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=err)
        return error_response(
            request.url.path,
            500,
            "internal server error (the server log has the details)",
            "server_error",
        )
